"""`marnet-data build`: turn a raw archive into a dataset saved to disk or pushed to the Hub.

Examples::

    marnet-data build vireo-food172 --data_dir /data/vireo --output_dir data/vireo-food172 --num_proc 8
    marnet-data build ingredient-101 --data_dir /data/ingredient101 --food101_dir /data/food-101 --output_dir data/i101
    marnet-data build openclipart --dataset_config_name food --push_to_hub my-org/openclipart-food --hub_private_repo
    marnet-data build openclipart --dataset_config_name food --push_to_hub my-org/openclipart-food --dry_run \
        --output_dir hub-files
    marnet-data build openclipart-dishes --output_dir data/openclipart-dishes
    marnet-data build openclipart-dishes --builder_option seed=1 --output_dir data/openclipart-dishes-seed1
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import tempfile
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from marnet_cli.errors import CLIError, UsageError, command, describe_os_error
from marnet_cli.files import atomic_directory, refuse_dangling_symlink
from marnet_cli.options import REQUIRED, HelpFormatter, MARNetArgumentParser, option, parse_field_values
from marnet_cli.scratch import ScratchDirectory

from . import BUILDER_CLASSES, builder_class

if TYPE_CHECKING:
    import datasets

    from .builder_base import RawImageBuilder

logger = logging.getLogger("dataset_scripts")

# The images are stored byte for byte, once in the build cache and once in the result, next to each other.
COPIES_ON_DISK = 2
SPACE_MARGIN = 1.05


def check_free_space(builder: RawImageBuilder, location: Path) -> None:
    """Refuse, before any image is read, a build whose images cannot fit twice (cache and result) on the filesystem
    of `location`: a disk that fills up in the middle of a write can abort the process (Arrow's Parquet writer
    does)."""
    image_bytes = builder.stored_image_bytes()
    needed = int(image_bytes * COPIES_ON_DISK * SPACE_MARGIN)
    free = shutil.disk_usage(location).free
    if free < needed:
        raise CLIError(
            f"Not enough space to build {builder.name}: it needs about {needed / 2**20:.1f} MiB on the filesystem of "
            f"{location} (its {image_bytes / 2**20:.1f} MiB of images, in the build cache and in the result), and "
            f"{free / 2**20:.1f} MiB are free. Free some space, or give an --output_dir on another disk."
        )


def build_dataset(
    name: str,
    data_dir: str,
    cache_dir: Path,
    config_name: str | None = None,
    num_proc: int | None = None,
    skip_bad_images: bool = False,
    output_parent: Path | None = None,
    **config_kwargs,
) -> tuple[RawImageBuilder, datasets.DatasetDict]:
    """Build dataset `name` from its raw files into `cache_dir`; warn about skipped images. With `output_parent`
    (where the cache and the result lie side by side), first check that the images fit there twice."""
    builder = builder_class(name)(
        config_name=config_name,
        data_dir=data_dir,
        cache_dir=str(cache_dir),
        skip_bad_images=skip_bad_images,
        **config_kwargs,
    )
    if output_parent is not None:
        check_free_space(builder, output_parent)
    builder.download_and_prepare(num_proc=num_proc)
    dataset_dict = builder.as_dataset()
    builder.report_skipped_images(dataset_dict)
    return builder, dataset_dict


@dataclass
class BuildArguments:
    """Options of `marnet-data build`."""

    dataset: str = option(
        REQUIRED, positional=True, choices=sorted(BUILDER_CLASSES), help="which raw dataset to build"
    )
    data_dir: str | None = option(
        help="root of the raw files (openclipart*: defaults to Debian's /usr/share/openclipart)"
    )
    output_dir: Path | None = option(
        aliases=["--output"], help="where to write: save_to_disk folder, or the Parquet files with --push_to_hub"
    )
    food101_dir: str | None = option(
        help="ingredient-101 only: Food-101 root holding images/ (defaults to --data_dir)"
    )
    dataset_config_name: str | None = option(
        aliases=["--config"], help="builder config: ingredient-101 default|simplified, openclipart default|food"
    )
    builder_option: list[str] = option(
        [],
        action="extend",
        metavar="FIELD=VALUE",
        help="set a field of the builder's config, e.g. openclipart-dishes seed=1 (docs/datasets.md lists them; "
        "values parsed as JSON when they can be). Repeatable.",
    )
    num_proc: int = option(1, help="worker processes")
    skip_bad_images: bool = option(False, help="leave out unreadable images with a warning instead of failing")
    push_to_hub: str | None = option(metavar="REPO_ID", help="upload Parquet + dataset card to this Hub dataset repo")
    hub_private_repo: bool = option(False, aliases=["--private"], help="with --push_to_hub: create the repo private")
    dry_run: bool = option(
        False, help="with --push_to_hub: write the files to --output_dir and list them, upload nothing"
    )


def parse_args(argv: list[str] | None) -> BuildArguments:
    parser = argparse.ArgumentParser(prog="marnet-data", description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=MARNetArgumentParser)
    build = commands.add_parser(
        "build",
        dataclass_type=BuildArguments,
        help="build a dataset from its raw files",
        description="Build a dataset from its raw files. Every option is also accepted with dashes (--data-dir).",
    )
    return build.from_namespace(parser.parse_args(argv))


def check_options(args: BuildArguments) -> None:
    """Reject option combinations that cannot work, before any work is done."""
    config_names = [config.name for config in builder_class(args.dataset).BUILDER_CONFIGS] or ["default"]
    if args.dataset_config_name is not None and args.dataset_config_name not in config_names:
        raise UsageError(
            f"--dataset_config_name {args.dataset_config_name!r} is not a config of {args.dataset}; choose one of "
            f"{', '.join(config_names)}."
        )
    if args.data_dir is None and builder_class(args.dataset).DEFAULT_DATA_DIR is None:
        raise UsageError(f"--data_dir is required for {args.dataset}: the folder you unpacked the raw archive into.")
    if args.food101_dir is not None and args.dataset != "ingredient-101":
        raise UsageError("--food101_dir only applies to ingredient-101.")
    if args.num_proc < 1:
        raise UsageError(f"--num_proc must be at least 1, got {args.num_proc}.")
    args.builder_option = builder_config_overrides(args.dataset, args.dataset_config_name, args.builder_option)
    if args.push_to_hub is None and (args.hub_private_repo or args.dry_run):
        raise UsageError("--hub_private_repo and --dry_run only apply with --push_to_hub REPO_ID.")
    if args.output_dir is None and (args.push_to_hub is None or args.dry_run):
        raise UsageError("--output_dir DIR is required (with --dry_run it receives the files that would be uploaded).")
    if args.output_dir is not None:
        refuse_dangling_symlink(args.output_dir, "--output_dir")
        if args.output_dir.exists():
            raise UsageError(f"--output_dir {args.output_dir} already exists; remove it or choose another path.")


def builder_config_overrides(dataset: str, config_name: str | None, entries: list[str]) -> dict:
    """--builder_option FIELD=VALUE entries -> the config fields they set, each a field of `dataset`'s config with a
    value of its type, and the whole config accepted by the builder (its own range checks); else a UsageError."""
    values = parse_field_values(entries, "--builder_option")
    builder = builder_class(dataset)
    config_class = builder.BUILDER_CONFIG_CLASS
    # --skip_bad_images has its own option.
    set_elsewhere = builder.FIELDS_SET_ELSEWHERE | {"skip_bad_images"}
    types_of = {name: hint for name, hint in typing.get_type_hints(config_class).items() if name not in set_elsewhere}
    settable = [field.name for field in dataclasses.fields(config_class) if field.name in types_of]
    for name, value in values.items():
        if name not in types_of:
            raise UsageError(
                f"--builder_option {name}: {dataset} has no such config field; it has {', '.join(settable) or 'none'}."
            )
        allowed = (
            typing.get_args(types_of[name])
            if typing.get_origin(types_of[name]) in (typing.Union, types.UnionType)
            else (types_of[name],)
        )
        if float in allowed and type(value) is int:
            values[name] = value = float(value)
        if type(value) not in allowed:
            expected = " or ".join("null" if kind is type(None) else kind.__name__ for kind in allowed)
            raise UsageError(f"--builder_option {name}={value!r}: expected {expected}, got {type(value).__name__}.")
    try:
        dataclasses.replace(builder.named_config(config_name), **values)
    except ValueError as error:
        raise UsageError(f"--builder_option: {error}") from None
    return values


def make_scratch(args: BuildArguments) -> ScratchDirectory:
    """The scratch folder of the build: next to --output_dir (same filesystem, so the result is moved, not copied),
    else in the system's temporary folder; those of killed builds there are removed first. An unwritable location
    fails here, before any work."""
    scratch_parent = args.output_dir.parent if args.output_dir else None
    try:
        if scratch_parent is not None:
            scratch_parent.mkdir(parents=True, exist_ok=True)
        return ScratchDirectory(scratch_parent, ".marnet-data-")
    except OSError as error:
        where = scratch_parent or Path(tempfile.gettempdir())
        option = f"--output_dir {args.output_dir}: " if args.output_dir else ""
        raise CLIError(f"{option}cannot write in {describe_os_error(error, where) or error}") from None


def run_build(args: BuildArguments) -> None:
    """Build in a scratch folder next to the output, then move the finished result into place all at once. The
    scratch folder is removed on every way out: success, error, full disk, SIGINT, SIGTERM or SIGHUP (after a
    SIGKILL, by the next build beside the same output)."""
    scratch = make_scratch(args)
    try:
        build_into(args, scratch.path)
    except Exception as error:
        if describe_os_error(error) is None:
            raise
        raise CLIError(f"Building {args.dataset} failed: {describe_os_error(error, scratch.path.parent)}") from None
    finally:
        scratch.remove()


def build_into(args: BuildArguments, scratch: Path) -> None:
    """The build itself, in `scratch`; the result moved to --output_dir (or uploaded) all at once."""
    from .card import dataset_card
    from .hub import describe_folder, upload_hub_folder, write_hub_folder

    config_kwargs = {**args.builder_option, **({"food101_dir": args.food101_dir} if args.food101_dir else {})}
    builder, dataset_dict = build_dataset(
        args.dataset,
        args.data_dir if args.data_dir is not None else builder_class(args.dataset).DEFAULT_DATA_DIR,
        cache_dir=scratch / "cache",
        config_name=args.dataset_config_name,
        num_proc=args.num_proc,
        skip_bad_images=args.skip_bad_images,
        output_parent=scratch.parent,
        **config_kwargs,
    )
    # Only if --output_dir still does not exist: two builds on one output never both succeed.
    with atomic_directory(args.output_dir or scratch / "result", replace=False) as result:
        if args.push_to_hub is None:
            dataset_dict.save_to_disk(str(result))
        else:
            write_hub_folder(
                dataset_dict,
                result,
                lambda parquet_bytes: dataset_card(builder, dataset_dict, args.push_to_hub, parquet_bytes),
            )
            if args.dry_run:
                print(f"Dry run: would upload to dataset repo {args.push_to_hub} (private={args.hub_private_repo}):")
                print("\n".join(f"  {line}" for line in describe_folder(result)))
            else:
                print(f"Pushed to {upload_hub_folder(result, args.push_to_hub, args.hub_private_repo)}")
    summary = ", ".join(f"{split}: {len(dataset):,}" for split, dataset in dataset_dict.items())
    destination = args.output_dir if args.output_dir is not None else args.push_to_hub
    print(
        f"{args.dataset} ({builder.config.name}): {summary} images, "
        f"{builder.info.features['label'].num_classes} classes -> {destination}"
    )


@command("marnet-data")
def main(argv: list[str] | None = None) -> None:
    """Entry point of the `marnet-data` console script."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logger.setLevel(logging.INFO)
    check_options(args)
    run_build(args)


if __name__ == "__main__":
    sys.exit(main())
