"""Inference cost of the CDR reverse chain alone (`MARNetCrossModalReconstruction.sample`), eager against
`torch.compile`, with the default heads (256-wide denoiser, MiniLM width 384, 10 DDPM steps) on EfficientNet-Lite0's
1280-d feature. Calls interleaved (eager, compiled, eager, ...), medians of `--repeats`; the compiled chain's largest
difference from eager is reported with its compile time. `speed.py` gives the backbone's time these add to.

    OMP_NUM_THREADS=1 python benchmarks/cdr_chain.py --threads 1   # -> benchmarks/results/cdr_chain.json
"""

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from machine import machine_record
from marnet_cli.files import atomic_write_json
from modeling_marnet import MARNetConfig
from modeling_marnet.diffusion import MARNetCrossModalReconstruction

RESULTS = Path(__file__).parent / "results"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--vision-hidden-size", type=int, default=1280, help="EfficientNet-Lite0's feature width")
    parser.add_argument("--text-hidden-size", type=int, default=384, help="MiniLM-L6 width, as in the demo")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--output", type=Path, default=RESULTS / "cdr_chain.json")
    return parser.parse_args()


def timed(function, argument):
    start = time.perf_counter()
    function(argument)
    return time.perf_counter() - start


def compare(eager, compiled, image_embeds, repeats):
    """One row: compile time, largest |compiled - eager| and the medians of interleaved calls."""
    start = time.perf_counter()
    difference = (compiled(image_embeds) - eager(image_embeds)).abs().max().item()
    compile_seconds = time.perf_counter() - start
    samples = {"eager": [], "compiled": []}
    for _ in range(repeats):
        samples["eager"].append(timed(eager, image_embeds))
        samples["compiled"].append(timed(compiled, image_embeds))
    eager_ms, compiled_ms = (1e3 * statistics.median(samples[name]) for name in ("eager", "compiled"))
    return {
        "batch_size": image_embeds.shape[0],
        "eager_ms": eager_ms,
        "compiled_ms": compiled_ms,
        "compiled_over_eager": compiled_ms / eager_ms,
        "compile_seconds": compile_seconds,
        "max_abs_difference": difference,
    }


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = MARNetConfig(text_hidden_size=args.text_hidden_size, vision_hidden_size=args.vision_hidden_size)
    chain = MARNetCrossModalReconstruction(config).eval()
    compiled = torch.compile(chain.sample, dynamic=False)
    rows = []
    with torch.inference_mode():
        for batch_size in args.batch_sizes:
            image_embeds = torch.randn(batch_size, args.vision_hidden_size)
            rows.append(compare(chain.sample, compiled, image_embeds, args.repeats))
            row = rows[-1]
            print(
                f"batch {batch_size:>3}: eager {row['eager_ms']:.2f} ms, compiled {row['compiled_ms']:.2f} ms "
                f"({row['compiled_over_eager']:.3f}x, compiled in {row['compile_seconds']:.0f} s, "
                f"max |difference| {row['max_abs_difference']:.1e})"
            )
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": machine_record(),
        "torch": torch.__version__,
        "reverse_steps": config.num_inference_steps,
        "denoiser_hidden_size": config.denoiser_hidden_size,
        "repeats": args.repeats,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
