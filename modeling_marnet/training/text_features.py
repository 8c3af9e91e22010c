"""Privileged text features `x_s = F_s(i)`: a pooled BERT-like encoder, and a disk cache of its frozen embeddings.

A frozen encoder is run once over the training texts; the (N, D) embeddings are stored as safetensors under a key
made of the encoder's weights, the tokenizer, the dataset fingerprint, the pooling and the maximum length, so a
second run (or another process) reuses them.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from .errors import TrainingInputError


def pool_hidden_states(outputs, attention_mask, pooling):
    """(B, T, D) token states -> (B, D): masked mean, first token, or the encoder's pooler output."""
    if pooling == "pooler":
        if getattr(outputs, "pooler_output", None) is None:
            raise TrainingInputError("--text-pooling pooler: this text encoder returns no pooler_output; use mean.")
        return outputs.pooler_output
    hidden = outputs.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class PooledTextEncoder(nn.Module):
    """A transformers text encoder followed by pooling: (input_ids, attention_mask) (B, T) -> (B, D)."""

    def __init__(self, encoder, pooling="mean"):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling

    @property
    def hidden_size(self):
        return self.encoder.config.hidden_size

    def forward(self, input_ids, attention_mask):
        outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return pool_hidden_states(outputs, attention_mask, self.pooling)


def load_text_encoder(name_or_path, pooling):
    """(PooledTextEncoder, tokenizer) from a directory or Hub id."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        encoder = AutoModel.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise TrainingInputError(
            f"--text-encoder {name_or_path}: cannot load a tokenizer and model from it ({error}). Give a directory "
            "or Hub id of a BERT-like encoder with its tokenizer."
        ) from None
    if not hasattr(encoder.config, "hidden_size"):
        raise TrainingInputError(f"--text-encoder {name_or_path}: a {type(encoder).__name__} has no hidden_size; "
                                 "use a BERT-like text encoder.")
    return PooledTextEncoder(encoder, pooling), tokenizer


class MARNetWithTextEncoder(nn.Module):
    """MARNet and a text encoder trained jointly: the encoder turns `text_input_ids` into `text_embeds` in the
    training step. Only `classifier` is published; the encoder stays a training-time tool."""

    def __init__(self, classifier, text_encoder):
        super().__init__()
        self.classifier = classifier
        self.text_encoder = text_encoder

    def forward(self, pixel_values, labels=None, text_input_ids=None, text_attention_mask=None):
        text_embeds = None
        if text_input_ids is not None:
            text_embeds = self.text_encoder(text_input_ids, text_attention_mask)  # (B, D)
        return self.classifier(pixel_values=pixel_values, labels=labels, text_embeds=text_embeds)


def _encoder_digest(text_encoder, tokenizer):
    digest = hashlib.sha256()
    for name, tensor in text_encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest.update(json.dumps([type(tokenizer).__name__, len(tokenizer), tokenizer.model_max_length]).encode())
    return digest.hexdigest()


def text_cache_path(cache_dir, text_encoder, tokenizer, dataset, text_column, max_length):
    """Cache file for the embeddings of `dataset[text_column]`, keyed by encoder weights + tokenizer, dataset
    fingerprint, column, pooling and maximum length."""
    key = json.dumps({
        "encoder": _encoder_digest(text_encoder, tokenizer),
        "dataset": dataset._fingerprint,
        "column": text_column,
        "pooling": text_encoder.pooling,
        "max_length": max_length,
    }, sort_keys=True)
    return Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"


def default_text_cache_dir():
    return Path(hub_constants.HF_HOME) / "marnet" / "text_features"


@torch.no_grad()
def encode_texts(text_encoder, tokenizer, texts, max_length, batch_size=64, device="cpu"):
    """Pooled embeddings of `texts`: (N, D) float32 on CPU."""
    text_encoder.eval().to(device)
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt").to(device)
        chunks.append(text_encoder(tokens["input_ids"], tokens["attention_mask"]).float().cpu())
    return torch.cat(chunks)


def cached_text_embeddings(accelerator, text_encoder, tokenizer, dataset, text_column, max_length, cache_dir):
    """(N, D) embeddings of the split's texts, computed once by the main process and read back by every process.

    Returns the embeddings and whether they came from the cache.
    """
    path = text_cache_path(cache_dir, text_encoder, tokenizer, dataset, text_column, max_length)
    hit = path.is_file()
    with accelerator.main_process_first():
        if not path.is_file() and accelerator.is_main_process:
            embeddings = encode_texts(text_encoder, tokenizer, list(dataset[text_column]), max_length,
                                      device=accelerator.device)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({"text_embeds": embeddings}, str(partial))
            os.replace(partial, path)
        embeddings = load_file(str(path))["text_embeds"]
    if embeddings.shape[0] != len(dataset):
        raise TrainingInputError(f"Text cache {path} holds {embeddings.shape[0]} rows for a split of {len(dataset)}: "
                                 "delete it and run again.")
    return embeddings, hit
