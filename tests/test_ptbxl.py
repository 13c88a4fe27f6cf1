"""PTB-XL: the six benchmark tasks, safe `scp_codes` parsing, WFDB records, the synthetic writer.

Real files used: `ptbxl/scp_statements.csv` (unchanged), `ptbxl/ptbxl_database_head.csv` (its
first 521 rows) and `cinc2021/HR06000-HR06004`, PTB-XL recordings 06000-06004 at 500 Hz whose
samples the CinC copy carries in a .mat. PTB-XL's own .dat files are not in the sample data, so
the round-trip tests write those real samples as WFDB format 16 under the head rows' file names
(ecg_id 1-5, `records500/00000/0000N_hr`): the signal is real, the row it sits under is not
its own.
"""

import csv
import hashlib
import os
import pathlib
import pickle
import re
import shutil

import numpy as np
import pytest
import scipy.io
import scipy.signal
import wfdb

from ecgfm.data import ptbxl
from ecgfm.data.record import LEADS, EcgFormatError, SkipLog
from ecgfm.data.synthetic.ptbxl import CODE_CONDITIONS, write_ptbxl_dataset

PTBXL_NAMES = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]


@pytest.fixture(scope="module")
def statements_path(real_data):
    return real_data / "ptbxl" / "scp_statements.csv"


@pytest.fixture(scope="module")
def statements(statements_path):
    return ptbxl.load_scp_statements(statements_path)


@pytest.fixture
def head_root(tmp_path, real_data):
    """A dataset folder holding the real head as ptbxl_database.csv, and no signal files."""
    for name, target in [
        ("ptbxl_database_head.csv", ptbxl.DATABASE_FILE),
        ("scp_statements.csv", ptbxl.SCP_STATEMENTS_FILE),
    ]:
        shutil.copyfile(real_data / "ptbxl" / name, tmp_path / target)
    return tmp_path


def _edit_database(root, edit):
    """Rewrites root's ptbxl_database.csv as text, so cells keep their exact spelling."""
    path = root / ptbxl.DATABASE_FILE
    path.write_text(edit(path.read_text()))
    return path


def _cinc_samples(real_data, number):
    """`[5000, 12]` int16 ADC units of PTB-XL recording 0600N, as the CinC .mat stores them."""
    val = scipy.io.loadmat(real_data / "cinc2021" / f"HR0600{number}.mat")["val"]
    assert val.shape == (12, 5000) and val.dtype == np.int16
    return val.T


def _write_wfdb(path, d_signal, sampling_rate, names=PTBXL_NAMES):
    path.parent.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        path.name,
        fs=sampling_rate,
        units=["mV"] * len(names),
        sig_name=list(names),
        d_signal=np.ascontiguousarray(d_signal),
        fmt=["16"] * len(names),
        adc_gain=[1000.0] * len(names),
        baseline=[0] * len(names),
        write_dir=str(path.parent),
    )


# --- The six tasks, from the real scp_statements.csv -------------------------------------------


def test_vocabularies_have_the_benchmark_sizes(statements):
    vocabularies = ptbxl.task_vocabularies(statements)
    assert {t: len(v) for t, v in vocabularies.items()} == {
        "all": 71, "diagnostic": 44, "subdiagnostic": 23,
        "superdiagnostic": 5, "form": 19, "rhythm": 12,
    }  # fmt: skip
    assert vocabularies["superdiagnostic"] == ("CD", "HYP", "MI", "NORM", "STTC")
    assert tuple(vocabularies) == ptbxl.TASKS
    for labels in vocabularies.values():
        assert list(labels) == sorted(labels)


def test_bundled_scp_statements_is_the_real_file(statements_path):
    bundled = pathlib.Path(ptbxl.__file__).parents[1] / "resources" / "scp_statements.csv"
    assert bundled.read_bytes() == statements_path.read_bytes()


