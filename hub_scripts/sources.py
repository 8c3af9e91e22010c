"""Read and validate what `marnet-publish` publishes: a MARNet training output folder or a converted vision tower.

Everything is checked before any file is written or sent, so a broken folder is refused with a message that names
the file, what was expected and how to fix it. A published folder never holds:

- a file from outside the source folder: every name (weight shards listed by an index, model code named by
  `auto_map`) must be a plain file name there, not a path (`../outside.safetensors`), and every file published or
  read for publishing must really lie there (no link leading out of it) and be a regular file (no device, FIFO or
  socket; see [`check_publishable_file`]);
- NaN or infinite weights, metrics or settings (a diverged run);
- local paths: in training_args.json and config.json (`_name_or_path`) a local dataset, tower, checkpoint, output or
  cache folder becomes its base name; Hub ids stay (see [`public_training_args`]).
"""

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import SafetensorError, safe_open

from marnet_cli.errors import CLIError
from marnet_cli.files import file_kind
from marnet_cli.run_folder import (
    METRICS_NAME,
    REQUIRED_TRAINING_ARGS,
    SOURCE_OPTIONS,
    TRAINING_ARGS_NAME,
    RunFolder,
    read_json_object,
)

CONFIG_NAME = "config.json"
PROCESSOR_NAME = "preprocessor_config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
CONVERSION_RECORD_NAME = "conversion.json"
# The files read to validate a source folder, whichever its kind.
RECORD_NAMES = (
    CONFIG_NAME,
    PROCESSOR_NAME,
    SAFETENSORS_NAME,
    SAFETENSORS_INDEX_NAME,
    CONVERSION_RECORD_NAME,
    METRICS_NAME,
    TRAINING_ARGS_NAME,
)
REQUIRED_AUTO_MAP = ("AutoConfig", "AutoModelForImageClassification")
# training_args.json options that always name a local file or folder.
LOCAL_PATH_OPTIONS = (
    "output_dir",
    "text_cache_dir",
    "config_file",
    "resume_from_checkpoint",
    "train_dir",
    "validation_dir",
)


@dataclass
class TrainingOutput:
    """A `marnet-train --output_dir` folder: the saved model plus what the run measured and how it was configured."""

    folder: Path
    config: dict
    metrics: dict
    training_args: dict
    weight_files: list = field(default_factory=list)  # safetensors files (and index), relative names
    code_files: list = field(default_factory=list)  # remote-code .py files, relative names
    rewritten: dict = field(default_factory=dict)  # {name: text} published instead of the file (local paths removed)

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
    rewritten: dict = field(default_factory=dict)

    @property
    def files_to_publish(self):
        return [CONFIG_NAME, PROCESSOR_NAME, *self.weight_files, CONVERSION_RECORD_NAME]


def check_file_name(folder, name, listed_in):
    """`name` if it is a plain file name (not a path), else a [`CLIError`] naming `listed_in`, the file that gave
    the name. Where the file really lies is [`check_publishable_file`]'s job."""
    plain = isinstance(name, str) and name not in ("", ".", "..") and os.path.basename(name) == name
    if not plain or "\\" in name:
        raise CLIError(
            f"{listed_in} names {name!r}, which is not a file of {folder}: published files must lie in the source "
            "folder itself (no paths). Re-save the model with `save_pretrained`."
        )
    return name


def check_publishable_file(folder, name):
    """`name` if `folder/name` is a regular file whose real path (links followed) lies in `folder` itself, else a
    [`CLIError`] saying what it is. Applied to every file that is read for publishing or published."""
    path, root = Path(folder) / name, os.path.realpath(folder)
    real = os.path.realpath(path)
    if os.path.dirname(real) != root:
        raise CLIError(
            f"{path} is a link to {real}, outside {folder}: only the folder's own files are published. Replace the "
            "link by a copy of the file, or remove it."
        )
    try:
        mode = os.stat(real).st_mode
    except OSError as error:
        raise CLIError(f"{path} cannot be read ({error.strerror}).") from None
    if not stat.S_ISREG(mode):
        raise CLIError(f"{path} is not a regular file (it is a {file_kind(mode)}): only regular files are published.")
    return name


