"""The DataLoaders of a run, built in one place ([`make_loaders`], as timm's `create_loader`) for `marnet-train` and
`marnet-eval`: each split's examples (`batches.ImageTextExamples`: decoding, augmentation, the image processor's
per-image steps) and collator, the DataLoader's workers, prefetching, pinned memory and private generator
([`LoaderSettings`]), and the training step's `batch -> model inputs` for them (`batches.model_inputs`).
"""

import os
from dataclasses import dataclass

import datasets
import torch
from torch.utils.data import DataLoader

from .augmentation import RandomAugmentation
from .batches import ImagePreprocessing, ImageTextExamples, MARNetCollator, model_inputs
from .device_decoding import check_gpu_decode
from .image_processing import processor_image_size
from .model_setup import trains_ingredients

PREFETCH_BATCHES = 2  # per DataLoader worker
# A bound on the default number of DataLoader workers per training process (`--dataloader_num_workers`).
MAX_DEFAULT_WORKERS = 16


def default_num_workers(local_processes):
    """DataLoader workers per training process: the CPU cores this process may use, shared among the training
    processes of the node, at most `MAX_DEFAULT_WORKERS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(MAX_DEFAULT_WORKERS, cores // max(local_processes, 1))


@dataclass(frozen=True)
class LoaderSettings:
    """How the DataLoaders load: in `workers` processes (0: in the main process), in pinned memory or not, shuffled
    by a private generator seeded with `seed` (None: the global RNG, as a plain DataLoader), and with
    `decode_device` (`--gpu_decode`) the images left for the training step to decode there. The defaults are a plain
    DataLoader's, as `marnet-eval` uses."""

    workers: int = 0
    pin_memory: bool = False
    seed: int | None = None
    decode_device: torch.device | None = None

    @classmethod
    def for_training(cls, args, accelerator, image_processor):
        """A training process's: `--dataloader_num_workers`, or by default the CPU cores of this process's share of
        the node; pinned memory on a GPU; `--seed`; with `--gpu_decode`, once `device_decoding.check_gpu_decode`
        has passed, decoding on the accelerator."""
        if args.gpu_decode:
            check_gpu_decode(accelerator.device, image_processor)
        workers = args.dataloader_num_workers
        if workers is None:
            workers = default_num_workers(int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))
        return cls(
            workers=workers,
            pin_memory=accelerator.device.type == "cuda",
            seed=args.seed,
            decode_device=accelerator.device if args.gpu_decode else None,
        )


@dataclass(frozen=True)
class TrainingData:
    """The training split and what its examples carry besides the image and the label: frozen text features
    `text_embeds` (N, D), or the raw `text_column` tokenized per batch by `tokenizer` as `encoding` says (a text
    encoder trained jointly); with `ingredient_column`, the ingredients as multi-hot labels (`num_ingredients`)."""

    split: datasets.Dataset
    text_embeds: torch.Tensor | None = None
    text_column: str | None = None
    tokenizer: object = None
    encoding: object = None
    ingredient_column: str | None = None
    num_ingredients: int = 0

    @classmethod
    def for_run(cls, args, split, parts, text_embeds):
        """What a run with the `model_setup.ModelParts` `parts` trains on: `text_embeds` of a frozen encoder, or the
        text for a joint one; the ingredients when the config's ingredient head trains."""
        config = parts.model.config
        return cls(
            split,
            text_embeds,
            text_column=args.text_column if parts.joint else None,
            tokenizer=parts.tokenizer if parts.joint else None,
            encoding=parts.text_encoder.encoding if parts.joint else None,
            ingredient_column=args.ingredient_column if trains_ingredients(config) else None,
            num_ingredients=config.num_ingredients,
        )


@dataclass
class RunLoaders:
    """What [`make_loaders`] returns: a DataLoader per evaluation split with the step's `batch -> model inputs` for
    them and, for training, the training DataLoader, its examples and its `batch -> model inputs`. The loaders may
    be replaced by the ones `accelerator.prepare` makes of them."""

    evaluation: dict  # {name: DataLoader}
    eval_inputs: object
    train: DataLoader | None = None
    train_examples: ImageTextExamples | None = None
    train_inputs: object = None

    def set_epoch(self, epoch):
        """Makes the shuffle and the augmentation of the training loader's epoch `epoch` depend on (seed, epoch)
        only: the loader must be prepared (`accelerate.data_loader.DataLoaderShard.set_epoch`)."""
        self.train.set_epoch(epoch)
        self.train_examples.set_epoch(epoch)


def make_loaders(args, image_processor, eval_splits, image_folders=(), settings=None, *, corruption=None, train=None):
    """The DataLoaders a run needs ([`RunLoaders`]): one per split of `eval_splits` ({name: (split name, dataset or
    None)}; None is skipped) and, with `train` ([`TrainingData`]), the shuffled training one, augmented as
    `--augment` and `--color_jitter` say. `args` names the columns and the batch sizes; `settings`
    ([`LoaderSettings`], by default a plain DataLoader's) say how the loaders load. Images stored as paths are read
    from `image_folders` only; `corruption` (`--corruption`) is applied to the evaluation images after decoding."""
    settings = settings or LoaderSettings()
    train_loader = train_examples = train_inputs = None
    if train is not None:
        train_loader, train_examples, train_inputs = training_loader(
            args, image_processor, train, image_folders, settings
        )
    preprocessing = ImagePreprocessing(image_processor, corruption)
    evaluation = {
        name: make_dataloader(
            ImageTextExamples(
                split,
                args.image_column,
                args.label_column,
                preprocessing,
                defer_decoding=settings.decode_device is not None,
                split=split_name,
                image_folders=image_folders,
            ),
            MARNetCollator(),
            args.per_device_eval_batch_size,
            False,
            settings,
        )
        for name, (split_name, split) in eval_splits.items()
        if split is not None
    }
    return RunLoaders(
        evaluation=evaluation,
        eval_inputs=model_inputs(image_processor, preprocessing, settings.decode_device),
        train=train_loader,
        train_examples=train_examples,
        train_inputs=train_inputs,
    )


def training_loader(args, image_processor, train, image_folders, settings):
    """(the training DataLoader, its examples, its `batch -> model inputs`) for [`make_loaders`]."""
    augmentation = RandomAugmentation.from_options(
        processor_image_size(image_processor), args.augment, args.color_jitter, args.seed
    )
    preprocessing = ImagePreprocessing(image_processor, augmentation)
    examples = ImageTextExamples(
        train.split,
        args.image_column,
        args.label_column,
        preprocessing,
        train.text_column,
        train.text_embeds,
        defer_decoding=settings.decode_device is not None,
        split=args.train_split,
        image_folders=image_folders,
        ingredient_column=train.ingredient_column,
        num_ingredients=train.num_ingredients,
    )
    collator = MARNetCollator(train.tokenizer, train.encoding)
    return (
        make_dataloader(examples, collator, args.per_device_train_batch_size, True, settings),
        examples,
        model_inputs(image_processor, preprocessing, settings.decode_device),
    )


def make_dataloader(examples, collator, batch_size, shuffle, settings):
    """A DataLoader as `settings` say; its workers live as long as the run and keep `PREFETCH_BATCHES` batches each
    ready."""
    workers = settings.workers
    # A private generator keeps the global torch RNG (the diffusion noise) independent of how many
    # iterators are created, so a resumed run draws the same numbers as an uninterrupted one.
    return DataLoader(
        examples,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collator,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
        pin_memory=settings.pin_memory,
        generator=None if settings.seed is None else torch.Generator().manual_seed(settings.seed),
    )
