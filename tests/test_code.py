"""CODE-15% / CODE-II: the synthetic writer reproduces the layout, the reader reads it back."""

from __future__ import annotations

import csv
import os
import pathlib
import pickle
import shutil
import struct
import time

import h5py
import numpy as np
import pandas as pd
import pytest

import ecgfm.data.synthetic.code as synthetic_code
from ecgfm.data.code import CodeDataset, read_code_exam
from ecgfm.data.record import LEADS, EcgFormatError, SkipLog
from ecgfm.data.synthetic.code import CODE15_LABELS, label_conditions, write_code_dataset

CODE15_HEADER = [
    "exam_id", "age", "is_male", "nn_predicted_age", "1dAVb", "RBBB", "LBBB", "SB", "ST", "AF",
    "patient_id", "death", "timey", "normal_ecg", "trace_file",
]  # fmt: skip
NUM_EXAMS, NUM_PATIENTS, EXAMS_PER_SHARD = 30, 12, 8
NUM_SHARDS = 4  # ceil(30 / 8)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[pathlib.Path, list[tuple[frozenset[str], np.ndarray]]]:
    """A synthetic CODE-15% folder and every (conditions, signal) the generator produced for it."""
    generated: list[tuple[frozenset[str], np.ndarray]] = []
    real_synthesize = synthetic_code.synthesize_ecg

    def recording(rng, conditions=(), **kwargs):
        assert kwargs["sampling_rate"] == 400
        signal = real_synthesize(rng, conditions, **kwargs)
        generated.append((frozenset(conditions), signal.copy()))
        return signal

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic_code, "synthesize_ecg", recording)
        root = write_code_dataset(
            tmp_path_factory.mktemp("code15"),
            num_exams=NUM_EXAMS,
            num_patients=NUM_PATIENTS,
            exams_per_shard=EXAMS_PER_SHARD,
            seed=3,
            short_exam_fraction=0.4,
        )
    return root, generated


@pytest.fixture
def copy(written, tmp_path) -> pathlib.Path:
    """A private copy of the synthetic folder, to corrupt."""
    return pathlib.Path(shutil.copytree(written[0], tmp_path / "code"))


def csv_rows(root: pathlib.Path) -> list[dict[str, str]]:
    with open(root / "exams.csv", newline="") as f:
        return list(csv.DictReader(f))


def csv_lists(root: pathlib.Path) -> tuple[list[str], list[list[str]]]:
    with open(root / "exams.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def write_csv(root: pathlib.Path, header: list[str], rows: list[list[str]]) -> None:
    with open(root / "exams.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_shard(path: pathlib.Path, exam_ids: list[int], tracings: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("exam_id", data=np.asarray(exam_ids, dtype=np.int64))
        f.create_dataset("tracings", data=tracings.astype(np.float32))


def csv_row(exam_id: int, patient_id: int, labels: str = "False,False,False,False,False,False"):
    return [str(exam_id), "50", "True", "51.2", *labels.split(","), str(patient_id), "", "",
            "False", "exams_part0.hdf5"]  # fmt: skip


# --- the writer reproduces CODE-15%'s layout -------------------------------------------------


def test_shards_have_the_real_datasets_dtypes_and_dummy_last_row(written):
    root, _ = written
    shards = sorted(root.glob("exams_part*.hdf5"))
    assert [p.name for p in shards] == [f"exams_part{i}.hdf5" for i in range(NUM_SHARDS)]
    total = 0
    for path in shards:
        with h5py.File(path, "r") as f:
            tracings, exam_id = f["tracings"], f["exam_id"]
            assert tracings.dtype == np.float32 and exam_id.dtype == np.int64
            assert tracings.shape[1:] == (4096, 12) and exam_id.shape == (tracings.shape[0],)
            assert exam_id[-1] == 0 and not np.any(tracings[-1])
            assert np.all(exam_id[:-1] > 0)
            total += tracings.shape[0] - 1
    assert total == NUM_EXAMS


def test_exams_csv_has_code15_columns_and_patient_structure(written):
    root, _ = written
    with open(root / "exams.csv", newline="") as f:
        assert next(csv.reader(f)) == CODE15_HEADER
    rows = csv_rows(root)
    assert len(rows) == NUM_EXAMS
    by_patient: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], []).append(row)
        assert all(row[name] in ("True", "False") for name in CODE15_LABELS)
    assert len(by_patient) == NUM_PATIENTS
    assert max(len(exams) for exams in by_patient.values()) >= 2
    for exams in by_patient.values():
        # death and timey are filled only on the patient's first exam.
        first = min(exams, key=lambda row: int(row["exam_id"]))
        assert first["death"] in ("True", "False") and float(first["timey"]) > 0
        assert all(row["death"] == row["timey"] == "" for row in exams if row is not first)
    # exams.csv is not in shard order, as in the real release.
    with h5py.File(root / "exams_part0.hdf5", "r") as f:
        shard_order = f["exam_id"][:-1].tolist()
    csv_order = [int(row["exam_id"]) for row in rows if row["trace_file"] == "exams_part0.hdf5"]
    assert sorted(csv_order) == sorted(shard_order) and csv_order != shard_order


