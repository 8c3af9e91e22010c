"""Each alignment method of the paper's Table 1 inside MARNet (`MARNetConfig.alignment`): it trains every parameter
with text and labels whatever the branches, its `alignment_loss` is the registry's function of the projected features
(computed here from the weights, not by the forward pass), it refuses what has no meaning, and TEAM reads the tower's
patch tokens and the optional text tokens. The numbers of each method are `test_alignment_losses.py`'s subject;
image-only training and text-free evaluation logits run for every method in `test_transformers_conventions.py`."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageClassification, ConvNextConfig, Dinov2WithRegistersConfig

from modeling_marnet import MARNetForImageClassification, MARNetModel
from modeling_marnet.alignment_losses import ALIGNMENT_LOSSES, ALIGNMENTS_NEEDING_LABELS, ALIGNMENTS_WITH_TEMPERATURE
from tiny_marnet import IMAGE_SIZE, TEXT_WIDTH, tiny_batch, tiny_config, tiny_multi_hot, tiny_vit_config

METHODS = sorted(ALIGNMENT_LOSSES)
# Branch layouts: without reconstruction (either visual feature), every fusion mode, the "+MLP" reconstruction.
LAYOUTS = {
    "ema-projection": ("ema", {"visual_features": "projection"}),
    "ema-tower": ("ema", {"visual_features": "tower"}),
    **{f"full-{mode}": ("full", {"fusion_mode": mode}) for mode in ("concat", "add", "mul", "sum", "hm")},
    "full-mlp": ("full", {"reconstruction": "mlp"}),
}


def make_model(ablation="full", model_class=MARNetForImageClassification, **fields):
    torch.manual_seed(0)
    return model_class(tiny_config(ablation, **fields))


def text_tokens(batch_size=4):
    """(B, 3, D_s) text token states and their (B, 3) mask: row i has 3 - i % 3 real tokens, then padding."""
    tokens = torch.randn(batch_size, 3, TEXT_WIDTH, generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(3)[None, :] < 3 - torch.arange(batch_size)[:, None] % 3).long()
    return tokens, mask


def untrained(model):
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_every_parameter_with_text_and_labels(method, layout):
    """What DDP with find_unused_parameters=False needs; the temperature is frozen where the method has none."""
    ablation, fields = LAYOUTS[layout]
    model = make_model(ablation, alignment=method, **fields).train()
    pixel_values, text_embeds, labels = tiny_batch()
    output = model(pixel_values, labels=labels, text_embeds=text_embeds)
    assert torch.isfinite(output.alignment_loss)
    output.loss.backward()
    assert untrained(model) == []
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == (set() if method in ALIGNMENTS_WITH_TEMPERATURE else {"marnet.alignment.logit_scale"})


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_on_multi_label_rows(method):
    model = make_model(alignment=method, problem_type="multi_label_classification").train()
    pixel_values, text_embeds, _ = tiny_batch()
    output = model(pixel_values, labels=tiny_multi_hot(), text_embeds=text_embeds)
    output.loss.backward()
    assert torch.isfinite(output.alignment_loss) and untrained(model) == []


@pytest.mark.parametrize("method", METHODS)
def test_regression_trains_the_label_free_methods_and_refuses_the_others(method):
    model = make_model("ema", alignment=method, num_labels=1).train()  # regression, inferred at the first call
    pixel_values, text_embeds, _ = tiny_batch()
    targets = torch.randn(4, generator=torch.Generator().manual_seed(2))
    if method in ALIGNMENTS_NEEDING_LABELS:
        with pytest.raises(ValueError) as error:
            model(pixel_values, labels=targets, text_embeds=text_embeds)
        assert str(error.value) == (
            f"`alignment={method!r}` groups the images and texts by class, which `problem_type='regression'` does "
            "not have. Use alignment 'ita', 'swd' or 'team'."
        )
        return
    model(pixel_values, labels=targets, text_embeds=text_embeds).loss.backward()
    assert untrained(model) == []


# The method's parameters are set off their defaults, so that the test sees them reach the loss.
METHOD_FIELDS = {
    "swd": {"swd_num_projections": 7},
    "cdd": {"cdd_kernel_num": 3, "cdd_kernel_mul": 1.5},
    "team": {"team_attention_temperature": 0.3},
}
METHOD_PARAMETERS = {
    "swd": {"num_projections": 7},
    "cdd": {"kernel_num": 3, "kernel_mul": 1.5},
    "team": {"attention_temperature": 0.3},
}
CONTRACT_CASES = {
    **{method: (method, {}, False) for method in METHODS},
    "ita-class-targets": ("ita", {"alignment_targets": "class"}, False),
    "team-class-targets": ("team", {"alignment_targets": "class"}, False),
    "team-text-tokens": ("team", {}, True),
    **{
        f"{method}-multi-label": (method, {"problem_type": "multi_label_classification"}, False)
        for method in sorted(ALIGNMENTS_NEEDING_LABELS)
    },
}


@pytest.mark.parametrize("case", sorted(CONTRACT_CASES))
def test_alignment_loss_is_the_registry_function_of_the_projected_features(case):
    method, fields, with_tokens = CONTRACT_CASES[case]
    fields = {"alignment": method, "text_normalization": "unit_rms", **METHOD_FIELDS.get(method, {}), **fields}
    model = make_model("ema", model_class=MARNetModel, **fields).eval()
    config = model.config
    with torch.no_grad():  # nonzero biases: with zero ones the loss would not see how the text is scaled
        for projection in (model.alignment.visual_projection, model.alignment.text_projection):
            projection.dense.bias.normal_()
    pixel_values, text_embeds, _ = tiny_batch()
    # Repeated classes, so that class-aware and instance targets differ.
    labels = torch.tensor([0, 1, 0, 2])
    if config.problem_type == "multi_label_classification":
        labels = tiny_multi_hot()
    tokens, mask = text_tokens()
    token_inputs = {"text_token_embeds": tokens, "text_attention_mask": mask} if with_tokens else {}
    torch.manual_seed(1)  # SWD's random directions
    with torch.no_grad():
        output = model(pixel_values, text_embeds=text_embeds, labels=labels, **token_inputs)

    # The features from the weights: x_v is the ViT's CLS token, x_s has unit mean square, x' = LeakyReLU(W x + b).
    alignment, slope = model.alignment, config.projection_negative_slope

    def project(linear, features):
        return F.leaky_relu(features @ linear.weight.t() + linear.bias, slope)

    def unit_rms(features):
        return F.normalize(features, dim=-1) * math.sqrt(TEXT_WIDTH)

    with torch.no_grad():
        hidden = model.vision_model(pixel_values).last_hidden_state  # (B, 1 + N, C): CLS, then the patches
        image = project(alignment.visual_projection.dense, hidden[:, 0])
        text = project(alignment.text_projection.dense, unit_rms(text_embeds))
        kwargs = dict(METHOD_PARAMETERS.get(method, {}))
        if method in ALIGNMENTS_WITH_TEMPERATURE:
            kwargs["logit_scale"] = alignment.logit_scale
        if method == "team":
            kwargs["image_tokens"] = project(alignment.visual_projection.dense, hidden[:, 1:])
        if with_tokens:
            kwargs["text_tokens"] = project(alignment.text_projection.dense, unit_rms(tokens))
            kwargs["text_attention_mask"] = mask
        uses_labels = method in ALIGNMENTS_NEEDING_LABELS or config.alignment_targets == "class"
        torch.manual_seed(1)
        expected = ALIGNMENT_LOSSES[method](image, text, labels if uses_labels else None, **kwargs)
    torch.testing.assert_close(output.alignment_loss, expected)


@pytest.mark.parametrize(
    "method, fields, message",
    [
        *[
            (
                method,
                {},
                f"`alignment={method!r}` needs `labels` in training whenever `text_embeds` are given (it groups the "
                "images and texts by class), got labels=None. Pass labels, or choose an alignment that runs without "
                "them ('ita', 'swd', 'team').",
            )
            for method in sorted(ALIGNMENTS_NEEDING_LABELS)
        ],
        (
            "team",
            {"alignment_targets": "class"},
            "`alignment_targets='class'` needs `labels` in training whenever `text_embeds` are given (the positives "
            "are the texts of the same class), got labels=None. Pass labels, or use alignment_targets='instance'.",
        ),
    ],
)
def test_labels_are_required_in_training_and_the_loss_skipped_in_evaluation_without_them(method, fields, message):
    model = make_model("ema", alignment=method, **fields).train()
    pixel_values, text_embeds, _ = tiny_batch()
    with pytest.raises(ValueError) as error:
        model(pixel_values, text_embeds=text_embeds)
    assert str(error.value) == message
    with torch.no_grad():
        assert model.eval()(pixel_values, text_embeds=text_embeds).alignment_loss is None


def test_a_non_default_alignment_round_trips_with_its_fields_and_frozen_temperature(tmp_path):
    model = make_model(alignment="cdd", cdd_kernel_num=3, cdd_kernel_mul=1.5).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "alignment_losses.py").is_file()  # copied for `trust_remote_code` users
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert (loaded.config.alignment, loaded.config.cdd_kernel_num, loaded.config.cdd_kernel_mul) == ("cdd", 3, 1.5)
    assert not loaded.marnet.alignment.logit_scale.requires_grad
    pixel_values, text_embeds, labels = tiny_batch()
    with torch.no_grad():
        before = model(pixel_values, labels=labels, text_embeds=text_embeds)
        after = loaded(pixel_values, labels=labels, text_embeds=text_embeds)
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=0)
    torch.testing.assert_close(after.alignment_loss, before.alignment_loss, rtol=0, atol=0)


# -- TEAM: patch tokens of the tower, optional text tokens ---------------------------------------------------------


TOWERS = {
    "vit": (tiny_vit_config(), 1, 9),
    "dinov2-registers": (
        Dinov2WithRegistersConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            mlp_ratio=1,
            image_size=IMAGE_SIZE,
            patch_size=10,
            num_register_tokens=2,
        ),
        3,
        9,
    ),
    # Stem of stride 4, then one downsampling by 2: a 3 x 3 map of a 30-pixel image.
    "convnext": (ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1]), 0, 9),
}


@pytest.mark.parametrize("tower", sorted(TOWERS))
def test_team_aligns_text_with_the_patch_tokens_of_any_tower(tower):
    vision_config, prefix_tokens, patches = TOWERS[tower]
    model = make_model(alignment="team", vision_config=vision_config).train()
    pixel_values, text_embeds, labels = tiny_batch()
    hidden = model.marnet.vision_model(pixel_values).last_hidden_state
    patch_tokens = model.marnet.patch_tokens(hidden)
    assert patch_tokens.shape == (4, patches, model.config.vision_hidden_size)
    if hidden.dim() == 3:  # (B, prefix + patches, C): class and register tokens first
        assert hidden.shape[1] == prefix_tokens + patches
        assert torch.equal(patch_tokens, hidden[:, prefix_tokens:])
    else:  # (B, C, H, W)
        assert torch.equal(patch_tokens[:, 4], hidden[:, :, 1, 1])  # row-major positions
    tokens, mask = text_tokens()
    output = model(
        pixel_values, labels=labels, text_embeds=text_embeds, text_token_embeds=tokens, text_attention_mask=mask
    )
    output.loss.backward()
    # DINOv2's mask token serves its masked-image pre-training only.
    assert untrained(model) == (["marnet.vision_model.embeddings.mask_token"] if tower == "dinov2-registers" else [])


def test_text_tokens_enter_the_alignment_loss_alone():
    model = make_model(alignment="team").eval()
    pixel_values, text_embeds, labels = tiny_batch()
    tokens, mask = text_tokens()
    with torch.no_grad():
        pooled = model(pixel_values, labels=labels, text_embeds=text_embeds)
        with_tokens = model(
            pixel_values, labels=labels, text_embeds=text_embeds, text_token_embeds=tokens, text_attention_mask=mask
        )
        images_only = model(pixel_values)
    assert torch.equal(with_tokens.logits, images_only.logits) and torch.equal(pooled.logits, images_only.logits)
    assert not torch.isclose(with_tokens.alignment_loss, pooled.alignment_loss)


@pytest.mark.parametrize(
    "fields, inputs, message",
    [
        (
            {"alignment": "ita"},
            {"text_token_embeds": torch.zeros(4, 3, TEXT_WIDTH)},
            "`text_token_embeds` are read by the token-level alignment alone (`alignment='team'` with "
            "`use_alignment=True`), got alignment='ita', use_alignment=True. Pass the pooled `text_embeds` only, or "
            "set alignment='team'.",
        ),
        (
            {"alignment": "team", "use_alignment": False, "reconstruction": "diffusion", "classifier_input": "fusion"},
            {"text_token_embeds": torch.zeros(4, 3, TEXT_WIDTH)},
            "got alignment='team', use_alignment=False.",
        ),
        (
            {"alignment": "team"},
            {"text_token_embeds": torch.zeros(4, 3, TEXT_WIDTH), "text_embeds": None},
            "`text_token_embeds` were given without `text_embeds`: TEAM's global term and the other branches read "
            "the pooled text feature. Pass both.",
        ),
        (
            {"alignment": "team"},
            {"text_token_embeds": torch.zeros(4, 3, TEXT_WIDTH + 1)},
            f"`text_token_embeds` must have shape (batch_size, num_tokens, text_hidden_size) = (4, T, {TEXT_WIDTH}), "
            f"got (4, 3, {TEXT_WIDTH + 1}).",
        ),
        (
            {"alignment": "team"},
            {"text_token_embeds": torch.zeros(4, 3, TEXT_WIDTH), "text_attention_mask": torch.ones(4, 2)},
            "`text_attention_mask` must have the shape (batch_size, num_tokens) = (4, 3) of `text_token_embeds`, got "
            "(4, 2).",
        ),
        (
            {"alignment": "team"},
            {"text_attention_mask": torch.ones(4, 3)},
            "`text_attention_mask` was given without the `text_token_embeds` it masks.",
        ),
    ],
    ids=["other-alignment", "alignment-off", "no-pooled-text", "width", "mask-shape", "mask-alone"],
)
def test_text_tokens_are_refused_where_nothing_reads_them_or_their_shape_is_wrong(fields, inputs, message):
    model = make_model(**fields).train()
    pixel_values, text_embeds, labels = tiny_batch()
    inputs = {"text_embeds": text_embeds, **inputs}
    with pytest.raises(ValueError) as error:
        model(pixel_values, labels=labels, **inputs)
    assert message in str(error.value)


def test_team_refuses_patch_tokens_narrower_or_wider_than_the_visual_projection():
    model = make_model(alignment="team", vision_hidden_size=24, vision_pooling="mean")
    with pytest.raises(ValueError) as error:
        model.marnet.patch_tokens(torch.zeros(4, 10, 32))
    assert str(error.value) == (
        "`alignment='team'` projects the tower's patch tokens with the visual projection, which takes "
        "vision_hidden_size=24 features, but the ViTModel tower's last_hidden_state has 32. Leave "
        "`vision_hidden_size` unset (inferred from the tower), or use another alignment."
    )
