"""CPSC 2018 original layout: real `A*.mat` files, REFERENCE.csv and the synthetic writer."""

import csv
import logging
import re
import shutil

import numpy as np
import pytest
import scipy.io

from ecgfm.data.cpsc2018 import (
    CPSC_CLASSES,
    Cpsc2018,
    read_cpsc_mat,
    read_cpsc_mat_with_reference,
    read_reference,
)
from ecgfm.data.record import LEADS, EcgFormatError, SkipLog
from ecgfm.data.synthetic.cpsc2018 import write_cpsc2018_dataset

# Read off the real files with scipy.io.loadmat (ECG.data columns, ECG.age, ECG.sex).
REAL_RECORDS = {
    "A1980": (5000, 52.0, "M"),
    "A1981": (7950, 48.0, "F"),
    "A1982": (5000, 89.0, "M"),
    "A1983": (7500, 49.0, "M"),
    "A1984": (9500, 23.0, "F"),
}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return write_cpsc2018_dataset(tmp_path_factory.mktemp("cpsc"), num_records=6, seed=1)


def _write_mat(path, sex="Male", age=50, data_CT=None):
    if data_CT is None:  # 12 leads of 1 mV sine waves, a signal the plausibility rule accepts
        data_CT = np.sin(np.linspace(0, 20, 3000) + np.arange(12)[:, None])
    age = np.zeros((0, 0)) if age is None else np.array([[age]], dtype=np.uint8)
    ecg = {"sex": sex, "age": age, "data": data_CT}
    scipy.io.savemat(path, {"ECG": ecg})
    return path


def _write_reference(path, rows):
    path.write_text("Recording,First_label,Second_label,Third_label\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("record_id", sorted(REAL_RECORDS))
def test_real_record_shape_rate_age_sex(real_data, record_id):
    num_samples, age, sex = REAL_RECORDS[record_id]
    record = read_cpsc_mat(real_data / "cpsc2018" / f"{record_id}.mat", ("AF",))
    assert record.signal.shape == (num_samples, 12)
    assert record.signal.dtype == np.float32
    assert record.sampling_rate == 500.0
    assert (record.record_id, record.source) == (record_id, "cpsc2018")
    assert (record.age, record.sex) == (age, sex)
    assert record.labels == ("AF",)


@pytest.mark.parametrize("record_id", sorted(REAL_RECORDS))
def test_real_record_is_the_struct_data_transposed_in_millivolts(real_data, record_id):
    path = real_data / "cpsc2018" / f"{record_id}.mat"
    data_CT = scipy.io.loadmat(path)["ECG"][0, 0]["data"]
    signal = read_cpsc_mat(path).signal
    np.testing.assert_array_equal(signal, data_CT.T.astype(np.float32))
    # An ECG in mV: R waves of 0.5–3 mV, nothing near the µV scale (×1000).
    peak_to_peak = np.ptp(signal, axis=0)
    assert 0.5 < np.median(peak_to_peak) < 3.0
    assert np.abs(signal).max() < 10.0


@pytest.mark.parametrize("record_id", sorted(REAL_RECORDS))
def test_real_leads_are_in_cpsc_order_einthoven_and_goldberger(real_data, record_id):
    record = read_cpsc_mat(real_data / "cpsc2018" / f"{record_id}.mat")
    lead_I, lead_II, lead_III = (record.lead(n).astype(np.float64) for n in ("I", "II", "III"))
    # III = II − I exactly in the file; float32 storage adds < 1e-6 mV.
    np.testing.assert_allclose(lead_III, lead_II - lead_I, atol=1e-6)
    # The augmented leads were rounded to 1 µV by the device.
    np.testing.assert_allclose(record.lead("aVR"), -(lead_I + lead_II) / 2, atol=2e-3)
    np.testing.assert_allclose(record.lead("aVL"), (lead_I - lead_III) / 2, atol=2e-3)
    np.testing.assert_allclose(record.lead("aVF"), (lead_II + lead_III) / 2, atol=2e-3)
    assert record.derived_leads == ()


def test_reference_rows_give_class_names_in_row_order(tmp_path):
    path = _write_reference(tmp_path / "REFERENCE.csv", ["A0001,5,,", "A0002,8,2,", "A0003,1,7,9"])
    assert read_reference(path) == {
        "A0001": ("RBBB",),
        "A0002": ("STD", "AF"),
        "A0003": ("Normal", "PVC", "STE"),
    }


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("A0002,0,,", "1–9"),
        ("A0002,10,,", "1–9"),
        ("A0002,x,,", "1–9"),
        ("A0002,,3,", "no first label"),
        (",3,,", "no recording name"),
        ("A0001,2,,", "listed twice"),
        ("A0002,1,2,3,4", "columns"),
    ],
)
def test_bad_reference_row_names_file_and_line(tmp_path, row, problem):
    path = _write_reference(tmp_path / "REFERENCE.csv", ["A0001,1,,", row])
    with pytest.raises(EcgFormatError, match=problem) as info:
        read_reference(path)
    assert info.value.path == str(path)
    assert "line 3" in info.value.problem


