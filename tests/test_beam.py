"""A build through Apache Beam (local multi-process runner) equals the single-process build."""

import json
import pathlib

import h5py
import numpy as np
import pytest

from ecgfm.cli import main
from ecgfm.data.code import CodeDataset
from ecgfm.data.record import EcgFormatError
from ecgfm.data.sources import INDEX_FILE, TfdsSource
from ecgfm.data.synthetic.code import write_code_dataset
from ecgfm.data.synthetic.ptbxl import write_ptbxl_dataset
from ecgfm.data.tfds_builders import prepare_dataset

# The `test` extra installs Beam, so CI runs these; an environment without it skips them.
pytest.importorskip("apache_beam", reason="Apache Beam is not installed: pip install '.[beam]'")

from ecgfm.data.tfds_builders.beam_build import pipeline_options


def spoil_exam(src, position):
    """NaN in one exam's tracing (a bad record); returns its exam id."""
    reader = CodeDataset(src)
    victim = int(reader.exam_ids[position])
    with h5py.File(reader.shard_paths[0], "r+") as f:
        row = int(np.flatnonzero(f["exam_id"][:] == victim)[0])
        f["tracings"][row] = np.nan
    return str(victim)


@pytest.fixture(scope="module")
def code_src(tmp_path_factory):
    """48 synthetic CODE exams of 20 patients, one of them unreadable."""
    root = tmp_path_factory.mktemp("code")
    src = write_code_dataset(root / "src", num_exams=48, num_patients=20, seed=7)
    return src, spoil_exam(src, 5)


def assert_same_build(single, beam, name):
    """Same metadata, files, index, and the same records in the same order, field by field."""
    assert beam["splits"].keys() == single["splits"].keys()
    for key in ("tasks", "preprocessing", "split_plan", "skipped_when_opening", "splits"):
        assert beam[key] == single[key], key
    single_dir, beam_dir = pathlib.Path(single["path"]), pathlib.Path(beam["path"])
    metadata = [json.loads((d / "metadata.json").read_text()) for d in (single_dir, beam_dir)]
    assert metadata[0] == metadata[1]
    # Nothing of the pipeline's own (e.g. its per-split summaries) is left in the build: the
    # same files, shards included. The shards are not compared byte for byte: each record is a
    # serialized tf.train.Example whose feature map protobuf writes in a per-process order, so
    # the same record can differ in bytes (same length, same multiset of bytes); the records
    # are compared decoded, field by field, below.
    names = [sorted(p.name for p in d.iterdir()) for d in (single_dir, beam_dir)]
    assert names[0] == names[1]
    for split in single["splits"]:
        index = INDEX_FILE.format(split=split)
        with np.load(single_dir / index) as a, np.load(beam_dir / index) as b:
            assert a.files == b.files
            for field in a.files:
                np.testing.assert_array_equal(a[field], b[field])
        sources = [TfdsSource(d.parents[2], name, split) for d in (single_dir, beam_dir)]
        assert sources[0].record_ids == sources[1].record_ids
        for i in range(len(sources[0])):
            # All stored fields: int16 counts bit-equal, scale, labels, masks, ids, age, sex.
            np.testing.assert_equal(sources[1].example(i), sources[0].example(i))


@pytest.mark.slow
def test_beam_build_of_code_equals_the_single_process_build_skipped_exam_included(
    code_src, tmp_path
):
    src, victim = code_src
    single = prepare_dataset("code", src, tmp_path / "single", on_error="skip")
    beam = prepare_dataset(
        "code", src, tmp_path / "beam", on_error="skip", beam_runner="direct", beam_workers=2
    )
    assert_same_build(single, beam, "code")
    (skipped,) = [s for split in beam["splits"].values() for s in split["skipped"]]
    assert victim in skipped["record"] + skipped["reason"] and "non-finite" in skipped["reason"]
    assert sum(s["num_records"] for s in beam["splits"].values()) == 47


