"""Building what trains: whether privileged text is needed and its encoder, the MARNet config and model (a new one on
a pretrained vision tower, or an existing checkpoint, possibly re-headed for new labels) and its image processor."""

import inspect
from dataclasses import dataclass

import torch
from accelerate.logging import get_logger
from transformers import AutoConfig

from marnet_cli.errors import CLIError, UsageError
from marnet_cli.files import refuse_missing_local_path

from ..configuration_marnet import ABLATIONS, MARNetConfig
from ..modeling_marnet import MARNetForImageClassification
from .data_checks import check_text_column, ingredient_vocabulary
from .image_processing import load_image_processor
from .memory_check import check_model_fits
from .text_features import load_text_encoder

logger = get_logger(__name__)

# Fields that change losses or sampling only, so they may be changed on an existing checkpoint.
RUNTIME_FIELDS = {
    "visual_ce_weight",
    "alignment_loss_weight",
    "reconstruction_ce_weight",
    "reconstruction_loss_weight",
    "fusion_ce_weight",
    "ingredient_loss_weight",
    "num_inference_steps",
    "sampler",
    "sampler_seed",
    "contrastive_gather",
    "classifier_dropout",
    "image_only_training",
}
CONFIG_FIELDS = set(inspect.signature(MARNetConfig.__init__).parameters) - {"self", "kwargs", "vision_config"}


@dataclass
class ModelParts:
    """What [`build_model_parts`] gives: the model to train and its image processor, and the privileged text
    encoder with its tokenizer (None for visual-only training), `joint` when the encoder trains with the model."""

    model: MARNetForImageClassification
    image_processor: object
    text_encoder: object = None
    tokenizer: object = None
    joint: bool = False


def build_model_parts(args, splits):
    """Decides whether the run uses privileged text, then loads the text encoder, builds the config and the model
    (`--gradient_checkpointing`, `--channels_last` applied) and loads the image processor, in that order, so that
    every error comes before the expensive steps that follow it."""
    _config_overrides(args)  # unknown --marnet_config fields fail before anything loads
    for option in ("model_name_or_path", "vision_model", "text_encoder"):
        refuse_missing_local_path(getattr(args, option), f"--{option}")
    checkpoint_config = load_checkpoint_config(args, splits.label_names) if args.model_name_or_path else None
    text_encoder, tokenizer = load_text_source(args, splits.train, checkpoint_config)
    config = checkpoint_config or new_model_config(args, splits, text_encoder and text_encoder.hidden_size)
    if checkpoint_config is not None and trains_ingredients(checkpoint_config):
        check_checkpoint_ingredients(args, splits.train, checkpoint_config)
    model = build_model(args, config)
    if args.gradient_checkpointing:
        _validated(lambda: model.gradient_checkpointing_enable({"use_reentrant": False}), "--gradient_checkpointing")
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    image_processor = load_image_processor(args, model.config.vision_config)
    joint = text_encoder is not None and args.train_text_encoder
    return ModelParts(model, image_processor, text_encoder, tokenizer, joint)


def ablation_name(config):
    """The ablation row a config matches (`baseline`, ..., `full`), or `custom`; `+ingredients` when its ingredient
    head trains (`ingredients` for the baseline's)."""
    name = next(
        (
            name
            for name, fields in ABLATIONS.items()
            if name != "ingredients" and all(getattr(config, key) == value for key, value in fields.items())
        ),
        "custom",
    )
    if trains_ingredients(config):
        return "ingredients" if name == "baseline" else f"{name}+ingredients"
    return name


def trains_ingredients(config):
    """Whether training reads the dataset's ingredient column (a weighted ingredient head)."""
    return config.ingredient_loss_weight > 0


def needs_text(config_or_ablation):
    """Whether training needs privileged text (every row but the visual-only baseline, unless the config declares
    `image_only_training`)."""
    fields = ABLATIONS[config_or_ablation] if isinstance(config_or_ablation, str) else vars(config_or_ablation)
    return not fields.get("image_only_training") and (fields["use_alignment"] or fields["reconstruction"] != "none")


