"""Dishes composed from the food drawings of OpenClipart 0.18 (Debian `openclipart-png`): a proxy whose privileged
text is each image's own ingredient list, shared across classes, as Vireo-Food172's is.

Raw input: the PNG drawings under `<root>/png/food/` (Debian's layout; `<root>` defaults to /usr/share/openclipart).
The images are composed and the texts generated from them; nothing else is read.

What the builder makes:

- Ingredient kinds: the drawings grouped by file name (`KINDS`: e.g. nine lemon drawings, whole, halved, sliced,
  in wedges, in black and white). Kinds with fewer than `min_drawings_per_kind` drawings are left out, and so are
  drawings above `max_image_pixels` (a few 13000 px renders).
- Classes are recipes (`recipe_00`, ...) drawn from the seed. Each has `core_ingredients` kinds, every kind of the
  pool being a core ingredient of about `recipes_per_ingredient` recipes (at least two), so that no single
  ingredient names the class; and `optional_ingredients` other kinds of the same pool.
- Each image: a cluttered background (a random colour under random shapes, often a plate or bowl drawing that no
  list mentions), then its ingredients: each core kind unless dropped (probability `drop_probability`; at least
  two are kept), each optional kind with probability `optional_probability`. A present kind shows as one or two
  drawings of it chosen at random, each at a random position, size, rotation and mirroring, overlapping the others.
  Stored as JPEG (quality 90), `image_size` pixels square.
- `text`: the image's ingredient list in random order, each kind named by one of its synonyms ("lime wedge,
  spaghetti, vanilla ice cream"). `ingredients`: the kinds present (a ClassLabel over the pool's kinds, sorted).
- Splits: `train_per_recipe`, `validation_per_recipe` and `test_per_recipe` images of each recipe (by default 1,200
  test images: one image is 0.083 point of top-1). All splits draw on the same drawings; no two images are alike.
- Deterministic: the recipes and every image's plan follow from `seed` (Python's `random` with string seeds) and
  the drawings; rendering is PIL's, so a seed gives the same rows, byte for byte.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageOps

from .builder_base import RawImageBuilder, RawImageConfig, RawIndex
from .openclipart import DEBIAN_ROOT, HINT, OpenClipart, pixel_count
from .raw_files import RawDataError, require_dir

logger = logging.getLogger(__name__)

#: Any suffix of a file name after an underscore: "_bw", "_ganson", "_jean-victor_bal_01", "_http_www.treebui_r".
_SUFFIX = r"(?:_[\w.\-]*)?"


@dataclass(frozen=True)
class Kind:
    """An ingredient kind: the names its lists use, and the file names (without .png) of its drawings."""

    names: tuple[str, ...]
    stems: re.Pattern


def _kind(names, *stems):
    return Kind(tuple(names), re.compile("|".join(f"(?:{stem}){_SUFFIX}" for stem in stems)))


#: The kinds by canonical name (the `ingredients` ClassLabel names). Patterns match whole file names.
KINDS = {
    "apple": _kind(("apple", "apples", "red apple"), r"(?!apple_juice)(?:an_|another_|cartoon_|eris_|slate-)?apple"),
    "banana": _kind(("banana", "bananas"), r"bananas?"),
    "cherry": _kind(("cherry", "cherries"), r"cherr(?:y|ies)"),
    "grapes": _kind(("grapes", "grape", "bunch of grapes"), r"grapes?"),
    "pear": _kind(("pear", "pears", "green pear"), r"(?:green_)?pear", r"pera"),
    "lemon": _kind(("lemon", "lemon slice", "lemon wedge"), r"lemon\d?"),
    "lime": _kind(("lime", "lime slice", "lime wedge"), r"lime"),
    "orange": _kind(("orange", "orange slice", "oranges"), r"(?!orange_juice)orange", r"rondelle_(?:d_)?orange"),
    "peach": _kind(("peach", "peaches"), r"peach", r"pesca"),
    "strawberry": _kind(("strawberry", "strawberries"), r"strawberry"),
    "watermelon": _kind(("watermelon", "watermelon slice"), r"watermelon", r"pasteque"),
    "plum": _kind(("plum", "plums", "prune"), r"prune", r"la_prugna"),
    "bread": _kind(("bread", "loaf", "loaf of bread"), r"bread(?=$|_01$)"),
    "croissant": _kind(("croissant", "croissants"), r"croissant"),
    "garlic toast": _kind(("garlic toast", "toast", "garlic bread"), r"garlic_toast"),
    "hash browns": _kind(("hash browns", "hash brown"), r"hash_browns"),
    "muffin": _kind(("muffin", "muffins", "cupcake"), r"muffin_?\d?"),
    "pancakes": _kind(("pancakes", "pancake", "hotcakes"), r"pancakes?"),
    "potato chips": _kind(("potato chips", "crisps", "chips"), r"potato_chips"),
    "potato": _kind(("potato", "potatoes"), r"potato_nicu"),
    "spaghetti": _kind(("spaghetti", "pasta", "noodles"), r"spaghetti"),
    "cake": _kind(("cake", "sponge cake", "layer cake"), r"(?:birthday_|flat_|pink_)?cake\d?", r"gateau", r"torta"),
    "candy": _kind(("candy", "sweets", "lollipop"), r"candy", r"lollipop"),
    "ice cream": _kind(("ice cream", "ice cream cone", "gelato"), r"cone", r"glace", r"gelato", r"ice_cream_cone"),
    "custard": _kind(("custard", "flan", "pudding"), r"flan", r"pudim"),
    "pie": _kind(("pie", "fruit pie", "tart"), r"pie_(?:apple|cherry|pumpkin)"),
    "bacon": _kind(("bacon", "bacon strips", "rashers"), r"bacon"),
    "sausage": _kind(("sausage", "sausages"), r"breakfast_sausage"),
    "burger": _kind(("burger", "hamburger", "cheeseburger"), r"(?:chicken_)?burger", r"hamburger"),
    "corn dog": _kind(("corn dog", "corndog"), r"corn_dog"),
    "hot dog": _kind(("hot dog", "frankfurter", "hotdog"), r"hot_dog"),
    "egg": _kind(("egg", "fried egg", "eggs"), r"fried_eggs?", r"half_egg"),
    "omelette": _kind(("omelette", "omelet"), r"farmer_onelette"),
    "turkey": _kind(("turkey", "roast turkey"), r"turkey_(?:on_)?platter"),
    "chili pepper": _kind(("chili pepper", "chilli", "hot pepper"), r"cayenne", r"habanero", r"peperoncino"),
    "corn": _kind(("corn", "corn on the cob", "sweetcorn"), r"corn_cob", r"pannocchia"),
    "pumpkin": _kind(("pumpkin", "squash"), r"pumpkin\d?", r"zucca"),
    "coffee": _kind(("coffee", "cup of coffee", "espresso"), r"coffee", r"tazza_di_caffe"),
    "tea": _kind(
        ("tea", "cup of tea", "teapot"), r"tea(?:cup|pot)", r"a_teapot", r"cuppa", r"(?:zielony_)?kubek", r"teiera"
    ),
    "milk": _kind(("milk", "glass of milk", "milk carton"), r"milk"),
    "juice": _kind(("juice", "fruit juice", "juice box"), r"(?:apple|orange)_juice_box", r"juice_glass"),
    "soda": _kind(("soda", "soft drink", "pop"), r"pop_can", r"soft_?drink", r"bottled_drink"),
    "lemonade": _kind(("lemonade",), r"lemonade"),
    "ice": _kind(("ice", "ice cubes", "ice water"), r"ice_?cube", r"ice_water"),
    "beer": _kind(("beer", "lager", "ale"), r"beer\d?", r"lattine_di_birra"),
    "wine": _kind(("wine", "glass of wine", "red wine"), r"wine(?=$|_glass)", r"bottiglia_di_vino"),
    "pizza": _kind(("pizza", "pizza slice"), r"pizza"),
    "sandwich": _kind(("sandwich", "sub", "sandwiches"), r"(?:submarine_)?sandwich"),
    "fries": _kind(("fries", "french fries", "chips"), r"(?:french_)?fries"),
    "onion rings": _kind(("onion rings", "fried onion"), r"onion_rings"),
    "lasagna": _kind(("lasagna", "lasagne"), r"lasagna"),
    "pierogi": _kind(("pierogi", "perogies", "dumplings"), r"perogies"),
    "burrito": _kind(("burrito", "wrap"), r"burrito"),
    "crawfish": _kind(("crawfish", "crayfish", "crawdad"), r"crawfish\d?"),
    "soup": _kind(("soup", "bowl of soup", "broth"), r"(?:bowl_of_steaming_)?soup"),
}
#: Drawings that dishes are served on, in no ingredient list: part of the clutter.
TABLEWARE = re.compile(r"(?:large_plate|small_plate|bowl_chaspo)" + _SUFFIX)
TABLEWARE_PROBABILITY = 0.6
COPIES = ((1, 0.75), (2, 0.25))  # a present kind shows as 1 drawing (probability 0.75) or 2 different ones
INGREDIENT_SIZE = (0.3, 0.5)  # the longest side of a drawing, as a fraction of the image's side
TABLEWARE_SIZE = (0.75, 1.0)
MAX_ROTATION = 30  # degrees, either way
BACKGROUND_SHAPES = (6, 14)
MIN_KEPT = 2  # core ingredients kept in every image, whatever the drops
JPEG_QUALITY = 90
#: A drawing without transparency (RGB) gets its near-white pixels made transparent: above this level in R, G and B.
WHITE_LEVEL = 240


@dataclass
class OpenClipartDishesConfig(RawImageConfig):
    """OpenClipart dishes config (see the module docstring for what each number does).

    Args:
        seed (`int`, defaults to 0): the recipes and every image.
        num_recipes (`int`, defaults to 20): classes.
        core_ingredients (`int`, defaults to 4), optional_ingredients (`int`, defaults to 4): kinds per recipe.
        recipes_per_ingredient (`int`, defaults to 5): how many recipes share each core kind, about (the pool
            holds `num_recipes * core_ingredients // recipes_per_ingredient` kinds, at least the kinds of a recipe).
        drop_probability (`float`, defaults to 0.4), optional_probability (`float`, defaults to 0.4).
        train_per_recipe (`int`, defaults to 150), validation_per_recipe (`int`, defaults to 40),
            test_per_recipe (`int`, defaults to 60): images of each recipe per split.
        image_size (`int`, defaults to 128): side of the square images, in pixels.
        min_drawings_per_kind (`int`, defaults to 2), max_image_pixels (`int`, defaults to 4,000,000).
    """

    seed: int = 0
    num_recipes: int = 20
    core_ingredients: int = 4
    optional_ingredients: int = 4
    recipes_per_ingredient: int = 5
    drop_probability: float = 0.4
    optional_probability: float = 0.4
    train_per_recipe: int = 150
    validation_per_recipe: int = 40
    test_per_recipe: int = 60
    image_size: int = 128
    min_drawings_per_kind: int = 2
    max_image_pixels: int = 4_000_000

    def __post_init__(self):
        super().__post_init__()
        for name in (
            "num_recipes",
            "core_ingredients",
            "train_per_recipe",
            "image_size",
            "min_drawings_per_kind",
            "max_image_pixels",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if not 2 <= self.recipes_per_ingredient <= self.num_recipes:
            raise ValueError(
                f"`recipes_per_ingredient` must be between 2 (no ingredient names a recipe) and num_recipes "
                f"({self.num_recipes}), got {self.recipes_per_ingredient}."
            )
        for name in ("optional_ingredients", "validation_per_recipe", "test_per_recipe"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        for name in ("drop_probability", "optional_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")


@dataclass(frozen=True)
class Recipe:
    """A class: its core kinds (each usually present) and optional kinds (sometimes present)."""

    core: tuple[str, ...]
    optional: tuple[str, ...]


@dataclass(frozen=True)
class Layer:
    """One drawing pasted on a dish: centre (x, y) and longest side as fractions of the image's side."""

    drawing: str
    x: float
    y: float
    size: float
    angle: float
    mirror: bool


