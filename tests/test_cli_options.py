"""The option conventions every MARNet command shares (`marnet_cli`): both spellings, old names as aliases, config
files under the command line, `--help` with defaults and without torch, one error format."""

import dataclasses
import subprocess
import sys

import pytest

from dataset_scripts.cli import BuildArguments
from dataset_scripts.cli import parse_args as parse_data_args
from hub_scripts.convert_efficientnet_lite0 import ConvertArguments
from hub_scripts.publish import PublishArguments
from marnet_cli.eval_args import EvalArguments, parse_eval_args
from marnet_cli.export_args import ExportArguments, parse_export_args
from marnet_cli.options import MARNetArgumentParser
from marnet_cli.train_args import ABLATION_NAMES, ALIGNMENT_METHODS, FUSION_MODES, TrainArguments, parse_train_args
from train_fixtures import REPO_ROOT, offline_env


def parse_publish_args(argv):
    return MARNetArgumentParser(PublishArguments, prog="marnet-publish").parse(argv)


def parse_convert_args(argv):
    return MARNetArgumentParser(ConvertArguments, prog="marnet-convert-efficientnet").parse(argv)


# Every option of every command, with values that are valid together (two marnet-train runs: new model / checkpoint).
TRAIN_NEW_MODEL = [
    "--dataset",
    "data/d",
    "--train_split",
    "tr",
    "--validation_split",
    "va",
    "--test_split",
    "te",
    "--train_val_split",
    "0.2",
    "--image_column",
    "img",
    "--label_column",
    "lab",
    "--text_column",
    "txt",
    "--ingredient_column",
    "tags",
    "--max_train_samples",
    "10",
    "--max_eval_samples",
    "5",
    "--augment",
    "randaugment",
    "--color_jitter",
    "0.4",
    "--image_size",
    "64",
    "--vision_model",
    "tower",
    "--ablation",
    "ema",
    "--dataset_config_name",
    "simplified",
    "--fusion_mode",
    "hm",
    "--alignment",
    "sdm",
    "--num_inference_steps",
    "4",
    "--marnet_config",
    "projection_dim=8",
    'sampler="ddim"',
    "--trust_remote_code",
    "--text_encoder",
    "bert",
    "--text_pooling",
    "cls",
    "--text_max_length",
    "16",
    "--train_text_encoder",
    "--text_cache_dir",
    "cache",
    "--num_train_epochs",
    "2.5",
    "--max_steps",
    "7",
    "--learning_rate",
    "0.001",
    "--tower_lr_multiplier",
    "0.1",
    "--auxiliary_warmup_ratio",
    "0.2",
    "--weight_decay",
    "0.01",
    "--lr_scheduler_type",
    "cosine_with_min_lr",
    "--lr_scheduler_kwargs",
    '{"min_lr_rate": 0.1}',
    "--warmup_ratio",
    "0.05",
    "--warmup_steps",
    "2",
    "--max_grad_norm",
    "0.5",
    "--label_smoothing_factor",
    "0.1",
    "--per_device_train_batch_size",
    "8",
    "--per_device_eval_batch_size",
    "16",
    "--gradient_accumulation_steps",
    "2",
    "--seed",
    "3",
    "--full_determinism",
    "--skip_nonfinite_loss",
    "--mixed_precision",
    "bf16",
    "--gradient_checkpointing",
    "--torch_compile",
    "--channels_last",
    "--dataloader_num_workers",
    "1",
    "--gpu_decode",
    "--output_dir",
    "out",
    "--overwrite_output_dir",
    "--eval_strategy",
    "steps",
    "--eval_steps",
    "3",
    "--metric_for_best_model",
    "loss",
    "--early_stopping_patience",
    "2",
    "--checkpointing_steps",
    "4",
    "--save_total_limit",
    "1",
    "--allow_changed_arguments",
    "--report_to",
    "tensorboard",
    "wandb",
    "--run_name",
    "r1",
    "--project",
    "p",
    "--logging_steps",
    "2",
    "--gradient_norm_steps",
    "5",
    "--push_to_hub",
    "--hub_model_id",
    "org/m",
    "--hub_private_repo",
    "--hub_revision",
    "v1",
    "--hub_dry_run",
]
TRAIN_CHECKPOINT = [
    "--train_dir",
    "images/train",
    "--validation_dir",
    "images/validation",
    "--save_strategy",
    "epoch",
    "--model_name_or_path",
    "run",
    "--ignore_mismatched_sizes",
    "--resume_from_checkpoint",
    "latest",
    "--output_dir",
    "out",
]
EVAL = [
    "--corruption",
    "occlusion",
    "--severity",
    "2",
    "--model_name_or_path",
    "run",
    "--dataset",
    "d",
    "--split",
    "validation",
    "test",
    "--image_column",
    "i",
    "--label_column",
    "l",
    "--max_eval_samples",
    "4",
    "--per_device_eval_batch_size",
    "2",
    "--mixed_precision",
    "fp16",
    "--num_inference_steps",
    "3",
    "--trust_remote_code",
    "--metrics_file",
    "m.json",
]
PUBLISH = [
    "run",
    "--hub_model_id",
    "org/m",
    "--output_dir",
    "repo-folder",
    "--dry_run",
    "--hub_private_repo",
    "--hub_revision",
    "v1",
    "--commit_message",
    "msg",
    "--create_pr",
    "--license",
    "mit",
    "--dataset_repo",
    "org/d",
    "--base_model",
    "org/t",
]
DATA = [
    "build",
    "ingredient-101",
    "--data_dir",
    "raw",
    "--output_dir",
    "built",
    "--food101_dir",
    "food",
    "--dataset_config_name",
    "simplified",
    "--num_proc",
    "2",
    "--builder_option",
    "ingredients_file=ingredients_simplified.txt",
    "--skip_bad_images",
    "--push_to_hub",
    "org/d",
    "--hub_private_repo",
    "--dry_run",
]
CONVERT = ["--output_dir", "tower", "--weights", "w.pth"]
EXPORT = ["--model_name_or_path", "m", "--output_dir", "m-onnx", "--num_inference_steps", "3", "--atol", "1e-3"]
EXPORT += ["--trust_remote_code"]

