"""The image processor a run trains with and saves: the tower's or checkpoint's own, a timm tower's as the equivalent
`BitImageProcessor`, with the `--image_size` override, and the size of the images it outputs. How its steps are
split between the DataLoader workers and the training step is `pixels.py`'s job.
"""

import math

from transformers import AutoImageProcessor, BitImageProcessor
from transformers.image_utils import PILImageResampling

from marnet_cli.errors import CLIError, UsageError

TIMM_INTERPOLATIONS = {"bicubic": PILImageResampling.BICUBIC, "bilinear": PILImageResampling.BILINEAR}


def standard_image_processor(image_processor):
    """`image_processor`, or for timm towers the equivalent `BitImageProcessor`.

    `TimmWrapperImageProcessor.save_pretrained` writes nothing and its loading reads a timm `config.json`, so a MARNet
    folder trained on a timm tower would carry no usable `preprocessor_config.json` (no pipeline, no publishing).
    timm's eval transform (resize the shortest edge to `floor(size / crop_pct)`, center crop, normalize) is exactly a
    `BitImageProcessor`; pixels differ from timm's own by at most one 8-bit level (resampling implementations).
    """
    if type(image_processor).__name__ != "TimmWrapperImageProcessor":
        return image_processor
    data_config = image_processor.data_config
    interpolation = data_config.get("interpolation", "bicubic")
    if interpolation not in TIMM_INTERPOLATIONS or data_config.get("crop_mode", "center") != "center":
        raise CLIError(
            f"The timm tower's data config ({data_config}) uses interpolation {interpolation!r} / crop mode "
            f"{data_config.get('crop_mode')!r}; supported: {sorted(TIMM_INTERPOLATIONS)} with a center crop. "
            "Save a transformers image processor next to the tower instead."
        )
    _, height, width = data_config["input_size"]
    return BitImageProcessor(
        size={"shortest_edge": math.floor(height / data_config.get("crop_pct", 0.875))},
        resample=TIMM_INTERPOLATIONS[interpolation],
        crop_size={"height": height, "width": width},
        image_mean=list(data_config["mean"]),
        image_std=list(data_config["std"]),
        do_convert_rgb=True,
    )


def processor_image_size(image_processor):
    """(height, width) of the images the processor outputs."""
    size = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else image_processor.size
    size = dict(size)
    if "height" in size:
        return size["height"], size["width"]
    edge = size.get("shortest_edge") or size.get("longest_edge")
    return edge, edge


def set_processor_image_size(image_processor, image_size):
    """Makes the processor output `image_size` x `image_size` images (resize, then no crop)."""
    image_processor.size = {"height": image_size, "width": image_size}
    if hasattr(image_processor, "do_center_crop"):
        image_processor.do_center_crop = False


def load_image_processor(args, vision_config):
    """The image processor of the tower or checkpoint, with the `--image_size` override, checked against the
    tower's fixed input size (ViT-like towers)."""
    source = args.model_name_or_path or args.vision_model
    try:
        image_processor = standard_image_processor(
            AutoImageProcessor.from_pretrained(source, trust_remote_code=args.trust_remote_code)
        )
    except (OSError, ValueError) as error:
        raise CLIError(
            f"{source}: no image processor ({error}). Save one next to the model "
            "(`image_processor.save_pretrained(dir)` writes preprocessor_config.json)."
        ) from None
    if args.image_size is not None:
        set_processor_image_size(image_processor, args.image_size)
    expected = getattr(vision_config, "image_size", None)
    height, width = processor_image_size(image_processor)
    if isinstance(expected, int) and (height, width) != (expected, expected):
        raise UsageError(
            f"The image processor gives {height}x{width} images but the {vision_config.model_type} tower expects "
            f"{expected}x{expected}. Drop --image_size or use a tower trained at that size."
        )
    return image_processor
