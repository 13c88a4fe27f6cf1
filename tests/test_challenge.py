"""PhysioNet/CinC Challenge layout (.hea + MATLAB v4 .mat), its SNOMED-CT vocabulary and CPSC."""

import re
import shutil

import numpy as np
import pytest
import scipy.io

from ecgfm.data.challenge import (
    CHALLENGE_EQUIVALENT_CODES,
    ChallengeDataset,
    challenge_vocabulary,
    dataset_of,
    load_dx_mapping,
    read_challenge_record,
    snomed_to_cpsc,
    validate_codes,
)
from ecgfm.data.cpsc2018 import CPSC_CLASSES, CPSC_TO_SNOMED, Cpsc2018
from ecgfm.data.record import LEADS, EcgFormatError, SkipLog
from ecgfm.data.synthetic.cpsc2018 import write_challenge_records, write_cpsc2018_dataset

REAL_IDS = [f"{prefix}{n}" for prefix in ("E0750", "HR0600", "JS2000") for n in range(5)]


@pytest.fixture
def record_copy(real_data, tmp_path):
    """A writable copy of HR06000 (.hea + .mat); returns the header path."""
    for suffix in (".hea", ".mat"):
        shutil.copy(real_data / "cinc2021" / f"HR06000{suffix}", tmp_path)
    return tmp_path / "HR06000.hea"


def _edit_header(header, old, new, count=1):
    text = header.read_text()
    assert old in text
    header.write_text(text.replace(old, new, count))


@pytest.mark.parametrize("record_id", REAL_IDS)
def test_real_record_is_val_over_1000_in_header_lead_order(real_data, record_id):
    path = real_data / "cinc2021" / f"{record_id}.hea"
    record = read_challenge_record(path)
    val = scipy.io.loadmat(real_data / "cinc2021" / f"{record_id}.mat")["val"]
    assert val.dtype == np.int16 and val.shape == (12, 5000)
    assert record.signal.shape == (5000, 12)
    assert record.sampling_rate == 500.0
    # The headers list the leads in canonical order with gain 1000/mV and baseline 0.
    header_leads = [line.split()[-1] for line in path.read_text().splitlines()[1:13]]
    assert tuple(header_leads) == LEADS
    np.testing.assert_array_equal(record.signal, (val.T / 1000.0).astype(np.float32))
    assert (record.record_id, record.source, record.derived_leads) == (record_id, "challenge", ())


def test_real_header_comments_give_codes_age_sex(real_data):
    cinc = real_data / "cinc2021"
    hr = read_challenge_record(cinc / "HR06000.mat")
    assert hr.labels == ("164934002", "426783006")
    assert (hr.age, hr.sex) == (59.0, "F")
    assert hr.metadata["comments"] == {"Rx": "Unknown", "Hx": "Unknown", "Sx": "Unknown"}
    georgia = read_challenge_record(cinc / "E07500")
    assert georgia.labels == ("426177001", "67741000119109")
    assert (georgia.age, georgia.sex) == (78.0, "M")
    ningbo = read_challenge_record(cinc / "JS20004.hea")
    assert ningbo.labels == ("284470004", "427084000", "427172004", "55827005")
    assert (ningbo.age, ningbo.sex) == (89.0, "M")


def test_real_records_name_their_original_dataset(real_data):
    datasets = {r.record_id: r.metadata["dataset"] for r in
                ChallengeDataset(real_data / "cinc2021").iter_records()}  # fmt: skip
    assert {datasets[f"HR0600{i}"] for i in range(5)} == {"ptbxl"}
    assert {datasets[f"E0750{i}"] for i in range(5)} == {"georgia"}
    # JS numbers one release: up to JS10646 Chapman-Shaoxing, then Ningbo.
    assert {datasets[f"JS2000{i}"] for i in range(5)} == {"ningbo"}


