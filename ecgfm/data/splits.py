"""Train/validation/test splits: PTB-XL folds, CPSC 2018's shipped split, patient-level splits.

- PTB-XL: `strat_fold` 1–8 train, 9 validation, 10 test (Wagner et al. 2020; folds 9 and 10
  hold only human-validated labels).
- CPSC 2018: a fixed record-id split shipped as `ecgfm/resources/cpsc2018_split.json`, 80/10/10
  and stratified over the nine classes of the training set's REFERENCE.csv by
  `make_cpsc2018_split` (its docstring says how to remake it).
- CODE-style data: `patient_split`, deterministic from a seed, no patient on both sides; or
  the published split of a release (CODE-II-open) read with `read_split_file`.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import importlib.resources
import json
import logging
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ecgfm.data.record import EcgFormatError

log = logging.getLogger(__name__)

TRAIN, VALIDATION, TEST = "train", "validation", "test"
PTBXL_FOLDS: Mapping[str, tuple[int, ...]] = {
    TRAIN: (1, 2, 3, 4, 5, 6, 7, 8),
    VALIDATION: (9,),
    TEST: (10,),
}
# The CPSC 2018 training set (6,877 records) that REFERENCE.csv labels.
CPSC2018_TRAINING_IDS: tuple[str, ...] = tuple(f"A{i:04d}" for i in range(1, 6878))
CPSC2018_SPLIT_FILE = "cpsc2018_split.json"
DEFAULT_FRACTIONS: Mapping[str, float] = {TRAIN: 0.8, VALIDATION: 0.1, TEST: 0.1}


def ptbxl_split_of_fold(strat_fold: int) -> str:
    """ "train" for folds 1–8, "validation" for 9, "test" for 10."""
    for split, folds in PTBXL_FOLDS.items():
        if int(strat_fold) in folds:
            return split
    raise ValueError(f"PTB-XL strat_fold must be 1–10, got {strat_fold}")


def _check_fractions(fractions: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    names = list(fractions)
    values = np.array([fractions[n] for n in names], np.float64)
    if not names or np.any(values < 0) or not np.isclose(values.sum(), 1.0):
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    return names, values


def patient_split(
    record_ids: Sequence[str],
    patient_ids: Sequence[str | None],
    *,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Splits records so that all exams of a patient fall in one split.

    Patients are visited in a permutation drawn from `seed`; each joins the split whose exam
    count lies furthest below its target (fraction · N), so sizes match the fractions to within
    one patient's exams. A record with no patient id counts as a patient of its own. Returns
    split → record ids, each list in input order.
    """
    if len(record_ids) != len(patient_ids):
        raise ValueError(f"{len(record_ids)} record ids but {len(patient_ids)} patient ids")
    names, targets = _check_fractions(fractions)
    targets = targets * len(record_ids)
    groups: dict[str, list[int]] = {}
    for i, (record, patient) in enumerate(zip(record_ids, patient_ids, strict=True)):
        groups.setdefault(f"patient:{patient}" if patient else f"record:{record}", []).append(i)
    keys = sorted(groups)
    counts = np.zeros(len(names))
    split_of = np.empty(len(record_ids), np.int64)
    for k in np.random.default_rng(seed).permutation(len(keys)):
        members = groups[keys[k]]
        s = int(np.argmax(targets - counts))
        split_of[members] = s
        counts[s] += len(members)
    return {name: [str(record_ids[i]) for i in np.flatnonzero(split_of == s)]
            for s, name in enumerate(names)}  # fmt: skip