def test_exams_are_zero_padded_to_4096_centred(written):
    root, generated = written
    with h5py.File(root / "exams_part0.hdf5", "r") as f:
        tracings = f["tracings"][:-1]
    lengths = {2800: 648, 4000: 48}  # samples -> zeros on each side
    for tracing in tracings:
        nonzero = np.flatnonzero(np.any(tracing != 0, axis=1))
        pad = nonzero[0]
        assert pad in (648, 48) and 4096 - 1 - nonzero[-1] == pad
        assert lengths[4096 - 2 * pad] == pad
    assert {signal.shape[0] for _, signal in generated} == {2800, 4000}


# --- the reader ------------------------------------------------------------------------------


def test_round_trip_equals_the_generator_output_in_mv_with_the_real_length(written):
    root, generated = written
    dataset = CodeDataset(root)
    conditions = label_conditions(dataset.label_names)
    records = list(dataset)
    assert len(records) == len(generated) == NUM_EXAMS
    matched = set()
    for record in records:
        same = [
            k
            for k, (_, signal) in enumerate(generated)
            if signal.shape == record.signal.shape
            and np.allclose(signal, record.signal, rtol=0, atol=1e-6)
        ]
        assert len(same) == 1, record.record_id
        matched.add(same[0])
        # The signal was synthesised with exactly the conditions of the exam's labels.
        assert generated[same[0]][0] == {conditions[name] for name in record.labels}
        assert record.sampling_rate == 400.0 and record.source == "code"
        assert record.signal.dtype == np.float32 and record.signal.shape[1] == 12
        assert record.metadata["num_samples_padded"] == 4096
    assert matched == set(range(NUM_EXAMS))
    assert {r.num_samples for r in records} == {2800, 4000}


def test_leads_come_out_in_canonical_order(written):
    record = next(iter(CodeDataset(written[0])))
    i, ii = record.lead("I"), record.lead("II")
    np.testing.assert_allclose(record.lead("III"), ii - i, atol=1e-5)
    np.testing.assert_allclose(record.lead("aVR"), -(i + ii) / 2, atol=1e-5)
    np.testing.assert_allclose(record.lead("aVF"), (ii + record.lead("III")) / 2, atol=1e-5)
    assert record.derived_leads == ()


def test_dummy_rows_are_skipped_and_counted(written):
    dataset = CodeDataset(written[0])
    assert dataset.num_dummy_rows == NUM_SHARDS
    assert len(dataset) == NUM_EXAMS and 0 not in dataset.exam_ids.tolist()
    assert len(dataset.skip_log) == 0
    with pytest.raises(KeyError):
        dataset.read(0)


def test_shards_holding_only_dummy_rows_lose_their_exams_by_name(copy):
    # An IndexError escaped from locating exams when no shard stored any.
    exam_id = first_exam_of(copy, "exams_part0.hdf5")
    for shard in sorted(copy.glob("exams_part*.hdf5")):
        rewrite_shard(shard, lambda ids, x: (ids[-1:], x[-1:]))
    with pytest.raises(EcgFormatError, match=r"exam \d+ \(line 2 of exams\.csv\) is not in its"):
        CodeDataset(copy)
    assert len(CodeDataset(copy, on_error="skip").record_ids) == 0
    with pytest.raises(EcgFormatError, match=f"has no exam {exam_id}"):
        read_code_exam(copy / "exams_part0.hdf5", exam_id)


def test_exam_ids_labels_and_patients_follow_exams_csv(written):
    root, _ = written
    dataset = CodeDataset(root)
    rows = csv_rows(root)
    assert dataset.label_names == tuple(CODE15_LABELS)
    assert dataset.exam_ids.tolist() == [int(row["exam_id"]) for row in rows]
    for row in rows:
        exam_id = int(row["exam_id"])
        record = dataset.read(exam_id)
        assert record.record_id == row["exam_id"]
        assert set(record.labels) == {name for name in CODE15_LABELS if row[name] == "True"}
        assert record.patient_id == dataset.patient_id(exam_id) == row["patient_id"]
        assert record.age == float(row["age"])
        assert record.sex == ("M" if row["is_male"] == "True" else "F")
        assert record.metadata["trace_file"] == record.metadata["shard"] == row["trace_file"]
        assert record.metadata["normal_ecg"] == (row["normal_ecg"] == "True")
    patients = [dataset.patient_id(e) for e in dataset.exam_ids.tolist()]
    assert len(set(patients)) == NUM_PATIENTS