@pytest.mark.parametrize(
    ("record_id", "dataset"),
    [
        ("A0001", "cpsc2018"),
        ("Q0001", "cpsc2018-extra"),
        ("I0001", "incart"),
        ("S0001", "ptb"),
        ("HR00001", "ptbxl"),
        ("E00001", "georgia"),
        ("JS00001", "chapman-shaoxing"),
        ("JS10646", "chapman-shaoxing"),
        ("JS10647", "ningbo"),
        ("X0001", None),
        ("record", None),
    ],
)
def test_dataset_of_record_prefix(record_id, dataset):
    assert dataset_of(record_id) == dataset


def test_every_real_code_is_in_the_challenge_vocabulary(real_data):
    dataset = ChallengeDataset(real_data / "cinc2021")
    assert len(dataset) == 15
    assert len(list(dataset.iter_records())) == 15


def test_shipped_tables_are_the_published_files(real_data):
    from importlib.resources import files

    for name in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        shipped = (files("ecgfm") / "resources" / name).read_bytes()
        assert shipped == (real_data / "cinc_scoring" / name).read_bytes()


def test_dx_mapping_counts_are_the_published_figures():
    mapping = load_dx_mapping()
    assert len(mapping) == 30 + 103
    assert mapping["scored"].sum() == 30
    # Figures read off dx_mapping_scored.csv / dx_mapping_unscored.csv.
    assert mapping.loc["164889003", "CPSC"] == 1221  # AF
    assert mapping.loc["164889003", "Total"] == 5255
    assert mapping.loc["426783006", "CPSC"] == 918  # sinus rhythm = CPSC Normal
    assert mapping.loc["426783006", "PTB_XL"] == 18092
    assert mapping.loc["164884008", "CPSC"] == 700  # ventricular ectopics = CPSC PVC
    assert mapping.loc["429622005", "CPSC"] == 869  # STD
    assert mapping.loc["59118001", "Chapman_Shaoxing"] == 454  # RBBB
    assert mapping.loc["733534002", "Notes"].startswith("We score 733534002 and 164909002")
    assert mapping.loc["164931005", "Notes"] == ""


def test_dx_mapping_reads_given_files(real_data):
    scoring = real_data / "cinc_scoring"
    given = load_dx_mapping(scoring / "dx_mapping_scored.csv", scoring / "dx_mapping_unscored.csv")
    assert given.equals(load_dx_mapping())


def test_dx_mapping_with_a_bad_code_names_the_file(real_data, tmp_path):
    bad = tmp_path / "dx_mapping_unscored.csv"
    text = (real_data / "cinc_scoring" / "dx_mapping_unscored.csv").read_text()
    bad.write_text(text.replace("233892002", "23389x002"))
    with pytest.raises(EcgFormatError, match="23389x002") as info:
        load_dx_mapping(real_data / "cinc_scoring" / "dx_mapping_scored.csv", bad)
    assert info.value.path == str(bad)


def test_cpsc_classes_have_the_challenge_snomed_codes():
    mapping = load_dx_mapping()
    abbreviations = {name: mapping.loc[code, "Abbreviation"] for name, code in
                     CPSC_TO_SNOMED.items()}  # fmt: skip
    assert abbreviations == {
        "Normal": "NSR",
        "AF": "AF",
        "I-AVB": "IAVB",
        "LBBB": "LBBB",
        "RBBB": "RBBB",
        "PAC": "PAC",
        "PVC": "VEB",  # "ventricular ectopics", not the scored PVC 427172004
        "STD": "STD",
        "STE": "STE",
    }
    unscored = {name for name, code in CPSC_TO_SNOMED.items() if not mapping.loc[code, "scored"]}
    assert unscored == {"PVC", "STD", "STE"}
    # Every CPSC class has records in the CPSC column of the tables.
    assert all(mapping.loc[code, "CPSC"] > 0 for code in CPSC_TO_SNOMED.values())
    assert mapping.loc["427172004", "CPSC"] == 0


