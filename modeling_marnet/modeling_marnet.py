"""MARNet: Multimodal Alignment and Reconstruction Network (Zheng et al., 2024) as a transformers model.

Notation: each feature of the paper has one name in this package, as argument, output field, local variable and in
docstrings (`modeling_marnet.py`, `alignment.py`, `alignment_losses.py`, `diffusion.py`, `fusion.py`).

    paper                name                        shape           what it is
    ------------------   -------------------------   -------------   --------------------------------------------------
    p                    pixel_values                (B, C, H, W)    the image
    x_v = F_v(p)         image_embeds                (B, H_v)        pooled feature of the vision tower (output field)
    x_v' = g(E_v(x_v))   image_projected_embeds      (B, P)          EMA's visual projection (eq. 7)
    x_s = F_s(i)         text_embeds                 (B, D_s)        the privileged text feature: a training input, and
                                                                     an output field once `config.text_normalization`
                                                                     has scaled it
    x_s' = g(E_s(x_s))   text_projected_embeds       (B, P)          EMA's text projection (eq. 8; output field)
    x_EMA                visual_embeds               (B, D_EMA)      the visual (EMA) branch feature (eq. 1; output
                                                                     field): x_v' with `visual_features="projection"`,
                                                                     else x_v
    x_r, x_CDR           reconstructed_text_embeds   (B, D_s)        the CDR branch feature (eq. 2; output field): x_s
                                                                     reconstructed from x_v by the reverse process
    x_s^t                noisy_text_embeds           (B, D_s)        x_s noised to step t (eq. 15)
    x_f                  fused_embeds                (B, fused_dim)  the fusion of x_EMA and x_CDR (eq. 3, 24)

`visual` and `reconstruction` name the two branches, as in `visual_logits` (the classifier over x_EMA) and
`reconstruction_logits` (over x_CDR). For `alignment="team"`, `image_token_embeds` (B, N, H_v) are the tower's patch
tokens and `text_token_embeds` (B, T, D_s) the text encoder's; the loss functions take them projected, as
`image_tokens` (B, N, P) and `text_tokens` (B, T, P).

Shapes: B batch size, H_v `vision_hidden_size`, D_s `text_hidden_size`, P `projection_dim`, D_EMA P or H_v, L
`num_labels`, N patch tokens, T text tokens.
"""

import inspect
import math
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import MODEL_MAPPING, AutoConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput, logging

from .alignment import MARNetEmbeddingAlignment
from .alignment_losses import ALIGNMENTS_WITH_TEMPERATURE
from .configuration_marnet import MARNetConfig
from .diffusion import MARNetCrossModalReconstruction
from .fusion import FEATURE_FUSIONS, MARNetFusion, fuse_logits

AUTO_MAP = {
    "AutoConfig": "configuration_marnet.MARNetConfig",
    "AutoModel": "modeling_marnet.MARNetModel",
    "AutoModelForImageClassification": "modeling_marnet.MARNetForImageClassification",
}

# `from_pretrained` options that locate a checkpoint, shared by its config and its weights.
HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "subfolder")
# Parameters of transformers' ViT-family embeddings whose tokens precede the patch tokens in `last_hidden_state`.
PREFIX_TOKEN_PARAMETERS = ("cls_token", "class_embedding", "distillation_token", "register_tokens")

logger = logging.get_logger(__name__)


