"""The optimizer and its parameter groups, the length of training and the learning-rate schedule
(`transformers.get_scheduler`)."""

import math
from dataclasses import dataclass

import torch
from transformers import get_scheduler
from transformers.trainer_utils import SchedulerType

from marnet_cli.errors import UsageError

# Schedulers stepped with a metric or per evaluation, which a step-based loop cannot drive.
METRIC_SCHEDULERS = {"reduce_lr_on_plateau", "greedy"}


@dataclass
class Schedule:
    """How long training runs, in optimizer steps (updates), and how many of them warm up."""

    updates_per_epoch: int
    max_steps: int
    num_epochs: int
    warmup_steps: int

    @classmethod
    def from_options(cls, args, batches_per_epoch, gradient_accumulation_steps):
        """`batches_per_epoch` is per process, as `len(dataloader)` after `accelerator.prepare`."""
        updates_per_epoch = math.ceil(batches_per_epoch / gradient_accumulation_steps)
        max_steps = args.max_steps or math.ceil(args.num_train_epochs * updates_per_epoch)
        warmup_steps = args.warmup_steps if args.warmup_steps is not None else round(args.warmup_ratio * max_steps)
        return cls(updates_per_epoch, max_steps, math.ceil(max_steps / updates_per_epoch), warmup_steps)


def check_scheduler_type(name):
    """`--lr_scheduler_type` if transformers' `get_scheduler` can drive it step by step here."""
    valid = [kind.value for kind in SchedulerType if kind.value not in METRIC_SCHEDULERS]
    if name not in valid:
        raise UsageError(f"--lr_scheduler_type {name!r} is not supported; choose one of {', '.join(valid)}.")
    return name


def tower_parameters(model):
    """The pretrained towers' trainable parameters: the vision tower's and a jointly trained text encoder's."""
    classifier = getattr(model, "classifier", model)  # MARNetWithTextEncoder holds the classifier
    towers = [classifier.marnet.vision_model] + ([model.text_encoder] if hasattr(model, "text_encoder") else [])
    return [p for tower in towers for p in tower.parameters() if p.requires_grad]


def parameter_groups(model, weight_decay, learning_rate, tower_lr_multiplier=1.0):
    """AdamW groups: decay on matrices, none on biases, norm weights, scalars (`logit_scale`), as in nanoGPT; the
    pretrained towers at `learning_rate * tower_lr_multiplier`, the fresh MARNet heads at `learning_rate`."""
    towers = {id(p) for p in tower_parameters(model)}
    groups = []
    for is_tower, lr in ((True, learning_rate * tower_lr_multiplier), (False, learning_rate)):
        parameters = [p for p in model.parameters() if p.requires_grad and (id(p) in towers) == is_tower]
        groups += [
            {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay, "lr": lr},
            {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0, "lr": lr},
        ]
    return [group for group in groups if group["params"]]


def make_optimizer(model, args):
    """AdamW over [`parameter_groups`]: the towers at `--learning_rate * --tower_lr_multiplier`."""
    return torch.optim.AdamW(parameter_groups(model, args.weight_decay, args.learning_rate, args.tower_lr_multiplier))


def make_scheduler(optimizer, args, schedule):
    """`transformers.get_scheduler(--lr_scheduler_type)` over `schedule`, with `--lr_scheduler_kwargs`."""
    try:
        return get_scheduler(
            check_scheduler_type(args.lr_scheduler_type),
            optimizer,
            num_warmup_steps=schedule.warmup_steps,
            num_training_steps=schedule.max_steps,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs,
        )
    except (TypeError, ValueError) as error:
        raise UsageError(
            f"--lr_scheduler_type {args.lr_scheduler_type} with --lr_scheduler_kwargs {args.lr_scheduler_kwargs}: "
            f"{error}"
        ) from None
