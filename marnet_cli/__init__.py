"""What the MARNet command-line tools share: option parsing, errors, atomic file writes and the run-folder contract.

The commands are `marnet-train`, `marnet-eval` (`commands.py`), `marnet-data` (`dataset_scripts.cli`) and
`marnet-publish` / `marnet-convert-efficientnet` (`hub_scripts`). This package imports neither torch nor the model, so
`--help` and option errors answer before any heavy import.
"""
