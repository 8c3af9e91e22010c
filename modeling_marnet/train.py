"""Train MARNet with Accelerate: `marnet-train ...` or `accelerate launch -m modeling_marnet.train ...`.

The same code runs on one CPU, one GPU, several GPUs or nodes. [`run`] tells the story in three phases:

1. [`prepare`]: the checks that need no data, the splits, the model (whether text is needed, its encoder, the config,
   the model and its image processor), the Accelerator (the user's Accelerate setup stands), the text features and
   dataloaders, the optimizer and schedule, `accelerator.prepare`, and the state of a resumed run;
2. [`train`]: optimizer steps with logging, evaluation (best model, early stopping) and checkpoints;
3. [`finish`]: the best model evaluated on every split, the run folder's outputs (`marnet_cli.run_folder`) and,
   with `--push_to_hub`, the Hub repo.

Options are parsed in `marnet_cli.train_args` (see `marnet-train --help`).
"""

import dataclasses
import os
import sys
import time
from dataclasses import dataclass

from accelerate import PartialState
from accelerate.logging import get_logger
from accelerate.utils import parse_flag_from_env, set_seed
from tqdm.auto import tqdm
from transformers.trainer_utils import enable_full_determinism

from hub_scripts.publish import check_publish_target, publish
from hub_scripts.upload import full_repo_id
from marnet_cli.errors import UsageError, writing_to
from marnet_cli.files import refuse_dangling_symlink
from marnet_cli.run_folder import (
    RunFolder,
    classification_metrics,
    local_sources,
)

from .modeling_marnet import MARNetForImageClassification
from .training.accelerate_setup import (
    accelerate_settings,
    check_shared_output_dir,
    check_trackers,
    init_trackers,
    make_accelerator,
    single_process_warning,
)
from .training.checkpointing import (
    TrainerState,
    load_checkpoint,
    remove_partial_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    save_model,
    unwrap_classifier,
)
from .training.data import load_splits
from .training.data_checks import check_text_features, warn_about_missing_classes
from .training.image_processing import processor_image_size
from .training.loaders import LoaderSettings, RunLoaders, TrainingData, make_loaders
from .training.loop import LossComposer, evaluate, optimizer_steps
from .training.model_setup import ablation_name, build_model_parts
from .training.optimization import (
    Schedule,
    check_scheduler_type,
    make_optimizer,
    make_scheduler,
    tower_parameters,
)
from .training.run_identity import check_continuation, run_record
from .training.text_features import MARNetWithTextEncoder, cached_text_embeddings, default_text_cache_dir

logger = get_logger(__name__)


@dataclass
class TrainingRun:
    """What [`prepare`] builds for [`train`] and [`finish`]."""

    args: object
    folder: RunFolder
    accelerator: object
    model: object  # prepared: the classifier, or MARNetWithTextEncoder when the text encoder trains too
    image_processor: object
    optimizer: object
    scheduler: object
    schedule: Schedule
    loaders: RunLoaders  # prepared
    loss_composer: LossComposer
    gradient_probe: object
    hyperparameters: dict
    state: TrainerState
    started: float
    run_record: dict  # what checkpoints record of this run (training.run_identity)


def run(args):
    """Trains with the options of `marnet_cli.train_args.TrainArguments`; returns the final metrics. The output
    folder is claimed (`RunFolder.claim`) from the moment it is written to until the run ends, however it ends."""
    folder = RunFolder(args.output_dir)
    try:
        training_run = prepare(args, folder)
        with writing_to(folder.path):  # checkpoints and the saved model: a full disk is one line, not torch's error
            train(training_run)
            return finish(training_run)
    finally:
        folder.release()