CASES = {
    "marnet-train": (parse_train_args, TrainArguments, [TRAIN_NEW_MODEL, TRAIN_CHECKPOINT]),
    "marnet-eval": (parse_eval_args, EvalArguments, [EVAL]),
    "marnet-export": (parse_export_args, ExportArguments, [EXPORT]),
    "marnet-publish": (parse_publish_args, PublishArguments, [PUBLISH]),
    "marnet-data": (parse_data_args, BuildArguments, [DATA]),
    "marnet-convert-efficientnet": (parse_convert_args, ConvertArguments, [CONVERT]),
}


def dashed(argv):
    """`--output_dir=x` -> `--output-dir=x`: the option names only, values untouched."""
    return [
        arg.split("=", 1)[0].replace("_", "-") + arg[len(arg.split("=", 1)[0]) :] if arg.startswith("--") else arg
        for arg in argv
    ]


@pytest.mark.parametrize("command", list(CASES))
def test_underscore_and_dash_spellings_parse_identically(command):
    parse, options_class, argvs = CASES[command]
    for argv in argvs:
        assert dashed(argv) != argv
        assert parse(dashed(argv)) == parse(argv)
    given = {arg[2:].split("=")[0] for argv in argvs for arg in argv if arg.startswith("--")}
    positional = {field.name for field in dataclasses.fields(options_class) if field.metadata.get("positional")}
    untested = {field.name for field in dataclasses.fields(options_class)} - given - positional - {"config"}
    assert not untested, f"options of {command} missing from this test: {untested}"