@dataclass
class MARNetModelOutput(ModelOutput):
    """Branch features of [`MARNetModel`].

    Args:
        image_embeds (`torch.FloatTensor` of shape `(batch_size, vision_hidden_size)`):
            Pooled visual feature `x_v = F_v(p)`.
        visual_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim or vision_hidden_size)`):
            Visual branch feature `x_EMA` that the classifiers read: `g(E_v(x_v))` with alignment and
            `visual_features="projection"`, else `x_v`.
        text_embeds (`torch.FloatTensor` of shape `(batch_size, text_hidden_size)`, *optional*):
            The privileged text feature `x_s` as the losses use it (after `config.text_normalization`).
        text_projected_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*):
            `x_s' = g(E_s(x_s))`, when `text_embeds` were given and alignment is on.
        reconstructed_text_embeds (`torch.FloatTensor` of shape `(batch_size, text_hidden_size)`, *optional*):
            `x_CDR`: the reverse-process sample (or, in training with `reconstruction_training="one_step"`, the x0
            prediction from the noised text).
        alignment_loss (`torch.FloatTensor` of shape `()`, *optional*):
            The `config.alignment` loss (`L_ITA`, eq. 11, by default), when `text_embeds` were given and alignment is
            on (and, for a method or targets that need them, `labels`).
        reconstruction_loss (`torch.FloatTensor` of shape `()`, *optional*):
            `L_MSE` (eq. 19), when `text_embeds` were given and the CDR branch is on.
        last_hidden_state (`torch.FloatTensor`):
            The vision tower's last hidden state.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The vision tower's hidden states, with `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            The vision tower's attention maps, with `output_attentions=True`.
    """

    image_embeds: torch.FloatTensor | None = None
    visual_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    text_projected_embeds: torch.FloatTensor | None = None
    reconstructed_text_embeds: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MARNetImageClassifierOutput(ImageClassifierOutput):
    """Output of [`MARNetForImageClassification`]: `loss` and `logits` as any image classifier, plus each term.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            With `labels`, in training mode: the config-weighted sum of the terms below that exist, the objective. In
            eval mode: the loss of `logits` alone (cross entropy for single-label), comparable with any classifier's
            evaluation loss; the terms stay under their own keys.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Logits of `config.classifier_input` (fused, visual or reconstruction).
        visual_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
            Classifier over `x_EMA`.
        reconstruction_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
            Classifier over `x_CDR`.
        text_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
            The reconstruction classifier over the real text feature `x_s`, with `labels`, `text_embeds` and
            `text_classification_weight > 0`.
        visual_classification_loss (`torch.FloatTensor`, *optional*):
            Loss of the visual classifier for `config.problem_type`, cross entropy for single-label (weight
            `visual_ce_weight`, `alpha_1` of eq. 13).
        reconstruction_classification_loss (`torch.FloatTensor`, *optional*):
            Loss of the reconstruction classifier (weight `reconstruction_ce_weight`, `alpha_2` of eq. 20).
        fusion_classification_loss (`torch.FloatTensor`, *optional*):
            Loss of the fused logits (weight `fusion_ce_weight`).
        alignment_loss (`torch.FloatTensor`, *optional*):
            The `config.alignment` loss, `L_ITA` by default (weight `alignment_loss_weight`, `beta` of eq. 13).
        reconstruction_loss (`torch.FloatTensor`, *optional*):
            `L_MSE` (weight `reconstruction_loss_weight`, `gamma` of eq. 20).
        text_classification_loss (`torch.FloatTensor`, *optional*):
            Loss of `text_logits` (weight `text_classification_weight`).
        distillation_loss (`torch.FloatTensor`, *optional*):
            Distillation of the detached `text_logits` into `logits` (weight `distillation_weight`).
        ingredient_logits (`torch.FloatTensor` of shape `(batch_size, num_ingredients)`, *optional*):
            The ingredient head over `x_v`, when the config builds one (`num_ingredients >= 1`).
        ingredient_loss (`torch.FloatTensor`, *optional*):
            BCE of `ingredient_logits` against `ingredient_labels`, when given (weight `ingredient_loss_weight`).
    """

    visual_logits: torch.FloatTensor | None = None
    reconstruction_logits: torch.FloatTensor | None = None
    text_logits: torch.FloatTensor | None = None
    visual_classification_loss: torch.FloatTensor | None = None
    reconstruction_classification_loss: torch.FloatTensor | None = None
    fusion_classification_loss: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    text_classification_loss: torch.FloatTensor | None = None
    distillation_loss: torch.FloatTensor | None = None
    ingredient_logits: torch.FloatTensor | None = None
    ingredient_loss: torch.FloatTensor | None = None


# Each loss term of MARNetImageClassifierOutput -> the MARNetConfig field that weights it in `loss`.
LOSS_WEIGHT_FIELDS = {
    "visual_classification_loss": "visual_ce_weight",
    "reconstruction_classification_loss": "reconstruction_ce_weight",
    "fusion_classification_loss": "fusion_ce_weight",
    "alignment_loss": "alignment_loss_weight",
    "reconstruction_loss": "reconstruction_loss_weight",
    "text_classification_loss": "text_classification_weight",
    "distillation_loss": "distillation_weight",
    "ingredient_loss": "ingredient_loss_weight",
}


def weighted_loss(terms, config, scales=None):
    """`sum_k w_k * scale_k * term_k` over the terms that exist (not None); `w_k` from `LOSS_WEIGHT_FIELDS` in
    `config`, `scales` an optional {term: factor} (e.g. a warm-up ramp), 1 where absent."""
    scales = scales or {}
    return sum(
        getattr(config, LOSS_WEIGHT_FIELDS[name]) * scales.get(name, 1.0) * value
        for name, value in terms.items()
        if value is not None
    )


def classification_loss(logits, labels, problem_type):
    """The loss of (B, L) logits for `problem_type`, as transformers' classifiers compute it (None without logits):
    cross entropy on (B,) class ids, BCE with logits on (B, L) multi-hot targets, MSE on (B, L) values."""
    if logits is None:
        return None
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits, labels)
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return F.mse_loss(logits, labels.to(logits.dtype))


