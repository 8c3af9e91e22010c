"""Commands pasted from transformers' `examples/pytorch/image-classification` run under marnet-train.

The commands below are copied verbatim from that folder's README.md (huggingface/transformers, commit
112f93918e66158099704e7d631472b56705a4fd; the 5.25 sdist we install ships no examples). Each runs with only its model
and dataset arguments changed: the script becomes `marnet-train`, a tiny tower (and text encoder) is added, the
dataset is a tiny local one with the columns the command names. Per-flag behaviour (translated, noted, refused) is
tested on the parser, which is where it lives.
"""

import json
import shlex

import pytest
from PIL import Image

from marnet_cli.commands import train
from marnet_cli.train_args import parse_train_args
from train_fixtures import (
    CLASS_COLOURS,
    make_dataset_dict,
    save_dataset,
    tiny_model_args,
)

TRAINER_ON_HUB_DATASET = """\
python run_image_classification.py \\
    --dataset_name beans \\
    --output_dir ./beans_outputs/ \\
    --remove_unused_columns False \\
    --label_column_name labels \\
    --do_train \\
    --do_eval \\
    --push_to_hub \\
    --push_to_hub_model_id vit-base-beans \\
    --learning_rate 2e-5 \\
    --num_train_epochs 5 \\
    --per_device_train_batch_size 8 \\
    --per_device_eval_batch_size 8 \\
    --logging_strategy steps \\
    --logging_steps 10 \\
    --evaluation_strategy epoch \\
    --save_strategy epoch \\
    --load_best_model_at_end True \\
    --save_total_limit 3 \\
    --seed 1337
"""
TRAINER_ON_FOLDERS = """\
python run_image_classification.py \\
    --train_dir <path-to-train-root> \\
    --output_dir ./outputs/ \\
    --remove_unused_columns False \\
    --do_train \\
    --do_eval
"""
NO_TRAINER = "accelerate launch run_image_classification_no_trainer.py --image_column_name img"

SMALL_SPLITS = {"train": 8, "validation": 4, "test": 4}  # one optimizer step per epoch at batch 8


def example_arguments(command, replace=None):
    """The arguments of a README command after its script name, with `replace` ({old: new} values) applied."""
    words = shlex.split(command.replace("\\\n", " "))  # a backslash-newline continues the line, as in bash
    words = words[words.index(next(word for word in words if word.endswith(".py"))) + 1 :]
    return [(replace or {}).get(word, word) for word in words]


@pytest.fixture(scope="module")
def models(tiny_inputs):
    return tiny_inputs["tower"], tiny_inputs["bert"]


class StubHfApi:
    """Answers `whoami` and records the upload that `--push_to_hub` makes."""

    uploads = []

    def whoami(self):
        return {"name": "tester"}

    def create_repo(self, repo_id, **kwargs):
        return f"https://hub.test/{repo_id}"

    def upload_folder(self, **kwargs):
        self.uploads.append(kwargs["repo_id"])
        return type("CommitInfo", (), {"commit_url": "https://hub.test/commit/1"})()


def test_trainer_command_on_a_hub_dataset(models, tmp_path, monkeypatch, capsys):
    tower, bert = models
    dataset = make_dataset_dict(SMALL_SPLITS).rename_column("label", "labels")  # as beans names it
    data = save_dataset(tmp_path / "beans", dataset, parquet=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hub_scripts.upload.HfApi", StubHfApi)
    monkeypatch.setattr("hub_scripts.upload.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    StubHfApi.uploads = []
    model = ["--vision_model", str(tower), "--text_encoder", str(bert), *tiny_model_args()]
    argv = example_arguments(TRAINER_ON_HUB_DATASET, {"beans": str(data)}) + model

    assert train(argv) == 0, capsys.readouterr().err
    notes = capsys.readouterr().err
    for flag in ("--remove_unused_columns False", "--do_train True", "--do_eval True", "--load_best_model_at_end"):
        assert f"marnet-train: note: {flag}" in notes
    run = tmp_path / "beans_outputs"
    recorded = json.loads((run / "training_args.json").read_text())
    assert recorded["hub_model_id"] == "tester/vit-base-beans" and StubHfApi.uploads == ["tester/vit-base-beans"]
    assert recorded["checkpointing_steps"] == "epoch" and recorded["seed"] == 1337
    assert sorted(path.name for path in (run / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-3",
        "checkpoint-4",
        "checkpoint-5",
    ]  # one per epoch, the last 3 kept (--save_total_limit 3)
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 5


def save_image_folder(root, split_size):
    """`root/<class>/<n>.png`: the colour classes of the fixtures as an image folder."""
    for index in range(split_size):
        name, colour = list(CLASS_COLOURS.items())[index % len(CLASS_COLOURS)]
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (30, 30), colour).save(root / name / f"{index}.png")
    return root


def test_trainer_command_on_image_folders(models, tmp_path, monkeypatch, capsys):
    """The folders have no text: the model arguments pick the visual-only baseline. No validation split is held out
    automatically (a documented difference), so the dataset arguments add the example's `--validation_dir`."""
    tower, _ = models
    train_root = save_image_folder(tmp_path / "train", 8)
    dataset = ["--validation_dir", str(save_image_folder(tmp_path / "validation", 4))]
    monkeypatch.chdir(tmp_path)
    argv = example_arguments(TRAINER_ON_FOLDERS, {"<path-to-train-root>": str(train_root)}) + dataset
    argv += ["--vision_model", str(tower), "--ablation", "baseline"]

    assert train(argv) == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "outputs" / "metrics.json").read_text())
    assert metrics["split"] == "validation" and metrics["per_split"]["validation"]["num_samples"] == 4


