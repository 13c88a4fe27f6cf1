"""The frozen-encoder probe: fitting, λ chosen on validation, embedding cache, end to end."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.record import EcgRecord
from ecgfm.data.synthetic.ptbxl import write_ptbxl_dataset
from ecgfm.encoder import Encoder, hash_module
from ecgfm.metrics import macro_auroc
from ecgfm.models import EncoderOutput
from ecgfm.transfer import embed, protocol
from ecgfm.transfer.probe import (
    ProbeMethod,
    WindowSet,
    fit_linear_probe,
    fit_probe_path,
    run_probe,
)


def _linear_task(n, rng, d=32, k=3):
    """Embeddings with a linear signal: class j is positive when x·v_j + noise > threshold."""
    x = rng.normal(size=(n, d)) * 3 + 5  # unstandardised on purpose
    directions = np.random.default_rng(123).normal(size=(d, k))
    logits = (x - 5) @ directions / np.sqrt(d) + 0.3 * rng.normal(size=(n, k))
    return x, logits > np.array([0.0, 0.5, -0.5])


def test_probe_learns_a_linear_signal():
    rng = np.random.default_rng(0)
    x_train, y_train = _linear_task(400, rng)
    x_test, y_test = _linear_task(300, rng)
    probe = fit_linear_probe(x_train, y_train, l2=1e-3)
    assert macro_auroc(y_test, probe.logits(x_test)) > 0.9
    # A probe on pure noise features stays near chance: the score comes from the signal.
    noise = fit_linear_probe(rng.normal(size=(400, 32)), y_train, l2=1e-3)
    assert macro_auroc(y_test, noise.logits(rng.normal(size=(300, 32)))) < 0.65


def _one_window_each(x_ND):
    return WindowSet(x_ND, np.arange(len(x_ND)), len(x_ND))


def test_l2_is_chosen_on_the_validation_fold():
    # x2 = x1 + 0.3 z and y = [z > 0]: unregularised, the probe ranks by x2 − x1 (∝ z); heavily
    # regularised its weights follow the marginal correlations, which rank by x2 alone.
    rng = np.random.default_rng(1)

    def draw(n, labels_from_x2=False):
        x1, z = rng.normal(size=n), rng.normal(size=n)
        x2 = x1 + 0.3 * z
        y = (x2 > 0) if labels_from_x2 else (z + 0.1 * rng.normal(size=n) > 0)
        return np.stack([x1, x2], axis=1), y[:, None]

    x_train, y_train = draw(2000)
    x_val_z, y_val_z = draw(500)
    x_val_x2, y_val_x2 = draw(500, labels_from_x2=True)

    def chosen_l2(x_val, y_val):
        method = ProbeMethod(
            train=_one_window_each(x_train),
            validation=_one_window_each(x_val),
            test=_one_window_each(x_val),
            train_labels_NK=y_train,
            validation_labels_NK=y_val,
            aggregation="max",
            l2_grid=(1e-4, 10.0),
        )
        return method.fit_predict(np.arange(2000), seed=0).info["l2"]

    assert chosen_l2(x_val_z, y_val_z) == 1e-4
    assert chosen_l2(x_val_x2, y_val_x2) == 10.0


class _MeanStd(nnx.Module):
    """An "encoder" whose embedding is each lead's mean and std over the window (+ offset)."""

    def __init__(self, offset):
        self.offset = nnx.Param(np.float32(offset))
        self.embedding_dim = 24

    def __call__(self, x, *, train, rngs=None):
        embedding = jnp.concatenate([x.mean(axis=1), x.std(axis=1)], axis=1) + self.offset[...]
        return EncoderOutput(x, embedding)


def _fake_encoder(preprocessing, offset=0.0):
    """An `Encoder` around `_MeanStd`; another offset is other weights (another hash)."""
    spec = {"model": "fake", "hparams": {}, "preprocessing": preprocessing.to_dict()}
    return Encoder(_MeanStd(offset), spec, source="fake")


class _Reader:
    def __init__(self):
        self.reads = []

    def __call__(self, record_id):
        self.reads.append(record_id)
        rng = np.random.default_rng(int(record_id))
        return EcgRecord(rng.normal(size=(1000, 12)).astype(np.float32), 100.0, record_id, "t")