def distillation_loss(student_logits, teacher_logits, temperature, problem_type):
    """`T^2 KL(teacher || student)` of temperature-scaled probabilities, the teacher detached: (B, L) -> ().

    Single-label: softmax over classes, batch mean of the KL. Multi-label: each class's sigmoid (binary KL), mean over
    batch and classes like the BCE term."""
    teacher = teacher_logits.detach() / temperature
    student = student_logits / temperature
    if problem_type == "multi_label_classification":
        present = torch.sigmoid(teacher)
        kl = present * (F.logsigmoid(teacher) - F.logsigmoid(student)) + (1 - present) * (
            F.logsigmoid(-teacher) - F.logsigmoid(-student)
        )  # (B, L)
        return kl.mean() * temperature**2
    teacher, student = F.log_softmax(teacher, dim=-1), F.log_softmax(student, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


def reads_visual(config):
    """Whether a classifier reads the visual feature `x_EMA`."""
    return config.classifier_input in ("visual", "fusion")


def reads_reconstruction(config):
    """Whether a classifier reads the reconstructed feature `x_CDR`."""
    return config.classifier_input in ("reconstruction", "fusion")


def _vision_model_spec(vision_config, pooling):
    """The tower class for `vision_config`, its extra init kwargs, and the pooling used at forward time.

    BERT/ViT-style towers are built without their tanh pooler unless `pooling="pooler"` asks for it: such poolers are
    untrained in most checkpoints and unused here, so leaving them out keeps every parameter trained (DDP needs no
    `find_unused_parameters`) and makes `"auto"` the CLS token, as in the paper.
    """
    if type(vision_config) not in MODEL_MAPPING:
        raise ValueError(
            f"`vision_config` is a {type(vision_config).__name__}, which has no AutoModel class. Use the config of a "
            "transformers vision model (ViTConfig, ConvNextConfig, TimmWrapperConfig for timm towers, ...)."
        )
    model_class = MODEL_MAPPING[type(vision_config)]
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters and pooling != "pooler":
        return model_class, {"add_pooling_layer": False}, "cls" if pooling == "auto" else pooling
    return model_class, {}, pooling


def normalize_text_embeds(text_embeds, mode):
    """`x_s` as the losses use it: unchanged (`"none"`) or with unit mean square per dimension (`"unit_rms"`:
    L2-normalised, times `sqrt(D)`), (B, D) -> (B, D)."""
    if mode == "none":
        return text_embeds
    return F.normalize(text_embeds, dim=-1) * math.sqrt(text_embeds.shape[-1])


def _num_prefix_tokens(vision_model):
    """How many tokens of the tower's (B, N, C) `last_hidden_state` precede its patch tokens: timm's
    `num_prefix_tokens`, or the class, distillation and register tokens of transformers' ViT-family embeddings."""
    timm_model = getattr(vision_model, "timm_model", None)
    if timm_model is not None:
        return int(getattr(timm_model, "num_prefix_tokens", 0))
    embeddings = next(
        (module for name, module in vision_model.named_modules() if name.split(".")[-1] == "embeddings"), None
    )
    count = 0
    for name in PREFIX_TOKEN_PARAMETERS:
        parameter = getattr(embeddings, name, None)
        if isinstance(parameter, nn.Parameter):
            count += 1 if parameter.dim() == 1 else parameter.shape[-2]  # (C,) or (1, n, C)
    return count


def _infer_vision_hidden_size(vision_model, vision_config):
    timm_model = getattr(vision_model, "timm_model", None)
    if timm_model is not None:
        return int(timm_model.num_features)
    if getattr(vision_config, "hidden_sizes", None):
        return int(vision_config.hidden_sizes[-1])
    if getattr(vision_config, "hidden_size", None):
        return int(vision_config.hidden_size)
    raise ValueError(
        f"Cannot infer the pooled feature width of a {type(vision_config).__name__} vision tower: "
        "set `vision_hidden_size` in MARNetConfig."
    )


def _value_range(labels):
    """(min, max) of `labels` as Python numbers, or (None, None) under `torch.compile`, where reading a tensor's value
    would break the graph (the losses still refuse out-of-range class ids there)."""
    if torch.compiler.is_compiling():
        return None, None
    low, high = torch.aminmax(labels)
    return low.item(), high.item()


def _rename_checkpoint_keys(module, state_dict, prefix, *args):
    """`load_state_dict` pre-hook: the keys of `state_dict` renamed by `module._checkpoint_key_mapping`, in place."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        renamed = key[len(prefix) :]
        for pattern, replacement in module._checkpoint_key_mapping.items():
            renamed = re.sub(pattern, replacement, renamed)
        if prefix + renamed != key:
            state_dict[prefix + renamed] = state_dict.pop(key)


class MARNetPreTrainedModel(PreTrainedModel):
    """Weight initialisation, input checks and loading plumbing shared by the MARNet models."""

    config_class = MARNetConfig
    config: MARNetConfig
    base_model_prefix = "marnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def post_init(self):
        super().post_init()
        if self._checkpoint_key_mapping:  # `load_state_dict` too (Accelerate's resume), not only from_pretrained
            self.register_load_state_dict_pre_hook(_rename_checkpoint_keys)
        # Whichever MARNet class is saved, `trust_remote_code=True` users get every Auto class from the folder.
        self.config.auto_map = dict(AUTO_MAP)
        self._freeze_fixed_parameters()

    # Checkpoint key renamings (regex -> replacement), applied when loading, for weights that have moved.
    _checkpoint_key_mapping = {}

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        kwargs["key_mapping"] = {**cls._checkpoint_key_mapping, **(kwargs.get("key_mapping") or {})}
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading_info) with output_loading_info
        # transformers' loading makes every loaded parameter trainable again.
        model._freeze_fixed_parameters()
        return loaded

    def _freeze_fixed_parameters(self):
        """`requires_grad=False` on what the config keeps fixed: `logit_scale` without `learnable_temperature` or when
        `config.alignment` has no temperature, with `image_only_training` every parameter that only text trains, and
        an ingredient head whose loss weight is 0 (nothing trains it; DDP refuses parameters without gradients)."""
        config, base = self.config, self.base_model
        frozen = base.text_only_parameters() if config.image_only_training else []
        ingredient_head = getattr(self, "ingredient_classifier", None)
        if ingredient_head is not None and config.ingredient_loss_weight == 0:
            frozen += list(ingredient_head.parameters())
        uses_temperature = config.learnable_temperature and config.alignment in ALIGNMENTS_WITH_TEMPERATURE
        if base.alignment is not None and not uses_temperature:
            frozen.append(base.alignment.logit_scale)
        for parameter in frozen:
            parameter.requires_grad_(False)

    def _problem_type(self, labels=None):
        """`config.problem_type`, else what transformers' classification loss infers from `labels` (single-label
        without labels), checked against the MARNet fields that depend on it."""
        problem_type = self.config.problem_type
        if problem_type is None:
            if self.config.num_labels == 1:
                problem_type = "regression"
            elif labels is None or labels.dtype in (torch.long, torch.int):
                problem_type = "single_label_classification"
            else:
                problem_type = "multi_label_classification"
        self.config.check_problem_type(problem_type)
        return problem_type

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MARNetEmbeddingAlignment):
            init.constant_(module.logit_scale, math.log(1.0 / self.config.contrastive_temperature_init))

    def _set_gradient_checkpointing(self, enable=True, *args, **kwargs):
        # Checkpointing happens inside the vision tower; the MARNet heads are small MLPs.
        self.base_model.vision_model._set_gradient_checkpointing(enable, *args, **kwargs)

    def _check_pixel_values(self, pixel_values):
        num_channels = getattr(self.config.vision_config, "num_channels", None)
        if pixel_values is not None and not isinstance(pixel_values, torch.Tensor):
            raise ValueError(
                "`pixel_values` must be a torch.Tensor of shape (batch, channels, height, width), got "
                f"{type(pixel_values).__module__}.{type(pixel_values).__name__}. Convert it with torch.as_tensor, or "
                "call the image processor with return_tensors='pt'."
            )
        if pixel_values is None or pixel_values.dim() != 4:
            got = "None" if pixel_values is None else f"shape {tuple(pixel_values.shape)}"
            raise ValueError(f"`pixel_values` must be a (batch, channels, height, width) tensor, got {got}.")
        if pixel_values.shape[0] == 0:
            raise ValueError(
                "`pixel_values` must hold at least one image, "
                f"got an empty batch of shape {tuple(pixel_values.shape)}."
            )
        if num_channels is not None and pixel_values.shape[1] != num_channels:
            raise ValueError(
                f"`pixel_values` must have {num_channels} channels (vision_config.num_channels), got shape "
                f"{tuple(pixel_values.shape)}. Convert images to RGB (the image processor does) or change the config."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"`pixel_values` must be floating point, as the image processor gives them (rescaled and normalised), "
                f"got dtype {pixel_values.dtype}: raw pixels would run unnormalised. Pass the images through the "
                "image processor."
            )

    def _check_text_embeds(self, text_embeds, batch_size):
        expected = (batch_size, self.config.text_hidden_size)
        if not isinstance(text_embeds, torch.Tensor) or not text_embeds.is_floating_point():
            got = f"dtype {text_embeds.dtype}" if isinstance(text_embeds, torch.Tensor) else type(text_embeds).__name__
            raise ValueError(f"`text_embeds` must be a floating-point torch.Tensor of shape {expected}, got {got}.")
        if text_embeds.dim() != 2 or tuple(text_embeds.shape) != expected:
            raise ValueError(
                f"`text_embeds` must have shape (batch_size, text_hidden_size) = {expected}, got "
                f"{tuple(text_embeds.shape)}. Pool the text encoder's output to one vector per image and set "
                "`text_hidden_size` to the encoder's width."
            )

    def _check_text_token_embeds(self, text_token_embeds, text_attention_mask, text_embeds, batch_size):
        config = self.config
        if text_token_embeds is None:
            if text_attention_mask is not None:
                raise ValueError("`text_attention_mask` was given without the `text_token_embeds` it masks.")
            return
        if not (config.use_alignment and config.alignment == "team"):
            raise ValueError(
                "`text_token_embeds` are read by the token-level alignment alone (`alignment='team'` with "
                f"`use_alignment=True`), got alignment={config.alignment!r}, use_alignment={config.use_alignment}. "
                "Pass the pooled `text_embeds` only, or set alignment='team'."
            )
        if text_embeds is None:
            raise ValueError(
                "`text_token_embeds` were given without `text_embeds`: TEAM's global term and the other branches read "
                "the pooled text feature. Pass both."
            )
        width = config.text_hidden_size
        shape = tuple(text_token_embeds.shape)
        if len(shape) != 3 or (shape[0], shape[2]) != (batch_size, width):
            raise ValueError(
                f"`text_token_embeds` must have shape (batch_size, num_tokens, text_hidden_size) = ({batch_size}, T, "
                f"{width}), got {shape}."
            )
        if text_attention_mask is not None and tuple(text_attention_mask.shape) != shape[:2]:
            raise ValueError(
                f"`text_attention_mask` must have the shape (batch_size, num_tokens) = {shape[:2]} of "
                f"`text_token_embeds`, got {tuple(text_attention_mask.shape)}."
            )


class MARNetModel(MARNetPreTrainedModel):
    """MARNet without classifiers: the vision tower `F_v`, the EMA projections and the CDR branch.

    Returns a [`MARNetModelOutput`] with `x_v`, `x_EMA`, `x_CDR`, and with `text_embeds` the alignment and
    reconstruction losses.
    """

    def __init__(self, config: MARNetConfig):
        super().__init__(config)
        model_class, init_kwargs, self.pooling = _vision_model_spec(config.vision_config, config.vision_pooling)
        self.vision_model = model_class(config.vision_config, **init_kwargs)
        if config.vision_hidden_size is None:
            config.vision_hidden_size = _infer_vision_hidden_size(self.vision_model, config.vision_config)
        self.alignment = MARNetEmbeddingAlignment(config) if config.use_alignment else None
        self.num_prefix_tokens = _num_prefix_tokens(self.vision_model)
        self.reconstruction = MARNetCrossModalReconstruction(config) if config.reconstruction != "none" else None
        self.post_init()

    def get_input_embeddings(self):
        return self.vision_model.get_input_embeddings()

    def text_only_parameters(self):
        """The parameters that no loss reaches in a training step without `text_embeds` (what
        `config.image_only_training` freezes): the EMA text projection and temperature, the visual projection unless
        the visual classifier reads it, and the CDR branch unless a classifier reads it."""
        config = self.config
        modules = []
        if self.alignment is not None:
            modules.append(self.alignment.text_projection)
            if not (config.visual_features == "projection" and reads_visual(config)):
                modules.append(self.alignment.visual_projection)
        if self.reconstruction is not None and not reads_reconstruction(config):
            modules.append(self.reconstruction)
        parameters = [parameter for module in modules for parameter in module.parameters()]
        return parameters + ([self.alignment.logit_scale] if self.alignment is not None else [])

    def _text_only_trainable(self):
        return any(parameter.requires_grad for parameter in self.text_only_parameters())

    def patch_tokens(self, last_hidden_state):
        """The image's patch features (B, N, C) that `alignment="team"` aligns text tokens with: a token tower's
        `last_hidden_state` (B, N', C) without its leading class, distillation and register tokens, or a
        convolutional tower's feature map (B, C, H, W) flattened to (B, H * W, C)."""
        if last_hidden_state.dim() == 4:
            tokens = last_hidden_state.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H * W, C)
        else:
            tokens = last_hidden_state[:, self.num_prefix_tokens :]  # (B, N, C)
        if tokens.shape[-1] != self.config.vision_hidden_size:
            raise ValueError(
                "`alignment='team'` projects the tower's patch tokens with the visual projection, which takes "
                f"vision_hidden_size={self.config.vision_hidden_size} features, but the "
                f"{type(self.vision_model).__name__} tower's last_hidden_state has {tokens.shape[-1]}. Leave "
                "`vision_hidden_size` unset (inferred from the tower), or use another alignment."
            )
        return tokens

    def pool(self, vision_outputs):
        """`x_v` (B, H_v) from the tower's output, by `config.vision_pooling`."""
        last_hidden_state = vision_outputs.last_hidden_state
        pooler_output = getattr(vision_outputs, "pooler_output", None)
        if self.pooling == "pooler" or (self.pooling == "auto" and pooler_output is not None):
            if pooler_output is None:
                raise ValueError(
                    f"`vision_pooling='pooler'` but the {type(self.vision_model).__name__} tower returns no "
                    "pooler_output: use 'cls', 'mean' or 'auto'."
                )
            return pooler_output.flatten(1)
        if self.pooling == "cls" or (self.pooling == "auto" and last_hidden_state.dim() == 3):
            if last_hidden_state.dim() != 3:
                raise ValueError(
                    f"`vision_pooling='cls'` needs token features (B, N, C), got {tuple(last_hidden_state.shape)}."
                )
            return last_hidden_state[:, 0]
        if last_hidden_state.dim() == 3:
            return last_hidden_state.mean(dim=1)  # (B, N, C) -> (B, C)
        return last_hidden_state.flatten(2).mean(dim=-1)  # (B, C, H, W) -> (B, C)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        text_token_embeds: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | MARNetModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images, as prepared by the image processor.
        text_embeds (`torch.FloatTensor` of shape `(batch_size, text_hidden_size)`, *optional*):
            Privileged text features `x_s` (pooled output of a frozen or trained text encoder), training only.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class ids (multi-hot rows of shape `(batch_size, num_labels)` for multi-label); used only by the alignment
            loss, when `config.alignment` groups by class ('sdm', 'cdd', 'ssan') or `alignment_targets="class"`.
        text_token_embeds (`torch.FloatTensor` of shape `(batch_size, num_tokens, text_hidden_size)`, *optional*):
            The text encoder's token states, for `config.alignment="team"` only, given with `text_embeds` in training
            only; without them TEAM aligns the pooled text with the patch tokens ("TEAM, pooled text").
        text_attention_mask (`torch.LongTensor` of shape `(batch_size, num_tokens)`, *optional*):
            1 for the real tokens of `text_token_embeds`, 0 for padding; all real when not given.
        """
        self._check_pixel_values(pixel_values)
        config = self.config
        if labels is not None:
            self._problem_type(labels)
        self._check_text_token_embeds(text_token_embeds, text_attention_mask, text_embeds, pixel_values.shape[0])
        if text_embeds is not None:
            self._check_text_embeds(text_embeds, pixel_values.shape[0])
            if self.training and config.image_only_training:
                raise ValueError(
                    "`text_embeds` were given in training, but `image_only_training=True` froze the parameters that "
                    "learn from text. Load with `from_pretrained(path, image_only_training=False)` to train with "
                    "text, or train on images alone."
                )
            # Features in the model's dtype, as transformers' towers cast `pixel_values` (float64 features work).
            text_embeds = normalize_text_embeds(text_embeds.to(self.dtype), config.text_normalization)
            if text_token_embeds is not None:  # (B, T, D_s), scaled as the pooled feature is
                text_token_embeds = normalize_text_embeds(text_token_embeds.to(self.dtype), config.text_normalization)
        elif self.training and dist.is_available() and dist.is_initialized() and self._text_only_trainable():
            logger.warning_once(
                "MARNet is training without `text_embeds`: the parameters that only text trains get no gradient, "
                "which DDP with find_unused_parameters=False refuses. To fine-tune on images alone, load with "
                "`from_pretrained(path, image_only_training=True)`, which freezes them."
            )
        return_dict = return_dict if return_dict is not None else config.return_dict
        # The MARNet config's flags win over the tower's own config, as in any transformers model; unset, the
        # tower's config decides.
        tower_kwargs = {"return_dict": True}
        for name, value in (("output_hidden_states", output_hidden_states), ("output_attentions", output_attentions)):
            value = value if value is not None else getattr(config, name) or None
            if value is not None:
                tower_kwargs[name] = value
        vision_outputs = self.vision_model(pixel_values, **tower_kwargs, **kwargs)
        image_embeds = self.pool(vision_outputs)  # x_v, (B, H_v)

        visual_embeds, text_projected_embeds, alignment_loss = image_embeds, None, None  # x_EMA = x_v by default
        projection_is_feature = self.config.visual_features == "projection"
        if self.alignment is not None and (projection_is_feature or text_embeds is not None):
            image_token_embeds = None
            if config.alignment == "team" and text_embeds is not None:
                image_token_embeds = self.patch_tokens(vision_outputs.last_hidden_state)  # (B, N, H_v)
            image_projected_embeds, text_projected_embeds, alignment_loss = self.alignment(
                image_embeds, text_embeds, labels, image_token_embeds, text_token_embeds, text_attention_mask
            )  # x_v', x_s': (B, P)
            if projection_is_feature:
                visual_embeds = image_projected_embeds  # x_EMA = x_v' (eq. 1, 7)
        reconstructed_text_embeds, reconstruction_loss = None, None
        if self.reconstruction is not None:  # x_CDR (B, D_s), L_MSE
            reconstructed_text_embeds, reconstruction_loss = self.reconstruction(image_embeds, text_embeds)

        output = MARNetModelOutput(
            image_embeds=image_embeds,
            visual_embeds=visual_embeds,
            text_embeds=text_embeds,
            text_projected_embeds=text_projected_embeds,
            reconstructed_text_embeds=reconstructed_text_embeds,
            alignment_loss=alignment_loss,
            reconstruction_loss=reconstruction_loss,
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=getattr(vision_outputs, "hidden_states", None),
            attentions=getattr(vision_outputs, "attentions", None),
        )
        return output if return_dict else output.to_tuple()


class MARNetForImageClassification(MARNetPreTrainedModel):
    """MARNet with its branch classifiers, fusion and final classifier (eq. 4, 24).

    `forward(pixel_values)` alone gives `logits` (what the image-classification pipeline calls). In training, pass
    `labels` and the privileged `text_embeds` to get the weighted MARNet loss and each of its terms. As any
    transformers image classifier it follows `config.problem_type` (single-label, multi-label, regression; see
    [`MARNetConfig`]) and works with `Trainer`, whose predictions are the `logits` alone
    (`MARNetConfig.keys_to_ignore_at_inference`). In evaluation mode `logits` never depend on `text_embeds`.

    Fine-tuning on images alone (no `text_embeds`), e.g. a published model on a new dataset: load it with
    `from_pretrained(path, image_only_training=True)`. The parameters that only text trains (the EMA text projection
    and temperature, and whatever no classifier reads) are then frozen and keep their weights, so every trainable
    parameter gets a gradient, as DDP with `find_unused_parameters=False` requires (`Trainer` with gradient
    checkpointing, `marnet-train`). Re-heading with `from_pretrained(path, num_labels=N, ignore_mismatched_sizes=True)`
    re-initialises the visual, reconstruction and fusion classifiers and keeps every other weight.
    """

    # Checkpoints saved before the fused classifier became a top-level head held it inside the fusion module.
    _checkpoint_key_mapping = {r"^fusion\.classifier\.": "fusion_classifier."}
    # The loss is a mean over the batch: Trainer must scale it for gradient accumulation itself rather than pass
    # `num_items_in_batch` (which would go to the vision tower through `**kwargs`).
    accepts_loss_kwargs = False

    def __init__(self, config: MARNetConfig):
        super().__init__(config)
        if config.num_labels < 1:
            raise ValueError(
                "MARNetForImageClassification needs `num_labels` >= 1 (one logit per class), "
                f"got {config.num_labels}. Set `id2label` from the dataset's classes (e.g. its ClassLabel names); "
                "`num_labels=1` is a regression."
            )
        self.marnet = MARNetModel(config)
        projected = config.use_alignment and config.visual_features == "projection"
        visual_dim = config.projection_dim if projected else config.vision_hidden_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.visual_classifier = nn.Linear(visual_dim, config.num_labels) if reads_visual(config) else None
        self.reconstruction_classifier = (
            nn.Linear(config.text_hidden_size, config.num_labels) if reads_reconstruction(config) else None
        )
        fuses_features = config.classifier_input == "fusion" and config.fusion_mode in FEATURE_FUSIONS
        self.fusion = MARNetFusion(config, visual_dim, config.text_hidden_size) if fuses_features else None
        # Every `num_labels` head is a top-level Linear, as transformers' classifiers have them (older checkpoints
        # hold this one as `fusion.classifier`: `_checkpoint_key_mapping` renames it on loading).
        self.fusion_classifier = nn.Linear(self.fusion.fused_dim, config.num_labels) if fuses_features else None
        self.ingredient_classifier = (
            nn.Linear(config.vision_hidden_size, config.num_ingredients) if config.num_ingredients else None
        )
        self.post_init()

    @classmethod
    def from_vision_pretrained(
        cls, vision_model_name_or_path: str | os.PathLike, config: MARNetConfig | None = None, **kwargs
    ) -> "MARNetForImageClassification":
        """MARNet on a pretrained vision tower (local path or Hub id of any `AutoModel` vision checkpoint, timm ones
        included), with freshly initialised MARNet heads.

        Args:
            vision_model_name_or_path (`str` or `os.PathLike`): the tower's checkpoint.
            config ([`MARNetConfig`], *optional*): MARNet settings; its `vision_config` is replaced by the tower's.
            kwargs: `MARNetConfig` fields (e.g. `text_hidden_size=384`, `id2label=...`), or `from_pretrained`
                options for the tower (`revision`, `cache_dir`, `token`, `local_files_only`, `dtype`, ...).
        """
        config_fields = set(inspect.signature(MARNetConfig.__init__).parameters) | {
            "id2label",
            "label2id",
            "num_labels",
        }
        config_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in config_fields}
        fields = config.to_dict() if config is not None else {}
        for key in ("model_type", "transformers_version", "vision_hidden_size", "auto_map", "architectures"):
            fields.pop(key, None)
        fields.update(config_kwargs)
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        fields["vision_config"] = AutoConfig.from_pretrained(vision_model_name_or_path, **hub_kwargs)
        model = cls(MARNetConfig(**fields))
        model_class, init_kwargs, _ = _vision_model_spec(model.config.vision_config, model.config.vision_pooling)
        model.marnet.vision_model = model_class.from_pretrained(
            vision_model_name_or_path, config=model.config.vision_config, **init_kwargs, **kwargs
        )
        return model.to(model.marnet.vision_model.dtype)

    def _prepare_labels(self, labels, batch_size, problem_type):
        """Checks `labels` for `problem_type`; returns them as the losses take them: (B,) class ids, or (B, L)."""
        if not isinstance(labels, torch.Tensor):
            raise ValueError(
                f"`labels` must be a torch.Tensor, got {type(labels).__name__}. Convert it with torch.tensor(labels)."
            )
        num_labels = self.config.num_labels
        if problem_type == "single_label_classification":
            if labels.dim() != 1 or labels.shape[0] != batch_size:
                raise ValueError(
                    f"`labels` must have shape ({batch_size},) (one class id per image), got {tuple(labels.shape)}."
                )
            if labels.dtype.is_floating_point:
                raise ValueError(f"`labels` must hold integer class ids, got dtype {labels.dtype}.")
            low, high = _value_range(labels)
            if low is not None and (low < 0 or high >= num_labels):
                raise ValueError(
                    f"`labels` must be class ids in [0, {num_labels - 1}] (num_labels={num_labels}), "
                    f"got values from {low} to {high}."
                )
            return labels.long()  # int32 ids too (the cross entropy takes int64)
        expected = (batch_size, num_labels)
        if tuple(labels.shape) != expected and not (num_labels == 1 and tuple(labels.shape) == (batch_size,)):
            inferred = " (inferred from non-integer labels)" if self.config.problem_type is None else ""
            raise ValueError(
                f"`labels` must have shape {expected} (one row of {num_labels} targets per image) for "
                f"problem_type={problem_type!r}{inferred}, got {tuple(labels.shape)} of dtype {labels.dtype}. For "
                "single-label classification "
                "pass integer class ids of shape (batch_size,), or set `config.problem_type`."
            )
        low, high = _value_range(labels) if problem_type == "multi_label_classification" else (None, None)
        if low is not None and (low < 0 or high > 1):
            raise ValueError(
                f"`labels` must be multi-hot targets in [0, 1] for problem_type='multi_label_classification', got "
                f"values from {low} to {high}."
            )
        return labels.reshape(expected)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        text_token_embeds: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        ingredient_labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | MARNetImageClassifierOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images, as prepared by the image processor.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class ids in `[0, num_labels)`; for `config.problem_type` multi-label or regression, float targets of shape
            `(batch_size, num_labels)`. With them the output carries `loss`.
        text_embeds (`torch.FloatTensor` of shape `(batch_size, text_hidden_size)`, *optional*):
            Privileged text features `x_s`, given in training only. With them the alignment, reconstruction and
            text losses are computed; `logits` depend on them only in training mode with
            `reconstruction_training="one_step"`.
        text_token_embeds (`torch.FloatTensor` of shape `(batch_size, num_tokens, text_hidden_size)`, *optional*):
            The text encoder's token states for `config.alignment="team"`, given with `text_embeds` in training only
            (see [`MARNetModel`]); they enter the alignment loss alone.
        text_attention_mask (`torch.LongTensor` of shape `(batch_size, num_tokens)`, *optional*):
            1 for the real tokens of `text_token_embeds`, 0 for padding.
        ingredient_labels (`torch.FloatTensor` of shape `(batch_size, num_ingredients)`, *optional*):
            Multi-hot ingredients of each image, given in training only to a model with an ingredient head
            (`config.num_ingredients`); with them the output carries `ingredient_loss`.
        """
        config = self.config
        return_dict = return_dict if return_dict is not None else config.return_dict
        problem_type = self._problem_type(labels)
        if labels is not None:
            self._check_pixel_values(pixel_values)
            labels = self._prepare_labels(labels, pixel_values.shape[0], problem_type)
            config.problem_type = problem_type  # stored once inferred, as transformers' classification losses do
        outputs = self.marnet(
            pixel_values,
            text_embeds=text_embeds,
            labels=labels,
            text_token_embeds=text_token_embeds,
            text_attention_mask=text_attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        visual_logits = reconstruction_logits = text_logits = None
        if self.visual_classifier is not None:
            visual_logits = self.visual_classifier(self.dropout(outputs.visual_embeds))  # (B, L)
        if self.reconstruction_classifier is not None:
            reconstruction_logits = self.reconstruction_classifier(self.dropout(outputs.reconstructed_text_embeds))
        fuses = config.classifier_input == "fusion"
        if self.fusion is not None:
            fused_embeds = self.fusion(outputs.visual_embeds, outputs.reconstructed_text_embeds)  # x_f, (B, fused_dim)
            logits = self.fusion_classifier(self.dropout(fused_embeds))
        elif fuses:  # sum / hm: a fusion of the branch logits
            logits = fuse_logits(visual_logits, reconstruction_logits, config.fusion_mode, problem_type)
        else:
            logits = visual_logits if visual_logits is not None else reconstruction_logits

        ingredient_logits, ingredient_loss = self._ingredients(outputs.image_embeds, ingredient_labels)
        terms = {
            "alignment_loss": outputs.alignment_loss,
            "reconstruction_loss": outputs.reconstruction_loss,
            "ingredient_loss": ingredient_loss,
        }
        loss = None
        if labels is not None:
            if outputs.text_embeds is not None and config.text_classification_weight > 0:
                text_logits = self.reconstruction_classifier(self.dropout(outputs.text_embeds))  # (B, L)
            fused_logits = logits if fuses else None
            for name, term_logits in (
                ("visual_classification_loss", visual_logits),
                ("reconstruction_classification_loss", reconstruction_logits),
                ("fusion_classification_loss", fused_logits),
                ("text_classification_loss", text_logits),
            ):
                terms[name] = classification_loss(term_logits, labels, problem_type)
            if text_logits is not None and config.distillation_weight > 0:
                terms["distillation_loss"] = distillation_loss(
                    logits, text_logits, config.distillation_temperature, problem_type
                )
            # Training optimises the weighted objective; evaluation reports the loss of the logits it returns.
            loss = weighted_loss(terms, config) if self.training else classification_loss(logits, labels, problem_type)

        output = MARNetImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            visual_logits=visual_logits,
            reconstruction_logits=reconstruction_logits,
            text_logits=text_logits,
            ingredient_logits=ingredient_logits,
            **terms,
        )
        return output if return_dict else output.to_tuple()

    def _ingredients(self, image_embeds, ingredient_labels):
        """(logits (B, K), BCE loss ()) of the ingredient head over `x_v` (B, H_v); (None, None) without a head, the
        loss None without `ingredient_labels` (B, K)."""
        if self.ingredient_classifier is None:
            if ingredient_labels is not None:
                raise ValueError(
                    "`ingredient_labels` were given, but this model has no ingredient head (`num_ingredients=0`). "
                    "Build it with num_ingredients (e.g. the `ingredients` ablation row), or leave them out."
                )
            return None, None
        logits = self.ingredient_classifier(self.dropout(image_embeds))  # (B, K)
        if ingredient_labels is None:
            return logits, None
        if tuple(ingredient_labels.shape) != tuple(logits.shape):
            raise ValueError(
                f"`ingredient_labels` must be multi-hot rows of shape (batch_size, num_ingredients) = "
                f"{tuple(logits.shape)}, got {tuple(ingredient_labels.shape)}."
            )
        return logits, F.binary_cross_entropy_with_logits(logits, ingredient_labels.to(logits.dtype))


__all__ = [
    "MARNetPreTrainedModel",
    "MARNetModel",
    "MARNetForImageClassification",
    "MARNetModelOutput",
    "MARNetImageClassifierOutput",
    "LOSS_WEIGHT_FIELDS",
    "weighted_loss",
]
