"""Train MARNet with Accelerate: `marnet-train ...` or `accelerate launch -m modeling_marnet.train ...`.

The same code runs on one CPU, one GPU, several GPUs or nodes. The story, top to bottom: options -> data checks ->
model -> Accelerator -> privileged text features -> dataloaders -> optimizer and cosine schedule -> `prepare` ->
(resume) -> optimizer steps with evaluation, early stopping and checkpoints -> best model, metrics.json,
training_args.json in `--output-dir`.
"""

import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, PartialState
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, parse_flag_from_env, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .training.args import parse_args
from .training.checkpointing import (
    TrainerState,
    load_checkpoint,
    remove_partial_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    save_pretrained_atomically,
)
from .training.data import (
    ImageTextExamples,
    ImageTransform,
    MARNetCollator,
    RandomAugmentation,
    check_columns,
    check_label_range,
    check_split,
    class_names,
    load_image_dataset,
    processor_image_size,
)
from .training.errors import TrainingInputError
from .training.loop import LossComposer, evaluate, optimizer_steps
from .training.model_setup import (
    ablation_name,
    build_model,
    check_text_hidden_size,
    load_checkpoint_config,
    load_image_processor,
    needs_text,
    new_model_config,
    parameter_groups,
    tower_parameters,
)
from .training.text_features import (
    MARNetWithTextEncoder,
    cached_text_embeddings,
    default_text_cache_dir,
    load_text_encoder,
)

logger = get_logger(__name__)
HISTORY_FILE = "history.jsonl"


def check_output_dir(args):
    """Refuses to mix a new run into the outputs of another one."""
    output_dir = Path(args.output_dir)
    if output_dir.is_file():
        raise TrainingInputError(f"--output-dir {output_dir} is a file; give a directory.")
    if args.resume_from_checkpoint or args.overwrite_output_dir or not output_dir.is_dir():
        return
    if any(output_dir.iterdir()):
        raise TrainingInputError(
            f"--output-dir {output_dir} is not empty. Pass --resume-from-checkpoint latest to continue that run, "
            "--overwrite-output-dir to start over in it, or another directory."
        )


def load_and_check_splits(args):
    """The train, validation and test splits (the latter two may be None), checked before anything runs."""
    dataset = load_image_dataset(args.dataset)
    train = check_split(dataset, args.train_split, "--train-split")
    evaluation_needed = args.eval_strategy != "no" or args.test_split not in dataset
    validation = check_split(dataset, args.validation_split, "--validation-split") if evaluation_needed else None
    test = dataset[args.test_split] if args.test_split in dataset else None
    label_names = class_names(train, args.label_column)
    for split_name, split in ((args.train_split, train), (args.validation_split, validation), (args.test_split, test)):
        if split is not None:
            check_columns(split, split_name, {"--image-column": args.image_column, "--label-column": args.label_column})
            check_label_range(split, split_name, args.label_column, len(label_names))
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    return train, validation, test, label_names


def resolve_text_source(args, train, config):
    """(text encoder, tokenizer) when this run uses privileged text, else (None, None), with clear errors when the
    model needs text that the dataset or the options do not give."""
    ablation = ablation_name(config) if config is not None else args.ablation or "full"
    if not needs_text(config if config is not None else ablation):
        reason = (f"the dataset has no {args.text_column!r} column" if args.text_column not in train.column_names
                  else f"ablation {ablation!r} does not use text")
        logger.warning(f"Visual-only training: {reason}; the model learns from images alone.", main_process_only=True)
        return None, None
    if args.text_column not in train.column_names:
        raise TrainingInputError(
            f"Ablation {ablation!r} learns from privileged text, but split {args.train_split!r} has no "
            f"{args.text_column!r} column (columns: {', '.join(train.column_names)}). Pass --text-column, or "
            "--ablation baseline for visual-only training."
        )
    if not args.text_encoder:
        raise TrainingInputError(f"Ablation {ablation!r} learns from privileged text: pass --text-encoder (a BERT-like "
                                 "encoder directory or Hub id), or --ablation baseline for visual-only training.")
    text_encoder, tokenizer = load_text_encoder(args.text_encoder, args.text_pooling)
    if config is not None:
        check_text_hidden_size(config, text_encoder.hidden_size, args.text_encoder)
    return text_encoder, tokenizer


def make_dataloader(examples, collator, batch_size, shuffle, args):
    # A private generator keeps the global torch RNG (the diffusion noise) independent of how many
    # iterators are created, so a resumed run draws the same numbers as an uninterrupted one.
    return DataLoader(examples, batch_size=batch_size, shuffle=shuffle, collate_fn=collator,
                      num_workers=args.dataloader_num_workers, generator=torch.Generator().manual_seed(args.seed))