def find_weight_files(folder):
    """Relative names of the safetensors weights in `folder` (a single file, or an index and its shards)."""
    if (folder / SAFETENSORS_NAME).is_file():
        return [check_file_name(folder, SAFETENSORS_NAME, folder)]
    if (folder / SAFETENSORS_INDEX_NAME).is_file():
        index_file = folder / SAFETENSORS_INDEX_NAME
        index = read_json_object(index_file, "save_pretrained")
        weight_map = index.get("weight_map", {})
        if not isinstance(weight_map, dict):
            raise CLIError(f"{index_file}: 'weight_map' must map tensor names to shard files, got {weight_map!r}.")
        shards = sorted({check_file_name(folder, name, index_file) for name in weight_map.values()})
        missing = [name for name in shards if not os.path.lexists(folder / name)]
        if not shards or missing:
            raise CLIError(f"{index_file} lists missing or no shards: {missing or shards}.")
        return [SAFETENSORS_INDEX_NAME, *(check_publishable_file(folder, name) for name in shards)]
    others = sorted(name for name in os.listdir(folder) if name.endswith((".bin", ".pt", ".pth", ".ckpt")))
    found = f" Found only {others}: weights are published as safetensors only." if others else ""
    raise CLIError(
        f"No weights in {folder}: expected {SAFETENSORS_NAME} (or {SAFETENSORS_INDEX_NAME} with shards).{found} "
        "Save the model with `save_pretrained` (safetensors is its default)."
    )


