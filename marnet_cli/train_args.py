"""Options of `marnet-train`, named as transformers' `TrainingArguments` and image-classification examples name them.

Options left at `None` defer to someone else: `mixed_precision` and `gradient_accumulation_steps` to Accelerate's
config (`accelerate config`, `accelerate launch --mixed_precision bf16`, `ACCELERATE_*` variables), the text settings
to the text encoder's own sentence-transformers files.
"""

import json
import math
import sys
from dataclasses import dataclass
from typing import Literal

from .errors import UsageError
from .example_flags import handle_example_flags
from .options import MARNetArgumentParser, config_option, option, parse_field_values

# The model's names (modeling_marnet.ABLATIONS, FUSION_MODES, ALIGNMENT_LOSSES), repeated here so that parsing imports
# no torch.
ABLATION_NAMES = ("baseline", "ema", "mlp", "cdr", "full", "ingredients")
FUSION_MODES = ("concat", "add", "mul", "sum", "hm")
ALIGNMENT_METHODS = ("ita", "sdm", "swd", "cdd", "ssan", "team")
# The names transformers' image-classification example (and Trainer's `eval_` prefix) give our metrics.
TRAINER_METRIC_NAMES = {
    "accuracy": "top1",
    "eval_accuracy": "top1",
    "eval_top1": "top1",
    "eval_top5": "top5",
    "eval_loss": "loss",
}
BEST_MODEL_METRICS = ("top1", "top5", "loss", *TRAINER_METRIC_NAMES)
AUGMENTATIONS = ("none", "crop_flip", "randaugment", "trivialaugment", "autoaugment")

DESCRIPTION = """\
Train MARNet (text as privileged information) with Accelerate: plainly on one process, or with
`accelerate launch -m modeling_marnet.train ...` on several GPUs or nodes. Options may come from a YAML/JSON file
(`--config run.yaml`, or the file as the only argument); the command line overrides it. Every option is also
accepted with dashes (`--output-dir`). Commands of transformers' image-classification examples run as written:
their flags that are not options here are translated (--fp16, --bf16), accepted with a note saying why they change
nothing (--do_train, --remove_unused_columns, ...) or refused with our equivalent (docs/training.md).

example:
  marnet-train --dataset_name datasets/vireo-food172 --vision_model google/vit-base-patch16-224-in21k \\
      --text_encoder sentence-transformers/all-MiniLM-L6-v2 --output_dir runs/vireo --learning_rate 1e-4
"""