def test_no_trainer_command(models, tmp_path, capsys):
    """`accelerate launch` is a launcher, not a flag (marnet-train runs under it as well); the script's defaults
    (CIFAR-10, a ViT) become the dataset and model arguments, and marnet-train needs an --output_dir."""
    tower, bert = models
    data = save_dataset(tmp_path / "cifar", make_dataset_dict(SMALL_SPLITS).rename_column("image", "img"))
    argv = example_arguments(NO_TRAINER) + ["--dataset_name", str(data), "--output_dir", str(tmp_path / "run")]
    argv += ["--vision_model", str(tower), "--text_encoder", str(bert), "--max_steps", "1", *tiny_model_args()]

    assert train(argv) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["global_step"] == 1


REQUIRED = ["--dataset_name", "d", "--vision_model", "v", "--output_dir", "o"]


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--max_train_steps", "7"], {"max_steps": 7}),
        (["--num_warmup_steps", "3"], {"warmup_steps": 3}),
        (["--checkpointing_steps", "epoch"], {"checkpointing_steps": "epoch"}),
        (["--save_strategy", "no"], {"checkpointing_steps": 0}),
        (["--save_strategy", "steps", "--save_steps", "9"], {"checkpointing_steps": 9}),
        (["--bf16"], {"mixed_precision": "bf16"}),
        (["--fp16", "True"], {"mixed_precision": "fp16"}),
        (["--push_to_hub", "--hub_model_id", "my-model"], {"hub_model_id": "my-model"}),
        (["--dataset_config_name", "full"], {"dataset_config_name": "full"}),
        (["--metric_for_best_model", "accuracy"], {"metric_for_best_model": "top1"}),
        (["--metric_for_best_model", "eval_loss"], {"metric_for_best_model": "loss"}),
    ],
)
def test_example_flags_map_to_marnet_train_options(flags, expected):
    args = parse_train_args(REQUIRED + flags)
    assert {name: getattr(args, name) for name in expected} == expected


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--hub_token", "hf_secret"], "--hub_token is not a marnet-train option: a token on the command line"),
        (["--token", "hf_secret"], "set HF_TOKEN or run `hf auth login`"),
        (["--model_revision", "v2"], "`hf download REPO --revision REV --local-dir DIR`"),
        (["--cache_dir", "c"], "set HF_HOME"),
        (["--do_train", "False"], "--do_train False is not a marnet-train option: marnet-train always trains"),
        (["--do_eval", "False"], "pass --eval_strategy no"),
        (["--load_best_model_at_end", "False"], "newest checkpoints/checkpoint-<step>"),
        (["--logging_strategy", "epoch"], "every --logging_steps optimizer steps"),
        (["--fp16", "--bf16"], "--fp16 and --bf16 both set"),
        (["--bf16", "--mixed-precision=fp16"], "--fp16/--bf16 and --mixed_precision both set"),
        (["--checkpointing_steps", "often"], "must be an integer >= 0 or 'epoch', got 'often'"),
        (["--train_dir", "images"], "Give exactly one dataset: --dataset_name (Hub id, save_to_disk folder or"),
    ],
)
def test_example_flags_without_a_meaning_here_are_refused_with_our_equivalent(flags, message, capsys):
    assert train(REQUIRED + flags) == 2
    error = capsys.readouterr().err
    assert message in error and "hf_secret" not in error