def test_66_made_up_label_columns_are_read_from_the_header(tmp_path):
    names = [f"dx{k:02d}_{'abcdefghij'[k % 10]}" for k in range(66)]
    root = write_code_dataset(tmp_path, num_exams=16, label_names=names, exams_per_shard=16)
    dataset = CodeDataset(root)
    assert dataset.label_names == tuple(names)
    for row in csv_rows(root):
        record = dataset.read(int(row["exam_id"]))
        assert set(record.labels) == {name for name in names if row[name] == "True"}


def test_labels_written_as_1_and_0_read_like_true_and_false(copy, written):
    header, rows = csv_lists(copy)
    labels = [header.index(name) for name in CODE15_LABELS]
    for row in rows:
        for i in labels:
            row[i] = {"True": "1", "False": "0"}[row[i]]
    write_csv(copy, header, rows)
    as_bits, as_words = CodeDataset(copy), CodeDataset(written[0])
    for exam_id in as_words.exam_ids.tolist():
        assert as_bits.read(exam_id).labels == as_words.read(exam_id).labels


def test_non_metadata_columns_are_labels_unless_label_columns_says(copy):
    header, rows = csv_lists(copy)
    write_csv(copy, [*header, "site"], [[*row, "BH"] for row in rows])
    with pytest.raises(EcgFormatError, match=r"exams\.csv.*'site'"):
        CodeDataset(copy)
    dataset = CodeDataset(copy, label_columns=CODE15_LABELS)
    assert dataset.label_names == CODE15_LABELS
    assert dataset.read(int(dataset.exam_ids[0])).metadata["site"] == "BH"


def test_pickled_dataset_reopens_its_shards(written):
    dataset = CodeDataset(written[0])
    exam_id = int(dataset.exam_ids[5])
    before = dataset.read(exam_id)  # leaves a shard open in this process
    again = pickle.loads(pickle.dumps(dataset)).read(exam_id)
    np.testing.assert_array_equal(again.signal, before.signal)
    assert again.labels == before.labels


# --- padding recovery and lead layouts on hand-made shards ----------------------------------


def test_real_length_is_recovered_when_the_exam_has_zeros_of_its_own(tmp_path):
    rng = np.random.default_rng(0)
    exams = {}
    # 1: fills all 4096 samples; 2: 2934 samples, the real short length (581 zeros each side);
    # 3: 2800 samples whose precordial leads are flat zero and whose last 3 samples are zero on
    #    every lead; 4: 4000 samples starting with a sample that is zero on every lead.
    exams[1] = rng.normal(size=(4096, 12))
    exams[2] = rng.normal(size=(2934, 12))
    exams[3] = rng.normal(size=(2800, 12))
    exams[3][:, 6:] = 0
    exams[3][-3:] = 0
    exams[4] = rng.normal(size=(4000, 12))
    exams[4][0] = 0
    tracings = np.zeros((5, 4096, 12))
    for row, signal in enumerate(exams.values()):
        start = (4096 - len(signal)) // 2
        tracings[row, start : start + len(signal)] = signal
    write_shard(tmp_path / "exams_part0.hdf5", [1, 2, 3, 4, 0], tracings)
    write_csv(tmp_path, CODE15_HEADER, [csv_row(e, 100 + e) for e in exams])
    dataset = CodeDataset(tmp_path)
    for exam_id, signal in exams.items():
        record = dataset.read(exam_id)
        assert record.num_samples == len(signal), exam_id
        np.testing.assert_allclose(record.signal, signal, atol=1e-6)
    assert dataset.read(2).metadata["padding_start"] == 581


def test_odd_length_exam_keeps_one_zero_of_padding_rather_than_lose_a_sample(tmp_path):
    signal = np.random.default_rng(2).normal(size=(2935, 12))  # 580 zeros before, 581 after
    tracings = np.zeros((2, 4096, 12))
    tracings[0, 580 : 580 + 2935] = signal
    write_shard(tmp_path / "exams_part0.hdf5", [5, 0], tracings)
    write_csv(tmp_path, CODE15_HEADER, [csv_row(5, 1)])
    record = CodeDataset(tmp_path).read(5)
    assert record.num_samples == 2936
    np.testing.assert_allclose(record.signal[:-1], signal, atol=1e-6)
    assert not np.any(record.signal[-1])


