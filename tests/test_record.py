"""The shared record helpers: skip-or-raise handling, and the one sex/age parser of all readers."""

import numpy as np
import pytest

from ecgfm.data.record import (
    EcgFormatError,
    EcgRecord,
    SkipLog,
    check_on_error,
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