def test_embedding_cache_hits_and_misses_by_checkpoint_and_preprocessing(tmp_path):
    spec = Preprocessing(sampling_rate=100)
    ids = [str(i) for i in range(6)]
    kwargs = dict(dataset_id="toy", windowing=protocol.BENCHMARK_WINDOWING, train=False,
                  cache_dir=tmp_path)  # fmt: skip
    reader = _Reader()
    first = embed.embed_records({"e": _fake_encoder(spec)}, reader, ids[:4], **kwargs)["e"]
    assert (first.num_cached, first.num_computed) == (0, 4)
    assert first.embeddings_WD.shape == (4 * 7, 24)  # 7 windows of 2.5 s every 1.25 s
    again = embed.embed_records({"e": _fake_encoder(spec)}, reader, ids, **kwargs)["e"]
    assert (again.num_cached, again.num_computed) == (4, 2)
    assert reader.reads == ids  # cached records are not read again
    np.testing.assert_array_equal(again.embeddings_WD[: 4 * 7], first.embeddings_WD)
    other_spec = Preprocessing(sampling_rate=100, normalization="per_lead_standardize")
    for encoder in (_fake_encoder(other_spec), _fake_encoder(spec, offset=1.0)):
        miss = embed.embed_records({"e": encoder}, reader, ids, **kwargs)["e"]
        assert (miss.num_cached, miss.num_computed) == (0, 6)
        assert miss.cache_file != again.cache_file
    key_file = json.loads(
        (tmp_path / again.cache_file.rsplit("/", 1)[1].replace(".npz", ".json")).read_text()
    )
    assert key_file["checkpoint_hash"] == _fake_encoder(spec).checkpoint_hash
    assert key_file["window_samples"] == 250


