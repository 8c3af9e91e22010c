"""Tiny raw datasets written in exactly the layouts of docs/datasets.md, for the builder tests.

The contents are literal tables below, so tests compare what the builders produce against
values written by hand (class orders that are not sorted, leading slashes, 1/-1 values, crawled
file names, grayscale and CMYK JPEGs), never against the builders' own parsing.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

# ---------------------------------------------------------------- Vireo-Food172
# 11 classes so that folder "10" sorts between "1" and "2" as strings; ";" in a name.
VIREO_CLASSES = [
    "Braised pork",
    "Shredded pork with garlic sauce; spicy",
    "Mapo tofu",
    "Scrambled egg with tomato",
    "Fried rice",
    "Kung pao chicken",
    "Steamed fish",
    "Sweet and sour pork",
    "Hot pot",
    "Dumplings",
    "Spring rolls",
]
VIREO_INGREDIENTS = ["Shredded pork", "Green pepper", "Egg", "Tomato", "Tofu"]
# split -> (path as in the split file, ingredient columns marked 1, JPEG mode), in split-file order:
# grouped by class folder in string order (1, 10, 11, 2, ...), like the real files.
VIREO_SPLITS = {
    "train": [
        ("/1/16_1.jpg", [2, 3], "L"),
        ("/1/8_5.jpg", [0, 1], "RGB"),
        ("/10/8_5.jpg", [4], "RGB"),  # same basename as /1/8_5.jpg
        ("/2/1271640204.51_nature_6.jpg", [0], "CMYK"),
    ],
    "validation": [("/11/hongshao+rou.jpg", [1, 2], "RGB")],
    "test": [("/2/3.jpg_4.jpg", [], "RGB"), ("/3/100_2.jpg", [0, 1, 2, 3, 4], "RGB")],
}
VIREO_SPLIT_FILES = {"train": "TR.txt", "validation": "VAL.txt", "test": "TE.txt"}
VIREO_LABELS = {"train": [0, 0, 9, 1], "validation": [10], "test": [1, 2]}

# ---------------------------------------------------------------- Food-101 / Ingredient-101
# classes.txt order is NOT sorted(): cheesecake precedes cheese_plate.
FOOD101_CLASSES = ["apple_pie", "cheesecake", "cheese_plate", "baby_back_ribs"]
FOOD101_READABLE = ["Apple pie", "Cheesecake", "Cheese plate", "Baby back ribs"]
# entry -> JPEG mode
FOOD101_SPLITS = {
    "train": [
        ("apple_pie/1005649", "RGB"),
        ("apple_pie/1011328", "RGB"),
        ("cheesecake/1001", "RGB"),
        ("cheese_plate/2002", "L"),
        ("baby_back_ribs/3003", "CMYK"),
    ],
    "test": [("cheesecake/1004", "RGB"), ("cheese_plate/2005", "RGB"), ("baby_back_ribs/3006", "L")],
}
FOOD101_LABELS = {"train": [0, 0, 1, 2, 3], "test": [1, 2, 3]}
INGREDIENT101_LINES = [
    "apple,sugar,salt,butter,egg,water,lemon juice,cinnamon,flour",
    "cream cheese,sugar, Egg ,,graham crackers,sugar",
    "cheese,grapes,crackers",
    "pork ribs,barbecue sauce,salt",
]
INGREDIENT101_SIMPLIFIED_LINES = ["apple,sugar,flour", "cheese,sugar", "cheese,grapes", "pork,sauce"]
# Expected per-class ingredient lists after parsing (lowercased, stripped, no empties or repeats).
INGREDIENT101_CLASS_INGREDIENTS = [
    ["apple", "sugar", "salt", "butter", "egg", "water", "lemon juice", "cinnamon", "flour"],
    ["cream cheese", "sugar", "egg", "graham crackers"],
    ["cheese", "grapes", "crackers"],
    ["pork ribs", "barbecue sauce", "salt"],
]
# Ingredient-101 splits: train + validation = Food-101 train; test = Food-101 test.
INGREDIENT101_SPLITS = {
    "train": ["apple_pie/1005649", "cheesecake/1001", "baby_back_ribs/3003"],
    "validation": ["apple_pie/1011328", "cheese_plate/2002"],
    "test": ["cheesecake/1004", "cheese_plate/2005", "baby_back_ribs/3006"],
}
INGREDIENT101_LABELS = {"train": [0, 1, 3], "validation": [0, 2], "test": [1, 2, 3]}
INGREDIENT101_SPELLINGS = {
    "images": {"train": "train_images.txt", "validation": "val_images.txt", "test": "test_images.txt"},
    "split": {"train": "train_split.txt", "validation": "val_split.txt", "test": "test.txt"},
}
INGREDIENT101_LABEL_FILES = {"train": "train_labels.txt", "validation": "val_labels.txt", "test": "test_labels.txt"}


def jpeg_bytes(mode: str = "RGB", seed: int = 0, size: tuple[int, int] = (12, 10)) -> bytes:
    """A small JPEG in `mode` ("RGB", "L" or "CMYK") whose pixels depend on `seed`."""
    channels = len(mode)
    pixels = bytes((seed * 37 + index * 11) % 256 for index in range(size[0] * size[1] * channels))
    buffer = io.BytesIO()
    Image.frombytes(mode, size, pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def write_vireo(root: Path) -> Path:
    """Write the Vireo-Food172 fixture under `root`; return `root`."""
    annotations = root / "SplitAndIngreLabel"
    _write(annotations / "FoodList.txt", "".join(f"{name}\n" for name in VIREO_CLASSES))
    _write(annotations / "IngredientList.txt", "".join(f"{name}\n" for name in VIREO_INGREDIENTS))
    rows = []
    for seed, (split, entries) in enumerate(VIREO_SPLITS.items()):
        _write(annotations / VIREO_SPLIT_FILES[split], "".join(f"{path}\n" for path, _, _ in entries))
        for offset, (path, present, mode) in enumerate(entries):
            _write(root / "ready_chinese_food" / path.lstrip("/"), jpeg_bytes(mode, seed * 10 + offset))
            values = ["1" if column in present else "-1" for column in range(len(VIREO_INGREDIENTS))]
            separator = "  " if offset % 2 else " "  # one space or several
            rows.append(path + separator + separator.join(values))
    # IngreLabel.txt rows are looked up by path, so write them in another order.
    _write(annotations / "IngreLabel.txt", "".join(f"{row}\n" for row in reversed(rows)))
    return root


def write_food101(root: Path) -> Path:
    """Write the Food-101 fixture (images + meta) under `root`; return `root`."""
    meta = root / "meta"
    _write(meta / "classes.txt", "".join(f"{name}\n" for name in FOOD101_CLASSES))
    _write(meta / "labels.txt", "".join(f"{name}\n" for name in FOOD101_READABLE))
    for split, entries in FOOD101_SPLITS.items():
        _write(meta / f"{split}.txt", "".join(f"{entry}\n" for entry, _ in entries))
        grouped: dict[str, list[str]] = {}
        for entry, _ in entries:
            grouped.setdefault(entry.split("/")[0], []).append(entry)
        _write(meta / f"{split}.json", json.dumps(grouped))
        for seed, (entry, mode) in enumerate(entries):
            _write(root / "images" / f"{entry}.jpg", jpeg_bytes(mode, seed))
    return root


def write_ingredient101(root: Path, spelling: str = "images") -> Path:
    """Write the Ingredient-101 annotations under `root` with split files spelled `spelling`."""
    annotations = root / "annotations"
    _write(annotations / "classes.txt", "".join(f"{name}\n" for name in FOOD101_CLASSES))
    _write(annotations / "ingredients.txt", "".join(f"{line}\n" for line in INGREDIENT101_LINES))
    _write(annotations / "ingredients_simplified.txt", "".join(f"{line}\n" for line in INGREDIENT101_SIMPLIFIED_LINES))
    for split, entries in INGREDIENT101_SPLITS.items():
        _write(annotations / INGREDIENT101_SPELLINGS[spelling][split], "".join(f"{entry}\n" for entry in entries))
        labels = INGREDIENT101_LABELS[split]
        _write(annotations / INGREDIENT101_LABEL_FILES[split], "".join(f"{label}\n" for label in labels))
    return root


# ---------------------------------------------------------------- OpenClipart (Debian layout)
OPENCLIPART_SVG = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:cc="http://web.resource.org/cc/"
     xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title>
    <dc:description>{description}</dc:description>
    <dc:subject><rdf:Bag>{tags}</rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>Some Author</dc:title></cc:Agent></dc:creator>
  </cc:Work></rdf:RDF></metadata>
  <rect width="8" height="8"/>
</svg>
"""
OPENCLIPART_SVG_WITHOUT_METADATA = '<svg xmlns="http://www.w3.org/2000/svg"><rect width="8" height="8"/></svg>\n'
# Regular drawings: path under png/ -> (title, description, raw tags).
OPENCLIPART_DRAWINGS = {
    "food/fruit/apple.png": ("An Apple", "", ["hash", "", "Food", "fruit", "hash(0x8a0b6a8)", "food", "apple"]),
    "food/desserts/pie.png": ("Cherry pie", "A pie with cherries.", ["dessert", "pie"]),
    "food/menu.png": ("Menu", "", ["menu"]),  # directly under food/: no sub-category
    "animals/crawfish.png": ("Crawfish", "Crawfish", ["animal"]),
    **{f"food/fruit/fruit_{index}.png": (f"Fruit {index}", "", ["fruit"]) for index in range(9)},
    **{f"food/desserts/cake_{index}.png": (f"Cake {index}", "", ["dessert"]) for index in range(9)},
}
OPENCLIPART_NO_METADATA = "food/fruit/fruit_0.png"
# Symlinks as in the package: path -> relative target.
OPENCLIPART_LINKS = {
    "food/fruit/pie.png": "../desserts/pie.png",  # cross-listed: real location desserts
    "food/fruit/crawfish.png": "../../animals/crawfish.png",  # real location outside food/
    "food/fruit/apple_02.png": "apple.png",  # a duplicate in the same folder
}


