"""Tiny datasets, vision towers and text encoders for the training tests, written to temporary directories.

The dataset has the features of the `dataset_scripts` builders (`image`, `label`, `ingredients`, `text`,
`image_id`); each class is a colour, so a tiny model learns it in a few steps.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import BertConfig, BertModel, BertTokenizerFast, ViTImageProcessor, ViTModel

from modeling_marnet import MARNetForImageClassification
from tiny_marnet import IMAGE_SIZE, TEXT_WIDTH, TINY_HEADS, tiny_config, tiny_vit_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASS_COLOURS = {
    "tomato_soup": (220, 30, 30),
    "pea_soup": (30, 200, 40),
    "blueberry_pie": (40, 40, 210),
    "banana_bread": (230, 220, 40),
}
INGREDIENTS = ["tomato", "pea", "blueberry", "banana", "flour"]


def _example(class_id, index, rng):
    name = list(CLASS_COLOURS)[class_id]
    colour = np.array(CLASS_COLOURS[name], dtype=np.int16)
    pixels = colour + rng.integers(-25, 26, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    ingredients = [class_id, 4] if class_id >= 2 else [class_id]
    text = ", ".join(INGREDIENTS[i] for i in ingredients)
    return {"image": image, "label": class_id, "ingredients": ingredients, "text": text, "image_id": f"{name}/{index}"}


def make_dataset_dict(split_sizes=None, with_text=True, seed=0):
    """A DatasetDict of colour images; classes cycle through the rows of each split."""
    split_sizes = split_sizes or {"train": 24, "validation": 11, "test": 9}
    rng = np.random.default_rng(seed)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(CLASS_COLOURS)),
            "ingredients": datasets.Sequence(datasets.ClassLabel(names=INGREDIENTS)),
            "text": datasets.Value("string"),
            "image_id": datasets.Value("string"),
        }
    )
    splits = {}
    for split, size in split_sizes.items():
        rows = [_example(i % len(CLASS_COLOURS), i, rng) for i in range(size)]
        splits[split] = datasets.Dataset.from_list(rows, features=features)
        if not with_text:
            splits[split] = splits[split].remove_columns("text")
    return datasets.DatasetDict(splits)


def save_dataset(directory, dataset_dict=None, parquet=False):
    """Saves with `save_to_disk`, or as one Parquet file per split (`<split>.parquet`, what the Hub serves)."""
    dataset_dict = dataset_dict if dataset_dict is not None else make_dataset_dict()
    directory = Path(directory)
    if parquet:
        directory.mkdir(parents=True, exist_ok=True)
        for split, dataset in dataset_dict.items():
            dataset.to_parquet(str(directory / f"{split}.parquet"))
    else:
        dataset_dict.save_to_disk(str(directory))
    return directory


def save_tiny_marnet(directory, **overrides):
    """A randomly initialised tiny full MARNet (labels of `make_dataset_dict`) and its image processor, saved to
    `directory` as a run folder would hold them; `overrides` are MARNetConfig fields."""
    torch.manual_seed(0)
    names = make_dataset_dict()["train"].features["label"].names
    config = tiny_config("full", id2label=dict(enumerate(names)), text_hidden_size=16, **overrides)
    MARNetForImageClassification(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(directory)
    return directory


def save_vision_tower(directory):
    """A tiny ViT tower (hidden 32, 2 layers, 30 px) with its image processor; the same weights on every run."""
    torch.manual_seed(0)
    config = tiny_vit_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ViTModel(config, add_pooling_layer=False).save_pretrained(directory)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(directory)
    return Path(directory)


def save_text_encoder(directory, hidden_size=TEXT_WIDTH):
    """A tiny random BERT with a WordPiece tokenizer over the fixture's words; the same weights on every run."""
    torch.manual_seed(1)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", *INGREDIENTS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(directory)
    return directory


def tiny_model_args(num_inference_steps=3):
    """`--marnet-config` options that make the MARNet heads as small as the tower."""
    args = [f"--marnet-config={key}={value}" for key, value in TINY_HEADS.items()]
    return args + ["--num-inference-steps", str(num_inference_steps)]


def train_argv(workspace, output_dir, *extra, dataset=None, text_encoder="bert"):
    """`marnet-train` options of a tiny run on `workspace` (the conftest fixture): its dataset (or `dataset`), tower
    and text encoder (`None`: no text), text features cached in the module's folder, batch 4, no trackers, tiny heads;
    then `extra`, which may override any of them."""
    argv = ["--dataset", dataset or workspace["dataset"], "--vision-model", workspace["tower"]]
    if text_encoder is not None:
        argv += ["--text-encoder", workspace[text_encoder], "--text-cache-dir", workspace["root"] / "cache"]
    argv += ["--output-dir", output_dir, "--per-device-train-batch-size", 4, "--report-to", "none"]
    return [*map(str, argv), *tiny_model_args(), *map(str, extra)]


def offline_env(**extra):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    env.update(extra)
    return env


def module_command(module, *args, launcher=None):
    """`python -m module args`, or `<launcher...> -m module args` (e.g. accelerate launch)."""
    return [*(launcher or [sys.executable]), "-m", module, *map(str, args)]


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (for a process group's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_process_launcher():
    """`accelerate launch` with two gloo processes on CPU (with ACCELERATE_USE_CPU=1 in the environment)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]


def run_command(command, timeout=240, env=None):
    """Runs a command from the repository root, offline; returns the CompletedProcess with text output."""
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env or offline_env(), cwd=REPO_ROOT
    )


def save_timm_tower(directory, image_size=48, **data_config_overrides):
    """A tiny random timm tower (`test_efficientnet`) saved as transformers saves timm models: TimmWrapper config
    with timm's data config (`data_config_overrides` replace its fields), and no preprocessor_config.json
    (AutoImageProcessor reads config.json)."""
    import timm
    from timm.models import filter_pretrained_cfg
    from transformers import TimmWrapperConfig, TimmWrapperModel

    timm_model = timm.create_model("test_efficientnet", pretrained=False)
    data_config = filter_pretrained_cfg(dict(timm_model.pretrained_cfg), remove_source=True, remove_null=True)
    data_config.update(input_size=(3, image_size, image_size), **data_config_overrides)
    config = TimmWrapperConfig.from_dict(
        {"architecture": "test_efficientnet", "num_classes": 2, "pretrained_cfg": data_config}
    )
    TimmWrapperModel(config).save_pretrained(directory)
    return Path(directory)