# Worked out by hand from scp_statements.csv. Row 39 holds codes that are both diagnostic and
# form (LNGQT, NST_, DIG); rows 17 and 20 have no diagnostic statement at all.
HAND_LABELS = {
    1: dict(all=("LVOLT", "NORM", "SR"), diagnostic=("NORM",), subdiagnostic=("NORM",),
            superdiagnostic=("NORM",), form=("LVOLT",), rhythm=("SR",)),
    2: dict(all=("NORM", "SBRAD"), diagnostic=("NORM",), subdiagnostic=("NORM",),
            superdiagnostic=("NORM",), form=(), rhythm=("SBRAD",)),
    8: dict(all=("ABQRS", "IMI", "SR"), diagnostic=("IMI",), subdiagnostic=("IMI",),
            superdiagnostic=("MI",), form=("ABQRS",), rhythm=("SR",)),
    17: dict(all=("ABQRS", "AFIB", "AFLT"), diagnostic=(), subdiagnostic=(),
             superdiagnostic=(), form=("ABQRS",), rhythm=("AFIB", "AFLT")),
    39: dict(all=("ABQRS", "DIG", "IMI", "LNGQT", "NST_", "SR"),
             diagnostic=("DIG", "IMI", "LNGQT", "NST_"), subdiagnostic=("IMI", "NST_", "STTC"),
             superdiagnostic=("MI", "STTC"), form=("ABQRS", "DIG", "LNGQT", "NST_"),
             rhythm=("SR",)),
    45: dict(all=("IRBBB", "RAO/RAE", "RVH", "SR"), diagnostic=("IRBBB", "RAO/RAE", "RVH"),
             subdiagnostic=("IRBBB", "RAO/RAE", "RVH"), superdiagnostic=("CD", "HYP"), form=(),
             rhythm=("SR",)),
}  # fmt: skip


@pytest.mark.parametrize("ecg_id", sorted(HAND_LABELS))
def test_task_labels_of_real_rows_match_hand_derivation(ecg_id, head_root, statements):
    dataset = ptbxl.PtbXl(head_root)
    scp_codes = dataset.database.at[ecg_id, "scp_codes"]
    for task, expected in HAND_LABELS[ecg_id].items():
        assert ptbxl.task_labels(scp_codes, task, statements) == expected, task
        assert dataset.labels(task)[ecg_id] == expected, task


def test_likelihood_does_not_filter_codes(statements):
    # Like the benchmark: a code counts whatever its likelihood, 0.0 included.
    codes = {"IMI": 15.0, "LVOLT": 0.0, "SR": 0.0}
    assert ptbxl.task_labels(codes, "all", statements) == ("IMI", "LVOLT", "SR")
    assert ptbxl.task_labels(codes, "superdiagnostic", statements) == ("MI",)


def test_task_labels_refuse_unknown_codes_and_tasks(statements):
    with pytest.raises(ValueError, match="XYZ"):
        ptbxl.task_labels({"NORM": 100.0, "XYZ": 0.0}, "all", statements)
    with pytest.raises(ValueError, match="unknown PTB-XL task"):
        ptbxl.task_labels({"NORM": 100.0}, "superclass", statements)


def test_every_real_head_row_parses(head_root, statements):
    dataset = ptbxl.PtbXl(head_root)
    assert len(dataset) == 521 and dataset.record_ids[:3] == ("1", "2", "3")
    assert dataset.record_ids[-1] == "547"
    for ecg_id, scp_codes in dataset.database["scp_codes"].items():
        assert scp_codes and all(
            isinstance(code, str) and code in statements.index and isinstance(value, float)
            for code, value in scp_codes.items()
        ), ecg_id
    assert dataset.database.at[1, "scp_codes"] == {"NORM": 100.0, "LVOLT": 0.0, "SR": 0.0}
    # The official folds never split a patient, also within these 521 rows.
    assert (dataset.database.groupby("patient_id")["strat_fold"].nunique() == 1).all()


