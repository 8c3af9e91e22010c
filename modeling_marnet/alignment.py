"""Embedding Matching Alignment (EMA): projection heads and the image-text contrastive loss (paper eq. 5-11)."""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# CLIP's cap on exp(logit_scale): temperature never drops below 0.01.
MAX_LOGIT_SCALE = math.log(100.0)


class MARNetProjection(nn.Module):
    """`x' = g(E(x))`: a linear encoder followed by LeakyReLU (eq. 6-8)."""

    def __init__(self, in_features, out_features, negative_slope):
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.activation = nn.LeakyReLU(negative_slope)

    def forward(self, features):
        return self.activation(self.dense(features))


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows concatenated in rank order; the backward pass sums every rank's gradient for this rank's rows
    (each rank's loss uses every row), so DDP's gradient average equals the one-process gradient of the mean loss."""

    @staticmethod
    def forward(ctx, features):
        gathered = [torch.empty_like(features) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, features.contiguous())
        return torch.cat(gathered, dim=0)  # (B * world, P)

    @staticmethod
    def backward(ctx, grad_output):
        grad_output = grad_output.contiguous()
        dist.all_reduce(grad_output)
        rows = grad_output.shape[0] // dist.get_world_size()
        return grad_output[dist.get_rank() * rows : (dist.get_rank() + 1) * rows]


def _distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_labels(labels):
    """Every process's labels in rank order (no gradient needed): (B, ...) -> (B * world, ...)."""
    gathered = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, labels.contiguous())
    return torch.cat(gathered)


def image_text_contrastive_loss(image_embeds, text_embeds, logit_scale, gather=True, labels=None):
    """`L_ITA = L_v2s + L_s2v` (eq. 9-11): symmetric InfoNCE over the batch on cosine similarities (eq. 5).

    Args:
        image_embeds: (B, P) projected visual features `x_v'`.
        text_embeds: (B, P) projected text features `x_s'`, row i paired with image row i.
        logit_scale: scalar tensor, `log(1 / tau)`.
        gather: under `torch.distributed`, use every process's rows as negatives.
        labels: (B,) class ids or (B, L) multi-hot rows for class-aware targets (an extension, not in the paper):
            the target of row i is spread equally over every column with the same label (the same label set) instead
            of on column i alone. `None`: eq. 9-10.

    Returns:
        The loss (each direction averaged over the local rows, the two directions summed) and the (B, B_all)
        image-to-text logits.
    """
    image_embeds = F.normalize(image_embeds, dim=-1)
    text_embeds = F.normalize(text_embeds, dim=-1)
    offset = 0
    all_image_embeds, all_text_embeds, all_labels = image_embeds, text_embeds, labels
    if gather and _distributed():
        all_image_embeds = _GatherWithGrad.apply(image_embeds)  # (B * world, P)
        all_text_embeds = _GatherWithGrad.apply(text_embeds)
        offset = dist.get_rank() * image_embeds.shape[0]
        all_labels = _gather_labels(labels) if labels is not None else None
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits_per_image = scale * image_embeds @ all_text_embeds.t()  # (B, B_all): Sim(x_v'^i, x_s'^b) / tau
    logits_per_text = scale * text_embeds @ all_image_embeds.t()  # (B, B_all): Sim(x_s'^i, x_v'^b) / tau
    if labels is None:
        targets = torch.arange(image_embeds.shape[0], device=image_embeds.device) + offset
    else:
        matches = labels[:, None] == all_labels[None, :]  # (B, B_all), or (B, B_all, L) for multi-hot rows
        if matches.dim() == 3:
            matches = matches.all(dim=-1)
        matches = matches.to(logits_per_image.dtype)  # (B, B_all), diagonal is 1
        targets = matches / matches.sum(dim=-1, keepdim=True)
    loss = F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)
    return loss, logits_per_image


class MARNetEmbeddingAlignment(nn.Module):
    """EMA: projects `x_v` and `x_s` into a shared space and aligns them with `L_ITA`.

    The visual projection `x_v'` is the branch feature `x_EMA` of eq. 1 when `config.visual_features="projection"`.
    """

    def __init__(self, config):
        super().__init__()
        self.visual_projection = MARNetProjection(
            config.vision_hidden_size, config.projection_dim, config.projection_negative_slope
        )
        self.text_projection = MARNetProjection(
            config.text_hidden_size, config.projection_dim, config.projection_negative_slope
        )
        # Frozen without `learnable_temperature` by MARNetPreTrainedModel, which also re-freezes it after loading.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.contrastive_temperature_init)))
        self.gather = config.contrastive_gather
        self.class_targets = config.alignment_targets == "class"

    def forward(self, vision_features, text_embeds=None, labels=None):
        """(B, H_v) visual and optional (B, D_s) text features -> `x_v'` (B, P), `x_s'` (B, P) or None, loss or None."""
        visual_embeds = self.visual_projection(vision_features)  # (B, P)
        if text_embeds is None:
            return visual_embeds, None, None
        text_projected = self.text_projection(text_embeds)  # (B, P)
        if self.class_targets and labels is None:
            if not self.training:
                return visual_embeds, text_projected, None  # evaluation without labels: nothing to align on
            raise ValueError(
                "`alignment_targets='class'` needs `labels` in training whenever `text_embeds` are given (the "
                "positives of the contrastive loss are the texts of the same class). Pass labels, or use "
                "alignment_targets='instance'."
            )
        loss, _ = image_text_contrastive_loss(
            visual_embeds, text_projected, self.logit_scale, self.gather, labels if self.class_targets else None
        )
        return visual_embeds, text_projected, loss
