"""The `ecgfm` command a researcher types: inspect, synth, plot, evaluate; and what misuse gives:
one line naming the problem and a non-zero exit, never a traceback (unless --debug)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from ecgfm.cli import main
from ecgfm.data.record import LEADS

INSPECT_KEYS = {"format", "record_id", "sampling_rate", "num_samples", "leads",
                "lead_mean_mv", "lead_std_mv", "labels", "age", "sex"}  # fmt: skip


def _inspect_json(capsys, *paths):
    assert main(["inspect", "--json", *map(str, paths)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_inspect_json_of_a_challenge_record_matches_the_raw_mat_file(capsys, real_data):
    (summary,) = _inspect_json(capsys, real_data / "cinc2021" / "HR06000.hea")
    assert summary.keys() >= INSPECT_KEYS
    raw_mv = scipy.io.loadmat(real_data / "cinc2021" / "HR06000.mat")["val"].T / 1000.0
    assert summary["format"] == "challenge"
    assert summary["leads"] == list(LEADS)
    assert summary["num_samples"] == 5000 and summary["sampling_rate"] == 500.0
    np.testing.assert_allclose(summary["lead_mean_mv"], raw_mv.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(summary["lead_std_mv"], raw_mv.std(axis=0), atol=1e-6)
    assert summary["labels"] == ["164934002", "426783006"]
    assert summary["age"] == 59 and summary["sex"] == "F"


def test_inspect_json_prints_one_line_per_path_of_any_format(capsys, real_data):
    paths = [
        real_data / "cpsc2018" / "A1980.mat",
        real_data / "cinc2021" / "E07500",
        real_data / "cinc2021" / "JS20000.mat",
    ]
    summaries = _inspect_json(capsys, *paths)
    assert [s["format"] for s in summaries] == ["cpsc2018", "challenge", "challenge"]
    assert [s["record_id"] for s in summaries] == ["A1980", "E07500", "JS20000"]
    raw = scipy.io.loadmat(paths[0])["ECG"][0, 0]["data"].T
    np.testing.assert_allclose(summaries[0]["lead_std_mv"], raw.std(axis=0), rtol=1e-5)


def test_synth_then_inspect_and_plot_a_ptbxl_record(capsys, tmp_path):
    assert main(["synth", "ptbxl", "--out", str(tmp_path / "ptbxl"), "--exams", "4"]) == 0
    capsys.readouterr()
    record = tmp_path / "ptbxl" / "records500" / "00000" / "00001_hr"
    (summary,) = _inspect_json(capsys, record)
    assert summary["format"] == "ptbxl" and summary["sampling_rate"] == 500.0
    assert summary["labels"]  # SCP codes from ptbxl_database.csv
    assert main(["plot", str(record), "--out", str(tmp_path / "ecg.png")]) == 0
    assert (tmp_path / "ecg.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_synth_code_then_inspect_one_exam_by_id(capsys, tmp_path):
    assert main(["synth", "code", "--out", str(tmp_path / "code"), "--exams", "6"]) == 0
    capsys.readouterr()
    import pandas as pd

    exams = pd.read_csv(tmp_path / "code" / "exams.csv")
    exam_id = int(exams["exam_id"].iloc[0])
    shard = tmp_path / "code" / exams["trace_file"].iloc[0]
    (summary,) = _inspect_json(capsys, f"{shard}#{exam_id}")
    assert summary["format"] == "code" and summary["sampling_rate"] == 400.0
    assert summary["record_id"] == str(exam_id)
    assert summary["num_samples"] in (2800, 4000)  # the real length, padding removed


def test_inspect_of_a_truncated_file_names_the_file(capsys, tmp_path, real_data):
    broken = tmp_path / "A1980.mat"
    broken.write_bytes((real_data / "cpsc2018" / "A1980.mat").read_bytes()[:500])
    assert main(["inspect", str(broken)]) == 2
    assert str(broken) in capsys.readouterr().err


def test_inspect_of_a_missing_path_is_a_clear_error(capsys, tmp_path):
    assert main(["inspect", str(tmp_path / "nothing.hea")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_evaluate_prints_json_with_cis(capsys, tmp_path):
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 3)) < 0.3).astype(int)
    scores = labels + rng.normal(size=labels.shape)
    np.save(tmp_path / "y.npy", labels)
    np.savetxt(tmp_path / "p.csv", scores, delimiter=",")
    args = ["--labels", str(tmp_path / "y.npy"), "--scores", str(tmp_path / "p.csv")]
    assert main(["evaluate", *args, "--json", "--bootstrap", "100"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"macro_auroc", "macro_auprc", "per_class_auroc", "macro_auroc_ci"} <= result.keys()
    assert len(result["per_class_auroc"]) == 3
    low, high = result["macro_auroc_ci"]
    assert low < result["macro_auroc"] < high


def test_evaluate_refuses_mismatched_files(tmp_path):
    np.save(tmp_path / "y.npy", np.zeros((10, 2)))
    np.save(tmp_path / "p.npy", np.zeros((10, 3)))
    with pytest.raises(SystemExit, match="shape"):
        main(["evaluate", "--labels", str(tmp_path / "y.npy"), "--scores", str(tmp_path / "p.npy")])


def test_prepare_then_inspect_a_built_dataset(capsys, tmp_path):
    assert main(["synth", "cpsc2018", "--out", str(tmp_path / "src"), "--exams", "12"]) == 0
    args = ["--src", str(tmp_path / "src"), "--data-dir", str(tmp_path / "tfds")]
    assert main(["prepare", "cpsc2018", *args]) == 0
    capsys.readouterr()
    (summary,) = _inspect_json(capsys, tmp_path / "tfds" / "cpsc2018")
    assert summary["format"] == "tfds"
    assert sum(split["num_records"] for split in summary["splits"].values()) == 12
    assert summary["preprocessing"] is not None or "preprocessing" in summary


def test_prepare_takes_a_published_split_column_for_code(capsys, tmp_path):
    assert main(["synth", "code", "--out", str(tmp_path / "src"), "--exams", "8"]) == 0
    csv_path = tmp_path / "src" / "exams.csv"
    rows = csv_path.read_text().splitlines()
    split_of = ["train", "validation"] * 4
    rows = [rows[0] + ",split"] + [f"{row},{s}" for row, s in zip(rows[1:], split_of, strict=True)]
    csv_path.write_text("\n".join(rows) + "\n")
    args = ["--src", str(tmp_path / "src"), "--data-dir", str(tmp_path / "tfds")]
    assert main(["prepare", "code", *args, "--split-column", "split"]) == 0
    capsys.readouterr()
    (summary,) = _inspect_json(capsys, tmp_path / "tfds" / "code")
    assert {s: v["num_records"] for s, v in summary["splits"].items()} == {
        "train": 4,
        "validation": 4,
    }
    assert "split" not in summary["tasks"]["code"]


def test_prepare_makes_a_patient_split_of_the_fractions_asked(capsys, tmp_path):
    assert main(["synth", "code", "--out", str(tmp_path / "src"), "--exams", "10"]) == 0
    args = ["--src", str(tmp_path / "src"), "--data-dir", str(tmp_path / "tfds")]
    assert main(["prepare", "code", *args, "--fractions", "train=0.5,validation=0.5"]) == 0
    capsys.readouterr()
    (summary,) = _inspect_json(capsys, tmp_path / "tfds" / "code")
    assert set(summary["splits"]) == {"train", "validation"}
    with pytest.raises(SystemExit):
        main(["prepare", "code", *args, "--fractions", "train:0.5"])


def test_prepare_refuses_an_option_the_dataset_does_not_take(capsys, tmp_path):
    assert main(["synth", "ptbxl", "--out", str(tmp_path / "src"), "--exams", "4"]) == 0
    args = ["--src", str(tmp_path / "src"), "--data-dir", str(tmp_path / "tfds")]
    assert main(["prepare", "ptbxl", *args, "--seed", "3"]) == 2
    assert "ptbxl takes no option(s) ['seed']" in capsys.readouterr().err


def test_pretrain_with_an_unknown_config_key_says_which_and_exits_2(capsys, tmp_path):
    config = pathlib.Path(__file__).parents[1] / "experiments" / "configs" / "smoke.py"
    args = ["pretrain", "--config", str(config), "--workdir", str(tmp_path / "w")]
    assert main([*args, "--config.train.stepz=3"]) == 2
    assert "train.stepz" in capsys.readouterr().err
    assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.slow
def test_pretrain_export_probe_and_finetune_from_the_command_line(capsys, tmp_path):
    config = pathlib.Path(__file__).parents[1] / "experiments" / "configs" / "smoke.py"
    run = tmp_path / "run"
    overrides = ["--config.train.steps=3", "--config.train.eval_every=0",
                 "--config.data.synthetic_exams=32"]  # fmt: skip
    assert main(["pretrain", "--config", str(config), "--workdir", str(run), *overrides]) == 0
    assert main(["export", "--workdir", str(run), "--out", str(tmp_path / "encoder")]) == 0
    assert main(["synth", "ptbxl", "--out", str(tmp_path / "ptbxl"), "--exams", "60"]) == 0
    common = ["--encoder", str(tmp_path / "encoder"), "--dataset", "ptbxl",
              "--data-root", str(tmp_path / "ptbxl"), "--fractions", "100", "--seeds", "0",
              "--bootstrap", "20"]  # fmt: skip
    capsys.readouterr()
    assert main(["probe", *common, "--out", str(tmp_path / "probe")]) == 0
    probe_table = capsys.readouterr().out
    assert "pretrained" in probe_table and "random_init" in probe_table
    assert main(["finetune", *common, "--steps", "4", "--out", str(tmp_path / "ft")]) == 0
    finetune_table = capsys.readouterr().out
    assert "finetune" in finetune_table and "scratch" in finetune_table
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    # The benchmark's 2.5 s windows, though the encoder was pretrained on 2.56 s crops.
    assert results["protocol"]["windowing"]["window_s"] == 2.5


def test_benchmark_refuses_unknown_tasks_and_missing_data_before_any_work(capsys, tmp_path):
    out = tmp_path / "out"
    common = ["benchmark", "--encoder", str(tmp_path / "enc"), "--out", str(out)]
    assert main([*common, "--ptbxl", str(tmp_path), "--tasks", "superdiag"]) == 2
    assert "unknown tasks ['superdiag']" in capsys.readouterr().err
    assert main([*common, "--modes", "probe"]) == 2
    assert "modes must be a non-empty subset" in capsys.readouterr().err
    assert main([*common, "--tasks", "code_test", "--code-test", str(tmp_path)]) == 2
    assert "--code-train" in capsys.readouterr().err and not out.exists()


def test_predict_refuses_a_missing_head_folder(capsys, tmp_path):
    argv = ["predict", "--encoder", str(tmp_path / "enc"), "--head", str(tmp_path / "head"),
            "--data", str(tmp_path), "--out", str(tmp_path / "p.csv")]  # fmt: skip
    assert main(argv) == 2
    assert "ecgfm predict:" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()


# --- Misuse: one line on stderr naming the problem, exit code 2, no traceback -----------------

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "experiments" / "configs" / "smoke.py")


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> list[str]:
    """Overrides that point the smoke config at 24 packed synthetic CODE exams (built once)."""
    root = tmp_path_factory.mktemp("packed")
    assert main(["synth", "code", "--out", str(root / "src"), "--exams", "24"]) == 0
    assert main(["prepare", "code", "--src", str(root / "src"), "--data-dir", str(root / "tfds"),
                 "--config", SMOKE]) == 0  # fmt: skip
    (build,) = (root / "tfds" / "code").iterdir()
    return [f"--config.data.path={root / 'tfds'}", f"--config.data.build={build.name}",
            "--config.train.eval_every=0", "--config.train.steps=3"]  # fmt: skip


@pytest.fixture(scope="module")
def diverged(packed, tmp_path_factory) -> tuple[pathlib.Path, int, str]:
    """A run whose first update overflows the weights: (workdir, exit code, stderr)."""
    workdir = tmp_path_factory.mktemp("diverged")
    nan = ["--config.optim.learning_rate=1e30", "--config.optim.schedule=constant"]
    code, err = _run(["pretrain", "--config", SMOKE, "--workdir", str(workdir), *packed, *nan])
    return workdir, code, err


def _run(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `ecgfm ARGV` run in this process."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse, and `ecgfm evaluate`'s own messages
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
                code = 1
            else:
                code = stop.code
    return code, err.getvalue()


def _assert_one_line_error(code: int, err: str, expected: str) -> None:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("ecgfm")]
    assert len(errors) == 1, err  # warnings and progress bars aside, one line says what failed
    assert code == 2, (code, err)
    assert expected in errors[0], errors[0]


def _damaged_encoder(folder: pathlib.Path) -> pathlib.Path:
    """An encoder folder whose spec says it was written by a future ecgfm (format_version 999)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"format_version": 999, "model": "ribeiro_resnet", "hparams": {},
            "preprocessing": {"sampling_rate": 400.0}}  # fmt: skip
    (folder / "ecgfm_encoder.json").write_text(json.dumps(spec))
    return folder