def test_records_without_a_task_label_are_masked_not_dropped(head_root):
    dataset = ptbxl.PtbXl(head_root)
    for task in ("diagnostic", "subdiagnostic", "superdiagnostic"):
        has = dataset.has_labels(task)
        assert len(has) == 521 and set(has.index[~has]) == {17, 20}
    assert dataset.has_labels("all").all()
    # Only 133 of the head's rows carry a form statement.
    assert dataset.has_labels("form").sum() == 133
    assert dataset.labels("form")[2] == () and not dataset.has_labels("form")[2]


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch pwned')",
        "{'NORM': __import__('os').getcwd()}",
        "{'NORM': 100.0",
        "['NORM', 'SR']",
        "{'NORM': 'high'}",
        "{1: 100.0}",
        "{'NORM': True}",
        "{'NORM': float('nan')}",
        "{'NORM': 1e999}",
        "",
    ],
)
def test_garbled_or_malicious_scp_codes_are_rejected_unevaluated(
    text, head_root, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    row_2 = "{'NORM': 80.0, 'SBRAD': 0.0}"
    path = _edit_database(head_root, lambda s: s.replace(row_2, text.replace('"', '""'), 1))
    with pytest.raises(EcgFormatError, match="ecg_id 2: scp_codes") as err:
        ptbxl.PtbXl(head_root)
    assert err.value.path == str(path)
    assert not (tmp_path / "pwned").exists()


def test_unknown_scp_code_raises_or_is_skipped_and_counted(head_root):
    path = _edit_database(
        head_root, lambda s: s.replace("{'NORM': 80.0, 'SBRAD': 0.0}", "{'NOPE': 80.0}", 1)
    )
    with pytest.raises(EcgFormatError, match=r"ecg_id 2: SCP codes \['NOPE'\]") as err:
        ptbxl.PtbXl(head_root)
    assert err.value.path == str(path)
    skip_log = SkipLog()
    dataset = ptbxl.PtbXl(head_root, on_error="skip", skip_log=skip_log)
    assert len(dataset) == 520 and "2" not in dataset.record_ids
    assert len(skip_log) == 1 and skip_log.skipped[0][0] == str(path)


def test_bad_strat_fold_names_file_and_row(head_root):
    line_1 = "records100/00000/00001_lr"
    _edit_database(head_root, lambda s: s.replace(f",3,{line_1}", f",11,{line_1}", 1))
    with pytest.raises(EcgFormatError, match="ecg_id 1: strat_fold 11"):
        ptbxl.PtbXl(head_root)


@pytest.mark.parametrize("patient_id", ["inf", "1e400", "-inf", "15709.5"])
def test_patient_id_that_is_not_a_whole_number_names_the_row(head_root, patient_id):
    # inf and 1e400 used to escape as OverflowError from int().
    _edit_database(head_root, lambda s: s.replace("\n1,15709.0,", f"\n1,{patient_id},", 1))
    with pytest.raises(EcgFormatError, match=r"ecg_id 1: patient_id \S+ is not an id"):
        ptbxl.PtbXl(head_root)
    assert "1" not in ptbxl.PtbXl(head_root, on_error="skip").record_ids


# --- Real samples through WFDB format 16 --------------------------------------------------------


@pytest.fixture
def real_records_root(head_root, real_data):
    """The head plus the five real CinC recordings written as ecg_ids 1-5 at 500 Hz."""
    for number in range(5):
        path = head_root / "records500" / "00000" / f"0000{number + 1}_hr"
        _write_wfdb(path, _cinc_samples(real_data, number), 500)
    return head_root


def test_real_samples_round_trip_exactly_in_millivolts(real_records_root, real_data):
    dataset = ptbxl.PtbXl(real_records_root)
    for number in range(5):
        record = dataset.read(number + 1, sampling_rate=500)
        expected = (_cinc_samples(real_data, number) / 1000.0).astype(np.float32)
        assert record.signal.dtype == np.float32 and record.signal.shape == (5000, 12)
        np.testing.assert_array_equal(record.signal, expected)
        assert record.sampling_rate == 500.0 and record.derived_leads == ()


def test_record_fields_come_from_the_database_row(real_records_root):
    # Row 1: patient 15709.0, age 56.0, sex 1 (female), strat_fold 3.
    record = ptbxl.PtbXl(real_records_root).read(1)
    assert (record.source, record.record_id, record.patient_id) == ("ptbxl", "1", "15709")
    assert (record.age, record.sex) == (56.0, "F")
    assert record.labels == ("LVOLT", "NORM", "SR")
    assert record.metadata["strat_fold"] == 3
    assert record.metadata["scp_codes"] == {"NORM": 100.0, "LVOLT": 0.0, "SR": 0.0}
    assert record.metadata["task_labels"] == HAND_LABELS[1]
    assert record.metadata["filename"] == "records500/00000/00001_hr"
    assert ptbxl.PtbXl(real_records_root).read(2).sex == "M"  # row 2: sex 0


def test_leads_are_put_in_canonical_order_whatever_the_file_order(head_root, real_data):
    samples = _cinc_samples(real_data, 0)
    order = np.arange(12)[::-1]
    path = head_root / "records500" / "00000" / "00001_hr"
    _write_wfdb(path, samples[:, order], 500, names=[PTBXL_NAMES[i] for i in order])
    record = ptbxl.read_ptbxl_record(path)
    np.testing.assert_array_equal(record.lead("V6"), samples[:, 11] / np.float32(1000.0))
    np.testing.assert_array_equal(record.lead("aVR"), samples[:, 3] / np.float32(1000.0))
    assert record.signal.shape == (5000, len(LEADS))


@pytest.mark.parametrize("suffix", ["", ".hea", ".dat"])
def test_read_single_record_by_path_finds_the_database(suffix, real_records_root, real_data):
    record = ptbxl.read_ptbxl_record(f"{real_records_root}/records500/00000/00003_hr{suffix}")
    np.testing.assert_array_equal(
        record.signal, (_cinc_samples(real_data, 2) / 1000.0).astype(np.float32)
    )
    assert record.record_id == "3" and record.labels == ("NORM", "SR")
    assert record.metadata["strat_fold"] == 5 and record.sex == "F"


def test_read_single_record_without_database_has_no_labels(real_records_root, tmp_path):
    alone = tmp_path / "alone"
    shutil.copytree(real_records_root / "records500", alone / "records500")
    record = ptbxl.read_ptbxl_record(alone / "records500" / "00000" / "00004_hr.hea")
    assert (record.record_id, record.labels, record.patient_id) == ("4", (), None)
    assert record.metadata["filename"] == "records500/00000/00004_hr"


def test_age_300_means_over_89_and_gives_no_age(real_records_root):
    _edit_database(real_records_root, lambda s: s.replace("1,15709.0,56.0,", "1,15709.0,300.0,"))
    record = ptbxl.PtbXl(real_records_root).read(1)
    assert record.age is None and record.metadata["age_over_89"] is True


def test_read_rejects_unknown_ids_and_rates(real_records_root):
    dataset = ptbxl.PtbXl(real_records_root)
    with pytest.raises(KeyError):
        dataset.read(6000)
    with pytest.raises(ValueError, match="100 or 500"):
        dataset.read(1, sampling_rate=250)
    with pytest.raises(ValueError, match="100 or 500"):
        ptbxl.PtbXl(real_records_root, sampling_rate=250)


# --- The synthetic writer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return write_ptbxl_dataset(
        tmp_path_factory.mktemp("ptbxl"), num_records=30, num_patients=20, seed=0
    )