@dataclass
class TrainArguments:
    """Every option of `marnet-train`; `__post_init__` checks them and raises [`UsageError`] for bad values."""

    config: str | None = config_option()

    # data
    dataset: str | None = option(
        group="data",
        aliases=["--dataset_name"],
        help="Hub dataset id, a `save_to_disk` directory, a Parquet file or a directory of Parquet files named by "
        "split.",
    )
    dataset_config_name: str | None = option(
        group="data", help="The configuration of a Hub dataset that has several (load_dataset's `name`)."
    )
    train_dir: str | None = option(
        group="data",
        help="Instead of --dataset_name: a folder of class sub-folders (root/<class>/<image>), read by datasets' "
        "imagefolder. It has no text column: train it with --ablation baseline.",
    )
    validation_dir: str | None = option(group="data", help="With --train_dir: the validation images, laid out alike.")
    train_split: str = option("train", group="data")
    validation_split: str = option("validation", group="data")
    test_split: str = option("test", group="data", help="Used for the final metrics when the dataset has it.")
    train_val_split: float | None = option(
        group="data",
        help="For a dataset without --validation_split: hold out this fraction of the training split (stratified by "
        "label) to validate on.",
    )
    image_column: str = option("image", group="data", aliases=["--image_column_name"])
    label_column: str = option(
        "label", group="data", aliases=["--label_column_name"], help="A ClassLabel column: its names become id2label."
    )
    text_column: str = option("text", group="data", help="Privileged text, used in training only.")
    ingredient_column: str = option(
        "ingredients",
        group="data",
        help="Multi-label targets of the ingredient head (a list of ClassLabel per row, as Vireo-Food172's "
        "`ingredients`), used in training only by models with ingredient_loss_weight > 0 (--ablation ingredients).",
    )
    max_train_samples: int | None = option(group="data", help="Keep the first N training rows (quick runs).")
    max_eval_samples: int | None = option(
        group="data", help="Keep the first N rows of the validation and test splits (quick runs)."
    )
    augment: str = option(
        "none",
        group="data",
        nargs="?",
        const="crop_flip",
        choices=AUGMENTATIONS,
        help="Training augmentation: crop_flip (random resized crop + horizontal flip; the value of a bare "
        "--augment), or that followed by RandAugment, TrivialAugment or AutoAugment (ImageNet policy).",
    )
    color_jitter: float = option(
        0.0,
        group="data",
        help="Brightness, contrast and saturation jitter of training images (timm's factor, e.g. 0.4); 0: none.",
    )
    image_size: int | None = option(group="data", help="Override the image processor's output size (square).")

    # model
    model_name_or_path: str | None = option(
        group="model", help="An existing MARNet checkpoint (directory or Hub id) to continue or fine-tune."
    )
    vision_model: str | None = option(
        group="model",
        help="A pretrained vision tower (directory or Hub id; ViT, any transformers vision model, timm through "
        "TimmWrapper) to build a new MARNet on.",
    )
    ablation: Literal[ABLATION_NAMES] | None = option(
        group="model",
        help="Paper ablation row of a new model (default: full). `baseline` is visual only and needs no text; "
        "`ingredients` is the baseline predicting --ingredient_column as auxiliary targets (no text).",
    )
    fusion_mode: Literal[FUSION_MODES] | None = option(group="model", help="Fusion of the branches of a new model.")
    alignment: Literal[ALIGNMENT_METHODS] | None = option(
        group="model",
        help="Alignment loss of a new model (the paper's Table 1; default ita). `team` runs as 'TEAM, pooled text' "
        "from marnet-train (docs/alignment_methods.md).",
    )
    num_inference_steps: int | None = option(group="model", help="Reverse diffusion steps at evaluation/inference.")
    marnet_config: list[str] = option(
        [],
        group="model",
        action="extend",
        metavar="FIELD=VALUE",
        help="Any other MARNetConfig field, e.g. alignment_loss_weight=0.2 (values parsed as JSON when they can "
        "be). Repeatable.",
    )
    ignore_mismatched_sizes: bool = option(
        False,
        group="model",
        help="With --model_name_or_path: fine-tune the checkpoint on the dataset's labels, with fresh classifier "
        "heads where the number of labels differs.",
    )
    trust_remote_code: bool = option(
        False,
        group="model",
        help="Allow the text encoder, image processor and checkpoints to run code from their Hub repos.",
    )

    # privileged text
    text_encoder: str | None = option(
        group="privileged text",
        help="Text encoder (directory or Hub id; BERT-like or sentence-transformers) that turns the text into the "
        "privileged features.",
    )
    text_pooling: Literal["mean", "mean_sqrt_len", "max", "cls", "last", "pooler"] | None = option(
        group="privileged text",
        help="Token pooling (default: the encoder's sentence-transformers pooling, else mean over the attention "
        "mask).",
    )
    text_max_length: int | None = option(
        group="privileged text",
        help="Tokens per text (default: the encoder's sentence-transformers max_seq_length, else the tokenizer's "
        "maximum).",
    )
    train_text_encoder: bool = option(
        False,
        group="privileged text",
        help="Fine-tune the text encoder jointly. Default: frozen, its features computed once and cached.",
    )
    text_cache_dir: str | None = option(
        group="privileged text",
        help="Where frozen text features are cached (default: $HF_HOME/marnet/text_features; one cache per node).",
    )

    # optimization
    num_train_epochs: float = option(3.0, group="optimization")
    max_steps: int | None = option(
        group="optimization", aliases=["--max_train_steps"], help="Optimizer steps; overrides --num_train_epochs."
    )
    learning_rate: float = option(5e-5, group="optimization", help="Peak learning rate of the MARNet heads.")
    tower_lr_multiplier: float = option(
        1.0,
        group="optimization",
        help="Learning rate of the pretrained towers (vision, and a jointly trained text encoder) as a multiple of "
        "--learning_rate.",
    )
    auxiliary_warmup_ratio: float = option(
        0.0,
        group="optimization",
        help="Fraction of the steps over which the auxiliary losses (alignment, reconstruction, text "
        "classification, distillation) ramp linearly from 0 to their weights.",
    )
    weight_decay: float = option(0.05, group="optimization", help="Not applied to biases, norms, logit_scale.")
    lr_scheduler_type: str = option(
        "cosine",
        group="optimization",
        help="Any transformers.get_scheduler type: linear, cosine, cosine_with_restarts, polynomial, constant, "
        "constant_with_warmup, inverse_sqrt, cosine_with_min_lr, warmup_stable_decay, ...",
    )
    lr_scheduler_kwargs: dict | str | None = option(
        group="optimization", help="Extra arguments of the scheduler, as a JSON object, e.g. '{\"min_lr_rate\": 0.1}'."
    )
    warmup_ratio: float = option(0.1, group="optimization", help="Fraction of the steps of linear warmup.")
    warmup_steps: int | None = option(
        group="optimization", aliases=["--num_warmup_steps"], help="Warmup steps; overrides --warmup_ratio."
    )
    max_grad_norm: float = option(1.0, group="optimization", help="Clip the gradient norm to this (0: no clipping).")
    label_smoothing_factor: float = option(
        0.0,
        group="optimization",
        aliases=["--label_smoothing"],
        help="Label smoothing of every classification loss term.",
    )
    per_device_train_batch_size: int = option(32, group="optimization")
    per_device_eval_batch_size: int = option(64, group="optimization")
    gradient_accumulation_steps: int | None = option(
        group="optimization", help="Batches per optimizer step (default: Accelerate's config, else 1)."
    )
    seed: int = option(42, group="optimization")
    skip_nonfinite_loss: bool = option(
        False,
        group="optimization",
        help="Skip an optimizer step whose loss is NaN or infinite (with a warning; metrics.json counts them) instead "
        "of stopping with an error.",
    )
    full_determinism: bool = option(
        False,
        group="optimization",
        help="Deterministic algorithms everywhere (transformers' enable_full_determinism): reproducible, slower.",
    )

    # hardware
    mixed_precision: Literal["no", "fp16", "bf16"] | None = option(
        group="hardware", help="Default: Accelerate's config or `accelerate launch --mixed_precision`."
    )
    gradient_checkpointing: bool = option(
        False,
        group="hardware",
        help="Recompute the vision tower's activations in the backward pass (less memory, slower).",
    )
    torch_compile: bool = option(False, group="hardware", help="Compile the model with torch.compile (inductor).")
    channels_last: bool = option(
        False,
        group="hardware",
        help="Run the vision tower in channels-last memory format (faster for convolutional towers on CPU and "
        "recent GPUs).",
    )
    dataloader_num_workers: int | None = option(
        group="hardware",
        help="DataLoader worker processes per training process, which decode, augment and resize the images "
        "(default: the CPU cores available, divided among the node's training processes, at most 16; 0: in the "
        "training process).",
    )
    gpu_decode: bool = option(
        False,
        group="hardware",
        help="Decode JPEGs with nvJPEG on the GPU in the training step (and augment and resize there) instead of in "
        "the DataLoader workers. Needs CUDA.",
    )

    # evaluation and checkpoints
    output_dir: str | None = option(
        group="evaluation and checkpoints",
        help="Where the best model, metrics.json, training_args.json, checkpoints/ and logs/ go.",
    )
    overwrite_output_dir: bool = option(False, group="evaluation and checkpoints")
    eval_strategy: Literal["epoch", "steps", "no"] = option(
        "epoch", group="evaluation and checkpoints", aliases=["--evaluation_strategy"]
    )
    eval_steps: int = option(500, group="evaluation and checkpoints", help="With --eval_strategy steps.")
    metric_for_best_model: Literal[BEST_MODEL_METRICS] = option(
        "top1",
        group="evaluation and checkpoints",
        help="top1, top5 or loss; Trainer's names for them (accuracy, eval_accuracy, eval_loss) are taken too.",
    )
    early_stopping_patience: int | None = option(
        group="evaluation and checkpoints",
        help="Stop after this many evaluations without improvement of --metric_for_best_model.",
    )
    checkpointing_steps: str = option(
        "500",
        group="evaluation and checkpoints",
        aliases=["--save_steps"],
        help="Save resumable state every N optimizer steps, or `epoch` at the end of every epoch (0: never).",
    )
    save_strategy: Literal["steps", "epoch", "no"] | None = option(
        group="evaluation and checkpoints",
        help="As Trainer's: `steps` saves every --save_steps, `epoch` sets --checkpointing_steps epoch, `no` sets it "
        "to 0.",
    )
    save_total_limit: int = option(2, group="evaluation and checkpoints", help="Keep the last K checkpoints.")
    resume_from_checkpoint: str | None = option(
        group="evaluation and checkpoints", help="`latest` or a checkpoint directory."
    )
    allow_changed_arguments: bool = option(
        False,
        group="evaluation and checkpoints",
        help="Resume even when settings differ from the checkpoint's run (it then continues, not exactly).",
    )

    # logging
    report_to: list[str] = option(
        ["tensorboard"],
        group="logging",
        help="Trackers, any that Accelerate supports (tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, "
        "swanlab, trackio), `all` (those installed) or `none`; several are separated by spaces or commas.",
    )
    run_name: str | None = option(
        group="logging", help="Name of the run in the trackers (default: the name of --output_dir)."
    )
    project: str = option(
        "marnet",
        group="logging",
        aliases=["--project_name"],
        help="Tracker project (W&B, Comet, trackio, SwanLab, MLflow experiment); TensorBoard writes logs/<project>/.",
    )
    logging_steps: int = option(10, group="logging")
    gradient_norm_steps: int = option(
        0,
        group="logging",
        help="Every N optimizer steps, log how much gradient each weighted loss term sends into the vision tower "
        "(one extra backward per term; single process only). 0: never.",
    )

    # publishing
    push_to_hub: bool = option(
        False,
        group="publishing",
        help="Publish the best model at the end, as marnet-publish does (model card from the measured metrics).",
    )
    hub_model_id: str | None = option(
        group="publishing",
        aliases=["--push_to_hub_model_id"],
        help="The Hub repo, owner/name; a bare name takes the token owner's user name (asked of the Hub at start).",
    )
    hub_private_repo: bool = option(False, group="publishing", help="Create the repo as private.")
    hub_revision: str | None = option(group="publishing", help="Branch to commit to (created if missing).")
    hub_dry_run: bool = option(
        False, group="publishing", help="Write the repo folder to <output_dir>/hub_repo and send nothing."
    )

    def __post_init__(self):
        self.report_to = _trackers(self.report_to)
        self.metric_for_best_model = TRAINER_METRIC_NAMES.get(self.metric_for_best_model, self.metric_for_best_model)
        if isinstance(self.lr_scheduler_kwargs, str):
            self.lr_scheduler_kwargs = _json_object(self.lr_scheduler_kwargs, "--lr_scheduler_kwargs")
        self.marnet_config = parse_marnet_config(self.marnet_config)
        self.checkpointing_steps = _checkpointing_steps(self.checkpointing_steps, self.save_strategy)
        _check_dataset_source(self)
        if not self.output_dir:
            raise UsageError("--output_dir is required (on the command line or in --config).")
        if bool(self.model_name_or_path) == bool(self.vision_model):
            raise UsageError(
                "Give exactly one model source: --vision_model (a pretrained vision tower to build a new MARNet on) "
                "or --model_name_or_path (an existing MARNet checkpoint), got "
                f"{'both' if self.vision_model else 'neither'}."
            )
        if self.ignore_mismatched_sizes and not self.model_name_or_path:
            raise UsageError(
                "--ignore_mismatched_sizes applies to --model_name_or_path checkpoints; a new model built with "
                "--vision_model always gets the dataset's labels."
            )
        _check_ranges(self)
        _check_publishing(self)


