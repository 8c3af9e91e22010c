import copy

import pytest
import torch
from transformers import AutoModel, TimmWrapperConfig

from modeling_marnet import (
    PAPER_LITERAL,
    MARNetConfig,
    MARNetForImageClassification,
    MARNetImageClassifierOutput,
    MARNetModel,
)
from tiny_marnet import IMAGE_SIZE, NUM_LABELS, TEXT_WIDTH, tiny_batch, tiny_config, tiny_vit_config

CE_TERMS = ("visual_classification_loss", "reconstruction_classification_loss", "fusion_classification_loss")
ALL_TERMS = CE_TERMS + ("alignment_loss", "reconstruction_loss")

# Which loss terms each ablation row computes with labels and text.
EXPECTED_TERMS = {
    "baseline": {"visual_classification_loss"},
    "ema": {"visual_classification_loss", "alignment_loss"},
    "mlp": {"reconstruction_classification_loss", "reconstruction_loss"},
    "cdr": {"reconstruction_classification_loss", "reconstruction_loss"},
    "full": set(ALL_TERMS),
}
ROWS = [(name, "concat") for name in EXPECTED_TERMS] + [("full", mode) for mode in ("add", "mul", "sum", "hm")]


def present_terms(output):
    return {name for name in ALL_TERMS if getattr(output, name) is not None}


def make_model(ablation="full", **overrides):
    torch.manual_seed(0)
    return MARNetForImageClassification(tiny_config(ablation, **overrides))


@pytest.mark.parametrize("ablation, fusion_mode", ROWS)
def test_each_row_computes_its_documented_terms_and_trains_every_parameter(ablation, fusion_mode):
    model = make_model(ablation, fusion_mode=fusion_mode)
    pixel_values, text_embeds, labels = tiny_batch()
    output = model(pixel_values, labels=labels, text_embeds=text_embeds)

    assert isinstance(output, MARNetImageClassifierOutput)
    assert output.logits.shape == (4, NUM_LABELS)
    assert present_terms(output) == EXPECTED_TERMS[ablation]
    weights = {
        "visual_classification_loss": model.config.visual_ce_weight,
        "reconstruction_classification_loss": model.config.reconstruction_ce_weight,
        "fusion_classification_loss": model.config.fusion_ce_weight,
        "alignment_loss": model.config.alignment_loss_weight,
        "reconstruction_loss": model.config.reconstruction_loss_weight,
    }
    expected_loss = sum(weights[name] * getattr(output, name) for name in EXPECTED_TERMS[ablation])
    torch.testing.assert_close(output.loss, expected_loss)

    output.loss.backward()
    without_grad = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("ablation", ["full", "cdr"])
def test_eval_mode_loss_is_the_loss_of_the_returned_logits(ablation):
    """Trainer's eval_loss compares with any classifier's: the objective's terms stay under their own keys."""
    model = make_model(ablation).eval()
    pixel_values, text_embeds, labels = tiny_batch()
    with torch.no_grad():
        output = model(pixel_values, labels=labels, text_embeds=text_embeds)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, labels))
    assert present_terms(output) == EXPECTED_TERMS[ablation]


@pytest.mark.parametrize("ablation, fusion_mode", ROWS)
def test_without_text_only_classification_terms_and_without_labels_no_loss(ablation, fusion_mode):
    model = make_model(ablation, fusion_mode=fusion_mode)
    pixel_values, _, labels = tiny_batch()
    with_labels = model(pixel_values, labels=labels)
    assert present_terms(with_labels) == EXPECTED_TERMS[ablation] & set(CE_TERMS)
    assert with_labels.loss is not None
    without_labels = model(pixel_values)
    assert without_labels.loss is None
    assert present_terms(without_labels) == set()


