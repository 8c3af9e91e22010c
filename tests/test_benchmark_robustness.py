"""benchmarks/robustness.py on two tiny rows of two seeds each (a plain ViT classifier as the baseline, MARNet as the
other row): scores equal to marnet-eval's on the same corruption, branches for MARNet only, paired differences
consistent with the per-seed numbers, and the JSON and plot written."""

import importlib.util
import json
import shutil
import sys

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from modeling_marnet import MARNetConfig, MARNetForImageClassification
from modeling_marnet.evaluate import main as evaluate_main
from train_fixtures import CLASS_COLOURS, IMAGE_SIZE, REPO_ROOT, run_command, save_dataset

LABELS = {"id2label": dict(enumerate(CLASS_COLOURS)), "label2id": {n: i for i, n in enumerate(CLASS_COLOURS)}}
VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 37}
VIT.update(image_size=IMAGE_SIZE, patch_size=10)
VARIANTS = ["--variant", "ddim:sampler=ddim", "--variant", "visual:classifier_input=visual"]


def load_script():
    spec = importlib.util.spec_from_file_location("robustness", REPO_ROOT / "benchmarks" / "robustness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_row(folder, make_model):
    """Two seeds of a row: `seed-0` and `seed-1` run folders (model and image processor)."""
    for seed in (0, 1):
        torch.manual_seed(seed)
        make_model().save_pretrained(folder / f"seed-{seed}")
        ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder / f"seed-{seed}")
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("robustness")
    marnet = MARNetConfig(
        vision_config=ViTConfig(**VIT),
        text_hidden_size=16,
        projection_dim=8,
        denoiser_hidden_size=24,
        timestep_embedding_dim=8,
        num_train_timesteps=50,
        num_inference_steps=3,
        **LABELS,
    )
    paths = {
        "dataset": save_dataset(root / "dataset"),
        "baseline": save_row(root / "vit", lambda: ViTForImageClassification(ViTConfig(**VIT, **LABELS))),
        "marnet": save_row(root / "marnet", lambda: MARNetForImageClassification(marnet)),
        "output": root / "out" / "robustness.json",
        "cache": root / "cache",
    }
    argv = [
        "--dataset",
        str(paths["dataset"]),
        "--row",
        f"vit={paths['baseline']}",
        "--row",
        f"marnet={paths['marnet']}",
    ]
    argv += [
        "--corruptions",
        "gaussian_noise",
        "occlusion",
        "--severities",
        "1",
        "5",
        "--output",
        str(paths["output"]),
    ]
    argv += [*VARIANTS, "--cache-dir", str(paths["cache"])]
    assert load_script().main(argv) == 0
    paths["argv"] = argv
    return paths, json.loads(paths["output"].read_text())


def test_scores_are_marnet_evals_on_the_same_corrupted_images(report, capsys):
    paths, results = report
    assert results["num_images"] == 9 and results["baseline"] == "vit"
    for row in ("vit", "marnet"):
        folder = paths["baseline" if row == "vit" else "marnet"] / "seed-1"
        argv = [
            "--model",
            str(folder),
            "--dataset",
            str(paths["dataset"]),
            "--corruption",
            "occlusion",
            "--severity",
            "5",
        ]
        assert evaluate_main(argv) == 0
        expected = json.loads(capsys.readouterr().out)["top1"]
        assert results["top1"][row]["1"]["occlusion/5"]["logits"] == pytest.approx(100 * expected)


def test_branches_variants_and_paired_differences(report):
    paths, results = report
    assert set(results["top1"]) == {"vit", "marnet", "marnet[ddim]", "marnet[visual]"}  # variants: MARNet only
    for seed, levels in results["top1"]["marnet"].items():  # classifier_input=visual returns the x_v branch
        for level, heads in levels.items():
            assert results["top1"]["marnet[visual]"][seed][level]["logits"] == pytest.approx(heads["visual"])
    assert set(results["top1"]["vit"]["0"]["clean"]) == {"logits"}
    assert set(results["top1"]["marnet"]["0"]["clean"]) == {"logits", "visual", "reconstruction"}
    marnet = results["summary"]["marnet"]["logits"]
    vit = results["summary"]["vit"]["logits"]
    for seed in ("0", "1"):
        levels = results["top1"]["marnet"][seed]
        corrupted = [levels[f"{name}/{s}"]["logits"] for name in ("gaussian_noise", "occlusion") for s in (1, 5)]
        assert marnet["per_seed"][seed]["corrupted"] == pytest.approx(sum(corrupted) / 4)
        at_five = [levels[f"{name}/5"]["logits"] for name in ("gaussian_noise", "occlusion")]
        assert marnet["per_seed"][seed]["at_severity/5"] == pytest.approx(sum(at_five) / 2)
        assert marnet["per_seed"][seed]["at_severity/1/occlusion"] == levels["occlusion/1"]["logits"]
    differences = [marnet["per_seed"][s]["corrupted"] - vit["per_seed"][s]["corrupted"] for s in ("0", "1")]
    paired = marnet["paired"]["corrupted"]
    assert paired["mean"] == pytest.approx(sum(differences) / 2) and paired["n"] == 2
    # Two seeds: the 95 % interval is t(0.975, 1) = 12.706 standard errors wide on each side.
    assert paired["half_width"] == pytest.approx(12.706 * abs(differences[0] - differences[1]) / 2, rel=1e-3)
    assert set(results["stability"]["marnet"]) >= {"clean", "corrupted", "family/noise", "family/occlusion"}
    branch = results["summary"]["marnet"]["reconstruction"]
    gains = [branch["per_seed"][s]["family/noise"] - marnet["per_seed"][s]["family/noise"] for s in ("0", "1")]
    assert branch["paired_to_logits"]["family/noise"]["mean"] == pytest.approx(sum(gains) / 2)
    assert "paired_to_logits" not in marnet
    assert paths["output"].with_suffix(".png").stat().st_size > 10_000