@pytest.mark.parametrize(
    "parse, old, new",
    [
        (
            parse_eval_args,
            ["--model", "m", "--dataset", "d", "--batch-size", "4", "--output", "o.json"],
            [
                "--model_name_or_path",
                "m",
                "--dataset",
                "d",
                "--per_device_eval_batch_size",
                "4",
                "--metrics_file",
                "o.json",
            ],
        ),
        (
            parse_eval_args,
            [
                "--model",
                "m",
                "--dataset_name",
                "d",
                "--split",
                "a",
                "--split",
                "b",
                "--image_column_name",
                "i",
                "--label_column_name",
                "l",
            ],
            ["--model", "m", "--dataset", "d", "--split", "a", "b", "--image_column", "i", "--label_column", "l"],
        ),
        (
            parse_publish_args,
            ["run", "--repo-id", "o/m", "--private", "--revision", "b"],
            ["run", "--hub_model_id", "o/m", "--hub_private_repo", "--hub_revision", "b"],
        ),
        (
            parse_data_args,
            ["build", "openclipart", "--output", "o", "--config", "food", "--push-to-hub", "o/d", "--private"],
            [
                "build",
                "openclipart",
                "--output_dir",
                "o",
                "--dataset_config_name",
                "food",
                "--push_to_hub",
                "o/d",
                "--hub_private_repo",
            ],
        ),
        (parse_convert_args, ["--output", "t"], ["--output_dir", "t"]),
        (
            parse_train_args,
            [
                "--dataset_name",
                "d",
                "--vision-model",
                "v",
                "--output-dir",
                "o",
                "--label_smoothing",
                "0.1",
                "--save_steps",
                "9",
                "--evaluation_strategy",
                "steps",
                "--project_name",
                "p",
                "--augment",
            ],
            [
                "--dataset",
                "d",
                "--vision_model",
                "v",
                "--output_dir",
                "o",
                "--label_smoothing_factor",
                "0.1",
                "--checkpointing_steps",
                "9",
                "--eval_strategy",
                "steps",
                "--project",
                "p",
                "--augment",
                "crop_flip",
            ],
        ),
    ],
    ids=["eval", "eval-hf-names", "publish", "data", "convert", "train"],
)
def test_old_and_transformers_names_are_aliases(parse, old, new):
    assert parse(old) == parse(new)


def test_config_file_is_read_with_either_spelling_and_the_command_line_wins(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "dataset: d\nvision-model: v\noutput_dir: o\nlearning_rate: 1.0e-3\naugment: true\nreport_to: "
        "none\nmarnet_config:\n  projection_dim: 8\nlr_scheduler_kwargs: {min_lr: 0}\n"
    )
    from_file = parse_train_args(["--config", str(config_file), "--learning-rate", "0.5"])
    assert (from_file.learning_rate, from_file.augment, from_file.report_to) == (0.5, "crop_flip", [])
    assert from_file.marnet_config == {"projection_dim": 8} and from_file.lr_scheduler_kwargs == {"min_lr": 0}
    alone = parse_train_args([str(config_file)])  # the file as the only argument, as in transformers' examples
    assert alone == dataclasses.replace(from_file, learning_rate=1e-3)
    json_file = tmp_path / "run.json"
    json_file.write_text('{"dataset": "d", "vision_model": "v", "output_dir": "o", "marnet_config": ["a=1"]}')
    assert parse_train_args([str(json_file)]).marnet_config == {"a": 1}
    extended = parse_train_args(["--config", str(json_file), "--marnet_config", "b=2"])
    assert extended.marnet_config == {"a": 1, "b": 2}  # repeatable options add to the file's entries


