"""Regenerate the demo data, `data/openclipart-food-demo/`, from the Debian OpenClipart packages.

Builds the OpenClipart "food" config with the `OpenClipart` builder (same labels, text and seeded
split), keeps the sub-categories with at least `--min-images` drawings, and shrinks every image to a
JPEG thumbnail (transparent areas on white) so the whole folder stays small enough to commit. Unlike
the builders, this re-encodes images on purpose; the dataset card says so. The output is Parquet
+ card in the Hub layout, so `load_dataset("data/openclipart-food-demo")` reads it with no code.

    apt-get install openclipart-png openclipart-svg
    python -m dataset_scripts.make_demo_subset              # rewrites data/openclipart-food-demo
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import datasets
from PIL import Image

from .card import dataset_card
from .hub import write_hub_folder
from .openclipart import DEBIAN_ROOT, OpenClipart

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "data" / "openclipart-food-demo"
REPO_ID = "data/openclipart-food-demo"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=DEBIAN_ROOT, help="OpenClipart root holding png/ and svg/")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--min-images", type=int, default=10, help="leave out sub-categories with fewer drawings")
    parser.add_argument("--thumbnail-size", type=int, default=96, help="longest side of the thumbnails in pixels")
    parser.add_argument("--jpeg-quality", type=int, default=85)
    return parser.parse_args(argv)


def thumbnail_jpeg(image: Image.Image, size: int, quality: int) -> bytes:
    """The image flattened on white, shrunk to fit `size` x `size`, as JPEG bytes."""
    rgba = image.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat.alpha_composite(rgba)
    rgb = flat.convert("RGB")
    rgb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def demo_subset(
    dataset_dict: datasets.DatasetDict, min_images: int, thumbnail_size: int, jpeg_quality: int
) -> datasets.DatasetDict:
    """Keep classes with at least `min_images` images, relabel them densely, prune the tag vocabulary
    to the tags still used, and replace each image by a JPEG thumbnail."""
    features = dataset_dict["train"].features
    class_names = features["label"].names
    counts = Counter(label for dataset in dataset_dict.values() for label in dataset["label"])
    kept_classes = [name for label, name in enumerate(class_names) if counts[label] >= min_images]
    new_label = {class_names.index(name): index for index, name in enumerate(kept_classes)}
    dataset_dict = dataset_dict.filter(lambda label: label in new_label, input_columns="label")

    tag_names = features["ingredients"].feature.names
    used_tags = sorted(
        {tag_names[i] for dataset in dataset_dict.values() for row in dataset["ingredients"] for i in row}
    )
    new_tag = {tag_names.index(name): index for index, name in enumerate(used_tags)}
    subset_features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=kept_classes),
            "ingredients": datasets.List(datasets.ClassLabel(names=used_tags)),
            "text": datasets.Value("string"),
            "image_id": datasets.Value("string"),
        }
    )

    def shrink(row):
        return {
            "image": {
                "bytes": thumbnail_jpeg(row["image"], thumbnail_size, jpeg_quality),
                "path": str(Path(row["image_id"]).with_suffix(".jpg")),
            },
            "label": new_label[row["label"]],
            "ingredients": [new_tag[i] for i in row["ingredients"]],
        }

    return dataset_dict.map(shrink, features=subset_features)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".demo-", dir=args.output.parent) as scratch:
        builder = OpenClipart(config_name="food", data_dir=args.data_dir, cache_dir=str(Path(scratch) / "cache"))
        builder.download_and_prepare()
        subset = demo_subset(builder.as_dataset(), args.min_images, args.thumbnail_size, args.jpeg_quality)
        notes = (
            f"\n### Demo subset\n\nThis is the demo subset of the `food` config: sub-categories with at least "
            f"{args.min_images} drawings, every image re-encoded as a JPEG thumbnail of at most "
            f"{args.thumbnail_size} px (transparency flattened on white, quality {args.jpeg_quality}) so the "
            "repository stays small. The full builder never re-encodes images. Regenerate with "
            "`python -m dataset_scripts.make_demo_subset` after `apt-get install openclipart-png openclipart-svg`.\n"
        )
        staging = Path(scratch) / "result"
        write_hub_folder(
            subset,
            staging,
            lambda parquet_bytes: dataset_card(
                builder,
                subset,
                REPO_ID,
                parquet_bytes,
                pretty_name="OpenClipart food (demo subset)",
                extra_notes=notes,
                image_storage=(
                    "Images are small JPEG thumbnails re-encoded from the originals (see Demo subset below)."
                ),
            ),
        )
        if args.output.exists():
            shutil.rmtree(args.output)
        staging.rename(args.output)
    sizes = {split: len(dataset) for split, dataset in subset.items()}
    total_bytes = sum(path.stat().st_size for path in args.output.rglob("*") if path.is_file())
    print(
        f"wrote {args.output}: {sizes}, {len(subset['train'].features['label'].names)} classes, {total_bytes:,} bytes"
    )


if __name__ == "__main__":
    main()
