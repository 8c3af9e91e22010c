"""`marnet-train` end to end on a tiny dataset: learning, outputs, the Hub-facing folder, options."""

import json

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForImageClassification, pipeline

import modeling_marnet  # noqa: F401  (registers MARNet with the Auto classes)
from modeling_marnet.training.data import load_image_dataset
from modeling_marnet.training.loaders import default_num_workers
from modeling_marnet.training.text_features import cached_text_embeddings, load_text_encoder
from train_fixtures import (
    CLASS_COLOURS,
    make_dataset_dict,
    module_command,
    run_command,
    save_timm_tower,
    tiny_model_args,
    train_argv,
)

METRIC_KEYS = {
    "top1",
    "top5",
    "split",
    "per_split",
    "train_images_per_second",
    "wall_time_seconds",
    "global_step",
    "epochs",
}
ARGS_KEYS = {
    "dataset",
    "vision_model",
    "text_encoder",
    "ablation",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "warmup_ratio",
    "mixed_precision",
    "seed",
    "image_size",
    "num_processes",
}


def history(output_dir):
    return [json.loads(line) for line in (output_dir / "logs" / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(workspace):
    """Full MARNet, frozen text, from Parquet, options from a YAML file partly overridden on the command line."""
    root = workspace["root"]
    config_file = root / "run.yaml"
    config_file.write_text(
        "learning_rate: 1.0e-5\nweight_decay: 0.01\nper_device_train_batch_size: 4\ncheckpointing_steps: "
        "4\nsave_total_limit: 2\nlogging_steps: 1\n"
    )
    output_dir = root / "out"
    result = run_command(
        module_command(
            "modeling_marnet.train",
            "--config",
            config_file,
            "--dataset",
            workspace["parquet"],
            "--vision-model",
            workspace["tower"],
            "--text-encoder",
            workspace["bert"],
            "--text-cache-dir",
            root / "cache",
            "--output-dir",
            output_dir,
            "--max-steps",
            12,
            "--learning-rate",
            3e-3,
            "--alignment",
            "sdm",
            "--marnet-config",
            "alignment_loss_weight=0.01",  # SDM's loss is ~25 at initialisation: the default weight is ITA's
            *tiny_model_args(),
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result


def test_loss_decreases_and_metrics_follow_the_contract(trained):
    output_dir, _ = trained
    losses = [record["loss"] for record in history(output_dir) if "loss" in record]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["split"] == "test" and metrics["global_step"] == 12 and metrics["epochs"] == 2.0
    assert metrics["per_split"]["test"]["num_samples"] == 9
    assert metrics["per_split"]["validation"]["num_samples"] == 11
    for values in metrics["per_split"].values():
        assert 0.0 <= values["top1"] <= values["top5"] <= 1.0
    assert metrics["top1"] == metrics["per_split"]["test"]["top1"]
    assert metrics["per_split"]["validation"]["top1"] > 0.25  # colours are learnable: better than chance
    assert metrics["train_images_per_second"] > 0


def test_training_args_merge_config_file_and_command_line(trained, workspace):
    output_dir, _ = trained
    hyperparameters = json.loads((output_dir / "training_args.json").read_text())
    assert ARGS_KEYS <= set(hyperparameters)
    assert hyperparameters["learning_rate"] == 3e-3  # command line beats the file
    assert hyperparameters["weight_decay"] == 0.01  # from the file
    assert hyperparameters["ablation"] == "full" and hyperparameters["num_processes"] == 1
    assert hyperparameters["text_encoder"] == str(workspace["bert"])
    assert hyperparameters["dataloader_num_workers"] == default_num_workers(1)  # the default, resolved
    assert json.loads((output_dir / "config.json").read_text())["alignment"] == "sdm"  # --alignment reaches the model


def test_saved_model_runs_in_the_pipeline_with_dataset_labels(trained, workspace):
    output_dir, _ = trained
    model = AutoModelForImageClassification.from_pretrained(output_dir)
    assert model.config.id2label == dict(enumerate(CLASS_COLOURS))
    assert model.config.text_hidden_size == 16
    assert not any("text_encoder" in name for name in model.state_dict())
    classifier = pipeline("image-classification", model=str(output_dir))
    image = load_image_dataset(workspace["dataset"])["test"][0]["image"]
    predictions = classifier(image, top_k=4)
    assert {prediction["label"] for prediction in predictions} == set(CLASS_COLOURS)


def test_checkpoints_rotate_and_logs_are_written(trained):
    output_dir, result = trained
    checkpoints = sorted(path.name for path in (output_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-12", "checkpoint-8"]
    assert list((output_dir / "logs").rglob("events.out.tfevents.*"))
    assert "written to the cache" in result.stderr


def test_frozen_text_embeddings_are_cached_by_encoder_and_dataset(workspace, tmp_path):
    encoder, tokenizer = load_text_encoder(str(workspace["bert"]), "mean", 32)
    train = load_image_dataset(workspace["dataset"])["train"]
    accelerator = Accelerator(cpu=True)
    first, first_hit = cached_text_embeddings(accelerator, encoder, tokenizer, train, "text", tmp_path)
    again, again_hit = cached_text_embeddings(accelerator, encoder, tokenizer, train, "text", tmp_path)
    assert (first_hit, again_hit) == (False, True)
    assert first.shape == (24, 16) and torch.equal(first, again)
    other_rows, other_hit = cached_text_embeddings(
        accelerator, encoder, tokenizer, train.select(range(8)), "text", tmp_path
    )
    assert not other_hit and other_rows.shape == (8, 16)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    # The first rows are the same texts, so the same features: the cache key changed, not the computation.
    torch.testing.assert_close(other_rows, first[:8])


def test_joint_text_encoder_accumulation_and_early_stopping(workspace, trained, tmp_path):
    """Joint text encoder, 2-batch accumulation, evaluation every 2 steps and early stopping on top-5 (4 classes:
    always 1.0, so it never improves after the first evaluation)."""
    output_dir = tmp_path / "joint"
    result = run_command(
        module_command(
            "modeling_marnet.train",
            "--dataset",
            workspace["dataset"],
            "--vision-model",
            workspace["tower"],
            "--text-encoder",
            workspace["bert"],
            "--train-text-encoder",
            "--output-dir",
            output_dir,
            "--max-steps",
            20,
            "--per-device-train-batch-size",
            3,
            "--gradient-accumulation-steps",
            2,
            "--eval-strategy",
            "steps",
            "--eval-steps",
            2,
            "--metric-for-best-model",
            "top5",
            "--early-stopping-patience",
            2,
            "--checkpointing-steps",
            0,
            "--report-to",
            "none",
            "--logging-steps",
            1,
            *tiny_model_args(),
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Early stopping at step 6" in result.stderr
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 6 and metrics["best_step"] == 2
    assert metrics["epochs"] == 6 / 4  # 8 batches of 3 per epoch, 2 per optimizer step
    assert not list((output_dir / "checkpoints").glob("checkpoint-*"))  # --checkpointing-steps 0
    # Only the classifier is published: the same tensors as a model trained with a frozen encoder.
    joint_keys = set(AutoModelForImageClassification.from_pretrained(output_dir).state_dict())
    assert joint_keys == set(AutoModelForImageClassification.from_pretrained(trained[0]).state_dict())


def test_timm_tower_output_folder_has_a_reloadable_image_processor(workspace, tmp_path):
    output_dir = tmp_path / "timm"
    result = run_command(
        module_command(
            "modeling_marnet.train",
            *train_argv(
                workspace,
                output_dir,
                *("--vision-model", save_timm_tower(tmp_path / "t"), "--ablation", "baseline"),
                *("--max-steps", 2, "--checkpointing-steps", 0),
                dataset=workspace["parquet"],
                text_encoder=None,
            ),
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    processor_config = json.loads((output_dir / "preprocessor_config.json").read_text())
    assert processor_config["image_processor_type"] == "BitImageProcessor"
    assert processor_config["crop_size"] == {"height": 48, "width": 48}
    predictions = pipeline("image-classification", model=str(output_dir))(
        make_dataset_dict({"test": 1})["test"][0]["image"], top_k=2
    )
    assert {p["label"] for p in predictions} <= set(CLASS_COLOURS)
