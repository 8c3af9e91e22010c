"""Training-side helpers for MARNet: arguments, data, privileged text features, metrics, checkpoints, the loop.

Unlike the model files one level up, these modules may import accelerate, datasets and tqdm: they are never copied
into a saved checkpoint.
"""
