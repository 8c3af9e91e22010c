"""MARNet behaves like transformers' own image classifiers, as transformers 5.x's `tests/test_modeling_common.py`
(`ModelTesterMixin`) exercises them: output flags from the config, `retain_grad` on hidden states and attentions,
every problem type, re-heading with mismatched sizes, gradient checkpointing with a gradient for every trainable
parameter, small tiny models; plus MARNet's own contract that evaluation logits never see the privileged text.

Each test names the mixin test it mirrors. The mixin is not run itself: the PyPI sdist of transformers lacks the
`tests/exporters` and `tests/generation` packages that `test_modeling_common.py` imports, and the mixin adds labels
only for classes listed in transformers' own Auto name mappings, so for MARNet it would skip its problem-type,
mismatched-size and training checks without a word.
"""

import inspect
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForImageClassification, ViTForImageClassification, ViTImageProcessor, pipeline
from transformers.loss.loss_utils import ForSequenceClassificationLoss

from modeling_marnet import MARNetConfig, MARNetForImageClassification, MARNetModel
from tiny_marnet import IMAGE_SIZE, NUM_LABELS, TEXT_WIDTH, tiny_batch, tiny_config, tiny_vit_config
from tiny_marnet import tiny_multi_hot as multi_hot

NUM_LAYERS, SEQUENCE = 2, (IMAGE_SIZE // 10) ** 2 + 1

# Configurations covering every switch that changes the forward pass: (ablation row, overrides).
VARIANTS = {
    "baseline": ("baseline", {}),
    "ema": ("ema", {"visual_features": "projection"}),
    "ema-tower-class-targets": ("ema", {"visual_features": "tower", "alignment_targets": "class"}),
    "mlp": ("mlp", {}),
    "cdr": ("cdr", {"reconstruction_training": "one_step"}),
    "cdr-sample-unit-rms": (
        "cdr",
        {"reconstruction_training": "sample", "diffusion_timesteps": "inference", "text_normalization": "unit_rms"},
    ),
    "full-concat": ("full", {"visual_features": "projection", "reconstruction_training": "one_step"}),
    "full-add-tower": ("full", {"fusion_mode": "add", "visual_features": "tower"}),
    "full-mul-ddim": ("full", {"fusion_mode": "mul", "sampler": "ddim", "classifier_dropout": 0.3}),
    "full-sum-distillation": (
        "full",
        {
            "fusion_mode": "sum",
            "text_classification_weight": 1.0,
            "distillation_weight": 1.0,
            "reconstruction_training": "one_step",
        },
    ),
    "full-hm-mlp": ("full", {"fusion_mode": "hm", "reconstruction": "mlp"}),
    "visual-classifier-with-cdr": ("full", {"classifier_input": "visual", "visual_features": "projection"}),
    "reconstruction-classifier-with-ema": ("full", {"classifier_input": "reconstruction"}),
    # The other alignment methods of the paper's Table 1 (tests/test_alignment_in_model.py covers each in depth).
    "ema-sdm": ("ema", {"alignment": "sdm"}),
    "ema-tower-swd": ("ema", {"alignment": "swd", "visual_features": "tower"}),
    "full-add-cdd": ("full", {"alignment": "cdd", "fusion_mode": "add"}),
    "full-hm-ssan-mlp": ("full", {"alignment": "ssan", "fusion_mode": "hm", "reconstruction": "mlp"}),
    "full-sum-team-class-targets": ("full", {"alignment": "team", "fusion_mode": "sum", "alignment_targets": "class"}),
}


def variant_config(name, **overrides):
    ablation, fields = VARIANTS[name]
    return tiny_config(ablation, **{**fields, **overrides})


def make_model(config):
    torch.manual_seed(0)
    return MARNetForImageClassification(config)


# -- test_hidden_states_output / test_attention_outputs / test_model_outputs_equivalence --------------------------


@pytest.mark.parametrize("model_class", [MARNetModel, MARNetForImageClassification])
def test_output_flags_set_on_the_marnet_config_reach_the_vision_tower(model_class):
    config = tiny_config("full", attn_implementation="eager")
    config.output_hidden_states = True
    config.output_attentions = True
    assert not config.vision_config.output_hidden_states  # only the MARNet config asks for them
    model = model_class(config).eval()
    pixel_values, _, _ = tiny_batch()
    with torch.no_grad():
        outputs = model(pixel_values)
        silenced = model(pixel_values, output_hidden_states=False, output_attentions=False)
    assert len(outputs.hidden_states) == NUM_LAYERS + 1 and outputs.hidden_states[0].shape == (4, SEQUENCE, 32)
    assert len(outputs.attentions) == NUM_LAYERS and outputs.attentions[0].shape == (4, 4, SEQUENCE, SEQUENCE)
    assert silenced.hidden_states is None and silenced.attentions is None  # call arguments win over the config
    assert len(outputs) == len(silenced) + 2

    # Flags changed on a built model are read at call time; `return_dict=False` in the config gives tuples.
    model.config.output_hidden_states = False
    model.config.output_attentions = False
    model.config.return_dict = False
    with torch.no_grad():
        as_tuple = model(pixel_values)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(silenced)
    torch.testing.assert_close(as_tuple[0], silenced[0])


def test_retain_grad_hidden_states_attentions():
    config = tiny_config("full", attn_implementation="eager")
    config.output_hidden_states = True
    config.output_attentions = True
    model = MARNetForImageClassification(config)
    pixel_values, _, _ = tiny_batch()
    outputs = model(pixel_values)
    hidden_states, attentions = outputs.hidden_states[0], outputs.attentions[0]
    hidden_states.retain_grad()
    attentions.retain_grad()
    outputs[0].flatten()[0].backward(retain_graph=True)
    assert hidden_states.grad is not None and attentions.grad is not None


# -- test_problem_types -------------------------------------------------------------------------------------------


PROBLEM_LABELS = {
    "single_label_classification": (NUM_LABELS, lambda: torch.tensor([0, 3, 1, 4])),
    "multi_label_classification": (NUM_LABELS, multi_hot),
    "regression": (3, lambda: torch.randn(4, 3, generator=torch.Generator().manual_seed(0))),
    "regression-one-output": (1, lambda: torch.randn(4, generator=torch.Generator().manual_seed(0))),
}
CLASSIFICATION_TERMS = {
    "visual_classification_loss": "visual_logits",
    "reconstruction_classification_loss": "reconstruction_logits",
    "fusion_classification_loss": "logits",
    "text_classification_loss": "text_logits",
}


# Regression refuses SUM/HM fusion, class targets and distillation (tests/test_configuration.py).
PROBLEM_CASES = [("full-concat", problem) for problem in sorted(PROBLEM_LABELS)] + [
    (variant, problem)
    for variant in ("full-sum-distillation", "ema-tower-class-targets")
    for problem in ("single_label_classification", "multi_label_classification")
]


@pytest.mark.parametrize("variant, problem", PROBLEM_CASES)
def test_every_classification_term_follows_the_problem_type_as_transformers_computes_it(variant, problem):
    problem_type = problem.removesuffix("-one-output")
    num_labels, make_labels = PROBLEM_LABELS[problem]
    overrides = {}
    if variant == "full-concat":  # the text classifier too, and its distillation where it has a meaning
        overrides = {
            "text_classification_weight": 1.0,
            "distillation_weight": 0.0 if problem_type == "regression" else 0.5,
        }
    config = variant_config(variant, num_labels=num_labels, problem_type=problem_type, **overrides)
    model = make_model(config).train()
    pixel_values, text_embeds, _ = tiny_batch()
    labels = make_labels()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        output = model(pixel_values, labels=labels, text_embeds=text_embeds)
    # The mixin's symptom of broadcasting regression targets against (B, 1) logits.
    assert not [w for w in caught if "target size that is different" in str(w.message)]

    checked = 0
    for term, logits_name in CLASSIFICATION_TERMS.items():
        logits = getattr(output, logits_name)
        if term == "fusion_classification_loss" and config.classifier_input != "fusion":
            logits = None
        if logits is None:
            assert getattr(output, term) is None
            continue
        # transformers' own image-classification loss (what ViTForImageClassification uses) as the reference.
        torch.testing.assert_close(getattr(output, term), ForSequenceClassificationLoss(labels, logits, config))
        checked += 1
    assert checked >= 1
    output.loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize(
    "num_labels, labels",
    [(NUM_LABELS, torch.tensor([0, 3, 1, 4])), (NUM_LABELS, multi_hot()), (1, torch.randn(4))],
    ids=["integer", "multi-hot", "one-output"],
)
def test_problem_type_is_inferred_from_the_first_labels_and_stored_like_vit(num_labels, labels):
    marnet = make_model(tiny_config("full", num_labels=num_labels))
    vit = ViTForImageClassification(tiny_vit_config(num_labels=num_labels))
    pixel_values, _, _ = tiny_batch()
    marnet(pixel_values, labels=labels)
    vit(pixel_values, labels=labels)
    assert marnet.config.problem_type == vit.config.problem_type is not None


def test_distillation_follows_the_problem_type():
    temperature = 2.0
    pixel_values, text_embeds, labels = tiny_batch()
    for problem_type, targets in (
        ("single_label_classification", labels),
        ("multi_label_classification", multi_hot()),
    ):
        config = variant_config(
            "full-sum-distillation", problem_type=problem_type, distillation_temperature=temperature
        )
        output = make_model(config).train()(pixel_values, labels=targets, text_embeds=text_embeds)
        student, teacher = output.logits / temperature, output.text_logits / temperature
        if problem_type == "single_label_classification":
            p = teacher.softmax(-1)
            expected = (p * (p.log() - student.log_softmax(-1))).sum(-1).mean()
        else:
            p, q = teacher.sigmoid(), student.sigmoid()
            expected = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean()
        torch.testing.assert_close(output.distillation_loss, expected * temperature**2)


def test_multi_label_class_targets_take_texts_with_the_same_label_set_as_positives():
    config = tiny_config(
        "ema", alignment_targets="class", visual_features="projection", problem_type="multi_label_classification"
    )
    model = MARNetModel(config)
    pixel_values, text_embeds, _ = tiny_batch()
    labels = multi_hot()  # rows 0 and 2 share their label set, the others are unique
    output = model(pixel_values, text_embeds=text_embeds, labels=labels)
    scale = model.alignment.logit_scale.exp()
    logits = (
        scale
        * nn.functional.normalize(output.visual_embeds, dim=-1)
        @ nn.functional.normalize(output.text_projected_embeds, dim=-1).t()
    )  # (B, B)
    positives = torch.eye(4)
    positives[0, 2] = positives[2, 0] = 1
    targets = positives / positives.sum(-1, keepdim=True)
    expected = nn.functional.cross_entropy(logits, targets) + nn.functional.cross_entropy(logits.t(), targets)
    torch.testing.assert_close(output.alignment_loss, expected)


@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification"])
def test_sum_fusion_scores_each_class_sigmoid_a_plus_b_in_the_pipeline(problem_type):
    """SUM fuses the branches into p = sigmoid(a + b) per class: single-label logits are log p (the pipeline's
    softmax renormalises them), multi-label logits are a + b (the pipeline's sigmoid gives p back)."""
    config = tiny_config("full", fusion_mode="sum", problem_type=problem_type)
    model = make_model(config).eval()
    processor = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    image = Image.new("RGB", (40, 32), "orange")
    with torch.no_grad():
        output = model(processor(image, return_tensors="pt").pixel_values)
    fused = (output.visual_logits + output.reconstruction_logits).sigmoid()[0]  # p, (L,)
    expected = fused if problem_type == "multi_label_classification" else fused / fused.sum()
    classifier = pipeline("image-classification", model=model, image_processor=processor)
    scores = {row["label"]: row["score"] for row in classifier(image, top_k=NUM_LABELS)}
    for i, name in config.id2label.items():
        assert scores[name] == pytest.approx(expected[i].item(), rel=1e-5)


def test_meaningless_combinations_are_refused_when_the_problem_type_is_inferred():
    model = make_model(tiny_config("full", fusion_mode="hm"))
    pixel_values, _, _ = tiny_batch()
    with pytest.raises(ValueError, match=r"`fusion_mode='hm'` scores each class z / \(1 \+ z\) <= 0.5"):
        model(pixel_values, labels=multi_hot())
    assert model.config.problem_type is None  # nothing stored from refused labels
    one_output = make_model(tiny_config("full", fusion_mode="sum", num_labels=1))
    with pytest.raises(ValueError, match="`fusion_mode='sum'` fuses class scores .* `problem_type='regression'`"):
        one_output(pixel_values)


# -- test_load_with_mismatched_shapes / test_can_load_ignoring_mismatched_shapes ----------------------------------


@pytest.mark.parametrize("variant", ["full-concat", "full-add-tower", "full-hm-mlp", "cdr", "ema"])
def test_re_heading_reinitialises_every_label_head_and_keeps_every_other_weight(tmp_path, variant):
    model = make_model(variant_config(variant))
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError):
        MARNetForImageClassification.from_pretrained(tmp_path, num_labels=7)

    reheaded = AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=7, ignore_mismatched_sizes=True)
    old, new = model.state_dict(), reheaded.state_dict()
    assert old.keys() == new.keys()
    # Where the mixin looks for the label heads: the model's top-level nn.Linear children.
    heads = {name: module for name, module in reheaded.named_children() if isinstance(module, nn.Linear)}
    label_heads = {f"{name}.{kind}" for name in heads for kind in ("weight", "bias")}
    assert label_heads == {name for name in new if new[name].shape != old[name].shape}
    assert all(module.out_features == 7 for module in heads.values())
    for name, tensor in old.items():
        if name not in label_heads:
            assert torch.equal(new[name], tensor), f"{name} changed when re-heading"
    for name in label_heads:
        if name.endswith("bias"):
            assert torch.count_nonzero(new[name]) == 0
        else:
            assert 0 < new[name].std() < 0.05  # normal(0, initializer_range=0.02)
    assert reheaded.config.num_labels == len(reheaded.config.id2label) == 7
    pixel_values, _, _ = tiny_batch()
    assert reheaded(pixel_values).logits.shape == (4, 7)