def test_eight_independent_leads_are_completed_and_say_so(tmp_path):
    rng = np.random.default_rng(1)
    stored = rng.normal(size=(2, 4096, 8))  # DI, DII, V1..V6
    stored[1] = 0
    write_shard(tmp_path / "exams_part0.hdf5", [7, 0], stored)
    write_csv(tmp_path, CODE15_HEADER, [csv_row(7, 1)])
    record = CodeDataset(tmp_path).read(7)
    assert record.signal.shape == (4096, 12)
    assert record.derived_leads == ("III", "aVR", "aVL", "aVF")
    i, ii = stored[0, :, 0], stored[0, :, 1]
    np.testing.assert_allclose(record.lead("I"), i, atol=1e-6)
    np.testing.assert_allclose(record.lead("III"), ii - i, atol=1e-5)
    np.testing.assert_allclose(record.lead("aVL"), (i - (ii - i)) / 2, atol=1e-5)
    np.testing.assert_allclose(record.signal[:, 6:], stored[0, :, 2:], atol=1e-6)


# --- bad input -------------------------------------------------------------------------------


def rewrite_shard(path: pathlib.Path, edit) -> None:
    with h5py.File(path, "r") as f:
        exam_id, tracings = f["exam_id"][:], f["tracings"][:]
    exam_id, tracings = edit(exam_id, tracings)
    write_shard(path, exam_id, tracings)


def first_exam_of(root: pathlib.Path, shard: str) -> int:
    with h5py.File(root / shard, "r") as f:
        return int(f["exam_id"][0])


def test_truncated_shard_is_named(copy):
    path = copy / "exams_part1.hdf5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(EcgFormatError, match=r"exams_part1\.hdf5"):
        CodeDataset(copy)


def test_missing_shard_is_named(copy):
    (copy / "exams_part2.hdf5").unlink()
    with pytest.raises(EcgFormatError, match=r"exams_part2\.hdf5.*missing"):
        CodeDataset(copy)


def test_shard_without_tracings_is_named(copy):
    path = copy / "exams_part0.hdf5"
    with h5py.File(path, "a") as f:
        del f["tracings"]
    with pytest.raises(EcgFormatError, match=r"exams_part0\.hdf5.*'tracings' is missing"):
        CodeDataset(copy)


def test_dataset_listed_but_not_found_by_name_is_called_a_damaged_index(copy, monkeypatch):
    # What a byte flip in a shard's name index did: keys() listed 'tracings', get() missed it.
    monkeypatch.setattr(h5py.File, "get", lambda *args, **kwargs: None)
    with pytest.raises(EcgFormatError, match=r"'tracings' is listed but cannot be looked up"):
        CodeDataset(copy)


def test_wrong_lead_count_is_named(copy):
    rewrite_shard(copy / "exams_part0.hdf5", lambda ids, x: (ids, x[:, :, :10]))
    with pytest.raises(EcgFormatError, match=r"exams_part0\.hdf5.*10 leads"):
        CodeDataset(copy)


def test_exam_id_and_tracings_length_mismatch_is_named(copy):
    rewrite_shard(copy / "exams_part3.hdf5", lambda ids, x: (ids[:-2], x))
    with pytest.raises(EcgFormatError, match=r"exams_part3\.hdf5.*exam_id has shape"):
        CodeDataset(copy)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_named_when_read(copy, bad):
    exam_id = first_exam_of(copy, "exams_part1.hdf5")

    def poison(ids, x):
        x[0, 2048, 4] = bad
        return ids, x

    rewrite_shard(copy / "exams_part1.hdf5", poison)
    dataset = CodeDataset(copy)
    with pytest.raises(EcgFormatError, match=rf"exams_part1\.hdf5: exam {exam_id}.*non-finite"):
        dataset.read(exam_id)
    with pytest.raises(EcgFormatError, match=r"exams_part1\.hdf5"):
        list(dataset)


def test_all_zero_tracing_of_a_listed_exam_is_an_error(copy):
    exam_id = first_exam_of(copy, "exams_part0.hdf5")

    def blank(ids, x):
        x[0] = 0
        return ids, x

    rewrite_shard(copy / "exams_part0.hdf5", blank)
    with pytest.raises(EcgFormatError, match=rf"exams_part0\.hdf5: exam {exam_id}.*all zeros"):
        CodeDataset(copy).read(exam_id)