def _empty(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir()
    return folder


def _pretrain(tmp_path, packed, *overrides):
    return ["pretrain", "--config", SMOKE, "--workdir", str(tmp_path / "w"), *packed, *overrides]


MISUSE = {
    "zero batch": (lambda t, p: _pretrain(t, p, "--config.train.global_batch_size=0"),
                   "train: global_batch_size is 0, must be > 0"),
    "negative batch": (lambda t, p: _pretrain(t, p, "--config.train.global_batch_size=-4"),
                       "global_batch_size is -4, must be > 0"),
    "batch not divisible by the 8 devices": (
        lambda t, p: _pretrain(t, p, "--config.train.global_batch_size=12"),
        "global_batch_size 12 is not divisible by the 8 devices"),
    "batch larger than the dataset": (
        lambda t, p: _pretrain(t, p, "--config.train.global_batch_size=64"),
        "global_batch_size 64 is larger than the"),
    "negative steps": (lambda t, p: _pretrain(t, p, "--config.train.steps=-5"),
                       "steps is -5, must be > 0"),
    "negative learning rate": (lambda t, p: _pretrain(t, p, "--config.optim.learning_rate=-1"),
                               "learning_rate is -1.0, must be >= 0"),
    "checkpoint_every=0": (lambda t, p: _pretrain(t, p, "--config.train.checkpoint_every=0"),
                           "checkpoint_every is 0, must be > 0"),
    "empty dataset folder": (
        lambda t, p: _pretrain(t, [], f"--config.data.path={_empty(t / 'empty')}"),
        "no built dataset 'code' under"),
    "missing config file": (
        lambda t, p: ["pretrain", "--config", str(t / "nope.py"), "--workdir", str(t / "w")],
        "config file not found"),
    "unknown override key": (lambda t, p: _pretrain(t, p, "--config.train.stepz=3"),
                             "unknown config key 'train.stepz'"),
    "override without a value": (lambda t, p: _pretrain(t, p, "--config.train.steps"),
                                 "is not of the form key=value"),
    "override of the wrong type": (lambda t, p: _pretrain(t, p, "--config.train.steps=many"),
                                   "train.steps expects int, got 'many'"),
    "workdir is a file": (
        lambda t, p: ["pretrain", "--config", SMOKE, "--workdir", SMOKE, *p], "is a file"),
    "unknown argument": (lambda t, p: _pretrain(t, p, "--steps=3"),
                         "unrecognized arguments: --steps=3"),
    "synth --exams 0": (lambda t, p: ["synth", "code", "--out", str(t / "s"), "--exams", "0"],
                        "--exams: must be at least 1, got 0"),
    "export from a missing workdir": (
        lambda t, p: ["export", "--workdir", str(t / "none"), "--out", str(t / "e")],
        "is not the workdir of a training run"),
    "export of a damaged encoder folder": (
        lambda t, p: ["export", "--encoder", str(_damaged_encoder(t / "bad")),
                      "--out", str(t / "e")],
        "format_version 999 is not one this ecgfm reads (1)"),
    "inspect a damaged encoder folder": (
        lambda t, p: ["inspect", str(_damaged_encoder(t / "bad"))], "format_version 999"),
    "probe a damaged encoder folder": (
        lambda t, p: ["probe", "--encoder", str(_damaged_encoder(t / "bad")), "--dataset",
                      "ptbxl", "--data-root", str(t), "--out", str(t / "p")],
        "format_version 999"),
    "probe a missing encoder": (
        lambda t, p: ["probe", "--encoder", str(t / "none"), "--dataset", "ptbxl",
                      "--data-root", str(t), "--out", str(t / "p")],
        "no such folder"),
    "probe --fractions 0": (
        lambda t, p: ["probe", "--encoder", str(t), "--dataset", "ptbxl", "--data-root", str(t),
                      "--out", str(t / "p"), "--fractions", "0"],
        "label fractions are percent in (0, 100]"),
    "finetune --steps 0": (
        lambda t, p: ["finetune", "--encoder", str(t), "--dataset", "ptbxl", "--data-root",
                      str(t), "--out", str(t / "p"), "--steps", "0"],
        "--steps: must be at least 1"),
    "demo --steps -1": (lambda t, p: ["demo", "--steps", "-1", "--workdir", str(t / "d")],
                        "--steps: must be at least 1"),
    "prepare from an empty folder": (
        lambda t, p: ["prepare", "code", "--src", str(_empty(t / "e")),
                      "--data-dir", str(t / "tfds")],
        "exams.csv"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MISUSE))
def test_misuse_is_one_line_and_exit_code_2(case, packed, tmp_path):
    argv, expected = MISUSE[case]
    code, err = _run(argv(tmp_path, packed))
    _assert_one_line_error(code, err, expected)
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_a_diverging_run_is_one_line_naming_the_step_and_saves_nothing(diverged):
    workdir, code, err = diverged
    _assert_one_line_error(code, err, "at step 1; stopping without saving it")
    assert "No checkpoint was written yet" in err
    assert not [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]


def test_exporting_a_run_without_a_checkpoint_names_the_workdir(diverged, tmp_path):
    workdir = diverged[0]  # started (config.json written), diverged before any checkpoint
    code, err = _run(["export", "--workdir", str(workdir), "--out", str(tmp_path / "e")])
    _assert_one_line_error(code, err, f"{workdir} holds no finished checkpoint")
    assert not (tmp_path / "e").exists()


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, tmp_path):
    import ecgfm.data.synthetic

    def broken(*args, **kwargs):
        raise KeyError("model")

    monkeypatch.setattr(ecgfm.data.synthetic, "write_dataset", broken)
    argv = ["synth", "code", "--out", str(tmp_path / "s")]
    code, err = _run(argv)
    assert code == 1 and "Traceback" not in err
    assert err.strip() == ("ecgfm synth: internal error KeyError: 'model' (rerun with --debug "
                           "for the traceback, and please report it)")  # fmt: skip
    with pytest.raises(KeyError, match="model"):
        main([*argv, "--debug"])


@pytest.mark.parametrize(
    "argv",
    [["synth", "code", "--out", "OUT", "--exams", "0"],
     ["pretrain", "--config", "MISSING.py", "--workdir", "OUT"],
     ["inspect", "BAD"]],
)  # fmt: skip
def test_misuse_from_a_shell_prints_exactly_one_line(argv, tmp_path):
    """The installed command, as a shell runs it: nothing on stderr but the one line."""
    bad = _damaged_encoder(tmp_path / "bad")
    argv = [str(bad) if a == "BAD" else str(tmp_path / a) if a.isupper() or a.endswith(".py")
            else a for a in argv]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "ecgfm.cli", *argv], capture_output=True,
                          text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"ecgfm {argv[0]}: ")