def test_equivalent_codes_are_those_of_the_notes():
    notes = load_dx_mapping()["Notes"]
    pairs = {
        frozenset(re.fullmatch(r"We score (\d+) and (\d+) as the same diagnosis\.?", n).groups())
        for n in notes
        if n
    }
    assert pairs == set(CHALLENGE_EQUIVALENT_CODES)


@pytest.mark.parametrize(
    ("codes", "classes"),
    [
        (["426783006"], ("Normal",)),
        (["59118001", "164889003"], ("AF", "RBBB")),
        (["713427006"], ("RBBB",)),  # CRBBB scored as RBBB
        (["733534002"], ("LBBB",)),  # CLBBB scored as LBBB
        (["63593006"], ("PAC",)),  # SVPB scored as PAC
        (["164884008", "429622005", "164931005", "270492004"], ("I-AVB", "PVC", "STD", "STE")),
        (["427172004"], ()),  # scored PVC code is not CPSC's PVC
        (["427084000", "164934002"], ()),
    ],
)
def test_snomed_to_cpsc(codes, classes):
    assert snomed_to_cpsc(codes) == classes


def test_validate_codes_rejects_unknown_code():
    vocabulary = challenge_vocabulary()
    validate_codes(["426783006", "164884008"], vocabulary, "x.hea")
    with pytest.raises(EcgFormatError, match="999999999") as info:
        validate_codes(["426783006", "999999999"], vocabulary, "x.hea")
    assert info.value.path == "x.hea"


def test_code_not_in_vocabulary_raises_or_is_skipped(record_copy):
    _edit_header(record_copy, "# Dx: 164934002,426783006", "# Dx: 164934002,999999999")
    dataset = ChallengeDataset(record_copy.parent)
    with pytest.raises(EcgFormatError, match="999999999") as info:
        dataset.read("HR06000")
    assert info.value.path == str(record_copy)
    skip_log = SkipLog()
    assert list(dataset.iter_records(on_error="skip", skip_log=skip_log)) == []
    assert len(skip_log) == 1
    unchecked = ChallengeDataset(record_copy.parent, check_codes=False).read("HR06000")
    assert unchecked.labels == ("164934002", "999999999")


def test_header_with_11_leads_against_mat_with_12(record_copy):
    text = record_copy.read_text()
    record_copy.write_text(
        text.replace("HR06000 12 500", "HR06000 11 500").replace(text.splitlines()[12] + "\n", "")
    )
    with pytest.raises(
        EcgFormatError, match=re.escape("'val' has 12 leads but HR06000.hea lists 11")
    ) as info:
        read_challenge_record(record_copy)
    assert info.value.path == str(record_copy.with_suffix(".mat"))


def test_signal_line_count_must_match_record_line(record_copy):
    text = record_copy.read_text()
    record_copy.write_text(text.replace(text.splitlines()[12] + "\n", ""))
    with pytest.raises(EcgFormatError, match="says 12 leads but 11 signal lines") as info:
        read_challenge_record(record_copy)
    assert info.value.path == str(record_copy)


def test_header_sample_count_mismatch(record_copy):
    _edit_header(record_copy, "HR06000 12 500 5000", "HR06000 12 500 4999")
    with pytest.raises(EcgFormatError, match=re.escape("5000 samples but HR06000.hea says 4999")):
        read_challenge_record(record_copy)


def test_unknown_lead_name(record_copy):
    _edit_header(record_copy, " V6\n", " V7\n")
    with pytest.raises(EcgFormatError, match="unknown lead name 'V7'") as info:
        read_challenge_record(record_copy)
    assert info.value.path == str(record_copy)