def test_label_repeated_within_a_row_is_read_once_and_logged(tmp_path, caplog):
    # The real REFERENCE.csv has "A0953,6,6,"; the Challenge counts that record's PAC once.
    path = _write_reference(tmp_path / "REFERENCE.csv", ["A0952,1,,", "A0953,6,6,"])
    with caplog.at_level(logging.WARNING, logger="ecgfm.data.cpsc2018"):
        assert read_reference(path)["A0953"] == ("PAC",)
    assert "line 3" in caplog.text and "repeated label" in caplog.text


def test_reference_with_wrong_header_is_rejected(tmp_path):
    path = tmp_path / "REFERENCE.csv"
    path.write_text("Recording,Label\nA0001,1\n")
    with pytest.raises(EcgFormatError, match="header") as info:
        read_reference(path)
    assert info.value.path == str(path)


def test_truncated_mat_names_the_file(real_data, tmp_path):
    path = tmp_path / "A1980.mat"
    path.write_bytes((real_data / "cpsc2018" / "A1980.mat").read_bytes()[:5000])
    with pytest.raises(EcgFormatError, match="truncated") as info:
        read_cpsc_mat(path)
    assert info.value.path == str(path)


def test_nan_sample_is_rejected_with_its_position(tmp_path):
    data_CT = np.zeros((12, 3000))
    data_CT[7, 123] = np.nan
    path = _write_mat(tmp_path / "A0001.mat", data_CT=data_CT)
    with pytest.raises(EcgFormatError, match="sample 123 of lead V2") as info:
        read_cpsc_mat(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"data_CT": np.zeros((11, 3000))}, "expected \\[12, time\\]"),
        ({"sex": "X"}, "ECG.sex"),
    ],
)
def test_wrong_lead_count_or_sex_is_rejected(tmp_path, kwargs, problem):
    path = _write_mat(tmp_path / "A0001.mat", **kwargs)
    with pytest.raises(EcgFormatError, match=problem):
        read_cpsc_mat(path)


def test_mat_without_ecg_struct_is_rejected(tmp_path):
    path = tmp_path / "A0001.mat"
    scipy.io.savemat(path, {"val": np.zeros((12, 10))})
    with pytest.raises(EcgFormatError, match="struct 'ECG'"):
        read_cpsc_mat(path)


def test_unknown_class_name_is_rejected(real_data):
    with pytest.raises(EcgFormatError, match="not CPSC classes"):
        read_cpsc_mat(real_data / "cpsc2018" / "A1980.mat", ("MI",))


def test_synthetic_files_have_the_real_struct_layout(real_data, synthetic_root):
    def layout(path):
        raw = path.read_bytes()
        ecg = scipy.io.loadmat(path)["ECG"]
        fields = ecg[0, 0]
        return (
            raw[:10],
            raw[128],  # first data element type: 15 = compressed, as MATLAB saves by default
            ecg.shape,
            ecg.dtype.names,
            [(fields[n].dtype.kind, fields[n].ndim) for n in ecg.dtype.names],
            fields["age"].dtype,
            fields["data"].dtype,
            fields["data"].shape[0],
        )

    assert layout(synthetic_root / "A0001.mat") == layout(real_data / "cpsc2018" / "A1980.mat")


def test_synthetic_round_trip_is_exact(synthetic_root):
    with (synthetic_root / "REFERENCE.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Recording", "First_label", "Second_label", "Third_label"]
    expected = {row[0]: [CPSC_CLASSES[int(c) - 1] for c in row[1:] if c] for row in rows[1:]}
    dataset = Cpsc2018(synthetic_root)
    assert dataset.record_ids == tuple(f"A{i:04d}" for i in range(1, 7))
    assert len(dataset) == 6
    for record in dataset.iter_records():
        fields = scipy.io.loadmat(synthetic_root / f"{record.record_id}.mat")["ECG"][0, 0]
        data_CT = fields["data"]
        # The file holds float32 values exactly, so the reader loses nothing.
        np.testing.assert_array_equal(record.signal.astype(np.float64), data_CT.T)
        assert record.labels == tuple(sorted(expected[record.record_id]))
        assert record.metadata["reference_labels"] == tuple(expected[record.record_id])
        assert record.age == float(fields["age"][0, 0])
        assert record.sex == {"Male": "M", "Female": "F"}[str(fields["sex"][0])]
        assert 6.0 <= record.duration_s <= 60.0
        assert 1 <= len(record.labels) <= 3
        assert record.labels == ("Normal",) or "Normal" not in record.labels
        # Einthoven's law holds in the synthetic signal to float32 rounding.
        np.testing.assert_allclose(
            record.lead("III"), record.lead("II") - record.lead("I"), atol=1e-5
        )


