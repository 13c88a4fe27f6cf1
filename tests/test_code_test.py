"""The CODE test set of Ribeiro et al. 2020, read in its release's layout, and its scoring."""

import csv

import h5py
import numpy as np
import pytest

from ecgfm import metrics
from ecgfm.data.code_test import (
    ANNOTATORS,
    CLASSES,
    CodeTestSet,
    read_annotation_file,
    write_code_test_set,
)
from ecgfm.data.record import EcgFormatError


@pytest.fixture(scope="module")
def code_test(tmp_path_factory):
    return write_code_test_set(tmp_path_factory.mktemp("code_test") / "data", num_exams=24, seed=1)


def test_the_synthetic_set_has_the_releases_exact_layout(code_test):
    with h5py.File(code_test / "ecg_tracings.hdf5") as f:
        assert list(f.keys()) == ["tracings"]  # no exam_id: exam i is row i
        assert f["tracings"].shape == (24, 4096, 12) and f["tracings"].dtype == np.float32
    with (code_test / "attributes.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["age", "sex"] and len(rows) == 25 and rows[1][1] in ("M", "F")
    for name in ("gold_standard", *ANNOTATORS):
        with (code_test / "annotations" / f"{name}.csv").open() as f:
            table = list(csv.reader(f))
        assert table[0] == list(CLASSES) == ["1dAVb", "RBBB", "LBBB", "SB", "AF", "ST"]
        assert len(table) == 25 and {v for row in table[1:] for v in row} <= {"0", "1"}


def test_reader_gives_each_row_unpadded_in_millivolts_with_gold_labels(code_test):
    reader = CodeTestSet(code_test)
    assert list(reader.record_ids) == [str(i) for i in range(24)]
    assert reader.annotators == ANNOTATORS
    with h5py.File(code_test / "ecg_tracings.hdf5") as f:
        stored = f["tracings"][3]
    record = reader.read("3")
    real = np.flatnonzero(np.any(stored != 0, axis=1))
    assert record.num_samples in (2800, 4000) and record.num_samples == real[-1] - real[0] + 1
    np.testing.assert_array_equal(record.signal, stored[real[0] : real[-1] + 1])
    assert record.sampling_rate == 400 and record.sex in ("M", "F")
    gold = reader.gold_standard[3]
    assert record.labels == tuple(sorted(c for c, on in zip(CLASSES, gold, strict=True) if on))
    assert reader.annotations("dnn").shape == (24, 6)


def test_annotation_columns_are_found_by_name_and_bad_files_are_named(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("ST,AF,SB,LBBB,RBBB,1dAVb\n1,0,0,0,0,1\n")
    assert read_annotation_file(path).tolist() == [[True, False, False, False, False, True]]
    path.write_text("1dAVb,RBBB\n1,0\n")
    with pytest.raises(EcgFormatError, match="lacks the columns"):
        read_annotation_file(path)
    path.write_text(",".join(CLASSES) + "\n1,0,0,2,0,0\n")
    with pytest.raises(EcgFormatError, match="line 2"):
        read_annotation_file(path)


def test_annotators_are_scored_against_the_gold_standard(code_test):
    reader = CodeTestSet(code_test)
    gold = reader.gold_standard
    for name in reader.annotators:
        scores = metrics.binary_scores(gold, reader.annotations(name), class_names=CLASSES)
        annotated = reader.annotations(name)
        tp = (gold & annotated).sum(0)
        expected_f1 = 2 * tp / np.maximum(gold.sum(0) + annotated.sum(0), 1)
        np.testing.assert_allclose(scores["f1"], expected_f1)