@dataclass(frozen=True)
class DishExample:
    """The plan of one image (what `RawImageBuilder` lists per split): rendered by `render_dish`."""

    image_id: str
    stored_path: str
    label: int
    ingredients: tuple[int, ...]
    text: str
    source: str
    background_seed: int
    layers: tuple[Layer, ...]


def find_drawings(food_root: Path, max_image_pixels: int) -> tuple[dict[str, list[str]], list[str]]:
    """({kind: its drawings' paths}, tableware paths) under `food_root`, sorted, each drawing once (symlinks
    resolved)."""
    kinds: dict[str, set[str]] = {name: set() for name in KINDS}
    tableware: set[str] = set()
    oversized = 0
    for directory, _, files in os.walk(food_root):
        for name in files:
            stem, extension = os.path.splitext(name)
            if extension != ".png":
                continue
            path = Path(directory, name).resolve()
            matches = [kind for kind, spec in KINDS.items() if spec.stems.fullmatch(stem)]
            found = kinds[matches[0]] if matches else tableware if TABLEWARE.fullmatch(stem) else None
            if found is None or not path.is_file():
                continue
            if pixel_count(path) > max_image_pixels:
                oversized += 1
                continue
            found.add(str(path))
    if oversized:
        logger.info(f"Left out {oversized} food drawings above {max_image_pixels} pixels.")
    return {kind: sorted(paths) for kind, paths in kinds.items()}, sorted(tableware)


