"""`marnet-publish`: turn a MARNet training output folder, or a converted vision tower, into a Hub repo and upload it.

The kind of source is read from its config.json (`model_type` "marnet" or "timm_wrapper"). The repo folder holds the
config, safetensors weights, image processor, model code for `trust_remote_code` users (MARNet), the run's or the
conversion's records, and a model card generated from them.

    marnet-publish runs/food172 --repo-id org/marnet-food172 --dry-run --output-dir hub/marnet-food172
    marnet-publish runs/food172 --repo-id org/marnet-food172 --private
    marnet-publish towers/efficientnet-lite0 --repo-id org/efficientnet-lite0-marnet-tower
"""

import argparse
import shutil
import tempfile
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from .cli_support import UserError, cli_entry_point
from .model_card import marnet_card, vision_tower_card
from .repo_folder import write_repo_folder
from .sources import TrainingRun, load_source
from .upload import check_can_upload, upload_repo_folder

DEFAULT_LICENSE = "apache-2.0"
MARNET_ONLY_OPTIONS = ("license", "dataset_repo", "base_model")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="marnet-publish",
        description="Publish a marnet-train output folder or a converted vision tower to the Hugging Face Hub.",
    )
    parser.add_argument("source", type=Path, help="marnet-train --output-dir, or marnet-convert-efficientnet --output")
    parser.add_argument("--repo-id", required=True, help="target Hub model repo, as owner/name")
    parser.add_argument("--output-dir", type=Path, help="where to assemble the repo folder (required with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="only write the repo folder and list what would be sent")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    parser.add_argument("--commit-message", help="commit message (default: says what was published)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--license", help=f"license of a MARNet model (default {DEFAULT_LICENSE})")
    parser.add_argument("--dataset-repo", help="Hub dataset repo to link (default: the run's dataset, if a Hub id)")
    parser.add_argument("--base-model", help="Hub repo of the vision tower (default: the run's vision_model, if a Hub id)")
    return parser.parse_args(argv)


def check_args(args):
    try:
        validate_repo_id(args.repo_id)
    except HFValidationError as error:
        raise UserError(f"--repo-id {args.repo_id!r} is not a valid repo id: {error}") from None
    if args.repo_id.count("/") != 1:
        raise UserError(f"--repo-id must be owner/name (the card's usage code needs it), got {args.repo_id!r}.")
    if args.dry_run and args.output_dir is None:
        raise UserError("--dry-run writes the repo folder only: say where with --output-dir DIR.")


def render_card(source, args):
    if isinstance(source, TrainingRun):
        return marnet_card(
            source,
            args.repo_id,
            license=args.license or DEFAULT_LICENSE,
            dataset_repo=args.dataset_repo,
            base_model=args.base_model,
        )
    given = [f"--{name.replace('_', '-')}" for name in MARNET_ONLY_OPTIONS if getattr(args, name) is not None]
    if given:
        raise UserError(f"{', '.join(given)} apply to MARNet models; a vision tower's card takes them from its record.")
    return vision_tower_card(source, args.repo_id)


def describe_folder(folder, files):
    for name in files:
        print(f"  {name}  ({(Path(folder) / name).stat().st_size:,} bytes)")


@cli_entry_point
def main(argv=None):
    """Console script `marnet-publish`."""
    args = parse_args(argv)
    check_args(args)
    source = load_source(args.source)
    card = render_card(source, args)
    kind = "MARNet model" if isinstance(source, TrainingRun) else "vision tower"
    commit_message = args.commit_message or f"Upload {kind} from {args.source.name} with marnet-publish"
    if not args.dry_run:
        check_can_upload()

    keep_folder = args.output_dir is not None
    folder = args.output_dir if keep_folder else Path(tempfile.mkdtemp(prefix="marnet-publish-")) / "repo"
    try:
        files = write_repo_folder(source, card, folder)
        target = f"{args.repo_id} ({'private' if args.private else 'public'}, revision {args.revision or 'main'}"
        target += ", as a pull request)" if args.create_pr else ")"
        if args.dry_run:
            print(f"Dry run: wrote the {kind} repo folder {folder}; nothing was sent.")
            print(f"Would upload to {target} with commit message {commit_message!r}:")
            describe_folder(folder, files)
            return
        print(f"Uploading the {kind} to {target}:")
        describe_folder(folder, files)
        url = upload_repo_folder(
            folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=commit_message,
            create_pr=args.create_pr,
        )
        print(f"Done: {url}")
    finally:
        if not keep_folder:
            shutil.rmtree(folder.parent, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
