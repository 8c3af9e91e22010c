"""Checks of the data a run trains on, each where it is cheap: the privileged text column and the classes before the
first step, each image where it is decoded (decoding every image up front would cost a pass over the dataset). Every
error names the split and the row, and what to do about it."""

import datasets
import PIL.Image
from accelerate.logging import get_logger

from marnet_cli.errors import CLIError

from .pixel_limit import RefusedImage

logger = get_logger(__name__)

# What TorchCodec's and PIL's decoders raise on truncated, corrupt or hostile image bytes.
DECODE_ERRORS = (OSError, RuntimeError, ValueError, SyntaxError, PIL.Image.DecompressionBombError)
TEXT_DTYPES = ("string", "large_string")


def check_text_column(dataset, split, column):
    """The privileged text of `split`: a string column with a text in every row and not all of them empty (a
    tokenizer would otherwise fail in the middle of an epoch, or the text would carry nothing)."""
    feature = dataset.features[column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in TEXT_DTYPES):
        raise CLIError(
            f"Split {split!r}, column {column!r}: the privileged text must be one string per row "
            f"(datasets.Value('string')), got {feature}. Join it into a string per row (e.g. `dataset.map(lambda row: "
            f"{{{column!r}: ', '.join(row[{column!r}])}})`), or pass --text_column with a string column."
        )
    texts = dataset[column]
    missing = [row for row, text in enumerate(texts) if text is None]
    if missing:
        raise CLIError(
            f"Split {split!r}, column {column!r}: {len(missing)} of {len(texts)} rows have no text (None), first "
            f"rows {missing[:5]}. Fill them (an empty string is allowed) or drop those rows."
        )
    empty = sum(not text.strip() for text in texts)
    if empty == len(texts):
        raise CLIError(
            f"Split {split!r}, column {column!r}: all {len(texts)} texts are empty, so the privileged text would "
            "carry nothing. Check --text_column, or train visual-only with --ablation baseline."
        )
    if empty:
        logger.warning(
            f"Split {split!r}, column {column!r}: {empty} of {len(texts)} texts are empty.", main_process_only=True
        )


def ingredient_vocabulary(dataset, split, column):
    """The ingredient names of `split`'s `column`, a list of `datasets.ClassLabel` per row (as Vireo-Food172's
    `ingredients`): the targets of the ingredient head, one output per name."""
    if column not in dataset.column_names:
        raise CLIError(
            f"The model trains an ingredient head (ingredient_loss_weight > 0), but split {split!r} has no {column!r} "
            f"column (columns: {', '.join(dataset.column_names)}). Pass --ingredient_column with the multi-label "
            "ingredient column, or train without the head (--ablation baseline, or --marnet_config "
            "ingredient_loss_weight=0)."
        )
    feature = dataset.features[column]
    inner = getattr(feature, "feature", None)  # datasets.List / Sequence hold the item feature in `.feature`
    if not isinstance(inner, datasets.ClassLabel):
        raise CLIError(
            f"Split {split!r}, column {column!r}: the ingredient targets must be a list of datasets.ClassLabel per "
            f"row (e.g. datasets.List(datasets.ClassLabel(names=[...]))), got {feature}. Cast the column "
            "(`dataset.cast_column(...)`), or pass --ingredient_column with such a column."
        )
    return list(inner.names)


def check_text_features(text_embeds, split, text_encoder):
    """The frozen encoder's (N, D) features of `split`: NaN or infinite ones would make every batch holding them
    diverge, so they are refused before training, naming the rows."""
    bad = (~text_embeds.isfinite().all(dim=-1)).nonzero().flatten().tolist()  # (K,) rows
    if bad:
        raise CLIError(
            f"--text_encoder {text_encoder} gives NaN or infinite features for {len(bad)} of {len(text_embeds)} texts "
            f"of split {split!r}, first rows {bad[:5]}. Check the encoder's weights and those texts."
        )


def warn_about_missing_classes(dataset, split, label_column, label_names):
    """Warns when `split` (the training split) lacks classes: with a single one, every prediction is that class and
    top-1 says nothing; with some absent, the model cannot learn those."""
    present = sorted(set(dataset.with_format("numpy")[label_column][:].tolist()))
    if len(present) < 2:
        names = [label_names[label] for label in present]
        logger.warning(
            f"Split {split!r} holds a single class ({', '.join(map(repr, names)) or 'none'}; the ClassLabel has "
            f"{len(label_names)}): the model can only learn to predict it, and top-1/top-5 accuracy will say nothing. "
            + ("With one class name the model is a regression (num_labels=1). " if len(label_names) == 1 else "")
            + "Check --label_column and the dataset.",
            main_process_only=True,
        )
    elif len(present) < len(label_names):
        absent = [name for label, name in enumerate(label_names) if label not in set(present)]
        logger.warning(
            f"Split {split!r} has no example of {len(absent)} of the {len(label_names)} classes "
            f"({', '.join(map(repr, absent[:5]))}{', ...' if len(absent) > 5 else ''}): the model cannot learn them. "
            "Check --label_column and the dataset.",
            main_process_only=True,
        )


def read_image(read, value, split, row):
    """`read(value)`, a step of reading or decoding the image of `row` of `split`; a [`CLIError`] naming them when
    the image is refused (`pixel_limit.RefusedImage`) or cannot be decoded. Raised in a DataLoader worker, it
    reaches the user as the same one line."""
    try:
        return read(value)
    except RefusedImage as error:
        raise bad_image(split, row, value, str(error), fix=None) from None
    except DECODE_ERRORS as error:
        first_line = (str(error).splitlines() or [""])[0]
        raise bad_image(
            split, row, value, f"the image cannot be decoded ({type(error).__name__}: {first_line})"
        ) from None


def decoded(decode, value, split, row):
    """`decode(value)`, the uint8 image (3, H, W) of `row` of `split`; a [`CLIError`] naming them as
    [`read_image`] does, or when the image has no pixels."""
    image = read_image(decode, value, split, row)
    if image.shape[-1] == 0 or image.shape[-2] == 0:
        raise bad_image(split, row, value, f"the image is empty ({image.shape[-1]}x{image.shape[-2]} pixels)")
    return image


BAD_IMAGE_FIX = (
    "Remove that row (e.g. `dataset.filter`), or rebuild the dataset with `marnet-data build --skip_bad_images`"
)


def bad_image(split, row, value, reason, fix=BAD_IMAGE_FIX):
    """The [`CLIError`] for the image of `row` of `split`: `reason`, then `fix` (None: the reason says it)."""
    path = value.get("path") if isinstance(value, dict) else None
    where = f"Split {split!r}, row {row}" if split is not None else f"Row {row}"
    return CLIError(f"{where}{f' ({path})' if path else ''}: {reason}.{f' {fix}.' if fix else ''}")