def make_recipes(kinds: list[str], config: OpenClipartDishesConfig) -> list[Recipe]:
    """The recipes of `config.seed`: distinct core sets over a pool of kinds, each kind core in >= 2 recipes."""
    pool_size = config.num_recipes * config.core_ingredients // config.recipes_per_ingredient
    needed = max(pool_size, config.core_ingredients + config.optional_ingredients)
    if needed > len(kinds):
        raise RawDataError(
            f"{config.num_recipes} recipes of {config.core_ingredients} core and {config.optional_ingredients} "
            f"optional ingredients, each core kind shared by {config.recipes_per_ingredient} recipes, need {needed} "
            f"ingredient kinds with at least {config.min_drawings_per_kind} drawings; found {len(kinds)}. Lower "
            "num_recipes or core_ingredients, or raise recipes_per_ingredient."
        )
    rng = random.Random(f"{config.seed}/recipes")
    pool = sorted(rng.sample(sorted(kinds), needed))
    for _ in range(100):
        remaining = dict.fromkeys(pool, config.recipes_per_ingredient)
        cores = []
        for _ in range(config.num_recipes):
            chosen: list[str] = []
            while len(chosen) < config.core_ingredients:
                candidates = [kind for kind in pool if kind not in chosen]
                weights = [remaining[kind] + 0.01 for kind in candidates]  # the least used kinds first
                chosen.append(rng.choices(candidates, weights)[0])
                remaining[chosen[-1]] -= 1
            cores.append(tuple(sorted(chosen)))
        uses = {kind: sum(kind in core for core in cores) for kind in pool}
        if len(set(cores)) == len(cores) and min(uses.values()) >= 2:
            break
    else:
        raise RawDataError(
            f"No {config.num_recipes} distinct recipes share every core ingredient at least twice with seed "
            f"{config.seed}: change the seed, or raise recipes_per_ingredient."
        )
    optional = [rng.sample([kind for kind in pool if kind not in core], config.optional_ingredients) for core in cores]
    return [Recipe(core, tuple(sorted(extra))) for core, extra in zip(cores, optional)]


