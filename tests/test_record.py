"""The shared record helpers: skip-or-raise handling, the one sex/age parser of all readers, and
the one plausibility rule every reader applies to the signal of every record it builds."""

import re

import numpy as np
import pytest

from ecgfm.data.record import (
    MAX_ABS_MV,
    EcgFormatError,
    EcgRecord,
    SkipLog,
    check_on_error,
    check_signal,
    handle_bad_record,
    parse_age,
    parse_sex,
    read_each,
)


def _record(record_id: str) -> EcgRecord:
    return EcgRecord(np.zeros((10, 12), np.float32), 500.0, record_id, "test")


@pytest.mark.parametrize("typo", ["Skip", "skipp", "ignore", ""])
def test_on_error_other_than_raise_or_skip_is_refused(typo):
    error = EcgFormatError("x.hea", "bad")
    with pytest.raises(ValueError, match="on_error"):
        handle_bad_record(error, typo, SkipLog())
    with pytest.raises(ValueError, match="on_error"):
        check_on_error(typo)
    assert check_on_error("skip") == "skip" and check_on_error("raise") == "raise"


def test_read_each_checks_its_arguments_before_reading_anything():
    read = []

    def reader(record_id):
        read.append(record_id)
        return _record(record_id)

    with pytest.raises(ValueError, match="on_error"):
        read_each(reader, ["a", "b"], "Skip", SkipLog())
    with pytest.raises(ValueError, match="SkipLog"):
        read_each(reader, ["a", "b"], "skip", None)
    assert read == []


def test_read_each_skips_and_counts_bad_records():
    def reader(record_id):
        if record_id == "b":
            raise EcgFormatError("b.mat", "truncated")
        return _record(record_id)

    skip_log = SkipLog()
    records = list(read_each(reader, ["a", "b", "c"], "skip", skip_log))
    assert [r.record_id for r in records] == ["a", "c"]
    assert skip_log.skipped == [("b.mat", "truncated")]
    with pytest.raises(EcgFormatError, match="truncated"):
        list(read_each(reader, ["a", "b", "c"]))


@pytest.mark.parametrize(
    ("text", "sex"),
    [("Male", "M"), ("female", "F"), (" M ", "M"), ("f", "F"), ("Unknown", None), ("", None),
     (None, None), ("NaN", None)],
)  # fmt: skip
def test_sex_words_as_files_spell_them(text, sex):
    assert parse_sex(text, "x.hea") == sex


def test_unreadable_sex_names_file_and_field():
    with pytest.raises(EcgFormatError, match="'# Sex:' is 'X'") as info:
        parse_sex("X", "x.hea", "'# Sex:'")
    assert info.value.path == "x.hea"


@pytest.mark.parametrize(
    ("value", "age"),
    [("48", 48.0), (48.5, 48.5), (0, 0.0), (150, 150.0), ("NaN", None), (float("nan"), None),
     ("Unknown", None), ("", None), (None, None)],
)  # fmt: skip
def test_ages_in_years(value, age):
    assert parse_age(value, "x.hea") == age


@pytest.mark.parametrize(("value", "problem"), [("old", "not a number"), (-1, "0-150"),
                                                (300, "0-150"), (151, "0-150")])  # fmt: skip
def test_ages_outside_0_to_150_or_not_numbers_are_refused(value, problem):
    # PTB-XL's 300 ("over 89") is a code the reader maps before calling parse_age.
    with pytest.raises(EcgFormatError, match=problem) as info:
        parse_age(value, "x.hea", "'# Age:'")
    assert info.value.path == "x.hea" and "'# Age:'" in info.value.problem


def _ecg(num_samples: int = 500) -> np.ndarray:
    """`[T, 12]` float64 1 mV sine waves, a different phase per lead."""
    return np.sin(np.linspace(0, 20, num_samples)[:, None] + np.arange(12))


