"""Evaluate an image classifier (a MARNet run folder or any other) on dataset splits: `marnet-eval` or
`accelerate launch -m modeling_marnet.evaluate ...`.

Prints the metrics as JSON in the metrics.json layout of the run folder (`marnet_cli.run_folder`) and, with
`--metrics_file`, writes them there. Only images are used. With `--corruption NAME --severity K` every image is
corrupted after decoding and before the image processor (`modeling_marnet.corruptions`). MARNet is registered with
the Auto classes by importing this package, so no `trust_remote_code` is needed for it.
"""

import json
import sys
import time

from accelerate import Accelerator
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from marnet_cli.errors import CLIError, UsageError
from marnet_cli.files import atomic_write_json, refuse_missing_local_path
from marnet_cli.run_folder import classification_metrics

from .corruptions import ImageCorruption
from .training.data import (
    check_columns,
    check_label_range,
    check_split,
    class_names,
    first_rows,
    load_image_dataset,
)
from .training.image_paths import dataset_folders
from .training.loaders import make_loaders
from .training.loop import evaluate
from .training.memory_check import check_model_fits


def load_classifier(args, dtype=None):
    """The model (in `dtype`, default: as saved) and image processor of `--model_name_or_path`, with
    `--num_inference_steps` applied; used by marnet-eval and marnet-export."""
    try:
        config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
        check_model_fits(config, f"--model_name_or_path {args.model_name_or_path}")
        model = AutoModelForImageClassification.from_pretrained(
            args.model_name_or_path, config=config, trust_remote_code=args.trust_remote_code, dtype=dtype
        )
        image_processor = AutoImageProcessor.from_pretrained(
            args.model_name_or_path, trust_remote_code=args.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise CLIError(
            f"--model_name_or_path {args.model_name_or_path}: cannot load an image classifier and its image "
            f"processor ({error})."
        ) from None
    except RuntimeError as error:
        if "ignore_mismatched_sizes" not in str(error):
            raise
        raise CLIError(
            f"--model_name_or_path {args.model_name_or_path}: its weights do not have the shapes its config.json "
            "describes (config.json edited, or weights from another model). Save the model again with "
            "`save_pretrained`, which writes both."
        ) from None
    if args.num_inference_steps is not None:
        if not hasattr(model.config, "num_inference_steps"):
            raise UsageError("--num_inference_steps applies to MARNet models only.")
        model.config.num_inference_steps = args.num_inference_steps
        model.config.validate_marnet()
    return model, image_processor


def check_labels(model, label_names):
    model_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if model_labels != label_names:
        raise CLIError(
            f"The model's labels {model_labels[:5]} ({len(model_labels)}) differ from the dataset's ClassLabel names "
            f"{label_names[:5]} ({len(label_names)}): accuracy would compare unrelated ids. Evaluate on the dataset "
            "the model was trained for."
        )


def run(args):
    """Evaluates with the options of `marnet_cli.eval_args.EvalArguments`; returns the metrics."""
    started = time.perf_counter()
    dataset, folders = load_image_dataset(args.dataset), dataset_folders(args.dataset)
    refuse_missing_local_path(args.model_name_or_path, "--model_name_or_path")
    model, image_processor = load_classifier(args)
    splits = {}
    corruption = ImageCorruption(args.corruption, args.severity) if args.corruption is not None else None
    for split_name in args.split:
        split = check_split(dataset, split_name, "--split")
        check_columns(split, split_name, {"--image_column": args.image_column, "--label_column": args.label_column})
        label_names = class_names(split, args.label_column)
        check_labels(model, label_names)
        check_label_range(split, split_name, args.label_column, len(label_names))
        if args.max_eval_samples is not None:
            split = first_rows(split, args.max_eval_samples)
        splits[split_name] = (split_name, split)
    # Plain DataLoaders (the default `LoaderSettings`): batches made in this process.
    loaders = make_loaders(args, image_processor, splits, folders, corruption=corruption)

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    model = accelerator.prepare(model)
    per_split = {
        name: evaluate(model, accelerator.prepare(loader), accelerator, name, loaders.eval_inputs)
        for name, loader in loaders.evaluation.items()
    }
    metrics = classification_metrics(
        per_split,
        args.split[0],
        model=str(args.model_name_or_path),
        dataset=str(args.dataset),
        mixed_precision=accelerator.mixed_precision,
        corruption=args.corruption,
        severity=args.severity,
        wall_time_seconds=time.perf_counter() - started,
    )
    if accelerator.is_main_process:
        print(json.dumps(metrics, indent=2))
        if args.metrics_file:
            atomic_write_json(args.metrics_file, metrics)
    return metrics


def main(argv=None):
    """`python -m modeling_marnet.evaluate`: the `marnet-eval` console script."""
    from marnet_cli.commands import evaluate as evaluate_command

    return evaluate_command(argv)


if __name__ == "__main__":
    sys.exit(main())
