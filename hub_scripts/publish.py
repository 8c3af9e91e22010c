"""`marnet-publish`: turn a MARNet run folder, or a converted vision tower, into a Hub repo and upload it.

The kind of source is read from its config.json (`model_type` "marnet" or "timm_wrapper"). The repo folder holds the
config, safetensors weights, image processor, model code for `trust_remote_code` users (MARNet), the run's or the
conversion's records, and a model card generated from them. `marnet-train --push_to_hub` publishes through
[`publish`] too.
"""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from marnet_cli.errors import UsageError, command
from marnet_cli.files import refuse_dangling_symlink
from marnet_cli.options import REQUIRED, MARNetArgumentParser, option

from .model_card import marnet_card, vision_tower_card
from .repo_folder import write_repo_folder
from .sources import TrainingOutput, load_source
from .upload import check_can_upload, upload_repo_folder

DEFAULT_LICENSE = "apache-2.0"
MARNET_ONLY_OPTIONS = ("license", "dataset_repo", "base_model")
EXAMPLES = """\
examples:
  marnet-publish runs/food172 --hub_model_id org/marnet-food172 --dry_run --output_dir hub/marnet-food172
  marnet-publish runs/food172 --hub_model_id org/marnet-food172 --hub_private_repo
  marnet-publish towers/efficientnet-lite0 --hub_model_id org/efficientnet-lite0-marnet-tower
"""


@dataclass
class PublishArguments:
    """Options of `marnet-publish`, named as marnet-train's publishing options."""

    source: Path = option(
        REQUIRED, positional=True, help="marnet-train --output_dir, or marnet-convert-efficientnet --output_dir"
    )
    hub_model_id: str | None = option(aliases=["--repo_id"], help="Target Hub model repo, owner/name.")
    output_dir: Path | None = option(
        help="Where to assemble the repo folder (required with --dry_run; must not exist)."
    )
    dry_run: bool = option(False, help="Only write the repo folder and list what would be sent.")
    hub_private_repo: bool = option(False, aliases=["--private"], help="Create the repo as private.")
    hub_revision: str | None = option(
        aliases=["--revision"], help="Branch to commit to (created if missing; default main)."
    )
    commit_message: str | None = option(help="Default: says what was published.")
    create_pr: bool = option(False, help="Open a pull request instead of committing.")
    license: str | None = option(help=f"License of a MARNet model (default {DEFAULT_LICENSE}).")
    dataset_repo: str | None = option(help="Hub dataset repo to link (default: the run's dataset, if a Hub id).")
    base_model: str | None = option(
        help="Hub repo of the vision tower (default: the run's vision_model, if a Hub id)."
    )

    def __post_init__(self):
        check_repo_id(self.hub_model_id)
        if self.dry_run and self.output_dir is None:
            raise UsageError("--dry_run writes the repo folder only: say where with --output_dir DIR.")
        if self.output_dir is not None:
            refuse_dangling_symlink(self.output_dir, "--output_dir")
        if self.output_dir is not None and self.output_dir.exists():
            raise UsageError(f"--output_dir {self.output_dir} already exists: remove it or choose another path.")


