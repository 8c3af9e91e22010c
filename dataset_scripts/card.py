"""Dataset card (README.md with YAML metadata) for a built dataset, as the Hub expects it."""

from __future__ import annotations

import inspect
import sys
from collections import Counter

import datasets
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from .builder_base import RawImageBuilder

#: Per-class counts are tabulated in the card up to this many classes.
MAX_CLASSES_IN_TABLE = 40


def size_category(num_examples: int) -> str:
    """The Hub's `size_categories` bucket for a number of examples."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if num_examples < bound:
            return name
    return "1M<n<10M"


def split_infos(dataset_dict: datasets.DatasetDict, parquet_bytes: dict[str, int]) -> datasets.DatasetInfo:
    """`dataset_info` for the card: features, and per split the rows and bytes (as push_to_hub writes it)."""
    features = next(iter(dataset_dict.values())).features
    info = datasets.DatasetInfo(features=features, splits=datasets.SplitDict(), download_size=0, dataset_size=0)
    for split, dataset in dataset_dict.items():
        num_bytes = dataset.data.nbytes
        info.splits.add(datasets.SplitInfo(name=split, num_bytes=num_bytes, num_examples=len(dataset)))
        info.download_size += parquet_bytes[split]
        info.dataset_size += num_bytes
    info.size_in_bytes = info.download_size + info.dataset_size
    return info


def _class_table(dataset_dict: datasets.DatasetDict) -> str:
    class_names = next(iter(dataset_dict.values())).features["label"].names
    if len(class_names) > MAX_CLASSES_IN_TABLE:
        return f"{len(class_names)} classes (see `features` in the metadata above for their names and order)."
    counts = {split: Counter(dataset["label"]) for split, dataset in dataset_dict.items()}
    header = "| label | class | " + " | ".join(counts) + " |\n|---|---|" + "---|" * len(counts) + "\n"
    rows = "".join(
        f"| {label} | {name} | " + " | ".join(str(count[label]) for count in counts.values()) + " |\n"
        for label, name in enumerate(class_names)
    )
    return header + rows


def dataset_card(
    builder: RawImageBuilder,
    dataset_dict: datasets.DatasetDict,
    repo_id: str,
    parquet_bytes: dict[str, int],
    pretty_name: str | None = None,
    extra_notes: str = "",
    image_storage: str | None = None,
) -> DatasetCard:
    """Build the dataset card for `dataset_dict` made by `builder`, stored as Parquet under `data/`.

    `extra_notes` (markdown) is appended to "How it was built", after the builder's own `card_notes()`;
    `image_storage` says how images are kept (default: the builder's `IMAGE_STORAGE`).
    The YAML carries license, task category, size, `dataset_info` (features with the ClassLabel names,
    so `load_dataset(repo_id)` gives them back) and `configs` mapping each split to its Parquet files.
    """
    num_examples = sum(len(dataset) for dataset in dataset_dict.values())
    card_data = DatasetCardData(
        license=builder.LICENSE,
        task_categories=["image-classification"],
        language=["en"],
        size_categories=[size_category(num_examples)],
        pretty_name=pretty_name or repo_id,
        tags=["food", "privileged-information", "marnet"],
    )
    DatasetInfosDict({"default": split_infos(dataset_dict, parquet_bytes)}).to_dataset_card_data(card_data)
    MetadataConfigs(
        {"default": {"data_files": [{"split": split, "path": f"data/{split}-*"} for split in dataset_dict]}}
    ).to_dataset_card_data(card_data)

    split_lines = "\n".join(f"- `{split}`: {len(dataset):,} images" for split, dataset in dataset_dict.items())
    column_names = ", ".join(f"`{name}`" for name in next(iter(dataset_dict.values())).features)
    build_notes = inspect.cleandoc(sys.modules[type(builder).__module__].__doc__ or "")
    changes = ", ".join(f"{name}={value!r}" for name, value in builder.config_changes().items())
    config_name = builder.config.name + (f"` with `{changes}" if changes else "")
    content = f"""---
{card_data.to_yaml()}
---

# {pretty_name or repo_id}

{builder.DESCRIPTION}

Built with the `{type(builder).__name__}` builder of the MARNet project (`dataset_scripts`),
config `{config_name}`. Columns: {column_names}. {image_storage or builder.IMAGE_STORAGE}

```python
from datasets import load_dataset

dataset = load_dataset("{repo_id}")
```

## Splits

{split_lines}

## Classes

{_class_table(dataset_dict)}

## How it was built

{build_notes}
{builder.card_notes()}{extra_notes}

## Getting the raw data

{builder.RAW_DATA_INSTRUCTIONS}

Homepage: {builder.HOMEPAGE}

## Citation

```bibtex
{builder.CITATION}
```
"""
    return DatasetCard(content)
