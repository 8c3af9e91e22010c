"""Read and validate what `marnet-publish` publishes: a MARNet training output folder or a converted vision tower.

Everything is checked before any file is written or sent, so a broken folder is refused with a message that names
the file, what was expected and how to fix it.
"""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from marnet_cli.errors import CLIError
from marnet_cli.run_folder import METRICS_NAME, TRAINING_ARGS_NAME, RunFolder, read_json_object

CONFIG_NAME = "config.json"
PROCESSOR_NAME = "preprocessor_config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
CONVERSION_RECORD_NAME = "conversion.json"
REQUIRED_AUTO_MAP = ("AutoConfig", "AutoModelForImageClassification")


@dataclass
class TrainingRun:
    """A `marnet-train --output_dir` folder: the saved model plus what the run measured and how it was configured."""

    folder: Path
    config: dict
    metrics: dict
    training_args: dict
    weight_files: list = field(default_factory=list)  # safetensors files (and index), relative names
    code_files: list = field(default_factory=list)  # remote-code .py files, relative names

    @property
    def files_to_publish(self):
        return [CONFIG_NAME, PROCESSOR_NAME, *self.weight_files, *self.code_files, METRICS_NAME, TRAINING_ARGS_NAME]


@dataclass
class ConvertedVisionTower:
    """A `marnet-convert-efficientnet --output` folder: a TimmWrapper checkpoint and its conversion record."""

    folder: Path
    config: dict
    conversion: dict
    weight_files: list = field(default_factory=list)

    @property
    def files_to_publish(self):
        return [CONFIG_NAME, PROCESSOR_NAME, *self.weight_files, CONVERSION_RECORD_NAME]


def find_weight_files(folder):
    """Relative names of the safetensors weights in `folder` (a single file, or an index and its shards)."""
    if (folder / SAFETENSORS_NAME).is_file():
        return [SAFETENSORS_NAME]
    if (folder / SAFETENSORS_INDEX_NAME).is_file():
        index = read_json_object(folder / SAFETENSORS_INDEX_NAME, "save_pretrained")
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if not shards or missing:
            raise CLIError(f"{folder / SAFETENSORS_INDEX_NAME} lists missing or no shards: {missing or shards}.")
        return [SAFETENSORS_INDEX_NAME, *shards]
    others = sorted(name for name in os.listdir(folder) if name.endswith((".bin", ".pt", ".pth", ".ckpt")))
    found = f" Found only {others}: weights are published as safetensors only." if others else ""
    raise CLIError(
        f"No weights in {folder}: expected {SAFETENSORS_NAME} (or {SAFETENSORS_INDEX_NAME} with shards).{found} "
        "Save the model with `save_pretrained` (safetensors is its default)."
    )


def check_id2label(config, path):
    """The classifier's labels must be real names for classes 0..n-1, or the pipeline prints LABEL_i."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise CLIError(
            f"{path} has no id2label: set the class names when building the model "
            "(e.g. from the dataset's ClassLabel: `id2label=dict(enumerate(features['label'].names))`)."
        )
    if sorted(id2label) != sorted(str(i) for i in range(len(id2label))):
        raise CLIError(f"{path}: id2label keys must be the class ids 0..{len(id2label) - 1}, got {sorted(id2label)}.")
    if all(re.fullmatch(r"LABEL_\d+", str(name)) for name in id2label.values()):
        raise CLIError(f"{path}: id2label only holds placeholder names (LABEL_0, ...): set the dataset's class names.")


def find_remote_code_files(folder, auto_map, config_path):
    """The .py files `trust_remote_code` users need: the `auto_map` modules and their relative imports."""
    from transformers.dynamic_module_utils import get_relative_import_files

    files = set()
    for reference in auto_map.values():
        module_file = folder / f"{reference.split('.')[0]}.py"
        if not module_file.is_file():
            raise CLIError(
                f"{config_path} auto_map points to {module_file.name}, which is missing from {folder}: "
                "save the model with `save_pretrained` after `import modeling_marnet` (it copies the model files)."
            )
        files.add(module_file.name)
        try:
            files.update(Path(name).name for name in get_relative_import_files(str(module_file)))
        except OSError as error:
            raise CLIError(
                f"{module_file.name} imports a sibling file that is missing from {folder}: {error}"
            ) from None
    return sorted(files)


def load_training_run(folder, config):
    """Validate a MARNet training output folder whose config.json is already parsed."""
    config_path = folder / CONFIG_NAME
    check_id2label(config, config_path)
    auto_map = config.get("auto_map") or {}
    missing_auto = [name for name in REQUIRED_AUTO_MAP if name not in auto_map]
    if missing_auto:
        raise CLIError(
            f"{config_path} auto_map lacks {missing_auto}: `trust_remote_code` users could not load the model. "
            "Re-save it with `save_pretrained` from an installed modeling_marnet."
        )
    weight_files = find_weight_files(folder)
    read_json_object(folder / PROCESSOR_NAME, "the image processor's `save_pretrained` (the pipeline needs it)")
    run = RunFolder(folder)
    metrics, training_args = run.read_metrics(), run.read_training_args()
    return TrainingRun(
        folder=folder,
        config=config,
        metrics=metrics,
        training_args=training_args,
        weight_files=weight_files,
        code_files=find_remote_code_files(folder, auto_map, config_path),
    )


def load_vision_tower(folder, config):
    """Validate a converted TimmWrapper vision tower folder whose config.json is already parsed."""
    weight_files = find_weight_files(folder)
    read_json_object(folder / PROCESSOR_NAME, "marnet-convert-efficientnet")
    conversion = read_json_object(folder / CONVERSION_RECORD_NAME, "marnet-convert-efficientnet")
    return ConvertedVisionTower(folder=folder, config=config, conversion=conversion, weight_files=weight_files)


def load_source(folder):
    """A [`TrainingRun`] or [`ConvertedVisionTower`], chosen by the `model_type` in `folder/config.json`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CLIError(f"{folder} is not a folder: pass a `marnet-train --output_dir` or a converted vision tower.")
    config = read_json_object(folder / CONFIG_NAME, "`save_pretrained`")
    model_type = config.get("model_type")
    if model_type == "marnet":
        return load_training_run(folder, config)
    if model_type == "timm_wrapper":
        return load_vision_tower(folder, config)
    raise CLIError(
        f"{folder / CONFIG_NAME} has model_type {model_type!r}: expected 'marnet' (a marnet-train output folder) "
        "or 'timm_wrapper' (a marnet-convert-efficientnet output folder)."
    )


def hub_repo_id_or_none(value):
    """`value` if it names a Hub repo (`owner/name`, not an existing local path), else None."""
    if not isinstance(value, str) or value.count("/") != 1 or os.path.exists(value):
        return None
    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value