def test_synthetic_database_has_the_real_columns_and_cell_formats(synthetic_root, real_data):
    with open(real_data / "ptbxl" / "ptbxl_database_head.csv", newline="") as f:
        real_header = next(csv.reader(f))
    with open(synthetic_root / ptbxl.DATABASE_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == real_header and len(rows) == 30
    code = r"'[A-Z0-9_/()]+': \d+\.\d"
    for row in rows:
        assert re.fullmatch(rf"\{{{code}(, {code})*\}}", row["scp_codes"]), row["scp_codes"]
        assert re.fullmatch(r"\d+\.0", row["patient_id"]) and row["sex"] in ("0", "1")
        ecg_id = int(row["ecg_id"])
        assert row["filename_hr"] == f"records500/00000/{ecg_id:05d}_hr"
        assert row["filename_lr"] == f"records100/00000/{ecg_id:05d}_lr"
        assert row["validated_by_human"] == "True"
    header = (synthetic_root / "records500" / "00000" / "00001_hr.hea").read_text().split("\n")
    assert header[0] == "00001_hr 12 500 5000"
    assert [line.split()[-1] for line in header[1:13]] == PTBXL_NAMES
    assert all(line.split()[1:3] == ["16", "1000.0(0)/mV"] for line in header[1:13])
    assert (synthetic_root / ptbxl.SCP_STATEMENTS_FILE).read_bytes() == (
        real_data / "ptbxl" / "scp_statements.csv"
    ).read_bytes()


def test_synthetic_round_trip_at_100_and_500_hz(synthetic_root):
    dataset = ptbxl.PtbXl(synthetic_root)
    assert len(dataset) == 30 and dataset.sampling_rate == 500
    records_500 = list(dataset.iter_records())
    records_100 = list(ptbxl.PtbXl(synthetic_root, sampling_rate=100).iter_records())
    assert [r.record_id for r in records_500] == [str(i) for i in range(1, 31)]
    for high, low in zip(records_500, records_100, strict=True):
        assert high.signal.shape == (5000, 12) and low.signal.shape == (1000, 12)
        assert high.labels == low.labels == tuple(sorted(high.metadata["scp_codes"]))
        # The 100 Hz file is the 500 Hz recording downsampled, up to 1 µV quantisation.
        downsampled = scipy.signal.resample_poly(high.signal, 1, 5, axis=0)
        np.testing.assert_allclose(low.signal, downsampled, atol=2e-3)
        assert np.ptp(high.signal, axis=0).min() > 0.05  # every lead carries a signal


def test_synthetic_folds_keep_patients_apart(synthetic_root):
    database = ptbxl.PtbXl(synthetic_root).database
    assert database["patient_id"].nunique() == 20
    assert database["patient_id"].value_counts().max() > 1
    assert (database.groupby("patient_id")["strat_fold"].nunique() == 1).all()
    assert set(database["strat_fold"]) == set(range(1, 11))


def test_synthetic_labels_cover_the_superclasses_and_map_to_conditions(synthetic_root):
    dataset = ptbxl.PtbXl(synthetic_root)
    superclasses = {c for labels in dataset.labels("superdiagnostic") for c in labels}
    assert superclasses == {"NORM", "MI", "STTC", "CD", "HYP"}
    assert dataset.has_labels("superdiagnostic").all() and dataset.has_labels("rhythm").all()
    statements = dataset.scp_statements
    assert set(CODE_CONDITIONS) <= set(statements.index)
    # NORM records are synthesised without a condition, every other superclass with one.
    for scp_codes in dataset.database["scp_codes"]:
        diagnostic = [c for c in scp_codes if statements.at[c, "diagnostic"] == 1.0]
        assert all((c == "NORM") != (c in CODE_CONDITIONS) for c in diagnostic), scp_codes


def test_synthetic_writer_is_deterministic_per_seed(tmp_path):
    def digest(root):
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()

    a = write_ptbxl_dataset(tmp_path / "a", num_records=3, seed=5)
    b = write_ptbxl_dataset(tmp_path / "b", num_records=3, seed=5)
    c = write_ptbxl_dataset(tmp_path / "c", num_records=3, seed=6)
    assert digest(a) == digest(b) != digest(c)


def test_synthetic_writer_writes_only_the_rates_asked_for(tmp_path):
    root = write_ptbxl_dataset(tmp_path, num_records=2, sampling_rates=(100,))
    assert not (root / "records500").exists()
    dataset = ptbxl.PtbXl(root)
    assert dataset.read(1, 100).signal.shape == (1000, 12)
    with pytest.raises(EcgFormatError, match="header file not found") as err:
        dataset.read(1, 500)
    assert err.value.path.endswith("records500/00000/00001_hr.hea")


def test_dataset_pickles(synthetic_root):
    dataset = pickle.loads(pickle.dumps(ptbxl.PtbXl(synthetic_root)))
    assert dataset.read(2, 100).record_id == "2"


# --- Bad signal files -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return write_ptbxl_dataset(tmp_path_factory.mktemp("small"), num_records=3, seed=3)


@pytest.fixture
def broken_root(small_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(small_root, root)
    return root


def _header(root, ecg_id=2):
    return root / "records500" / "00000" / f"{ecg_id:05d}_hr.hea"


def _replace_in_header(root, old, new, count=1):
    path = _header(root)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))
    return path


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-2000])
    return path


