"""`marnet-data build`: saved datasets, every documented raw-data error, skipping bad images,
and the Hub path (Parquet + card written locally, loaded back; the real upload offline)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import huggingface_hub
import pytest
import yaml

from dataset_scripts.builder_base import RawImageBuilder
from dataset_scripts.cli import main
from raw_fixtures import (
    FOOD101_CLASSES,
    VIREO_CLASSES,
    VIREO_INGREDIENTS,
    VIREO_LABELS,
    VIREO_SPLITS,
    write_food101,
    write_ingredient101,
    write_vireo,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    status = main(["build", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def leftovers(directory: Path) -> list[str]:
    """Everything in `directory`: scratch folders must never be left behind."""
    return sorted(path.name for path in directory.iterdir())


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"fixture changed: {old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_build_saves_the_dataset_to_disk(tmp_path, capsys):
    raw = write_vireo(tmp_path / "raw")
    output = tmp_path / "out" / "vireo"
    status, out, _ = run_cli(capsys, "vireo-food172", "--data-dir", raw, "--output", output, "--num-proc", 2)

    assert status == 0
    assert "train: 4, validation: 1, test: 2 images, 11 classes" in out
    dataset_dict = datasets.load_from_disk(str(output))
    assert dataset_dict["train"].features["label"].names == VIREO_CLASSES
    assert {split: dataset["label"] for split, dataset in dataset_dict.items()} == VIREO_LABELS
    assert leftovers(output.parent) == ["vireo"]


def test_ingredient101_with_separate_food101_dir_and_simplified_config(tmp_path, capsys):
    annotations = write_ingredient101(tmp_path / "ingredient101", spelling="split")
    food101 = write_food101(tmp_path / "food-101")
    output = tmp_path / "i101"
    status, out, _ = run_cli(
        capsys, "ingredient-101", "--data-dir", annotations, "--food101-dir", food101, "--config", "simplified",
        "--output", output,
    )  # fmt: skip

    assert status == 0
    assert "ingredient-101 (simplified): train: 3, validation: 2, test: 3 images, 4 classes" in out
    features = datasets.load_from_disk(str(output))["train"].features
    assert features["label"].names == FOOD101_CLASSES
    assert features["ingredients"].feature.names == ["apple", "cheese", "flour", "grapes", "pork", "sauce", "sugar"]


VIREO = "SplitAndIngreLabel"
# (dataset, how to break the fixture, message pattern: file, line and what is wrong)
RAW_ERRORS = {
    "missing root": (
        "vireo-food172",
        lambda raw: raw.rename(raw.with_name("moved")),
        r"raw[/\\]?: raw data root not found",
    ),
    "missing split file": (
        "vireo-food172",
        lambda raw: (raw / VIREO / "TE.txt").unlink(),
        r"TE\.txt: test split file not found",
    ),
    "listed image missing": (
        "vireo-food172",
        lambda raw: (raw / "ready_chinese_food/10/8_5.jpg").unlink(),
        r"TR\.txt:3: listed image .*ready_chinese_food/10/8_5\.jpg does not exist",
    ),
    "wrong number of ingredient values": (
        "vireo-food172",
        lambda raw: replace_in(
            raw / VIREO / "IngreLabel.txt", "/1/8_5.jpg  1  1  -1  -1  -1\n", "/1/8_5.jpg  1  1  -1  -1\n"
        ),
        r"IngreLabel\.txt:6: 4 ingredient values for /1/8_5\.jpg, expected 5",
    ),
    "value other than 1/-1": (
        "vireo-food172",
        lambda raw: replace_in(raw / VIREO / "IngreLabel.txt", "/1/8_5.jpg  1  1  -1", "/1/8_5.jpg  1  1  0"),
        r"IngreLabel\.txt:6: value '0' in ingredient column 3 of /1/8_5\.jpg; expected 1 .* or -1",
    ),
    "class folder out of range": (
        "vireo-food172",
        lambda raw: replace_in(raw / VIREO / "TE.txt", "/3/100_2.jpg", "/12/100_2.jpg"),
        r"TE\.txt:2: class folder 12 of /12/100_2\.jpg is out of range; FoodList\.txt has 11 classes",
    ),
    "split path without label row": (
        "vireo-food172",
        lambda raw: replace_in(raw / VIREO / "IngreLabel.txt", "/3/100_2.jpg", "/3/100_3.jpg"),
        r"TE\.txt:2: /3/100_2\.jpg has no row in .*IngreLabel\.txt",
    ),
    "missing labels file": (
        "ingredient-101",
        lambda raw: (raw / "annotations/val_labels.txt").unlink(),
        r"val_labels\.txt: validation labels file not found",
    ),
    "missing split file, both spellings": (
        "ingredient-101",
        lambda raw: (raw / "annotations/test_images.txt").unlink(),
        r"test_images\.txt or .*test\.txt: test split file not found",
    ),
    "label index out of range": (
        "ingredient-101",
        lambda raw: replace_in(raw / "annotations/test_labels.txt", "1\n2\n", "1\n4\n"),
        r"test_labels\.txt:2: label '4' is not a class index in 0\.\.3",
    ),
    "labels disagree with folder": (
        "ingredient-101",
        lambda raw: replace_in(raw / "annotations/test_labels.txt", "1\n2\n", "1\n1\n"),
        r"test_images\.txt:2: cheese_plate/2005 is in folder 'cheese_plate' \(class 2\) "
        r"but line 2 .* class 1 \('cheesecake'\)",
    ),
    "split/labels line-count mismatch": (
        "ingredient-101",
        lambda raw: replace_in(raw / "annotations/train_labels.txt", "0\n1\n3\n", "0\n1\n3\n3\n"),
        r"train_images\.txt has 3 lines but .*train_labels\.txt has 4",
    ),
    "blank line inside a class list": (
        "vireo-food172",
        lambda raw: replace_in(raw / VIREO / "FoodList.txt", "Mapo tofu\n", "\nMapo tofu\n"),
        r"FoodList\.txt:3: empty line",
    ),
    "image listed twice": (
        "food-101",
        lambda raw: replace_in(raw / "meta/test.txt", "cheesecake/1004", "apple_pie/1011328"),
        r"test\.txt:1: apple_pie/1011328 is already listed at .*train\.txt:2",
    ),
    "food-101 class folder unknown": (
        "food-101",
        lambda raw: replace_in(raw / "meta/test.txt", "cheesecake/1004", "cheese_cake/1004"),
        r"test\.txt:1: class folder 'cheese_cake' of cheese_cake/1004 is not in classes\.txt",
    ),
}


@pytest.mark.parametrize("case", sorted(RAW_ERRORS))
def test_raw_data_errors_name_file_and_line_and_leave_no_output(tmp_path, capsys, case):
    dataset, break_fixture, message = RAW_ERRORS[case]
    raw = tmp_path / "raw"
    if dataset == "vireo-food172":
        write_vireo(raw)
    elif dataset == "ingredient-101":
        write_food101(write_ingredient101(raw))
    else:
        write_food101(raw)
    break_fixture(raw)
    output = tmp_path / "out" / "dataset"

    status, _, err = run_cli(capsys, dataset, "--data-dir", raw, "--output", output)

    assert status == 1
    error_line = [line for line in err.splitlines() if line.startswith("marnet-data: error:")]
    assert error_line, err
    assert re.search(message, error_line[0]), error_line[0]
    assert "Traceback" not in err
    assert leftovers(output.parent) == []


def truncate_image(raw: Path, path: str) -> None:
    image = raw / "ready_chinese_food" / path.lstrip("/")
    data = image.read_bytes()
    image.write_bytes(data[: len(data) - 40])  # header intact: only a full decode notices


@pytest.mark.parametrize("num_proc", [1, 2])
def test_unreadable_image_fails_with_file_and_split_line(tmp_path, capsys, num_proc):
    raw = write_vireo(tmp_path / "raw")
    truncate_image(raw, "/1/8_5.jpg")
    output = tmp_path / "out" / "vireo"

    status, _, err = run_cli(capsys, "vireo-food172", "--data-dir", raw, "--output", output, "--num-proc", num_proc)

    assert status == 1
    assert "ready_chinese_food/1/8_5.jpg (listed at " in err and "TR.txt:2): unreadable image" in err
    assert "--skip-bad-images" in err
    assert leftovers(output.parent) == []


def test_skip_bad_images_warns_with_count_and_first_ids(tmp_path, capsys, caplog):
    raw = write_vireo(tmp_path / "raw")
    truncate_image(raw, "/1/8_5.jpg")
    (raw / "ready_chinese_food/3/100_2.jpg").write_bytes(b"not an image")
    output = tmp_path / "vireo"

    status, _, _ = run_cli(capsys, "vireo-food172", "--data-dir", raw, "--output", output, "--skip-bad-images")

    assert status == 0
    assert "Skipped 2 unreadable images (train: 1, test: 1); first ids: /1/8_5.jpg, /3/100_2.jpg" in caplog.text
    dataset_dict = datasets.load_from_disk(str(output))
    assert dataset_dict["train"]["image_id"] == ["/1/16_1.jpg", "/10/8_5.jpg", "/2/1271640204.51_nature_6.jpg"]
    assert dataset_dict["test"]["image_id"] == ["/2/3.jpg_4.jpg"]


def card_metadata(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_dry_run_push_writes_parquet_and_card_that_load_dataset_reads_back(tmp_path, capsys):
    raw = write_vireo(tmp_path / "raw")
    hub_folder = tmp_path / "hub"
    status, out, _ = run_cli(
        capsys,
        "vireo-food172",
        "--data-dir",
        raw,
        "--push-to-hub",
        "my-org/vireo",
        "--private",
        "--dry-run",
        "--output",
        hub_folder,
    )

    assert status == 0
    assert "Dry run: would upload to dataset repo my-org/vireo (private=True)" in out
    for name in [
        "README.md",
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
        "data/test-00000-of-00001.parquet",
    ]:
        assert name in out and (hub_folder / name).is_file()

    metadata = card_metadata(hub_folder / "README.md")
    assert metadata["license"] == "other" and metadata["task_categories"] == ["image-classification"]
    assert metadata["size_categories"] == ["n<1K"]
    assert metadata["configs"][0]["data_files"] == [
        {"split": split, "path": f"data/{split}-*"} for split in ("train", "validation", "test")
    ]
    readme = (hub_folder / "README.md").read_text()
    assert "Chen, Jingjing and Ngo" in readme  # citation
    assert "## Getting the raw data" in readme and "Request it from the VIREO group" in readme

    expected = datasets.load_dataset(str(hub_folder), cache_dir=str(tmp_path / "cache-a"))
    from_parquet = datasets.load_dataset(
        "parquet", data_dir=str(hub_folder / "data"), cache_dir=str(tmp_path / "cache-b")
    )
    for loaded in (expected, from_parquet):
        assert list(loaded) == ["train", "validation", "test"]
        features = loaded["train"].features
        assert features["label"].names == VIREO_CLASSES
        assert features["ingredients"].feature.names == VIREO_INGREDIENTS
        assert isinstance(features["image"], datasets.Image)
        for split, entries in VIREO_SPLITS.items():
            assert loaded[split]["image_id"] == [path for path, _, _ in entries]
            assert loaded[split]["label"] == VIREO_LABELS[split]
            assert loaded[split]["ingredients"] == [present for _, present, _ in entries]
            raw_images = loaded[split].cast_column("image", datasets.Image(decode=False))["image"]
            assert [image["bytes"] for image in raw_images] == [
                (raw / "ready_chinese_food" / path.lstrip("/")).read_bytes() for path, _, _ in entries
            ]


def test_push_offline_fails_clearly_and_leaves_no_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    raw = write_food101(tmp_path / "raw")
    output = tmp_path / "out" / "food101"
    status, _, err = run_cli(
        capsys, "food-101", "--data-dir", raw, "--push-to-hub", "my-org/food101", "--output", output
    )

    assert status == 1
    assert "marnet-data: error: cannot push to my-org/food101:" in err and "offline mode is enabled" in err
    assert leftovers(output.parent) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["food-101", "--data-dir", "{raw}", "--output", "{raw}"], "already exists"),
        (["food-101", "--data-dir", "{raw}", "--output", "{tmp}/o", "--dry-run"], "only apply with --push_to_hub"),
        (["food-101", "--data-dir", "{raw}", "--push-to-hub", "o/n", "--dry-run"], "--output_dir DIR is required"),
        (
            ["food-101", "--data-dir", "{raw}", "--output", "{tmp}/o", "--config", "food"],
            "--dataset_config_name 'food' is not a config of food-101",
        ),
        (["openclipart", "--output", "{tmp}/o", "--config", "drinks"], "choose one of default, food"),
        (["food-101", "--output", "{tmp}/o"], "--data_dir is required for food-101"),
        (
            ["food-101", "--data-dir", "{raw}", "--output", "{tmp}/o", "--food101-dir", "{raw}"],
            "--food101_dir only applies",
        ),
        (
            ["food-101", "--data-dir", "{raw}", "--output", "{tmp}/o", "--num-proc", "0"],
            "--num_proc must be at least 1",
        ),
        (
            ["openclipart-dishes", "--output", "{tmp}/o", "--builder-option", "sed=1"],
            "--builder_option sed: openclipart-dishes has no such config field; it has seed, num_recipes,",
        ),
        (
            ["openclipart-dishes", "--output", "{tmp}/o", "--builder-option", "seed=0.5"],
            "--builder_option seed=0.5: expected int, got float.",
        ),
        (
            ["openclipart", "--output", "{tmp}/o", "--builder-option", "category=7"],
            "--builder_option category=7: expected str or null, got int.",
        ),
        (
            [
                "openclipart-dishes",
                "--output",
                "{tmp}/o",
                "--builder-option",
                "num_recipes=8",
                "recipes_per_ingredient=9",
            ],
            "--builder_option: `recipes_per_ingredient` must be between 2 (no ingredient names a recipe) and "
            "num_recipes (8), got 9.",
        ),
        (
            ["food-101", "--data-dir", "{raw}", "--output", "{tmp}/o", "--builder-option", "seed"],
            "expects FIELD=VALUE",
        ),
        (
            ["openclipart", "--output", "{tmp}/o", "--builder-option", "max_image_pixels=-1"],
            "--builder_option: `max_image_pixels` must be >= 1, got -1.",
        ),
        (
            ["openclipart-dishes", "--output", "{tmp}/o", "--builder-option", "max_image_pixels=0"],
            "--builder_option: `max_image_pixels` must be >= 1, got 0.",
        ),
        (["food-101", "--data-dir", "{raw}", "--output", "{tmp}/o", "--builder-option", "seed=1"], "it has none."),
        (
            ["ingredient-101", "--data-dir", "{raw}", "--output", "{tmp}/o", "--builder-option", "food101_dir=x"],
            "--builder_option food101_dir: ingredient-101 has no such config field; it has ingredients_file.",
        ),
    ],
)
def test_option_errors_exit_2_before_any_work(tmp_path, capsys, args, message):
    raw = write_food101(tmp_path / "raw")
    status, _, err = run_cli(capsys, *(arg.format(raw=raw, tmp=tmp_path) for arg in args))
    assert status == 2
    assert message in err
    assert not (tmp_path / "o").exists()


def test_console_entry_point_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dataset_scripts.cli",
            "build",
            "food-101",
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1
    assert f"marnet-data: error: {tmp_path / 'nowhere'}: raw data root not found" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- a hostile environment: disk, permissions, signals


def test_output_dir_that_is_a_dangling_symlink_is_refused_before_any_work(tmp_path, capsys):
    raw = write_vireo(tmp_path / "raw")
    link = tmp_path / "out" / "vireo"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "gone" / "vireo")
    status, _, err = run_cli(capsys, "vireo-food172", "--data-dir", raw, "--output", link)
    assert status == 2
    assert err.strip() == (
        f"marnet-data: error: --output_dir {link} is a symbolic link to {tmp_path / 'gone' / 'vireo'}, which does "
        "not exist: remove the link, create its target, or choose another path."
    )
    assert leftovers(link.parent) == ["vireo"] and link.is_symlink()


def test_unwritable_output_location_fails_before_the_build(tmp_path, capsys, monkeypatch):
    raw = write_vireo(tmp_path / "raw")
    output = tmp_path / "mnt" / "vireo"

    def read_only(prefix, dir):  # what mkdtemp meets on a read-only mount (chmod cannot stop root, who runs CI)
        raise OSError(errno.EROFS, "Read-only file system", str(Path(dir) / f"{prefix}x"))

    monkeypatch.setattr("dataset_scripts.cli.tempfile.mkdtemp", read_only)
    monkeypatch.setattr("dataset_scripts.cli.build_dataset", lambda *args, **kwargs: pytest.fail("built anyway"))
    status, _, err = run_cli(capsys, "vireo-food172", "--data-dir", raw, "--output", output)
    assert status == 1
    assert err.strip() == (
        f"marnet-data: error: --output_dir {output}: cannot write in {output.parent}: read-only file system: write "
        "to a writable location."
    )


def test_not_enough_space_is_refused_before_any_image_is_read(tmp_path, capsys, monkeypatch):
    raw = write_vireo(tmp_path / "raw")
    output = tmp_path / "out" / "vireo"
    image_bytes = sum(path.stat().st_size for path in (raw / "ready_chinese_food").rglob("*.jpg"))
    monkeypatch.setattr(
        "dataset_scripts.cli.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, image_bytes)
    )
    status, _, err = run_cli(capsys, "vireo-food172", "--data-dir", raw, "--output", output)
    assert status == 1
    assert re.search(
        rf"marnet-data: error: Not enough space to build vireo_food172: it needs about [\d.]+ MiB on the filesystem "
        rf"of {re.escape(str(output.parent))} \(its [\d.]+ MiB of images, in the build cache and in the result\), "
        r"and [\d.]+ MiB are free\. Free some space, or give an --output_dir on another disk\.",
        err,
    ), err
    assert leftovers(output.parent) == []


def test_disk_full_during_the_build_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    raw = write_vireo(tmp_path / "raw")
    output = tmp_path / "out" / "vireo"
    written = []

    def disk_fills_up(self, examples, with_text):
        for example in examples:
            if written:
                raise OSError(errno.ENOSPC, "No space left on device")  # as the Arrow writer raises it
            written.append(example)
            yield from original(self, [example], with_text)

    original = RawImageBuilder._generate_examples
    monkeypatch.setattr(RawImageBuilder, "_generate_examples", disk_fills_up)
    status, _, err = run_cli(capsys, "vireo-food172", "--data-dir", raw, "--output", output)
    assert status == 1
    assert re.fullmatch(
        rf"marnet-data: error: Building vireo-food172 failed: {re.escape(str(output.parent))}: no space left on "
        r"device: free some space or write to another disk \([\d.]+ MiB free there\)\.",
        err.strip().splitlines()[-1],
    ), err
    assert "Traceback" not in err
    assert leftovers(output.parent) == []


SIGTERM_DURING_BUILD = """
import os, signal, sys
from dataset_scripts.builder_base import RawImageBuilder
from dataset_scripts.cli import main

original = RawImageBuilder._generate_examples

def terminated_during_the_build(self, examples, with_text):
    os.kill(os.getpid(), signal.SIGTERM)  # as `kill <pid>` would, at a known point: the first image
    yield from original(self, examples, with_text)

RawImageBuilder._generate_examples = terminated_during_the_build
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_the_build_removes_every_scratch_folder(tmp_path):
    raw = write_vireo(tmp_path / "raw")
    output = tmp_path / "out" / "vireo"
    result = subprocess.run(
        [sys.executable, "-c", SIGTERM_DURING_BUILD, "build", "vireo-food172", "--data-dir", raw, "--output", output],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 128 + signal.SIGTERM
    assert result.stderr.strip().splitlines()[-1] == "marnet-data: error: stopped by SIGTERM."
    assert "Traceback" not in result.stderr
    assert leftovers(output.parent) == []
    assert leftovers(tmp_path) == ["out", "raw"]