def test_synthetic_writer_is_deterministic_in_seed(tmp_path):
    a = write_cpsc2018_dataset(tmp_path / "a", num_records=2, seed=5)
    b = write_cpsc2018_dataset(tmp_path / "b", num_records=2, seed=5)
    c = write_cpsc2018_dataset(tmp_path / "c", num_records=2, seed=6)
    data = {root: scipy.io.loadmat(root / "A0002.mat")["ECG"][0, 0]["data"] for root in (a, b, c)}
    np.testing.assert_array_equal(data[a], data[b])
    assert data[a].shape != data[c].shape or not np.array_equal(data[a], data[c])
    assert (a / "REFERENCE.csv").read_text() == (b / "REFERENCE.csv").read_text()


def test_record_in_reference_without_mat_is_reported(synthetic_root, tmp_path):
    root = shutil.copytree(synthetic_root, tmp_path / "cpsc")
    (root / "A0003.mat").unlink()
    dataset = Cpsc2018(root)
    assert "A0003" in dataset.record_ids
    with pytest.raises(EcgFormatError, match=r"no A0003\.mat") as info:
        list(dataset.iter_records())
    assert info.value.path == str(root / "REFERENCE.csv")
    skip_log = SkipLog()
    records = list(dataset.iter_records(on_error="skip", skip_log=skip_log))
    assert [r.record_id for r in records] == ["A0001", "A0002", "A0004", "A0005", "A0006"]
    assert len(skip_log) == 1


def test_mat_without_reference_row_is_reported(synthetic_root, tmp_path):
    root = shutil.copytree(synthetic_root, tmp_path / "cpsc")
    shutil.copy(root / "A0001.mat", root / "A9999.mat")
    dataset = Cpsc2018(root)
    with pytest.raises(EcgFormatError, match="no row in") as info:
        dataset.read("A9999")
    assert info.value.path == str(root / "A9999.mat")
    skip_log = SkipLog()
    assert len(list(dataset.iter_records(on_error="skip", skip_log=skip_log))) == 6
    assert skip_log.skipped[0][0] == str(root / "A9999.mat")


def test_skip_mode_counts_a_corrupt_file_and_keeps_the_rest(synthetic_root, tmp_path):
    root = shutil.copytree(synthetic_root, tmp_path / "cpsc")
    (root / "A0002.mat").write_bytes((root / "A0002.mat").read_bytes()[:300])
    skip_log = SkipLog()
    records = list(Cpsc2018(root).iter_records(on_error="skip", skip_log=skip_log))
    assert len(records) == 5
    assert skip_log.skipped[0][0] == str(root / "A0002.mat")
    # Without a SkipLog of its own, the dataset's is used.
    dataset = Cpsc2018(root)
    assert len(list(dataset.iter_records(on_error="skip"))) == 5
    assert [where for where, _ in dataset.skip_log.skipped] == [str(root / "A0002.mat")]


def test_on_error_typo_is_refused(synthetic_root):
    with pytest.raises(ValueError, match="on_error"):
        Cpsc2018(synthetic_root, on_error="Skip")
    with pytest.raises(ValueError, match="on_error"):
        Cpsc2018(synthetic_root).iter_records("Skip")