def _lengthen(path):
    path.write_bytes(path.read_bytes() + b"\0\0" * 12)
    return path


def _invalid_sample(root):
    """Rewrites record 2 with WFDB's invalid sample (-32768) at sample 100 of aVL (header kept
    consistent: wfdb computes the checksums)."""
    record = wfdb.rdrecord(str(_dat(root).with_suffix("")), physical=False)
    d_signal = record.d_signal.copy()
    d_signal[100, 4] = -32768
    _write_wfdb(_dat(root).with_suffix(""), d_signal, 500)
    return _dat(root)


def _corrupt_bytes(path):
    """Flips two bytes in the middle of a .dat; its size stays right."""
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    data[5001] ^= 0x0F
    path.write_bytes(bytes(data))
    return path


def _dat(root):
    return _header(root).with_suffix(".dat")


BAD_FILES = {
    "truncated .dat": (lambda root: _truncate(_dat(root)), "truncated: 118000 bytes"),
    "longer .dat": (lambda root: _lengthen(_dat(root)), "longer than its header"),
    "missing .hea": (lambda root: _header(root).unlink() or _header(root), "header file not"),
    "missing .dat": (lambda root: _dat(root).unlink() or _dat(root), "signal file not found"),
    "unknown lead": (lambda root: _replace_in_header(root, " V6\n", " V7\n"), "'V7'"),
    "header length": (
        lambda root: _replace_in_header(root, "00002_hr 12 500 5000", "00002_hr 12 500 4000"),
        "4000 samples, expected 5000",
    ),
    "rate vs folder": (
        lambda root: _replace_in_header(root, "00002_hr 12 500 5000", "00002_hr 12 100 5000"),
        "sampling rate 100",
    ),
    "units": (lambda root: _replace_in_header(root, "/mV", "/uV", 12), "expected mV"),
    "invalid sample": (_invalid_sample, "non-finite samples (NaN/Inf), first at sample 100 of"),
    # wfdb.rdheader reads a gain that is missing or 0 as 200/mV: 5x too large, no error.
    "missing gain": (lambda root: _replace_in_header(root, "1000.0(0)/mV", "(0)/mV"), "gain"),
    "zero gain": (lambda root: _replace_in_header(root, "1000.0(0)/mV", "0(0)/mV"), "gain"),
    "corrupted bytes": (lambda root: _corrupt_bytes(_dat(root)), "checksum"),
    "format": (lambda root: _replace_in_header(root, ".dat 16 ", ".dat 212 "), "format '212'"),
    # A checksum too large for int64 used to escape as OverflowError.
    "huge checksum": (lambda root: _set_checksum(root, "9" * 30), "is not a 16-bit sum"),
    "gain 1/mV": (
        lambda root: _replace_in_header(root, "1000.0(0)/mV", "1.0(0)/mV", 12) and _dat(root),
        "beyond ±50 mV",
    ),
    "infinite gain": (
        lambda root: _replace_in_header(root, "1000.0(0)/mV", "1e999(0)/mV"),
        "not positive and finite",
    ),
    "signal file path": (
        lambda root: _replace_in_header(root, "00002_hr.dat", "../00002_hr.dat", 12),
        "is not a file name in the header's folder",
    ),
    "all zeros": (lambda root: _all_zeros(root), "every lead is constant"),
    "fifo .dat": (lambda root: _fifo(_dat(root)), "FIFO, socket or device"),
}


