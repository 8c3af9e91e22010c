"""A run folder holds one run: `--overwrite_output_dir` leaves nothing of the previous run, even when the new run
fails, and resuming continues only the run that wrote the checkpoint."""

from types import SimpleNamespace

from marnet_cli.run_folder import LOCK_NAME, RunFolder
from modeling_marnet.evaluate import main as eval_main
from modeling_marnet.train import start_output_dir
from test_publish import write_training_output
from train_fixtures import save_dataset


def test_an_overwritten_folder_keeps_nothing_of_the_previous_run(tmp_path, capsys):
    run = tmp_path / "run"
    write_training_output(run)  # a finished run: model, processor, model code, records
    for folder in ("checkpoints/checkpoint-4", "logs", "hub_repo"):
        (run / folder).mkdir(parents=True)
    (run / "notes.txt").write_text("the user's own file")
    folder = RunFolder(run)
    try:
        start_output_dir(SimpleNamespace(overwrite_output_dir=True, resume_from_checkpoint=None), folder)
    finally:
        folder.release()
    # The new run fails here, before saving anything: the folder must not pass for the previous run's.
    assert sorted(path.name for path in run.iterdir()) == sorted([LOCK_NAME, "logs", "notes.txt"])
    dataset = save_dataset(tmp_path / "dataset", parquet=True)
    assert eval_main(["--model_name_or_path", str(run), "--dataset_name", str(dataset)]) == 1
    assert "cannot load an image classifier" in capsys.readouterr().err