FUSION_CLASSIFIER_IN_FUSION = Path(__file__).parent / "fixtures" / "marnet-fusion-classifier-in-fusion"


def test_a_checkpoint_with_the_fused_classifier_inside_the_fusion_loads_bit_identically():
    """The fixture was saved by the code before `fusion_classifier` became a top-level head (commit 10bb97f:
    `MARNetForImageClassification(tiny_config("full", fusion_mode="add"))`, seed 0), holding it as
    `fusion.classifier`; the expected logits are that code's, on `tiny_batch()`."""
    saved = load_file(FUSION_CLASSIFIER_IN_FUSION / "model.safetensors")
    assert "fusion.classifier.weight" in saved and "fusion_classifier.weight" not in saved
    model, info = AutoModelForImageClassification.from_pretrained(
        FUSION_CLASSIFIER_IN_FUSION, output_loading_info=True
    )
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    assert torch.equal(model.fusion_classifier.weight, saved["fusion.classifier.weight"])
    with torch.no_grad():
        logits = model.eval()(tiny_batch()[0]).logits
    assert torch.equal(logits, load_file(FUSION_CLASSIFIER_IN_FUSION / "expected_logits.safetensors")["logits"])
    # Accelerate's resume checkpoints hold `state_dict()` names; the old code's differ from today's in this key only.
    old_names = {name.replace("fusion_classifier.", "fusion.classifier."): v for name, v in model.state_dict().items()}
    resumed = MARNetForImageClassification(model.config)
    resumed.load_state_dict(old_names)
    assert torch.equal(resumed.fusion_classifier.bias, saved["fusion.classifier.bias"])
    reheaded = MARNetForImageClassification.from_pretrained(
        FUSION_CLASSIFIER_IN_FUSION, num_labels=7, ignore_mismatched_sizes=True
    )
    assert reheaded.fusion_classifier.out_features == 7
    assert torch.equal(reheaded.fusion.visual_projection.weight, saved["fusion.visual_projection.weight"])