def _checkpointing_steps(value, save_strategy):
    """--checkpointing_steps as the loop takes it: an int >= 0 or "epoch"; Trainer's --save_strategy decides first."""
    if save_strategy in ("epoch", "no"):
        return {"epoch": "epoch", "no": 0}[save_strategy]
    if value == "epoch":
        return value
    try:
        steps = int(value)
    except ValueError:
        steps = -1
    if steps < 0:
        raise UsageError(f"--checkpointing_steps must be an integer >= 0 or 'epoch', got {value!r}.")
    return steps


def _check_dataset_source(args):
    """Exactly one of --dataset_name and --train_dir; --validation_dir and --dataset_config_name go with one each.
    With --train_dir, `dataset` becomes that folder (what training_args.json and the model card name)."""
    sources = {args.dataset, args.train_dir} - {None, ""}  # equal once `dataset` names the --train_dir folder
    if len(sources) != 1:
        raise UsageError(
            "Give exactly one dataset: --dataset_name (Hub id, save_to_disk folder or Parquet) or --train_dir (a "
            f"folder of class sub-folders), got {'both' if sources else 'neither'}."
        )
    if args.validation_dir and not args.train_dir:
        raise UsageError("--validation_dir goes with --train_dir; a --dataset_name dataset names --validation_split.")
    if args.dataset_config_name and args.train_dir:
        raise UsageError("--dataset_config_name selects a configuration of a --dataset_name Hub dataset.")
    args.dataset = args.dataset or args.train_dir