def test_optimizer_steps_on_a_fixed_batch_reduce_every_loss_term():
    model = make_model("full")
    pixel_values, text_embeds, labels = tiny_batch(batch_size=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def terms():
        torch.manual_seed(1)  # same diffusion timesteps and noise at every evaluation
        output = model(pixel_values, labels=labels, text_embeds=text_embeds)
        return output, {name: getattr(output, name).item() for name in ALL_TERMS}

    _, before = terms()
    for _ in range(30):
        output, _ = terms()
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    _, after = terms()
    assert all(after[name] < before[name] for name in ALL_TERMS), (before, after)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_inference_is_deterministic_and_independent_of_the_batch(sampler):
    model = make_model("full", sampler=sampler).eval()
    pixel_values, _, _ = tiny_batch(batch_size=8, seed=3)
    with torch.no_grad():
        alone = model(pixel_values[:1]).logits
        again = model(pixel_values[:1]).logits
        in_batch = model(pixel_values).logits
        with_other_companions = model(torch.cat([torch.randn(5, 3, IMAGE_SIZE, IMAGE_SIZE), pixel_values[:1]])).logits
    assert torch.equal(alone, again)
    torch.testing.assert_close(in_batch[:1], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_other_companions[-1:], alone, rtol=1e-5, atol=1e-6)


def test_number_of_reverse_steps_is_read_from_the_config_at_call_time():
    model = make_model("cdr").eval()
    calls = []
    model.marnet.reconstruction.denoiser.mlp.layers[1].register_forward_hook(lambda *args: calls.append(1))
    pixel_values, _, _ = tiny_batch(batch_size=2)
    with torch.no_grad():
        model(pixel_values)
        model.config.num_inference_steps = 3
        model(pixel_values)
    assert len(calls) == 5 + 3


def test_reverse_process_settings_changed_after_loading_take_effect(tmp_path):
    pixel_values, _, _ = tiny_batch(batch_size=2)
    model = make_model("cdr")
    with torch.no_grad():  # weights of unit gain, so that every setting gives visibly different logits
        for parameter in model.marnet.reconstruction.parameters():
            parameter.normal_(0.0, parameter.shape[-1] ** -0.5)
    model.save_pretrained(tmp_path)
    loaded = MARNetForImageClassification.from_pretrained(tmp_path).eval()
    settings = ({"num_inference_steps": 3}, {"num_inference_steps": 3, "sampler": "ddim"}, {"sampler_seed": 7}, {})
    with torch.no_grad():
        before = loaded(pixel_values).logits  # the reverse process of the saved settings is cached now
        for changes in settings:
            for name in ("num_inference_steps", "sampler", "sampler_seed"):
                setattr(loaded.config, name, changes.get(name, getattr(model.config, name)))
            built = MARNetForImageClassification.from_pretrained(tmp_path, **changes).eval()
            logits = loaded(pixel_values).logits
            assert torch.equal(logits, built(pixel_values).logits), changes
            assert torch.equal(logits, before) == (not changes), changes


@pytest.mark.parametrize("backprop_steps, passes", [(None, 5), (5, 5), (2, 2), (0, 0)])
def test_backprop_steps_limit_the_reverse_steps_gradients_flow_through(backprop_steps, passes):
    pixel_values, text_embeds, labels = tiny_batch()
    model = make_model("cdr", reconstruction_backprop_steps=backprop_steps).train()
    reference = make_model("cdr").train()
    backward_passes = []
    trunk_layer = model.marnet.reconstruction.denoiser.mlp.layers[1]
    trunk_layer.register_full_backward_hook(lambda *args: backward_passes.append(1))
    torch.manual_seed(1)  # the same L_MSE noise and timesteps for both
    output = model(pixel_values, labels=labels, text_embeds=text_embeds)
    torch.manual_seed(1)
    expected = reference(pixel_values, labels=labels, text_embeds=text_embeds)
    torch.testing.assert_close(output.loss, expected.loss, rtol=0, atol=0)  # the forward pass is unchanged
    output.loss.backward()
    assert len(backward_passes) == passes + 1  # the tracked reverse steps and the L_MSE prediction
    assert all(parameter.grad is not None for parameter in model.parameters() if parameter.requires_grad)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(pixel_values).logits, reference.eval()(pixel_values).logits)


