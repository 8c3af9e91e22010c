"""MARNet model configuration."""

import math

from transformers import AutoConfig, PreTrainedConfig, ViTConfig

from .alignment_losses import ALIGNMENT_LOSSES, ALIGNMENTS_NEEDING_LABELS, ALIGNMENTS_WITH_CLASS_TARGETS

FUSION_MODES = ("concat", "add", "mul", "sum", "hm")
RECONSTRUCTION_MODES = ("diffusion", "mlp", "none")
CLASSIFIER_INPUTS = ("fusion", "visual", "reconstruction")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SAMPLERS = ("ddpm", "ddim")
VISION_POOLINGS = ("auto", "pooler", "cls", "mean")
VISUAL_FEATURES = ("tower", "projection")
RECONSTRUCTION_TRAINING = ("sample", "one_step")
DIFFUSION_TIMESTEPS = ("uniform", "inference")
TEXT_NORMALIZATIONS = ("none", "unit_rms")
ALIGNMENT_TARGETS = ("instance", "class")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")

# The rows of the paper's ablation (Table 2), each a set of config overrides, and one competitor of ours.
ABLATIONS = {
    "baseline": {"use_alignment": False, "reconstruction": "none", "classifier_input": "visual"},
    "ema": {"use_alignment": True, "reconstruction": "none", "classifier_input": "visual"},
    "mlp": {"use_alignment": False, "reconstruction": "mlp", "classifier_input": "reconstruction"},
    "cdr": {"use_alignment": False, "reconstruction": "diffusion", "classifier_input": "reconstruction"},
    "full": {"use_alignment": True, "reconstruction": "diffusion", "classifier_input": "fusion"},
    # Not in the paper: the visual-only baseline that also predicts each image's ingredients (multi-label BCE on the
    # tower's feature), the simplest use of the same privileged data without a text encoder (docs/method.md).
    "ingredients": {
        "use_alignment": False,
        "reconstruction": "none",
        "classifier_input": "visual",
        "ingredient_loss_weight": 1.0,
    },
}

# The paper read literally where it leaves a choice open and our defaults differ: `MARNetConfig(**PAPER_LITERAL)`.
# Each default was chosen on validation accuracy (docs/method.md, BENCHMARKS.md section 1).
PAPER_LITERAL = {
    "visual_features": "projection",
    "reconstruction_training": "one_step",
    "diffusion_timesteps": "uniform",
    "text_normalization": "none",
}


def _or(names):
    """{'b', 'a', 'c'} -> "'a', 'b' or 'c'"."""
    names = [repr(name) for name in sorted(names)]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, allowed))}, got {value!r}.")


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")


