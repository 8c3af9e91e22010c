"""What every raw-image builder shares: the target features, the example record and the writer.

A concrete builder only parses its raw layout into a :class:`RawIndex` (class names, ingredient
vocabulary, and per split the list of :class:`RawExample` records, all validated before any image
is read). This base class turns that index into `datasets` splits: it reads each image file's
bytes as they are (never re-encoded), checks that they decode, and yields the target features.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError

from .raw_files import RawDataError, check_image_bytes, require_dir

logger = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "validation", "test")


@dataclass(frozen=True)
class RawExample:
    """One image listed by a raw dataset, validated except for the image bytes.

    Attributes:
        image_id: unique id kept in the `image_id` column (e.g. "/1/8_5.jpg", "apple_pie/1005649").
        image_file: where the image is on disk.
        stored_path: the relative file name kept in the `image` feature's `path` (no local paths leak).
        label: 0-based class index.
        ingredients: ingredient indices into the vocabulary (empty for datasets without ingredients).
        text: the privileged text for training.
        source: "file:line" that listed the image, for error messages.
    """

    image_id: str
    image_file: str
    stored_path: str
    label: int
    ingredients: tuple[int, ...]
    text: str
    source: str


@dataclass
class RawIndex:
    """Everything a builder learned from the raw annotation files, before reading images.

    `ingredient_names` is None for datasets without text annotations (plain Food-101): their
    features then hold no `ingredients` and no `text` column.
    """

    class_names: list[str]
    ingredient_names: list[str] | None
    splits: dict[str, list[RawExample]]


@dataclass
class RawImageConfig(datasets.BuilderConfig):
    """Builder config with the options shared by all raw-image builders.

    Args:
        skip_bad_images (`bool`, defaults to `False`): leave out images that cannot be decoded
            instead of failing; the builder's `report_skipped_images` then warns with the count
            and the first ids.
    """

    skip_bad_images: bool = False


def food_features(class_names: list[str], ingredient_names: list[str] | None) -> datasets.Features:
    """The target features of docs/datasets.md; without an ingredient vocabulary, no text columns."""
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(class_names))}
    if ingredient_names is not None:
        features["ingredients"] = datasets.List(datasets.ClassLabel(names=list(ingredient_names)))
        features["text"] = datasets.Value("string")
    features["image_id"] = datasets.Value("string")
    return datasets.Features(features)


class RawImageBuilder(datasets.GeneratorBasedBuilder):
    """Base class of the builders: subclasses implement `_read_index` and set the metadata below.

    Use it programmatically (`datasets` no longer runs loading scripts)::

        builder = VireoFood172(data_dir="/data/vireo", cache_dir="/tmp/cache")
        builder.download_and_prepare(num_proc=2)
        dataset_dict = builder.as_dataset()
    """

    #: Config fields that say where the raw data is or which config this is, not how the dataset is made.
    FIELDS_SET_ELSEWHERE = frozenset({"name", "version", "data_dir", "data_files", "description", "food101_dir"})

    BUILDER_CONFIG_CLASS = RawImageConfig
    VERSION = datasets.Version("1.0.0")
    #: One line for the card and `DatasetInfo.description`.
    DESCRIPTION = ""
    HOMEPAGE = ""
    LICENSE = ""
    CITATION = ""
    #: Markdown telling users how to obtain the raw files (used by the dataset card).
    RAW_DATA_INSTRUCTIONS = ""
    #: Where `marnet-data build` reads the raw files without --data_dir (None: the option is required).
    DEFAULT_DATA_DIR: str | None = None
    #: How the images are kept, for the dataset card.
    IMAGE_STORAGE = "Images are stored as the original file bytes, never re-encoded."

    def _read_index(self, data_dir: Path) -> RawIndex:
        """Parse and validate the raw annotation files under `data_dir`."""
        raise NotImplementedError

    @functools.cached_property
    def index(self) -> RawIndex:
        """The validated raw index (parsed once per builder)."""
        if self.config.data_dir is None:
            raise RawDataError(f"{type(self).__name__}: no data_dir given; pass data_dir=<root of the raw files>.")
        data_dir = require_dir(
            Path(self.config.data_dir).expanduser().resolve(),
            "raw data root",
            "Pass the directory you unpacked the raw archive into.",
        )
        index = self._read_index(data_dir)
        listed_at: dict[str, str] = {}
        for examples in index.splits.values():
            for example in examples:
                if example.image_id in listed_at:
                    raise RawDataError(
                        f"{example.source}: {example.image_id} is already listed at {listed_at[example.image_id]}; "
                        "each image may appear once across all splits."
                    )
                listed_at[example.image_id] = example.source
        return index

    def stored_image_bytes(self) -> int:
        """Bytes of the images the build stores (once in the cache, once in the result): the raw files' sizes."""
        return sum(os.path.getsize(example.image_file) for split in self.index.splits.values() for example in split)

    @classmethod
    def named_config(cls, name: str | None) -> RawImageConfig:
        """The config `name` (default: "default") as the builder defines it, before any field is changed."""
        presets = {config.name: config for config in cls.BUILDER_CONFIGS}
        return presets.get(name or "default") or cls.BUILDER_CONFIG_CLASS(name=name or "default")

    def config_changes(self) -> dict:
        """The fields of this builder's config that differ from its named config (what `marnet-data build
        --builder_option` or keyword arguments set), e.g. `{"seed": 1}`; the raw-data location is not one."""
        preset = self.named_config(self.config.name)
        return {
            field.name: getattr(self.config, field.name)
            for field in fields(self.config)
            if field.name not in self.FIELDS_SET_ELSEWHERE
            and getattr(self.config, field.name) != getattr(preset, field.name)
        }

    def card_notes(self) -> str:
        """Markdown the dataset card adds to "How it was built" (none by default)."""
        return ""

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=self.DESCRIPTION,
            features=food_features(self.index.class_names, self.index.ingredient_names),
            homepage=self.HOMEPAGE,
            license=self.LICENSE,
            citation=self.CITATION,
        )

    def _split_generators(self, dl_manager):
        # `examples` is a list, so `num_proc` workers each get a contiguous slice of it.
        with_text = self.index.ingredient_names is not None
        return [
            datasets.SplitGenerator(
                name=split, gen_kwargs={"examples": self.index.splits[split], "with_text": with_text}
            )
            for split in SPLIT_ORDER
            if split in self.index.splits
        ]

    def __getstate__(self):
        # Workers get their examples through gen_kwargs: shipping the whole index to each of them
        # would cost more than the work itself.
        state = dict(super().__getstate__())
        state.pop("index", None)
        return state

    def _generate_examples(self, examples: list[RawExample], with_text: bool):
        for example in examples:
            data = Path(example.image_file).read_bytes()
            try:
                check_image_bytes(data)
            except OSError as error:
                if self.config.skip_bad_images:
                    continue
                raise RawDataError(
                    f"{example.image_file} (listed at {example.source}): unreadable image ({error}). "
                    "Replace the file, or rebuild with skip_bad_images=True (--skip-bad-images) to leave it out."
                ) from None
            row = {"image": {"bytes": data, "path": example.stored_path}, "label": example.label}
            if with_text:
                row["ingredients"] = list(example.ingredients)
                row["text"] = example.text
            row["image_id"] = example.image_id
            yield example.image_id, row

    def _prepare_split_single(self, gen_kwargs, **kwargs):
        # `datasets` wraps generator errors in a generic DatasetGenerationError, and worker processes
        # lose the cause when the error is pickled back; re-raise our own message instead. A private method of
        # `datasets`: setup.cfg pins datasets < 6, and test_unreadable_image_fails_with_file_and_split_line checks it.
        try:
            yield from super()._prepare_split_single(gen_kwargs=gen_kwargs, **kwargs)
        except DatasetGenerationError as error:
            if isinstance(error.__cause__, RawDataError):
                raise error.__cause__ from None
            raise

    def report_skipped_images(self, dataset_dict: datasets.DatasetDict) -> dict[str, list[str]]:
        """Return, per split, the ids left out as unreadable, and warn about them (count and first ids)."""
        skipped = {}
        for split, dataset in dataset_dict.items():
            kept = set(dataset["image_id"])
            missing = [example.image_id for example in self.index.splits[split] if example.image_id not in kept]
            if missing:
                skipped[split] = missing
        if skipped:
            total = sum(len(ids) for ids in skipped.values())
            first = [image_id for ids in skipped.values() for image_id in ids][:5]
            per_split = ", ".join(f"{split}: {len(ids)}" for split, ids in skipped.items())
            logger.warning(f"Skipped {total} unreadable images ({per_split}); first ids: {', '.join(first)}")
        return skipped