def test_leads_in_another_order_are_reordered(record_copy):
    val = scipy.io.loadmat(record_copy.with_suffix(".mat"))["val"]
    text = record_copy.read_text().splitlines()
    # Swap I and II in both the header and the signal: the record must not change.
    text[1], text[2] = text[2], text[1]
    record_copy.write_text("\n".join(text) + "\n")
    scipy.io.savemat(
        record_copy.with_suffix(".mat"), {"val": val[[1, 0, *range(2, 12)]]}, format="4"
    )
    record = read_challenge_record(record_copy)
    np.testing.assert_array_equal(record.lead("I"), (val[0] / 1000.0).astype(np.float32))
    np.testing.assert_array_equal(record.lead("II"), (val[1] / 1000.0).astype(np.float32))


def test_gain_and_baseline_give_millivolts(record_copy):
    val = scipy.io.loadmat(record_copy.with_suffix(".mat"))["val"]
    _edit_header(record_copy, "1000.0(0)/mv", "500.0(-20)/mv")
    record = read_challenge_record(record_copy)
    np.testing.assert_allclose(record.lead("I"), (val[0] + 20) / 500.0, rtol=1e-6)
    np.testing.assert_array_equal(record.lead("II"), (val[1] / 1000.0).astype(np.float32))


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("1000.0(0)/mv", "abc/mv", "unreadable gain"),
        ("1000.0(0)/mv", "1000.0(0)/uV", "units 'uV'"),
        ("1000.0(0)/mv", "0(0)/mv", "not positive"),
        ("1000.0(0)/mv", "(0)/mv", "unreadable gain '(0)/mv'"),
        ("16x1+24", "16x2+24", "format '16x2+24'"),
        ("16x1+24", "212", "format '212'"),
        ("HR06000 12 500 5000", "HR06000 12 x 5000", "unreadable record line"),
        ("HR06000 12 500 5000", "HR06000 12 500", "lacks"),
        ("HR06000 12 500 5000", "HR06001 12 500 5000", "header is for record 'HR06001'"),
        (" 10 23323 0 I\n", " 10 23324 0 I\n", "lead I: checksum 23323 differs"),
        # Used to escape as OverflowError from numpy's int64.
        (" 10 23323 0 I\n", " 10 99999999999999999999999 0 I\n", "is not a 16-bit sum"),
        ("1000.0(0)/mv", "1e400(0)/mv", "gain '1e400(0)/mv' is not positive and finite"),
        ("HR06000 12 500 5000", "HR06000 12 inf 5000", "sampling rate over 100000 Hz"),
        ("HR06000 12 500 5000", "HR06000 100 500 5000", "or over 64 leads"),
        ("# Age: 59", "# Age: old", "Age"),
        ("# Sex: Female", "# Sex: X", "Sex"),
        ("# Dx: 164934002,426783006", "# Dx: Unknown", "Dx"),
        ("# Dx: 164934002,426783006", "# Rx: Unknown", "given twice"),
    ],
)
def test_bad_header_field_names_the_header(record_copy, old, new, problem):
    _edit_header(record_copy, old, new)
    with pytest.raises(EcgFormatError, match=re.escape(problem)) as info:
        read_challenge_record(record_copy)
    assert info.value.path in (str(record_copy), str(record_copy.with_suffix(".mat")))


@pytest.mark.parametrize(
    ("age", "sex", "expected"),
    [
        ("NaN", "Unknown", (None, None)),
        ("Unknown", "M", (None, "M")),
        ("48.0", "female", (48.0, "F")),
    ],
)
def test_unknown_age_and_sex_become_none(record_copy, age, sex, expected):
    _edit_header(record_copy, "# Age: 59", f"# Age: {age}")
    _edit_header(record_copy, "# Sex: Female", f"# Sex: {sex}")
    record = read_challenge_record(record_copy)
    assert (record.age, record.sex) == expected


def test_truncated_mat_names_the_file(record_copy):
    mat = record_copy.with_suffix(".mat")
    mat.write_bytes(mat.read_bytes()[:60000])
    with pytest.raises(EcgFormatError, match="truncated") as info:
        read_challenge_record(record_copy)
    assert info.value.path == str(mat)