@pytest.mark.parametrize(
    ("scale", "shown"), [(1000.0, "beyond ±50 mV"), (1e30, "beyond ±50 mV"), (0.0, "all zeros")]
)
def test_tracing_in_the_wrong_units_or_garbage_names_its_exam(copy, scale, shown):
    # ×1000 or ×1e30 used to be read and end as "loss is nan at step 1", naming no exam.
    exam_id = first_exam_of(copy, "exams_part2.hdf5")

    def rescale(ids, x):
        x[0] *= np.float32(scale)
        return ids, x

    rewrite_shard(copy / "exams_part2.hdf5", rescale)
    dataset = CodeDataset(copy)
    with pytest.raises(EcgFormatError, match=rf"exams_part2\.hdf5: exam {exam_id} .*{shown}"):
        dataset.read(exam_id)
    skip_log = SkipLog()
    assert len(list(dataset.iter_records("skip", skip_log))) == NUM_EXAMS - 1
    assert skip_log.skipped[0][0] == str(copy / "exams_part2.hdf5")


def test_constant_nonzero_tracing_is_refused_as_a_flat_line(copy):
    exam_id = first_exam_of(copy, "exams_part0.hdf5")

    def flatten(ids, x):
        x[0] = 0.25  # no zero padding to find, and no ECG either
        return ids, x

    rewrite_shard(copy / "exams_part0.hdf5", flatten)
    with pytest.raises(EcgFormatError, match=rf"exam {exam_id} .*every lead is constant"):
        CodeDataset(copy).read(exam_id)


def test_shard_declaring_huge_exams_is_refused_at_once(copy):
    # A 2 KB HDF5 declaring 1e7-sample exams took ~10 s and ~480 MB per read.
    path = copy / "exams_part0.hdf5"
    with h5py.File(path, "r") as f:
        exam_ids = f["exam_id"][:]
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("exam_id", data=exam_ids)
        f.create_dataset("tracings", shape=(len(exam_ids), 10**7, 12), dtype=np.float32,
                         chunks=(1, 4096, 12))  # fmt: skip
    assert path.stat().st_size < 10_000
    start = time.monotonic()
    with pytest.raises(EcgFormatError, match="declare 10000000 samples per exam, more than 65536"):
        CodeDataset(copy)
    assert time.monotonic() - start < 2.0
    dataset = CodeDataset(copy, on_error="skip")  # its exams are lost, the others read
    assert len(dataset.record_ids) == NUM_EXAMS - len(exam_ids) + 1


def test_exam_ids_the_file_cannot_hold_are_refused_before_reading(copy):
    path = copy / "exams_part0.hdf5"
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("exam_id", shape=(10**9,), dtype=np.int64, chunks=(4096,))
        f.create_dataset("tracings", shape=(10**9, 4096, 12), dtype=np.float32,
                         chunks=(1, 4096, 12))  # fmt: skip
    with pytest.raises(EcgFormatError, match=r"exam_id declares 1000000000 ids .* in a file of"):
        CodeDataset(copy)


def _patch_dimension(path: pathlib.Path, old: int, new: int, copies: int) -> None:
    """Overwrites `tracings`' dimensions in the file's dataspace message (dims, then max dims)."""
    data = bytearray(path.read_bytes())
    with h5py.File(path, "r") as f:
        num_exams = f["tracings"].shape[0]
    dims = struct.pack("<QQQ", num_exams, old, 12)
    at = data.index(dims)
    for k in range(copies):
        data[at + 24 * k : at + 24 * k + 24] = struct.pack("<QQQ", num_exams, new, 12)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("copies", "problem"),
    [(1, "is greater than maxdim size"), (2, "invalid dataset size, likely file corruption")],
)
def test_damaged_dataset_header_is_a_format_error_naming_file_and_dataset(copy, copies, problem):
    # h5py raises KeyError here ("Unable to synchronously open object (...)"), which escaped.
    path = copy / "exams_part1.hdf5"
    _patch_dimension(path, 4096, 10**7, copies)
    with pytest.raises(
        EcgFormatError, match=rf"dataset 'tracings' cannot be opened: .*{problem}"
    ) as info:
        CodeDataset(copy)
    assert info.value.path == str(path)
    assert isinstance(info.value.__cause__, KeyError)


def test_h5py_runtime_errors_become_format_errors(copy, monkeypatch):
    # What h5py raised for a damaged symbol table in byte-flipped shards.
    def broken(*args, **kwargs):
        raise RuntimeError(
            "Unable to synchronously check link existence (bad local heap signature)"
        )

    monkeypatch.setattr(h5py.File, "get", broken)
    with pytest.raises(EcgFormatError, match=r"dataset 'tracings' cannot be opened: .*local heap"):
        CodeDataset(copy)


