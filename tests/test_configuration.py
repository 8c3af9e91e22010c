import logging

import pytest
from transformers import AutoConfig, ConvNextConfig, TimmWrapperConfig, ViTConfig
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as hf_logging

from modeling_marnet import ABLATIONS, MARNetConfig
from tiny_marnet import tiny_config


def test_default_config_is_paper_setup_and_logs_nothing(caplog):
    hf_logging.set_verbosity_info()
    try:
        # transformers' own loggers do not propagate to the root logger that caplog watches: capture them too.
        with caplog.at_level(logging.DEBUG), CaptureLogger(hf_logging.get_logger("transformers")) as transformers_log:
            config = MARNetConfig()
    finally:
        hf_logging.set_verbosity_warning()
    assert caplog.records == [] and transformers_log.out == ""
    assert isinstance(config.vision_config, ViTConfig)
    assert (config.vision_config.hidden_size, config.vision_config.patch_size) == (768, 16)
    assert config.contrastive_temperature_init == 0.07
    assert (config.use_alignment, config.reconstruction, config.classifier_input) == (True, "diffusion", "fusion")
    assert not hasattr(config, "temperature")


def test_round_trip_keeps_every_field(tmp_path):
    config = tiny_config(fusion_mode="hm", sampler="ddim", alignment_loss_weight=0.3, sampler_seed=7)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MARNetConfig
    saved, original = loaded.to_dict(), config.to_dict()
    saved.pop("_name_or_path"), original.pop("_name_or_path")
    assert saved == original
    assert isinstance(loaded.vision_config, ViTConfig)


@pytest.mark.parametrize(
    "vision_config",
    [TimmWrapperConfig(architecture="test_efficientnet"), ConvNextConfig(hidden_sizes=[8, 16, 24, 32])],
    ids=["timm", "convnext"],
)
def test_any_vision_config_round_trips(tmp_path, vision_config):
    MARNetConfig(vision_config=vision_config).save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path).vision_config) is type(vision_config)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_rows_apply_their_switches(name):
    config = MARNetConfig.from_ablation(name, fusion_mode="sum", num_ingredients=3)
    for field, value in ABLATIONS[name].items():
        assert getattr(config, field) == value
    assert config.fusion_mode == "sum"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("fusion_mode", "max", "`fusion_mode` must be one of 'concat', 'add', 'mul', 'sum', 'hm', got 'max'"),
        ("reconstruction", "vae", "`reconstruction` must be one of 'diffusion', 'mlp', 'none', got 'vae'"),
        ("sampler", "euler", "`sampler` must be one of 'ddpm', 'ddim', got 'euler'"),
        ("beta_schedule", "sigmoid", "`beta_schedule` must be one of"),
        ("classifier_input", "text", "`classifier_input` must be one of"),
        ("vision_pooling", "max", "`vision_pooling` must be one of"),
        ("num_inference_steps", 0, "`num_inference_steps` must be a positive integer, got 0"),
        ("num_inference_steps", 2000, "`num_inference_steps` (2000) must be <= `num_train_timesteps` (1000)"),
        ("projection_dim", 1.5, "`projection_dim` must be a positive integer, got 1.5"),
        ("timestep_embedding_dim", 7, "`timestep_embedding_dim` must be even"),
        ("beta_end", 1e-5, "0 < beta_start < beta_end < 1"),
        ("contrastive_temperature_init", 0.0, "`contrastive_temperature_init` must be > 0"),
        ("alignment_loss_weight", -1.0, "`alignment_loss_weight` must be a finite number >= 0, got -1.0"),
        ("visual_ce_weight", float("inf"), "`visual_ce_weight` must be a finite number >= 0, got inf"),
        (
            "reconstruction_loss_weight",
            float("nan"),
            "`reconstruction_loss_weight` must be a finite number >= 0, got nan",
        ),
        ("visual_features", "pooled", "`visual_features` must be one of 'tower', 'projection', got 'pooled'"),
        ("reconstruction_training", "x0", "`reconstruction_training` must be one of 'sample', 'one_step', got 'x0'"),
        (
            "reconstruction_backprop_steps",
            -1,
            "`reconstruction_backprop_steps` must be None (every step) or an integer >= 0, got -1",
        ),
        ("diffusion_timesteps", "late", "`diffusion_timesteps` must be one of 'uniform', 'inference', got 'late'"),
        ("text_normalization", "l2", "`text_normalization` must be one of 'none', 'unit_rms', got 'l2'"),
        ("alignment_targets", "label", "`alignment_targets` must be one of 'instance', 'class', got 'label'"),
        ("distillation_temperature", 0.0, "`distillation_temperature` must be a finite number > 0, got 0.0"),
        (
            "distillation_weight",
            1.0,
            "distils the text classifier, which only learns when `text_classification_weight` > 0",
        ),
        ("classifier_dropout", 1.0, "`classifier_dropout` must be in [0, 1), got 1.0"),
        ("use_alignment", "yes", "`use_alignment` must be True or False, got 'yes'"),
        ("sampler_seed", -1, "`sampler_seed` must be an integer in [0, 2**64 - 1] (a torch.Generator seed), got -1"),
        ("image_only_training", 1, "`image_only_training` must be True or False, got 1"),
        (
            "problem_type",
            "ordinal",
            "`problem_type` must be one of 'single_label_classification', "
            "'multi_label_classification', 'regression', got 'ordinal'",
        ),
        ("alignment", "clip", "`alignment` must be one of 'ita', 'sdm', 'swd', 'cdd', 'ssan', 'team', got 'clip'"),
        ("swd_num_projections", 0, "`swd_num_projections` must be a positive integer, got 0"),
        ("cdd_kernel_num", 2.0, "`cdd_kernel_num` must be a positive integer, got 2.0"),
        ("cdd_kernel_mul", -2.0, "`cdd_kernel_mul` must be a finite number > 0, got -2.0"),
        ("team_attention_temperature", 0, "`team_attention_temperature` must be a finite number > 0, got 0"),
    ],
)
def test_invalid_values_name_field_allowed_and_given(field, value, message):
    with pytest.raises(ValueError) as error:
        MARNetConfig(**{field: value})
    assert message in str(error.value)