def tracker_config(hyperparameters):
    """Only scalars go to the trackers (TensorBoard's hparams refuse lists and None)."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in hyperparameters.items()}


def append_history(output_dir, record):
    with open(Path(output_dir) / "logs" / HISTORY_FILE, "a") as history:
        history.write(json.dumps(record) + "\n")


def truncate_history(output_dir, global_step):
    """Drops the log lines a killed run wrote after the checkpoint we resume from."""
    path = Path(output_dir) / "logs" / HISTORY_FILE
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= global_step]
        path.write_text("".join(line + "\n" for line in kept))


def publish(accelerator, model, image_processor, output_dir, metrics, hyperparameters):
    """Writes the best model, its image processor, training_args.json and (last) metrics.json into `output_dir`;
    they are written aside first, so a failure leaves no half-written model there."""
    if not accelerator.is_main_process:
        return
    partial = output_dir / ".partial-model"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    image_processor.save_pretrained(partial)
    (partial / "training_args.json").write_text(json.dumps(hyperparameters, indent=2))
    (partial / "metrics.json").write_text(json.dumps(metrics, indent=2))
    files = sorted(partial.iterdir(), key=lambda path: path.name == "metrics.json")
    for path in files:
        os.replace(path, output_dir / path.name)
    partial.rmdir()


def run(args):
    started = time.perf_counter()
    # Joins the other processes (if launched) and lets the logger tell them apart. ACCELERATE_USE_CPU=1 (what
    # Accelerator reads) must reach this first state too, or a CPU multi-process launch would run as 1 process.
    PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    check_output_dir(args)
    checkpoints_dir = Path(args.output_dir) / "checkpoints"
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, checkpoints_dir) if args.resume_from_checkpoint else None
    train_split, validation_split, test_split, label_names = load_and_check_splits(args)
    checkpoint_config = load_checkpoint_config(args, label_names) if args.model_name_or_path else None
    text_encoder, tokenizer = resolve_text_source(args, train_split, checkpoint_config)
    joint = text_encoder is not None and args.train_text_encoder
    config = checkpoint_config or new_model_config(args, label_names, text_encoder and text_encoder.hidden_size)
    set_seed(args.seed)  # identical fresh heads on every process
    model = build_model(args, config)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    image_processor = load_image_processor(args, model.config.vision_config)

    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=Path(args.output_dir) / "logs"),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        # A jointly trained encoder has an unused pooler when features are mean-pooled.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=joint)],
    )
    output_dir = Path(args.output_dir)
    accelerator.wait_for_everyone()  # every process has checked the output dir before anything is written
    if accelerator.is_main_process:
        if args.overwrite_output_dir and not args.resume_from_checkpoint:
            for stale in ("checkpoints", "logs"):
                shutil.rmtree(output_dir / stale, ignore_errors=True)
        (output_dir / "logs").mkdir(parents=True, exist_ok=True)

    # Privileged text: frozen -> embeddings computed once and cached; joint -> tokenized per batch.
    text_embeds = None
    if text_encoder is not None and not joint:
        cache_dir = args.text_cache_dir or default_text_cache_dir()
        text_embeds, hit = cached_text_embeddings(accelerator, text_encoder, tokenizer, train_split, args.text_column,
                                                  args.text_max_length, cache_dir)
        logger.info(f"Text features {tuple(text_embeds.shape)} {'read from' if hit else 'written to'} the cache in "
                    f"{cache_dir}.")
    if joint:
        model = MARNetWithTextEncoder(model, text_encoder)

    augmentation = RandomAugmentation(processor_image_size(image_processor), args.seed) if args.augment else None
    train_examples = ImageTextExamples(train_split, args.image_column, args.label_column,
                                       args.text_column if joint else None, text_embeds, augmentation)
    train_collator = MARNetCollator(ImageTransform(image_processor), tokenizer if joint else None,
                                    args.text_max_length)
    eval_collator = MARNetCollator(ImageTransform(image_processor))
    train_dataloader = make_dataloader(train_examples, train_collator, args.per_device_train_batch_size, True, args)
    eval_dataloaders = {
        name: make_dataloader(ImageTextExamples(split, args.image_column, args.label_column), eval_collator,
                              args.per_device_eval_batch_size, False, args)
        for name, split in (("validation", validation_split), ("test", test_split)) if split is not None
    }

    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay, args.learning_rate,
                                                   args.tower_lr_multiplier))
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    eval_dataloaders = {name: accelerator.prepare(loader) for name, loader in eval_dataloaders.items()}

    # Steps are optimizer updates; len(train_dataloader) is per process after `prepare`.
    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_steps = args.max_steps or math.ceil(args.num_train_epochs * updates_per_epoch)
    num_epochs = math.ceil(max_steps / updates_per_epoch)
    warmup_steps = args.warmup_steps if args.warmup_steps is not None else round(args.warmup_ratio * max_steps)
    # Not prepared: stepped once per optimizer update whatever the number of processes.
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, max_steps)
    accelerator.register_for_checkpointing(scheduler)
    loss_composer = LossComposer(config, round(args.auxiliary_warmup_ratio * max_steps))
    gradient_probe = None
    if args.gradient_norm_steps:
        if accelerator.num_processes > 1:
            raise TrainingInputError(f"--gradient-norm-steps runs extra backward passes outside DDP's reducer and "
                                     f"works in one process only; this run has {accelerator.num_processes}.")
        probe_parameters = tower_parameters(accelerator.unwrap_model(model))
        gradient_probe = lambda step: probe_parameters if step % args.gradient_norm_steps == 0 else None  # noqa: E731

    hyperparameters = {
        **{key: value for key, value in vars(args).items() if key not in ("config",)},
        "config_file": args.config,
        "ablation": ablation_name(config),
        "max_steps": max_steps,
        "warmup_steps": warmup_steps,
        "image_size": list(processor_image_size(image_processor)),
        "num_processes": accelerator.num_processes,
        "total_train_batch_size": args.per_device_train_batch_size * accelerator.num_processes
        * args.gradient_accumulation_steps,
        "text_hidden_size": config.text_hidden_size if text_encoder is not None else None,
    }
    if args.report_to != "none":
        accelerator.init_trackers("marnet", config=tracker_config(hyperparameters))

    state = TrainerState()
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint)
        if accelerator.is_main_process:
            remove_partial_checkpoints(checkpoints_dir)
            truncate_history(output_dir, state.global_step)
        logger.info(f"Resuming from {checkpoint} at step {state.global_step} (epoch {state.epoch}, "
                    f"{state.batches_in_epoch} batches in).", main_process_only=True)
    else:
        set_seed(args.seed, device_specific=True)  # different diffusion noise on each process

    logger.info(
        f"***** Training *****\n  examples = {len(train_split)}, epochs = {num_epochs}, optimizer steps = {max_steps}"
        f"\n  batch per device = {args.per_device_train_batch_size}, processes = {accelerator.num_processes}, "
        f"accumulation = {args.gradient_accumulation_steps}, global batch = {hyperparameters['total_train_batch_size']}"
        f"\n  model = {ablation_name(config)} MARNet, text = "
        f"{'none' if text_encoder is None else ('joint ' if joint else 'frozen ') + args.text_encoder}",
        main_process_only=True,
    )
    best_model_dir = checkpoints_dir / "best-model"
    higher_is_better = args.metric_for_best_model != "loss"

    def evaluate_and_track():
        """Validation metrics; saves the best model and updates the early-stopping counter. True means stop."""
        metrics = evaluate(model, eval_dataloaders["validation"], accelerator)
        logger.info(f"step {state.global_step}: validation {metrics}", main_process_only=True)
        accelerator.log({f"eval/{key}": value for key, value in metrics.items()}, step=state.global_step)
        if accelerator.is_main_process:
            append_history(output_dir, {"step": state.global_step, **{f"eval_{k}": v for k, v in metrics.items()}})
        value = metrics[args.metric_for_best_model]
        if state.best_metric is None or (value > state.best_metric if higher_is_better else value < state.best_metric):
            state.best_metric, state.best_step, state.evaluations_without_improvement = value, state.global_step, 0
            save_pretrained_atomically(accelerator, unwrap_classifier(accelerator, model), image_processor,
                                       best_model_dir)
        else:
            state.evaluations_without_improvement += 1
        patience = args.early_stopping_patience
        if patience is not None and state.evaluations_without_improvement >= patience:
            logger.info(f"Early stopping at step {state.global_step}: {args.metric_for_best_model} did not improve "
                        f"for {patience} evaluations.", main_process_only=True)
            return True
        return False

    progress = tqdm(total=max_steps, initial=state.global_step, desc="train",
                    disable=not accelerator.is_local_main_process)
    last_evaluated = last_checkpointed = None
    stop = state.global_step >= max_steps
    for epoch in range(state.epoch, num_epochs):
        if stop:
            break
        train_dataloader.set_epoch(epoch)  # the shuffle of epoch e depends on (seed, e) only
        train_examples.set_epoch(epoch)  # so does its augmentation
        resumed_batches = state.batches_in_epoch if epoch == state.epoch else 0
        batches = accelerator.skip_first_batches(train_dataloader, resumed_batches) if resumed_batches else train_dataloader
        state.epoch, state.batches_in_epoch = epoch, resumed_batches
        tic = time.perf_counter()
        for update in optimizer_steps(model, batches, accelerator, optimizer, scheduler, loss_composer,
                                      state.global_step, gradient_probe):
            state.global_step += 1
            state.batches_in_epoch += args.gradient_accumulation_steps
            state.train_images += update["images"]
            state.train_seconds += time.perf_counter() - tic
            images_per_second = state.train_images / state.train_seconds
            progress.update(1)
            if state.global_step % args.logging_steps == 0 or state.global_step == 1:
                loss = accelerator.reduce(update["loss"], "mean").item()
                record = {"step": state.global_step, "epoch": state.global_step / updates_per_epoch, "loss": loss,
                          **{name: accelerator.reduce(value, "mean").item() for name, value in update["terms"].items()},
                          "learning_rate": scheduler.get_last_lr()[-1],
                          "auxiliary_loss_scale": loss_composer.auxiliary_scale(state.global_step - 1),
                          "images_per_second": images_per_second}
                progress.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_second:.1f}")
                accelerator.log({f"train/{key}": value for key, value in record.items() if key != "step"},
                                step=state.global_step)
                if accelerator.is_main_process:
                    append_history(output_dir, record)
            if update["gradient_norms"] is not None:
                norms = {f"tower_gradient_norm/{name}": value for name, value in update["gradient_norms"].items()}
                accelerator.log(norms, step=state.global_step)
                append_history(output_dir, {"step": state.global_step, **norms})
            if args.eval_strategy == "steps" and state.global_step % args.eval_steps == 0:
                stop = evaluate_and_track()
                last_evaluated = state.global_step
            if args.checkpointing_steps and state.global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, checkpoints_dir, state, args.save_total_limit)
                last_checkpointed = state.global_step
            if stop or state.global_step >= max_steps:
                stop = True
                break
            tic = time.perf_counter()
        else:
            state.epoch, state.batches_in_epoch = epoch + 1, 0
            if args.eval_strategy == "epoch":
                stop = evaluate_and_track()
                last_evaluated = state.global_step
    progress.close()
    if args.eval_strategy != "no" and last_evaluated != state.global_step:
        evaluate_and_track()  # the last weights compete for best model too
    if args.checkpointing_steps and last_checkpointed != state.global_step:
        save_checkpoint(accelerator, checkpoints_dir, state, args.save_total_limit)

    # Final metrics with the best model, on every evaluation split.
    classifier = unwrap_classifier(accelerator, model)
    if args.eval_strategy != "no":
        accelerator.wait_for_everyone()
        # Through from_pretrained: saved checkpoints may use the tower's original key names.
        classifier.load_state_dict(type(classifier).from_pretrained(best_model_dir).state_dict())
        logger.info(f"Best model: step {state.best_step}, {args.metric_for_best_model} = {state.best_metric:.4f}.",
                    main_process_only=True)
    per_split = {name: evaluate(model, loader, accelerator) for name, loader in eval_dataloaders.items()}
    final_split = "test" if "test" in per_split else "validation"
    split_names = {"validation": args.validation_split, "test": args.test_split}
    metrics = {
        "top1": per_split[final_split]["top1"],
        "top5": per_split[final_split]["top5"],
        "split": split_names[final_split],
        "per_split": {split_names[name]: values for name, values in per_split.items()},
        "train_images_per_second": state.train_images / max(state.train_seconds, 1e-9),
        "wall_time_seconds": time.perf_counter() - started,
        "global_step": state.global_step,
        "epochs": state.global_step / updates_per_epoch,
        "best_step": state.best_step,
    }
    publish(accelerator, classifier, image_processor, output_dir, metrics, hyperparameters)
    logger.info(f"Saved the model and metrics to {output_dir}: top1 {metrics['top1']:.4f}, top5 {metrics['top5']:.4f} "
                f"on {metrics['split']}.", main_process_only=True)
    accelerator.end_training()
    return metrics


def unwrap_classifier(accelerator, model):
    """The MARNet classifier inside the prepared model (without a jointly trained text encoder)."""
    model = accelerator.unwrap_model(model)
    return model.classifier if isinstance(model, MARNetWithTextEncoder) else model


def main(argv=None):
    """Console entry point: errors in the input end the run with a message on stderr and exit status 2."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        run(parse_args(argv))
    except TrainingInputError as error:
        print(f"marnet-train: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