def test_module_hash_identifies_the_weights():
    a = hash_module(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    assert a == hash_module(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    assert a != hash_module(nnx.Linear(3, 2, rngs=nnx.Rngs(1)))


def test_an_encoder_pretrained_on_another_length_embeds_the_benchmarks_windows():
    # The spec's 400 samples are the pretraining length; windows of 2.5 s are cut from the
    # whole preprocessed record instead of refusing them (every encoder embeds any length).
    spec = Preprocessing(sampling_rate=100, num_samples=400, normalization="per_lead_standardize")
    signal = np.random.default_rng(0).normal(size=(1000, 12))
    windows = protocol.record_windows(signal, 100.0, spec, (250, 125))
    assert windows.shape == (7, 250, 12)
    whole = spec.__class__(**{**spec.to_dict(), "num_samples": None})(signal, 100.0)
    np.testing.assert_array_equal(windows[2], whole[250:500])


def test_the_path_solver_matches_each_lambda_fitted_alone_and_converges():
    rng = np.random.default_rng(4)
    x, y = _linear_task(600, rng)
    path = fit_probe_path(x, y, (1e-3, 1e-1, 1.0), tol=1e-5, max_iter=2000)
    for probe in path:
        alone = fit_linear_probe(x, y, probe.l2, tol=1e-5, max_iter=2000)
        np.testing.assert_allclose(probe.weight_DK, alone.weight_DK, atol=2e-3)
        assert probe.iterations < 2000
    # The optimum: the gradient of the penalised mean loss vanishes (bias unpenalised).
    probe = path[0]
    z = ((x - probe.mean_D) / probe.scale_D) @ probe.weight_DK + probe.bias_K
    residual = 1 / (1 + np.exp(-z)) - y
    grad_w = ((x - probe.mean_D) / probe.scale_D).T @ residual / len(x) + 1e-3 * probe.weight_DK
    assert np.abs(grad_w).max() < 1e-4 and np.abs(residual.mean(axis=0)).max() < 1e-4


@pytest.fixture(scope="module")
def synthetic_ptbxl(tmp_path_factory):
    return write_ptbxl_dataset(
        tmp_path_factory.mktemp("ptbxl"), num_records=60, seed=3, sampling_rates=(100,)
    )


def test_records_without_a_task_label_are_dropped_and_counted(synthetic_ptbxl, tmp_path):
    # Every fifth record keeps only its rhythm code, so it has no superdiagnostic label.
    root = tmp_path / "ptbxl"
    shutil.copytree(synthetic_ptbxl, root)
    database = pd.read_csv(root / "ptbxl_database.csv")
    rhythm_only = database["ecg_id"] % 5 == 0
    database.loc[rhythm_only, "scp_codes"] = "{'SR': 0.0}"
    database.to_csv(root / "ptbxl_database.csv", index=False)
    task = protocol.load_task(protocol.ptbxl_task("superdiagnostic"), root)
    folds = database.set_index("ecg_id")["strat_fold"]
    for split, fold_set in (("train", range(1, 9)), ("validation", [9]), ("test", [10])):
        in_split = folds[folds.isin(fold_set)].index
        assert task.dropped[split] == sum(i % 5 == 0 for i in in_split)
        assert task.record_ids[split] == [str(i) for i in in_split if i % 5]
        assert task.labels[split].any(axis=1).all()
    assert sum(task.dropped.values()) == rhythm_only.sum()
    assert task.summary()["dropped_without_label"] == task.dropped


@pytest.mark.slow
def test_probe_end_to_end_on_synthetic_ptbxl(synthetic_ptbxl, tmp_path):
    spec = Preprocessing(sampling_rate=100, num_samples=250, normalization="per_lead_standardize")
    config = {"widths": (8, 16), "kernel_size": 7, "input_length": 250, "dropout": 0.0}
    encoder = Encoder.random_init("ribeiro_resnet", config, spec, seed=1)
    results = run_probe(
        encoder,
        protocol.ptbxl_task("superdiagnostic", 100),
        synthetic_ptbxl,
        tmp_path / "out",
        label_fractions=(0.5, 1.0),
        seeds=(0, 1),
        num_bootstrap=20,
        l2_grid=(1e-2, 1.0),
    )
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    for stored in (results, written):
        assert stored["checkpoint"]["hash"] == encoder.checkpoint_hash
        assert stored["preprocessing"] == spec.to_dict()
        assert stored["protocol"]["task"] == "superdiagnostic"
        assert stored["protocol"]["windowing"]["aggregation"] == "max"
        assert stored["protocol"]["seeds"] == [0, 1]
        assert {"ecgfm", "jax", "flax"} <= set(stored["versions"])
    assert results["baselines"]["random_init"]["path"] == "random init (seed 0)"
    assert {r["method"] for r in results["runs"]} == {"pretrained", "random_init"}
    assert len(results["runs"]) == 2 * 3  # two seeds at 50 %, one fit at 100 %
    assert {c["b"] for c in results["comparisons"]} == {"random_init"}
    for name in ("results.csv", "results.md", "roc.png", "label_fractions.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    # A second run reads every embedding from the cache.
    again = run_probe(encoder, protocol.ptbxl_task("superdiagnostic", 100), synthetic_ptbxl,
                      tmp_path / "out", label_fractions=(1.0,), seeds=(0,), num_bootstrap=0,
                      baseline=None, l2_grid=(1.0,))  # fmt: skip
    assert all(s["computed"] == 0 for s in again["embedding_cache"]["pretrained"].values())


def test_mean_aggregation_averages_the_window_probabilities():
    # Two windows per record: the record's score is the mean of sigmoid(window logits), as the
    # benchmark averages sigmoid outputs (not the logits).
    rng = np.random.default_rng(2)
    x_train, y_train = _linear_task(400, rng)
    x_test, _ = _linear_task(60, rng)
    owner = np.repeat(np.arange(200), 2)
    windows = WindowSet(x_train, owner, 200)
    test = WindowSet(x_test, np.repeat(np.arange(30), 2), 30)
    labels = y_train[::2]
    method = ProbeMethod(windows, windows, test, labels, labels, "mean", l2_grid=(1e-2,))
    out = method.fit_predict(np.arange(200), seed=0)
    probe = fit_linear_probe(x_train, labels[owner], 1e-2, weights_N=np.full(400, 0.5))
    window_probability = 1 / (1 + np.exp(-probe.logits(x_test)))
    record_probability = window_probability.reshape(30, 2, -1).mean(axis=1)
    np.testing.assert_allclose(1 / (1 + np.exp(-out.test_scores_NK)), record_probability, rtol=1e-6)


def test_finding_the_records_to_embed_builds_no_set_per_record(tmp_path, monkeypatch):
    # 17k PTB-XL records on a cold cache took ~13 s when each record rebuilt the missing set.
    built = []

    def counting_set(*args):
        built.append(1)
        return set(*args)

    monkeypatch.setattr(embed, "set", counting_set, raising=False)
    spec = Preprocessing(sampling_rate=100)
    ids = [str(i) for i in range(300)]
    out = embed.embed_records(
        {"a": _fake_encoder(spec), "b": _fake_encoder(spec, 1.0)}, _Reader(), ids,
        dataset_id="toy", windowing=protocol.WHOLE_RECORD, train=False, chunk_records=100,
    )  # fmt: skip
    assert out["a"].num_computed == out["b"].num_computed == 300
    assert len(built) <= 4  # per encoder, not per record


def test_concurrent_runs_filling_one_cache_do_not_collide(tmp_path, monkeypatch):
    # Another run saves the same cache file while this one is between writing and renaming.
    spec = Preprocessing(sampling_rate=100)
    kwargs = dict(dataset_id="toy", windowing=protocol.WHOLE_RECORD, train=False,
                  cache_dir=tmp_path)  # fmt: skip
    real_savez, interleaved = np.savez, []

    def savez_then_the_other_run(file, **arrays):
        real_savez(file, **arrays)
        if not interleaved:
            interleaved.append(True)
            embed.embed_records({"e": _fake_encoder(spec)}, _Reader(), ["7", "8"], **kwargs)

    monkeypatch.setattr(np, "savez", savez_then_the_other_run)
    first = embed.embed_records({"e": _fake_encoder(spec)}, _Reader(), ["1", "2", "3"], **kwargs)
    monkeypatch.undo()
    assert interleaved
    # The last rename wins and is a whole file; nothing temporary is left behind.
    with np.load(first["e"].cache_file) as saved:
        assert sorted(saved["record_ids"].tolist()) == ["1", "2", "3"]
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npz"]
