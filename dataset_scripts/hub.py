"""Write a dataset as a Hub repository folder (Parquet shards + dataset card) and upload it.

The folder has the layout `DatasetDict.push_to_hub` creates (`data/<split>-<i>-of-<n>.parquet` and a
README.md whose YAML maps splits to files and carries the features), so `load_dataset(folder)`
and `load_dataset(repo_id)` read it with no code. Writing it locally first makes the upload a
single commit of exactly the files a dry run shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import datasets
from huggingface_hub import DatasetCard, HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from marnet_cli.errors import CLIError

#: Same default as `push_to_hub`.
MAX_SHARD_BYTES = 500 * 1024 * 1024


def write_parquet_shards(dataset_dict: datasets.DatasetDict, folder: Path) -> dict[str, int]:
    """Write each split as `data/<split>-XXXXX-of-NNNNN.parquet`; return the Parquet bytes per split."""
    data_dir = folder / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, dataset in dataset_dict.items():
        num_shards = max(1, math.ceil(dataset.data.nbytes / MAX_SHARD_BYTES))
        written[split] = 0
        for index in range(num_shards):
            path = data_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
            dataset.shard(num_shards=num_shards, index=index, contiguous=True).to_parquet(str(path))
            written[split] += path.stat().st_size
    return written


def write_hub_folder(
    dataset_dict: datasets.DatasetDict,
    folder: Path,
    make_card: Callable[[dict[str, int]], DatasetCard],
) -> None:
    """Write the Parquet shards, then the card that `make_card(parquet_bytes_per_split)` returns."""
    parquet_bytes = write_parquet_shards(dataset_dict, folder)
    (folder / "README.md").write_text(str(make_card(parquet_bytes)), encoding="utf-8")


def describe_folder(folder: Path) -> list[str]:
    """One line per file of `folder` (relative path and size), for dry runs."""
    return [
        f"{path.relative_to(folder).as_posix()}  ({path.stat().st_size:,} bytes)"
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]


def upload_hub_folder(folder: Path, repo_id: str, private: bool) -> str:
    """Create the dataset repo if needed and upload `folder` in one commit (old shards are replaced).

    Returns the URL of the commit. Raises a `CLIError` with the reason on any Hub failure.
    """
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            delete_patterns=["data/*"],
            commit_message="Upload dataset built with marnet-data",
        )
    except OfflineModeIsEnabled as error:
        raise CLIError(f"cannot push to {repo_id}: {error} Use --dry_run to only write the files locally.") from None
    except (HfHubHTTPError, OSError) as error:
        raise CLIError(
            f"cannot push to {repo_id}: {error}. Check the repo id, that you are logged in "
            "(`hf auth login` or HF_TOKEN) and have write access."
        ) from None
    return commit.commit_url
