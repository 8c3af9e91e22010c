"""`marnet-data build`: turn a raw archive into a dataset saved to disk or pushed to the Hub.

Examples::

    marnet-data build vireo-food172 --data-dir /data/vireo --output data/vireo-food172 --num-proc 8
    marnet-data build ingredient-101 --data-dir /data/ingredient101 --food101-dir /data/food-101 --output data/i101
    marnet-data build openclipart --config food --push-to-hub my-org/openclipart-food --private
    marnet-data build openclipart --config food --push-to-hub my-org/openclipart-food --dry-run --output hub-files
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import datasets

from . import BUILDERS
from .builder_base import RawImageBuilder
from .card import dataset_card
from .hub import HubPushError, describe_folder, upload_hub_folder, write_hub_folder
from .openclipart import DEBIAN_ROOT
from .raw_files import RawDataError

logger = logging.getLogger("dataset_scripts")


class UsageError(ValueError):
    """A combination of command-line options that cannot work."""


def build_dataset(
    name: str,
    data_dir: str,
    cache_dir: Path,
    config_name: str | None = None,
    num_proc: int | None = None,
    skip_bad_images: bool = False,
    **config_kwargs,
) -> tuple[RawImageBuilder, datasets.DatasetDict]:
    """Build dataset `name` from its raw files into `cache_dir`; warn about skipped images."""
    builder = BUILDERS[name](
        config_name=config_name,
        data_dir=data_dir,
        cache_dir=str(cache_dir),
        skip_bad_images=skip_bad_images,
        **config_kwargs,
    )
    builder.download_and_prepare(num_proc=num_proc)
    dataset_dict = builder.as_dataset()
    builder.report_skipped_images(dataset_dict)
    return builder, dataset_dict


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="marnet-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a dataset from its raw files")
    build.add_argument("dataset", choices=sorted(BUILDERS), help="which raw dataset to build")
    build.add_argument("--data-dir", help=f"root of the raw files (openclipart: defaults to {DEBIAN_ROOT})")
    build.add_argument(
        "--output", type=Path, help="where to write: save_to_disk folder, or the Parquet files with --push-to-hub"
    )
    build.add_argument(
        "--food101-dir", help="ingredient-101 only: Food-101 root holding images/ (defaults to --data-dir)"
    )
    build.add_argument("--config", help="builder config: ingredient-101 default|simplified, openclipart default|food")
    build.add_argument("--num-proc", type=int, default=1, help="worker processes (default 1)")
    build.add_argument(
        "--skip-bad-images", action="store_true", help="leave out unreadable images with a warning instead of failing"
    )
    build.add_argument(
        "--push-to-hub", metavar="REPO_ID", help="upload Parquet + dataset card to this Hub dataset repo"
    )
    build.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    build.add_argument(
        "--dry-run",
        action="store_true",
        help="with --push-to-hub: write the files to --output and list them, upload nothing",
    )
    return parser.parse_args(argv)


def check_options(args: argparse.Namespace) -> None:
    """Reject option combinations that cannot work, before any work is done."""
    builder_class = BUILDERS[args.dataset]
    config_names = [config.name for config in builder_class.BUILDER_CONFIGS] or ["default"]
    if args.config is not None and args.config not in config_names:
        raise UsageError(
            f"--config {args.config!r} is not a config of {args.dataset}; choose one of {', '.join(config_names)}."
        )
    if args.data_dir is None and args.dataset != "openclipart":
        raise UsageError(f"--data-dir is required for {args.dataset}: the folder you unpacked the raw archive into.")
    if args.food101_dir is not None and args.dataset != "ingredient-101":
        raise UsageError("--food101-dir only applies to ingredient-101.")
    if args.num_proc < 1:
        raise UsageError(f"--num-proc must be at least 1, got {args.num_proc}.")
    if args.push_to_hub is None and (args.private or args.dry_run):
        raise UsageError("--private and --dry-run only apply with --push-to-hub REPO_ID.")
    if args.output is None and (args.push_to_hub is None or args.dry_run):
        raise UsageError("--output DIR is required (with --dry-run it receives the files that would be uploaded).")
    if args.output is not None and args.output.exists():
        raise UsageError(f"--output {args.output} already exists; remove it or choose another path.")


def run_build(args: argparse.Namespace) -> None:
    """Build into a scratch folder next to the output, then move the finished result into place."""
    scratch_parent = args.output.parent if args.output else None
    if scratch_parent is not None:
        scratch_parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".marnet-data-", dir=scratch_parent))
    try:
        config_kwargs = {"food101_dir": args.food101_dir} if args.food101_dir else {}
        builder, dataset_dict = build_dataset(
            args.dataset,
            args.data_dir if args.data_dir is not None else DEBIAN_ROOT,
            cache_dir=scratch / "cache",
            config_name=args.config,
            num_proc=args.num_proc,
            skip_bad_images=args.skip_bad_images,
            **config_kwargs,
        )
        result = scratch / "result"
        if args.push_to_hub is None:
            dataset_dict.save_to_disk(str(result))
        else:
            write_hub_folder(
                dataset_dict,
                result,
                lambda parquet_bytes: dataset_card(builder, dataset_dict, args.push_to_hub, parquet_bytes),
            )
            if args.dry_run:
                print(f"Dry run: would upload to dataset repo {args.push_to_hub} (private={args.private}):")
                print("\n".join(f"  {line}" for line in describe_folder(result)))
            else:
                print(f"Pushed to {upload_hub_folder(result, args.push_to_hub, args.private)}")
        if args.output is not None:
            result.rename(args.output)
        summary = ", ".join(f"{split}: {len(dataset):,}" for split, dataset in dataset_dict.items())
        destination = args.output if args.output is not None else args.push_to_hub
        print(
            f"{args.dataset} ({builder.config.name}): {summary} images, "
            f"{builder.info.features['label'].num_classes} classes -> {destination}"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `marnet-data` console script; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logger.setLevel(logging.INFO)
    try:
        check_options(args)
        run_build(args)
    except UsageError as error:
        print(f"marnet-data: error: {error}", file=sys.stderr)
        return 2
    except (RawDataError, HubPushError) as error:
        print(f"marnet-data: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