def _check_non_negative(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")


class MARNetConfig(PreTrainedConfig):
    r"""
    Configuration of a [`MARNetModel`] / [`MARNetForImageClassification`]: a vision tower, the Embedding Matching
    Alignment (EMA) heads, the Cross-modal Diffusion Reconstruction (CDR) branch and the fusion classifier of MARNet
    (Zheng et al., 2024). Text is *privileged information*: the model never holds a text encoder, it receives pooled
    text features (`text_embeds`) during training only; inference needs images alone.

    Instantiating it with no arguments gives full MARNet on a ViT-B/16 tower (224 px) with 768-d (BERT-base) text
    features. The paper leaves the values marked *open* unspecified; the defaults here train stably on tiny and demo
    configurations. Where the paper's words admit two readings (`visual_features`, `reconstruction_training`,
    `diffusion_timesteps`, `text_normalization`), the default is the one that scored higher on validation in
    `benchmarks/accuracy.py`; `MARNetConfig(**PAPER_LITERAL)` gives the literal reading (docs/method.md).

    Args:
        vision_config (`dict` or [`PreTrainedConfig`], *optional*):
            Config of the vision tower `F_v`, any transformers vision model that `AutoModel` builds (`ViTConfig`,
            `ConvNextConfig`, `TimmWrapperConfig` for timm backbones, ...). A dict must carry its `model_type`.
            Defaults to `ViTConfig()` (ViT-B/16 at 224 px, as in the paper).
        vision_hidden_size (`int`, *optional*):
            Width of the pooled visual feature `x_v`. Inferred from the tower when `None` (`hidden_size`,
            `hidden_sizes[-1]`, or timm's `num_features`) and written back into the config.
        vision_pooling (`str`, *optional*, defaults to `"auto"`):
            How `x_v` is read from the tower: `"pooler"` (its `pooler_output`), `"cls"` (first token of
            `last_hidden_state`), `"mean"` (mean over tokens or spatial positions), or `"auto"` (the pooler output
            when the tower returns one, else the CLS token).
        text_hidden_size (`int`, *optional*, defaults to 768):
            Width `D_s` of the privileged text features `x_s = F_s(i)` given as `text_embeds` (768 for BERT-base,
            384 for MiniLM-L6).
        text_normalization (`str`, *optional*, defaults to `"unit_rms"`):
            How `text_embeds` are scaled before any loss uses them: `"none"` (as given, the paper) or `"unit_rms"`
            (each vector L2-normalised then multiplied by `sqrt(text_hidden_size)`, so every dimension has unit
            mean square whatever the encoder). Raw sentence-encoder features have a per-dimension scale near 0.05-0.25,
            which makes `L_MSE` (a mean over dimensions) too small to shape anything at `gamma = 1`; cosine-based
            alignment is unaffected.
        use_alignment (`bool`, *optional*, defaults to `True`):
            Enables EMA (eq. 5-13): the projections `E_v`, `E_s` and the image-text contrastive loss `L_ITA`. When
            `False` the visual branch feature is the raw `x_v`.
        visual_features (`str`, *optional*, defaults to `"tower"`):
            What the visual classifier and the fusion read as `x_EMA`: `"projection"` (`g(E_v(x_v))`, eq. 1 and 7
            read literally) or `"tower"` (`x_v` itself, as MGCA, the source of the ITA loss, classifies the backbone
            feature; the projection then only serves the alignment loss). Without alignment both mean `x_v`.
        alignment_targets (`str`, *optional*, defaults to `"instance"`):
            Positives of the contrastive loss: `"instance"` (only the paired text, eq. 9-10) or `"class"` (every text
            of the batch with the same label, weighted equally; needs `labels`). An extension, not in the paper: with
            instance targets, texts of the same class are pushed apart as negatives. Only for `alignment` 'ita' and
            'team': 'sdm', 'cdd' and 'ssan' always take the pairs of one class as matches and 'swd' uses neither
            pairs nor labels, so they refuse `"class"`.
        alignment (`str`, *optional*, defaults to `"ita"`):
            The EMA alignment loss, one of the methods of the paper's Table 1 (`alignment_losses.py` transcribes each
            source's equations and lists our choices; `docs/alignment_methods.md` explains them):
            `"ita"`, the paper's image-text contrastive loss (eq. 5-11, after MGCA, Wang et al., NeurIPS 2022);
            `"sdm"`, similarity distribution matching (IRRA, Jiang & Ye, CVPR 2023); `"swd"`, sliced Wasserstein
            discrepancy (Lee et al., CVPR 2019); `"cdd"`, contrastive domain discrepancy (CAN, Kang et al., CVPR
            2019); `"ssan"`, triplet-centroid alignment (SSAN, Li et al., ACM MM 2020); `"team"`, token embeddings
            alignment (TEAM, Xie et al., ACM MM 2022). 'sdm', 'cdd' and 'ssan' group the pairs by class: they need
            `labels` in training and refuse `problem_type="regression"`. 'swd', 'cdd' and 'ssan' have no
            temperature, so `logit_scale` stays frozen. 'team' attends from each text token to the image's patch
            tokens (the tower's `last_hidden_state` without its class and register tokens, or its flattened feature
            map, projected token-wise by `E_v`); its text tokens are the optional training input
            `text_token_embeds`, without which the pooled `text_embeds` is the only text token ("TEAM, pooled text",
            what `marnet-train` runs). The losses differ in scale: tune `alignment_loss_weight` per method.
        swd_num_projections (`int`, *optional*, defaults to 128):
            Number of random directions `alignment="swd"` draws at each step (as in Lee et al.'s code).
        cdd_kernel_num (`int`, *optional*, defaults to 5):
            Number of Gaussian kernels of `alignment="cdd"` (CAN's default).
        cdd_kernel_mul (`float`, *optional*, defaults to 2.0):
            Ratio between the bandwidths of consecutive Gaussian kernels of `alignment="cdd"` (CAN's default).
        team_attention_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the softmax with which, for `alignment="team"`, each text token attends over the image's
            patch tokens. Ours, untuned: TEAM learns attention blocks instead.
        projection_dim (`int`, *optional*, defaults to 256):
            Output width of `E_v` and `E_s` (eq. 7-8), *open* in the paper.
        projection_negative_slope (`float`, *optional*, defaults to 0.01):
            Slope `alpha` of the LeakyReLU `g` applied after each projection (eq. 6), *open* in the paper.
        contrastive_temperature_init (`float`, *optional*, defaults to 0.07):
            Initial temperature `tau` of the ITA loss (eq. 9-10), and of the 'sdm' and 'team' alignments. Stored as a
            learnable `logit_scale = log(1/tau)`.
        learnable_temperature (`bool`, *optional*, defaults to `True`):
            Whether `logit_scale` is trained (never for an `alignment` without temperature: 'swd', 'cdd', 'ssan').
        reconstruction (`str`, *optional*, defaults to `"diffusion"`):
            The CDR branch: `"diffusion"` (x0-predicting conditional denoiser, eq. 14-23), `"mlp"` (the paper's
            "+MLP" row: a plain four-layer MLP mapping `x_v -> x_s` trained with MSE, no noise), or `"none"`.
        reconstruction_training (`str`, *optional*, defaults to `"sample"`):
            Which `x_CDR` the reconstruction and fusion classifiers are trained on when `text_embeds` are given:
            `"one_step"` (the denoiser's x0 prediction from the noised text, the paper's training path) or `"sample"`
            (the reverse-process sample that inference produces, with gradients through every step; text then only
            enters the losses). At evaluation (`model.eval()`) and without text the sample is always used.
        reconstruction_backprop_steps (`int`, *optional*):
            With `reconstruction_training="sample"`, through how many of the last reverse steps the classification
            losses backpropagate in training (truncated backpropagation through the chain): the earlier steps run
            without gradients, which saves their backward pass. `0` trains the classifiers on a detached sample (the
            denoiser then learns from `L_MSE` alone). `None` (the default): through every step. Never changes
            inference.
        diffusion_timesteps (`str`, *optional*, defaults to `"inference"`):
            Distribution of `t` in `L_MSE` (eq. 19): `"uniform"` over `[0, T)` (DDPM) or `"inference"`, uniform over
            the `num_inference_steps` timesteps the sampler visits.
        num_train_timesteps (`int`, *optional*, defaults to 1000):
            Number of forward-process steps `T` (eq. 14-15), *open* in the paper.
        beta_schedule (`str`, *optional*, defaults to `"linear"`):
            Noise schedule `beta_t`: `"linear"` (DDPM), `"scaled_linear"` or `"squaredcos_cap_v2"` (cosine).
        beta_start (`float`, *optional*, defaults to 1e-4):
            `beta_1` of the linear schedules.
        beta_end (`float`, *optional*, defaults to 0.02):
            `beta_T` of the linear schedules.
        num_inference_steps (`int`, *optional*, defaults to 10):
            Reverse steps run at inference, evenly spaced over `T`. May be changed after loading
            (`model.config.num_inference_steps = 50`).
        sampler (`str`, *optional*, defaults to `"ddpm"`):
            Reverse process: `"ddpm"` (posterior of eq. 21-23) or `"ddim"` (deterministic, eta = 0).
        sampler_seed (`int`, *optional*, defaults to 0):
            Seed of the Gaussian noise the reverse process starts from (and, for DDPM, adds at each step). The
            noise is one fixed draw shared by every image, so logits never depend on batch companions, batch size
            or the number of calls.
        denoiser_hidden_size (`int`, *optional*, defaults to 256):
            Width of the hidden layers of the four-linear-layer denoiser `X_theta` (eq. 19) and of the "+MLP" mapper.
            The paper does not give it. At 256 MARNet trains and predicts within a few percent of the backbone's cost,
            with the validation accuracy of the earlier default, 1024 (docs/method.md, "How wide the denoiser is").
        timestep_embedding_dim (`int`, *optional*, defaults to 128):
            Width of the sinusoidal embedding of `t` fed to the denoiser.
        fusion_mode (`str`, *optional*, defaults to `"concat"`):
            Fusion of the branches (eq. 24): `"concat"`, `"add"`, `"mul"` on features, then a linear classifier;
            `"sum"` (`log sigmoid(a + b)`) or `"hm"` (harmonic, `log(z / (1 + z))` with `z = sigmoid(a) * sigmoid(b)`)
            on the branch logits `a`, `b`, as in counterfactual VQA. `"add"` and `"mul"` first project both branches
            to `projection_dim`.
        classifier_input (`str`, *optional*, defaults to `"fusion"`):
            Which logits the model returns as `logits`: `"fusion"` (full MARNet), `"visual"` (classifier over the
            visual/EMA feature) or `"reconstruction"` (classifier over the CDR feature alone).
        visual_ce_weight (`float`, *optional*, defaults to 1.0):
            `alpha_1` of eq. 13, weight of the CE of the visual (EMA) classifier.
        alignment_loss_weight (`float`, *optional*, defaults to 1.0):
            `beta` of eq. 13, weight of the alignment loss (`L_ITA`, or the `alignment` method's). The paper leaves
            it open; 1.0 was chosen over 0.1 on validation (docs/method.md). The other Table 1 losses differ in scale:
            tune it per method.
        reconstruction_ce_weight (`float`, *optional*, defaults to 1.0):
            `alpha_2` of eq. 20, weight of the CE of the classifier over the reconstructed feature.
        reconstruction_loss_weight (`float`, *optional*, defaults to 1.0):
            `gamma` of eq. 20, weight of `L_MSE` (diffusion or "+MLP" mapping).
        fusion_ce_weight (`float`, *optional*, defaults to 1.0):
            Weight of the CE of the fused classifier.
        text_classification_weight (`float`, *optional*, defaults to 0.0):
            Weight of the CE of the reconstruction classifier applied to the real text feature `x_s` (training only):
            the classifier is then shared between the text and its reconstruction from the image. An extension, not in
            the paper; needs a reconstruction classifier (`classifier_input` 'fusion' or 'reconstruction').
        distillation_weight (`float`, *optional*, defaults to 0.0):
            Weight of the distillation of the text classifier into `logits`:
            `T^2 KL(softmax(z_s / T) || softmax(z / T))` with the text logits `z_s` detached (generalised distillation,
            Lopez-Paz et al., ICLR 2016). An extension, not in the paper; needs `text_classification_weight > 0`, so
            that the teacher is trained.
        ingredient_loss_weight (`float`, *optional*, defaults to 0.0):
            Weight of the ingredient loss: a linear head on the tower's pooled feature `x_v` predicts which of the
            `num_ingredients` ingredients each image holds, trained with BCE on the multi-hot `ingredient_labels` (the
            privileged data used as auxiliary targets instead of text; training only, inference needs images alone).
            An extension, not in the paper (the `"ingredients"` ablation row); needs `num_ingredients >= 1`.
        num_ingredients (`int`, *optional*, defaults to 0):
            Width of the ingredient head; 0 builds none. `marnet-train` sets it from the dataset's ingredient column.
        ingredient_names (`list[str]`, *optional*):
            The ingredient of each output of the ingredient head (the ClassLabel names of the ingredient column), so
            that `ingredient_logits` can be read and a fine-tuning dataset checked against them.
        distillation_temperature (`float`, *optional*, defaults to 2.0):
            Temperature `T` of the distillation.
        classifier_dropout (`float`, *optional*, defaults to 0.0):
            Dropout before every classifier.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initializer of the MARNet heads.
        contrastive_gather (`bool`, *optional*, defaults to `True`):
            Under `torch.distributed`, gather features of every process for the alignment loss, so that its
            negatives (distributions, class centroids) are those of the global batch, as in one process.
        image_only_training (`bool`, *optional*, defaults to `False`):
            Declares that training gives no `text_embeds`, e.g. fine-tuning a published MARNet on a new image dataset.
            The parameters that only the text trains are then frozen (`requires_grad=False`, weights kept as loaded),
            so every trainable parameter gets a gradient from images and labels, as DDP with
            `find_unused_parameters=False` requires (`Trainer` uses that setting with gradient checkpointing). Frozen:
            `alignment.text_projection` and `alignment.logit_scale`; `alignment.visual_projection` unless the visual
            classifier reads it (`visual_features="projection"` and `classifier_input` 'visual' or 'fusion'); the CDR
            branch when no classifier reads it (`classifier_input="visual"`). `text_embeds` in training mode are then
            refused. Set it when loading: `from_pretrained(path, image_only_training=True)`.
        problem_type (`str`, *optional*):
            As for every transformers classifier: `"single_label_classification"` (integer `labels` (B,), cross
            entropy), `"multi_label_classification"` (multi-hot float `labels` (B, num_labels), BCE with logits) or
            `"regression"` (float `labels` (B, num_labels), or (B,) when `num_labels=1`; MSE). When `None` it is
            inferred from the first `labels` as transformers does (one label: regression; integer labels:
            single-label; else multi-label) and stored in the config. Every classification term (visual,
            reconstruction, fused, text) follows it. Logit fusions return the fused score's inverse link: `"sum"`
            gives `log sigmoid(a + b)` for single-label (softmax renormalises it) and the logit `a + b` of the same
            score for multi-label; `"hm"` scores `z / (1 + z) <= 0.5`, so it is single-label only; regression refuses
            both. Multi-label `alignment_targets="class"` takes the texts with the same label set as positives, and
            distillation compares per-class sigmoids (binary KL, mean over classes as the BCE); regression refuses
            both.

    Sizes: the heads do not follow the tower's width. A tiny model for tests (transformers' common tests keep theirs
    under 1M parameters) needs small heads as well as a small tower, e.g. `text_hidden_size=16, projection_dim=8,
    denoiser_hidden_size=24, timestep_embedding_dim=8` with a 2-layer, 32-wide ViT (about 30k parameters); with the
    default head sizes the same tower carries about 4M.

    Example:

    ```python
    >>> from modeling_marnet import MARNetConfig, MARNetForImageClassification

    >>> config = MARNetConfig(text_hidden_size=384, num_labels=172)
    >>> model = MARNetForImageClassification(config)
    >>> baseline = MARNetConfig.from_ablation("baseline", num_labels=172)
    ```
    """

    model_type = "marnet"
    sub_configs = {"vision_config": AutoConfig}
    # Outputs that `Trainer` leaves out of its predictions, so `compute_metrics` gets `logits` (the branch outputs
    # and every weighted loss term of MARNetImageClassifierOutput).
    keys_to_ignore_at_inference = [
        "visual_logits",
        "reconstruction_logits",
        "text_logits",
        "visual_classification_loss",
        "reconstruction_classification_loss",
        "fusion_classification_loss",
        "alignment_loss",
        "reconstruction_loss",
        "text_classification_loss",
        "distillation_loss",
        "ingredient_logits",
        "ingredient_loss",
    ]

    def __init__(
        self,
        vision_config: dict | PreTrainedConfig | None = None,
        vision_hidden_size: int | None = None,
        vision_pooling: str = "auto",
        text_hidden_size: int = 768,
        text_normalization: str = "unit_rms",
        use_alignment: bool = True,
        visual_features: str = "tower",
        alignment_targets: str = "instance",
        alignment: str = "ita",
        swd_num_projections: int = 128,
        cdd_kernel_num: int = 5,
        cdd_kernel_mul: float = 2.0,
        team_attention_temperature: float = 0.1,
        projection_dim: int = 256,
        projection_negative_slope: float = 0.01,
        contrastive_temperature_init: float = 0.07,
        learnable_temperature: bool = True,
        reconstruction: str = "diffusion",
        reconstruction_training: str = "sample",
        reconstruction_backprop_steps: int | None = None,
        diffusion_timesteps: str = "inference",
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        num_inference_steps: int = 10,
        sampler: str = "ddpm",
        sampler_seed: int = 0,
        denoiser_hidden_size: int = 256,
        timestep_embedding_dim: int = 128,
        fusion_mode: str = "concat",
        classifier_input: str = "fusion",
        visual_ce_weight: float = 1.0,
        alignment_loss_weight: float = 1.0,
        reconstruction_ce_weight: float = 1.0,
        reconstruction_loss_weight: float = 1.0,
        fusion_ce_weight: float = 1.0,
        text_classification_weight: float = 0.0,
        distillation_weight: float = 0.0,
        distillation_temperature: float = 2.0,
        ingredient_loss_weight: float = 0.0,
        num_ingredients: int = 0,
        ingredient_names: list[str] | None = None,
        classifier_dropout: float = 0.0,
        initializer_range: float = 0.02,
        contrastive_gather: bool = True,
        image_only_training: bool = False,
        **kwargs,
    ):
        if vision_config is None:
            vision_config = ViTConfig()
        elif isinstance(vision_config, dict):
            if "model_type" not in vision_config:
                raise ValueError(
                    "`vision_config` given as a dict must carry its `model_type` (e.g. 'vit', 'timm_wrapper'), "
                    f"got keys {sorted(vision_config)}."
                )
            vision_config = AutoConfig.for_model(**vision_config)
        elif not isinstance(vision_config, PreTrainedConfig):
            raise ValueError(
                f"`vision_config` must be a dict, a PreTrainedConfig or None, got {type(vision_config).__name__}."
            )
        self.vision_config = vision_config
        self.vision_hidden_size = vision_hidden_size
        self.vision_pooling = vision_pooling
        self.text_hidden_size = text_hidden_size
        self.text_normalization = text_normalization
        self.use_alignment = use_alignment
        self.visual_features = visual_features
        self.alignment_targets = alignment_targets
        self.alignment = alignment
        self.swd_num_projections = swd_num_projections
        self.cdd_kernel_num = cdd_kernel_num
        self.cdd_kernel_mul = cdd_kernel_mul
        self.team_attention_temperature = team_attention_temperature
        self.projection_dim = projection_dim
        self.projection_negative_slope = projection_negative_slope
        self.contrastive_temperature_init = contrastive_temperature_init
        self.learnable_temperature = learnable_temperature
        self.reconstruction = reconstruction
        self.reconstruction_training = reconstruction_training
        self.reconstruction_backprop_steps = reconstruction_backprop_steps
        self.diffusion_timesteps = diffusion_timesteps
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.num_inference_steps = num_inference_steps
        self.sampler = sampler
        self.sampler_seed = sampler_seed
        self.denoiser_hidden_size = denoiser_hidden_size
        self.timestep_embedding_dim = timestep_embedding_dim
        self.fusion_mode = fusion_mode
        self.classifier_input = classifier_input
        self.visual_ce_weight = visual_ce_weight
        self.alignment_loss_weight = alignment_loss_weight
        self.reconstruction_ce_weight = reconstruction_ce_weight
        self.reconstruction_loss_weight = reconstruction_loss_weight
        self.fusion_ce_weight = fusion_ce_weight
        self.text_classification_weight = text_classification_weight
        self.distillation_weight = distillation_weight
        self.distillation_temperature = distillation_temperature
        self.ingredient_loss_weight = ingredient_loss_weight
        self.num_ingredients = num_ingredients
        self.ingredient_names = list(ingredient_names) if ingredient_names is not None else None
        self.classifier_dropout = classifier_dropout
        self.initializer_range = initializer_range
        self.contrastive_gather = contrastive_gather
        self.image_only_training = image_only_training
        super().__init__(**kwargs)
        self.validate_marnet()

    @classmethod
    def from_ablation(cls, name, **kwargs):
        """Config of one row of the paper's ablation (Table 2): `baseline`, `ema`, `mlp`, `cdr` or `full`; or of
        `ingredients`, the baseline with the ingredient head (give `num_ingredients`).

        `kwargs` override the row's settings (e.g. `fusion_mode="hm"` for a full-MARNet variant).
        """
        _check_choice("ablation", name, tuple(ABLATIONS))
        return cls(**{**ABLATIONS[name], **kwargs})

    def validate_marnet(self):
        """Raises `ValueError` naming the field, the allowed values and the value given."""
        _check_choice("vision_pooling", self.vision_pooling, VISION_POOLINGS)
        _check_choice("reconstruction", self.reconstruction, RECONSTRUCTION_MODES)
        _check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _check_choice("sampler", self.sampler, SAMPLERS)
        _check_choice("fusion_mode", self.fusion_mode, FUSION_MODES)
        _check_choice("classifier_input", self.classifier_input, CLASSIFIER_INPUTS)
        _check_choice("visual_features", self.visual_features, VISUAL_FEATURES)
        _check_choice("reconstruction_training", self.reconstruction_training, RECONSTRUCTION_TRAINING)
        _check_choice("diffusion_timesteps", self.diffusion_timesteps, DIFFUSION_TIMESTEPS)
        _check_choice("text_normalization", self.text_normalization, TEXT_NORMALIZATIONS)
        _check_choice("alignment_targets", self.alignment_targets, ALIGNMENT_TARGETS)
        _check_choice("alignment", self.alignment, tuple(ALIGNMENT_LOSSES))
        for name in ("use_alignment", "learnable_temperature", "contrastive_gather", "image_only_training"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        for name in (
            "text_hidden_size",
            "projection_dim",
            "num_train_timesteps",
            "num_inference_steps",
            "denoiser_hidden_size",
            "timestep_embedding_dim",
            "swd_num_projections",
            "cdd_kernel_num",
        ):
            _check_positive_int(name, getattr(self, name))
        if self.vision_hidden_size is not None:
            _check_positive_int("vision_hidden_size", self.vision_hidden_size)
        backprop_steps = self.reconstruction_backprop_steps
        if backprop_steps is not None and (
            isinstance(backprop_steps, bool) or not isinstance(backprop_steps, int) or backprop_steps < 0
        ):
            raise ValueError(
                "`reconstruction_backprop_steps` must be None (every step) or an integer >= 0, "
                f"got {backprop_steps!r}."
            )
        if (
            isinstance(self.sampler_seed, bool)
            or not isinstance(self.sampler_seed, int)
            or not 0 <= self.sampler_seed < 2**64
        ):
            raise ValueError(
                "`sampler_seed` must be an integer in [0, 2**64 - 1] (a torch.Generator seed), "
                f"got {self.sampler_seed!r}."
            )
        if self.timestep_embedding_dim % 2:
            raise ValueError(
                f"`timestep_embedding_dim` must be even (sin and cos halves), got {self.timestep_embedding_dim}."
            )
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"`num_inference_steps` ({self.num_inference_steps}) must be <= `num_train_timesteps` "
                f"({self.num_train_timesteps})."
            )
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(
                f"`beta_start` and `beta_end` must satisfy 0 < beta_start < beta_end < 1, "
                f"got beta_start={self.beta_start!r}, beta_end={self.beta_end!r}."
            )
        if not 0 < self.contrastive_temperature_init < math.inf:
            raise ValueError(
                "`contrastive_temperature_init` must be > 0 (the paper uses 0.07), "
                f"got {self.contrastive_temperature_init!r}."
            )
        for name in (
            "projection_negative_slope",
            "visual_ce_weight",
            "alignment_loss_weight",
            "reconstruction_ce_weight",
            "reconstruction_loss_weight",
            "fusion_ce_weight",
            "text_classification_weight",
            "distillation_weight",
            "ingredient_loss_weight",
            "initializer_range",
        ):
            _check_non_negative(name, getattr(self, name))
        self._check_ingredient_head()
        for name in ("distillation_temperature", "cdd_kernel_mul", "team_attention_temperature"):
            _check_positive(name, getattr(self, name))
        if self.alignment_targets == "class" and self.alignment not in ALIGNMENTS_WITH_CLASS_TARGETS:
            reason = (
                "always takes the pairs of one class as matches"
                if self.alignment in ALIGNMENTS_NEEDING_LABELS
                else "uses neither the image-text pairs nor the labels"
            )
            raise ValueError(
                f"`alignment_targets='class'` has no effect with `alignment={self.alignment!r}`, which {reason}. "
                f"Use alignment_targets='instance', or alignment {_or(ALIGNMENTS_WITH_CLASS_TARGETS)} for class-aware "
                "targets."
            )
        if self.text_classification_weight > 0 and self.classifier_input == "visual":
            raise ValueError(
                f"`text_classification_weight={self.text_classification_weight!r}` trains the reconstruction "
                "classifier on the text, but `classifier_input='visual'` builds none. "
                "Use classifier_input 'fusion' or 'reconstruction' (with a CDR branch), or set the weight to 0."
            )
        if self.distillation_weight > 0 and not self.text_classification_weight > 0:
            raise ValueError(
                f"`distillation_weight={self.distillation_weight!r}` distils the text classifier, which only learns "
                f"when `text_classification_weight` > 0 (got {self.text_classification_weight!r}). Set both."
            )
        if not 0 <= self.classifier_dropout < 1:
            raise ValueError(f"`classifier_dropout` must be in [0, 1), got {self.classifier_dropout!r}.")
        if self.classifier_input != "visual" and self.reconstruction == "none":
            raise ValueError(
                f"`classifier_input={self.classifier_input!r}` needs the CDR branch, but `reconstruction='none'`. "
                "Use `classifier_input='visual'` or set `reconstruction` to 'diffusion' or 'mlp'."
            )
        if self.problem_type is not None:
            _check_choice("problem_type", self.problem_type, PROBLEM_TYPES)
            self.check_problem_type(self.problem_type)

    def _check_ingredient_head(self):
        count = self.num_ingredients
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"`num_ingredients` must be an integer >= 0 (0: no ingredient head), got {count!r}.")
        if self.ingredient_loss_weight > 0 and count == 0:
            raise ValueError(
                f"`ingredient_loss_weight={self.ingredient_loss_weight!r}` trains an ingredient head, but "
                "`num_ingredients=0` builds none. Set num_ingredients (marnet-train reads it from the dataset's "
                "ingredient column), or set the weight to 0."
            )
        names = self.ingredient_names
        if names is not None and (len(names) != count or not all(isinstance(name, str) for name in names)):
            raise ValueError(
                f"`ingredient_names` must be {count} strings (one per output of the head, `num_ingredients`), got "
                f"{len(names)} items."
            )

    def check_problem_type(self, problem_type):
        """Raises `ValueError` naming the field that has no meaning for `problem_type` (set or inferred)."""
        fuses_logits = self.classifier_input == "fusion" and self.fusion_mode in ("sum", "hm")
        if problem_type == "regression" and fuses_logits:
            raise ValueError(
                f"`fusion_mode={self.fusion_mode!r}` fuses class scores (sigmoids of the branch logits), which "
                "`problem_type='regression'` does not have. Use fusion_mode 'concat', 'add' or 'mul', or a "
                "classification problem_type."
            )
        if problem_type == "multi_label_classification" and fuses_logits and self.fusion_mode == "hm":
            raise ValueError(
                "`fusion_mode='hm'` scores each class z / (1 + z) <= 0.5 (z = sigmoid(a) * sigmoid(b)), so under "
                "`problem_type='multi_label_classification'` (sigmoid outputs) no label could be predicted present. "
                "Use fusion_mode 'sum' (fused logit a + b) or 'concat', 'add', 'mul'."
            )
        if problem_type == "regression" and self.use_alignment and self.alignment_targets == "class":
            raise ValueError(
                "`alignment_targets='class'` takes the texts of the same class as positives, but "
                "`problem_type='regression'` has no classes. Use alignment_targets='instance'."
            )
        if problem_type == "regression" and self.use_alignment and self.alignment in ALIGNMENTS_NEEDING_LABELS:
            label_free = set(ALIGNMENT_LOSSES) - ALIGNMENTS_NEEDING_LABELS
            raise ValueError(
                f"`alignment={self.alignment!r}` groups the images and texts by class, which "
                f"`problem_type='regression'` does not have. Use alignment {_or(label_free)}."
            )
        if problem_type == "regression" and self.distillation_weight > 0:
            raise ValueError(
                f"`distillation_weight={self.distillation_weight!r}` distils temperature-scaled class probabilities, "
                "which `problem_type='regression'` does not have. Set distillation_weight=0."
            )


__all__ = ["MARNetConfig", "ABLATIONS", "PAPER_LITERAL"]
