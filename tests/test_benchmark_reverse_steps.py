"""benchmarks/reverse_steps.py on tiny saved MARNets: top-1 per reverse-step count and the paired difference from the
count each run was saved with."""

import json
import sys

import datasets
import pytest
import torch
from transformers import ViTImageProcessor

from modeling_marnet import MARNetForImageClassification
from train_fixtures import REPO_ROOT, run_command, save_dataset, save_tiny_marnet

SCRIPT = REPO_ROOT / "benchmarks" / "reverse_steps.py"


def top1_at(model_dir, dataset, steps):
    """Top-1 of the saved model on the validation split with `steps` reverse steps, computed here directly."""
    model = MARNetForImageClassification.from_pretrained(model_dir).eval()
    model.config.num_inference_steps = steps
    split = datasets.load_from_disk(str(dataset))["validation"]
    processor = ViTImageProcessor.from_pretrained(model_dir)
    pixel_values = processor(images=list(split["image"]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return (model(pixel_values).logits.argmax(-1) == torch.tensor(split["label"])).float().mean().item()


def test_scores_each_step_count_and_pairs_it_with_the_saved_count(tmp_path):
    runs = [save_tiny_marnet(tmp_path / f"seed-{seed}", num_inference_steps=3, sampler_seed=seed) for seed in range(2)]
    dataset = save_dataset(tmp_path / "data")
    output = tmp_path / "steps.json"
    command = [sys.executable, str(SCRIPT), *map(str, runs), "--dataset", str(dataset), "--steps", "1", "5"]
    completed = run_command([*command, "--output", str(output)])
    assert completed.returncode == 0, completed.stderr[-2000:]

    report = json.loads(output.read_text())
    assert report["split"] == "validation" and report["steps"] == [1, 5]
    first = report["runs"][0]
    # The saved count is scored too, and each count is what the model gives with that many steps.
    assert first["saved_steps"] == 3 and sorted(first["top1"]) == ["1", "3", "5"]
    assert first["top1"]["1"] == pytest.approx(top1_at(runs[0], dataset, 1))
    assert first["top1"]["3"] == pytest.approx(top1_at(runs[0], dataset, 3))
    one_step = report["summary"][0]
    differences = [100 * (run["top1"]["1"] - run["top1"]["3"]) for run in report["runs"]]
    assert one_step["steps"] == 1 and one_step["difference_from_saved"]["n"] == 2
    assert one_step["difference_from_saved"]["mean"] == pytest.approx(sum(differences) / 2)
    assert "| 5 |" in completed.stdout and "saved with 3 reverse steps" in completed.stdout


def test_refuses_a_step_count_below_one(tmp_path):
    completed = run_command(
        [sys.executable, str(SCRIPT), str(tmp_path), "--dataset", str(tmp_path), "--steps", "0", "10"]
    )
    assert completed.returncode == 2
    assert "--steps: every count must be >= 1, got [0]" in completed.stderr