def test_plausible_signal_comes_back_as_contiguous_float32_unchanged():
    signal = _ecg()
    checked = check_signal(signal.T.T, "x.mat")  # a Fortran-ordered view, as loadmat gives
    assert checked.dtype == np.float32 and checked.flags.c_contiguous
    np.testing.assert_array_equal(checked, signal.astype(np.float32))


def test_amplitude_bound_is_50_mv_inclusive():
    assert MAX_ABS_MV == 50.0
    signal = _ecg()
    signal[10, 3] = -50.0
    check_signal(signal, "x.mat")
    signal[10, 3] = -50.001
    with pytest.raises(EcgFormatError, match=r"1 samples beyond ±50 mV .* sample 10 of lead aVR"):
        check_signal(signal, "x.mat")


@pytest.mark.parametrize(("scale", "shown"), [(1000.0, "up to 1000 mV"), (1e30, "up to 1e+30 mV")])
def test_signal_in_the_wrong_units_or_garbage_is_refused(scale, shown):
    # CODE tracings ×1000 or ×1e30 used to pass and end as "loss is nan at step 1".
    with pytest.raises(EcgFormatError, match=re.escape(f"beyond ±50 mV ({shown})")) as info:
        check_signal(_ecg() * scale, "exams_part3.hdf5")
    assert info.value.path == "exams_part3.hdf5" and "wrong units" in info.value.problem


def test_float64_beyond_float32_range_is_refused_not_turned_into_inf():
    # A CPSC float64 above 3.4e38 passed the NaN/Inf check and became inf in the float32 cast.
    signal = _ecg()
    signal[7, 0] = 3.5e38
    with pytest.raises(EcgFormatError, match=r"up to 3\.5e\+38 mV\), first at sample 7 of lead I"):
        check_signal(signal, "A0001.mat")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_sample_is_refused_with_its_position(bad):
    signal = _ecg()
    signal[42, 11] = bad
    with pytest.raises(EcgFormatError, match=r"1 non-finite samples .* sample 42 of lead V6"):
        check_signal(signal, "x.mat")


@pytest.mark.parametrize("level", [0.0, 0.7, -3.0])
def test_record_whose_every_lead_is_constant_is_refused(level):
    with pytest.raises(
        EcgFormatError, match=f"every lead is constant over its 500 samples \\(at {level:g} mV\\)"
    ):
        check_signal(np.full((500, 12), level), "x.mat")


def test_leads_each_constant_at_their_own_level_are_still_a_flat_record():
    with pytest.raises(EcgFormatError, match="every lead is constant"):
        check_signal(np.tile(np.arange(12.0) / 10, (500, 1)), "x.mat")


def test_a_few_flat_leads_pass_and_one_varying_sample_makes_a_record():
    signal = _ecg()
    signal[:, [0, 5, 9]] = 0.0  # electrodes off: the record keeps its other leads
    check_signal(signal, "x.mat")
    almost_flat = np.zeros((500, 12))
    almost_flat[123, 4] = 0.01  # between the samples the quick test compares
    check_signal(almost_flat, "x.mat")


def test_single_sample_record_is_flat_and_empty_one_has_no_samples():
    with pytest.raises(EcgFormatError, match="every lead is constant over its 1 samples"):
        check_signal(_ecg()[:1], "x.mat")
    with pytest.raises(EcgFormatError, match="no samples"):
        check_signal(_ecg()[:0], "x.mat")


def test_integer_samples_are_checked_as_numbers_and_text_is_refused():
    digital = (_ecg() * 1000).astype(np.int16)
    digital[0, 0] = -32768  # abs() of the smallest int16 overflows in int16 arithmetic
    with pytest.raises(EcgFormatError, match=r"up to 3\.277e\+04 mV"):
        check_signal(digital, "x.mat")
    with pytest.raises(EcgFormatError, match="expected real numbers"):
        check_signal(np.full((5, 12), "a"), "x.mat")