def test_missing_mat_is_reported_and_skippable(record_copy):
    record_copy.with_suffix(".mat").unlink()
    with pytest.raises(EcgFormatError, match="signal file is missing"):
        read_challenge_record(record_copy)
    skip_log = SkipLog()
    assert list(ChallengeDataset(record_copy.parent).iter_records("skip", skip_log)) == []
    assert skip_log.skipped == [(str(record_copy.with_suffix(".mat")), "signal file is missing")]


def test_mat_without_header_is_reported(record_copy):
    record_copy.unlink()
    dataset = ChallengeDataset(record_copy.parent)
    assert dataset.record_ids == ("HR06000",)
    with pytest.raises(EcgFormatError, match="header file not found"):
        dataset.read("HR06000")


def test_nan_in_mat_is_rejected(record_copy):
    val = scipy.io.loadmat(record_copy.with_suffix(".mat"))["val"].astype(np.float64)
    val[3, 17] = np.nan
    scipy.io.savemat(record_copy.with_suffix(".mat"), {"val": val}, format="4")
    with pytest.raises(EcgFormatError, match="sample 17 of lead aVR"):
        read_challenge_record(record_copy)


def test_synthetic_challenge_copy_matches_the_original_layout(tmp_path):
    original = Cpsc2018(write_cpsc2018_dataset(tmp_path / "cpsc", num_records=4, seed=2))
    challenge = ChallengeDataset(write_challenge_records(tmp_path / "cinc", num_records=4, seed=2))
    assert challenge.record_ids == original.record_ids
    for a, b in zip(original.iter_records(), challenge.iter_records(), strict=True):
        assert snomed_to_cpsc(b.labels) == tuple(n for n in CPSC_CLASSES if n in a.labels)
        assert (b.age, b.sex, b.sampling_rate) == (a.age, a.sex, 500.0)
        assert b.metadata["dataset"] == "cpsc2018"
        # int16 at 1000/mV: within half a digital unit (0.5 µV).
        np.testing.assert_allclose(b.signal, a.signal, atol=0.5e-3 + 1e-7)


def test_ptbxl_age_300_gives_no_age_as_the_ptbxl_reader_reads_it(record_copy):
    # HR records are PTB-XL's, whose ages over 89 are written as 300.
    _edit_header(record_copy, "# Age: 59", "# Age: 300")
    record = read_challenge_record(record_copy)
    assert record.age is None and record.metadata["age_over_89"] is True
    assert read_challenge_record(record_copy.parent / "HR06000").metadata["dataset"] == "ptbxl"
    _edit_header(record_copy, "# Age: 300", "# Age: 89")
    record = read_challenge_record(record_copy)
    assert record.age == 89.0 and record.metadata["age_over_89"] is False


def test_age_300_outside_ptbxl_is_refused_like_cpsc_does(real_data, tmp_path):
    for suffix in (".hea", ".mat"):
        shutil.copy(real_data / "cinc2021" / f"E07500{suffix}", tmp_path)
    header = tmp_path / "E07500.hea"
    age_line = next(line for line in header.read_text().splitlines() if line.startswith("# Age"))
    _edit_header(header, age_line, "# Age: 300")
    with pytest.raises(EcgFormatError, match=r"'# Age:' is '300', not an age in years") as info:
        read_challenge_record(header)
    assert info.value.path == str(header)
    assert "age_over_89" not in read_challenge_record(real_data / "cinc2021" / "E07501").metadata


def test_iter_records_skips_into_the_datasets_skip_log_by_default(record_copy):
    record_copy.with_suffix(".mat").unlink()
    dataset = ChallengeDataset(record_copy.parent)
    assert list(dataset.iter_records("skip")) == []
    assert dataset.skip_log.skipped == [
        (str(record_copy.with_suffix(".mat")), "signal file is missing")
    ]
    with pytest.raises(ValueError, match="on_error"):
        dataset.iter_records("Skip")
    with pytest.raises(ValueError, match="on_error"):
        ChallengeDataset(record_copy.parent, on_error="Skip")


