"""Send an assembled repo folder to the Hugging Face Hub with `HfApi.create_repo` + `upload_folder`."""

from huggingface_hub import HfApi, constants, get_token

from marnet_cli.errors import CLIError


def check_can_upload():
    """Refuse early, before anything is assembled or sent, when an upload cannot work."""
    if constants.HF_HUB_OFFLINE:
        raise CLIError(
            "HF_HUB_OFFLINE=1 is set, so nothing can be uploaded: unset it, or use a dry run (marnet-publish "
            "--dry_run, marnet-train --hub_dry_run)."
        )
    if get_token() is None:
        raise CLIError(
            "No Hugging Face token: set HF_TOKEN or run `hf auth login`, or use a dry run (marnet-publish "
            "--dry_run, marnet-train --hub_dry_run)."
        )


def full_repo_id(repo_id):
    """`repo_id`, or for a bare name (as Trainer's `--hub_model_id` takes) `owner/name`, the owner being the user
    the token belongs to, asked of the Hub."""
    if "/" in repo_id:
        return repo_id
    try:
        owner = HfApi().whoami()["name"]
    except Exception as error:  # offline, no token, network or server failure: each says why
        raise CLIError(
            f"--hub_model_id {repo_id!r} names no owner, and the Hub could not say whose token this is "
            f"({type(error).__name__}: {error}). Give owner/name."
        ) from None
    return f"{owner}/{repo_id}"


def upload_repo_folder(folder, repo_id, *, private, revision, commit_message, create_pr):
    """Create `repo_id` if needed (and the `revision` branch) and upload `folder` as one commit; returns its URL.

    The token comes from HF_TOKEN or the stored login. A failure becomes a [`CLIError`] saying what exists remotely.
    """
    api = HfApi()
    step, done = "create the repo", "nothing was created or uploaded"
    # Network and server failures come in many exception types (transport, HTTP, auth); each is reported as such.
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        done = f"the repo {repo_url} exists, but this run committed nothing to it"
        if revision not in (None, constants.DEFAULT_REVISION):
            step = f"create the branch {revision!r}"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        step = "upload the files"
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
        )
    except Exception as error:
        raise CLIError(
            f"Could not {step} on {constants.ENDPOINT} ({type(error).__name__}: {error}); {done}."
        ) from None
    return commit.pr_url if create_pr else commit.commit_url