def prepare(args, folder):
    """Everything the loop needs, each step failing before the costlier ones that follow it."""
    started = time.perf_counter()
    # Joins the other processes (if launched) and lets the logger tell them apart. ACCELERATE_USE_CPU=1 (what
    # Accelerator reads) must reach this first state too, or a CPU multi-process launch would run as 1 process.
    PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    checkpoint = check_before_loading(args, folder)
    splits = load_splits(args)
    warn_about_missing_classes(splits.train, args.train_split, args.label_column, splits.label_names)
    # The same fresh heads on every process.
    if args.full_determinism:
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)
    parts = build_model_parts(args, splits)
    accelerator = start_accelerator(args, folder, parts)
    settings = LoaderSettings.for_training(args, accelerator, parts.image_processor)  # checks --gpu_decode
    text_embeds = frozen_text_features(args, accelerator, splits, parts)
    train_data = TrainingData.for_run(args, splits.train, parts, text_embeds)
    eval_splits = {"validation": (args.validation_split, splits.validation), "test": (args.test_split, splits.test)}
    loaders = make_loaders(args, parts.image_processor, eval_splits, splits.image_folders, settings, train=train_data)
    model = MARNetWithTextEncoder(parts.model, parts.text_encoder) if parts.joint else parts.model

    optimizer = make_optimizer(model, args)
    model, optimizer, loaders.train = accelerator.prepare(model, optimizer, loaders.train)
    loaders.evaluation = {name: accelerator.prepare(loader) for name, loader in loaders.evaluation.items()}
    schedule = Schedule.from_options(args, len(loaders.train), accelerator.gradient_accumulation_steps)
    # Not prepared: stepped once per optimizer update whatever the number of processes.
    scheduler = make_scheduler(optimizer, args, schedule)  # saved in checkpoints as JSON (training.checkpointing)
    config = unwrap_classifier(accelerator, model).config
    loss_composer = LossComposer(
        config, round(args.auxiliary_warmup_ratio * schedule.max_steps), args.label_smoothing_factor
    )

    hyperparameters = training_record(args, accelerator, splits, parts, config, schedule, settings.workers)
    init_trackers(accelerator, args, hyperparameters)
    record = run_record(hyperparameters, splits.label_names)
    state = resume_or_start(args, accelerator, folder, checkpoint, scheduler, record)
    log_start(args, accelerator, splits, parts, schedule, hyperparameters)
    return TrainingRun(
        args=args,
        folder=folder,
        accelerator=accelerator,
        model=model,
        image_processor=parts.image_processor,
        optimizer=optimizer,
        scheduler=scheduler,
        schedule=schedule,
        loaders=loaders,
        loss_composer=loss_composer,
        gradient_probe=gradient_probe(args, accelerator, model),
        hyperparameters=hyperparameters,
        state=state,
        started=started,
        run_record=record,
    )


def check_before_loading(args, folder):
    """The checks that need no data: the output folder, trackers, scheduler, Hub target. Returns the checkpoint to
    resume from, if any."""
    check_output_dir(args, folder)
    check_trackers(args.report_to)
    check_scheduler_type(args.lr_scheduler_type)
    if args.push_to_hub:
        args.hub_model_id = full_repo_id(args.hub_model_id)
        check_publish_target(args.hub_model_id, args.hub_dry_run)
    return (
        resolve_checkpoint(args.resume_from_checkpoint, folder.checkpoints_dir)
        if args.resume_from_checkpoint
        else None
    )


