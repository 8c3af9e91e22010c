"""Bad input to `marnet-train` ends before the first step with `marnet-train: error: ...` and no traceback: exit
status 2 when the command line itself is wrong, 1 when the data or models are."""

import json

import datasets
from transformers import ViTImageProcessor

from marnet_cli.commands import train as main
from modeling_marnet import MARNetConfig, MARNetForImageClassification
from tiny_marnet import TEXT_WIDTH, TINY_HEADS
from train_fixtures import (
    CLASS_COLOURS,
    IMAGE_SIZE,
    make_dataset_dict,
    module_command,
    run_command,
    save_dataset,
    save_timm_tower,
    train_argv,
)


def train_args(workspace, output_dir, *extra, dataset=None):
    return train_argv(workspace, output_dir, "--max-steps", 2, *extra, dataset=dataset)


def expect_error(capsys, argv, status, *fragments):
    assert main(argv) == status
    message = capsys.readouterr().err
    assert message.strip().splitlines()[-1].startswith("marnet-train: error: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_dataset_without_text_needs_the_baseline_ablation(workspace, tmp_path, capsys):
    expect_error(
        capsys,
        train_args(workspace, tmp_path / "out", dataset=workspace["no_text"]),
        1,
        "Ablation 'full' learns from privileged text",
        "has no 'text' column",
        "--ablation baseline",
    )
    assert not (tmp_path / "out").exists()


def test_visual_only_training_works_without_text_and_says_so(workspace, tmp_path):
    output_dir = tmp_path / "visual"
    result = run_command(
        module_command(
            "modeling_marnet.train",
            *train_argv(
                workspace,
                output_dir,
                *("--ablation", "baseline", "--max-steps", 3, "--per-device-train-batch-size", 8),
                *("--checkpointing-steps", 0),
                dataset=workspace["no_text"],
                text_encoder=None,
            ),
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Visual-only training: the dataset has no 'text' column" in result.stderr
    hyperparameters = json.loads((output_dir / "training_args.json").read_text())
    assert hyperparameters["ablation"] == "baseline" and hyperparameters["text_hidden_size"] is None
    assert json.loads((output_dir / "metrics.json").read_text())["per_split"]["test"]["num_samples"] == 9


def test_missing_split(workspace, tmp_path, capsys):
    expect_error(
        capsys,
        train_args(workspace, tmp_path / "out", "--validation-split", "dev"),
        1,
        "no split 'dev'",
        "train, validation, test",
        "--validation_split",
        "--train_val_split",
    )


def test_labels_out_of_range(workspace, tmp_path, capsys):
    splits = make_dataset_dict()
    bad_labels = [5 if i == 3 else label for i, label in enumerate(splits["validation"]["label"])]
    splits["validation"] = (
        splits["validation"]
        .remove_columns("label")
        .add_column("label", bad_labels)
        .cast_column("label", splits["train"].features["label"])
    )
    expect_error(
        capsys,
        train_args(workspace, tmp_path / "out", dataset=save_dataset(tmp_path / "bad", splits)),
        1,
        "Split 'validation', column 'label'",
        "[0, 3]",
        "from 0 to 5",
    )


def test_label_column_must_be_a_class_label(workspace, tmp_path, capsys):
    splits = make_dataset_dict()
    splits = splits.cast_column("label", datasets.Value("int64"))
    expect_error(
        capsys,
        train_args(workspace, tmp_path / "out", dataset=save_dataset(tmp_path / "int", splits)),
        1,
        "'label' must be a datasets.ClassLabel",
        "class_encode_column",
    )


def test_unknown_columns(workspace, tmp_path, capsys):
    expect_error(
        capsys,
        train_args(workspace, tmp_path / "out", "--image-column", "photo"),
        1,
        "no column 'photo'",
        "image, label, ingredients, text, image_id",
        "--image_column",
    )
    expect_error(
        capsys,
        train_args(workspace, tmp_path / "out", "--text-column", "recipe"),
        1,
        "no 'recipe' column",
        "--text_column",
    )


def test_text_encoder_width_must_match_the_checkpoint(workspace, tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint"
    vision_config = MARNetForImageClassification.from_vision_pretrained(str(workspace["tower"])).config.vision_config
    config = MARNetConfig(
        vision_config=vision_config,
        text_hidden_size=TEXT_WIDTH,
        **TINY_HEADS,
        num_inference_steps=3,
        id2label=dict(enumerate(CLASS_COLOURS)),
    )
    MARNetForImageClassification(config).save_pretrained(checkpoint)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(checkpoint)
    argv = [
        "--dataset",
        str(workspace["dataset"]),
        "--model-name-or-path",
        str(checkpoint),
        "--text-encoder",
        str(workspace["bert24"]),
        "--output-dir",
        str(tmp_path / "out"),
    ]
    expect_error(capsys, argv, 1, "gives 24-d features", "text_hidden_size=16")


def test_option_errors(workspace, tmp_path, capsys):
    expect_error(
        capsys,
        ["--dataset", str(workspace["dataset"]), "--output-dir", str(tmp_path / "out")],
        2,
        "exactly one model source",
        "--vision_model",
        "--model_name_or_path",
    )
    config_file = tmp_path / "run.yaml"
    config_file.write_text("learning_rte: 0.1\n")
    expect_error(
        capsys,
        train_args(workspace, tmp_path / "out", "--config", config_file),
        2,
        "unknown option(s) ['learning_rte']",
        "learning_rate",
    )
    expect_error(
        capsys,
        train_args(workspace, tmp_path / "out", "--marnet-config", "fusion=hm"),
        2,
        "unknown MARNetConfig field(s) ['fusion']",
        "fusion_mode",
    )
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "metrics.json").write_text("{}")
    expect_error(
        capsys, train_args(workspace, tmp_path / "used"), 2, "is not empty", "--resume_from_checkpoint latest"
    )
    expect_error(
        capsys,
        train_args(workspace, tmp_path / "fresh", "--resume-from-checkpoint", "latest"),
        1,
        "no finished checkpoint",
    )


def test_output_dir_that_is_a_dangling_symlink_is_refused(workspace, tmp_path, capsys):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone")
    expect_error(capsys, train_args(workspace, link), 2, f"--output_dir {link} is a symbolic link to")
    assert link.is_symlink() and not (tmp_path / "gone").exists()


def test_cli_error_is_one_line_on_stderr_without_traceback(workspace, tmp_path):
    result = run_command(
        module_command("modeling_marnet.train", *train_args(workspace, tmp_path / "out", "--train-split", "training"))
    )
    assert result.returncode == 1
    assert "marnet-train: error: The dataset has no split 'training'" in result.stderr
    assert "Traceback" not in result.stderr


def test_timm_tower_whose_eval_transform_has_no_standard_processor(workspace, tmp_path, capsys):
    tower = save_timm_tower(tmp_path / "timm", crop_mode="squash")
    expect_error(
        capsys,
        train_args(workspace, tmp_path / "out", "--vision-model", tower, "--ablation", "baseline"),
        1,
        "crop mode 'squash'",
        "Save a transformers image processor next to the tower instead.",
    )
    assert not (tmp_path / "out").exists()