def test_sampler_seed_is_the_only_source_of_reverse_process_noise():
    pixel_values, _, _ = tiny_batch(batch_size=2)
    model = make_model("cdr").eval()
    with torch.no_grad():
        first = model(pixel_values).logits
        torch.manual_seed(123)  # the global RNG must not matter
        second = model(pixel_values).logits
        model.config.sampler_seed = 1
        reseeded = model(pixel_values).logits
    assert torch.equal(first, second)
    assert not torch.allclose(first, reseeded)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda m, x, t, y: m(x[0]),
            "`pixel_values` must be a (batch, channels, height, width) tensor, got shape (3, 30, 30)",
        ),
        (
            lambda m, x, t, y: m(x[:, :1]),
            "`pixel_values` must have 3 channels (vision_config.num_channels), got shape (4, 1, 30, 30)",
        ),
        (
            lambda m, x, t, y: m(x, text_embeds=t[:, :5]),
            "`text_embeds` must have shape (batch_size, text_hidden_size) = (4, 16), got (4, 5)",
        ),
        (
            lambda m, x, t, y: m(x, text_embeds=t[:2]),
            "`text_embeds` must have shape (batch_size, text_hidden_size) = (4, 16), got (2, 16)",
        ),
        (
            lambda m, x, t, y: m(x, labels=y + NUM_LABELS),
            "`labels` must be class ids in [0, 4] (num_labels=5), got values from 5 to 8",
        ),
        (
            lambda m, x, t, y: m(x, labels=y - 1),
            "`labels` must be class ids in [0, 4] (num_labels=5), got values from -1 to 2",
        ),
        (lambda m, x, t, y: m(x, labels=y[:2]), "`labels` must have shape (4,) (one class id per image), got (2,)"),
        (
            lambda m, x, t, y: m(x, labels=y.float()),
            "`labels` must have shape (4, 5) (one row of 5 targets per image) "
            "for problem_type='multi_label_classification' (inferred from non-integer labels), "
            "got (4,) of dtype torch.float32. For single-label "
            "classification pass integer class ids of shape (batch_size,)",
        ),
        (
            lambda m, x, t, y: (
                setattr(m.config, "problem_type", "single_label_classification") or m(x, labels=y.float())
            ),
            "`labels` must hold integer class ids, got dtype torch.float32",
        ),
        (
            lambda m, x, t, y: m(x, labels=torch.full((4, 5), 2.0)),
            "`labels` must be multi-hot targets in [0, 1] for "
            "problem_type='multi_label_classification', got values from 2.0 to 2.0",
        ),
    ],
    ids=[
        "rank",
        "channels",
        "text-width",
        "text-batch",
        "labels-high",
        "labels-negative",
        "labels-batch",
        "labels-float-inferred-multi-label",
        "labels-float-single-label",
        "labels-multi-hot-range",
    ],
)
def test_bad_input_names_argument_expected_and_received(call, message):
    model = make_model("full")
    pixel_values, text_embeds, labels = tiny_batch()
    with pytest.raises(ValueError) as error:
        call(model, pixel_values, text_embeds, labels)
    assert message in str(error.value)


