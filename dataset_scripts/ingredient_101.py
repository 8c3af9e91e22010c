"""Ingredient-101 (Bolanos, Ferra, Radeva, 2017): per-class ingredient lists over Food-101 images.

Raw layout (see docs/datasets.md)::

    <root>/annotations/classes.txt                    101 names, Food-101 order
    <root>/annotations/ingredients.txt                line i = "a,b,c" ingredients of class i
    <root>/annotations/ingredients_simplified.txt     same, simplified vocabulary (config "simplified")
    <root>/annotations/{train_images|train_split}.txt, {val_images|val_split}.txt, {test_images|test}.txt
    <root>/annotations/{train,val,test}_labels.txt    one 0-based class index per line
    <food101_root>/images/<class>/<id>.jpg

Every image of a class has that class's ingredient list. The vocabulary is sorted (the official
script's frequency order is not deterministic); class labels keep classes.txt order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .builder_base import RawImageBuilder, RawImageConfig, RawIndex
from .food_101 import read_food101_split
from .raw_files import RawDataError, find_file, read_lines, read_names, require_dir, require_file

HINT = "Unpack the Ingredient-101 annotations so that <root> holds annotations/."
#: Split name -> accepted spellings of its image list (both exist in the wild).
SPLIT_FILES = {
    "train": ("train_images.txt", "train_split.txt"),
    "validation": ("val_images.txt", "val_split.txt"),
    "test": ("test_images.txt", "test.txt"),
}
LABEL_FILES = {"train": "train_labels.txt", "validation": "val_labels.txt", "test": "test_labels.txt"}


@dataclass
class Ingredient101Config(RawImageConfig):
    """Ingredient-101 config.

    Args:
        ingredients_file (`str`): "ingredients.txt" (config "default") or "ingredients_simplified.txt"
            (config "simplified").
        food101_dir (`str`, *optional*): root of Food-101 (holding images/); defaults to `data_dir`.
    """

    ingredients_file: str = "ingredients.txt"
    food101_dir: str | None = None


def parse_ingredient_line(line: str) -> list[str]:
    """Split a comma-separated ingredient line: strip, lowercase, drop empty tokens and repeats."""
    names: list[str] = []
    for token in line.split(","):
        name = token.strip().lower()
        if name and name not in names:
            names.append(name)
    return names


def read_labels(path: Path, num_classes: int) -> list[tuple[int, int]]:
    """Read a labels file as `(line, class index)` pairs, checking every index is in range."""
    labels = []
    for number, line in read_lines(path):
        text = line.strip()
        if not text.isdigit() or int(text) >= num_classes:
            raise RawDataError(
                f"{path}:{number}: label {text!r} is not a class index in 0..{num_classes - 1} (classes.txt order)."
            )
        labels.append((number, int(text)))
    return labels


class Ingredient101(RawImageBuilder):
    """Builder for Ingredient-101 annotations over the Food-101 images."""

    BUILDER_CONFIG_CLASS = Ingredient101Config
    BUILDER_CONFIGS = [
        Ingredient101Config(name="default", ingredients_file="ingredients.txt"),
        Ingredient101Config(name="simplified", ingredients_file="ingredients_simplified.txt"),
    ]
    DEFAULT_CONFIG_NAME = "default"
    DESCRIPTION = (
        "Ingredient-101: the Food-101 images (101 dishes) with a per-class ingredient list; "
        "train 68,175 / validation 7,575 / test 25,250."
    )
    HOMEPAGE = "http://www.ub.edu/cvub/ingredients101/"
    LICENSE = "other"  # annotations from the authors; images are Food-101's (research use)
    CITATION = """@inproceedings{bolanos2017food,
  title={Food Ingredients Recognition Through Multi-label Learning},
  author={Bola{\\~n}os, Marc and Ferr{\\`a}, Aina and Radeva, Petia},
  booktitle={International Conference on Image Analysis and Processing},
  pages={394--402},
  year={2017}
}"""
    RAW_DATA_INSTRUCTIONS = (
        f"Download the Ingredient-101 annotations from {HOMEPAGE} and the Food-101 images from "
        "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/, unpack both, and run "
        "`marnet-data build ingredient-101 --data-dir <ingredient-101 root> --food101-dir <food-101 root> "
        "--output <dir>` (add `--config simplified` for the simplified vocabulary)."
    )

    def _read_index(self, data_dir: Path) -> RawIndex:
        annotations = require_dir(data_dir / "annotations", "annotation directory", HINT)
        food101_root = Path(self.config.food101_dir).expanduser() if self.config.food101_dir else data_dir
        images = require_dir(
            food101_root / "images",
            "Food-101 image directory",
            "Pass food101_dir=<Food-101 root holding images/> (--food101-dir).",
        )
        class_names = read_names(require_file(annotations / "classes.txt", "class list", HINT), "class name")
        class_ingredients = self._read_class_ingredients(annotations / self.config.ingredients_file, len(class_names))
        vocabulary = sorted({name for names in class_ingredients for name in names})
        vocabulary_index = {name: index for index, name in enumerate(vocabulary)}

        splits = {}
        for split, spellings in SPLIT_FILES.items():
            split_file = find_file(annotations, spellings, f"{split} split file")
            labels_file = require_file(annotations / LABEL_FILES[split], f"{split} labels file", HINT)
            labels = read_labels(labels_file, len(class_names))
            num_entries = len(read_lines(split_file))
            if num_entries != len(labels):
                raise RawDataError(
                    f"{split_file} has {num_entries} lines but {labels_file} has {len(labels)}; "
                    "line n of both must describe the same image."
                )
            examples = read_food101_split(split_file, images, class_names, labels)
            splits[split] = [
                replace(
                    example,
                    ingredients=tuple(vocabulary_index[name] for name in class_ingredients[example.label]),
                    text=", ".join(class_ingredients[example.label]),
                )
                for example in examples
            ]
        return RawIndex(class_names=class_names, ingredient_names=vocabulary, splits=splits)

    @staticmethod
    def _read_class_ingredients(path: Path, num_classes: int) -> list[list[str]]:
        lines = read_lines(require_file(path, "ingredient file", HINT))
        if len(lines) != num_classes:
            raise RawDataError(
                f"{path} has {len(lines)} lines, expected {num_classes} "
                "(line i = ingredients of class i in classes.txt)."
            )
        class_ingredients = []
        for number, line in lines:
            names = parse_ingredient_line(line)
            if not names:
                raise RawDataError(f"{path}:{number}: no ingredient names; expected a comma-separated list.")
            class_ingredients.append(names)
        return class_ingredients
