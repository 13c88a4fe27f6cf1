"""`ecgfm benchmark`: cells on disk, resuming, the leaderboard, and `ecgfm predict`."""

import csv
import json

import numpy as np
import pytest

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.transfer import benchmark, leaderboard
from ecgfm.transfer.study import MethodOutput, run_study, study_results
from ecgfm.transfer.tasks import TaskData, ptbxl_task


def _task(seed=0) -> TaskData:
    rng = np.random.default_rng(seed)
    labels = {s: rng.random((n, 3)) < 0.4 for s, n in (("train", 200), ("validation", 80),
                                                        ("test", 80))}  # fmt: skip
    return TaskData(
        spec=ptbxl_task("superdiagnostic"),
        dataset_id="toy",
        class_names=("a", "b", "c"),
        record_ids={s: [f"{s}{i}" for i in range(len(v))] for s, v in labels.items()},
        labels=labels,
        dropped={s: 0 for s in labels},
        read=lambda record_id: None,
    )


class _Noisy:
    """Scores = labels + noise; counts its fits."""

    def __init__(self, task, noise):
        self.task, self.noise, self.fits = task, noise, 0

    def fit_predict(self, train_index, seed):
        self.fits += 1
        rng = np.random.default_rng([seed, len(train_index)])
        val, test = (self.task.labels[s] + self.noise * rng.normal(size=self.task.labels[s].shape)
                     for s in ("validation", "test"))  # fmt: skip
        return MethodOutput(val, test, {"validation_macro_auroc": 0.5}, model="fitted")


def _study(tmp_path, task, methods, lines, fractions=(0.1, 1.0), seeds=(0, 1), kept=None):
    progress = benchmark.Progress(6, tmp_path, lines.append)
    cached = {
        name: benchmark.CachedMethod(
            tmp_path / name, lambda m=m: m, progress, name, num_train=200, first_seed=seeds[0],
            keep=kept.append if kept is not None and name == "pretrained" else None,
        )
        for name, m in methods.items()
    }  # fmt: skip
    return run_study(task, cached, fractions=fractions, seeds=seeds, reference="pretrained",
                     num_bootstrap=50)  # fmt: skip


def test_cells_are_fitted_once_and_loaded_when_the_study_runs_again(tmp_path):
    task = _task()
    good, bad = _Noisy(task, 0.3), _Noisy(task, 3.0)
    lines, kept = [], []
    first, _ = _study(tmp_path, task, {"pretrained": good, "random_init": bad}, lines, kept=kept)
    assert (good.fits, bad.fits) == (3, 3)  # two seeds at 10 %, one fit at 100 %
    assert [out.model for out in kept] == ["fitted"]  # the 100 % fit, to keep for predict
    assert sum("fitted in" in line for line in lines) == 6
    # A killed run continues: one cell lost, only it is fitted again; the rest are read back.
    next(iter((tmp_path / "random_init").glob("*.npz"))).unlink()
    lines.clear()
    again, _ = _study(tmp_path, task, {"pretrained": good, "random_init": bad}, lines, kept=kept)
    assert (good.fits, bad.fits) == (3, 4)
    assert sum("loaded" in line for line in lines) == 5 and len(kept) == 1
    assert [r["test"]["macro_auroc"] for r in again["runs"]] == [
        r["test"]["macro_auroc"] for r in first["runs"]
    ]
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["cells_done"] == 6 and progress["cells_loaded"] == 5


def test_changed_settings_start_the_studys_cells_again(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "1-0-abc.npz").write_bytes(b"x")
    benchmark._check_fingerprint(tmp_path, {"encoder_hash": "a"})
    assert (tmp_path / "m" / "1-0-abc.npz").exists()
    benchmark._check_fingerprint(tmp_path, {"encoder_hash": "a"})
    assert (tmp_path / "m" / "1-0-abc.npz").exists()
    benchmark._check_fingerprint(tmp_path, {"encoder_hash": "b"})
    assert not (tmp_path / "m" / "1-0-abc.npz").exists()


def _results(tmp_path, task, mode="linear"):
    good, bad = _Noisy(task, 0.3), _Noisy(task, 3.0)
    study, _ = _study(tmp_path / mode, task, {"pretrained": good, "random_init": bad}, [])
    return study_results(
        study, checkpoint={"path": "enc", "hash": "f" * 64}, baselines={"random_init": {}},
        method_name="probe", method_settings={}, preprocessing=Preprocessing(100),
        extra={"benchmark": {"task": "superdiagnostic", "mode": mode, "encoder": "enc"}},
    )  # fmt: skip