# -- test_training_gradient_checkpointing (image-only fine-tuning) -------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_image_only_training_freezes_exactly_the_parameters_no_image_loss_reaches(variant):
    """With gradient checkpointing, a plain image + labels step gives every trainable parameter a gradient (the
    mixin's check, which exempts the parameters a model freezes on purpose); the parameters frozen are exactly those
    such a step cannot reach (and those the config keeps fixed anyway, such as the temperature of an alignment
    without one), and with text every parameter of the unfrozen model learns."""
    pixel_values, text_embeds, labels = tiny_batch()

    def without_gradient(model, **inputs):
        model.train()
        model.activation_checkpointing_enable()
        model(pixel_values, labels=labels, **inputs).loss.backward()
        return {name for name, p in model.named_parameters() if p.requires_grad and p.grad is None}

    def frozen(model):
        return {name for name, p in model.named_parameters() if not p.requires_grad}

    model = make_model(variant_config(variant))
    fixed = frozen(model)
    unreached = without_gradient(model)
    image_only = make_model(variant_config(variant, image_only_training=True))
    assert frozen(image_only) == unreached | fixed
    assert without_gradient(image_only) == set()
    assert without_gradient(make_model(variant_config(variant)), text_embeds=text_embeds) == set()


def test_frozen_parameters_stay_frozen_after_loading(tmp_path):
    """transformers' loading makes every loaded parameter trainable again; MARNet re-applies its config."""
    make_model(tiny_config("full", learnable_temperature=False, visual_features="tower")).save_pretrained(tmp_path)
    frozen = lambda model: {name for name, p in model.named_parameters() if not p.requires_grad}  # noqa: E731
    assert frozen(MARNetForImageClassification.from_pretrained(tmp_path)) == {"marnet.alignment.logit_scale"}
    image_only, _ = AutoModelForImageClassification.from_pretrained(
        tmp_path, image_only_training=True, output_loading_info=True
    )
    assert frozen(image_only) == {
        "marnet.alignment.logit_scale",
        "marnet.alignment.text_projection.dense.weight",
        "marnet.alignment.text_projection.dense.bias",
        "marnet.alignment.visual_projection.dense.weight",
        "marnet.alignment.visual_projection.dense.bias",
    }


