"""Multi-modal embedding fusion `x_EMA (+) x_CDR` (paper section 3.4, eq. 24)."""

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_FUSIONS = ("concat", "add", "mul")
LOGIT_FUSIONS = ("sum", "hm")


def fuse_logits(visual_logits, reconstruction_logits, mode, problem_type="single_label_classification"):
    """Counterfactual-VQA fusions of two branch logits (B, L) -> (B, L).

    Each fuses the branches into a per-class score `p` and returns its inverse link for `problem_type`: `log p` for
    single-label (the softmax renormalises it), `logit p` for multi-label (the sigmoid gives `p` back).
    `sum`: `p = sigmoid(a + b)`, so `log sigmoid(a + b)` or `a + b`. `hm` (harmonic, single-label only, see
    `MARNetConfig.check_problem_type`): `p = z / (1 + z)` with `z = sigmoid(a) * sigmoid(b)`, returned as
    `log z - softplus(log z)` so it stays finite for large |a|, |b|.
    """
    if mode == "sum":
        fused = visual_logits + reconstruction_logits
        return fused if problem_type == "multi_label_classification" else F.logsigmoid(fused)
    if mode == "hm":
        log_z = F.logsigmoid(visual_logits) + F.logsigmoid(reconstruction_logits)
        return log_z - F.softplus(log_z)
    raise ValueError(f"`fusion_mode` for logit fusion must be one of {LOGIT_FUSIONS}, got {mode!r}.")


class MARNetFusion(nn.Module):
    """The fused feature of the visual (EMA) and reconstructed (CDR) features, for the feature fusions; the classifier
    over it is `MARNetForImageClassification.fusion_classifier`, beside the branch classifiers.

    `concat` gives `[x_EMA, x_CDR]`; `add` / `mul` first project both to `projection_dim` (their widths differ in
    general), then combine element-wise. The logit fusions (`sum`, `hm`) have no weights: see [`fuse_logits`].
    """

    def __init__(self, config, visual_dim, reconstruction_dim):
        super().__init__()
        self.mode = config.fusion_mode
        if self.mode not in FEATURE_FUSIONS:
            raise ValueError(f"MARNetFusion fuses features ({FEATURE_FUSIONS}), got fusion_mode {self.mode!r}.")
        if self.mode == "concat":
            self.fused_dim = visual_dim + reconstruction_dim
        else:
            self.fused_dim = config.projection_dim
            self.visual_projection = nn.Linear(visual_dim, self.fused_dim)
            self.reconstruction_projection = nn.Linear(reconstruction_dim, self.fused_dim)

    def forward(self, visual_embeds: torch.Tensor, reconstructed_text_embeds: torch.Tensor) -> torch.Tensor:
        """`x_f = fusion(x_EMA, x_CDR)` (eq. 3): (B, D_EMA), (B, D_s) features -> (B, fused_dim) fused feature."""
        if self.mode == "concat":
            return torch.cat([visual_embeds, reconstructed_text_embeds], dim=-1)  # (B, D_EMA + D_s)
        if self.mode == "add":
            return self.visual_projection(visual_embeds) + self.reconstruction_projection(reconstructed_text_embeds)
        return self.visual_projection(visual_embeds) * self.reconstruction_projection(reconstructed_text_embeds)
