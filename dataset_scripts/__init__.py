"""Builders that turn raw food-image archives into Hugging Face datasets (see docs/datasets.md).

Each builder is a `datasets.GeneratorBasedBuilder` used programmatically::

    from dataset_scripts import VireoFood172
    builder = VireoFood172(data_dir="/data/vireo", cache_dir="/tmp/cache")
    builder.download_and_prepare(num_proc=2)
    dataset_dict = builder.as_dataset()

The `marnet-data` command (`dataset_scripts.cli`) wraps this: save to disk or push to the Hub.
"""

import importlib

#: `marnet-data build <name>` -> (module, builder class). Modules load on first use, so that `marnet-data --help`
#: does not wait for `datasets`.
BUILDER_CLASSES = {
    "vireo-food172": ("vireo_food172", "VireoFood172"),
    "ingredient-101": ("ingredient_101", "Ingredient101"),
    "food-101": ("food_101", "Food101"),
    "openclipart": ("openclipart", "OpenClipart"),
    "openclipart-dishes": ("openclipart_dishes", "OpenClipartDishes"),
}
_EXPORTS = {
    **{class_name: module for module, class_name in BUILDER_CLASSES.values()},
    "RawImageBuilder": "builder_base",
    "food_features": "builder_base",
    "RawDataError": "raw_files",
}


def builder_class(name):
    """The builder class of `marnet-data build <name>`."""
    module, class_name = BUILDER_CLASSES[name]
    return getattr(importlib.import_module(f".{module}", __name__), class_name)


def __getattr__(name):
    if name == "BUILDERS":  # `marnet-data build <name>` -> builder class
        return {key: builder_class(key) for key in BUILDER_CLASSES}
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILDERS",
    "BUILDER_CLASSES",
    "Food101",
    "Ingredient101",
    "OpenClipart",
    "OpenClipartDishes",
    "RawDataError",
    "RawImageBuilder",
    "VireoFood172",
    "builder_class",
    "food_features",
]