def _set_checksum(root, checksum):
    """Sets lead I's checksum field (the 7th of its signal line) in record 2's header."""
    path = _header(root)
    lines = path.read_text().splitlines()
    fields = lines[1].split(" ")
    fields[6] = checksum
    lines[1] = " ".join(fields)
    path.write_text("\n".join(lines) + "\n")
    return path


def _all_zeros(root):
    _write_wfdb(_dat(root).with_suffix(""), np.zeros((5000, 12), np.int16), 500)
    return _dat(root)


def _fifo(path):
    path.unlink()
    os.mkfifo(path)  # reading it would block forever
    return path


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_signal_files_raise_naming_the_file(case, broken_root):
    corrupt, problem = BAD_FILES[case]
    path = corrupt(broken_root)
    dataset = ptbxl.PtbXl(broken_root)
    with pytest.raises(EcgFormatError, match=re.escape(problem)) as err:
        dataset.read(2, 500)
    assert err.value.path == str(path)
    assert dataset.read(1, 500).signal.shape == (5000, 12)  # the other records stay readable


def test_wrong_lead_count_raises_naming_the_header(broken_root):
    path = broken_root / "records500" / "00000" / "00002_hr"
    _write_wfdb(path, np.zeros((5000, 11), np.int16), 500, names=PTBXL_NAMES[:11])
    with pytest.raises(EcgFormatError, match="11 signals, expected 12") as err:
        ptbxl.PtbXl(broken_root).read(2)
    assert err.value.path == str(path) + ".hea"


