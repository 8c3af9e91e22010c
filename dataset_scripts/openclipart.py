"""OpenClipart 0.18 from Debian (`openclipart-png`, `openclipart-svg`): a real, public-domain,
offline stand-in for food-with-ingredients data.

Raw layout::

    <root>/png/<category>/[<sub-category>/...]<name>.png   the images (the builder's input)
    <root>/svg/<same relative path>.svg                     <cc:Work> metadata: <dc:title>,
                                                            <dc:description>, <rdf:li> keyword tags

What the builder makes of it:

- `label`: the top-level category (config "default"), or the sub-category under `food/`
  (config "food"; images directly under `food/` have no sub-category and are left out).
  Class names are the directory names in sorted order: the package has no official order.
- Many PNGs are symlinks filing one drawing under several directories. Each drawing appears once,
  under its real path: its label is the class of its real location when that is in scope,
  otherwise that of its first in-scope listing (sorted by path).
- `ingredients`: the cleaned keyword tags (stripped, lowercased; empty tags, "hash" and its
  "hash(0x...)" variants, and repeats dropped)
  over a sorted tag vocabulary. `text`: title, description and tags joined with ". ".
  Tags often name the class itself ("fruit", "dessert", "beverage"): the text is privileged
  information that makes the task easy when used at test time; this is a stand-in, not a benchmark.
- Drawings larger than `max_image_pixels` (PIL's decompression-bomb threshold by default; a few
  16000 px renders) are left out with a warning: no training loader can decode them in reasonable memory.
- Deterministic stratified split: per class, images sorted by id, shuffled with a seeded
  generator, then cut into test / validation / train by the configured fractions.
"""

from __future__ import annotations

import logging
import os
import random
import re
import warnings
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from datasets.utils import tqdm as hf_tqdm
from PIL import Image

from .builder_base import RawExample, RawImageBuilder, RawImageConfig, RawIndex
from .raw_files import RawDataError, require_dir

logger = logging.getLogger(__name__)

DEBIAN_ROOT = "/usr/share/openclipart"
HINT = "Install the Debian packages: apt-get install openclipart-png openclipart-svg."
CC_WORK = "{http://web.resource.org/cc/}Work"
NAMESPACES = {"dc": "http://purl.org/dc/elements/1.1/", "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#"}
#: Empty tags and "hash" / "hash(0x8a0b6a8)" (artefacts of the package export) are dropped.
DROPPED_TAG = re.compile(r"|hash|hash\(0x[0-9a-f]+\)")


@dataclass
class OpenClipartConfig(RawImageConfig):
    """OpenClipart config.

    Args:
        category (`str`, *optional*): None labels images by top-level category; a category name
            (e.g. "food") labels the images under it by their sub-category.
        seed (`int`, defaults to 0): seed of the stratified split.
        validation_fraction (`float`, defaults to 0.1), test_fraction (`float`, defaults to 0.2):
            share of each class in those splits (rounded; train keeps at least one image).
        max_image_pixels (`int`): drawings with more pixels are left out.
    """

    category: str | None = None
    seed: int = 0
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    max_image_pixels: int = 89_478_485  # PIL's default Image.MAX_IMAGE_PIXELS

    def __post_init__(self):
        super().__post_init__()
        if not (
            0 <= self.validation_fraction
            and 0 <= self.test_fraction
            and self.validation_fraction + self.test_fraction < 1
        ):
            raise ValueError(
                f"validation_fraction={self.validation_fraction} and test_fraction={self.test_fraction} must be "
                "non-negative and sum to less than 1."
            )
        if self.max_image_pixels < 1:
            raise ValueError(f"`max_image_pixels` must be >= 1, got {self.max_image_pixels}.")


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def read_svg_metadata(path: Path) -> tuple[str, str, list[str]]:
    """Title, description and cleaned tags of the first `<cc:Work>` in an SVG (empty when absent)."""
    try:
        for _, element in ElementTree.iterparse(path, events=("end",)):
            if element.tag == CC_WORK:
                title = _clean(element.findtext("dc:title", "", NAMESPACES))
                description = _clean(element.findtext("dc:description", "", NAMESPACES))
                tags: list[str] = []
                for item in element.iterfind("dc:subject/rdf:Bag/rdf:li", NAMESPACES):
                    tag = _clean(item.text).lower()
                    if not DROPPED_TAG.fullmatch(tag) and tag not in tags:
                        tags.append(tag)
                return title, description, tags
    except ElementTree.ParseError as error:
        raise RawDataError(f"{path}:{error.position[0]}: not valid XML ({error}).") from None
    return "", "", []


