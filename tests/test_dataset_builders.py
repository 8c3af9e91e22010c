"""The builders on raw fixtures in the documented layouts: features, splits, orders, bytes."""

from __future__ import annotations

import datasets
import pytest
from PIL import Image

from dataset_scripts import Food101, Ingredient101, VireoFood172
from raw_fixtures import (
    FOOD101_CLASSES,
    FOOD101_LABELS,
    FOOD101_SPLITS,
    INGREDIENT101_CLASS_INGREDIENTS,
    INGREDIENT101_LABELS,
    INGREDIENT101_SIMPLIFIED_LINES,
    INGREDIENT101_SPLITS,
    VIREO_CLASSES,
    VIREO_INGREDIENTS,
    VIREO_LABELS,
    VIREO_SPLITS,
    write_food101,
    write_ingredient101,
    write_vireo,
)


def build(builder_class, tmp_path, num_proc=None, **kwargs) -> datasets.DatasetDict:
    builder = builder_class(cache_dir=str(tmp_path / f"cache-{num_proc}"), **kwargs)
    builder.download_and_prepare(num_proc=num_proc)
    return builder.as_dataset()


def test_vireo_food172_features_labels_ingredients_and_original_bytes(tmp_path):
    raw = write_vireo(tmp_path / "vireo")
    dataset_dict = build(VireoFood172, tmp_path, data_dir=str(raw))

    features = dataset_dict["train"].features
    assert list(features) == ["image", "label", "ingredients", "text", "image_id"]
    assert isinstance(features["image"], datasets.Image)
    assert features["label"].names == VIREO_CLASSES  # FoodList.txt order, ";" kept
    assert features["ingredients"].feature.names == VIREO_INGREDIENTS  # IngredientList.txt order
    assert features["text"] == datasets.Value("string") and features["image_id"] == datasets.Value("string")
    assert list(dataset_dict) == ["train", "validation", "test"]

    for split, entries in VIREO_SPLITS.items():
        dataset = dataset_dict[split]
        assert dataset["image_id"] == [path for path, _, _ in entries]  # split-file order, leading slash kept
        assert dataset["label"] == VIREO_LABELS[split]  # folder n -> FoodList line n, not string order
        assert dataset["ingredients"] == [present for _, present, _ in entries]
        assert dataset["text"] == [", ".join(VIREO_INGREDIENTS[i] for i in present) for _, present, _ in entries]
        raw_images = dataset.cast_column("image", datasets.Image(decode=False))["image"]
        for (path, _, mode), stored, decoded in zip(entries, raw_images, dataset["image"], strict=True):
            assert stored["bytes"] == (raw / "ready_chinese_food" / path.lstrip("/")).read_bytes()
            assert stored["path"] == path.lstrip("/")  # relative: no local path leaks into the data
            assert decoded.mode == mode  # grayscale and CMYK stay as they are: RGB at load time


def test_multiprocess_build_gives_the_same_rows_in_the_same_order(tmp_path):
    raw = write_vireo(tmp_path / "vireo")
    single = build(VireoFood172, tmp_path, data_dir=str(raw), num_proc=1)
    parallel = build(VireoFood172, tmp_path, data_dir=str(raw), num_proc=2)
    for split in single:
        assert parallel[split]["image_id"] == single[split]["image_id"]
        assert parallel[split]["ingredients"] == single[split]["ingredients"]


@pytest.mark.parametrize("spelling", ["images", "split"])
def test_ingredient101_accepts_both_split_file_spellings(tmp_path, spelling):
    annotations = write_ingredient101(tmp_path / "ingredient101", spelling)
    food101 = write_food101(tmp_path / "food-101")
    dataset_dict = build(Ingredient101, tmp_path, data_dir=str(annotations), food101_dir=str(food101))

    features = dataset_dict["train"].features
    assert features["label"].names == FOOD101_CLASSES  # cheesecake before cheese_plate, as in classes.txt
    vocabulary = sorted({name for names in INGREDIENT101_CLASS_INGREDIENTS for name in names})
    assert features["ingredients"].feature.names == vocabulary
    assert list(dataset_dict) == ["train", "validation", "test"]
    for split, entries in INGREDIENT101_SPLITS.items():
        dataset = dataset_dict[split]
        assert dataset["image_id"] == entries
        assert dataset["label"] == INGREDIENT101_LABELS[split]
        expected = [INGREDIENT101_CLASS_INGREDIENTS[label] for label in INGREDIENT101_LABELS[split]]
        assert [[vocabulary[i] for i in row] for row in dataset["ingredients"]] == expected
        assert dataset["text"] == [", ".join(names) for names in expected]
        raw_images = dataset.cast_column("image", datasets.Image(decode=False))["image"]
        assert [image["bytes"] for image in raw_images] == [
            (food101 / "images" / f"{entry}.jpg").read_bytes() for entry in entries
        ]


def test_ingredient101_simplified_config_reads_the_simplified_vocabulary(tmp_path):
    annotations = write_ingredient101(tmp_path / "ingredient101")
    write_food101(annotations)  # Food-101 unpacked into the same root: food101_dir defaults to data_dir
    dataset_dict = build(Ingredient101, tmp_path, data_dir=str(annotations), config_name="simplified")
    assert dataset_dict["train"].features["ingredients"].feature.names == [
        "apple",
        "cheese",
        "flour",
        "grapes",
        "pork",
        "sauce",
        "sugar",
    ]
    assert dataset_dict["validation"]["text"] == [
        INGREDIENT101_SIMPLIFIED_LINES[0].replace(",", ", "),
        "cheese, grapes",
    ]


def test_food101_has_official_train_test_splits_and_no_text_columns(tmp_path):
    raw = write_food101(tmp_path / "food-101")
    dataset_dict = build(Food101, tmp_path, data_dir=str(raw))

    assert list(dataset_dict) == ["train", "test"]
    features = dataset_dict["train"].features
    assert list(features) == ["image", "label", "image_id"]
    assert features["label"].names == FOOD101_CLASSES
    for split, entries in FOOD101_SPLITS.items():
        dataset = dataset_dict[split]
        assert dataset["image_id"] == [entry for entry, _ in entries]
        assert dataset["label"] == FOOD101_LABELS[split]
        assert [image.mode for image in dataset["image"]] == [mode for _, mode in entries]
        assert isinstance(dataset[0]["image"], Image.Image)
