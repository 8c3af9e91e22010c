"""Food-101 (Bossard, Guillaumin, Van Gool, ECCV 2014): 101 dishes, images only.

Raw layout (see docs/datasets.md)::

    <root>/images/<class>/<id>.jpg
    <root>/meta/classes.txt           line order = label (NOT sorted: cheesecake before cheese_plate)
    <root>/meta/{train,test}.txt      "apple_pie/1005649", no extension

Food-101 has no ingredient annotation, so its features are `image`, `label` and `image_id` only
(no `ingredients`, no `text`); use Ingredient-101 for training with text. The official splits
are train and test (no validation split exists).
"""

from __future__ import annotations

from pathlib import Path

from .builder_base import RawExample, RawImageBuilder, RawIndex
from .raw_files import RawDataError, read_lines, read_names, require_dir, require_file

FOOD101_HINT = "Download food-101.tar.gz from the ETH Zurich page and unpack it; the root holds images/ and meta/."


def read_food101_split(
    split_file: Path,
    images_dir: Path,
    class_names: list[str],
    labels: list[tuple[int, int]] | None = None,
) -> list[RawExample]:
    """Parse a Food-101-style split file of "<class>/<id>" lines into examples without text.

    The label is the class folder's line in classes.txt. When `labels` gives `(line, index)` pairs
    read from a separate labels file (Ingredient-101), each must agree with the folder.
    """
    class_index = {name: index for index, name in enumerate(class_names)}
    lines = read_lines(split_file)
    examples = []
    for position, (number, line) in enumerate(lines):
        source = f"{split_file}:{number}"
        entry = line.strip()
        folder, _, image_name = entry.partition("/")
        if not folder or not image_name or "/" in image_name or image_name in (".", ".."):
            raise RawDataError(f"{source}: {entry!r} is not of the form <class>/<image id>.")
        if folder not in class_index:
            raise RawDataError(f"{source}: class folder {folder!r} of {entry} is not in classes.txt.")
        label = class_index[folder]
        if labels is not None:
            label_line, listed_label = labels[position]
            if listed_label != label:
                raise RawDataError(
                    f"{source}: {entry} is in folder {folder!r} (class {label}) but line {label_line} of the "
                    f"labels file says class {listed_label} ({class_names[listed_label]!r})."
                )
        image_file = images_dir / folder / f"{image_name}.jpg"
        if not image_file.is_file():
            raise RawDataError(f"{source}: listed image {image_file} does not exist.")
        examples.append(
            RawExample(
                image_id=entry,
                image_file=str(image_file),
                stored_path=f"{entry}.jpg",
                label=label,
                ingredients=(),
                text="",
                source=source,
            )
        )
    return examples


class Food101(RawImageBuilder):
    """Builder for raw Food-101: `label` follows meta/classes.txt; train and test splits."""

    DESCRIPTION = "Food-101: 101,000 images of 101 dishes (750 train and 250 test images per class)."
    HOMEPAGE = "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/"
    LICENSE = "other"  # images from foodspotting.com, research use
    CITATION = """@inproceedings{bossard14,
  title = {Food-101 -- Mining Discriminative Components with Random Forests},
  author = {Bossard, Lukas and Guillaumin, Matthieu and Van Gool, Luc},
  booktitle = {European Conference on Computer Vision},
  year = {2014}
}"""
    RAW_DATA_INSTRUCTIONS = (
        f"Download `food-101.tar.gz` from {HOMEPAGE}, unpack it, and run "
        "`marnet-data build food-101 --data-dir food-101 --output <dir>`."
    )

    def _read_index(self, data_dir: Path) -> RawIndex:
        meta = require_dir(data_dir / "meta", "meta directory", FOOD101_HINT)
        images = require_dir(data_dir / "images", "image directory", FOOD101_HINT)
        class_names = read_names(require_file(meta / "classes.txt", "class list", FOOD101_HINT), "class name")
        splits = {
            split: read_food101_split(
                require_file(meta / f"{split}.txt", f"{split} split file", FOOD101_HINT), images, class_names
            )
            for split in ("train", "test")
        }
        return RawIndex(class_names=class_names, ingredient_names=None, splits=splits)