def plan_dish(rng: random.Random, recipe: Recipe, drawings: dict[str, list[str]], tableware: list[str], config):
    """(present kinds, text, layers, background seed) of one image of `recipe`."""
    present = [kind for kind in recipe.core if rng.random() >= config.drop_probability]
    dropped = [kind for kind in recipe.core if kind not in present]
    while len(present) < min(MIN_KEPT, len(recipe.core)):
        present.append(dropped.pop(rng.randrange(len(dropped))))
    present += [kind for kind in recipe.optional if rng.random() < config.optional_probability]
    layers = []
    for kind in present:
        copies = rng.choices([count for count, _ in COPIES], [weight for _, weight in COPIES])[0]
        for drawing in rng.sample(drawings[kind], min(copies, len(drawings[kind]))):
            layers.append(_random_layer(rng, drawing, INGREDIENT_SIZE, MAX_ROTATION, margin=0.15))
    rng.shuffle(layers)
    if tableware and rng.random() < TABLEWARE_PROBABILITY:
        layers.insert(0, _random_layer(rng, rng.choice(tableware), TABLEWARE_SIZE, 0, margin=0.4))
    names = [rng.choice(KINDS[kind].names) for kind in present]
    rng.shuffle(names)
    return present, ", ".join(names), tuple(layers), rng.getrandbits(32)


