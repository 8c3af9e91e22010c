"""Command-line options of `marnet-train`, with an optional YAML/JSON config file that the command line overrides."""

import argparse
import json
from pathlib import Path

import yaml

from ..configuration_marnet import ABLATIONS, FUSION_MODES
from .errors import TrainingInputError

MIXED_PRECISION = ("no", "fp16", "bf16")
TEXT_POOLINGS = ("mean", "cls", "pooler")
EVAL_STRATEGIES = ("epoch", "steps", "no")
BEST_MODEL_METRICS = ("top1", "top5", "loss")
REPORT_TO = ("tensorboard", "all", "none")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="marnet-train",
        description="Train MARNet (text as privileged information) with Accelerate. Run it plainly for one process "
        "or with `accelerate launch -m modeling_marnet.train ...` for several GPUs / nodes.",
    )
    parser.add_argument("--config", help="YAML or JSON file of option values (keys as below, `_` or `-`); the "
                        "command line overrides them.")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help="Hub dataset id, a `save_to_disk` directory, a Parquet file or a directory "
                      "of Parquet files named by split.")
    data.add_argument("--train-split", default="train")
    data.add_argument("--validation-split", default="validation")
    data.add_argument("--test-split", default="test", help="Used for the final metrics when the dataset has it.")
    data.add_argument("--image-column", default="image")
    data.add_argument("--label-column", default="label", help="A ClassLabel column: its names become id2label.")
    data.add_argument("--text-column", default="text", help="Privileged text, used in training only.")
    data.add_argument("--max-train-samples", type=int, help="Keep the first N training rows (quick runs).")
    data.add_argument("--augment", action="store_true", help="Random resized crop + horizontal flip in training.")
    data.add_argument("--image-size", type=int, help="Override the image processor's output size (square).")
    data.add_argument("--dataloader-num-workers", type=int, default=0)

    model = parser.add_argument_group("model")
    model.add_argument("--model-name-or-path", help="An existing MARNet checkpoint (directory or Hub id) to "
                       "continue or fine-tune.")
    model.add_argument("--vision-model", help="A pretrained vision tower (directory or Hub id; ViT, any "
                       "transformers vision model, or timm through TimmWrapper) to build a new MARNet on.")
    model.add_argument("--ablation", choices=tuple(ABLATIONS), help="Paper ablation row for a new model "
                       "(default: full). `baseline` is visual only and needs no text.")
    model.add_argument("--fusion-mode", choices=FUSION_MODES, help="Fusion of the branches for a new model.")
    model.add_argument("--num-inference-steps", type=int, help="Reverse diffusion steps at evaluation/inference.")
    model.add_argument("--marnet-config", action="append", default=[], metavar="FIELD=VALUE",
                       help="Any other MARNetConfig field for a new model, e.g. alignment_loss_weight=0.2 "
                       "(value parsed as JSON when it can be). Repeatable.")

    text = parser.add_argument_group("privileged text")
    text.add_argument("--text-encoder", help="BERT-like text encoder (directory or Hub id) that turns the text into "
                      "the privileged features.")
    text.add_argument("--text-pooling", choices=TEXT_POOLINGS, default="mean",
                      help="mean: mean over the attention mask; cls: first token; pooler: the encoder's pooler.")
    text.add_argument("--text-max-length", type=int, default=128)
    text.add_argument("--train-text-encoder", action="store_true", help="Fine-tune the text encoder jointly "
                      "(tokenizes in the collator). Default: frozen, embeddings computed once and cached.")
    text.add_argument("--text-cache-dir", help="Where frozen text embeddings are cached (default: "
                      "$HF_HOME/marnet/text_features).")

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--num-train-epochs", type=float, default=3.0)
    optim.add_argument("--max-steps", type=int, help="Optimizer steps; overrides --num-train-epochs.")
    optim.add_argument("--learning-rate", type=float, default=5e-5)
    optim.add_argument("--tower-lr-multiplier", type=float, default=1.0, help="Learning rate of the pretrained towers "
                       "(vision, and a jointly trained text encoder) as a multiple of --learning-rate, which the fresh "
                       "MARNet heads use.")
    optim.add_argument("--auxiliary-warmup-ratio", type=float, default=0.0, help="Fraction of the steps over which "
                       "the auxiliary losses (alignment, reconstruction, text classification, distillation) ramp "
                       "linearly from 0 to their weights.")
    optim.add_argument("--weight-decay", type=float, default=0.05, help="Not applied to biases, norms, logit_scale.")
    optim.add_argument("--warmup-ratio", type=float, default=0.1, help="Fraction of steps of linear warmup "
                       "before the cosine decay.")
    optim.add_argument("--warmup-steps", type=int, help="Warmup steps; overrides --warmup-ratio.")
    optim.add_argument("--per-device-train-batch-size", type=int, default=32)
    optim.add_argument("--per-device-eval-batch-size", type=int, default=64)
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1)
    optim.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no")
    optim.add_argument("--seed", type=int, default=42)

    loop = parser.add_argument_group("evaluation, checkpoints, logging")
    loop.add_argument("--output-dir", help="Where the best model, metrics.json, checkpoints/ and logs/ go.")
    loop.add_argument("--overwrite-output-dir", action="store_true")
    loop.add_argument("--eval-strategy", choices=EVAL_STRATEGIES, default="epoch")
    loop.add_argument("--eval-steps", type=int, default=500, help="With --eval-strategy steps.")
    loop.add_argument("--metric-for-best-model", choices=BEST_MODEL_METRICS, default="top1")
    loop.add_argument("--early-stopping-patience", type=int, help="Stop after this many evaluations without "
                      "improvement of --metric-for-best-model.")
    loop.add_argument("--checkpointing-steps", type=int, default=500, help="Save resumable state every N "
                      "optimizer steps (0: never).")
    loop.add_argument("--save-total-limit", type=int, default=2, help="Keep the last K checkpoints.")
    loop.add_argument("--resume-from-checkpoint", help="`latest` or a checkpoint directory.")
    loop.add_argument("--report-to", choices=REPORT_TO, default="tensorboard")
    loop.add_argument("--logging-steps", type=int, default=10)
    loop.add_argument("--gradient-norm-steps", type=int, default=0, help="Every N optimizer steps, log how much "
                      "gradient each weighted loss term sends into the vision tower (L2 norm; one extra backward per "
                      "term; single process only). 0: never.")
    data.add_argument("--channels-last", action="store_true", help="Run the vision tower in channels-last memory "
                      "format (faster for convolutional towers on CPU and recent GPUs).")
    return parser