@pytest.mark.slow
def test_beam_build_of_ptbxl_keeps_six_tasks_folds_and_the_shard_compression(tmp_path):
    src = write_ptbxl_dataset(tmp_path / "src", num_records=20, seed=0, sampling_rates=(500,))
    single = prepare_dataset("ptbxl", src, tmp_path / "single", compression="zstd")
    # Beam's threads in one process: the CODE tests run its processes; this one checks the
    # PTB-XL builder through the same pipeline without another ~30 s of worker start-up.
    beam = prepare_dataset(
        "ptbxl", src, tmp_path / "beam", compression="zstd", beam_workers=2,
        beam_options="--direct_running_mode=multi_threading",
    )  # fmt: skip
    assert_same_build(single, beam, "ptbxl")
    assert len(beam["tasks"]) == 6 and "compression zstd" in beam["storage"]


@pytest.mark.slow
def test_a_bad_exam_stops_a_beam_build_as_it_stops_a_single_process_one(code_src, tmp_path):
    src, victim = code_src
    with pytest.raises(EcgFormatError, match=f"exam {victim} .*non-finite"):
        prepare_dataset("code", src, tmp_path / "beam", beam_workers=2)
    # Atomic: no dataset and no half-written folder is left behind.
    assert not list((tmp_path / "beam").rglob("dataset_info.json"))
    assert not list((tmp_path / "beam").rglob("incomplete*"))


def test_pipeline_options_for_local_processes_and_clusters():
    runner, options = pipeline_options("direct", workers=2)
    assert runner == "DirectRunner"
    set_ = options.get_all_options(drop_default=True)
    assert set_["direct_num_workers"] == 2 and set_["direct_running_mode"] == "multi_processing"
    # Workers alone mean the local runner.
    assert pipeline_options(workers=3)[0] == "DirectRunner"
    runner, options = pipeline_options(
        options="--runner=FlinkRunner --flink_master=host:8081 --parallelism=64"
    )
    set_ = options.get_all_options(drop_default=True)
    assert runner is None and set_["runner"] == "FlinkRunner" and set_["parallelism"] == 64
    with pytest.raises(ValueError, match="parallelism"):
        pipeline_options("FlinkRunner", workers=8)
    with pytest.raises(ValueError, match="at least 1"):
        pipeline_options("direct", workers=0)


def test_prepare_cli_passes_the_beam_arguments(monkeypatch, tmp_path):
    import ecgfm.data.tfds_builders as builders

    called = {}

    def fake_prepare(*args, **kwargs):
        called.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(builders, "prepare_dataset", fake_prepare)
    args = ["prepare", "code", "--src", str(tmp_path), "--data-dir", str(tmp_path / "d")]
    with pytest.raises(SystemExit):
        main([*args, "--beam-runner", "DirectRunner", "--beam-workers", "2"])
    assert called["beam_runner"] == "DirectRunner" and called["beam_workers"] == 2
    with pytest.raises(SystemExit):
        main([*args, "--beam-options=--runner=SparkRunner --spark_master_url=spark://h:7077"])
    assert called["beam_options"].startswith("--runner=SparkRunner")


def test_prepare_cli_refuses_workers_for_a_cluster_runner(capsys, tmp_path):
    args = ["prepare", "code", "--src", str(tmp_path), "--data-dir", str(tmp_path / "d")]
    assert main([*args, "--beam-runner", "DataflowRunner", "--beam-workers", "4"]) == 2
    assert "max_num_workers" in capsys.readouterr().err


def test_a_split_every_worker_skipped_is_named_as_in_a_single_process_build(tmp_path):
    from ecgfm.data.tfds_builders import _beam_worker_error

    # What Beam raises when TFDS's writer finds a split without examples.
    beam_error = RuntimeError(
        "Traceback ...\nValueError: The total number of generated examples is 0 for split "
        "test. This should be >0! [while running 'test_write/CheckValidNumExamples']"
    )
    error = _beam_worker_error(beam_error, tmp_path)
    assert isinstance(error, EcgFormatError) and error.path == str(tmp_path)
    assert "split 'test' has no readable record" in error.problem
    assert _beam_worker_error(RuntimeError("something else"), tmp_path) is None
