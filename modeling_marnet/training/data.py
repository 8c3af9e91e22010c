"""Datasets for MARNet: loading the dataset and its splits, and checking them (the examples and batches made from
them are in `batches.py`).

The datasets built by `dataset_scripts` hold `image` (datasets.Image), `label` (ClassLabel), `text` (the privileged
text), `ingredients` and `image_id` (docs/datasets.md). Any dataset with an image column and a ClassLabel column
works.
"""

from dataclasses import dataclass
from pathlib import Path

import datasets

from marnet_cli.errors import CLIError

from .image_paths import dataset_folders


def load_image_folders(train_dir, validation_dir=None):
    """A `DatasetDict` with `train` (and `validation`) read by datasets' `imagefolder` from folders of class
    sub-folders (`root/<class>/<image>`): an `image` column and a ClassLabel `label` named after the sub-folders."""
    for option, folder in (("--train_dir", train_dir), ("--validation_dir", validation_dir)):
        if folder is not None and not Path(folder).is_dir():
            raise CLIError(f"{option} {folder}: not a folder; expected class sub-folders (root/<class>/<image>).")
    data_files = {"train": str(Path(train_dir) / "**")}
    if validation_dir is not None:
        data_files["validation"] = str(Path(validation_dir) / "**")
    return datasets.load_dataset("imagefolder", data_files=data_files)


def load_image_dataset(name_or_path, config_name=None):
    """A `DatasetDict` from a `save_to_disk` directory, a Parquet file, a directory of Parquet files (split names in
    the file names, as `push_to_hub` writes them) or a Hub id (of configuration `config_name`, if given)."""
    path = Path(name_or_path)
    try:
        if (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))
        if (path / "state.json").is_file():
            raise CLIError(
                f"--dataset {path}: a single saved split, not a DatasetDict. Save the splits together with "
                "`DatasetDict({'train': ..., 'validation': ...}).save_to_disk(...)`."
            )
        if path.is_file():
            if path.suffix != ".parquet":
                raise CLIError(
                    f"--dataset {path}: expected a .parquet file or a directory, got a "
                    f"{path.suffix or 'suffix-less'} file."
                )
            return datasets.load_dataset("parquet", data_files={"train": str(path)})
        return datasets.load_dataset(str(name_or_path), config_name)
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as error:
        raise CLIError(
            f"--dataset {name_or_path}: cannot load it ({error}). Give a `save_to_disk` directory, Parquet files, "
            "or a Hub id (a Hub id needs network access or a copy in the local Hugging Face cache)."
        ) from None


def check_split(dataset_dict, split, option):
    """The split, or an error naming the option to change and the splits there are."""
    if split not in dataset_dict:
        raise CLIError(
            f"The dataset has no split {split!r} (splits: {', '.join(dataset_dict)}). Pass {option} with one of them."
        )
    return dataset_dict[split]


def class_names(dataset, label_column):
    """The label names of the ClassLabel column, in id order."""
    feature = dataset.features.get(label_column)
    if not isinstance(feature, datasets.ClassLabel):
        raise CLIError(
            f"Column {label_column!r} must be a datasets.ClassLabel (its names become the model's id2label), got "
            f"{type(feature).__name__ if feature is not None else 'no such column'}. Convert it with "
            f"`dataset.class_encode_column({label_column!r})` or pass --label_column."
        )
    return list(feature.names)


def check_columns(dataset, split, columns):
    """Every column of `columns` ({option: column}) exists in the split."""
    for option, column in columns.items():
        if column not in dataset.column_names:
            raise CLIError(
                f"Split {split!r} has no column {column!r} (columns: {', '.join(dataset.column_names)}). Pass "
                f"{option} with the right name."
            )


def check_label_range(dataset, split, label_column, num_labels):
    """All labels in [0, num_labels): a bad id fails here, not in the loss in the middle of an epoch."""
    labels = dataset.with_format("numpy")[label_column][:]  # (N,)
    if len(labels) == 0:
        raise CLIError(f"Split {split!r} is empty.")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_labels:
        raise CLIError(
            f"Split {split!r}, column {label_column!r}: labels must be in [0, {num_labels - 1}] (the ClassLabel has "
            f"{num_labels} names), got values from {low} to {high}. Fix the labels or the ClassLabel names."
        )


@dataclass
class Splits:
    """The splits of a run (`validation` and `test` may be None), the ClassLabel names, in id order, and the folders
    the images stored as paths may be read from (`image_paths.dataset_folders`)."""

    train: datasets.Dataset
    validation: datasets.Dataset | None
    test: datasets.Dataset | None
    label_names: list
    image_folders: tuple = ()


def hold_out_validation(train, fraction, seed, label_column):
    """(train, validation): `fraction` of the rows held out, stratified by label, reproducibly for `seed`."""
    try:
        parts = train.train_test_split(test_size=fraction, seed=seed, stratify_by_column=label_column)
    except ValueError as error:
        raise CLIError(
            f"--train_val_split {fraction}: cannot hold out a stratified validation split ({error}). "
            "Use a larger fraction or a dataset with a validation split."
        ) from None
    return parts["train"], parts["test"]


def load_splits(args):
    """The training, validation and test splits named by the options, checked before anything runs.

    Without a `--validation_split` split in the dataset, `--train_val_split` holds one out of the training rows. The
    validation split is required unless nothing is evaluated during training and the test split exists.
    `--max_train_samples` / `--max_eval_samples` then keep the first rows.
    """
    if args.train_dir:
        dataset = load_image_folders(args.train_dir, args.validation_dir)
    else:
        dataset = load_image_dataset(args.dataset, args.dataset_config_name)
    train = check_split(dataset, args.train_split, "--train_split")
    label_names = class_names(train, args.label_column)
    validation = test = None
    if args.validation_split in dataset:
        if args.train_val_split is not None:
            raise CLIError(
                f"The dataset has a {args.validation_split!r} split, so --train_val_split "
                f"{args.train_val_split} would not be used: drop it, or name a split to hold out with "
                "--validation_split."
            )
        validation = dataset[args.validation_split]
    elif args.train_val_split is not None:
        train, validation = hold_out_validation(train, args.train_val_split, args.seed, args.label_column)
    elif args.eval_strategy != "no" or args.test_split not in dataset:
        raise CLIError(
            f"The dataset has no split {args.validation_split!r} (splits: {', '.join(dataset)}). Pass "
            f"--validation_split with one of them, or --train_val_split 0.15 to hold out part of "
            f"{args.train_split!r}."
        )
    if args.test_split in dataset:
        test = dataset[args.test_split]
    named = {args.train_split: train, args.validation_split: validation, args.test_split: test}
    for split_name, split in named.items():
        if split is not None:
            check_columns(
                split, split_name, {"--image_column": args.image_column, "--label_column": args.label_column}
            )
            check_label_range(split, split_name, args.label_column, len(label_names))
    if args.max_train_samples is not None:
        train = first_rows(train, args.max_train_samples)
    if args.max_eval_samples is not None:
        validation, test = (first_rows(split, args.max_eval_samples) for split in (validation, test))
    # An image-folder dataset (--train_dir/--validation_dir) names files in both folders.
    validation_dir = args.validation_dir if args.train_dir else None
    own_folders = (*dataset_folders(args.dataset), *(dataset_folders(validation_dir) if validation_dir else ()))
    return Splits(train, validation, test, label_names, tuple(own_folders))


def first_rows(split, count):
    """The first `count` rows of `split` (all of them if it has fewer; None stays None)."""
    return None if split is None else split.select(range(min(count, len(split))))