def iterative_stratification(
    labels_NK: np.ndarray,
    desired_size_S: np.ndarray,
    desired_SK: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """`[N]` subset index per example, by iterative stratification (Sechidis, Tsoumakas &
    Vlahavas 2011, "On the stratification of multi-label data", Algorithm 1).

    The rarest remaining class's examples are placed first (ties: the lowest class index), each,
    in a seeded order, into the subset that most lacks that class (ties: the subset furthest
    below its size, then a seeded draw); examples without any positive label then fill, in a
    seeded order, the subset furthest below its size (ties: the first subset).
    `desired_size_S` and `desired_SK` (`[S]`, `[S, K]`) are the target counts per subset.

    This tie-breaking made the shipped CPSC 2018 split (`make_cpsc2018_split`): changing it, or
    what is drawn from `rng`, changes that split.
    """
    labels_NK = np.asarray(labels_NK, dtype=bool)
    size_S = np.asarray(desired_size_S, dtype=np.float64).copy()
    want_SK = np.asarray(desired_SK, dtype=np.float64).copy()
    num_subsets = size_S.shape[0]
    subset_of = np.full(labels_NK.shape[0], -1, dtype=np.int64)
    remaining = np.ones(labels_NK.shape[0], dtype=bool)
    while True:
        counts_K = (labels_NK & remaining[:, None]).sum(axis=0)
        present = np.flatnonzero(counts_K)
        if present.size == 0:
            break
        k = int(present[np.argmin(counts_K[present])])
        for i in rng.permutation(np.flatnonzero(labels_NK[:, k] & remaining)):
            # np.lexsort sorts by the last key first: most lacking class k, then size, then luck.
            s = int(np.lexsort((rng.random(num_subsets), -size_S, -want_SK[:, k]))[0])
            subset_of[i] = s
            remaining[i] = False
            size_S[s] -= 1
            want_SK[s] -= labels_NK[i]
    for i in rng.permutation(np.flatnonzero(remaining)):
        s = int(np.argmax(size_S))
        subset_of[i] = s
        size_S[s] -= 1
    return subset_of


def stratified_split(
    record_ids: Sequence[str],
    labels_NK: np.ndarray | None,
    *,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> dict[str, str]:
    """Record id → split by `iterative_stratification`, each split's targets its fraction.

    Records without labels (or all of them, with `labels_NK=None`) fill each split to its size
    in a seeded order.
    """
    names, fractions_S = _check_fractions(fractions)
    num = len(record_ids)
    labels_NK = np.zeros((num, 0), bool) if labels_NK is None else np.asarray(labels_NK, bool)
    if labels_NK.shape[0] != num:
        raise ValueError(f"{num} record ids but labels for {labels_NK.shape[0]}")
    split_of = iterative_stratification(
        labels_NK,
        fractions_S * num,
        fractions_S[:, None] * labels_NK.sum(axis=0)[None, :],
        np.random.default_rng(seed),
    )
    return {str(r): names[s] for r, s in zip(record_ids, split_of, strict=True)}


def make_cpsc2018_split(
    labels: Mapping[str, Sequence[str]] | None = None,
    *,
    record_ids: Sequence[str] = CPSC2018_TRAINING_IDS,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> dict[str, str]:
    """The CPSC 2018 split: record id → "train" / "validation" / "test".

    With `labels` (record id → CPSC class names, e.g. `cpsc2018.read_reference(
    "REFERENCE.csv")`) the split is stratified over the nine classes by `stratified_split`;
    without, it is a seeded split that ignores labels.

    The shipped `resources/cpsc2018_split.json` is `write_cpsc2018_split(path,
    read_reference("REFERENCE.csv"), seed=0, source=...)` over the training set's REFERENCE.csv
    (6,877 rows; `source` is the sentence in the file): 80/10/10, stratified. The file records
    the labels' digest and each split's class counts; a test checks that those counts add up
    to the Challenge's CPSC column in `dx_mapping_*.csv`.
    """
    if labels is None:
        return stratified_split(record_ids, None, fractions=fractions, seed=seed)
    classes = sorted({c for names in labels.values() for c in names})
    labels_NK = np.array([[c in labels.get(r, ()) for c in classes] for r in record_ids])
    return stratified_split(record_ids, labels_NK, fractions=fractions, seed=seed)


def labels_digest(labels: Mapping[str, Sequence[str]]) -> str:
    """sha256 of `labels` as sorted "record:class,class" lines (classes sorted).

    The same labels give the same digest whatever the file's row order, line ends or the order
    of a row's labels, so it tells whether a REFERENCE.csv is the one a split was made from.
    """
    lines = sorted(f"{record}:{','.join(sorted(set(names)))}" for record, names in labels.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def class_counts(
    split_of: Mapping[str, str], labels: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, int]]:
    """split → class → number of that split's records carrying the class."""
    counts: dict[str, collections.Counter[str]] = {}
    for record, split in split_of.items():
        counts.setdefault(split, collections.Counter()).update(set(labels.get(record, ())))
    return {split: dict(sorted(c.items())) for split, c in sorted(counts.items())}


def write_cpsc2018_split(
    path: str | os.PathLike,
    labels: Mapping[str, Sequence[str]] | None = None,
    *,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    source: str | None = None,
) -> pathlib.Path:
    """Writes `make_cpsc2018_split(...)` as JSON with how it was made; returns the path.

    With `labels` the file also holds, over the split's records that have labels, their number
    (`labelled_records`), `labels_digest` and each split's `class_counts`; `source` says where
    the labels came from.
    """
    splits = make_cpsc2018_split(labels, fractions=fractions, seed=seed)
    stratified = labels is not None
    how = "stratified over REFERENCE.csv labels" if stratified else "seeded, not label-stratified"
    document: dict[str, object] = {
        "made_by": f"ecgfm.data.splits.make_cpsc2018_split ({how})",
        "stratified": stratified,
        "seed": seed,
        "fractions": dict(fractions),
        "records": dict(sorted(collections.Counter(splits.values()).items())),
        "splits": splits,
    }
    if labels is not None:
        labelled = {r: labels[r] for r in splits if r in labels}
        if not labelled:
            raise ValueError("the labels name none of the CPSC 2018 training records")
        document |= {
            "labelled_records": len(labelled),
            "labels_digest": labels_digest(labelled),
            "class_counts": class_counts(splits, labelled),
            "source": source,
        }
    path = pathlib.Path(path)
    path.write_text(json.dumps(document, indent=0, sort_keys=True, ensure_ascii=False) + "\n")
    return path


def load_split_document(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """A `write_cpsc2018_split` file as a dict; None loads the shipped one."""
    if path is None:
        where = importlib.resources.files("ecgfm") / "resources" / CPSC2018_SPLIT_FILE
    else:
        where = pathlib.Path(path)
    try:
        document = json.loads(where.read_text())
    except (OSError, ValueError) as err:
        raise EcgFormatError(where, f"unreadable split file ({err})") from err
    if not isinstance(document, dict) or not isinstance(document.get("splits"), dict):
        raise EcgFormatError(where, 'no "splits" mapping of record id → split')
    return document


def load_split_json(path: str | os.PathLike | None = None) -> dict[str, str]:
    """Record id → split from a `write_cpsc2018_split` file; None loads the shipped one."""
    return dict(load_split_document(path)["splits"])


def compare_labels(document: Mapping[str, Any], labels: Mapping[str, Sequence[str]]) -> str:
    """Says whether `labels` are the ones a split file was stratified on (for the metadata).

    Compared by `labels_digest` over the split's records. Labels missing for some of the records
    the split was stratified on (a partial copy, a skipped row) are not compared. A mismatch is
    also logged as a warning: the split is still the same partition of record ids, but its
    class balance is not known.
    """
    if "labels_digest" not in document:
        if document.get("stratified"):
            return "stratified, but the file records no labels digest: not compared"
        return "split not stratified on labels: class balance not known"
    labelled = {r: labels[r] for r in document["splits"] if r in labels}
    stratified_on = int(document.get("labelled_records", len(document["splits"])))
    if len(labelled) < stratified_on:
        missing = stratified_on - len(labelled)
        return (
            f"{missing} of the {stratified_on} records it was stratified on have no label here: "
            "not compared"
        )
    if labels_digest(labelled) == document["labels_digest"]:
        return "stratified on these same labels: digest matches"
    log.warning(
        "these labels differ from the ones the CPSC 2018 split was stratified on (digest %s, "
        "not %s): same record partition, class balance not checked",
        labels_digest(labelled),
        document["labels_digest"],
    )
    return "labels differ from those it was stratified on: class balance not checked"


def load_split_with_check(
    path: str | os.PathLike | None, labels: Mapping[str, Sequence[str]] | None
) -> tuple[dict[str, str], str]:
    """(record id → split, `compare_labels` verdict) of a split file; None loads the shipped one.

    Without `labels` (e.g. records in the Challenge layout, whose labels are not read here) the
    verdict says the labels were not compared.
    """
    document = load_split_document(path)
    check = "labels not compared" if labels is None else compare_labels(document, labels)
    return dict(document["splits"]), check


def read_split_file(
    path: str | os.PathLike, *, id_column: str = "record_id", split_column: str = "split"
) -> dict[str, str]:
    """Record id → split from a CSV with an id column and a split column (e.g. CODE-II-open).

    The published CODE-II-open split's file and column names were not known when this was
    written: pass its column names here (e.g. `id_column="exam_id"`).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise EcgFormatError(path, "split file is missing")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {id_column, split_column} - set(reader.fieldnames or ())
        if missing:
            raise EcgFormatError(path, f"no column(s) {sorted(missing)}; has {reader.fieldnames}")
        out: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            record = row[id_column].strip()
            if record in out:
                raise EcgFormatError(path, f"line {line}: record {record} listed twice")
            out[record] = row[split_column].strip()
    return out
