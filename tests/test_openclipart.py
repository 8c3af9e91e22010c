"""The OpenClipart builder: labels, symlinked duplicates, text from SVG metadata, the seeded
stratified split, on a fixture in the Debian layout and on the real Debian package."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import datasets
import pytest

from dataset_scripts import OpenClipart, RawDataError
from raw_fixtures import png_bytes, write_openclipart

DEBIAN_ROOT = Path("/usr/share/openclipart")
# Both packages (the builder reads the PNGs and their metadata SVGs); either one alone skips too.
NEEDS_DEBIAN_PACKAGES = pytest.mark.skipif(
    not (DEBIAN_ROOT / "png").is_dir() or not (DEBIAN_ROOT / "svg").is_dir(),
    reason="Debian packages openclipart-png and openclipart-svg are not installed "
    "(apt-get install openclipart-png openclipart-svg); .ci/run installs them",
)


def build(tmp_path, name="cache", **kwargs) -> datasets.DatasetDict:
    builder = OpenClipart(cache_dir=str(tmp_path / name), **kwargs)
    builder.download_and_prepare()
    return builder.as_dataset()


def rows_by_id(dataset_dict: datasets.DatasetDict) -> dict[str, dict]:
    columns = ["label", "ingredients", "text"]
    return {
        row["image_id"]: {**row, "split": split}
        for split, dataset in dataset_dict.items()
        for row in dataset.select_columns(["image_id", *columns]).to_list()
    }


def tag_names(dataset_dict, ingredient_ids) -> list[str]:
    vocabulary = dataset_dict["train"].features["ingredients"].feature.names
    return [vocabulary[index] for index in ingredient_ids]


def test_food_config_labels_by_sub_category_and_keeps_each_drawing_once(tmp_path):
    raw = write_openclipart(tmp_path / "openclipart")
    dataset_dict = build(tmp_path, config_name="food", data_dir=str(raw))
    rows = rows_by_id(dataset_dict)
    class_names = dataset_dict["train"].features["label"].names

    assert class_names == ["desserts", "fruit"]
    assert len(rows) == 21  # 10 desserts + 10 fruit + the crawfish filed under fruit; no duplicates
    assert "food/menu.png" not in rows  # directly under food/: no sub-category
    assert "food/fruit/apple_02.png" not in rows and "food/fruit/pie.png" not in rows  # links: kept under real path
    assert class_names[rows["food/desserts/pie.png"]["label"]] == "desserts"  # real location wins
    assert class_names[rows["animals/crawfish.png"]["label"]] == "fruit"  # real location out of scope

    apple = rows["food/fruit/apple.png"]
    assert tag_names(dataset_dict, apple["ingredients"]) == ["food", "fruit", "apple"]  # no hash, empty, repeats
    assert apple["text"] == "An Apple. food, fruit, apple"
    assert rows["food/desserts/pie.png"]["text"] == "Cherry pie. A pie with cherries. dessert, pie"
    assert rows["animals/crawfish.png"]["text"] == "Crawfish. animal"  # description equal to title dropped
    assert rows["food/fruit/fruit_0.png"]["text"] == "" and rows["food/fruit/fruit_0.png"]["ingredients"] == []
    vocabulary = dataset_dict["train"].features["ingredients"].feature.names
    assert vocabulary == sorted(vocabulary) and "hash" not in vocabulary

    per_split = {split: Counter(dataset["label"]) for split, dataset in dataset_dict.items()}
    assert per_split == {"train": {0: 7, 1: 8}, "validation": {0: 1, 1: 1}, "test": {0: 2, 1: 2}}
    image = dataset_dict["train"].cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert image["bytes"] == (raw / "png" / image["path"]).read_bytes()


def test_default_config_labels_by_top_level_category(tmp_path):
    raw = write_openclipart(tmp_path / "openclipart")
    dataset_dict = build(tmp_path, data_dir=str(raw))
    rows = rows_by_id(dataset_dict)
    class_names = dataset_dict["train"].features["label"].names

    assert class_names == ["animals", "food"]
    assert class_names[rows["animals/crawfish.png"]["label"]] == "animals"
    assert class_names[rows["food/menu.png"]["label"]] == "food"
    assert len(rows) == 22
    assert {split: len(dataset) for split, dataset in dataset_dict.items()} == {
        "train": 16,
        "validation": 2,
        "test": 4,
    }


def test_split_is_deterministic_and_follows_the_seed(tmp_path):
    raw = write_openclipart(tmp_path / "openclipart")

    def test_ids(name, seed):
        return build(tmp_path, name, config_name="food", data_dir=str(raw), seed=seed)["test"]["image_id"]

    assert test_ids("a", 0) == test_ids("b", 0)
    assert any(test_ids("c", seed) != test_ids("a", 0) for seed in (1, 2, 3))


def test_oversized_drawings_are_left_out_with_a_warning(tmp_path, caplog):
    raw = write_openclipart(tmp_path / "openclipart")
    (raw / "png/food/fruit/apple.png").write_bytes(
        png_bytes(0, size=(20, 20))  # 400 pixels; the others have 64
    )
    with caplog.at_level(logging.WARNING):
        rows = rows_by_id(build(tmp_path, config_name="food", data_dir=str(raw), max_image_pixels=100))
    assert "food/fruit/apple.png" not in rows and len(rows) == 20
    assert "Left out 1 drawings above 100 pixels: food/fruit/apple.png" in caplog.text


def test_missing_metadata_svg_is_an_error_naming_it(tmp_path):
    raw = write_openclipart(tmp_path / "openclipart")
    (raw / "svg/food/desserts/pie.svg").unlink()
    with pytest.raises(
        RawDataError, match=r"svg/food/desserts/pie\.svg: metadata SVG of png/food/desserts/pie\.png not found"
    ):
        OpenClipart(cache_dir=str(tmp_path / "cache"), config_name="food", data_dir=str(raw))


@NEEDS_DEBIAN_PACKAGES
def test_real_debian_package_food_config(tmp_path):
    dataset_dict = build(tmp_path, config_name="food")  # data_dir defaults to /usr/share/openclipart
    class_names = dataset_dict["train"].features["label"].names

    assert class_names == sorted(path.name for path in (DEBIAN_ROOT / "png/food").iterdir() if path.is_dir())
    assert {"beverages", "desserts", "fruit"} <= set(class_names)
    counts = Counter(label for dataset in dataset_dict.values() for label in dataset["label"])
    for label, count in counts.items():
        if count >= 10:  # stratified: every sizeable class is in every split
            assert all(label in dataset["label"] for dataset in dataset_dict.values()), class_names[label]
    ids = [image_id for dataset in dataset_dict.values() for image_id in dataset["image_id"]]
    assert len(ids) == len(set(ids)) > 200
    vocabulary = dataset_dict["train"].features["ingredients"].feature.names
    assert "hash" not in vocabulary and not any(tag.startswith("hash(") for tag in vocabulary)
    texts = [text for dataset in dataset_dict.values() for text in dataset["text"]]
    assert sum(bool(text) for text in texts) > 0.9 * len(texts)
    for image in dataset_dict["test"]["image"]:  # every stored image decodes
        image.load()
        assert min(image.size) > 0


DEMO = Path(__file__).resolve().parents[1] / "data" / "openclipart-food-demo"


def test_committed_demo_subset_loads_with_class_names_and_stays_small(tmp_path):
    from_card = datasets.load_dataset(str(DEMO), cache_dir=str(tmp_path / "a"))
    from_parquet = datasets.load_dataset("parquet", data_dir=str(DEMO / "data"), cache_dir=str(tmp_path / "b"))
    expected_classes = ["beverages", "breads_and_carbs", "desserts", "fruit", "meats_and_eggs", "vegetables"]
    for loaded in (from_card, from_parquet):
        assert list(loaded) == ["train", "validation", "test"]
        assert loaded["train"].features["label"].names == expected_classes
        assert set(loaded["train"]["label"]) == set(range(len(expected_classes)))
    assert from_card["test"]["image_id"] == from_parquet["test"]["image_id"]
    assert max(max(image.size) for image in from_card["validation"]["image"]) <= 96
    assert sum(path.stat().st_size for path in DEMO.rglob("*") if path.is_file()) < 3 * 1024 * 1024


@NEEDS_DEBIAN_PACKAGES
def test_demo_subset_regenerates_from_the_debian_package(tmp_path):
    from dataset_scripts.make_demo_subset import main as make_demo_subset

    make_demo_subset(["--output", str(tmp_path / "demo")])
    committed = datasets.load_dataset(str(DEMO), cache_dir=str(tmp_path / "a"))
    regenerated = datasets.load_dataset(str(tmp_path / "demo"), cache_dir=str(tmp_path / "b"))
    assert regenerated["train"].features == committed["train"].features
    columns = ["image_id", "label", "ingredients", "text"]
    for split in committed:  # JPEG bytes may differ across libjpeg versions; sizes and rows may not
        assert (
            regenerated[split].select_columns(columns).to_list() == committed[split].select_columns(columns).to_list()
        )
        assert [image.size for image in regenerated[split]["image"]] == [
            image.size for image in committed[split]["image"]
        ]
