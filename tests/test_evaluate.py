"""`marnet-eval`: metrics of any saved classifier on any split, in the layout of marnet-train's metrics.json."""

import json

import datasets
import pyarrow.parquet
import pytest
import torch
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from transformers import AutoImageProcessor, ViTImageProcessor

from bounded import memory_limit
from modeling_marnet import MARNetConfig, MARNetForImageClassification
from modeling_marnet.corruptions import corrupt
from modeling_marnet.evaluate import main
from modeling_marnet.training.data import load_image_dataset
from test_hostile_images import png_declaring
from tiny_marnet import TEXT_WIDTH, TINY_HEADS
from train_fixtures import CLASS_COLOURS, IMAGE_SIZE, make_dataset_dict, save_dataset, save_vision_tower


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    vision_config = MARNetForImageClassification.from_vision_pretrained(
        str(save_vision_tower(root / "tower"))
    ).config.vision_config
    config = MARNetConfig(
        vision_config=vision_config,
        text_hidden_size=TEXT_WIDTH,
        **TINY_HEADS,
        num_inference_steps=3,
        id2label=dict(enumerate(CLASS_COLOURS)),
        label2id={n: i for i, n in enumerate(CLASS_COLOURS)},
    )
    torch.manual_seed(0)
    model_dir = root / "model"
    MARNetForImageClassification(config).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(model_dir)
    return model_dir, save_dataset(root / "dataset", parquet=True)


def expected_metrics(model_dir, dataset_dir, split, corruption=None):
    """Top-1 / top-5 computed directly, image by image, each image first corrupted by `corruption` (name,
    severity) when given."""
    model = MARNetForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    rows = load_image_dataset(dataset_dir)[split]
    top1 = top5 = 0
    for row in rows:
        image = row["image"].convert("RGB")
        if corruption is not None:
            image = to_pil_image(corrupt(pil_to_tensor(image), *corruption))
        with torch.no_grad():
            logits = model(pixel_values=processor(image, return_tensors="pt")["pixel_values"]).logits[0]
        ranking = logits.argsort(descending=True).tolist()
        top1 += ranking[0] == row["label"]
        top5 += row["label"] in ranking[:5]
    return top1 / len(rows), top5 / len(rows), len(rows)