def load_text_source(args, train, config):
    """(text encoder, tokenizer) when this run learns from privileged text, else (None, None), with clear errors when
    the model needs text that the dataset or the options do not give."""
    ablation = ablation_name(config) if config is not None else args.ablation or "full"
    if not needs_text(config if config is not None else ablation):
        image_only = config is not None and getattr(config, "image_only_training", False)
        reason = (
            f"the dataset has no {args.text_column!r} column"
            if args.text_column not in train.column_names
            else "the checkpoint's config sets image_only_training"
            if image_only
            else f"ablation {ablation!r} does not use text"
        )
        logger.warning(f"Visual-only training: {reason}; the model learns from images alone.", main_process_only=True)
        return None, None
    if args.text_column not in train.column_names:
        raise CLIError(
            f"Ablation {ablation!r} learns from privileged text, but split {args.train_split!r} has no "
            f"{args.text_column!r} column (columns: {', '.join(train.column_names)}). Pass --text_column, or "
            "--ablation baseline for visual-only training (for a --model_name_or_path checkpoint: --marnet_config "
            "image_only_training=true, which freezes the parameters that only text trains)."
        )
    check_text_column(train, args.train_split, args.text_column)
    if not args.text_encoder:
        raise UsageError(
            f"Ablation {ablation!r} learns from privileged text: pass --text_encoder (a BERT-like or "
            "sentence-transformers encoder, directory or Hub id), or --ablation baseline for visual-only "
            "training."
        )
    text_encoder, tokenizer = load_text_encoder(
        args.text_encoder, args.text_pooling, args.text_max_length, args.trust_remote_code
    )
    if config is not None and config.text_hidden_size != text_encoder.hidden_size:
        raise CLIError(
            f"--text_encoder {args.text_encoder} gives {text_encoder.hidden_size}-d features but the checkpoint "
            f"expects text_hidden_size={config.text_hidden_size}. Use the text encoder the checkpoint was trained "
            "with (same width), or build a new model with --vision_model."
        )
    return text_encoder, tokenizer


def _config_overrides(args):
    overrides = dict(args.marnet_config)
    unknown = sorted(set(overrides) - CONFIG_FIELDS)
    if unknown:
        raise UsageError(
            f"--marnet_config: unknown MARNetConfig field(s) {unknown}. Known fields: "
            f"{', '.join(sorted(CONFIG_FIELDS))}."
        )
    if args.num_inference_steps is not None:
        overrides["num_inference_steps"] = args.num_inference_steps
    if args.fusion_mode is not None:
        overrides["fusion_mode"] = args.fusion_mode
    if args.alignment is not None:
        overrides["alignment"] = args.alignment
    return overrides


def _validated(build, what, error_class=UsageError):
    try:
        return build()
    except (ValueError, TypeError) as error:
        raise error_class(f"{what}: {error}") from None