def test_dataset_kept_in_an_external_file_is_refused(copy, tmp_path):
    path = copy / "exams_part0.hdf5"
    with h5py.File(path, "r") as f:
        exam_ids, tracings = f["exam_id"][:], f["tracings"][:]
    outside = tmp_path / "outside.bin"
    tracings.tofile(outside)
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("exam_id", data=exam_ids)
        f.create_dataset("tracings", shape=tracings.shape, dtype=np.float32,
                         external=[(str(outside), 0, tracings.nbytes)])  # fmt: skip
    with pytest.raises(EcgFormatError, match="keeps its data outside the file"):
        CodeDataset(copy)


def test_many_dummy_rows_are_refused_rather_than_each_read(copy):
    def pad(ids, x):
        return np.concatenate([ids, np.zeros(20, ids.dtype)]), np.concatenate(
            [x, np.zeros((20, *x.shape[1:]), x.dtype)]
        )

    rewrite_shard(copy / "exams_part0.hdf5", pad)
    with pytest.raises(
        EcgFormatError, match=r"21 rows have exam_id 0 \(CODE shards close with one"
    ):
        CodeDataset(copy)


def test_shard_that_is_a_fifo_is_refused_without_waiting(copy):
    path = copy / "exams_part3.hdf5"
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(EcgFormatError, match=r"exams_part3\.hdf5: is a FIFO, socket or device"):
        CodeDataset(copy)


@pytest.mark.parametrize("trace_file", ["/dev/zero", "../code/exams_part0.hdf5"])
def test_trace_file_that_is_not_a_name_in_the_folder_is_never_opened(copy, trace_file):
    header, rows = csv_lists(copy)
    rows[0][header.index("trace_file")] = trace_file
    write_csv(copy, header, rows)
    dataset = CodeDataset(copy)  # exams are found by exam_id in the folder's shards
    assert {path.parent for path in dataset.shard_paths} == {copy}
    assert len(list(dataset.iter_records())) == NUM_EXAMS


def test_trace_file_name_too_long_is_a_format_error_and_skippable(copy):
    header, rows = csv_lists(copy)
    rows[0][header.index("trace_file")] = "x" * 300 + ".hdf5"
    write_csv(copy, header, rows)
    with pytest.raises(EcgFormatError, match="cannot be opened: File name too long"):
        CodeDataset(copy)  # an OSError (ENAMETOOLONG) escaped before
    dataset = CodeDataset(copy, on_error="skip")
    assert len(list(dataset.iter_records())) == NUM_EXAMS  # the exam is in its real shard


def test_csv_row_that_is_not_utf8_is_named_or_skipped(copy):
    path = copy / "exams.csv"
    lines = path.read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b",", b",\xe9", 1)  # a Latin-1 byte in line 5
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(EcgFormatError, match=r"exams\.csv: line 5: not UTF-8 text"):
        CodeDataset(copy)
    dataset = CodeDataset(copy, on_error="skip")
    assert dataset.skip_log.skipped[0] == (str(path), "line 5: not UTF-8 text")
    assert len(dataset.record_ids) == NUM_EXAMS - 1
    assert len(list(dataset.iter_records())) == NUM_EXAMS - 1


def test_exam_listed_in_csv_but_in_no_shard_is_named(copy):
    header, rows = csv_lists(copy)
    write_csv(copy, header, [*rows, csv_row(999_999, 5)])
    with pytest.raises(EcgFormatError, match=r"exam 999999 \(line 32 of exams\.csv\)"):
        CodeDataset(copy)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda row: [*row, "extra"], r"line 3: has 16 fields, the header has 15"),
        (lambda row: [*row[:4], "maybe", *row[5:]], r"line 3: label column '1dAVb' has 'maybe'"),
        (lambda row: ["x12", *row[1:]], r"line 3: column 'exam_id' has 'x12', not a positive"),
        (lambda row: [row[0], "old", *row[2:]], r"line 3: column 'age' has 'old'"),
    ],
)
def test_unreadable_csv_row_is_named_with_its_line(copy, edit, problem):
    header, rows = csv_lists(copy)
    rows[1] = edit(rows[1])
    write_csv(copy, header, rows)
    with pytest.raises(EcgFormatError, match=r"exams\.csv: " + problem):
        CodeDataset(copy)


def test_repeated_exam_id_in_csv_is_named_with_both_lines(copy):
    header, rows = csv_lists(copy)
    write_csv(copy, header, [*rows, rows[0]])
    with pytest.raises(
        EcgFormatError, match=rf"exams\.csv: line 32: exam_id {rows[0][0]} repeats line 2"
    ):
        CodeDataset(copy)


