"""Vireo-Food172 (Chen & Ngo, ACM MM 2016): 172 Chinese dishes, 353 ingredient labels per image.

Raw layout (see docs/datasets.md)::

    <root>/ready_chinese_food/<cls>/<file>.jpg
    <root>/SplitAndIngreLabel/{TR,VAL,TE}.txt      "/<cls>/<file>.jpg", one per line
    <root>/SplitAndIngreLabel/IngreLabel.txt       "<path> v1 ... v353", values 1 / -1
    <root>/SplitAndIngreLabel/FoodList.txt         line n = class folder n
    <root>/SplitAndIngreLabel/IngredientList.txt   line j = ingredient column j
"""

from __future__ import annotations

from pathlib import Path

from .builder_base import RawExample, RawImageBuilder, RawIndex
from .raw_files import RawDataError, read_lines, read_names, require_dir, require_file

SPLIT_FILES = {"train": "TR.txt", "validation": "VAL.txt", "test": "TE.txt"}
HINT = "Request Vireo-Food172 from the VIREO group and unpack it so that <root> holds SplitAndIngreLabel/."


def read_ingredient_rows(path: Path, num_ingredients: int) -> dict[str, tuple[int, ...]]:
    """Map each image path of IngreLabel.txt to the indices of its ingredients marked 1."""
    rows: dict[str, tuple[int, ...]] = {}
    row_line: dict[str, int] = {}
    for number, line in read_lines(path):
        image_path, *values = line.split()
        if len(values) != num_ingredients:
            raise RawDataError(
                f"{path}:{number}: {len(values)} ingredient values for {image_path}, expected {num_ingredients} "
                "(one per line of IngredientList.txt)."
            )
        present = []
        for column, value in enumerate(values):
            if value == "1":
                present.append(column)
            elif value != "-1":
                raise RawDataError(
                    f"{path}:{number}: value {value!r} in ingredient column {column + 1} of {image_path}; "
                    "expected 1 (present) or -1 (absent)."
                )
        if image_path in rows:
            raise RawDataError(
                f"{path}:{number}: duplicate row for {image_path} (first on line {row_line[image_path]})."
            )
        rows[image_path] = tuple(present)
        row_line[image_path] = number
    return rows


class VireoFood172(RawImageBuilder):
    """Builder for raw Vireo-Food172: `label` follows FoodList.txt, `ingredients` IngredientList.txt."""

    DESCRIPTION = "Vireo-Food172: 110,241 images of 172 Chinese dishes with 353 ingredient labels per image."
    HOMEPAGE = "http://vireo.cs.cityu.edu.hk/VireoFood172/"
    LICENSE = "other"  # research use only, by request from the VIREO group
    CITATION = """@inproceedings{chen2016deep,
  title={Deep-based Ingredient Recognition for Cooking Recipe Retrieval},
  author={Chen, Jingjing and Ngo, Chong-Wah},
  booktitle={Proceedings of the 24th ACM International Conference on Multimedia},
  pages={32--41},
  year={2016}
}"""
    RAW_DATA_INSTRUCTIONS = (
        "Vireo-Food172 is for research use only and is not redistributed here. Request it from the VIREO group "
        f"({HOMEPAGE}), unpack it, and run `marnet-data build vireo-food172 --data-dir <root> --output <dir>`, "
        "where `<root>` holds `ready_chinese_food/` and `SplitAndIngreLabel/`."
    )

    def _read_index(self, data_dir: Path) -> RawIndex:
        annotations = require_dir(data_dir / "SplitAndIngreLabel", "annotation directory", HINT)
        images = require_dir(data_dir / "ready_chinese_food", "image directory", HINT)
        class_names = read_names(require_file(annotations / "FoodList.txt", "class list", HINT), "class name")
        ingredient_names = read_names(
            require_file(annotations / "IngredientList.txt", "ingredient list", HINT), "ingredient name"
        )
        rows_file = require_file(annotations / "IngreLabel.txt", "ingredient label file", HINT)
        rows = read_ingredient_rows(rows_file, len(ingredient_names))

        splits: dict[str, list[RawExample]] = {}
        for split, file_name in SPLIT_FILES.items():
            split_file = require_file(annotations / file_name, f"{split} split file", HINT)
            examples = []
            for number, line in read_lines(split_file):
                source = f"{split_file}:{number}"
                image_path = line.strip()
                label = self._label_of(image_path, source, len(class_names))
                if image_path not in rows:
                    raise RawDataError(f"{source}: {image_path} has no row in {rows_file}.")
                # Exact string concatenation: crawled names hold '+' and double extensions.
                image_file = str(images) + image_path
                if not Path(image_file).is_file():
                    raise RawDataError(f"{source}: listed image {image_file} does not exist.")
                ingredients = rows[image_path]
                examples.append(
                    RawExample(
                        image_id=image_path,
                        image_file=image_file,
                        stored_path=image_path.lstrip("/"),
                        label=label,
                        ingredients=ingredients,
                        text=", ".join(ingredient_names[index] for index in ingredients),
                        source=source,
                    )
                )
            splits[split] = examples
        return RawIndex(class_names=class_names, ingredient_names=ingredient_names, splits=splits)

    @staticmethod
    def _label_of(image_path: str, source: str, num_classes: int) -> int:
        """0-based class of a split-file path "/<cls>/<file>", from its 1-based class folder."""
        parts = image_path.split("/")
        if len(parts) != 3 or parts[0] != "" or not parts[1].isdigit() or parts[2] in ("", ".", ".."):
            raise RawDataError(f"{source}: {image_path!r} is not of the form /<class number>/<file name>.")
        folder = int(parts[1])
        if not 1 <= folder <= num_classes:
            raise RawDataError(
                f"{source}: class folder {folder} of {image_path} is out of range; FoodList.txt has "
                f"{num_classes} classes (folders 1..{num_classes})."
            )
        return folder - 1
