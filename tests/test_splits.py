"""Splits: PTB-XL folds, patient-level splits, stratification and the shipped CPSC 2018 split."""

import collections

import numpy as np
import pytest

from ecgfm.data.splits import (
    CPSC2018_TRAINING_IDS,
    load_split_json,
    make_cpsc2018_split,
    patient_split,
    ptbxl_split_of_fold,
    read_split_file,
    stratified_split,
    write_cpsc2018_split,
)


def test_ptbxl_folds_one_to_eight_train_nine_validation_ten_test():
    assert [ptbxl_split_of_fold(f) for f in range(1, 11)] == ["train"] * 8 + [
        "validation",
        "test",
    ]
    with pytest.raises(ValueError, match="1–10"):
        ptbxl_split_of_fold(11)


def test_patient_split_has_no_patient_on_two_sides_and_is_seeded():
    rng = np.random.default_rng(0)
    patients = [f"p{i}" for i in rng.integers(0, 150, 600)]
    records = [f"r{i}" for i in range(600)]
    fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
    split = patient_split(records, patients, fractions=fractions, seed=3)
    patient_of = dict(zip(records, patients, strict=True))
    sides = {name: {patient_of[r] for r in ids} for name, ids in split.items()}
    assert not sides["train"] & sides["validation"]
    assert not sides["train"] & sides["test"] and not sides["validation"] & sides["test"]
    assert sorted(r for ids in split.values() for r in ids) == sorted(records)
    biggest = max(collections.Counter(patients).values())
    for name, fraction in fractions.items():
        assert abs(len(split[name]) - fraction * 600) <= biggest
    assert patient_split(records, patients, fractions=fractions, seed=3) == split
    assert patient_split(records, patients, fractions=fractions, seed=4) != split


def test_records_without_patient_count_as_their_own_patient():
    split = patient_split(
        ["a", "b", "c", "d"], [None, None, "", ""], fractions={"x": 0.5, "y": 0.5}
    )
    assert sorted(len(v) for v in split.values()) == [2, 2]


def test_stratified_split_keeps_rare_labels_in_every_split():
    rng = np.random.default_rng(1)
    labels_NK = rng.random((1000, 4)) < [0.5, 0.1, 0.03, 0.02]
    split = stratified_split([str(i) for i in range(1000)], labels_NK, seed=0)
    names = np.array([split[str(i)] for i in range(1000)])
    for name, fraction in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        assert abs((names == name).sum() - fraction * 1000) <= 2
        for k in range(4):
            expected = fraction * labels_NK[:, k].sum()
            assert abs(labels_NK[names == name, k].sum() - expected) <= 2


def test_shipped_cpsc_split_is_what_the_documented_call_produces():
    shipped = load_split_json()
    assert set(shipped) == set(CPSC2018_TRAINING_IDS) and len(shipped) == 6877
    assert shipped == make_cpsc2018_split(None, seed=0)
    counts = collections.Counter(shipped.values())
    assert counts == {"train": 5501, "validation": 688, "test": 688}


def test_cpsc_split_from_a_reference_is_stratified(tmp_path):
    rng = np.random.default_rng(2)
    classes = ["Normal", "AF", "STE"]
    labels = {r: (classes[int(rng.choice(3, p=[0.6, 0.37, 0.03]))],) for r in CPSC2018_TRAINING_IDS}
    path = write_cpsc2018_split(tmp_path / "split.json", labels, seed=1)
    split = load_split_json(path)
    rare = [r for r, names in labels.items() if names == ("STE",)]
    held_out = collections.Counter(split[r] for r in rare)
    assert abs(held_out["test"] - 0.1 * len(rare)) <= 1


def test_read_split_file_names_missing_columns_and_repeats(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("exam_id,split\n1,train\n2,validation\n")
    assert read_split_file(path, id_column="exam_id") == {"1": "train", "2": "validation"}
    with pytest.raises(ValueError, match="no column"):
        read_split_file(path)
    path.write_text("exam_id,split\n1,train\n1,validation\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_split_file(path, id_column="exam_id")