def test_leaderboard_rows_carry_cis_paired_differences_and_provenance(tmp_path):
    task = _task()
    board = leaderboard.build([_results(tmp_path, task), _results(tmp_path, task, "attention")])
    rows = {(r["mode"], r["method"], r["fraction"]): r for r in board["rows"]}
    assert len(rows) == 8
    full = rows[("linear", "pretrained", 1.0)]
    assert full["macro_auroc_ci_low"] <= full["macro_auroc"] <= full["macro_auroc_ci_high"]
    assert (
        full["delta_auroc"] > 0 and full["delta_ci_low"] > 0 and full["baseline"] == "random_init"
    )
    assert rows[("linear", "pretrained", 0.1)]["num_seeds"] == 2
    assert rows[("linear", "random_init", 1.0)]["delta_auroc"] is None
    assert json.loads(full["preprocessing"])["sampling_rate"] == 100.0
    assert "ecgfm" in json.loads(full["versions"]) and "windowing" in json.loads(full["protocol"])
    (literature,) = board["literature"]
    assert literature["macro_auroc"] == 0.928 and not literature["measured"]
    assert "Strodthoff" in literature["source"] and "not measured" in literature["source"]
    files = leaderboard.write(board, tmp_path)
    text = files["markdown"].read_text()
    assert "(literature, not measured)" in text and "Δ test macro AUROC" in text
    with files["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 9 and table[-1]["measured"] == "False"
    for name in ("plot", "label_fractions", "differences"):
        assert files[name].stat().st_size > 0


def test_benchmark_config_refuses_unknown_tasks_and_modes():
    with pytest.raises(ValueError, match="unknown tasks"):
        benchmark.BenchmarkConfig(tasks=("superdiag",))
    with pytest.raises(ValueError, match="modes"):
        benchmark.BenchmarkConfig(modes=("probe",))
    with pytest.raises(ValueError, match="need data"):
        benchmark.run_benchmark([], benchmark.DataRoots(), "/tmp/unused",
                                benchmark.BenchmarkConfig(tasks=("cpsc2018",)))  # fmt: skip


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A tiny exported encoder (2 pretraining steps, 100 Hz) and tiny datasets in real layouts."""
    from ecgfm.config import load_config
    from ecgfm.data.code_test import write_code_test_set
    from ecgfm.data.synthetic import write_dataset
    from ecgfm.export import export_encoder
    from ecgfm.train import train_and_evaluate

    root = tmp_path_factory.mktemp("suite")
    config = load_config(
        "experiments/configs/smoke.py",
        [
            "train.steps=2", "train.eval_every=0", "train.checkpoint_every=2",
            "train.global_batch_size=8", "train.async_checkpoint=false",
            "data.synthetic_exams=16", "data.preprocessing.sampling_rate=100.0",
            "data.preprocessing.num_samples=400", "model.hparams.input_length=400",
            "model.hparams.widths=(4, 8)",
        ],
    )  # fmt: skip
    train_and_evaluate(config, root / "run")
    write_dataset("code", root / "code", num_records=80, seed=3)
    write_code_test_set(root / "code_test", num_exams=40, seed=4)
    return {"encoder": export_encoder(root / "run", root / "encoder"), "root": root}


@pytest.mark.slow
def test_benchmark_end_to_end_resumes_and_its_models_predict(suite, tmp_path, capsys):
    from ecgfm.cli import main

    root, out = suite["root"], tmp_path / "out"
    argv = [
        "benchmark", "--encoder", str(suite["encoder"]), "--code-test", str(root / "code_test"),
        "--code-train", str(root / "code"), "--out", str(out), "--fractions", "50,100",
        "--seeds", "0", "--steps", "2", "--bootstrap", "20",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "1 task(s) × 3 mode(s) = 12 cells" in printed and printed.count("fitted in") == 12
    board = json.loads((out / "leaderboard.json").read_text())
    assert {(r["task"], r["mode"]) for r in board["rows"]} == {
        ("code_test", m) for m in benchmark.MODES
    }
    assert {r["method"] for r in board["rows"]} == {"pretrained", "random_init", "finetune",
                                                    "scratch"}  # fmt: skip
    code_test = json.loads((out / "code_test.json").read_text())
    assert {r["kind"] for r in code_test[0]["rows"]} == {"model", "annotator", "literature"}
    assert code_test[0]["protocol"]["evaluation"]["threshold_rule"] == "f1"
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.png", "code_test.md"):
        assert (out / name).stat().st_size > 0
    # Resuming: every cell is read back, nothing is fitted again.
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("loaded") == 12 and "fitted in" not in printed
    # The kept linear model predicts the test exams exactly as the study scored them.
    models = out / "models" / suite["encoder"].name / "code_test"
    predictions = np.load(out / "studies" / suite["encoder"].name / "code_test" / "linear"
                          / "predictions.npz")  # fmt: skip
    csv_path = tmp_path / "predictions.csv"
    assert main(["predict", "--encoder", str(suite["encoder"]), "--head",
                 str(models / "linear" / "head"), "--data", str(root / "code_test"),
                 "--out", str(csv_path)]) == 0  # fmt: skip
    with csv_path.open() as f:
        rows = {row["exam_id"]: row for row in csv.DictReader(f)}
    sidecar = json.loads((tmp_path / "predictions.csv.json").read_text())
    names = sidecar["model_card"]["label_names"]
    assert names == ["1dAVb", "RBBB", "LBBB", "SB", "AF", "ST"] and len(rows) == 40
    assert sidecar["model_card"]["encoder"]["hash"] == board["rows"][0]["encoder_hash"]
    assert list(next(iter(rows.values())))[1:] == names
    test_ids = [r.removeprefix("test:") for r in predictions["test_record_ids"]]
    got = np.array([[float(rows[r][n]) for n in names] for r in test_ids])
    np.testing.assert_allclose(got, predictions["pretrained/1/0"], atol=2e-5)
    # A fine-tuned head needs its own encoder: the pretrained one is refused.
    assert main(["predict", "--encoder", str(suite["encoder"]), "--head",
                 str(models / "finetune" / "head"), "--data", str(root / "code_test"),
                 "--out", str(csv_path)]) == 2  # fmt: skip
    assert "trained on encoder weights" in capsys.readouterr().err
    assert main(["predict", "--encoder", str(models / "finetune" / "encoder"), "--head",
                 str(models / "finetune" / "head"), "--data", str(root / "code_test"),
                 "--out", str(csv_path)]) == 0  # fmt: skip


@pytest.mark.slow
def test_an_imported_encoder_is_benchmarked_beside_ecgfms_in_one_table(suite, tmp_path, capsys):
    """A published encoder (ECG-FM's architecture, built by its original code) and ecgfm's own
    go through the same protocol into one leaderboard."""
    import pathlib
    import sys

    torch = pytest.importorskip("torch")
    from ecgfm.cli import main
    from ecgfm.interop import import_checkpoint

    sys.path.insert(
        0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "originals")
    )
    import fairseq_signals_w2v as fairseq

    cfg = fairseq.Wav2Vec2CMSCConfig(
        encoder_layers=1, encoder_embed_dim=16, encoder_ffn_embed_dim=16,
        encoder_attention_heads=2, conv_feature_layers="[(8, 2, 2)] * 4", conv_pos=8,
        conv_pos_groups=2, final_dim=8, latent_vars=4, quantize_targets=True,
    )  # fmt: skip
    torch.manual_seed(0)
    fairseq.save_like_fairseq_signals(
        fairseq.Wav2Vec2CMSCModel(cfg).eval(), tmp_path / "ecg_fm.pt",
        fairseq.to_fairseq_dict(cfg, "wav2vec2_cmsc"),
    )  # fmt: skip
    imported = import_checkpoint("ecg_fm", tmp_path / "ecg_fm.pt", tmp_path / "ecg_fm")
    root, out = suite["root"], tmp_path / "out"
    assert main([
        "benchmark", "--encoder", str(suite["encoder"]), "--encoder", str(imported),
        "--code-test", str(root / "code_test"), "--code-train", str(root / "code"),
        "--out", str(out), "--modes", "linear", "--fractions", "100", "--seeds", "0",
        "--bootstrap", "20",
    ]) == 0  # fmt: skip
    board = json.loads((out / "leaderboard.json").read_text())
    pretrained = {r["encoder"]: r for r in board["rows"] if r["method"] == "pretrained"}
    assert set(pretrained) == {suite["encoder"].name, "ecg_fm"}
    assert pretrained["ecg_fm"]["encoder_hash"] != pretrained[suite["encoder"].name]["encoder_hash"]
    table = (out / "leaderboard.md").read_text()
    assert "ecg_fm" in table and suite["encoder"].name in table