def test_metrics_of_two_splits_match_a_direct_computation(saved_model, tmp_path, capsys):
    model_dir, dataset_dir = saved_model
    output = tmp_path / "eval" / "metrics.json"
    # Old option names (--model, --batch-size, --output, repeated --split) are aliases of the new ones.
    assert (
        main(
            [
                "--model",
                str(model_dir),
                "--dataset",
                str(dataset_dir),
                "--split",
                "validation",
                "--split",
                "test",
                "--batch-size",
                "4",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    metrics = json.loads(output.read_text())
    assert json.loads(capsys.readouterr().out) == metrics
    assert metrics["split"] == "validation" and set(metrics["per_split"]) == {"validation", "test"}
    for split in ("validation", "test"):
        top1, top5, count = expected_metrics(model_dir, dataset_dir, split)
        assert metrics["per_split"][split]["num_samples"] == count
        assert metrics["per_split"][split]["top1"] == pytest.approx(top1)
        assert metrics["per_split"][split]["top5"] == pytest.approx(top5)
        assert metrics["per_split"][split]["loss"] > 0
    assert metrics["top1"] == metrics["per_split"]["validation"]["top1"]


def test_bad_split_and_label_mismatch_are_clear_errors(saved_model, tmp_path, capsys):
    model_dir, dataset_dir = saved_model
    assert main(["--model_name_or_path", str(model_dir), "--dataset", str(dataset_dir), "--split", "dev"]) == 1
    assert "marnet-eval: error: The dataset has no split 'dev'" in capsys.readouterr().err
    other = MARNetForImageClassification.from_pretrained(model_dir)
    other.config.id2label = {i: f"dish_{i}" for i in range(4)}
    other.save_pretrained(tmp_path / "other")
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(tmp_path / "other")
    assert main(["--model_name_or_path", str(tmp_path / "other"), "--dataset", str(dataset_dir)]) == 1
    assert "differ from the dataset's ClassLabel names" in capsys.readouterr().err
    assert main(["--model_name_or_path", str(model_dir), "--dataset", str(dataset_dir), "--batch_size", "0"]) == 2
    assert "marnet-eval: error: --per_device_eval_batch_size must be >= 1, got 0." in capsys.readouterr().err

    # A directory as the metrics file is refused before the evaluation, not after it.
    assert (
        main(["--model_name_or_path", str(model_dir), "--dataset", str(dataset_dir), "--output", str(tmp_path)]) == 2
    )
    assert f"marnet-eval: error: --metrics_file {tmp_path} is a directory" in capsys.readouterr().err


def test_hostile_images_are_refused_naming_split_and_row(saved_model, tmp_path, capsys):
    """A row naming /dev/zero and a decompression bomb (a 49 KB PNG of 20000 x 20000 pixels): each a clear error,
    raised before anything large is read or decoded."""
    model_dir, _ = saved_model
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASS_COLOURS))})
    fine = make_dataset_dict({"test": 1})["test"].cast_column("image", datasets.Image(decode=False))[0]["image"]
    hostile = {
        "validation": {"bytes": png_declaring(20000, 20000), "path": None},
        "test": {"bytes": None, "path": "/dev/zero"},
    }
    (tmp_path / "dataset").mkdir()
    base = ["--model_name_or_path", str(model_dir), "--dataset", str(tmp_path / "dataset"), "--split"]
    with memory_limit(2**30):
        for split, image in hostile.items():
            rows = datasets.Dataset.from_dict({"image": [fine, image], "label": [0, 1]}, features=features)
            # Written as is: `to_parquet` and `save_to_disk` would embed (read) the file a path names.
            pyarrow.parquet.write_table(rows.data.table, tmp_path / "dataset" / f"{split}-00000-of-00001.parquet")
        assert main([*base, "test"]) == 1
        assert "marnet-eval: error: Split 'test', row 1 (/dev/zero): the image file lies outside" in (
            capsys.readouterr().err
        )
        assert main([*base, "validation"]) == 1
        assert "error: Split 'validation', row 1: its header declares 20000x20000 = 400,000,000 pixels" in (
            capsys.readouterr().err
        )


def test_a_missing_local_model_folder_is_named_as_such(saved_model, tmp_path, capsys):
    _, dataset_dir = saved_model
    missing = tmp_path / "runs" / "never-trained"
    assert main(["--model_name_or_path", str(missing), "--dataset", str(dataset_dir)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"marnet-eval: error: --model_name_or_path {missing}: no such file or folder."
    )


def test_corrupted_split_matches_corrupting_each_image_before_the_processor(saved_model, capsys):
    model_dir, dataset_dir = saved_model
    args = ["--model", str(model_dir), "--dataset", str(dataset_dir), "--split", "test"]
    assert main([*args, "--corruption", "gaussian_noise", "--severity", "5"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert (metrics["corruption"], metrics["severity"]) == ("gaussian_noise", 5)
    top1, top5, count = expected_metrics(model_dir, dataset_dir, "test", ("gaussian_noise", 5))
    assert metrics["per_split"]["test"]["top1"] == pytest.approx(top1)
    assert metrics["per_split"]["test"]["top5"] == pytest.approx(top5)
    assert main(args) == 0
    clean = json.loads(capsys.readouterr().out)
    assert clean["corruption"] is None
    assert clean["per_split"]["test"]["loss"] != metrics["per_split"]["test"]["loss"]


def test_corruption_options_are_checked_before_evaluating(saved_model, capsys):
    model_dir, dataset_dir = saved_model
    args = ["--model", str(model_dir), "--dataset", str(dataset_dir)]
    assert main([*args, "--corruption", "contrast"]) == 2
    assert "--corruption and --severity go together" in capsys.readouterr().err
    assert main([*args, "--corruption", "contrast", "--severity", "9"]) == 2
    assert "--severity must be an integer in 1-5, got 9" in capsys.readouterr().err
    assert main([*args, "--corruption", "fog", "--severity", "1"]) == 2
    assert "gaussian_noise" in capsys.readouterr().err  # the choices are listed
