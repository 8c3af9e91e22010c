"""Tiny MARNet configurations and inputs shared by the model tests (ViT hidden 32, 2 layers, 30 px)."""

import torch
from transformers import ViTConfig

from modeling_marnet import MARNetConfig

IMAGE_SIZE = 30
TEXT_WIDTH = 16
NUM_LABELS = 5
# MARNet heads as small as the tower (MARNetConfig fields; `--marnet-config` options in training tests).
TINY_HEADS = {"projection_dim": 8, "denoiser_hidden_size": 24, "timestep_embedding_dim": 8, "num_train_timesteps": 50}


def tiny_vit_config(**overrides):
    fields = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=IMAGE_SIZE,
        patch_size=10,
    )
    fields.update(overrides)
    return ViTConfig(**fields)


def tiny_config(ablation="full", **overrides):
    """A MARNetConfig of one ablation row on the tiny ViT; `overrides` replace any field."""
    fields = dict(
        vision_config=tiny_vit_config(),
        text_hidden_size=TEXT_WIDTH,
        **TINY_HEADS,
        num_inference_steps=5,
        id2label={i: f"dish_{i}" for i in range(NUM_LABELS)},
    )
    fields.update(overrides)
    return MARNetConfig.from_ablation(ablation, **fields)


def tiny_batch(batch_size=4, seed=0):
    """Images, privileged text features and labels for one batch."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    text_embeds = torch.randn(batch_size, TEXT_WIDTH, generator=generator)
    labels = torch.arange(batch_size) % NUM_LABELS
    return pixel_values, text_embeds, labels


def tiny_multi_hot():
    """(4, NUM_LABELS) float multi-hot labels; rows 0 and 2 have the same label set, the others unique ones."""
    return torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [1, 0, 1, 0, 0], [1, 1, 1, 0, 1]], dtype=torch.float32)
