"""Splits: PTB-XL folds, patient-level splits, stratification and the shipped CPSC 2018 split."""

import collections
import hashlib
import json
import logging

import numpy as np
import pytest

from ecgfm.data.challenge import load_dx_mapping
from ecgfm.data.cpsc2018 import CPSC_CLASSES, CPSC_TO_SNOMED
from ecgfm.data.record import EcgFormatError
from ecgfm.data.splits import (
    CPSC2018_TRAINING_IDS,
    class_counts,
    compare_labels,
    labels_digest,
    load_split_document,
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


def test_stratification_keeps_the_tie_breaking_the_shipped_cpsc_split_was_made_with():
    # The real REFERENCE.csv is not here, so the shipped file cannot be remade in a test; these
    # digests were taken from the code that made it. A change to the tie-breaking (or to what
    # is drawn from the generator) changes them, and would change the shipped split.
    rng = np.random.default_rng(2018)
    ids = [f"A{i:04d}" for i in range(1, 501)]
    chance = np.r_[np.full(460, 0.15), np.zeros(40)]  # 40 records without a label
    labels = {
        r: tuple(c for c in "ABCDEFGHI" if rng.random() < p)
        for r, p in zip(ids, chance, strict=True)
    }

    def digest(split):
        return hashlib.sha256(json.dumps(split, sort_keys=True).encode()).hexdigest()

    assert digest(make_cpsc2018_split(labels, record_ids=ids, seed=0)) == (
        "8451fad5c646fe614726a45a7f359f0e72576854015bdcaf91283094a8b88509"
    )
    assert digest(make_cpsc2018_split(labels, record_ids=ids, seed=1)) == (
        "edd0b858667ec6be71ac420ddc8a03e0fc005f83d78e92de0a61d750007498cf"
    )
    assert digest(make_cpsc2018_split(None, record_ids=ids, seed=0)) == (
        "09715916469d2da60193ef533199abe9391d84273afa270350e7c02d82dacc46"
    )


def test_shipped_cpsc_split_partitions_the_training_set_80_10_10():
    document = load_split_document()
    shipped = load_split_json()
    assert document["stratified"] and document["seed"] == 0
    assert document["fractions"] == {"train": 0.8, "validation": 0.1, "test": 0.1}
    assert set(shipped) == set(CPSC2018_TRAINING_IDS) and len(shipped) == 6877
    assert document["labelled_records"] == 6877
    # Iterative stratification balances classes first, sizes second: 0.8 · 6877 ± 4.
    sizes = collections.Counter(shipped.values())
    assert sizes == document["records"] == {"train": 5505, "validation": 693, "test": 679}


def test_shipped_cpsc_split_class_counts_add_up_to_the_challenge_cpsc_column():
    # The class counts were computed from the labels the split was stratified on, when it was
    # written. The Challenge tables count each class over the same 6,877 records, so equal
    # totals say those labels were the complete real REFERENCE.csv.
    challenge_cpsc = load_dx_mapping()["CPSC"]
    counts = load_split_document()["class_counts"]
    for name in CPSC_CLASSES:
        total = sum(counts[split].get(name, 0) for split in counts)
        assert total == challenge_cpsc[CPSC_TO_SNOMED[name]], name


def test_shipped_cpsc_split_holds_each_class_in_proportion():
    document = load_split_document()
    counts = document["class_counts"]
    for name in CPSC_CLASSES:
        total = sum(counts[split][name] for split in counts)
        for split, fraction in document["fractions"].items():
            assert abs(counts[split][name] - fraction * total) <= 2, (name, split)


def _synthetic_reference(seed: int) -> dict[str, tuple[str, ...]]:
    rng = np.random.default_rng(seed)
    classes = ["Normal", "AF", "STE"]
    return {r: (classes[int(rng.choice(3, p=[0.6, 0.37, 0.03]))],) for r in CPSC2018_TRAINING_IDS}


def test_cpsc_split_from_a_reference_is_stratified_and_records_its_labels(tmp_path):
    labels = _synthetic_reference(2)
    path = write_cpsc2018_split(tmp_path / "split.json", labels, seed=1, source="synthetic")
    split, document = load_split_json(path), load_split_document(path)
    assert split == make_cpsc2018_split(labels, seed=1)
    rare = [r for r, names in labels.items() if names == ("STE",)]
    held_out = collections.Counter(split[r] for r in rare)
    assert abs(held_out["test"] - 0.1 * len(rare)) <= 1
    assert document["labels_digest"] == labels_digest(labels)
    assert document["class_counts"] == class_counts(split, labels)
    assert document["source"] == "synthetic"


def test_labels_digest_ignores_row_order_and_label_order():
    labels = {"A0001": ("AF", "PAC"), "A0002": ("Normal",)}
    reordered = {"A0002": ("Normal",), "A0001": ("PAC", "AF")}
    assert labels_digest(labels) == labels_digest(reordered)
    assert labels_digest(labels) != labels_digest({**labels, "A0002": ("AF",)})


def test_compare_labels_says_whether_a_reference_is_the_one_split_on(tmp_path, caplog):
    labels = _synthetic_reference(3)
    document = load_split_document(write_cpsc2018_split(tmp_path / "s.json", labels))
    assert "same labels" in compare_labels(document, dict(reversed(labels.items())))
    # Records outside the CPSC training set (e.g. other Challenge sources) do not count.
    assert "same labels" in compare_labels(document, {**labels, "Q0001": ("AF",)})
    partial = dict(list(labels.items())[:12])
    assert compare_labels(document, partial).startswith("6865 of the 6877 records")
    relabelled = {**labels, "A0001": ("PVC",)}
    with caplog.at_level(logging.WARNING, logger="ecgfm.data.splits"):
        assert "differ" in compare_labels(document, relabelled)
    assert "differ" in caplog.text
    unstratified = load_split_document(write_cpsc2018_split(tmp_path / "u.json"))
    assert "not stratified" in compare_labels(unstratified, labels)
    no_digest = {key: value for key, value in document.items() if key != "labels_digest"}
    assert "records no labels digest" in compare_labels(no_digest, labels)


def test_a_split_from_labels_of_other_records_is_refused(tmp_path):
    with pytest.raises(ValueError, match="none of the CPSC 2018 training records"):
        write_cpsc2018_split(tmp_path / "s.json", {"Q0001": ("AF",)})


def test_a_split_file_without_a_splits_mapping_names_the_file(tmp_path):
    path = tmp_path / "split.json"
    path.write_text('{"train": ["A0001"]}')
    with pytest.raises(EcgFormatError, match="splits") as info:
        load_split_document(path)
    assert info.value.path == str(path)


def test_read_split_file_names_missing_columns_and_repeats(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("exam_id,split\n1,train\n2,validation\n")
    assert read_split_file(path, id_column="exam_id") == {"1": "train", "2": "validation"}
    with pytest.raises(ValueError, match="no column"):
        read_split_file(path)
    path.write_text("exam_id,split\n1,train\n1,validation\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_split_file(path, id_column="exam_id")