def test_text_is_refused_in_image_only_training_but_allowed_in_evaluation():
    model = make_model(tiny_config("full", image_only_training=True)).train()
    pixel_values, text_embeds, labels = tiny_batch()
    with pytest.raises(ValueError, match="`text_embeds` were given in training, but `image_only_training=True` froze"):
        model(pixel_values, labels=labels, text_embeds=text_embeds)
    assert model.eval()(pixel_values, labels=labels, text_embeds=text_embeds).alignment_loss is not None


# -- MARNet's own contract: evaluation logits never depend on the privileged text ------------------------------------


EVALUATION_CASES = [
    (variant, problem_type)
    for variant in sorted(VARIANTS)
    for problem_type in ("single_label_classification", "multi_label_classification")
    if not (problem_type == "multi_label_classification" and VARIANTS[variant][1].get("fusion_mode") == "hm")
]


@pytest.mark.parametrize("variant, problem_type", EVALUATION_CASES)
def test_evaluation_logits_do_not_depend_on_text(variant, problem_type):
    model = make_model(variant_config(variant, problem_type=problem_type)).eval()
    pixel_values, text_embeds, labels = tiny_batch()
    labels = labels if problem_type == "single_label_classification" else multi_hot()
    with torch.no_grad():
        with_text = model(pixel_values, labels=labels, text_embeds=text_embeds)
        other_text = model(pixel_values, text_embeds=torch.randn(4, TEXT_WIDTH))
        images_only = model(pixel_values)
    assert torch.equal(with_text.logits, images_only.logits)
    assert torch.equal(other_text.logits, images_only.logits)
    assert with_text.loss is not None  # the losses may still use the text


