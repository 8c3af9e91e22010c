"""Training-side helpers for MARNet: data and its loaders, the image processor, privileged text features, the model
and its optimizer, metrics, checkpoints, the loop.

Unlike the model files one level up, these modules may import accelerate, datasets and tqdm: they are never copied
into a saved checkpoint.
"""
