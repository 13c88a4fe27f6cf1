"""The `ecgfm` command a researcher types: inspect, synth, plot, evaluate."""

import json
import pathlib

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
