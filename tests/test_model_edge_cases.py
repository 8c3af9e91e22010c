"""The model API at its edges: each input either works correctly or raises a ValueError that names the argument,
what was expected and what was received. And where the image-classification pipeline fails in transformers' own code
(a URL offline, a 0x0 image, an empty list), it fails there, before MARNet, as the README documents."""

import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import ViTImageProcessor, pipeline

from modeling_marnet import MARNetConfig, MARNetForImageClassification, MARNetModel
from tiny_marnet import IMAGE_SIZE, NUM_LABELS, tiny_batch, tiny_config

README = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())  # lines rejoined


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MARNetForImageClassification(tiny_config())


def test_empty_batch_is_a_clear_error(model):
    pixel_values, text_embeds, labels = tiny_batch()
    expected = "`pixel_values` must hold at least one image, got an empty batch of shape (0, 3, 30, 30)."
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        model.eval()(pixel_values[:0])
    with pytest.raises(ValueError, match="must hold at least one image"):
        model.train()(pixel_values[:0], labels=labels[:0], text_embeds=text_embeds[:0])
    with pytest.raises(ValueError, match="must hold at least one image"):
        MARNetModel(tiny_config()).eval()(pixel_values[:0])


def test_numpy_pixel_values_are_a_clear_error(model):
    pixel_values, _, _ = tiny_batch()
    with pytest.raises(ValueError) as error:
        model.eval()(pixel_values.numpy())
    assert str(error.value) == (
        "`pixel_values` must be a torch.Tensor of shape (batch, channels, height, width), got numpy.ndarray. Convert "
        "it with torch.as_tensor, or call the image processor with return_tensors='pt'."
    )


def test_float64_text_embeds_give_the_float32_loss(model):
    pixel_values, text_embeds, labels = tiny_batch()
    model.train()
    torch.manual_seed(1)
    expected = model(pixel_values, labels=labels, text_embeds=text_embeds).loss
    torch.manual_seed(1)
    loss = model(pixel_values, labels=labels, text_embeds=text_embeds.double()).loss
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    with pytest.raises(
        ValueError, match=r"`text_embeds` must be a floating-point torch.Tensor of shape \(4, 16\), got"
    ):
        model(pixel_values, labels=labels, text_embeds=text_embeds.long())


def test_int32_class_ids_give_the_int64_loss(model):
    pixel_values, text_embeds, labels = tiny_batch()
    model.train()
    losses = []
    for dtype in (torch.int64, torch.int32):
        torch.manual_seed(1)
        losses.append(model(pixel_values, labels=labels.to(dtype), text_embeds=text_embeds).loss)
    torch.testing.assert_close(losses[1], losses[0])


def test_bool_labels_are_multi_hot_rows_or_a_clear_error():
    pixel_values, text_embeds, _ = tiny_batch()
    model = MARNetForImageClassification(tiny_config()).train()
    with pytest.raises(ValueError) as error:
        model(pixel_values, labels=torch.tensor([True, False, True, False]), text_embeds=text_embeds)
    assert "`labels` must have shape (4, 5)" in str(error.value)
    assert "(inferred from non-integer labels), got (4,) of dtype torch.bool" in str(error.value)
    multi_hot = torch.eye(4, NUM_LABELS, dtype=torch.bool)
    output = MARNetForImageClassification(tiny_config()).eval()(pixel_values, labels=multi_hot)
    torch.testing.assert_close(
        output.visual_classification_loss,
        F.binary_cross_entropy_with_logits(output.visual_logits, multi_hot.float()),
    )


@pytest.mark.parametrize("seed", [2**64, 2**70, -1, 1.5, True])
def test_sampler_seed_outside_a_generator_seed_is_a_clear_error(seed):
    with pytest.raises(
        ValueError, match=r"`sampler_seed` must be an integer in \[0, 2\*\*64 - 1\] \(a torch.Generator seed\), got "
    ):
        tiny_config(sampler_seed=seed)


def test_largest_sampler_seed_works():
    pixel_values, _, _ = tiny_batch()
    logits = MARNetForImageClassification(tiny_config(sampler_seed=2**64 - 1)).eval()(pixel_values).logits
    assert logits.shape == (4, NUM_LABELS) and logits.isfinite().all()


