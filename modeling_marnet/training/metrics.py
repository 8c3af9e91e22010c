"""Top-k accuracy and mean cross-entropy accumulated over evaluation batches."""

import torch.nn.functional as F


class ClassificationMetrics:
    """Sums correct top-1/top-5 predictions and cross-entropy over batches; `compute()` gives fractions in [0, 1]."""

    def __init__(self):
        self.num_samples = 0
        self.correct = {1: 0, 5: 0}
        self.loss_sum = 0.0

    def update(self, logits, labels):
        """logits (B, L), labels (B,)."""
        logits = logits.float()
        for k in self.correct:
            top_k = logits.topk(min(k, logits.shape[-1]), dim=-1).indices  # (B, k)
            self.correct[k] += int((top_k == labels.unsqueeze(-1)).any(dim=-1).sum())
        self.loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        self.num_samples += labels.shape[0]

    def compute(self):
        if self.num_samples == 0:
            raise ValueError("No samples were evaluated.")
        return {
            "top1": self.correct[1] / self.num_samples,
            "top5": self.correct[5] / self.num_samples,
            "loss": self.loss_sum / self.num_samples,
            "num_samples": self.num_samples,
        }