def test_record_found_in_two_folders_raises_or_is_skipped(record_copy):
    other = record_copy.parent / "again"
    other.mkdir()
    shutil.copy(record_copy, other)
    with pytest.raises(EcgFormatError, match="repeats record HR06000"):
        ChallengeDataset(record_copy.parent)
    dataset = ChallengeDataset(record_copy.parent, on_error="skip")
    assert dataset.record_ids == ("HR06000",) and len(dataset.skip_log) == 1
    assert dataset.read("HR06000").record_id == "HR06000"


def test_signal_file_outside_the_headers_folder_is_refused(record_copy):
    _edit_header(record_copy, "HR06000.mat 16x1+24", "/dev/zero 16x1+24", count=12)
    with pytest.raises(EcgFormatError, match="'/dev/zero' is not a file name in the header's"):
        read_challenge_record(record_copy)


def _val(record_copy):
    return scipy.io.loadmat(record_copy.with_suffix(".mat"))["val"]


def test_val_stored_as_double_reads_as_int16_and_is_checksummed(record_copy):
    val = _val(record_copy)
    expected = read_challenge_record(record_copy).signal
    scipy.io.savemat(record_copy.with_suffix(".mat"), {"val": val.astype(np.float64)}, format="4")
    np.testing.assert_array_equal(read_challenge_record(record_copy).signal, expected)
    # A float val used to skip the checksum: one changed sample now fails it.
    changed = val.astype(np.float64)
    changed[0, 10] += 1
    scipy.io.savemat(record_copy.with_suffix(".mat"), {"val": changed}, format="4")
    with pytest.raises(EcgFormatError, match=r"lead I: checksum .* differs"):
        read_challenge_record(record_copy)


def test_val_that_is_not_int16_values_is_refused_with_its_position(record_copy):
    val = _val(record_copy).astype(np.float64)
    val[1, 7] += 0.5
    scipy.io.savemat(record_copy.with_suffix(".mat"), {"val": val}, format="4")
    with pytest.raises(EcgFormatError, match="1 float64 samples are not int16 values.*first "
                       r"-17\.5 at sample 7 of lead II"):  # fmt: skip
        read_challenge_record(record_copy)


def test_uint16_val_that_wrapped_negative_samples_is_refused(record_copy):
    # int16 samples saved as uint16 turn -1 into 65535: the mod-2**16 checksum still matches,
    # and the record used to read with samples up to 65 mV.
    val = _val(record_copy)
    assert val.min() < 0
    scipy.io.savemat(record_copy.with_suffix(".mat"), {"val": val.astype(np.uint16)}, format="4")
    with pytest.raises(EcgFormatError, match="uint16 samples are not int16 values") as info:
        read_challenge_record(record_copy)
    assert info.value.path == str(record_copy.with_suffix(".mat"))


def test_gain_that_makes_the_record_1000_times_too_large_is_refused(record_copy):
    _edit_header(record_copy, "1000.0(0)/mv", "1.0(0)/mv", count=12)
    with pytest.raises(EcgFormatError, match="beyond ±50 mV") as info:
        read_challenge_record(record_copy)
    assert info.value.path == str(record_copy.with_suffix(".mat"))


def test_all_zero_record_is_refused(record_copy):
    header = record_copy.read_text().splitlines()
    header[1:13] = [re.sub(r" -?\d+ -?\d+ 0 (\S+)$", r" 0 0 0 \1", line) for line in header[1:13]]
    record_copy.write_text("\n".join(header) + "\n")
    scipy.io.savemat(
        record_copy.with_suffix(".mat"), {"val": np.zeros((12, 5000), np.int16)}, format="4"
    )
    with pytest.raises(EcgFormatError, match="every lead is constant"):
        read_challenge_record(record_copy)
