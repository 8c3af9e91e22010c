"""Building the model to train: a new MARNet on a pretrained vision tower, or an existing MARNet checkpoint, with its
image processor and the optimizer's parameter groups."""

import inspect

from transformers import AutoConfig, AutoImageProcessor

from ..configuration_marnet import ABLATIONS, MARNetConfig
from ..modeling_marnet import MARNetForImageClassification
from .data import processor_image_size, set_processor_image_size, standard_image_processor
from .errors import TrainingInputError

# Fields that change losses or sampling only, so they may be changed on an existing checkpoint.
RUNTIME_FIELDS = {
    "visual_ce_weight", "alignment_loss_weight", "reconstruction_ce_weight", "reconstruction_loss_weight",
    "fusion_ce_weight", "num_inference_steps", "sampler", "sampler_seed", "contrastive_gather", "classifier_dropout",
}
CONFIG_FIELDS = set(inspect.signature(MARNetConfig.__init__).parameters) - {"self", "kwargs", "vision_config"}


def ablation_name(config):
    """The ablation row a config matches (`baseline`, ..., `full`), or `custom`."""
    for name, fields in ABLATIONS.items():
        if all(getattr(config, key) == value for key, value in fields.items()):
            return name
    return "custom"


def needs_text(config_or_ablation):
    """Whether training needs privileged text (every row but the visual-only baseline)."""
    fields = ABLATIONS[config_or_ablation] if isinstance(config_or_ablation, str) else vars(config_or_ablation)
    return fields["use_alignment"] or fields["reconstruction"] != "none"


def _config_overrides(args):
    overrides = dict(args.marnet_config)
    unknown = sorted(set(overrides) - CONFIG_FIELDS)
    if unknown:
        raise TrainingInputError(f"--marnet-config: unknown MARNetConfig field(s) {unknown}. Known fields: "
                                 f"{', '.join(sorted(CONFIG_FIELDS))}.")
    if args.num_inference_steps is not None:
        overrides["num_inference_steps"] = args.num_inference_steps
    if args.fusion_mode is not None:
        overrides["fusion_mode"] = args.fusion_mode
    return overrides


def _validated(build, what):
    try:
        return build()
    except (ValueError, TypeError) as error:
        raise TrainingInputError(f"{what}: {error}") from None


def load_checkpoint_config(args, label_names):
    """The config of the `--model-name-or-path` checkpoint with the allowed overrides applied, checked against the
    dataset's labels."""
    config = _validated(lambda: AutoConfig.from_pretrained(args.model_name_or_path),
                        f"--model-name-or-path {args.model_name_or_path}")
    if config.model_type != MARNetConfig.model_type:
        raise TrainingInputError(
            f"--model-name-or-path {args.model_name_or_path} is a {config.model_type!r} model, not a MARNet "
            "checkpoint. To build MARNet on it as a vision tower, pass it as --vision-model."
        )
    if args.ablation is not None:
        raise TrainingInputError("--ablation applies to new models; an existing checkpoint keeps its architecture. "
                                 "Use --vision-model to build a new model.")
    overrides = _config_overrides(args)
    architectural = sorted(set(overrides) - RUNTIME_FIELDS)
    if architectural:
        raise TrainingInputError(
            f"{architectural} would change the architecture of the checkpoint {args.model_name_or_path}; only "
            f"{sorted(RUNTIME_FIELDS)} may change. Use --vision-model to build a new model."
        )
    checkpoint_labels = [config.id2label[i] for i in range(config.num_labels)]
    if checkpoint_labels != label_names:
        raise TrainingInputError(
            f"The checkpoint's labels {checkpoint_labels[:5]}{'...' if config.num_labels > 5 else ''} "
            f"({config.num_labels}) differ from the dataset's ClassLabel names {label_names[:5]}"
            f"{'...' if len(label_names) > 5 else ''} ({len(label_names)}). Start from the vision tower with "
            "--vision-model to train a classifier for these labels."
        )
    for key, value in overrides.items():
        setattr(config, key, value)
    _validated(config.validate_marnet, "--num-inference-steps/--marnet-config")
    return config


def new_model_config(args, label_names, text_hidden_size):
    """A MARNetConfig of the `--ablation` row with the command-line overrides and the dataset's labels."""
    fields = _config_overrides(args)
    fields.update(
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )
    if text_hidden_size is not None:
        fields["text_hidden_size"] = text_hidden_size
    return _validated(lambda: MARNetConfig.from_ablation(args.ablation or "full", **fields), "MARNet configuration")


def check_text_hidden_size(config, text_hidden_size, text_encoder_name):
    if config.text_hidden_size != text_hidden_size:
        raise TrainingInputError(
            f"--text-encoder {text_encoder_name} gives {text_hidden_size}-d features but the checkpoint expects "
            f"text_hidden_size={config.text_hidden_size}. Use the text encoder the checkpoint was trained with "
            "(same width), or build a new model with --vision-model."
        )


def build_model(args, config):
    """The MARNet model: loaded from `--model-name-or-path`, or built on the `--vision-model` tower."""
    if args.model_name_or_path:
        return _validated(lambda: MARNetForImageClassification.from_pretrained(args.model_name_or_path, config=config),
                          f"--model-name-or-path {args.model_name_or_path}")
    try:
        return MARNetForImageClassification.from_vision_pretrained(args.vision_model, config=config)
    except (OSError, ValueError) as error:
        raise TrainingInputError(f"--vision-model {args.vision_model}: cannot build MARNet on it ({error}).") from None


def load_image_processor(args, vision_config):
    """The image processor of the tower or checkpoint, with the `--image-size` override, checked against the
    tower's fixed input size (ViT-like towers)."""
    source = args.model_name_or_path or args.vision_model
    try:
        image_processor = standard_image_processor(AutoImageProcessor.from_pretrained(source))
    except (OSError, ValueError) as error:
        raise TrainingInputError(
            f"{source}: no image processor ({error}). Save one next to the model "
            "(`image_processor.save_pretrained(dir)` writes preprocessor_config.json)."
        ) from None
    if args.image_size is not None:
        set_processor_image_size(image_processor, args.image_size)
    expected = getattr(vision_config, "image_size", None)
    height, width = processor_image_size(image_processor)
    if isinstance(expected, int) and (height, width) != (expected, expected):
        raise TrainingInputError(
            f"The image processor gives {height}x{width} images but the {vision_config.model_type} tower expects "
            f"{expected}x{expected}. Drop --image-size or use a tower trained at that size."
        )
    return image_processor


def tower_parameters(model):
    """The pretrained towers' trainable parameters: the vision tower's and, when trained jointly, the text encoder's."""
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
