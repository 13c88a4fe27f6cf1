"""TFDS builders: array_record builds from synthetic and real folders read back as readers do."""

import pickle
import shutil

import h5py
import numpy as np
import pytest

from ecgfm.data.challenge import ChallengeDataset, snomed_to_cpsc
from ecgfm.data.code import CodeDataset
from ecgfm.data.cpsc2018 import CPSC_CLASSES, Cpsc2018
from ecgfm.data.pipeline import make_eval_iterator, make_train_iterator
from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.ptbxl import TASKS, PtbXl
from ecgfm.data.record import EcgFormatError
from ecgfm.data.sources import TfdsSource, signal_mv
from ecgfm.data.splits import load_split_json
from ecgfm.data.synthetic.code import write_code_dataset
from ecgfm.data.synthetic.cpsc2018 import write_cpsc2018_dataset
from ecgfm.data.synthetic.ptbxl import write_ptbxl_dataset
from ecgfm.data.tfds_builders import describe_built_dataset, prepare_dataset
from ecgfm.data.tfds_builders.base import quantize, round_trip_tolerance


def read_split(data_dir, name, split, **kwargs):
    """The split's source and its elements, signals decoded to values (counts · scale)."""
    source = TfdsSource(data_dir, name, split, **kwargs)
    return source, [decoded(source[i]) for i in range(len(source))]


def decoded(element):
    return {**element, "signal": signal_mv(element)}


@pytest.fixture(scope="module")
def code_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("code")
    src = write_code_dataset(root / "src", num_exams=30, num_patients=12, seed=1)
    summary = prepare_dataset("code", src, root / "data")
    return src, root / "data", summary


def test_whole_microvolt_signals_are_stored_exactly_others_within_the_bound():
    microvolts = np.array([[0.001, -1.234], [2.5, 0.0]], np.float32)
    counts, scale = quantize(microvolts)
    assert scale == 1e-3 and counts.dtype == np.int16
    np.testing.assert_array_equal(counts, [[1, -1234], [2500, 0]])
    smooth = np.sin(np.linspace(0, 20, 500))[:, None] * 3.7
    counts, scale = quantize(smooth)
    assert np.abs(counts * scale - smooth).max() <= 3.7 / 65534 * 1.001


def test_code_build_round_trips_every_exam_of_the_reader(code_build):
    src, data_dir, summary = code_build
    reader = CodeDataset(src)
    assert summary["tasks"]["code"] == list(reader.label_names)
    seen = []
    for split in summary["splits"]:
        source, elements = read_split(data_dir, "code", split)
        assert source.label_names == reader.label_names
        for element in elements:
            record = reader.read(int(element["record_id"]))
            assert element["signal"].shape == record.signal.shape  # real length, no padding
            tolerance = round_trip_tolerance(record.signal)
            np.testing.assert_allclose(element["signal"], record.signal, rtol=0, atol=tolerance)
            want = [name in record.labels for name in reader.label_names]
            np.testing.assert_array_equal(element["labels"], want)
            assert element["patient_id"] == record.patient_id
            seen.append(element["record_id"])
    assert sorted(seen) == sorted(str(e) for e in reader.exam_ids.tolist())


def test_code_patient_split_keeps_each_patient_on_one_side(code_build):
    _, data_dir, summary = code_build
    patients = {s: set(TfdsSource(data_dir, "code", s).patient_ids) for s in summary["splits"]}
    splits = list(patients)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not patients[a] & patients[b]
    assert summary["split_plan"].startswith("patient_split")


def test_describe_reports_counts_and_label_frequencies(code_build):
    src, data_dir, _ = code_build
    summary = describe_built_dataset(data_dir, "code")
    reader = CodeDataset(src)
    total = sum(s["num_records"] for s in summary["splits"].values())
    assert total == len(reader) == 30
    train = summary["splits"]["train"]
    elements = read_split(data_dir, "code", "train")[1]
    for k, name in enumerate(reader.label_names):
        count = sum(int(e["labels"][k]) for e in elements)
        assert train["label_counts"]["code"][name] == count
        assert train["label_frequency"]["code"][name] == pytest.approx(count / len(elements))
    # Built without a spec: recorded as the files' own rate, every lead, no filter, any length.
    assert summary["preprocessing"] == Preprocessing(sampling_rate=400.0).to_dict()


