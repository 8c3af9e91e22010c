"""The two halves of the training loop: optimizer steps over one epoch, and evaluation."""

import torch

from ..modeling_marnet import LOSS_WEIGHT_FIELDS, weighted_loss
from .metrics import ClassificationMetrics

# Terms that shape the representation but do not train an inference-time classifier: the ones a warm-up ramps.
AUXILIARY_TERMS = ("alignment_loss", "reconstruction_loss", "text_classification_loss", "distillation_loss")


class LossComposer:
    """The loss to back-propagate at an optimizer step: the model's own `loss`, or, during the auxiliary warm-up,
    the same weighted sum with every auxiliary term scaled by `step / warmup_steps` (a linear ramp from 0 to 1)."""

    def __init__(self, config, auxiliary_warmup_steps=0):
        self.config = config
        self.warmup_steps = auxiliary_warmup_steps

    def auxiliary_scale(self, step):
        return 1.0 if step >= self.warmup_steps else step / self.warmup_steps

    def __call__(self, output, step):
        scale = self.auxiliary_scale(step)
        if scale == 1.0:
            return output.loss
        terms = {name: getattr(output, name, None) for name in LOSS_WEIGHT_FIELDS}
        return weighted_loss(terms, self.config, dict.fromkeys(AUXILIARY_TERMS, scale))


def loss_term_gradient_norms(output, config, parameters):
    """{term: L2 norm of d(w * term)/d(parameters)} for every term the output carries: how hard each weighted loss
    pulls on those parameters (the vision tower's). One extra backward pass per term; the graph is kept."""
    norms = {}
    for name, field in LOSS_WEIGHT_FIELDS.items():
        value = getattr(output, name, None)
        if value is None or not value.requires_grad:
            continue
        grads = torch.autograd.grad(getattr(config, field) * value, parameters, retain_graph=True, allow_unused=True)
        norms[name] = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)).item()
    return norms


def optimizer_steps(model, dataloader, accelerator, optimizer, scheduler, loss_composer, first_step=0,
                    gradient_probe=None):
    """Trains over `dataloader`, yielding after every optimizer step (every `gradient_accumulation_steps` batches)
    a dict with the step's mean `loss`, the mean of each loss term the model returned (`terms`), the number of
    `images` it used across processes and, when `gradient_probe(step)` gives the tower's parameters for that
    step, the per-term gradient norms on them (`gradient_norms`)."""
    step = first_step
    losses, terms, images, gradient_norms = [], {}, 0, None
    for batch in dataloader:
        model.train()  # again after every mid-epoch evaluation
        with accelerator.accumulate(model):
            output = model(**batch)
            probe_parameters = gradient_probe(step + 1) if gradient_probe is not None else None
            if probe_parameters is not None and gradient_norms is None:
                gradient_norms = loss_term_gradient_norms(output, loss_composer.config, probe_parameters)
            loss = loss_composer(output, step)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        losses.append(loss.detach())
        for name in LOSS_WEIGHT_FIELDS:
            value = getattr(output, name, None)
            if value is not None:
                terms.setdefault(name, []).append(value.detach())
        images += batch["labels"].shape[0] * accelerator.num_processes
        if accelerator.sync_gradients:
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            step += 1
            yield {"loss": torch.stack(losses).mean(), "images": images, "gradient_norms": gradient_norms,
                   "terms": {name: torch.stack(values).mean() for name, values in terms.items()}}
            losses, terms, images, gradient_norms = [], {}, 0, None


@torch.no_grad()
def evaluate(model, dataloader, accelerator):
    """Top-1/top-5 accuracy, loss and sample count of `model(pixel_values)` over a prepared dataloader, each sample
    counted once across processes (`gather_for_metrics` drops the duplicates that pad the last batches)."""
    model.eval()
    metrics = ClassificationMetrics()
    for batch in dataloader:
        logits = model(pixel_values=batch["pixel_values"]).logits
        logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
        metrics.update(logits, labels)
    return metrics.compute()