def test_skip_mode_yields_the_good_records_and_counts_the_bad(broken_root):
    _truncate(_dat(broken_root))
    (broken_root / "records500" / "00000" / "00003_hr.hea").unlink()
    skip_log = SkipLog()
    records = list(ptbxl.PtbXl(broken_root).iter_records("skip", skip_log))
    assert [r.record_id for r in records] == ["1"]
    assert [pathlib.Path(where).name for where, _ in skip_log.skipped] == [
        "00002_hr.dat",
        "00003_hr.hea",
    ]
    with pytest.raises(EcgFormatError):
        list(ptbxl.PtbXl(broken_root).iter_records())


def test_missing_gain_in_the_reviewers_header_is_refused_not_read_5x_too_large(broken_root):
    # Line 2 of 00001_hr.hea (lead I) with its gain left out: WFDB's default would be 200/mV.
    path = broken_root / "records500" / "00000" / "00001_hr.hea"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("1000.0(0)/mV", "(0)/mV")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EcgFormatError, match=r"line 2: unreadable gain '\(0\)/mV'") as err:
        ptbxl.PtbXl(broken_root).read(1)
    assert err.value.path == str(path)


def test_skip_mode_keeps_its_own_skip_log_when_none_is_given(head_root):
    _edit_database(
        head_root, lambda s: s.replace("{'NORM': 80.0, 'SBRAD': 0.0}", "{'NOPE': 80.0}", 1)
    )
    dataset = ptbxl.PtbXl(head_root, on_error="skip")
    assert len(dataset) == 520 and len(dataset.skip_log) == 1
    assert "NOPE" in dataset.skip_log.skipped[0][1]


def test_iter_records_skips_into_the_datasets_skip_log_by_default(broken_root):
    _truncate(_dat(broken_root))
    dataset = ptbxl.PtbXl(broken_root)
    records = list(dataset.iter_records("skip"))
    assert [r.record_id for r in records] == ["1", "3"]
    assert [pathlib.Path(where).name for where, _ in dataset.skip_log.skipped] == ["00002_hr.dat"]


