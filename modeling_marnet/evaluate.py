"""Evaluate an image classifier (a MARNet checkpoint or any other) on dataset splits: `marnet-eval` or
`accelerate launch -m modeling_marnet.evaluate ...`.

Prints the metrics as JSON and, with `--output`, writes them in the `metrics.json` layout of `marnet-train`:
{"top1", "top5", "split", "per_split": {split: {"top1", "top5", "loss", "num_samples"}}, ...}. Only images are used. MARNet
is registered with the Auto classes by importing this package, so no `trust_remote_code` is needed.
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoImageProcessor, AutoModelForImageClassification

from .training.data import (
    ImageTextExamples,
    ImageTransform,
    MARNetCollator,
    check_columns,
    check_label_range,
    check_split,
    class_names,
    load_image_dataset,
)
from .training.errors import TrainingInputError
from .training.loop import evaluate


def build_parser():
    parser = argparse.ArgumentParser(prog="marnet-eval", description="Top-1/top-5 accuracy of an image classifier "
                                     "on dataset splits.")
    parser.add_argument("--model", required=True, help="Model directory (e.g. a marnet-train output dir or one of "
                        "its checkpoints/best-model) or Hub id, with its image processor.")
    parser.add_argument("--dataset", required=True, help="Hub id, `save_to_disk` directory or Parquet file(s).")
    parser.add_argument("--split", action="append", help="Split(s) to evaluate (repeatable; default: test).")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--batch-size", type=int, default=64, help="Per device.")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--num-inference-steps", type=int, help="Override MARNet's reverse diffusion steps.")
    parser.add_argument("--output", help="Write the metrics JSON here.")
    return parser


def load_classifier(args):
    try:
        model = AutoModelForImageClassification.from_pretrained(args.model)
        image_processor = AutoImageProcessor.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        raise TrainingInputError(f"--model {args.model}: cannot load an image classifier and its image processor "
                                 f"({error}).") from None
    if args.num_inference_steps is not None:
        if not hasattr(model.config, "num_inference_steps"):
            raise TrainingInputError("--num-inference-steps applies to MARNet models only.")
        model.config.num_inference_steps = args.num_inference_steps
        model.config.validate_marnet()
    return model, image_processor


def check_labels(model, label_names):
    model_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if model_labels != label_names:
        raise TrainingInputError(
            f"The model's labels {model_labels[:5]} ({len(model_labels)}) differ from the dataset's ClassLabel names "
            f"{label_names[:5]} ({len(label_names)}): accuracy would compare unrelated ids. Evaluate on the dataset "
            "the model was trained for."
        )


def run(args):
    started = time.perf_counter()
    splits = args.split or ["test"]
    dataset = load_image_dataset(args.dataset)
    model, image_processor = load_classifier(args)
    loaders = {}
    collator = MARNetCollator(ImageTransform(image_processor))
    for split_name in splits:
        split = check_split(dataset, split_name, "--split")
        check_columns(split, split_name, {"--image-column": args.image_column, "--label-column": args.label_column})
        label_names = class_names(split, args.label_column)
        check_labels(model, label_names)
        check_label_range(split, split_name, args.label_column, len(label_names))
        examples = ImageTextExamples(split, args.image_column, args.label_column)
        loaders[split_name] = DataLoader(examples, batch_size=args.batch_size, collate_fn=collator)

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    model = accelerator.prepare(model)
    per_split = {}
    for split_name, loader in loaders.items():
        per_split[split_name] = evaluate(model, accelerator.prepare(loader), accelerator)
    metrics = {
        "top1": per_split[splits[0]]["top1"],
        "top5": per_split[splits[0]]["top5"],
        "split": splits[0],
        "per_split": per_split,
        "model": str(args.model),
        "dataset": str(args.dataset),
        "wall_time_seconds": time.perf_counter() - started,
    }
    if accelerator.is_main_process:
        print(json.dumps(metrics, indent=2))
        if args.output:
            output = Path(args.output)
            output.parent.mkdir(parents=True, exist_ok=True)
            partial = output.with_name(f".{output.name}.partial")
            partial.write_text(json.dumps(metrics, indent=2))
            os.replace(partial, output)
    return metrics


def main(argv=None):
    """Console entry point: bad input ends with a message on stderr and exit status 2."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        if args.batch_size < 1:
            raise TrainingInputError(f"--batch-size must be >= 1, got {args.batch_size}.")
        run(args)
    except TrainingInputError as error:
        print(f"marnet-eval: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