def test_training_logits_of_the_one_step_path_do_see_the_text():
    """The check above can fail: in training, `reconstruction_training="one_step"` classifies the denoised text."""
    model = make_model(variant_config("cdr")).train()
    pixel_values, text_embeds, _ = tiny_batch()
    with torch.no_grad():
        assert not torch.equal(model(pixel_values, text_embeds=text_embeds).logits, model(pixel_values).logits)


# -- test_model_is_small ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tiny_model_is_small(variant):
    assert make_model(variant_config(variant)).num_parameters() < 1_000_000


def test_flags_left_unset_on_the_marnet_config_leave_the_towers_own():
    config = tiny_config("baseline", vision_config=tiny_vit_config(output_hidden_states=True))
    with torch.no_grad():
        assert len(MARNetModel(config)(tiny_batch()[0]).hidden_states) == NUM_LAYERS + 1


@pytest.mark.parametrize(
    "function",
    [
        MARNetConfig.__init__,
        MARNetModel.forward,
        MARNetForImageClassification.forward,
        MARNetForImageClassification.from_vision_pretrained,
    ],
)
def test_public_signatures_are_typed_as_vits(function):
    # configuration_vit.py / modeling_vit.py: every named argument typed, `forward` returning `tuple | <Output>`.
    signature = inspect.signature(function)
    untyped = [
        name
        for name, parameter in signature.parameters.items()
        if parameter.annotation is inspect.Parameter.empty
        and name != "self"
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    assert untyped == []
    if function.__name__ != "__init__":
        assert signature.return_annotation is not inspect.Signature.empty
