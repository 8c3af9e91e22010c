"""Bad data fails before the first step where checking is cheap, and otherwise where it is met, naming the split and
the row: missing or non-string or all-empty privileged text, an image that cannot be decoded (also in a DataLoader
worker); a one-class training split is announced."""

import logging

import datasets
import pytest
from accelerate import PartialState

from marnet_cli.commands import train as main
from modeling_marnet.training.data_checks import warn_about_missing_classes
from train_fixtures import (
    CLASS_COLOURS,
    make_dataset_dict,
    save_dataset,
    train_argv,
)


def train_args(workspace, dataset, output_dir, *extra):
    return train_argv(workspace, output_dir, "--max-steps", 2, "--checkpointing-steps", 0, *extra, dataset=dataset)


def with_train_texts(texts, feature=None):
    splits = make_dataset_dict()
    train = splits["train"].remove_columns("text")
    splits["train"] = train.add_column("text", texts, feature=feature or datasets.Value("string"))
    return splits


def expect_error(capsys, argv, *fragments):
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("marnet-train: error: "), error
    for fragment in fragments:
        assert fragment in error, error


@pytest.mark.parametrize(
    "texts, feature, fragments",
    [
        (
            ["tomato"] * 5 + [None] + ["pea"] * 17 + [None],
            None,
            ("Split 'train', column 'text': 2 of 24 rows have no text (None), first rows [5, 23].", "Fill them"),
        ),
        (
            [["tomato", "flour"]] * 24,
            datasets.List(datasets.Value("string")),
            ("Split 'train', column 'text': the privileged text must be one string per row", "--text_column"),
        ),
        (
            ["", " ", "\n"] * 8,
            None,
            ("Split 'train', column 'text': all 24 texts are empty", "--ablation baseline"),
        ),
    ],
    ids=["none-in-text", "list-not-string", "all-empty"],
)
def test_bad_privileged_text_fails_before_training(workspace, tmp_path, capsys, texts, feature, fragments):
    dataset = save_dataset(tmp_path / "dataset", with_train_texts(texts, feature))
    expect_error(capsys, train_args(workspace, dataset, tmp_path / "out"), *fragments)
    assert not (tmp_path / "out" / "logs").exists()  # stopped before the output folder was started


def with_broken_image(split, row):
    """The fixture dataset with the image of `row` in `split` truncated to its first 40 bytes."""
    splits = make_dataset_dict()
    encoded = splits[split].cast_column("image", datasets.Image(decode=False))

    def truncate(example, index):
        if index == row:
            example["image"] = {"bytes": example["image"]["bytes"][:40], "path": "dishes/broken.png"}
        return example

    splits[split] = encoded.map(truncate, with_indices=True).cast_column("image", datasets.Image())
    return splits


@pytest.mark.parametrize("workers", [0, 2])
def test_an_undecodable_image_is_named_by_split_and_row(workspace, tmp_path, capsys, workers):
    dataset = save_dataset(tmp_path / "dataset", with_broken_image("validation", 7))
    argv = train_args(workspace, dataset, tmp_path / "out", "--dataloader-num-workers", workers)
    expect_error(
        capsys,
        argv,
        "Split 'validation', row 7 (broken.png): the image cannot be decoded (",
        "marnet-data build --skip_bad_images",
    )
    assert "Traceback" not in capsys.readouterr().err


def test_a_one_class_training_split_is_announced(workspace, tmp_path, caplog):
    splits = make_dataset_dict()
    splits["train"] = splits["train"].filter(lambda row: row["label"] == 1)
    dataset = save_dataset(tmp_path / "dataset", splits)
    with caplog.at_level(logging.WARNING):
        assert main(train_args(workspace, dataset, tmp_path / "out", "--ablation", "baseline")) == 0
    assert "Split 'train' holds a single class ('pea_soup'; the ClassLabel has 4)" in caplog.text
    assert "top-1/top-5 accuracy will say nothing" in caplog.text


def test_classes_absent_from_the_training_split_are_announced(caplog):
    PartialState(cpu=True)
    train = make_dataset_dict({"train": 12})["train"].filter(lambda row: row["label"] != 2)
    with caplog.at_level(logging.WARNING):
        warn_about_missing_classes(train, "train", "label", list(CLASS_COLOURS))
    assert "Split 'train' has no example of 1 of the 4 classes ('blueberry_pie'): the model cannot learn them" in (
        caplog.text
    )