def test_rows_on_different_seeds_are_refused(report, tmp_path, capsys):
    paths, _ = report
    lonely = tmp_path / "lonely"
    save_row(lonely, lambda: ViTForImageClassification(ViTConfig(**VIT, **LABELS)))
    (lonely / "seed-1" / "config.json").unlink()  # seed 1 did not finish
    argv = ["--dataset", str(paths["dataset"]), "--row", f"vit={paths['baseline']}", "--row", f"other={lonely}"]
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([*argv, "--output", str(tmp_path / "r.json")])
    assert exit_info.value.code == 2 and not (tmp_path / "r.json").exists()
    assert "must have the same seeds: [0] against the baseline's [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --seeds asks for the one seed both rows finished: accepted, then a missing one
        load_script().parse_args([*argv, "--seeds", "0", "1"])
    assert "--seeds: row other has no finished run (config.json) for seeds [1]" in capsys.readouterr().err
    assert set(load_script().parse_args([*argv, "--seeds", "0"]).rows["other"]) == {0}


def test_cached_scores_are_reused_until_the_weights_change(report, tmp_path, capsys):
    paths, results = report
    argv = [*paths["argv"][: paths["argv"].index("--output")], "--output", str(tmp_path / "again.json")]
    argv += [*VARIANTS, "--cache-dir", str(paths["cache"])]
    capsys.readouterr()
    assert load_script().main(argv) == 0
    assert "clean: 0 of 8 models scored" in capsys.readouterr().out
    assert json.loads((tmp_path / "again.json").read_text())["top1"] == results["top1"]

    changed = tmp_path / "changed"  # the baseline row again, its seed 1 retrained (other weights, same folder name)
    shutil.copytree(paths["baseline"], changed)
    torch.manual_seed(123)
    ViTForImageClassification(ViTConfig(**VIT, **LABELS)).save_pretrained(changed / "seed-1")
    argv[argv.index(f"vit={paths['baseline']}")] = f"vit={changed}"
    assert load_script().main(argv) == 0
    out = capsys.readouterr().out
    assert "clean: 2 of 8 models scored" in out  # the copied folder's seed 0 and its retrained seed 1, not MARNet


def test_report_gives_each_branch_its_seed_std(report):
    _, results = report
    lines = load_script().report(results).splitlines()
    row = next(line for line in lines if line.startswith("marnet reconstruction "))
    entry = results["summary"]["marnet"]["reconstruction"]["mean"]
    expected = [entry[key]["std"] for key in ("clean", "corrupted", "family/noise", "family/occlusion")]
    assert [float(value) for value in row.split()[2:]] == pytest.approx(expected, abs=0.006)


def test_variants_apply_to_the_rows_asked_for(report, capsys):
    paths, _ = report
    script = load_script()
    argv = ["--dataset", str(paths["dataset"]), "--row", f"vit={paths['baseline']}", "--row", f"m={paths['marnet']}"]
    argv += ["--variant", "ddim:sampler=ddim"]
    rows = {entry.row for entry in script.load_models(script.parse_args(argv))}
    assert rows == {"vit", "m", "m[ddim]"}
    rows = {entry.row for entry in script.load_models(script.parse_args([*argv, "--variant-rows", "vit"]))}
    assert rows == {"vit", "m"}  # the ViT has no sampler; MARNet is not asked for
    with pytest.raises(SystemExit):
        script.parse_args([*argv, "--variant-rows", "marnet"])
    assert "--variant-rows: ['marnet'] are not rows; the rows are ['vit', 'm']" in capsys.readouterr().err


def test_every_kth_image(report, tmp_path):
    paths, results = report
    argv = ["--dataset", str(paths["dataset"]), "--row", f"vit={paths['baseline']}", "--corruptions", "occlusion"]
    argv += ["--severities", "5", "--every", "3", "--output", str(tmp_path / "every.json")]
    assert load_script().main(argv) == 0
    subset = json.loads((tmp_path / "every.json").read_text())
    assert subset["num_images"] == 3 and subset["every"] == 3  # rows 0, 3 and 6 of 9
    assert all(round(value * 3 / 100, 6).is_integer() for value in subset["top1"]["vit"]["0"]["clean"].values())


def test_markdown_tables_copy_the_summary(report):
    _, results = report
    text = load_script().markdown(results)
    marnet = results["summary"]["marnet"]
    paired = marnet["logits"]["paired"]["corrupted"]
    assert f"| {paired['mean']:+.2f} ± {paired['half_width']:.2f} | {marnet['logits']['seeds_for_target']} |" in text
    gain = marnet["reconstruction"]["paired_to_logits"]["family/noise"]
    row = next(line for line in text.splitlines() if line.startswith("| marnet, reconstruction |"))
    assert row.endswith(f"| {gain['mean']:+.2f} ± {gain['half_width']:.2f} |")


def test_summary_table_pairs_clean_and_corrupted_as_the_report_does(report):
    paths, results = report
    completed = run_command([sys.executable, str(REPO_ROOT / "benchmarks" / "summary.py"), str(paths["output"])])
    assert completed.returncode == 0, completed.stderr
    marnet = results["summary"]["marnet"]["logits"]["paired"]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("| marnet | 2 |"))
    for metric in ("clean", "corrupted"):
        assert f"| {marnet[metric]['mean']:+.2f} ± {marnet[metric]['half_width']:.2f} |" in line
    assert "test split (9 images)" in completed.stdout