def test_built_dataset_feeds_the_train_and_eval_pipelines(code_build):
    _, data_dir, summary = code_build
    source = pickle.loads(pickle.dumps(TfdsSource(data_dir, "code", "train")))
    batch = next(make_train_iterator(source, global_batch_size=4, seed=0, window=1000))
    assert batch["signal"].shape == (4, 1000, 12) and batch["labels"].shape == (4, 6)
    n = summary["splits"]["validation"]["num_records"]
    masks = [b["mask"] for b in make_eval_iterator(
        TfdsSource(data_dir, "code", "validation"), global_batch_size=4, window=1000)]  # fmt: skip
    assert np.concatenate(masks).sum() == n


def test_preprocessing_spec_is_applied_and_recorded(tmp_path):
    src = write_code_dataset(tmp_path / "src", num_exams=6, seed=2)
    spec = Preprocessing(sampling_rate=200, normalization="per_lead_standardize")
    prepare_dataset("code", src, tmp_path / "data", preprocessing=spec, fractions={"train": 1.0})
    source, elements = read_split(tmp_path / "data", "code", "train")
    assert source.preprocessing == spec
    reader = CodeDataset(src)
    for element in elements:
        want = spec.apply(reader.read(int(element["record_id"])))
        np.testing.assert_allclose(element["signal"], want, atol=round_trip_tolerance(want))


def test_a_bad_exam_is_skipped_and_reported_by_id(tmp_path):
    src = write_code_dataset(tmp_path / "src", num_exams=8, seed=3)
    reader = CodeDataset(src)
    victim = int(reader.exam_ids[2])
    shard = reader.shard_paths[0]
    with h5py.File(shard, "r+") as f:
        row = int(np.flatnonzero(f["exam_id"][:] == victim)[0])
        f["tracings"][row] = np.nan
    with pytest.raises(EcgFormatError, match="non-finite"):
        prepare_dataset("code", src, tmp_path / "strict")
    summary = prepare_dataset(
        "code", src, tmp_path / "lenient", on_error="skip", fractions={"train": 1.0}
    )
    skipped = summary["splits"]["train"]["skipped"]
    assert len(skipped) == 1 and str(victim) in skipped[0]["record"] + skipped[0]["reason"]
    assert summary["splits"]["train"]["num_records"] == 7


def test_a_split_left_empty_by_skipped_records_is_named_not_a_tfds_traceback(tmp_path):
    # A partial download: REFERENCE.csv lists every record, but the test split's files are gone.
    src = write_cpsc2018_dataset(tmp_path / "src", num_records=12, seed=0)
    split_of = load_split_json()
    for mat in src.glob("A*.mat"):
        if split_of[mat.stem] == "test":
            mat.unlink()
    with pytest.raises(EcgFormatError, match="split 'test' has no readable record") as info:
        prepare_dataset("cpsc2018", src, tmp_path / "data", on_error="skip")
    assert info.value.path == str(src) and ".mat" in info.value.problem


def test_exams_the_reader_skips_while_opening_are_reported_too(tmp_path):
    src = write_code_dataset(tmp_path / "src", num_exams=8, seed=3)
    with open(src / "exams.csv") as f:
        first = f.readlines()[1]
    with open(src / "exams.csv", "a") as f:  # an exam listed in the CSV but in no shard
        f.write("999999999" + first[first.index(",") :])
    summary = prepare_dataset("code", src, tmp_path / "built", on_error="skip")
    (skipped,) = summary["skipped_when_opening"]
    assert "999999999" in skipped["record"] + skipped["reason"]
    assert sum(split["num_records"] for split in summary["splits"].values()) == 8