def test_exam_stored_in_two_shards_is_named(copy):
    exam_id = first_exam_of(copy, "exams_part0.hdf5")
    rewrite_shard(
        copy / "exams_part1.hdf5", lambda ids, x: (np.append(ids, exam_id), x[[*range(len(x)), 0]])
    )
    with pytest.raises(EcgFormatError, match=rf"exams_part0\.hdf5: exam {exam_id} .*several rows"):
        CodeDataset(copy)


def test_skip_mode_counts_and_lists_what_it_left_out(copy):
    header, rows = csv_lists(copy)
    bad_row = next(k for k, row in enumerate(rows) if row[-1] == "exams_part0.hdf5")
    bad_row_exam = int(rows[bad_row][0])
    rows[bad_row][5] = "2"  # label RBBB = 2
    write_csv(copy, header, rows)
    lost = [int(row[0]) for row in rows if row[-1] == "exams_part3.hdf5"]
    (copy / "exams_part3.hdf5").unlink()
    nan_exam = first_exam_of(copy, "exams_part1.hdf5")

    def poison(ids, x):
        x[0, 100, 0] = np.nan
        return ids, x

    rewrite_shard(copy / "exams_part1.hdf5", poison)
    skip_log = SkipLog()
    dataset = CodeDataset(copy, on_error="skip", skip_log=skip_log)
    assert len(skip_log) == 1 + len(lost)
    records = list(dataset.iter_records(on_error="skip"))
    assert len(skip_log) == 2 + len(lost)
    assert len(dataset) == NUM_EXAMS - 1 - len(lost)
    assert len(records) == len(dataset) - 1
    read_ids = {int(r.record_id) for r in records}
    assert read_ids.isdisjoint({bad_row_exam, nan_exam, *lost})
    reasons = "\n".join(f"{where}: {why}" for where, why in skip_log.skipped)
    assert "label column 'RBBB' has '2'" in reasons
    assert f"exam {nan_exam}" in reasons and "non-finite" in reasons
    assert all(f"exam {e} " in reasons for e in lost)
    assert "exams_part3.hdf5" in reasons


# --- one exam --------------------------------------------------------------------------------


def test_read_code_exam_takes_labels_from_the_csv_beside_the_shard(written, tmp_path):
    root, _ = written
    dataset = CodeDataset(root)
    exam_id = first_exam_of(root, "exams_part2.hdf5")
    expected = dataset.read(exam_id)
    record = read_code_exam(root / "exams_part2.hdf5", exam_id)
    np.testing.assert_array_equal(record.signal, expected.signal)
    assert (record.labels, record.patient_id, record.age, record.sex) == (
        expected.labels, expected.patient_id, expected.age, expected.sex,
    )  # fmt: skip
    assert record.metadata["exams_csv"] == str(root / "exams.csv")

    alone = tmp_path / "exams_part2.hdf5"
    shutil.copy(root / "exams_part2.hdf5", alone)
    bare = read_code_exam(alone, exam_id)
    np.testing.assert_array_equal(bare.signal, expected.signal)
    assert bare.labels == () and bare.patient_id is None and bare.metadata["exams_csv"] is None
    with pytest.raises(EcgFormatError, match=r"exams_part2\.hdf5: has no exam 123456789"):
        read_code_exam(alone, 123456789)


def test_signal_is_in_canonical_lead_order_for_read_code_exam(written):
    root, _ = written
    record = read_code_exam(root / "exams_part0.hdf5", first_exam_of(root, "exams_part0.hdf5"))
    assert record.signal.shape[1] == len(LEADS) and record.sampling_rate == 400.0


# --- review fixes: typos, metadata columns, unlisted exams, pickling, uneven padding ----------


def test_on_error_typo_is_refused(written):
    with pytest.raises(ValueError, match="on_error"):
        CodeDataset(written[0], on_error="Skip")
    with pytest.raises(ValueError, match="on_error"):
        CodeDataset(written[0]).iter_records(on_error="Skip")


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_unknown_metadata_column_is_refused_once_not_every_row(copy, on_error):
    # A CODE-II release with a column we do not know (a date) would otherwise fail every row.
    header, rows = csv_lists(copy)
    write_csv(copy, [*header, "recording_date"], [[*row, "2019-03-04"] for row in rows])
    skip_log = SkipLog()
    with pytest.raises(EcgFormatError, match=r"column 'recording_date' .*label_columns="):
        CodeDataset(copy, on_error=on_error, skip_log=skip_log)
    assert len(skip_log) == 0
    dataset = CodeDataset(copy, label_columns=CODE15_LABELS)
    assert dataset.read(int(dataset.exam_ids[0])).metadata["recording_date"] == "2019-03-04"