def _read_config_file(path):
    path = Path(path)
    if not path.is_file():
        raise TrainingInputError(f"--config {path}: no such file.")
    text = path.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise TrainingInputError(f"--config {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}")
    if not isinstance(values, dict):
        raise TrainingInputError(f"--config {path}: expected a mapping of option names to values, got "
                                 f"{type(values).__name__}.")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def _config_file_defaults(parser, path):
    """Values of the config file, checked and converted as if given on the command line."""
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    values = _read_config_file(path)
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise TrainingInputError(
            f"--config {path}: unknown option(s) {unknown}. Valid keys: {', '.join(sorted(actions))}."
        )
    for key, value in values.items():
        action = actions[key]
        if key == "marnet_config" and isinstance(value, dict):
            values[key] = [f"{field}={json.dumps(field_value)}" for field, field_value in value.items()]
            continue
        if action.type is not None and value is not None and not isinstance(value, bool):
            try:
                value = values[key] = action.type(value)
            except (TypeError, ValueError):
                raise TrainingInputError(f"--config {path}: `{key}` must be {action.type.__name__}, got {value!r}.")
        if action.choices is not None and value is not None and value not in action.choices:
            raise TrainingInputError(
                f"--config {path}: `{key}` must be one of {', '.join(map(str, action.choices))}, got {value!r}."
            )
    return values


def parse_marnet_config_overrides(entries):
    """`["field=value", ...]` -> {field: value}, values parsed as JSON when possible (`0.2`, `true`, `"hm"`)."""
    overrides = {}
    for entry in entries:
        field, separator, raw = entry.partition("=")
        if not separator or not field:
            raise TrainingInputError(f"--marnet-config expects FIELD=VALUE, got {entry!r}.")
        try:
            overrides[field.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[field.strip()] = raw
    return overrides


def _check_ranges(args):
    positive = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "eval_steps", "logging_steps", "save_total_limit", "text_max_length")
    for name in positive:
        if getattr(args, name) < 1:
            raise TrainingInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    for name in ("max_steps", "max_train_samples", "early_stopping_patience", "image_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise TrainingInputError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
    if not 0 < args.tower_lr_multiplier < float("inf"):
        raise TrainingInputError(f"--tower-lr-multiplier must be a finite number > 0, got {args.tower_lr_multiplier}.")
    if not 0 <= args.auxiliary_warmup_ratio <= 1:
        raise TrainingInputError(f"--auxiliary-warmup-ratio must be in [0, 1], got {args.auxiliary_warmup_ratio}.")
    if args.gradient_norm_steps < 0:
        raise TrainingInputError(f"--gradient-norm-steps must be >= 0, got {args.gradient_norm_steps}.")
    if args.checkpointing_steps < 0 or args.dataloader_num_workers < 0 or args.learning_rate <= 0:
        raise TrainingInputError("--checkpointing-steps and --dataloader-num-workers must be >= 0 and "
                                 f"--learning-rate > 0, got {args.checkpointing_steps}, "
                                 f"{args.dataloader_num_workers}, {args.learning_rate}.")
    if args.max_steps is None and args.num_train_epochs <= 0:
        raise TrainingInputError(f"--num-train-epochs must be > 0 (or give --max-steps), got {args.num_train_epochs}.")
    if not 0 <= args.warmup_ratio < 1 or (args.warmup_steps is not None and args.warmup_steps < 0):
        raise TrainingInputError("--warmup-ratio must be in [0, 1) and --warmup-steps >= 0.")
    if args.weight_decay < 0:
        raise TrainingInputError(f"--weight-decay must be >= 0, got {args.weight_decay}.")
    if args.early_stopping_patience is not None and args.eval_strategy == "no":
        raise TrainingInputError("--early-stopping-patience needs evaluations: set --eval-strategy epoch or steps.")


def parse_args(argv=None):
    """Options from the config file (if any), overridden by the command line; raises `TrainingInputError`."""
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    if args.config:
        parser.set_defaults(**_config_file_defaults(parser, args.config))
    args = parser.parse_args(argv)
    for name in ("dataset", "output_dir"):
        if not getattr(args, name):
            raise TrainingInputError(f"--{name.replace('_', '-')} is required (on the command line or in --config).")
    if bool(args.model_name_or_path) == bool(args.vision_model):
        raise TrainingInputError(
            "Give exactly one model source: --vision-model (a pretrained vision tower to build a new MARNet on) or "
            "--model-name-or-path (an existing MARNet checkpoint), got "
            f"{'both' if args.vision_model else 'neither'}."
        )
    _check_ranges(args)
    args.marnet_config = parse_marnet_config_overrides(args.marnet_config)
    return args