def png_bytes(seed: int, size: tuple[int, int] = (8, 8)) -> bytes:
    """A small RGBA PNG whose pixels depend on `seed`."""
    pixels = bytes((seed * 29 + index * 7) % 256 for index in range(size[0] * size[1] * 4))
    buffer = io.BytesIO()
    Image.frombytes("RGBA", size, pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_openclipart(root: Path) -> Path:
    """Write the OpenClipart fixture (png/ + svg/ trees with symlinks) under `root`; return `root`."""
    for seed, (path, (title, description, tags)) in enumerate(OPENCLIPART_DRAWINGS.items()):
        _write(root / "png" / path, png_bytes(seed))
        svg = root / "svg" / path.replace(".png", ".svg")
        if path == OPENCLIPART_NO_METADATA:
            _write(svg, OPENCLIPART_SVG_WITHOUT_METADATA)
        else:
            items = "".join(f"<rdf:li>{tag}</rdf:li>" for tag in tags)
            _write(svg, OPENCLIPART_SVG.format(title=title, description=description, tags=items))
    for path, target in OPENCLIPART_LINKS.items():
        (root / "png" / path).symlink_to(target)
        (root / "svg" / path.replace(".png", ".svg")).symlink_to(target.replace(".png", ".svg"))
    return root


# ---------------------------------------------------------------- OpenClipart dishes
# Food drawings named as in the Debian package: five kinds with two drawings each (one of them an RGB drawing on
# white paper), a kind with a single drawing (left out), a plate (tableware), a file of no kind, and a symlink that
# lists a drawing twice.
DISH_DRAWINGS = {
    "food/fruit/apple.png": "RGBA",
    "food/fruit/apple_bw.png": "RGBA",
    "food/fruit/banana.png": "RGBA",
    "food/fruit/bananas_nicu_01.png": "RGBA",
    "food/fruit/cherries.png": "RGBA",
    "food/fruit/cherry_jean_01.png": "RGBA",
    "food/fruit/lemon.png": "RGBA",
    "food/fruit/lemon_slice_ganson.png": "RGBA",
    "food/fruit/lime_half_ganson.png": "RGBA",
    "food/fruit/lime_wedge_ganson.png": "RGB",
    "food/fruit/pear.png": "RGBA",
    "food/large_plate.png": "RGBA",
    "food/chef_01.png": "RGBA",
}
DISH_LINKS = {"food/desserts/apple.png": "../fruit/apple.png"}
DISH_KINDS = ["apple", "banana", "cherry", "lemon", "lime"]


def drawing_bytes(seed: int, mode: str) -> bytes:
    """A 16x12 drawing: a coloured ellipse on a transparent background (RGBA) or on white paper (RGB)."""
    image = Image.new(mode, (16, 12), (0, 0, 0, 0) if mode == "RGBA" else (255, 255, 255))
    ImageDraw.Draw(image).ellipse((2, 1, 13, 10), fill=((seed * 53) % 256, (seed * 97) % 200, 40, 255)[: len(mode)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_food_drawings(root: Path) -> Path:
    """Write the dish drawings under `root/png/` (Debian's layout); return `root`."""
    for seed, (path, mode) in enumerate(DISH_DRAWINGS.items()):
        _write(root / "png" / path, drawing_bytes(seed, mode))
    for path, target in DISH_LINKS.items():
        (root / "png" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "png" / path).symlink_to(target)
    return root