def test_code_build_with_skip_bad_lists_a_csv_row_that_is_not_utf8(tmp_path):
    src = write_code_dataset(tmp_path / "src", num_exams=8, seed=3)
    csv_path = src / "exams.csv"
    lines = csv_path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b",", b",\xe9", 1)
    csv_path.write_bytes(b"\n".join(lines))
    summary = prepare_dataset("code", src, tmp_path / "built", on_error="skip")
    assert summary["skipped_when_opening"][0] == {
        "record": str(csv_path),
        "reason": "line 4: not UTF-8 text",
    }
    assert sum(split["num_records"] for split in summary["splits"].values()) == 7


def test_rerun_after_an_interrupted_build_starts_again(tmp_path):
    src = write_code_dataset(tmp_path / "src", num_exams=6, seed=4)
    leftover = tmp_path / "data" / "code" / "default" / "incomplete.ABC_1.0.0"
    leftover.mkdir(parents=True)
    (leftover / "code-train.array_record-00000-of-00001").write_bytes(b"half written")
    summary = prepare_dataset("code", src, tmp_path / "data", fractions={"train": 1.0})
    assert not leftover.exists()
    assert summary["splits"]["train"]["num_records"] == 6
    again = prepare_dataset("code", src, tmp_path / "data", fractions={"train": 1.0})
    assert again["splits"] == summary["splits"]