def test_base_model_returns_branch_features_and_tower_outputs():
    config = tiny_config("full", attn_implementation="eager")
    model = MARNetModel(config)
    pixel_values, text_embeds, _ = tiny_batch()
    output = model(pixel_values, text_embeds=text_embeds, output_hidden_states=True, output_attentions=True)
    sequence = (IMAGE_SIZE // 10) ** 2 + 1
    assert output.image_embeds.shape == (4, 32)
    # The classifiers read x_v itself (visual_features="tower", the default); the projection serves the alignment.
    torch.testing.assert_close(output.visual_embeds, output.image_embeds)
    assert output.text_projected_embeds.shape == (4, 8)
    assert output.reconstructed_text_embeds.shape == (4, TEXT_WIDTH)
    assert output.alignment_loss.ndim == 0 and output.reconstruction_loss.ndim == 0
    assert len(output.hidden_states) == 3 and output.hidden_states[-1].shape == (4, sequence, 32)
    assert len(output.attentions) == 2 and output.attentions[0].shape == (4, 4, sequence, sequence)
    # x_v is the tower's CLS token (the paper's ViT-B/16 CLS feature), not an untrained tanh pooler.
    torch.testing.assert_close(output.image_embeds, output.last_hidden_state[:, 0])
    assert not any(name.startswith("vision_model.pooler") for name, _ in model.named_parameters())


def test_paper_literal_config_classifies_the_projection():
    """`PAPER_LITERAL`: x_EMA is g(E_v x_v) (eq. 1 and 7) and the text is used as given; the defaults differ in each
    of its fields."""
    model = MARNetModel(tiny_config("full", **PAPER_LITERAL)).train()
    pixel_values, text_embeds, _ = tiny_batch()
    output = model(pixel_values, text_embeds=text_embeds)
    assert output.visual_embeds.shape == (4, 8)
    torch.testing.assert_close(output.text_embeds, text_embeds)
    defaults = MARNetConfig()
    assert all(getattr(defaults, field) != value for field, value in PAPER_LITERAL.items())


def test_classifier_passes_tower_hidden_states_and_tuple_outputs():
    model = make_model("full").eval()
    pixel_values, _, labels = tiny_batch()
    with torch.no_grad():
        as_dict = model(pixel_values, labels=labels, output_hidden_states=True)
        as_tuple = model(pixel_values, labels=labels, return_dict=False)
    assert len(as_dict.hidden_states) == 3
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = make_model("full", classifier_dropout=0.0)
    checkpointed = copy.deepcopy(model)
    checkpointed.activation_checkpointing_enable()
    assert checkpointed.is_activation_checkpointing
    pixel_values, text_embeds, labels = tiny_batch()
    for m in (model, checkpointed):
        m.train()
        torch.manual_seed(0)
        m(pixel_values, labels=labels, text_embeds=text_embeds).loss.backward()
    for (name, p), (_, q) in zip(model.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_initialization_covers_every_head_parameter():
    config = tiny_config("full", initializer_range=1e-10)
    model = MARNetForImageClassification(config)
    for name, param in model.named_parameters():
        if name.startswith("marnet.vision_model"):
            continue
        if name.endswith("logit_scale"):
            torch.testing.assert_close(param.detach(), torch.log(torch.tensor(1 / 0.07)))
            continue
        mean = ((param.detach().mean() * 1e9).round() / 1e9).item()
        assert mean in (0.0, 1.0), f"{name} is not initialised by _init_weights (mean {mean})"


def test_missing_heads_are_initialised_when_loading_a_base_model(tmp_path):
    base = MARNetModel(tiny_config("full"))
    base.save_pretrained(tmp_path)
    model = MARNetForImageClassification.from_pretrained(tmp_path)
    for name in ("visual_classifier", "reconstruction_classifier", "fusion_classifier"):
        layer = model.get_submodule(name)
        assert torch.isfinite(layer.weight).all()
        assert 0 < layer.weight.std() < 0.05  # normal(0, initializer_range=0.02), not empty memory
        assert torch.count_nonzero(layer.bias) == 0
    torch.testing.assert_close(
        model.marnet.alignment.visual_projection.dense.weight, base.alignment.visual_projection.dense.weight
    )


def test_from_vision_pretrained_loads_the_tower_weights(tmp_path):
    from transformers import ViTModel

    torch.manual_seed(0)
    tower = ViTModel(tiny_vit_config(), add_pooling_layer=False)
    tower.save_pretrained(tmp_path / "tower")
    model = MARNetForImageClassification.from_vision_pretrained(
        tmp_path / "tower", text_hidden_size=24, id2label={0: "a", 1: "b"}, fusion_mode="add"
    )
    assert (model.config.text_hidden_size, model.config.num_labels, model.config.fusion_mode) == (24, 2, "add")
    for name, value in tower.state_dict().items():
        torch.testing.assert_close(model.marnet.vision_model.state_dict()[name], value)


def test_timm_tower_through_timm_wrapper():
    config = tiny_config("full", vision_config=TimmWrapperConfig(architecture="test_efficientnet"))
    model = MARNetForImageClassification(config)
    assert config.vision_hidden_size == model.marnet.vision_model.timm_model.num_features
    pixel_values = torch.randn(2, 3, 64, 64)
    output = model(pixel_values, labels=torch.tensor([0, 1]), text_embeds=torch.randn(2, TEXT_WIDTH))
    output.loss.backward()
    assert output.logits.shape == (2, NUM_LABELS)
    assert AutoModel.from_config(config).__class__.__name__ == "MARNetModel"


def test_a_vision_config_without_an_auto_model_is_refused():
    from transformers import PreTrainedConfig

    class NotAVisionConfig(PreTrainedConfig):
        model_type = "not-a-vision-model"

    with pytest.raises(ValueError, match="`vision_config` is a NotAVisionConfig, which has no AutoModel class"):
        MARNetModel(tiny_config("full", vision_config=NotAVisionConfig()))


def test_training_and_inference_steps_compile_without_graph_breaks():
    """`torch.compile(fullgraph=True)` (dynamo alone, no code generation) of a training step with labels and text and
    of an inference call: no value read back from a tensor (label range checks, step coefficients)."""
    model = make_model("full")
    pixel_values, text_embeds, labels = tiny_batch()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    for mode, kwargs in (("train", {"labels": labels, "text_embeds": text_embeds}), ("eval", {})):
        getattr(model, mode)()
        torch.manual_seed(0)
        expected = model(pixel_values, **kwargs)  # the eager call also fills the reverse process's cache
        torch.manual_seed(0)
        torch.testing.assert_close(compiled(pixel_values, **kwargs).logits, expected.logits)
    torch._dynamo.reset()


@pytest.mark.parametrize("reconstruction_training", ["sample", "one_step"])
def test_training_after_an_inference_mode_call(reconstruction_training):
    """The reverse process's cached constants made under `torch.inference_mode()` (as benchmarks and evaluation
    loops call the model) are not reused by a training step, which must save them for backward."""
    model = MARNetForImageClassification(tiny_config("full", reconstruction_training=reconstruction_training))
    pixel_values, text_embeds, labels = tiny_batch()
    with torch.inference_mode():
        expected = model.eval()(pixel_values).logits
    output = model.train()(pixel_values, labels=labels, text_embeds=text_embeds)
    output.loss.backward()
    assert all(p.grad is not None for p in model.marnet.reconstruction.parameters() if p.requires_grad)
    with torch.no_grad():
        assert torch.equal(model.eval()(pixel_values).logits, expected)  # the same constants, whatever the mode