@pytest.mark.parametrize(
    "content, message",
    [
        ("learning_rte: 0.1\n", "unknown option(s) ['learning_rte']. Valid keys: "),
        ("max_steps: 2.5\n", "`max_steps` must be an integer, got 2.5."),
        ("learning_rate: fast\n", "`learning_rate` must be a number, got 'fast'."),
        ("eval_strategy: hourly\n", "`eval_strategy` must be one of epoch, steps, no, got 'hourly'."),
        ("augment: sideways\n", "`augment` must be one of none, crop_flip"),
        ("push_to_hub: maybe\n", "`push_to_hub` must be true or false (a YAML/JSON boolean, unquoted), got 'maybe'."),
        # Strings are not booleans: bool("no") is True, and this one would have deleted a finished run.
        (
            'overwrite_output_dir: "no"\n',
            "`overwrite_output_dir` must be true or false (a YAML/JSON boolean, unquoted), got 'no'.",
        ),
        (
            'augment: "false"\n',
            "`augment` must be one of none, crop_flip, randaugment, trivialaugment, autoaugment, got 'false'.",
        ),
        (
            "mixed_precision: no\n",
            "`mixed_precision` must be one of no, fp16, bf16, got False. YAML reads unquoted no/yes/off/on as",
        ),
        ("- dataset\n", "expected a mapping of option names to values, got list."),
        ("dataset: [unclosed\n", "not valid YAML"),
    ],
)
def test_config_file_errors_name_the_file_and_key(tmp_path, capsys, content, message):
    from marnet_cli.commands import train

    config_file = tmp_path / "run.yaml"
    config_file.write_text(content)
    assert train(["--config", str(config_file), "--dataset", "d", "--vision_model", "v", "--output_dir", "o"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"marnet-train: error: --config {config_file}: ") and message in error


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--vision_model", "v", "--output_dir", "o"], "Give exactly one dataset: --dataset_name"),
        (
            ["--dataset", "d", "--vision_model", "v", "--output_dir", "o", "--learning_rate", "0"],
            "--learning_rate must be a finite number > 0, got 0.0.",
        ),
        (
            ["--dataset", "d", "--vision_model", "v", "--output_dir", "o", "--push_to_hub"],
            "--push_to_hub needs --hub_model_id owner/name",
        ),
        (
            ["--dataset", "d", "--vision_model", "v", "--output_dir", "o", "--hub_model_id", "o/m"],
            "--hub_model_id apply with --push_to_hub",
        ),
        (
            ["--dataset", "d", "--vision_model", "v", "--output_dir", "o", "--ignore_mismatched_sizes"],
            "--ignore_mismatched_sizes applies to --model_name_or_path checkpoints",
        ),
        (
            ["--dataset", "d", "--vision_model", "v", "--output_dir", "o", "--report_to", "none", "wandb"],
            "--report_to none cannot be combined with other trackers",
        ),
        (
            ["--dataset", "d", "--vision_model", "v", "--output_dir", "o", "--lr_scheduler_kwargs", "[1]"],
            "--lr_scheduler_kwargs must be a JSON object",
        ),
        (
            ["--dataset", "d", "--vision_model", "v", "--output_dir", "o", "--marnet_config", "projection_dim"],
            "--marnet_config expects FIELD=VALUE, got 'projection_dim'.",
        ),
    ],
)
def test_bad_values_are_usage_errors(capsys, argv, message):
    from marnet_cli.commands import train

    assert train(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("marnet-train: error: ") and message in error


def test_model_choices_match_the_model_package():
    """marnet_cli repeats the model's ablation, fusion and alignment names so that parsing imports no torch."""
    from modeling_marnet import ABLATIONS
    from modeling_marnet.alignment_losses import ALIGNMENT_LOSSES
    from modeling_marnet.configuration_marnet import FUSION_MODES as MODEL_FUSION_MODES

    assert ABLATION_NAMES == tuple(ABLATIONS) and FUSION_MODES == MODEL_FUSION_MODES
    assert ALIGNMENT_METHODS == tuple(ALIGNMENT_LOSSES)


@pytest.mark.parametrize(
    "command", ["marnet-train", "marnet-eval", "marnet-export", "marnet-publish", "marnet-data build"]
)
def test_help_shows_defaults_without_importing_torch(command):
    entry_points = {
        "marnet-train": "from marnet_cli.commands import train as main",
        "marnet-eval": "from marnet_cli.commands import evaluate as main",
        "marnet-export": "from marnet_cli.commands import export as main",
        "marnet-publish": "from hub_scripts.publish import main",
        "marnet-data build": "from dataset_scripts.cli import main",
    }
    argv = command.split()[1:] + ["--help"]
    script = (
        f"import sys\n{entry_points[command]}\nstatus = main({argv!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported before parsing'\nsys.exit(status)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, env=offline_env(), timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "(default: " in result.stdout and "--" in result.stdout


def test_malformed_command_line_is_argparse_usage_error(capsys):
    from marnet_cli.commands import evaluate

    assert evaluate(["--model_name_or_path", "m", "--dataset", "d", "--per_device_eval_batch_size", "many"]) == 2
    error = capsys.readouterr().err
    assert "marnet-eval: error: argument --per_device_eval_batch_size" in error and "invalid int value" in error


def test_config_files_are_named_for_what_they_are(tmp_path, capsys):
    """A JSON file with a byte-order mark is valid JSON; a link to a device is not a missing file."""
    from marnet_cli.commands import train

    with_bom = tmp_path / "run.json"
    with_bom.write_text('{"augment": "cutout"}', encoding="utf-8-sig")
    device = tmp_path / "device.yaml"
    device.symlink_to("/dev/zero")
    argv = ["--dataset", "d", "--vision_model", "v", "--output_dir", "o", "--config"]
    assert train([*argv, str(with_bom)]) == 2
    assert "`augment` must be one of none, crop_flip" in capsys.readouterr().err  # read, then checked
    assert train([*argv, str(device)]) == 2
    assert f"error: --config {device} is a character device, not a regular file." in capsys.readouterr().err