def test_on_error_typo_is_refused_before_anything_is_read(head_root):
    with pytest.raises(ValueError, match="on_error"):
        ptbxl.PtbXl(head_root, on_error="Skip")
    with pytest.raises(ValueError, match="on_error"):
        ptbxl.PtbXl(head_root).iter_records("Skip")


def _lines(root):
    return (root / ptbxl.DATABASE_FILE).read_text().splitlines(keepends=True)


def test_malformed_database_row_names_its_line_or_is_skipped(head_root):
    lines = _lines(head_root)
    lines[3] = lines[3].rstrip("\n") + ",extra\n"  # ecg_id 3 gets a 29th field
    (head_root / ptbxl.DATABASE_FILE).write_text("".join(lines))
    with pytest.raises(EcgFormatError, match="line 4: has 29 fields, the header has 28"):
        ptbxl.PtbXl(head_root)
    dataset = ptbxl.PtbXl(head_root, on_error="skip")
    assert len(dataset) == 520 and "3" not in dataset.record_ids
    assert dataset.record_ids[:3] == ("1", "2", "4")
    assert len(dataset.skip_log) == 1


def test_database_rows_that_are_not_utf8_name_their_line_or_are_skipped(head_root):
    path = head_root / ptbxl.DATABASE_FILE
    lines = path.read_bytes().split(b"\n")
    for k in (3, 200):  # ecg_ids 3 and 201 get a Latin-1 byte in their report
        lines[k] = lines[k].replace(b",", b",\xe4", 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(EcgFormatError, match="line 4: not UTF-8 text") as err:
        ptbxl.PtbXl(head_root)
    assert err.value.path == str(path)
    dataset = ptbxl.PtbXl(head_root, on_error="skip")
    assert dataset.skip_log.skipped == [
        (str(path), "line 4: not UTF-8 text"),
        (str(path), "line 201: not UTF-8 text"),
    ]
    assert len(dataset) == 519 and "3" not in dataset.record_ids and "4" in dataset.record_ids


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda line: "x" + line, "line 3: ecg_id 'x2' is not a positive integer"),
        (lambda line: "1" + line[1:], "line 3: ecg_id 1 repeats line 2"),
    ],
)
def test_bad_or_repeated_ecg_id_names_its_line_or_is_skipped(head_root, edit, problem):
    lines = _lines(head_root)
    assert lines[2].startswith("2,")
    lines[2] = edit(lines[2])
    (head_root / ptbxl.DATABASE_FILE).write_text("".join(lines))
    with pytest.raises(EcgFormatError, match=re.escape(problem)):
        ptbxl.PtbXl(head_root)
    dataset = ptbxl.PtbXl(head_root, on_error="skip")
    assert len(dataset) == 520 and dataset.record_ids[:2] == ("1", "3")
    assert problem in dataset.skip_log.skipped[0][1]


def test_database_without_ecg_id_column_says_so(head_root):
    path = _edit_database(head_root, lambda s: s.replace("ecg_id,", "ecg,", 1))
    with pytest.raises(EcgFormatError, match=r"missing columns \['ecg_id'\]") as err:
        ptbxl.PtbXl(head_root)
    assert err.value.path == str(path)


def test_database_filename_outside_the_dataset_folder_is_refused(broken_root):
    _edit_database(
        broken_root, lambda text: text.replace("records500/00000/00002_hr", "../../etc/00002_hr")
    )
    dataset = ptbxl.PtbXl(broken_root)
    with pytest.raises(EcgFormatError, match="is not a path inside the dataset folder") as err:
        dataset.read(2, 500)
    assert err.value.path == str(broken_root / ptbxl.DATABASE_FILE)


def test_scp_statements_that_are_not_utf8_name_the_line(head_root):
    path = head_root / ptbxl.SCP_STATEMENTS_FILE
    lines = path.read_bytes().split(b"\n")
    lines[5] = lines[5].replace(b",", b"\xff,", 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(EcgFormatError, match="line 6: not UTF-8 text") as err:
        ptbxl.PtbXl(head_root)
    assert err.value.path == str(path)