def join_text(title: str, description: str, tags: list[str]) -> str:
    """ "Title. Description. tag, tag" with empty or repeated parts left out."""
    parts: list[str] = []
    for part in (title.rstrip(". "), description.rstrip(". "), ", ".join(tags)):
        if part and part.lower() not in (seen.lower() for seen in parts):
            parts.append(part)
    return ". ".join(parts)


def pixel_count(path: Path) -> int:
    """Width x height from the image header (no decoding); oversized files count as too large."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                return image.width * image.height
        except Image.DecompressionBombError:
            return 2**63
        except OSError:
            return 0  # unreadable: reported when the builder checks the image bytes


def stratified_split(
    examples_by_class: dict[int, list[RawExample]], seed: int, validation_fraction: float, test_fraction: float
) -> dict[str, list[RawExample]]:
    """Cut each class into train / validation / test deterministically; each split sorted by id."""
    splits: dict[str, list[RawExample]] = {"train": [], "validation": [], "test": []}
    for label, examples in sorted(examples_by_class.items()):
        ordered = sorted(examples, key=lambda example: example.image_id)
        random.Random(f"{seed}/{label}").shuffle(ordered)
        num_test = round(len(ordered) * test_fraction)
        num_validation = round(len(ordered) * validation_fraction)
        while num_test + num_validation >= len(ordered) and num_test + num_validation > 0:
            if num_validation >= num_test:
                num_validation -= 1
            else:
                num_test -= 1
        splits["test"] += ordered[:num_test]
        splits["validation"] += ordered[num_test : num_test + num_validation]
        splits["train"] += ordered[num_test + num_validation :]
    return {split: sorted(examples, key=lambda example: example.image_id) for split, examples in splits.items()}


class OpenClipart(RawImageBuilder):
    """Builder for the Debian OpenClipart collection (defaults to /usr/share/openclipart)."""

    BUILDER_CONFIG_CLASS = OpenClipartConfig
    BUILDER_CONFIGS = [
        OpenClipartConfig(name="default", data_dir=DEBIAN_ROOT),
        OpenClipartConfig(name="food", data_dir=DEBIAN_ROOT, category="food"),
    ]
    DEFAULT_CONFIG_NAME = "default"
    DEFAULT_DATA_DIR = DEBIAN_ROOT
    DESCRIPTION = (
        "Public-domain clip art from OpenClipart 0.18 (Debian openclipart-png/openclipart-svg), labelled by "
        "category, with the SVG title, description and keyword tags as text."
    )
    HOMEPAGE = "https://openclipart.org/"
    LICENSE = "cc0-1.0"  # released to the public domain by the OpenClipart authors
    CITATION = """@misc{openclipart018,
  title = {Open Clip Art Library, release 0.18},
  howpublished = {\\url{https://openclipart.org/}, Debian packages openclipart-png and openclipart-svg},
  year = {2005}
}"""
    RAW_DATA_INSTRUCTIONS = (
        "On Debian or Ubuntu: `apt-get install openclipart-png openclipart-svg`, then "
        "`marnet-data build openclipart [--config food] --output <dir>` "
        "(the raw root defaults to /usr/share/openclipart)."
    )

    def _read_index(self, data_dir: Path) -> RawIndex:
        png_root = require_dir(data_dir / "png", "OpenClipart PNG directory", HINT)
        svg_root = require_dir(data_dir / "svg", "OpenClipart SVG directory", HINT)
        scope = self.config.category
        scope_root = require_dir(png_root / scope, f"category {scope!r}", HINT) if scope else png_root
        class_names = sorted(entry.name for entry in scope_root.iterdir() if entry.is_dir())
        class_index = {name: index for index, name in enumerate(class_names)}

        listings = self._listings_by_real_path(png_root)
        drawings = []  # (label, real path, listing path, title, description, tags)
        oversized, outside, multi_class = [], 0, 0
        for real_path, listed_paths in hf_tqdm(
            sorted(listings.items()), desc="Reading OpenClipart metadata", unit=" drawings"
        ):
            in_scope = [(path, self._class_of(path)) for path in listed_paths]
            in_scope = [(path, name) for path, name in in_scope if name is not None]
            if not in_scope:
                outside += 1
                continue
            own = [name for path, name in in_scope if path == real_path]
            label = class_index[own[0] if own else in_scope[0][1]]
            multi_class += len({name for _, name in in_scope}) > 1
            if pixel_count(png_root / real_path) > self.config.max_image_pixels:
                oversized.append(real_path)
                continue
            metadata = read_svg_metadata(self._svg_of(svg_root, real_path))
            drawings.append((label, real_path, in_scope[0][0], *metadata))
        if oversized:
            logger.warning(
                f"Left out {len(oversized)} drawings above {self.config.max_image_pixels} pixels: "
                + ", ".join(oversized[:5])
            )
        logger.info(
            f"OpenClipart {scope or 'top level'}: {outside} drawings outside the classes, "
            f"{multi_class} filed under several classes (labelled by their real location)."
        )

        vocabulary = sorted({tag for *_, tags in drawings for tag in tags})
        tag_index = {tag: index for index, tag in enumerate(vocabulary)}
        examples_by_class: dict[int, list[RawExample]] = defaultdict(list)
        for label, real_path, listed_path, title, description, tags in drawings:
            examples_by_class[label].append(
                RawExample(
                    image_id=real_path,
                    image_file=str(png_root / real_path),
                    stored_path=real_path,
                    label=label,
                    ingredients=tuple(tag_index[tag] for tag in tags),
                    text=join_text(title, description, tags),
                    source=str(png_root / listed_path),
                )
            )
        splits = stratified_split(
            examples_by_class, self.config.seed, self.config.validation_fraction, self.config.test_fraction
        )
        return RawIndex(class_names=class_names, ingredient_names=vocabulary, splits=splits)

    def _class_of(self, listed_path: str) -> str | None:
        """The class a listing path files its drawing under, or None when outside this config's classes."""
        parts = listed_path.split("/")
        if self.config.category:
            return parts[1] if len(parts) >= 3 and parts[0] == self.config.category else None
        return parts[0] if len(parts) >= 2 else None

    @staticmethod
    def _listings_by_real_path(png_root: Path) -> dict[str, list[str]]:
        """Map each drawing's real relative path to every relative path that lists it (sorted)."""
        listings: dict[str, list[str]] = defaultdict(list)
        broken = []
        for directory, _, files in os.walk(png_root):
            for name in files:
                if not name.endswith(".png"):
                    continue
                listed = Path(directory) / name
                real = listed.resolve()
                relative = listed.relative_to(png_root).as_posix()
                if not real.is_file() or not real.is_relative_to(png_root.resolve()):
                    broken.append(relative)
                    continue
                listings[real.relative_to(png_root.resolve()).as_posix()].append(relative)
        if broken:
            logger.warning(
                f"Ignored {len(broken)} PNG links with no target inside {png_root}: {', '.join(sorted(broken)[:5])}"
            )
        return {real: sorted(paths) for real, paths in listings.items()}

    @staticmethod
    def _svg_of(svg_root: Path, real_path: str) -> Path:
        svg = svg_root / (real_path[: -len(".png")] + ".svg")
        if not svg.is_file():
            raise RawDataError(f"{svg}: metadata SVG of png/{real_path} not found. {HINT}")
        return svg