def start_accelerator(args, folder, parts):
    """The Accelerator (see `training.accelerate_setup`), once every process has checked the output folder; then the
    folder is prepared and checked to be shared by all processes."""
    accelerator = make_accelerator(args, find_unused_parameters=parts.joint)  # a joint encoder's pooler is unused
    warning = single_process_warning(os.environ, accelerator.num_processes)
    if warning:
        logger.warning(warning, main_process_only=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        start_output_dir(args, folder)
    check_shared_output_dir(accelerator, folder.path)
    return accelerator


def frozen_text_features(args, accelerator, splits, parts):
    """The features (N, D) of the training texts by a frozen text encoder, read from or written to the cache
    (`text_features.cached_text_embeddings`); None without one (visual-only training, or an encoder trained with the
    model, which then encodes the tokenized text in each step)."""
    if parts.text_encoder is None or parts.joint:
        return None
    cache_dir = args.text_cache_dir or default_text_cache_dir()
    text_embeds, hit = cached_text_embeddings(
        accelerator, parts.text_encoder, parts.tokenizer, splits.train, args.text_column, cache_dir
    )
    logger.info(
        f"Text features {tuple(text_embeds.shape)} {'read from' if hit else 'written to'} the cache in {cache_dir}.",
        main_process_only=True,
    )
    check_text_features(text_embeds, args.train_split, args.text_encoder)
    return text_embeds


def training_record(args, accelerator, splits, parts, config, schedule, dataloader_workers):
    """training_args.json: every option, then what the run resolved (what Accelerate used, steps, sizes, text)."""
    return {
        **{key: value for key, value in dataclasses.asdict(args).items() if key != "config"},
        "config_file": args.config,
        "ablation": ablation_name(config),
        **accelerate_settings(accelerator),  # what was actually used, whoever set it
        "max_steps": schedule.max_steps,
        "warmup_steps": schedule.warmup_steps,
        "image_size": list(processor_image_size(parts.image_processor)),
        "total_train_batch_size": args.per_device_train_batch_size
        * accelerator.num_processes
        * accelerator.gradient_accumulation_steps,
        "text_hidden_size": config.text_hidden_size if parts.text_encoder is not None else None,
        "text_encoding": dataclasses.asdict(parts.text_encoder.encoding) if parts.text_encoder is not None else None,
        "train_examples": len(splits.train),
        "dataloader_num_workers": dataloader_workers,
        "local_sources": local_sources(dataclasses.asdict(args)),  # the rest are Hub ids, linked in the model card
    }


def resume_or_start(args, accelerator, folder, checkpoint, scheduler, record):
    """The state of the checkpoint to resume from (the logs written after it dropped), once `record` shows that this
    run continues the one that wrote it (`run_identity.check_continuation`); or a fresh one."""
    if checkpoint is None:
        set_seed(args.seed, device_specific=True)  # different diffusion noise on each process
        return TrainerState()
    check_continuation(checkpoint, record, args.allow_changed_arguments)
    state = load_checkpoint(accelerator, checkpoint, scheduler)
    if accelerator.is_main_process:
        remove_partial_checkpoints(folder.checkpoints_dir)
        folder.truncate_history(state.global_step, state.evaluated_step)
    logger.info(
        f"Resuming from {checkpoint} at step {state.global_step} (epoch {state.epoch}, {state.batches_in_epoch} "
        f"batches in).",
        main_process_only=True,
    )
    return state


def log_start(args, accelerator, splits, parts, schedule, hyperparameters):
    text = "none" if parts.text_encoder is None else f"{'joint' if parts.joint else 'frozen'} {args.text_encoder}"
    logger.info(
        f"***** Training *****\n  examples = {len(splits.train)}, epochs = {schedule.num_epochs}, optimizer steps = "
        f"{schedule.max_steps}\n  batch per device = {args.per_device_train_batch_size}, processes = "
        f"{accelerator.num_processes}, accumulation = {accelerator.gradient_accumulation_steps}, global batch = "
        f"{hyperparameters['total_train_batch_size']}, mixed precision = {accelerator.mixed_precision}\n  model = "
        f"{hyperparameters['ablation']} MARNet, text = {text}",
        main_process_only=True,
    )


def check_output_dir(args, folder):
    """Refuses to mix a new run into the outputs of another one."""
    refuse_dangling_symlink(folder.path, "--output_dir")
    if folder.path.is_file():
        raise UsageError(f"--output_dir {folder.path} is a file; give a directory.")
    if args.resume_from_checkpoint or args.overwrite_output_dir or not folder.path.is_dir():
        return
    if folder.entries():
        raise UsageError(
            f"--output_dir {folder.path} is not empty. Pass --resume_from_checkpoint latest to continue that run, "
            "--overwrite_output_dir to start over in it, or another directory."
        )


def start_output_dir(args, folder):
    """Claims the folder (a second run on it is refused), checks it again under that claim, creates logs/; with
    --overwrite_output_dir, first removes what the previous run there wrote (`RunFolder.clear_previous_run`)."""
    folder.claim()
    check_output_dir(args, folder)  # another run may have filled it since the first check
    if args.overwrite_output_dir and not args.resume_from_checkpoint:
        folder.clear_previous_run()
    folder.logs_dir.mkdir(parents=True, exist_ok=True)


def gradient_probe(args, accelerator, model):
    """With --gradient_norm_steps N: `step -> the vision tower's parameters` on every N-th step, else None."""
    if not args.gradient_norm_steps:
        return None
    if accelerator.num_processes > 1:
        raise UsageError(
            f"--gradient_norm_steps runs extra backward passes outside DDP's reducer and works in one process only; "
            f"this run has {accelerator.num_processes}."
        )
    parameters = tower_parameters(accelerator.unwrap_model(model))
    return lambda step: parameters if step % args.gradient_norm_steps == 0 else None


def train(training_run):
    """Optimizer steps up to `--max_steps` (or the epochs), logging every `--logging_steps`, evaluating and
    checkpointing on schedule; stops early when `--early_stopping_patience` evaluations bring no improvement."""
    args, accelerator, state, schedule = (
        training_run.args,
        training_run.accelerator,
        training_run.state,
        training_run.schedule,
    )
    progress = tqdm(
        total=schedule.max_steps,
        initial=state.global_step,
        desc="train",
        disable=not accelerator.is_local_main_process,
    )
    last_evaluated = last_checkpointed = None
    stop = state.global_step >= schedule.max_steps
    for epoch in range(state.epoch, schedule.num_epochs):
        if stop:
            break
        training_run.loaders.set_epoch(epoch)  # the shuffle and augmentation of epoch e depend on (seed, e) only
        resumed_batches = state.batches_in_epoch if epoch == state.epoch else 0
        batches = (
            accelerator.skip_first_batches(training_run.loaders.train, resumed_batches)
            if resumed_batches
            else training_run.loaders.train
        )
        state.epoch, state.batches_in_epoch = epoch, resumed_batches
        tic = time.perf_counter()
        for update in optimizer_steps(
            training_run.model,
            batches,
            accelerator,
            training_run.optimizer,
            training_run.scheduler,
            training_run.loss_composer,
            state.global_step,
            training_run.gradient_probe,
            args.max_grad_norm,
            args.skip_nonfinite_loss,
            model_inputs=training_run.loaders.train_inputs,
        ):
            state.global_step += 1
            if update["skipped"]:
                state.skipped_steps += 1
                logger.warning(
                    f"Step {state.global_step}: non-finite loss, step skipped (--skip_nonfinite_loss); "
                    f"{state.skipped_steps} skipped so far.",
                    main_process_only=True,
                )
            state.batches_in_epoch += accelerator.gradient_accumulation_steps
            state.train_images += update["images"]
            state.train_seconds += time.perf_counter() - tic
            progress.update(1)
            log_update(training_run, update, progress)
            if args.eval_strategy == "steps" and state.global_step % args.eval_steps == 0:
                stop = evaluate_and_keep_best(training_run)
                last_evaluated = state.global_step
            every = args.checkpointing_steps  # 0 (never), N or "epoch" (after the epoch, below)
            if every not in (0, "epoch") and state.global_step % every == 0:
                checkpoint(training_run)
                last_checkpointed = state.global_step
            if stop or state.global_step >= schedule.max_steps:
                stop = True
                break
            tic = time.perf_counter()
        else:
            state.epoch, state.batches_in_epoch = epoch + 1, 0
            if args.eval_strategy == "epoch":
                stop = evaluate_and_keep_best(training_run)
                last_evaluated = state.global_step
            if args.checkpointing_steps == "epoch":
                checkpoint(training_run)
                last_checkpointed = state.global_step
    progress.close()
    if args.eval_strategy != "no" and last_evaluated != state.global_step:
        evaluate_and_keep_best(training_run)  # the last weights compete for best model too
    if args.checkpointing_steps and last_checkpointed != state.global_step:
        checkpoint(training_run)


def checkpoint(training_run):
    """Saves a checkpoint of the run as it stands (`training.checkpointing.save_checkpoint`), keeping the last
    `--save_total_limit`."""
    save_checkpoint(
        training_run.accelerator,
        training_run.folder.checkpoints_dir,
        training_run.state,
        training_run.scheduler,
        training_run.args.save_total_limit,
        training_run.run_record,
    )


def log_update(training_run, update, progress):
    """Every `--logging_steps` (and the first step): the step's loss, each loss term the model returned, the
    learning rate, the gradient norm and throughput, to the trackers and logs/history.jsonl. Per-term tower gradient
    norms whenever they were measured."""
    args, accelerator, state = training_run.args, training_run.accelerator, training_run.state
    step = state.global_step
    if step % args.logging_steps == 0 or step == 1:
        loss = accelerator.reduce(update["loss"], "mean").item()
        record = {
            "step": step,
            "epoch": step / training_run.schedule.updates_per_epoch,
            "loss": loss,
            **{name: accelerator.reduce(value, "mean").item() for name, value in update["terms"].items()},
            "learning_rate": training_run.scheduler.get_last_lr()[-1],
            "auxiliary_loss_scale": training_run.loss_composer.auxiliary_scale(step - 1),
            "images_per_second": state.train_images / state.train_seconds,
        }
        if update["grad_norm"] is not None:
            record["grad_norm"] = float(update["grad_norm"])
        progress.set_postfix(loss=f"{loss:.4f}", img_s=f"{record['images_per_second']:.1f}")
        accelerator.log({f"train/{key}": value for key, value in record.items() if key != "step"}, step=step)
        if accelerator.is_main_process:
            training_run.folder.append_history(record)
    if update["gradient_norms"] is not None:
        norms = {f"tower_gradient_norm/{name}": value for name, value in update["gradient_norms"].items()}
        accelerator.log(norms, step=step)
        training_run.folder.append_history({"step": step, **norms})


def evaluate_and_keep_best(training_run):
    """Evaluates on the validation split, saves the model when `--metric_for_best_model` improves and counts the
    evaluations without improvement. Returns True when early stopping ends training."""
    args, accelerator, state = training_run.args, training_run.accelerator, training_run.state
    metrics = evaluate(
        training_run.model,
        training_run.loaders.evaluation["validation"],
        accelerator,
        "validation",
        training_run.loaders.eval_inputs,
    )
    state.evaluated_step = state.global_step  # checkpoints from now on reflect this evaluation
    logger.info(f"step {state.global_step}: validation {metrics}", main_process_only=True)
    accelerator.log({f"eval/{key}": value for key, value in metrics.items()}, step=state.global_step)
    if accelerator.is_main_process:
        training_run.folder.append_history(
            {"step": state.global_step, **{f"eval_{key}": value for key, value in metrics.items()}}
        )
    value = metrics[args.metric_for_best_model]
    higher_is_better = args.metric_for_best_model != "loss"
    if state.best_metric is None or (value > state.best_metric if higher_is_better else value < state.best_metric):
        state.best_metric, state.best_step, state.evaluations_without_improvement = value, state.global_step, 0
        save_model(accelerator, training_run.model, training_run.image_processor, training_run.folder.best_model_dir)
    else:
        state.evaluations_without_improvement += 1
    patience = args.early_stopping_patience
    if patience is not None and state.evaluations_without_improvement >= patience:
        logger.info(
            f"Early stopping at step {state.global_step}: {args.metric_for_best_model} did not improve for "
            f"{patience} evaluations.",
            main_process_only=True,
        )
        return True
    return False


def finish(training_run):
    """Evaluates the best model (without evaluations during training: the last one) on every evaluation split,
    writes the run folder's outputs (metrics.json last) and, with --push_to_hub, publishes them."""
    args, accelerator, state, folder = (
        training_run.args,
        training_run.accelerator,
        training_run.state,
        training_run.folder,
    )
    if args.eval_strategy == "no":
        save_model(accelerator, training_run.model, training_run.image_processor, folder.best_model_dir)
    else:
        logger.info(
            f"Best model: step {state.best_step}, {args.metric_for_best_model} = {state.best_metric:.4f}.",
            main_process_only=True,
        )
    # A fresh full copy on every process: the final evaluation needs no gathering of sharded (FSDP/ZeRO-3) weights.
    best = MARNetForImageClassification.from_pretrained(folder.best_model_dir).to(accelerator.device)
    per_split = {
        name: evaluate(best, loader, accelerator, f"final {name}", training_run.loaders.eval_inputs)
        for name, loader in training_run.loaders.evaluation.items()
    }
    split_names = {"validation": args.validation_split, "test": args.test_split}
    metrics = classification_metrics(
        {split_names[name]: values for name, values in per_split.items()},
        split_names["test" if "test" in per_split else "validation"],
        train_images_per_second=state.train_images / max(state.train_seconds, 1e-9),
        wall_time_seconds=time.perf_counter() - training_run.started,
        global_step=state.global_step,
        epochs=state.global_step / training_run.schedule.updates_per_epoch,
        best_step=state.best_step,
        skipped_steps=state.skipped_steps,
    )
    if accelerator.is_main_process:
        folder.write_outputs(folder.best_model_dir, training_run.hyperparameters, metrics)
        logger.info(
            f"Saved the model and metrics to {folder.path}: top1 {metrics['top1']:.4f}, top5 {metrics['top5']:.4f} "
            f"on {metrics['split']}.",
            main_process_only=True,
        )
        if args.push_to_hub:
            publish(
                folder.path,
                args.hub_model_id,
                repo_folder=folder.hub_repo_dir if args.hub_dry_run else None,
                dry_run=args.hub_dry_run,
                private=args.hub_private_repo,
                revision=args.hub_revision,
            )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def main(argv=None):
    """`python -m modeling_marnet.train`: the `marnet-train` console script."""
    from marnet_cli.commands import train as train_command

    return train_command(argv)


if __name__ == "__main__":
    sys.exit(main())