def _trackers(values):
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if "none" in names and len(names) > 1:
        raise UsageError(f"--report_to none cannot be combined with other trackers, got {names}.")
    return [] if names == ["none"] else names


def _json_object(text, name):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{name} must be a JSON object, got {text!r} ({error}).") from None
    if not isinstance(value, dict):
        raise UsageError(f"{name} must be a JSON object, got {text!r}.")
    return value


def parse_marnet_config(entries):
    """`["field=value", ...]` -> {field: value}, values parsed as JSON when possible (`0.2`, `true`, `"hm"`)."""
    if isinstance(entries, dict):
        return entries
    return parse_field_values(entries, "--marnet_config")


def _check_ranges(args):
    at_least_one = (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "eval_steps",
        "logging_steps",
        "save_total_limit",
        "text_max_length",
        "max_steps",
        "max_train_samples",
        "max_eval_samples",
        "early_stopping_patience",
        "image_size",
    )
    for name in at_least_one:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be >= 1, got {value}.")
    at_least_zero = (
        "gradient_norm_steps",
        "dataloader_num_workers",
        "weight_decay",
        "max_grad_norm",
        "color_jitter",
        "warmup_steps",
    )
    for name in at_least_zero:
        value = getattr(args, name)
        if value is not None and not 0 <= value < math.inf:
            raise UsageError(f"--{name} must be a finite number >= 0, got {value}.")
    for name in ("learning_rate", "tower_lr_multiplier"):
        if not 0 < getattr(args, name) < math.inf:
            raise UsageError(f"--{name} must be a finite number > 0, got {getattr(args, name)}.")
    for name, high in (("auxiliary_warmup_ratio", 1), ("warmup_ratio", 1), ("label_smoothing_factor", 1)):
        if not 0 <= getattr(args, name) <= high:
            raise UsageError(f"--{name} must be in [0, {high}], got {getattr(args, name)}.")
    if args.train_val_split is not None and not 0 < args.train_val_split < 1:
        raise UsageError(f"--train_val_split must be in (0, 1), got {args.train_val_split}.")
    if args.max_steps is None and not 0 < args.num_train_epochs < math.inf:
        raise UsageError(f"--num_train_epochs must be > 0 (or give --max_steps), got {args.num_train_epochs}.")
    if args.early_stopping_patience is not None and args.eval_strategy == "no":
        raise UsageError("--early_stopping_patience needs evaluations: set --eval_strategy epoch or steps.")


def _check_publishing(args):
    if args.push_to_hub:
        if not args.hub_model_id or args.hub_model_id.count("/") > 1:
            raise UsageError(
                f"--push_to_hub needs --hub_model_id owner/name, or a bare name for your own namespace (the model "
                f"card's usage code names the repo), got {args.hub_model_id!r}."
            )
        return
    given = [f"--{name}" for name in ("hub_model_id", "hub_revision") if getattr(args, name)]
    given += [f"--{name}" for name in ("hub_private_repo", "hub_dry_run") if getattr(args, name)]
    if given:
        raise UsageError(f"{', '.join(given)} apply with --push_to_hub; add it, or drop them.")


def parse_train_args(argv=None):
    """The [`TrainArguments`] of `argv` (default: the command line), over its config file's values. Flags of
    transformers' image-classification examples that are not options here are translated, noted or refused first
    (`example_flags`)."""
    argv, notes = handle_example_flags(sys.argv[1:] if argv is None else [str(arg) for arg in argv])
    args = MARNetArgumentParser(TrainArguments, prog="marnet-train", description=DESCRIPTION).parse(argv)
    for note in notes:
        print(f"marnet-train: note: {note}", file=sys.stderr)
    return args
