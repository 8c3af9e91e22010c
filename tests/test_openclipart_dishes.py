"""The OpenClipart dishes builder on a fixture of a few tiny drawings: recipes of shared ingredients, per-image
ingredient lists, the same rows from the same seed, and a dataset card that `load_dataset` reads back."""

from __future__ import annotations

import io

import datasets
import pytest
from PIL import Image

from dataset_scripts import OpenClipartDishes, RawDataError
from dataset_scripts.card import dataset_card
from dataset_scripts.cli import main
from dataset_scripts.hub import write_hub_folder
from dataset_scripts.openclipart_dishes import KINDS
from raw_fixtures import DISH_KINDS, write_food_drawings

SMALL = dict(
    num_recipes=5,
    core_ingredients=2,
    optional_ingredients=1,
    recipes_per_ingredient=2,
    train_per_recipe=4,
    validation_per_recipe=1,
    test_per_recipe=2,
    image_size=24,
)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_food_drawings(tmp_path_factory.mktemp("openclipart"))


def build(raw, cache, **overrides):
    builder = OpenClipartDishes(data_dir=str(raw), cache_dir=str(cache), **{**SMALL, **overrides})
    builder.download_and_prepare()
    return builder, builder.as_dataset()


def stored_rows(dataset_dict):
    return {
        split: dataset.cast_column("image", datasets.Image(decode=False)).to_list()
        for split, dataset in dataset_dict.items()
    }


def test_recipes_share_ingredients_and_each_text_lists_its_image_s_ingredients(raw, tmp_path):
    builder, dataset_dict = build(raw, tmp_path / "a")
    _, again = build(raw, tmp_path / "b")
    assert stored_rows(again) == stored_rows(dataset_dict)  # same seed: the same rows, byte for byte

    assert {split: len(rows) for split, rows in dataset_dict.items()} == {"train": 20, "validation": 5, "test": 10}
    features = dataset_dict["train"].features
    assert list(features) == ["image", "label", "ingredients", "text", "image_id"]
    assert features["label"].names == [f"recipe_{label:02d}" for label in range(5)]
    assert features["ingredients"].feature.names == DISH_KINDS  # pear has one drawing: left out
    cores = [set(recipe.core) for recipe in builder.recipes]
    assert len({frozenset(core) for core in cores}) == 5
    assert all(sum(kind in core for core in cores) >= 2 for kind in set().union(*cores))  # no kind names a class
    for row in dataset_dict["train"]:
        kinds = [DISH_KINDS[index] for index in row["ingredients"]]
        names = row["text"].split(", ")
        assert len(names) == len(kinds) >= 2
        assert sorted(next(kind for kind in kinds if name in KINDS[kind].names) for name in names) == kinds
        assert len(set(kinds) & set(builder.recipes[row["label"]].core)) >= 2
        assert (row["image"].format, row["image"].mode, row["image"].size) == ("JPEG", "RGB", (24, 24))

    other_seed = OpenClipartDishes(data_dir=str(raw), cache_dir=str(tmp_path / "c"), **SMALL, seed=1)
    texts = [example.text for example in other_seed.index.splits["train"]]
    assert texts != dataset_dict["train"]["text"]


def test_card_and_parquet_folder_load_back_with_the_features(raw, tmp_path):
    builder, dataset_dict = build(raw, tmp_path / "cache")
    folder = tmp_path / "hub"
    write_hub_folder(
        dataset_dict, folder, lambda parquet_bytes: dataset_card(builder, dataset_dict, "org/dishes", parquet_bytes)
    )
    readme = (folder / "README.md").read_text()
    assert "config `default` with `num_recipes=5, core_ingredients=2, optional_ingredients=1," in readme
    assert "Images are composed by the builder and stored as JPEG (quality 90)." in readme
    assert "| recipe_00 | " in readme and "## How it was built" in readme and "license: cc0-1.0" in readme
    loaded = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "loaded"))
    assert loaded["test"].features == dataset_dict["test"].features
    assert loaded["test"]["text"] == dataset_dict["test"]["text"]
    assert Image.open(io.BytesIO(stored_rows(loaded)["test"][0]["image"]["bytes"])).size == (24, 24)


def test_too_few_ingredient_kinds_is_an_error_that_says_what_to_change(raw, tmp_path):
    with pytest.raises(RawDataError, match=r"need 7 ingredient kinds with at least 2 drawings; found 5\. Lower"):
        OpenClipartDishes(data_dir=str(raw), cache_dir=str(tmp_path), **{**SMALL, "core_ingredients": 3})


def test_marnet_data_build_sets_config_fields_from_builder_options_and_the_card_names_them(raw, tmp_path, capsys):
    options = [f"{name}={value}" for name, value in {**SMALL, "seed": 1}.items()]
    hub = tmp_path / "hub"
    arguments = ["build", "openclipart-dishes", "--data-dir", str(raw), "--builder-option", *options]
    assert main([*arguments, "--push-to-hub", "org/dishes", "--dry-run", "--output", str(hub)]) in (0, None)
    assert (
        "openclipart-dishes (default): train: 20, validation: 5, test: 10 images, 5 classes" in capsys.readouterr().out
    )

    assert "config `default` with `seed=1, num_recipes=5," in (hub / "README.md").read_text()
    loaded = datasets.load_dataset(str(hub), cache_dir=str(tmp_path / "loaded"))
    _, seed_1 = build(raw, tmp_path / "seed-1", seed=1)
    _, seed_0 = build(raw, tmp_path / "seed-0")
    assert loaded["train"]["text"] == seed_1["train"]["text"] != seed_0["train"]["text"]
