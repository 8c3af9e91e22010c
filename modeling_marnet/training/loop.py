"""The two halves of the training loop: optimizer steps over one epoch, and evaluation."""

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from marnet_cli.errors import CLIError, stop_if_signalled

from ..modeling_marnet import LOSS_WEIGHT_FIELDS, weighted_loss
from .metrics import ClassificationMetrics

# Terms that shape the representation but do not train an inference-time classifier: the ones a warm-up ramps.
AUXILIARY_TERMS = (
    "alignment_loss",
    "reconstruction_loss",
    "text_classification_loss",
    "distillation_loss",
    "ingredient_loss",
)
# Classification terms and the output logits each one is the cross-entropy of.
CLASSIFICATION_TERMS = {
    "visual_classification_loss": "visual_logits",
    "reconstruction_classification_loss": "reconstruction_logits",
    "fusion_classification_loss": "logits",
    "text_classification_loss": "text_logits",
}


class LossComposer:
    """The loss to back-propagate at an optimizer step.

    It is the model's own `loss`, except that during the auxiliary warm-up every auxiliary term is scaled by
    `step / warmup_steps` (a linear ramp from 0 to 1), and that with `label_smoothing > 0` every classification term
    is the label-smoothed cross-entropy of its logits, as `torch.nn.CrossEntropyLoss(label_smoothing=...)` computes it
    (single-label classification).
    """

    def __init__(self, config, auxiliary_warmup_steps=0, label_smoothing=0.0):
        self.config = config
        self.warmup_steps = auxiliary_warmup_steps
        self.label_smoothing = label_smoothing

    def auxiliary_scale(self, step):
        return 1.0 if step >= self.warmup_steps else step / self.warmup_steps

    def __call__(self, output, step, labels=None):
        scale = self.auxiliary_scale(step)
        if scale == 1.0 and not self.label_smoothing:
            return output.loss
        terms = {name: getattr(output, name, None) for name in LOSS_WEIGHT_FIELDS}
        if self.label_smoothing:
            for name, logits_name in CLASSIFICATION_TERMS.items():
                if terms[name] is not None:
                    logits = getattr(output, logits_name)
                    terms[name] = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
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


def nonfinite_loss_error(step, loss, output):
    """The [`CLIError`] that stops training at `step` on a NaN or infinite loss, naming the terms that are."""
    terms = {name: getattr(output, name, None) for name in LOSS_WEIGHT_FIELDS}
    bad = [f"{name}={value.item()}" for name, value in terms.items() if value is not None and not value.isfinite()]
    where = (
        f"the loss is {loss.item()} (non-finite terms: {', '.join(bad) or 'none, their weighted sum overflowed'})"
        if not math.isfinite(loss.item())
        else "the loss is not finite on another process"
    )
    return CLIError(
        f"Step {step}: {where}. Training stopped before applying that step; the checkpoints saved before it are "
        "intact. Lower --learning_rate, check the text features and the --marnet_config loss weights, or pass "
        "--skip_nonfinite_loss to skip such steps."
    )


def optimizer_steps(
    model,
    dataloader,
    accelerator,
    optimizer,
    scheduler,
    loss_composer,
    first_step=0,
    gradient_probe=None,
    max_grad_norm=None,
    skip_nonfinite_loss=False,
    model_inputs=None,
):
    """Trains over `dataloader`, yielding after every optimizer step (every `gradient_accumulation_steps` batches)
    a dict with the step's mean `loss`, the mean of each loss term the model returned (`terms`), the number of
    `images` it used across processes, the gradient norm before clipping to `max_grad_norm` (`grad_norm`, None
    without clipping), whether the step was `skipped` and, when `gradient_probe(step)` gives the tower's parameters
    for that step, the per-term gradient norms on them (`gradient_norms`).

    A NaN or infinite loss on any process, in any batch of an optimizer step, stops training with a [`CLIError`]
    before that step is applied; with `skip_nonfinite_loss` the step is skipped instead (its gradients dropped, the
    weights and optimizer state untouched; the schedule moves on). Every process takes the same decision.

    `model_inputs(batch)`, when given, turns each batch into the model's inputs first (`batches.model_inputs`: uint8
    pixels normalised on the device)."""
    step = first_step
    losses, terms, images, gradient_norms, grad_norm, finite = [], {}, 0, None, None, True
    for batch in dataloader:
        stop_if_signalled()  # a SIGTERM that a finished epoch's DataLoader iterator ignored while finalised
        if model_inputs is not None:
            batch = model_inputs(batch)
        model.train()  # again after every mid-epoch evaluation
        with accelerator.accumulate(model):
            output = model(**batch)
            probe_parameters = gradient_probe(step + 1) if gradient_probe is not None else None
            if probe_parameters is not None and gradient_norms is None:
                gradient_norms = loss_term_gradient_norms(output, loss_composer.config, probe_parameters)
            loss = loss_composer(output, step, batch["labels"])
            finite = torch.isfinite(loss.detach()) & finite  # a tensor: no device sync per batch
            accelerator.backward(loss)
            skipped = False
            if accelerator.sync_gradients:
                # One sync per optimizer step; the gather makes every process take the same decision.
                if not bool(accelerator.gather(finite.reshape(1)).all()):
                    if not skip_nonfinite_loss:
                        raise nonfinite_loss_error(step + 1, loss.detach(), output)
                    skipped = True
                elif max_grad_norm:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            if not skipped:
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
            yield {
                "loss": torch.stack(losses).mean(),
                "images": images,
                "gradient_norms": gradient_norms,
                "grad_norm": grad_norm,
                "skipped": skipped,
                "terms": {name: torch.stack(values).mean() for name, values in terms.items()},
            }
            losses, terms, images, gradient_norms, grad_norm, finite = [], {}, 0, None, None, True


@torch.no_grad()
def evaluate(model, dataloader, accelerator, description="evaluation", model_inputs=None):
    """Top-1/top-5 accuracy, loss and sample count of `model(pixel_values)` over a prepared dataloader, each sample
    counted once across processes (`gather_for_metrics` drops the duplicates that pad the last batches). Runs under
    the run's mixed precision, with a progress bar on each node's main process. `model_inputs` as in
    [`optimizer_steps`]."""
    model.eval()
    metrics = ClassificationMetrics()
    for batch in tqdm(dataloader, desc=description, leave=False, disable=not accelerator.is_local_main_process):
        stop_if_signalled()
        if model_inputs is not None:
            batch = model_inputs(batch)
        with accelerator.autocast():
            logits = model(pixel_values=batch["pixel_values"]).logits
        logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
        metrics.update(logits, labels)
    return metrics.compute()