def test_unknown_ablation_and_inconsistent_switches_are_refused():
    with pytest.raises(
        ValueError,
        match="`ablation` must be one of 'baseline', 'ema', 'mlp', 'cdr', 'full', 'ingredients', got 'clip'",
    ):
        MARNetConfig.from_ablation("clip")
    with pytest.raises(ValueError, match="needs the CDR branch, but `reconstruction='none'`"):
        MARNetConfig(reconstruction="none", classifier_input="fusion")
    with pytest.raises(ValueError, match="must carry its `model_type`"):
        MARNetConfig(vision_config={"hidden_size": 32})


def test_num_labels_and_label_maps_follow_transformers_conventions(tmp_path):
    config = MARNetConfig(num_labels=3)
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    named = MARNetConfig(id2label={0: "soup", 1: "salad"}, label2id={"soup": 0, "salad": 1})
    named.save_pretrained(tmp_path)
    loaded = MARNetConfig.from_pretrained(tmp_path)
    assert (loaded.num_labels, loaded.id2label, loaded.label2id) == (
        2,
        {0: "soup", 1: "salad"},
        {"soup": 0, "salad": 1},
    )


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"problem_type": "regression", "fusion_mode": "sum"},
            "`fusion_mode='sum'` fuses class scores (sigmoids of "
            "the branch logits), which `problem_type='regression'` does not have. "
            "Use fusion_mode 'concat', 'add' or 'mul'",
        ),
        ({"problem_type": "regression", "fusion_mode": "hm"}, "`fusion_mode='hm'` fuses class scores"),
        (
            {"problem_type": "multi_label_classification", "fusion_mode": "hm"},
            "`fusion_mode='hm'` scores each class "
            "z / (1 + z) <= 0.5 (z = sigmoid(a) * sigmoid(b)), so under `problem_type='multi_label_classification'`",
        ),
        (
            {"problem_type": "regression", "alignment_targets": "class"},
            "`alignment_targets='class'` takes the texts "
            "of the same class as positives, but `problem_type='regression'` has no classes. "
            "Use alignment_targets='instance'",
        ),
        (
            {"problem_type": "regression", "alignment": "cdd"},
            "`alignment='cdd'` groups the images and texts by "
            "class, which `problem_type='regression'` does not have. Use alignment 'ita', 'swd' or 'team'.",
        ),
        (
            {"problem_type": "regression", "text_classification_weight": 1.0, "distillation_weight": 0.5},
            "`distillation_weight=0.5` distils temperature-scaled class probabilities, "
            "which `problem_type='regression'` "
            "does not have. Set distillation_weight=0",
        ),
    ],
)
def test_fields_without_a_meaning_for_the_problem_type_are_refused(fields, message):
    with pytest.raises(ValueError) as error:
        MARNetConfig(**fields)
    assert message in str(error.value)


def test_problem_type_restrictions_apply_only_to_the_parts_in_use():
    MARNetConfig(problem_type="multi_label_classification", fusion_mode="sum", alignment_targets="class")
    MARNetConfig(problem_type="regression", fusion_mode="hm", classifier_input="visual")  # no fusion classifier
    MARNetConfig(problem_type="regression", alignment_targets="class", use_alignment=False)
    MARNetConfig(problem_type="regression", alignment="ssan", use_alignment=False)


@pytest.mark.parametrize(
    "alignment, reason",
    [
        ("sdm", "always takes the pairs of one class as matches"),
        ("cdd", "always takes the pairs of one class as matches"),
        ("ssan", "always takes the pairs of one class as matches"),
        ("swd", "uses neither the image-text pairs nor the labels"),
    ],
)
def test_class_targets_are_refused_where_the_alignment_implies_or_ignores_them(alignment, reason):
    with pytest.raises(ValueError) as error:
        MARNetConfig(alignment=alignment, alignment_targets="class")
    assert str(error.value) == (
        f"`alignment_targets='class'` has no effect with `alignment={alignment!r}`, which {reason}. "
        "Use alignment_targets='instance', or alignment 'ita' or 'team' for class-aware targets."
    )
    for accepted in ("ita", "team"):
        assert MARNetConfig(alignment=accepted, alignment_targets="class").alignment_targets == "class"
