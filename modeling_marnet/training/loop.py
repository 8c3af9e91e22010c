"""The two halves of the training loop: optimizer steps over one epoch, and evaluation."""

import torch

from .metrics import ClassificationMetrics


def optimizer_steps(model, dataloader, accelerator, optimizer, scheduler):
    """Trains over `dataloader`, yielding after every optimizer step (every `gradient_accumulation_steps` batches)
    a dict with the step's mean `loss` and the number of `images` it used across processes."""
    losses, images = [], 0
    for batch in dataloader:
        model.train()  # again after every mid-epoch evaluation
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        losses.append(loss.detach())
        images += batch["labels"].shape[0] * accelerator.num_processes
        if accelerator.sync_gradients:
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            yield {"loss": torch.stack(losses).mean(), "images": images}
            losses, images = [], 0


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
