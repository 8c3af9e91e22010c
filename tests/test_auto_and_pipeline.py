import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    ViTImageProcessor,
    pipeline,
)

from modeling_marnet import MARNetConfig, MARNetForImageClassification, MARNetModel
from remote_code import BLOCK_MARNET_PACKAGE
from tiny_marnet import IMAGE_SIZE, NUM_LABELS, tiny_batch, tiny_config

MODEL_FILES = {
    "configuration_marnet.py",
    "modeling_marnet.py",
    "alignment.py",
    "alignment_losses.py",
    "diffusion.py",
    "fusion.py",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny full MARNet saved with its image processor, and the logits it gives on a fixed batch."""
    directory = tmp_path_factory.mktemp("marnet")
    torch.manual_seed(0)
    model = MARNetForImageClassification(tiny_config("full", fusion_mode="hm")).eval()
    model.save_pretrained(directory)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(directory)
    pixel_values, _, _ = tiny_batch(batch_size=3)
    with torch.no_grad():
        logits = model(pixel_values).logits
    torch.save({"pixel_values": pixel_values, "logits": logits}, directory / "expected.pt")
    return directory, pixel_values, logits


@pytest.fixture(scope="module")
def saved_ingredients(tmp_path_factory):
    """A tiny `ingredients` row (the baseline with an ingredient head) saved with the logits of a fixed batch."""
    directory = tmp_path_factory.mktemp("ingredients")
    torch.manual_seed(0)
    model = MARNetForImageClassification(tiny_config("ingredients", num_ingredients=3)).eval()
    model.save_pretrained(directory)
    pixel_values, _, _ = tiny_batch(batch_size=3)
    with torch.no_grad():
        torch.save({"pixel_values": pixel_values, "logits": model(pixel_values).logits}, directory / "expected.pt")
    return directory


def test_saved_folder_is_safetensors_with_remote_code_files(saved):
    directory, _, _ = saved
    files = {path.name for path in directory.iterdir()}
    assert "model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt.bin", ".pkl")) for name in files)
    assert MODEL_FILES <= files
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "marnet"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_marnet.MARNetConfig",
        "AutoModel": "modeling_marnet.MARNetModel",
        "AutoModelForImageClassification": "modeling_marnet.MARNetForImageClassification",
    }
    assert config["id2label"] == {str(i): f"dish_{i}" for i in range(NUM_LABELS)}


def test_remote_code_files_import_only_torch_transformers_and_each_other(saved):
    directory, _, _ = saved
    allowed = {"torch", "transformers", "math", "inspect", "dataclasses", "re", "os", "functools", "warnings"}
    for name in MODEL_FILES:
        for line in (directory / name).read_text().splitlines():
            if line.startswith(("import ", "from ")) and not line.startswith("from ."):
                assert line.split()[1].split(".")[0] in allowed, f"{name}: {line}"


def test_auto_classes_reload_without_trust_remote_code(saved):
    directory, pixel_values, logits = saved
    assert type(AutoConfig.from_pretrained(directory)) is MARNetConfig
    assert type(AutoModel.from_pretrained(directory)) is MARNetModel
    model = AutoModelForImageClassification.from_pretrained(directory).eval()
    assert type(model) is MARNetForImageClassification
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, logits, rtol=0, atol=0)


def test_attention_implementations_agree_and_reach_the_tower(saved):
    directory, pixel_values, logits = saved
    for implementation in ("eager", "sdpa"):
        model = AutoModelForImageClassification.from_pretrained(directory, attn_implementation=implementation).eval()
        assert model.marnet.vision_model.config._attn_implementation == implementation
        with torch.no_grad():
            torch.testing.assert_close(model(pixel_values).logits, logits, rtol=1e-4, atol=1e-5)


def test_half_precision_load_runs_inference(saved):
    directory, pixel_values, logits = saved
    model = AutoModelForImageClassification.from_pretrained(directory, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad():
        half = model(pixel_values.to(torch.bfloat16)).logits
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), logits, rtol=0.05, atol=0.05)


def test_fine_tuning_on_new_labels_reinitialises_only_the_classifiers(saved):
    directory, pixel_values, _ = saved
    new_labels = {0: "soup", 1: "salad", 2: "cake"}
    model = AutoModelForImageClassification.from_pretrained(
        directory, id2label=new_labels, label2id={v: k for k, v in new_labels.items()}, ignore_mismatched_sizes=True
    )
    original = AutoModelForImageClassification.from_pretrained(directory)
    assert model(pixel_values).logits.shape == (3, 3)
    assert torch.count_nonzero(model.visual_classifier.bias) == 0
    torch.testing.assert_close(
        model.marnet.reconstruction.denoiser.mlp.layers[0].weight,
        original.marnet.reconstruction.denoiser.mlp.layers[0].weight,
    )


def test_remote_code_loads_where_the_package_is_not_importable(saved, saved_ingredients, tmp_path):
    directory, _, _ = saved
    script = BLOCK_MARNET_PACKAGE + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel, AutoModelForImageClassification

        for folder in ({str(directory)!r}, {str(saved_ingredients)!r}):
            expected = torch.load(folder + "/expected.pt")
            model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            with torch.no_grad():
                torch.testing.assert_close(model(expected["pixel_values"]).logits, expected["logits"], rtol=0, atol=0)
        base = AutoModel.from_pretrained({str(directory)!r}, trust_remote_code=True)
        assert type(base).__name__ == "MARNetModel"
        print("remote code ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok" in result.stdout


def make_images():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8))
    sixteen_bit = Image.fromarray(np.random.default_rng(1).integers(0, 65536, (40, 52), dtype=np.uint16))
    return {
        "RGB": rgb,
        "L": rgb.convert("L"),
        "RGBA": rgb.convert("RGBA"),
        "CMYK": rgb.convert("CMYK"),
        "I;16": sixteen_bit,
    }


def assert_valid_top_k(predictions, k):
    names = {f"dish_{i}" for i in range(NUM_LABELS)}
    scores = [p["score"] for p in predictions]
    assert len(predictions) == k
    assert {p["label"] for p in predictions} <= names
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) <= 1 + 1e-6 and all(0 <= s <= 1 for s in scores)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "CMYK", "I;16"])
def test_pipeline_returns_sorted_label_names_for_every_image_mode(saved, mode):
    directory, _, _ = saved
    image = make_images()[mode]
    assert image.mode == mode
    classifier = pipeline("image-classification", model=str(directory))
    assert_valid_top_k(classifier(image, top_k=3), 3)


def test_pipeline_batches_a_list_and_matches_single_calls(saved):
    directory, _, _ = saved
    classifier = pipeline("image-classification", model=str(directory))
    images = list(make_images().values())
    batched = classifier(images, batch_size=2, top_k=NUM_LABELS)
    assert len(batched) == len(images)
    for image, predictions in zip(images, batched):
        assert_valid_top_k(predictions, NUM_LABELS)
        single = classifier(image, top_k=NUM_LABELS)
        assert [p["label"] for p in single] == [p["label"] for p in predictions]
        np.testing.assert_allclose([p["score"] for p in single], [p["score"] for p in predictions], atol=1e-5)