def test_a_corrupt_shard_gives_a_clear_error(code_build, tmp_path):
    _, data_dir, _ = code_build
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    source = TfdsSource(copy, "code", "train")
    shard = next(source.dataset_dir.glob("code-train.array_record-*"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(Exception, match=r"(?i)array.?record|corrupt|read|shard|record"):
        TfdsSource(copy, "code", "train")[len(source) - 1]


def test_code_split_from_an_explicit_file(tmp_path):
    src = write_code_dataset(tmp_path / "src", num_exams=6, seed=5)
    exams = [str(e) for e in CodeDataset(src).exam_ids.tolist()]
    split_file = tmp_path / "split.csv"
    rows = [f"{e},{'validation' if i < 2 else 'train'}" for i, e in enumerate(exams)]
    split_file.write_text("exam_id,split\n" + "\n".join(rows) + "\n")
    summary = prepare_dataset("code", src, tmp_path / "data", split_file=split_file)
    assert set(TfdsSource(tmp_path / "data", "code", "validation").record_ids) == set(exams[:2])
    assert summary["splits"]["train"]["num_records"] == 4
    split_file.write_text("exam_id,split\n" + "\n".join(rows[:5]) + "\n")
    with pytest.raises(EcgFormatError, match="has no split for 1 exams") as info:
        prepare_dataset("code", src, tmp_path / "again", split_file=split_file)
    assert info.value.path == str(split_file)


def test_ptbxl_build_has_six_tasks_folds_and_patients(tmp_path):
    src = write_ptbxl_dataset(tmp_path / "src", num_records=20, seed=0, sampling_rates=(500,))
    summary = prepare_dataset("ptbxl", src, tmp_path / "data")
    reader = PtbXl(src)
    assert set(summary["tasks"]) == set(TASKS)
    fold_of = {"train": set(range(1, 9)), "validation": {9}, "test": {10}}
    total = 0
    for split in summary["splits"]:
        source = TfdsSource(tmp_path / "data", "ptbxl", split, task="diagnostic")
        for i in range(len(source)):
            example, element = source.example(i), decoded(source[i])
            record = reader.read(int(element["record_id"]))
            assert int(example["strat_fold"]) in fold_of[split]
            np.testing.assert_allclose(element["signal"], record.signal, atol=1e-6)
            labels = record.metadata["task_labels"]["diagnostic"]
            want = [name in labels for name in reader.vocabularies["diagnostic"]]
            np.testing.assert_array_equal(element["labels"], want)
            np.testing.assert_array_equal(element["label_mask"], float(bool(labels)))
            assert element["patient_id"] == record.patient_id
            total += 1
    assert total == len(reader)


def test_ptbxl_build_with_skip_bad_lists_a_bad_database_row_and_builds_the_rest(tmp_path):
    # `prepare ptbxl --skip-bad` used to exit on the first bad row.
    src = write_ptbxl_dataset(tmp_path / "src", num_records=12, seed=0, sampling_rates=(500,))
    database = src / "ptbxl_database.csv"
    lines = database.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b",", b",\xff", 1)  # ecg_id 2: not UTF-8
    database.write_bytes(b"\n".join(lines))
    with pytest.raises(EcgFormatError, match="line 3: not UTF-8 text"):
        prepare_dataset("ptbxl", src, tmp_path / "strict")
    summary = prepare_dataset("ptbxl", src, tmp_path / "data", on_error="skip")
    assert summary["skipped_when_opening"] == [
        {"record": str(database), "reason": "line 3: not UTF-8 text"}
    ]
    assert sum(split["num_records"] for split in summary["splits"].values()) == 11


def test_cpsc_build_from_synthetic_original_layout_uses_the_shipped_split(tmp_path):
    src = write_cpsc2018_dataset(tmp_path / "src", num_records=12, seed=0)
    summary = prepare_dataset("cpsc2018", src, tmp_path / "data")
    assert summary["split_plan"] == (
        "shipped resources/cpsc2018_split.json (6865 of the 6877 records it was stratified on have "
        "no label here: not compared)"
    )
    reader = Cpsc2018(src)
    for split in summary["splits"]:
        for element in read_split(tmp_path / "data", "cpsc2018", split)[1]:
            record = reader.read(element["record_id"])
            np.testing.assert_allclose(
                element["signal"], record.signal, atol=round_trip_tolerance(record.signal)
            )
            np.testing.assert_array_equal(
                element["labels"], [c in record.labels for c in CPSC_CLASSES]
            )


def test_cpsc_build_from_real_mat_files_with_a_reference(tmp_path, real_data):
    src = tmp_path / "src"
    shutil.copytree(real_data / "cpsc2018", src)
    labels = {"A1980": "1", "A1981": "2,5", "A1982": "7", "A1983": "4", "A1984": "9"}
    rows = [f"{r},{codes if ',' in codes else codes + ','}," for r, codes in labels.items()]
    (src / "REFERENCE.csv").write_text(
        "Recording,First_label,Second_label,Third_label\n" + "\n".join(rows) + "\n"
    )
    summary = prepare_dataset("cpsc2018", src, tmp_path / "data")
    assert sum(s["num_records"] for s in summary["splits"].values()) == 5
    reader = Cpsc2018(src)
    for split in summary["splits"]:
        for element in read_split(tmp_path / "data", "cpsc2018", split)[1]:
            record = reader.read(element["record_id"])
            assert element["signal"].shape == record.signal.shape
            np.testing.assert_allclose(
                element["signal"], record.signal, atol=round_trip_tolerance(record.signal)
            )
            want = [CPSC_CLASSES[int(c) - 1] for c in labels[element["record_id"]].split(",")]
            np.testing.assert_array_equal(element["labels"], [c in want for c in CPSC_CLASSES])


def test_cpsc_build_from_real_challenge_layout_records(tmp_path, real_data):
    summary = prepare_dataset("cpsc2018", real_data / "cinc2021", tmp_path / "data")
    assert "not the shipped split" in summary["split_plan"]
    reader = ChallengeDataset(real_data / "cinc2021")
    seen = 0
    for split in summary["splits"]:
        for element in read_split(tmp_path / "data", "cpsc2018", split)[1]:
            record = reader.read(element["record_id"])
            # Challenge .mat files hold int16 at 1000/mV: whole microvolts, stored exactly.
            np.testing.assert_allclose(element["signal"], record.signal, rtol=0, atol=1e-6)
            want = snomed_to_cpsc(record.labels)
            np.testing.assert_array_equal(element["labels"], [c in want for c in CPSC_CLASSES])
            seen += 1
    assert seen == len(reader) == 15
