"""Builders that turn raw food-image archives into Hugging Face datasets (see docs/datasets.md).

Each builder is a `datasets.GeneratorBasedBuilder` used programmatically::

    from dataset_scripts import VireoFood172
    builder = VireoFood172(data_dir="/data/vireo", cache_dir="/tmp/cache")
    builder.download_and_prepare(num_proc=2)
    dataset_dict = builder.as_dataset()

The `marnet-data` command (`dataset_scripts.cli`) wraps this: save to disk or push to the Hub.
"""

from .builder_base import RawImageBuilder, food_features
from .food_101 import Food101
from .ingredient_101 import Ingredient101
from .openclipart import OpenClipart
from .raw_files import RawDataError
from .vireo_food172 import VireoFood172

#: `marnet-data build <name>` -> builder class.
BUILDERS = {
    "vireo-food172": VireoFood172,
    "ingredient-101": Ingredient101,
    "food-101": Food101,
    "openclipart": OpenClipart,
}

__all__ = [
    "BUILDERS",
    "Food101",
    "Ingredient101",
    "OpenClipart",
    "RawDataError",
    "RawImageBuilder",
    "VireoFood172",
    "food_features",
]
