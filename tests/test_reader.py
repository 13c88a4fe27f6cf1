"""The one reader interface: every dataset reader lists string ids, reads one, and iterates the
same way; in skip mode, iterating never breaks on a record that opening or reading refused."""

from __future__ import annotations

import csv
import pathlib
import shutil

import h5py
import numpy as np
import pytest

from ecgfm.data.challenge import ChallengeDataset
from ecgfm.data.code import CodeDataset
from ecgfm.data.cpsc2018 import Cpsc2018
from ecgfm.data.ptbxl import PtbXl
from ecgfm.data.reader import Reader
from ecgfm.data.record import EcgFormatError
from ecgfm.data.synthetic import write_dataset
from ecgfm.data.synthetic.cpsc2018 import write_challenge_records

READERS = {
    "code": CodeDataset,
    "ptbxl": PtbXl,
    "cpsc2018": Cpsc2018,
    "challenge": ChallengeDataset,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, pathlib.Path]:
    """A small synthetic folder per reader, in each dataset's own layout."""
    base = tmp_path_factory.mktemp("readers")
    return {
        "code": write_dataset("code", base / "code", num_records=12, seed=1),
        "ptbxl": write_dataset("ptbxl", base / "ptbxl", num_records=6, seed=1),
        "cpsc2018": write_dataset("cpsc2018", base / "cpsc2018", num_records=5, seed=1),
        "challenge": write_challenge_records(base / "challenge", num_records=5, seed=1),
    }


@pytest.mark.parametrize("name", sorted(READERS))
def test_every_reader_lists_string_ids_and_reads_each_as_it_iterates(name, folders):
    reader = READERS[name](folders[name])
    assert isinstance(reader, Reader)
    record_ids = list(reader.record_ids)
    assert record_ids and all(isinstance(r, str) for r in record_ids)
    assert len(reader) == len(record_ids) and record_ids[0] in reader.record_ids
    records = list(reader.iter_records())
    assert sorted(r.record_id for r in records) == sorted(record_ids)
    assert [r.record_id for r in reader] == [r.record_id for r in records]
    by_id = {r.record_id: r for r in records}
    for record_id in (record_ids[0], record_ids[-1]):
        again = reader.read(record_id)
        assert again.record_id == record_id
        np.testing.assert_array_equal(again.signal, by_id[record_id].signal)
        assert again.labels == by_id[record_id].labels
    assert reader.label_names, name
    assert all(set(r.labels) <= set(reader.label_names) for r in records)
    assert len(reader.skip_log) == 0


def _rewrite_csv(path: pathlib.Path, row: int, column: str, value: str) -> str:
    """Sets one cell of a CSV (data row `row`, 0-based); returns the row's first cell."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    rows[row + 1][rows[0].index(column)] = value
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    return rows[row + 1][0]


def _truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _break_code(root: pathlib.Path) -> tuple[str, str]:
    bad_row = _rewrite_csv(root / "exams.csv", 1, "age", "forty")
    with h5py.File(root / "exams_part0.hdf5", "r+") as f:
        f["tracings"][2] = 0  # all zeros: found only when read
        bad_signal = str(f["exam_id"][2])
    return bad_row, bad_signal


def _break_ptbxl(root: pathlib.Path) -> tuple[str, str]:
    # scp_codes parse but sex does not: the row used to stay listed and fail with KeyError.
    bad_row = _rewrite_csv(root / "ptbxl_database.csv", 1, "sex", "7")
    _truncate(root / "records500" / "00000" / "00003_hr.dat")
    return bad_row, "3"


def _break_cpsc2018(root: pathlib.Path) -> tuple[str, str]:
    bad_row = _rewrite_csv(root / "REFERENCE.csv", 1, "First_label", "10")
    _truncate(root / "A0003.mat")
    return bad_row, "A0003"


def _break_challenge(root: pathlib.Path) -> tuple[str, str]:
    # The Challenge layout has no table: opening can only refuse a record name found twice,
    # which keeps the first copy listed.
    (root / "again").mkdir()
    shutil.copy(root / "A0002.hea", root / "again" / "A0002.hea")
    _truncate(root / "A0003.mat")
    return "", "A0003"


BREAK = {
    "code": _break_code,
    "ptbxl": _break_ptbxl,
    "cpsc2018": _break_cpsc2018,
    "challenge": _break_challenge,
}


@pytest.mark.parametrize("name", sorted(READERS))
def test_skip_mode_never_breaks_iteration(name, folders, tmp_path):
    root = shutil.copytree(folders[name], tmp_path / name)
    bad_row, bad_signal = BREAK[name](root)
    with pytest.raises(EcgFormatError):
        READERS[name](root)  # the broken row or repeat is refused by default
    reader = READERS[name](root, on_error="skip")
    skipped_at_opening = len(reader.skip_log)
    assert skipped_at_opening == 1
    assert bad_row not in reader.record_ids
    assert bad_signal in reader.record_ids
    with pytest.raises(EcgFormatError):
        list(reader.iter_records())
    records = list(reader.iter_records(on_error="skip"))
    read_ids = [r.record_id for r in records]
    assert sorted(read_ids) == sorted(set(reader.record_ids) - {bad_signal})
    assert len(reader.skip_log) == skipped_at_opening + 1
    assert bad_signal in reader.skip_log.skipped[-1][0] + reader.skip_log.skipped[-1][1]
