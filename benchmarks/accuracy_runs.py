"""The training runs of `accuracy.py`: one process each, in its own run folder, reused once finished.

A run is a row trained on one dataset variant with one learning-rate point, loss-weight variant and seed. Its folder
is `<work dir>/runs/<proxy>[-train<fraction>]/<row>/<variant>/seed-<seed>`: the run folder marnet-train (or the timm
anchor) writes (`marnet_cli.run_folder`), plus `benchmark_run.json`, this benchmark's record of the run: its
validation metrics and the exact command that made it. A later call with the same command reuses the run; any other
command (other options, another launcher) trains it again.
"""

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from accuracy_rows import BASELINE_ROW, ROWS
from marnet_cli.errors import CLIError
from marnet_cli.files import atomic_write_json
from marnet_cli.run_folder import RunFolder, read_json_object

BENCHMARKS = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS.parent
RECORD_NAME = "benchmark_run.json"


@dataclass(frozen=True)
class Run:
    """One training process: a row on a dataset variant with one hyperparameter point, loss-weight variant and seed."""

    row: str
    proxy: str  # "original", "scrubbed", or "shared" for rows that do not read text
    fraction: float
    point: tuple  # (heads' learning rate, tower multiplier)
    weights: tuple  # marnet-config FIELD=VALUE strings
    seed: int

    @property
    def variant(self):
        lr, multiplier = self.point
        label = f"lr{lr:g}" if ROWS[self.row].trainer == "timm" else f"lr{lr:g}-x{multiplier:g}"
        return "-".join([label, *[w.replace("=", "") for w in self.weights]])

    def folder(self, work_dir):
        """The run folder of this run under `work_dir`."""
        data = self.proxy if self.fraction == 1.0 else f"{self.proxy}-train{self.fraction:g}"
        return RunFolder(work_dir / "runs" / data / self.row / self.variant / f"seed-{self.seed}")

    def with_seed(self, seed):
        """The same run with another seed."""
        return Run(self.row, self.proxy, self.fraction, self.point, self.weights, seed)


def run_for(row, proxy, fraction, point, weights, seed):
    """The Run of a row, sharing rows that do not read text across proxies; the timm anchor has one learning rate."""
    if ROWS[row].trainer == "timm":
        point = (float(f"{point[0] * point[1]:.6g}"), 1.0)  # 3e-3 * 0.1 and 3e-4 * 1 are the same learning rate
    return Run(row, proxy if ROWS[row].uses_text else "shared", fraction, point, tuple(weights), seed)


def run_command(args, run, datasets_by_proxy, tower, text_encoder):
    """The command line of one run."""
    dataset = datasets_by_proxy["original" if run.proxy == "shared" else run.proxy][run.fraction]
    output_dir = run.folder(args.work_dir).path
    lr, multiplier = run.point
    if ROWS[run.row].trainer == "timm":
        return [
            sys.executable,
            str(BENCHMARKS / "timm_anchor.py"),
            "--dataset",
            str(dataset),
            "--vision-model",
            str(tower),
            "--output-dir",
            str(output_dir),
            "--learning-rate",
            f"{lr:g}",
            "--num-train-epochs",
            str(args.epochs),
            "--per-device-train-batch-size",
            str(args.batch_size),
            "--image-size",
            str(args.image_size),
            "--seed",
            str(run.seed),
            "--channels-last",
        ]
    options = [
        "--dataset",
        str(dataset),
        "--vision-model",
        str(tower),
        *ROWS[run.row].options,
        *[a for weight in run.weights for a in ("--marnet-config", weight)],
        "--image-size",
        str(args.image_size),
        "--augment",
        "--channels-last",
        "--num-train-epochs",
        str(args.epochs),
        "--per-device-train-batch-size",
        str(args.batch_size),
        "--learning-rate",
        f"{lr:g}",
        "--tower-lr-multiplier",
        f"{multiplier:g}",
        "--seed",
        str(run.seed),
        "--eval-strategy",
        "epoch",
        "--checkpointing-steps",
        "0",
        "--report-to",
        "none",
        "--output-dir",
        str(output_dir),
        "--overwrite-output-dir",
    ]
    if run.row != BASELINE_ROW and "--ablation baseline" not in shlex.join(ROWS[run.row].options):
        options += ["--text-encoder", str(text_encoder), "--text-cache-dir", str(args.work_dir / "text-cache")]
    return [*shlex.split(args.launcher), "-m", "modeling_marnet.train", *options, *args.train_args]


def run_env(args):
    """The environment of every run: offline, --threads CPU threads, this repository importable."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }


def execute(args, runs, context):
    """Trains every run not finished before (up to --parallel at once); returns {run: record}. A record holds the
    validation metrics of the run's best model and where its test metrics are, not the test metrics themselves."""
    records, pending = {}, []
    for run in dict.fromkeys(runs):
        command = run_command(args, run, *context)
        record_path = run.folder(args.work_dir).path / RECORD_NAME
        if record_path.is_file():
            record = read_json_object(record_path, "benchmarks/accuracy.py")
            if record["command"] == shlex.join(command):
                records[run] = record
                continue
        pending.append((run, command))
    active = []
    log_dir = args.work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    while pending or active:
        while pending and len(active) < args.parallel:
            run, command = pending.pop(0)
            log_path = log_dir / f"{run.proxy}-f{run.fraction:g}-{run.row}-{run.variant}-seed-{run.seed}.log"
            log = open(log_path, "w")
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=run_env(args), cwd=REPO_ROOT)
            active.append((run, command, process, log, log_path, time.perf_counter()))
        time.sleep(0.5)
        for entry in [entry for entry in active if entry[2].poll() is not None]:
            active.remove(entry)
            run, command, process, log, log_path, start = entry
            log.close()
            if process.returncode != 0:
                for other in active:
                    other[2].kill()
                tail = log_path.read_text()[-3000:]
                raise CLIError(
                    f"{run.row} ({run.variant}, seed {run.seed}): the trainer exited with "
                    f"{process.returncode}; log {log_path}:\n{tail}\nFix the cause and rerun: "
                    "finished runs are kept."
                )
            records[run] = finish_record(args, run, command, time.perf_counter() - start)
    return records


def finish_record(args, run, command, seconds):
    """Writes the record of a run that just finished (`benchmark_run.json` in its folder) and returns it."""
    folder = run.folder(args.work_dir)
    metrics = folder.read_metrics()
    record = {
        "row": run.row,
        "proxy": run.proxy,
        "fraction": run.fraction,
        "point": list(run.point),
        "weights": list(run.weights),
        "seed": run.seed,
        "variant": run.variant,
        "validation_top1": metrics["per_split"]["validation"]["top1"],
        "validation_top5": metrics["per_split"]["validation"]["top5"],
        "process_seconds": seconds,
        "train_images_per_second": metrics["train_images_per_second"],
        "global_step": metrics["global_step"],
        "best_step": metrics["best_step"],
        "command": shlex.join(command),
    }
    atomic_write_json(folder.path / RECORD_NAME, record)
    print(
        f"{run.proxy} {run.row} {run.variant} seed {run.seed}: validation top-1 "
        f"{record['validation_top1']:.4f} ({seconds:.0f} s)",
        flush=True,
    )
    return record


def test_metrics(args, run):
    """The test metrics of a final run: read here, and only for the chosen configurations."""
    return run.folder(args.work_dir).read_metrics()["per_split"]["test"]