def test_bad_reference_row_can_be_skipped_and_its_record_is_left_out(synthetic_root, tmp_path):
    root = shutil.copytree(synthetic_root, tmp_path / "cpsc")
    lines = (root / "REFERENCE.csv").read_text().splitlines()
    assert lines[2].startswith("A0002,")
    lines[2] = "A0002,12,,"
    (root / "REFERENCE.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(EcgFormatError, match="line 3"):
        Cpsc2018(root)
    dataset = Cpsc2018(root, on_error="skip")
    assert dataset.record_ids == ("A0001", "A0003", "A0004", "A0005", "A0006")
    assert len(dataset.skip_log) == 1 and "line 3" in dataset.skip_log.skipped[0][1]
    assert len(list(dataset.iter_records())) == 5
    skip_log = SkipLog()
    assert "A0002" not in read_reference(root / "REFERENCE.csv", "skip", skip_log)
    assert len(skip_log) == 1


@pytest.mark.parametrize(("age", "expected"), [(89, 89.0), (150, 150.0), (200, None)])
def test_age_above_150_is_refused_as_in_every_reader(tmp_path, age, expected):
    path = _write_mat(tmp_path / "A0001.mat", age=age)
    if expected is None:
        with pytest.raises(EcgFormatError, match=r"ECG\.age is 200\.0, not an age in years"):
            read_cpsc_mat(path)
    else:
        assert read_cpsc_mat(path).age == expected


def test_unlabelled_folder_reads_real_files_without_reference(real_data):
    dataset = Cpsc2018(real_data / "cpsc2018", reference=None)
    assert dataset.record_ids == tuple(sorted(REAL_RECORDS))
    assert all(r.labels == () for r in dataset.iter_records())


def test_missing_reference_file_is_an_error(real_data):
    with pytest.raises(EcgFormatError, match="reference file is missing"):
        Cpsc2018(real_data / "cpsc2018")


def test_single_file_finds_reference_beside_it(synthetic_root):
    with (synthetic_root / "REFERENCE.csv").open(newline="") as f:
        first_row = list(csv.reader(f))[1]
    record = read_cpsc_mat_with_reference(synthetic_root / "A0001.mat")
    expected = sorted(CPSC_CLASSES[int(c) - 1] for c in first_row[1:] if c)
    assert record.labels == tuple(expected)
    assert record.signal.shape[1] == len(LEADS)


def test_reference_row_that_is_not_utf8_is_named_or_skipped(synthetic_root, tmp_path):
    # A non-UTF-8 REFERENCE.csv used to escape as UnicodeDecodeError.
    root = shutil.copytree(synthetic_root, tmp_path / "cpsc")
    data = (root / "REFERENCE.csv").read_bytes().replace(b"A0004,", b"A0\xff04,")
    (root / "REFERENCE.csv").write_bytes(data)
    with pytest.raises(EcgFormatError, match=r"line 5 .*: not UTF-8 text") as info:
        Cpsc2018(root)
    assert info.value.path == str(root / "REFERENCE.csv")
    dataset = Cpsc2018(root, on_error="skip")
    assert "line 5" in dataset.skip_log.skipped[0][1]
    # A0004.mat lost its row: it stays listed, so reading it is reported, not silently dropped.
    records = list(dataset.iter_records(on_error="skip"))
    assert len(records) == 5 and "A0004" not in [r.record_id for r in records]
    assert dataset.skip_log.skipped[-1][0] == str(root / "A0004.mat")


def test_all_zero_record_is_refused_as_code_refuses_an_all_zero_exam(tmp_path):
    path = _write_mat(tmp_path / "A0001.mat", data_CT=np.zeros((12, 3000)))
    with pytest.raises(EcgFormatError, match=r"every lead is constant .*at 0 mV") as info:
        read_cpsc_mat(path)
    assert info.value.path == str(path)


def test_float64_above_float32_range_is_refused_not_read_as_inf(tmp_path):
    data_CT = np.sin(np.linspace(0, 20, 3000) + np.arange(12)[:, None])
    data_CT[2, 100] = 3.5e38  # passed the NaN/Inf check, then became inf in the float32 cast
    path = _write_mat(tmp_path / "A0001.mat", data_CT=data_CT)
    with pytest.raises(
        EcgFormatError, match=r"up to 3\.5e\+38 mV\), first at sample 100 of lead III"
    ):
        read_cpsc_mat(path)


def test_matlab_73_file_is_named_as_such(tmp_path):
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1".ljust(116)
    path = tmp_path / "A0001.mat"
    path.write_bytes(header + b"\0" * 8 + b"\x00\x02IM" + b"\0" * 512)
    with pytest.raises(EcgFormatError, match=r"MATLAB v7\.3 file \(HDF5\), which is not read"):
        read_cpsc_mat(path)


@pytest.mark.parametrize(
    ("ecg", "problem"),
    [
        ({"sex": "Male", "age": 50, "data": "text"}, "ECG.data is text, expected numbers"),
        ({"sex": 1.0, "age": 50}, "ECG.sex is float64 1×1, expected text"),
        ({"sex": "Male", "age": "fifty"}, "ECG.age is text, expected one number"),
        ({"sex": "Male", "age": {"years": 50}}, "ECG.age is a struct, expected one number"),
    ],
)
def test_struct_fields_of_the_wrong_kind_are_named(tmp_path, ecg, problem):
    ecg = {"data": np.sin(np.linspace(0, 20, 3000) + np.arange(12)[:, None]), **ecg}
    path = tmp_path / "A0001.mat"
    scipy.io.savemat(path, {"ECG": ecg})
    with pytest.raises(EcgFormatError, match=re.escape(problem)):
        read_cpsc_mat(path)


def test_empty_age_and_sex_mean_unknown(tmp_path):
    path = _write_mat(tmp_path / "A0001.mat", sex="", age=None)
    record = read_cpsc_mat(path)
    assert (record.age, record.sex) == (None, None)