def check_repo_id(repo_id):
    """A Hub model repo id `owner/name`, or a [`UsageError`]."""
    if repo_id is None:
        raise UsageError("--hub_model_id is required: the Hub repo to publish to, as owner/name.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UsageError(f"--hub_model_id {repo_id!r} is not a valid repo id: {error}") from None
    if repo_id.count("/") != 1:
        raise UsageError(f"--hub_model_id must be owner/name (the card's usage code needs it), got {repo_id!r}.")


def check_publish_target(repo_id, dry_run):
    """Refuses early (before a training run) a repo id or an upload that cannot work."""
    check_repo_id(repo_id)
    if not dry_run:
        check_can_upload()


def render_card(source, repo_id, license=None, dataset_repo=None, base_model=None):
    if isinstance(source, TrainingOutput):
        return marnet_card(
            source, repo_id, license=license or DEFAULT_LICENSE, dataset_repo=dataset_repo, base_model=base_model
        )
    given = {"license": license, "dataset_repo": dataset_repo, "base_model": base_model}
    given = [f"--{name}" for name in MARNET_ONLY_OPTIONS if given[name] is not None]
    if given:
        raise UsageError(
            f"{', '.join(given)} apply to MARNet models; a vision tower's card takes them from its record."
        )
    return vision_tower_card(source, repo_id)


def describe_folder(folder, files):
    for name in files:
        print(f"  {name}  ({(Path(folder) / name).stat().st_size:,} bytes)")


def publish(
    source_dir,
    repo_id,
    *,
    repo_folder=None,
    dry_run=False,
    private=False,
    revision=None,
    commit_message=None,
    create_pr=False,
    license=None,
    dataset_repo=None,
    base_model=None,
    replace_repo_folder=True,
):
    """Assemble the Hub repo folder of `source_dir` (a run folder or a converted vision tower) and upload it.

    Args:
        source_dir (`str` or `os.PathLike`): what to publish, checked before anything is written or sent.
        repo_id (`str`): the Hub model repo, owner/name.
        repo_folder (`str` or `os.PathLike`, *optional*): where to assemble the repo folder (replaced if it exists,
            unless `replace_repo_folder=False`: then one that appears meanwhile is an error); default: a temporary
            folder, removed afterwards. Required with `dry_run`.
        dry_run (`bool`): only write `repo_folder` and list what would be sent.
        private, revision, commit_message, create_pr: how to upload (see `HfApi.upload_folder`).
        license, dataset_repo, base_model: model card fields of a MARNet model (defaults from the run).

    Returns:
        The URL of the commit (or pull request); in a dry run, the repo folder.
    """
    check_repo_id(repo_id)
    source_dir = Path(source_dir)
    source = load_source(source_dir)
    card = render_card(source, repo_id, license, dataset_repo, base_model)
    kind = "MARNet model" if isinstance(source, TrainingOutput) else "vision tower"
    commit_message = commit_message or f"Upload {kind} from {source_dir.name} with marnet-publish"
    if not dry_run:
        check_can_upload()
    keep_folder = repo_folder is not None
    folder = Path(repo_folder) if keep_folder else Path(tempfile.mkdtemp(prefix="marnet-publish-")) / "repo"
    try:
        files = write_repo_folder(source, card, folder, replace_repo_folder)
        target = f"{repo_id} ({'private' if private else 'public'}, revision {revision or 'main'}"
        target += ", as a pull request)" if create_pr else ")"
        if dry_run:
            print(f"Dry run: wrote the {kind} repo folder {folder}; nothing was sent.")
            print(f"Would upload to {target} with commit message {commit_message!r}:")
            describe_folder(folder, files)
            return folder
        print(f"Uploading the {kind} to {target}:")
        describe_folder(folder, files)
        url = upload_repo_folder(
            folder, repo_id, private=private, revision=revision, commit_message=commit_message, create_pr=create_pr
        )
        print(f"Done: {url}")
        return url
    finally:
        if not keep_folder:
            shutil.rmtree(folder.parent, ignore_errors=True)


@command("marnet-publish")
def main(argv=None):
    """Console script `marnet-publish`."""
    args = MARNetArgumentParser(
        PublishArguments,
        prog="marnet-publish",
        epilog=EXAMPLES,
        description="Publish a marnet-train output folder or a converted vision tower to the Hugging Face Hub.",
    ).parse(argv)
    publish(
        args.source,
        args.hub_model_id,
        repo_folder=args.output_dir,
        dry_run=args.dry_run,
        private=args.hub_private_repo,
        revision=args.hub_revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        license=args.license,
        dataset_repo=args.dataset_repo,
        base_model=args.base_model,
        replace_repo_folder=False,  # --output_dir must not exist: two runs on it never both succeed
    )


if __name__ == "__main__":
    raise SystemExit(main())
