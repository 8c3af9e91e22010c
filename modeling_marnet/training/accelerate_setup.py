"""The Accelerator of a run, built so that the user's Accelerate setup stands: an option left unset never overrides
`accelerate config`, `accelerate launch --mixed_precision ...` or the `ACCELERATE_*` variables, and what Accelerate
actually uses is read back for training_args.json.

Also: the experiment trackers (`--report_to`, any that Accelerate supports) and the check that a multi-process run's
`--output_dir` is one folder shared by all processes.
"""

import uuid
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, broadcast_object_list

from marnet_cli.errors import CLIError, UsageError

# How each tracker takes a run name (accelerate passes `project` as its first argument).
RUN_NAME_KWARGS = {
    "wandb": "name",
    "trackio": "name",
    "mlflow": "run_name",
    "clearml": "task_name",
    "swanlab": "experiment_name",
}
SHARED_CHECK_FILE = ".marnet-shared-filesystem-check"


def check_trackers(names):
    """`--report_to` names that Accelerate knows and whose package is installed; errors name the fix."""
    known = sorted({*LOGGER_TYPE_TO_CLASS, "all"})
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(
            f"--report_to {' '.join(unknown)}: not a tracker Accelerate supports; choose from {', '.join(known)} or "
            f"none."
        )
    available = {str(tracker) for tracker in get_available_trackers()}
    missing = [name for name in names if name != "all" and name not in available]
    if missing:
        raise CLIError(
            f"--report_to {' '.join(missing)}: the package is not installed here; install it (`pip install "
            f"{' '.join(missing)}`) or choose other trackers."
        )
    return names


def make_accelerator(args, find_unused_parameters=False):
    """The Accelerator of the run: explicit `--mixed_precision`, `--gradient_accumulation_steps` and
    `--torch_compile` win; when unset, Accelerate's own configuration decides."""
    output_dir = Path(args.output_dir)
    kwargs = {}
    if args.gradient_accumulation_steps is not None:
        # A plugin, because a plain `gradient_accumulation_steps=` loses to ACCELERATE_GRADIENT_ACCUMULATION_STEPS.
        kwargs["gradient_accumulation_plugin"] = GradientAccumulationPlugin(num_steps=args.gradient_accumulation_steps)
    if args.torch_compile:
        kwargs["dynamo_backend"] = "inductor"
    return Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=check_trackers(args.report_to) or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
        **kwargs,
    )


def single_process_warning(environ, num_processes):
    """A warning when `accelerate launch --num_processes N` (N > 1) started this run as one process, else None.

    Without `--multi_gpu` (or a config saying so) on a machine without GPUs, accelerate's simple launcher starts a
    single process; it then sets MASTER_ADDR, as for several processes, but no WORLD_SIZE.
    """
    launched = "ACCELERATE_MIXED_PRECISION" in environ  # set by every `accelerate launch`
    asked_for_several = "MASTER_ADDR" in environ and "WORLD_SIZE" not in environ
    if num_processes != 1 or not (launched and asked_for_several):
        return None
    return (
        "accelerate launch was asked for several processes but started this one alone, which trains on its own. "
        "Without GPUs, several processes need --multi_gpu: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
        "--num_processes N -m modeling_marnet.train ..."
    )


def init_trackers(accelerator, args, hyperparameters):
    """Starts the trackers under project `--project` and run name `--run_name` (default: the output folder's name),
    with the scalar hyperparameters (TensorBoard's hparams refuse lists and None)."""
    if not args.report_to:
        return
    run_name = args.run_name or Path(args.output_dir).resolve().name
    init_kwargs = {tracker: {kwarg: run_name} for tracker, kwarg in RUN_NAME_KWARGS.items()}
    config = {
        key: value if isinstance(value, (int, float, str, bool)) else str(value)
        for key, value in hyperparameters.items()
    }
    accelerator.init_trackers(args.project, config=config, init_kwargs=init_kwargs)


def accelerate_settings(accelerator):
    """What Accelerate actually uses, whoever set it (option, config file, launcher, environment)."""
    dynamo = accelerator.state.dynamo_plugin
    return {
        "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "dynamo_backend": str(dynamo.backend.value).lower() if dynamo is not None else "no",
        "device": str(accelerator.device.type),
    }


def check_shared_output_dir(accelerator, output_dir):
    """Every process must see the same `output_dir`: checkpoints are written by all processes and renamed by the main
    one, and a resumed run reads every process's RNG state there. The main process writes a random token there;
    each process reads it back; any that cannot ends the run with the requirement (multi-node runs need
    `--output_dir` on a filesystem all nodes share)."""
    if accelerator.num_processes == 1:
        return
    path = Path(output_dir) / SHARED_CHECK_FILE
    token = [uuid.uuid4().hex if accelerator.is_main_process else None]
    if accelerator.is_main_process:
        path.write_text(token[0])
    broadcast_object_list(token)
    accelerator.wait_for_everyone()
    sees_it = path.is_file() and path.read_text() == token[0]
    blind = accelerator.gather(torch.tensor([0 if sees_it else 1], device=accelerator.device))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        path.unlink()
    if blind.sum() > 0:
        ranks = [rank for rank, value in enumerate(blind.tolist()) if value]
        raise CLIError(
            f"--output_dir {output_dir} is not shared by every process: process(es) {ranks} cannot see the files the "
            "main process writes there. Multi-node runs need --output_dir on a filesystem all nodes mount (NFS, "
            "Lustre, a shared volume); the text-feature cache may stay per node."
        )
