"""Plain timm fine-tuning of a timm tower: the anchor that shows our visual-only baseline is not a strawman.

What a user who never heard of MARNet would run instead: the tower's timm architecture with its pretrained weights
and a new classifier, timm's own training and evaluation transforms (`timm.data.create_transform` with its defaults:
random-resized crop with scale (0.08, 1), flip, colour jitter 0.4; resize to size / crop_pct then center crop for
evaluation), timm's AdamW (`create_optimizer_v2`, weight decay off for biases and norms), timm's cosine schedule with
warm-up (`create_scheduler_v2`, stepped per update) and the label smoothing 0.1 of timm's `train.py`. The best epoch on
validation is kept; its validation and test metrics go to `metrics.json` in the format `marnet-train` writes, so
`benchmarks/accuracy.py` reads both alike.

    python benchmarks/timm_anchor.py --dataset DATASET_DIR --vision-model TOWER_DIR --output-dir runs/timm \\
        --learning-rate 1e-3 --num-train-epochs 8 --image-size 64 --seed 0
"""

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from marnet_cli.errors import CLIError, command  # noqa: E402
from marnet_cli.files import atomic_write_json, atomic_write_text  # noqa: E402
from marnet_cli.options import MARNetArgumentParser, option  # noqa: E402
from marnet_cli.run_folder import RunFolder, classification_metrics  # noqa: E402

PROG = "timm_anchor.py"


@dataclass
class TimmAnchorArguments:
    """Every option of `timm_anchor.py`."""

    dataset: Path = field(
        metadata={"help": "`save_to_disk` DatasetDict with train/validation/test splits and image/label columns"}
    )
    vision_model: Path = field(
        metadata={
            "help": "a transformers TimmWrapper folder (config.json naming the timm architecture, model.safetensors), "
            "e.g. marnet-convert-efficientnet's"
        }
    )
    output_dir: Path = field(metadata={"help": "the run folder: metrics.json and logs/history.jsonl"})
    learning_rate: float = option(1e-3)
    weight_decay: float = option(0.05)
    num_train_epochs: int = option(8)
    warmup_ratio: float = option(0.1)
    per_device_train_batch_size: int = option(32)
    image_size: int = option(224)
    label_smoothing: float = option(0.1)
    seed: int = option(0)
    channels_last: bool = option(False)


def parse_args(argv=None):
    """The [`TimmAnchorArguments`] of `argv` (default: the command line)."""
    return MARNetArgumentParser(TimmAnchorArguments, prog=PROG, description=__doc__).parse(argv)


def load_timm_tower(folder, num_classes):
    """The timm model of a TimmWrapper folder with its pretrained weights and a fresh `num_classes` classifier."""
    import timm
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=num_classes)
    state = {
        key.removeprefix("timm_model."): value for key, value in load_file(str(folder / "model.safetensors")).items()
    }
    classifier = model.pretrained_cfg.get("classifier", "classifier")
    state = {key: value for key, value in state.items() if not key.startswith(classifier + ".")}
    expected = model.state_dict()
    missing = [key for key in expected if key not in state and not key.startswith(classifier + ".")]
    unexpected = [key for key in state if key not in expected]
    reshaped = [key for key in state if key in expected and state[key].shape != expected[key].shape]
    if missing or unexpected or reshaped:
        raise CLIError(
            f"{folder}: weights do not match timm's {config['architecture']} (config.json `architecture`): "
            f"{len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(reshaped)} "
            f"of another shape {reshaped[:3]}. Expected the TimmWrapper folder of that architecture (e.g. "
            "marnet-convert-efficientnet's): give the right --vision-model or fix its config.json."
        )
    model.load_state_dict(state, strict=False)
    return model


class TransformedSplit(torch.utils.data.Dataset):
    """A split's (transformed RGB image, label) pairs."""

    def __init__(self, split, transform):
        self.split, self.transform = split, transform

    def __len__(self):
        return len(self.split)

    def __getitem__(self, index):
        row = self.split[index]
        return self.transform(row["image"].convert("RGB")), row["label"]


@torch.no_grad()
def evaluate(model, loader, channels_last):
    """top1/top5/loss/num_samples of `model` on `loader`, as marnet-train's per-split metrics."""
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    for images, labels in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images)
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        correct1 += int((top5[:, 0] == labels).sum())
        correct5 += int((top5 == labels[:, None]).any(-1).sum())
        loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        total += labels.shape[0]
    return {"top1": correct1 / total, "top5": correct5 / total, "loss": loss_sum / total, "num_samples": total}


@command(PROG)
def main(argv=None):
    import datasets
    from timm.data import create_transform, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    args = parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    dataset = datasets.load_from_disk(str(args.dataset))
    num_classes = dataset["train"].features["label"].num_classes
    model = load_timm_tower(args.vision_model, num_classes)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data_config = resolve_data_config({"input_size": (3, args.image_size, args.image_size)}, model=model)
    train_transform = create_transform(**data_config, is_training=True)
    eval_transform = create_transform(**data_config, is_training=False)
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(
        TransformedSplit(dataset["train"], train_transform),
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        drop_last=False,
        generator=generator,
    )
    eval_loaders = {
        split: torch.utils.data.DataLoader(TransformedSplit(dataset[split], eval_transform), batch_size=64)
        for split in ("validation", "test")
    }
    optimizer = create_optimizer_v2(model, "adamw", lr=args.learning_rate, weight_decay=args.weight_decay)
    # Linear warm-up over the first --warmup-ratio of the updates, inside the cosine's span (as marnet-train).
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=args.num_train_epochs,
        warmup_epochs=args.warmup_ratio * args.num_train_epochs,
        step_on_epochs=False,
        updates_per_epoch=len(train_loader),
        warmup_lr=args.learning_rate * 1e-3,
    )
    criterion = LabelSmoothingCrossEntropy(args.label_smoothing)
    history, best = [], None
    train_images, train_seconds, step = 0, 0.0, 0
    for epoch in range(args.num_train_epochs):
        model.train()
        tic = time.perf_counter()
        for images, labels in train_loader:
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loss = criterion(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            train_images += labels.shape[0]
        train_seconds += time.perf_counter() - tic
        validation = evaluate(model, eval_loaders["validation"], args.channels_last)
        history.append({"epoch": epoch + 1, "step": step, **{f"eval_{k}": v for k, v in validation.items()}})
        print(f"epoch {epoch + 1}: validation {validation}", flush=True)
        if best is None or validation["top1"] > best["validation"]["top1"]:
            best = {
                "step": step,
                "validation": validation,
                "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            }
    model.load_state_dict(best["state"])
    test = evaluate(model, eval_loaders["test"], args.channels_last)
    metrics = classification_metrics(
        {"validation": best["validation"], "test": test},
        "test",
        train_images_per_second=train_images / max(train_seconds, 1e-9),
        wall_time_seconds=time.perf_counter() - started,
        global_step=step,
        epochs=args.num_train_epochs,
        best_step=best["step"],
    )
    run = RunFolder(args.output_dir)
    atomic_write_text(run.history_file, "".join(json.dumps(record) + "\n" for record in history))
    atomic_write_json(run.metrics_file, metrics)  # last: its presence means the run finished
    print(f"test top-1 {test['top1']:.4f} top-5 {test['top5']:.4f} (best epoch step {best['step']})")


if __name__ == "__main__":
    sys.exit(main())
