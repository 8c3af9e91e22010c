"""Embedding Matching Alignment (EMA): projection heads and the alignment loss, the paper's ITA (eq. 5-11) or another
method of its Table 1 (`config.alignment`, `alignment_losses.py`)."""

import math

import torch
from torch import nn

from .alignment_losses import ALIGNMENT_LOSSES, ALIGNMENTS_NEEDING_LABELS, ALIGNMENTS_WITH_TEMPERATURE


class MARNetProjection(nn.Module):
    """`x' = g(E(x))`: a linear encoder followed by LeakyReLU (eq. 6-8), on the last dimension (pooled (B, D) or token
    (B, T, D) features)."""

    def __init__(self, in_features, out_features, negative_slope):
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.activation = nn.LeakyReLU(negative_slope)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(features))


def _method_parameters(config):
    """The keyword arguments of the `config.alignment` loss function that come from config fields."""
    return {
        "swd": {"num_projections": config.swd_num_projections},
        "cdd": {"kernel_num": config.cdd_kernel_num, "kernel_mul": config.cdd_kernel_mul},
        "team": {"attention_temperature": config.team_attention_temperature},
    }.get(config.alignment, {})


class MARNetEmbeddingAlignment(nn.Module):
    """EMA: projects `x_v` and `x_s` into a shared space and aligns them with the loss that `config.alignment` names
    (`L_ITA` by default).

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
        # Frozen by MARNetPreTrainedModel (also after loading) without `learnable_temperature` or when the method has
        # no temperature; kept in every checkpoint, so that a loaded model may switch methods.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.contrastive_temperature_init)))
        self.gather = config.contrastive_gather
        self.method = config.alignment
        self.loss_function = ALIGNMENT_LOSSES[config.alignment]
        self.method_parameters = _method_parameters(config)
        self.class_targets = config.alignment_targets == "class"
        self.needs_labels = self.class_targets or config.alignment in ALIGNMENTS_NEEDING_LABELS

    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_token_embeds: torch.Tensor | None = None,
        text_token_embeds: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Projects the features and, with text, computes the alignment loss.

        Args:
            image_embeds: (B, H_v) pooled visual features `x_v`.
            text_embeds: optional (B, D_s) pooled text features `x_s`; without them there is no loss.
            labels: optional (B,) class ids or (B, L) multi-hot rows, read when the method groups by class or the
                targets are class-aware.
            image_token_embeds: optional (B, N, H_v) patch features of the tower, for `alignment="team"`.
            text_token_embeds: optional (B, T, D_s) text token features, for `alignment="team"`.
            text_attention_mask: optional (B, T) mask of `text_token_embeds`, 1 for real tokens and 0 for padding.

        Returns:
            `x_v'` (B, P); `x_s'` (B, P) or None; the scalar loss, or None without text, or in evaluation without the
            labels the loss needs.
        """
        image_projected_embeds = self.visual_projection(image_embeds)  # x_v', (B, P)
        if text_embeds is None:
            return image_projected_embeds, None, None
        text_projected_embeds = self.text_projection(text_embeds)  # x_s', (B, P)
        if self.needs_labels and labels is None:
            if not self.training:
                return image_projected_embeds, text_projected_embeds, None  # evaluation without labels: no loss
            if self.class_targets:
                setting, reason = "alignment_targets='class'", "the positives are the texts of the same class"
                fix = "use alignment_targets='instance'"
            else:
                setting, reason = f"alignment={self.method!r}", "it groups the images and texts by class"
                label_free = sorted(set(ALIGNMENT_LOSSES) - ALIGNMENTS_NEEDING_LABELS)
                fix = f"choose an alignment that runs without them ({', '.join(map(repr, label_free))})"
            raise ValueError(
                f"`{setting}` needs `labels` in training whenever `text_embeds` are given ({reason}), got "
                f"labels=None. Pass labels, or {fix}."
            )
        kwargs = dict(self.method_parameters)
        if self.method in ALIGNMENTS_WITH_TEMPERATURE:
            kwargs["logit_scale"] = self.logit_scale
        if image_token_embeds is not None:
            kwargs["image_tokens"] = self.visual_projection(image_token_embeds)  # (B, N, P)
        if text_token_embeds is not None:
            kwargs["text_tokens"] = self.text_projection(text_token_embeds)  # (B, T, P)
            kwargs["text_attention_mask"] = text_attention_mask
        loss = self.loss_function(
            image_projected_embeds,
            text_projected_embeds,
            labels if self.needs_labels else None,
            gather=self.gather,
            **kwargs,
        )
        return image_projected_embeds, text_projected_embeds, loss