@pytest.mark.parametrize("steps", [10.5, "10", 0, 51, True])
def test_num_inference_steps_set_after_loading_is_checked_at_use(model, tmp_path, steps):
    model.save_pretrained(tmp_path)
    loaded = MARNetForImageClassification.from_pretrained(tmp_path).eval()
    loaded.config.num_inference_steps = steps
    with pytest.raises(ValueError) as error:
        loaded(tiny_batch()[0])
    assert str(error.value) == (
        f"`num_inference_steps` must be an integer in [1, 50] (num_train_timesteps), got {steps!r}."
    )


def test_zero_labels_is_a_clear_error_and_one_label_is_a_regression():
    with pytest.raises(ValueError, match=r"needs `num_labels` >= 1 \(one logit per class\), got 0"):
        MARNetForImageClassification(tiny_config(id2label={}))
    pixel_values, text_embeds, _ = tiny_batch()
    one = MARNetForImageClassification(tiny_config(id2label={0: "dish"})).train()
    targets = torch.randn(4)
    output = one(pixel_values, labels=targets, text_embeds=text_embeds)
    assert one.config.problem_type == "regression"  # as every transformers classifier with num_labels=1
    torch.testing.assert_close(output.visual_classification_loss, F.mse_loss(output.visual_logits[:, 0], targets))


@pytest.mark.parametrize(
    "field", ["initializer_range", "visual_ce_weight", "alignment_loss_weight", "fusion_ce_weight"]
)
@pytest.mark.parametrize("value", [float("inf"), float("nan"), -0.5])
def test_nonfinite_or_negative_config_numbers_are_refused(field, value):
    with pytest.raises(ValueError, match=rf"`{field}` must be a finite number >= 0, got {value}\."):
        MARNetConfig(**{field: value})


# ---------------------------------------------------------------- the pipeline: transformers' own failures


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pipeline")
    MARNetForImageClassification(tiny_config()).save_pretrained(directory)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(directory)
    return pipeline("image-classification", model=str(directory))


def raised_in(error):
    """The files of the frames an exception went through (innermost last)."""
    return [frame.filename for frame in traceback.extract_tb(error.__traceback__)]


def test_a_url_offline_fails_in_transformers_image_loading_as_documented(classifier, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception, match="Connection refused") as error:
        classifier("http://127.0.0.1:9/dish.jpg")  # transformers' load_image fetches URLs itself, offline or not
    frames = raised_in(error.value)
    assert any(name.endswith("transformers/image_utils.py") for name in frames)
    assert not any("modeling_marnet" in name for name in frames)
    assert "open it yourself (`PIL.Image.open`)" in README


@pytest.mark.parametrize("size", [(0, 0), (0, 5)])
def test_an_empty_image_fails_in_the_image_processor_as_documented(classifier, size):
    with pytest.raises(Exception) as error:
        classifier(Image.new("RGB", size))
    assert not any("modeling_marnet" in name for name in raised_in(error.value))  # before MARNet sees it
    assert "A 0x0 image" in README


def test_an_empty_list_fails_in_the_pipeline_as_documented(classifier):
    with pytest.raises(IndexError) as error:
        classifier([])
    assert any(name.endswith("transformers/pipelines/base.py") for name in raised_in(error.value))
    assert "an empty list" in README
    assert classifier([Image.fromarray(np.zeros((8, 8, 3), np.uint8))])  # one image in a list works


def test_uint8_pixel_values_and_list_labels_are_clear_errors(model):
    pixel_values, _, labels = tiny_batch()
    raw = (pixel_values.clamp(0, 1) * 255).to(torch.uint8)  # pixels that skipped the image processor
    with pytest.raises(ValueError, match=r"`pixel_values` must be floating point, .* got dtype torch.uint8"):
        model.eval()(raw)
    with pytest.raises(ValueError, match=r"`labels` must be a torch.Tensor, got list\. Convert it with torch.tensor"):
        model.eval()(pixel_values, labels=labels.tolist())