def load_checkpoint_config(args, label_names):
    """The config of the `--model_name_or_path` checkpoint with the allowed overrides applied, checked against the
    dataset's labels; with `--ignore_mismatched_sizes`, relabelled with them."""
    config = _validated(
        lambda: AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code),
        f"--model_name_or_path {args.model_name_or_path}",
        CLIError,
    )
    if config.model_type != MARNetConfig.model_type:
        raise UsageError(
            f"--model_name_or_path {args.model_name_or_path} is a {config.model_type!r} model, not a MARNet "
            "checkpoint. To build MARNet on it as a vision tower, pass it as --vision_model."
        )
    if args.ablation is not None:
        raise UsageError(
            "--ablation applies to new models; an existing checkpoint keeps its architecture. Use --vision_model to "
            "build a new model."
        )
    overrides = _config_overrides(args)
    architectural = sorted(set(overrides) - RUNTIME_FIELDS)
    if architectural:
        raise UsageError(
            f"{architectural} would change the architecture of the checkpoint {args.model_name_or_path}; only "
            f"{sorted(RUNTIME_FIELDS)} may change. Use --vision_model to build a new model."
        )
    checkpoint_labels = [config.id2label[i] for i in range(config.num_labels)]
    if checkpoint_labels != label_names:
        if not args.ignore_mismatched_sizes:
            raise CLIError(
                f"The checkpoint's labels {checkpoint_labels[:5]}{'...' if config.num_labels > 5 else ''} "
                f"({config.num_labels}) differ from the dataset's ClassLabel names {label_names[:5]}"
                f"{'...' if len(label_names) > 5 else ''} ({len(label_names)}). Pass --ignore_mismatched_sizes to "
                "fine-tune the checkpoint on these labels (fresh classifier heads), or start from the vision tower "
                "with --vision_model."
            )
        logger.warning(
            f"Re-heading {args.model_name_or_path} from {config.num_labels} to {len(label_names)} labels: "
            "classifier weights whose shape changes start fresh.",
            main_process_only=True,
        )
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: i for i, name in enumerate(label_names)}
    for key, value in overrides.items():
        setattr(config, key, value)
    _validated(config.validate_marnet, "--num_inference_steps/--marnet_config")
    return config


def check_checkpoint_ingredients(args, train, config):
    """A checkpoint's ingredient head must be trained on the ingredients it was built for."""
    names = ingredient_vocabulary(train, args.train_split, args.ingredient_column)
    if names != config.ingredient_names:
        raise CLIError(
            f"Column {args.ingredient_column!r} names {len(names)} ingredients ({', '.join(names[:5])}...) but the "
            f"checkpoint's ingredient head predicts {config.num_ingredients} others "
            f"({', '.join((config.ingredient_names or [])[:5])}...). Train with the checkpoint's ingredient "
            "vocabulary, or without the head (--marnet_config ingredient_loss_weight=0)."
        )


def new_model_config(args, splits, text_hidden_size):
    """A MARNetConfig of the `--ablation` row with the command-line overrides, the dataset's labels and, for a
    weighted ingredient head, the dataset's ingredients."""
    fields = _config_overrides(args)
    label_names = splits.label_names
    fields.update(id2label=dict(enumerate(label_names)), label2id={name: i for i, name in enumerate(label_names)})
    ingredient_weight = {**ABLATIONS[args.ablation or "full"], **fields}.get("ingredient_loss_weight", 0)
    if isinstance(ingredient_weight, (int, float)) and ingredient_weight > 0:  # a bad value: MARNetConfig says so
        names = ingredient_vocabulary(splits.train, args.train_split, args.ingredient_column)
        fields.update(num_ingredients=len(names), ingredient_names=names)
    if text_hidden_size is not None:
        fields["text_hidden_size"] = text_hidden_size
    return _validated(lambda: MARNetConfig.from_ablation(args.ablation or "full", **fields), "MARNet configuration")


def build_model(args, config):
    """The MARNet model: loaded from `--model_name_or_path`, or built on the `--vision_model` tower; refused first
    when its config describes a model that cannot fit in memory (`memory_check.check_model_fits`)."""
    if args.model_name_or_path:
        check_model_fits(config, f"--model_name_or_path {args.model_name_or_path}")
        return _validated(
            lambda: MARNetForImageClassification.from_pretrained(
                args.model_name_or_path, config=config, ignore_mismatched_sizes=args.ignore_mismatched_sizes
            ),
            f"--model_name_or_path {args.model_name_or_path}",
            CLIError,
        )
    try:
        fields = {key: value for key, value in config.to_dict().items() if key in CONFIG_FIELDS | {"id2label"}}
        tower_config = AutoConfig.from_pretrained(args.vision_model, trust_remote_code=args.trust_remote_code)
        check_model_fits(MARNetConfig(**fields, vision_config=tower_config), f"--vision_model {args.vision_model}")
        return MARNetForImageClassification.from_vision_pretrained(args.vision_model, config=config)
    except (OSError, ValueError) as error:
        raise CLIError(f"--vision_model {args.vision_model}: cannot build MARNet on it ({error}).") from None