def check_finite_weights(folder, weight_files):
    """Refuses weights holding NaN or infinite values (a diverged run), naming the file and the first tensors."""
    for name in weight_files:
        if not name.endswith(".safetensors"):
            continue
        bad, total = [], 0
        try:
            with safe_open(Path(folder) / name, framework="pt") as weights:
                for key in weights.keys():
                    tensor = weights.get_tensor(key)
                    total += 1
                    if tensor.is_floating_point() and not tensor.isfinite().all():
                        bad.append(key)
        except (SafetensorError, OSError) as error:
            raise CLIError(f"{Path(folder) / name} is not a readable safetensors file ({error}).") from None
        if bad:
            raise CLIError(
                f"{Path(folder) / name}: {len(bad)} of {total} tensors hold NaN or infinite values "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): the run diverged. Retrain (e.g. with a "
                "lower --learning_rate) before publishing."
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
    """The .py files `trust_remote_code` users need: the `auto_map` modules and, transitively, their relative
    imports (as transformers finds them), each checked ([`check_publishable_file`]) before it is read."""
    from transformers.dynamic_module_utils import get_relative_imports

    pending = []
    for key, reference in auto_map.items():
        module = str(reference).rpartition(".")[0]
        if not module or "--" in module:
            raise CLIError(
                f"{config_path}: auto_map[{key!r}] is {reference!r}, expected 'module.Class' naming a .py file of "
                f"{folder}. Re-save the model with `save_pretrained` from an installed modeling_marnet."
            )
        pending.append((f"{module.split('.')[0]}.py", f"{config_path} auto_map[{key!r}] ({reference!r})"))
    files = set()
    while pending:
        name, needed_by = pending.pop()
        if name in files:
            continue
        check_file_name(folder, name, needed_by)
        if not os.path.lexists(folder / name):
            raise CLIError(
                f"{needed_by} needs {name}, which is missing from {folder}: save the model with `save_pretrained` "
                "after `import modeling_marnet` (it copies the model files)."
            )
        check_publishable_file(folder, name)
        files.add(name)
        pending += [(f"{module}.py", name) for module in get_relative_imports(folder / name)]
    return sorted(files)


def check_run_records(folder):
    """Refuses a MARNet folder without the run records the card is built from (metrics.json, training_args.json),
    such as `transformers.Trainer.save_model` output, with the commands and keys that complete it."""
    missing = [name for name in (METRICS_NAME, TRAINING_ARGS_NAME) if not (folder / name).is_file()]
    if not missing:
        return
    steps = []
    if METRICS_NAME in missing:
        steps.append(
            f"{METRICS_NAME}: measure the model with `marnet-eval --model_name_or_path {folder} --dataset_name "
            f"DATASET --split test --metrics_file {folder / METRICS_NAME}` (the card reports measured top-1/top-5)"
        )
    if TRAINING_ARGS_NAME in missing:
        example = {name: "..." for name in REQUIRED_TRAINING_ARGS}
        steps.append(
            f"{TRAINING_ARGS_NAME}: a JSON object of the run's settings with at least the keys the card states, "
            f"{json.dumps(example)} (dataset and towers as Hub ids or paths, ablation a MARNetConfig.from_ablation "
            "name; other keys, e.g. learning_rate, are listed in the card too)"
        )
    trainer_files = [name for name in ("trainer_state.json", "training_args.bin") if (folder / name).is_file()]
    origin = f" (it has {', '.join(trainer_files)}: a transformers.Trainer folder)" if trainer_files else ""
    raise CLIError(
        f"{folder} lacks {' and '.join(missing)}, which marnet-train writes{origin}. Add:\n  - " + "\n  - ".join(steps)
    )


def load_training_output(folder, config):
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
    check_run_records(folder)
    run = RunFolder(folder)
    metrics, recorded = run.read_metrics(), run.read_training_args()
    training_args = public_training_args(recorded)
    code_files = find_remote_code_files(folder, auto_map, config_path)
    check_finite_weights(folder, weight_files)
    local_values = {str(recorded[option]) for option in SOURCE_OPTIONS if recorded.get(option)}
    rewritten = {
        TRAINING_ARGS_NAME: json.dumps(training_args, indent=2) + "\n",
        **public_config_text(config, local_values),
    }
    return TrainingOutput(
        folder=folder,
        config=config,
        metrics=metrics,
        training_args=training_args,
        weight_files=weight_files,
        code_files=code_files,
        rewritten=rewritten,
    )


def load_vision_tower(folder, config):
    """Validate a converted TimmWrapper vision tower folder whose config.json is already parsed."""
    weight_files = find_weight_files(folder)
    read_json_object(folder / PROCESSOR_NAME, "marnet-convert-efficientnet")
    conversion = read_json_object(folder / CONVERSION_RECORD_NAME, "marnet-convert-efficientnet")
    check_finite_weights(folder, weight_files)
    return ConvertedVisionTower(
        folder=folder,
        config=config,
        conversion=conversion,
        weight_files=weight_files,
        rewritten=public_config_text(config, set()),
    )


def load_source(folder):
    """A [`TrainingOutput`] or [`ConvertedVisionTower`], chosen by the `model_type` in `folder/config.json`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CLIError(f"{folder} is not a folder: pass a `marnet-train --output_dir` or a converted vision tower.")
    for name in RECORD_NAMES:  # before any of them is read
        if os.path.lexists(folder / name):
            check_publishable_file(folder, name)
    config = read_json_object(folder / CONFIG_NAME, "`save_pretrained`")
    model_type = config.get("model_type")
    if model_type in ("marnet", "timm_wrapper"):
        source = (load_training_output if model_type == "marnet" else load_vision_tower)(folder, config)
        for name in source.files_to_publish:
            check_publishable_file(folder, name)
        return source
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


def source_hub_id(training_args, option):
    """The Hub id that the source option (`dataset`, `vision_model`, ...) of a run named, or None when it was a
    local path where the run started (training_args.json's `local_sources`; a relative path such as
    `datasets/vireo-food172` is no Hub id)."""
    if option in training_args.get("local_sources", ()):
        return None
    return hub_repo_id_or_none(training_args.get(option))


def _base_name(value):
    return Path(str(value).rstrip("/\\")).name or str(value)


def _is_local_path(value):
    return isinstance(value, str) and (os.path.isabs(value) or value.startswith(("~", "./", "../")))


def _without_local_paths(value):
    """`value` (parsed JSON) with every absolute or home-relative path string replaced by its base name."""
    if isinstance(value, dict):
        return {key: _without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_local_paths(item) for item in value]
    return _base_name(value) if _is_local_path(value) else value


def public_training_args(training_args):
    """training_args.json as published: the local paths of the source options (those in `local_sources`, which is
    inferred for records that lack it), of the output/cache/config options and any other absolute path become base
    names; Hub ids stay, for the card to link."""
    public = dict(training_args)
    if "local_sources" not in public:
        public["local_sources"] = [
            option for option in SOURCE_OPTIONS if public.get(option) and hub_repo_id_or_none(public[option]) is None
        ]
    for option in (*public["local_sources"], *LOCAL_PATH_OPTIONS):
        if isinstance(public.get(option), str) and not (
            option == "resume_from_checkpoint" and public[option] == "latest"
        ):
            public[option] = _base_name(public[option])
    return _without_local_paths(public)


def public_config_text(config, local_values):
    """{config.json: text} when the config names local paths (`_name_or_path` of the model or a sub-config: a
    value in `local_values`, or any path that is no Hub id), with those reduced to base names; else {}."""

    def strip(value):
        if isinstance(value, dict):
            return {
                key: _public_name(item, local_values) if key == "_name_or_path" else strip(item)
                for key, item in value.items()
            }
        return value

    public = _without_local_paths(strip(config))
    if public == config:
        return {}
    return {CONFIG_NAME: json.dumps(public, indent=2, sort_keys=True) + "\n"}


def _public_name(value, local_values):
    if not isinstance(value, str) or not value:
        return value
    local = value in local_values or _is_local_path(value) or hub_repo_id_or_none(value) is None
    return _base_name(value) if local else value