def _random_layer(rng, drawing, size_range, max_rotation, margin):
    return Layer(
        drawing,
        x=rng.uniform(margin, 1 - margin),
        y=rng.uniform(margin, 1 - margin),
        size=rng.uniform(*size_range),
        angle=rng.uniform(-max_rotation, max_rotation),
        mirror=rng.random() < 0.5,
    )


@functools.cache
def load_drawing(path: str, max_side: int) -> Image.Image:
    """A drawing as RGBA cut to its visible part, its longest side at most `max_side` px (read once per process)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            drawing = image.convert("RGBA")
    drawing.thumbnail((4 * max_side, 4 * max_side), Image.Resampling.LANCZOS)
    if not has_alpha:  # a drawing on white paper: the paper becomes transparent
        red, green, blue, _ = drawing.split()
        darkest = ImageChops.darker(ImageChops.darker(red, green), blue)
        drawing.putalpha(darkest.point(lambda level: 0 if level > WHITE_LEVEL else 255))
    box = drawing.getchannel("A").getbbox()
    drawing = drawing.crop(box) if box else drawing
    drawing.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return drawing


def render_dish(example: DishExample, image_size: int) -> bytes:
    """The JPEG bytes of `example`: its background, then its layers in order."""
    rng = random.Random(example.background_seed)
    canvas = Image.new("RGB", (image_size, image_size), tuple(rng.randint(110, 255) for _ in range(3)))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.randint(*BACKGROUND_SHAPES)):
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        x0, x1 = sorted(rng.uniform(-0.2, 1.2) * image_size for _ in range(2))
        y0, y1 = sorted(rng.uniform(-0.2, 1.2) * image_size for _ in range(2))
        shape = rng.choice(("ellipse", "rectangle", "line"))
        if shape == "line":
            draw.line((x0, y0, x1, y1), fill=colour, width=rng.randint(1, max(1, image_size // 24)))
        else:
            getattr(draw, shape)((x0, y0, x1, y1), fill=colour)
    for layer in example.layers:
        drawing = load_drawing(layer.drawing, image_size)
        scale = layer.size * image_size / max(drawing.size)
        sprite = drawing.resize(
            (max(1, round(drawing.width * scale)), max(1, round(drawing.height * scale))), Image.Resampling.LANCZOS
        )
        if layer.mirror:
            sprite = ImageOps.mirror(sprite)
        sprite = sprite.rotate(layer.angle, resample=Image.Resampling.BILINEAR, expand=True)
        corner = (round(layer.x * image_size - sprite.width / 2), round(layer.y * image_size - sprite.height / 2))
        canvas.paste(sprite, corner, sprite)
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class OpenClipartDishes(RawImageBuilder):
    """Builder of composed dishes from the Debian OpenClipart food drawings (defaults to /usr/share/openclipart)."""

    BUILDER_CONFIG_CLASS = OpenClipartDishesConfig
    BUILDER_CONFIGS = [OpenClipartDishesConfig(name="default", data_dir=DEBIAN_ROOT)]
    DEFAULT_CONFIG_NAME = "default"
    DEFAULT_DATA_DIR = DEBIAN_ROOT
    DESCRIPTION = (
        "Dishes composed from public-domain OpenClipart food drawings: each class is a recipe of shared "
        "ingredients, and each image's text is its own shuffled ingredient list, as in Vireo-Food172."
    )
    HOMEPAGE = "https://openclipart.org/"
    LICENSE = "cc0-1.0"  # the drawings are public domain; the composition adds nothing protected
    CITATION = OpenClipart.CITATION
    RAW_DATA_INSTRUCTIONS = (
        "On Debian or Ubuntu: `apt-get install openclipart-png`, then `marnet-data build openclipart-dishes --output "
        "<dir>` (the raw root defaults to /usr/share/openclipart)."
    )
    IMAGE_STORAGE = "Images are composed by the builder and stored as JPEG (quality 90)."

    @property
    def recipes(self) -> list[Recipe]:
        """The recipes, in label order."""
        self.index  # noqa: B018 (reading the index makes them)
        return self._recipes

    def _read_index(self, data_dir: Path) -> RawIndex:
        food_root = require_dir(data_dir / "png" / "food", "OpenClipart food drawings", HINT)
        config = self.config
        drawings, tableware = find_drawings(food_root, config.max_image_pixels)
        usable = sorted(kind for kind, paths in drawings.items() if len(paths) >= config.min_drawings_per_kind)
        self._recipes = make_recipes(usable, config)
        vocabulary = sorted({kind for recipe in self._recipes for kind in (*recipe.core, *recipe.optional)})
        kind_index = {kind: index for index, kind in enumerate(vocabulary)}
        class_names = [f"recipe_{label:02d}" for label in range(config.num_recipes)]
        counts = {
            "train": config.train_per_recipe,
            "validation": config.validation_per_recipe,
            "test": config.test_per_recipe,
        }
        splits = {}
        for split, count in counts.items():
            examples = []
            for label, recipe in enumerate(self._recipes):
                for number in range(count):
                    rng = random.Random(f"{config.seed}/{split}/{label}/{number}")
                    present, text, layers, background_seed = plan_dish(rng, recipe, drawings, tableware, config)
                    image_id = f"{split}/{class_names[label]}/{number:04d}"
                    examples.append(
                        DishExample(
                            image_id=image_id,
                            stored_path=f"{image_id}.jpg",
                            label=label,
                            ingredients=tuple(sorted(kind_index[kind] for kind in present)),
                            text=text,
                            source=f"seed {config.seed}, {image_id}",
                            background_seed=background_seed,
                            layers=layers,
                        )
                    )
            splits[split] = examples
        return RawIndex(class_names=class_names, ingredient_names=vocabulary, splits=splits)

    def stored_image_bytes(self) -> int:
        # A quality-90 JPEG of these images takes well under a byte per pixel.
        return sum(len(split) for split in self.index.splits.values()) * self.config.image_size**2

    def card_notes(self) -> str:
        rows = "".join(
            f"| recipe_{label:02d} | {', '.join(recipe.core)} | {', '.join(recipe.optional)} |\n"
            for label, recipe in enumerate(self.recipes)
        )
        config = self.config
        return (
            f"\nRecipes of seed {config.seed} (core kinds are dropped with probability {config.drop_probability}, "
            f"optional ones appear with probability {config.optional_probability}):\n\n"
            f"| class | core ingredients | optional ingredients |\n|---|---|---|\n{rows}"
        )

    def _generate_examples(self, examples: list[DishExample], with_text: bool):
        for example in examples:
            row = {
                "image": {"bytes": render_dish(example, self.config.image_size), "path": example.stored_path},
                "label": example.label,
                "ingredients": list(example.ingredients),
                "text": example.text,
                "image_id": example.image_id,
            }
            yield example.image_id, row