def test_one_bad_label_cell_is_a_row_error_not_a_column_error(copy):
    header, rows = csv_lists(copy)
    rows[4][header.index("AF")] = ""
    write_csv(copy, header, rows)
    dataset = CodeDataset(copy, on_error="skip")
    assert len(dataset) == NUM_EXAMS - 1
    assert dataset.skip_log.skipped[0][1] == (
        "line 6: label column 'AF' has ''; expected 0/1/True/False"
    )


def test_exams_in_a_shard_but_not_in_the_csv_are_counted_and_listed(copy):
    header, rows = csv_lists(copy)
    dropped = [row for row in rows if row[-1] == "exams_part1.hdf5"][:3]
    write_csv(copy, header, [row for row in rows if row not in dropped])
    dataset = CodeDataset(copy)
    assert len(dataset) == NUM_EXAMS - 3 and dataset.num_unlisted_exams == 3
    assert dataset.skip_log.skipped == [
        (str(copy / "exams_part1.hdf5"), f"3 exams (e.g. {min(int(r[0]) for r in dropped)}) "
         "are not in exams.csv"),
    ]  # fmt: skip


def _write_large_folder(root: pathlib.Path, num_exams: int, num_labels: int) -> None:
    """`exams.csv` with CODE-15%'s columns and `num_labels` labels, one shard of exam ids whose
    tracings are never written (HDF5 allocates no space for them)."""
    rng = np.random.default_rng(0)
    columns = {
        "exam_id": np.arange(1, num_exams + 1),
        "age": rng.integers(18, 95, num_exams),
        "is_male": rng.random(num_exams) < 0.4,
        "nn_predicted_age": rng.normal(60, 10, num_exams).round(6),
        **{f"dx{k:02d}": rng.random(num_exams) < 0.05 for k in range(num_labels)},
        "patient_id": rng.integers(1, num_exams // 2, num_exams),
        "death": np.where(rng.random(num_exams) < 0.5, "False", ""),
        "timey": np.where(rng.random(num_exams) < 0.5, 3.25, np.nan),
        "normal_ecg": rng.random(num_exams) < 0.3,
        "trace_file": ["exams_part0.hdf5"] * num_exams,
    }
    pd.DataFrame(columns).to_csv(root / "exams.csv", index=False)
    with h5py.File(root / "exams_part0.hdf5", "w") as f:
        f.create_dataset("exam_id", data=np.append(columns["exam_id"], 0).astype(np.int64))
        f.create_dataset(
            "tracings", shape=(num_exams + 1, 4096, 12), dtype=np.float32, chunks=(1, 4096, 12)
        )


def test_pickled_dataset_is_compact_and_unpickles_without_reading_csv_or_shards(
    tmp_path, monkeypatch
):
    # CODE-II: 66 labels, 2.7 M exams. Each exam must cost a grain worker few bytes.
    num_exams = 4000
    _write_large_folder(tmp_path, num_exams, num_labels=66)
    dataset = CodeDataset(tmp_path)
    blob = pickle.dumps(dataset)
    assert len(blob) / num_exams < 100  # bytes per exam; the row-by-row table took ~160
    (tmp_path / "exams.csv").unlink()
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda *args: pytest.fail("read a shard"))
    again = pickle.loads(blob)
    assert again.exam_ids.tolist() == list(range(1, num_exams + 1))
    assert again.label_names == dataset.label_names
    assert again.patient_id(17) == dataset.patient_id(17) is not None


def test_uneven_zero_runs_at_the_ends_are_warned_about_and_counted(tmp_path, caplog):
    # 2800 samples centred (648 zeros each side), of which the exam's own last 52 are zero.
    signal = np.random.default_rng(3).normal(size=(2800, 12))
    signal[-52:] = 0
    tracings = np.zeros((2, 4096, 12))
    tracings[0, 648 : 648 + 2800] = signal
    write_shard(tmp_path / "exams_part0.hdf5", [9, 0], tracings)
    write_csv(tmp_path, CODE15_HEADER, [csv_row(9, 1)])
    dataset = CodeDataset(tmp_path)
    with caplog.at_level("WARNING", logger="ecgfm.data.code_hdf5"):
        record = dataset.read(9)
    np.testing.assert_allclose(record.signal, signal, atol=1e-6)
    assert record.metadata["padding_surplus"] == 52 and dataset.num_uneven_padding == 1
    assert "zero runs of 648 and 700 samples" in caplog.text
