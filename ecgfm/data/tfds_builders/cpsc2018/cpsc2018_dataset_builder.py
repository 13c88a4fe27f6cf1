"""TFDS builder for CPSC 2018, in its original layout or the PhysioNet/CinC Challenge layout.

Layouts: `A*.mat` (struct `ECG`) with `REFERENCE.csv` (`cpsc2018.Cpsc2018`), or `X.hea` +
`X.mat` with SNOMED-CT codes (`challenge.ChallengeDataset`, mapped to the nine classes by
`challenge.snomed_to_cpsc`); a folder with `.hea` files is read as the Challenge layout. One
task "cpsc" over `CPSC_CLASSES`. Splits: `options["split_file"]` (a `write_cpsc2018_split`
JSON) if given; else the shipped split (stratified over the real REFERENCE.csv) when it lists
every record (the CPSC training set A0001–A6877), the metadata saying whether this folder's
REFERENCE.csv has the labels it was stratified on; else, for other records (e.g.
Challenge-layout records of other sources), a split stratified over their own labels, made
with `options["seed"]` and stated in metadata.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from ecgfm.data.challenge import ChallengeDataset, snomed_to_cpsc
from ecgfm.data.cpsc2018 import CPSC_CLASSES, Cpsc2018
from ecgfm.data.record import EcgFormatError, EcgRecord
from ecgfm.data.splits import load_split_with_check, make_cpsc2018_split
from ecgfm.data.tfds_builders.base import (
    EcgBuilder,
    EcgBuilderConfig,
    SplitPlan,
)

TASK = "cpsc"
# The dataset-specific options `make_config` takes (see the module docstring).
# The rate the files ship at: what a build without a spec stores.
NATIVE_SAMPLING_RATE = 500.0
OPTIONS: frozenset[str] = frozenset({"split_file", "seed"})


def is_challenge_layout(root: str | pathlib.Path) -> bool:
    """True when the folder holds WFDB headers (`.hea`), i.e. the Challenge layout."""
    return next(pathlib.Path(root).rglob("*.hea"), None) is not None


def make_config(root: str | pathlib.Path, **options: Any) -> EcgBuilderConfig:
    """A config over the nine CPSC classes."""
    layout = "challenge" if is_challenge_layout(root) else "cpsc2018"
    return EcgBuilderConfig.create({TASK: CPSC_CLASSES}, TASK, {**options, "layout": layout})


class Builder(EcgBuilder):
    """CPSC 2018 records with the nine-class labels."""

    def open_reader(self, root: pathlib.Path) -> Cpsc2018 | ChallengeDataset:
        if self.builder_config.options["layout"] == "challenge":
            return ChallengeDataset(root, on_error=self.builder_config.on_error)
        return Cpsc2018(root, on_error=self.builder_config.on_error)

    def read_record(self, reader: Cpsc2018 | ChallengeDataset, record_id: str) -> EcgRecord:
        record = reader.read(record_id)
        if isinstance(reader, ChallengeDataset):
            record = dataclasses.replace(record, labels=snomed_to_cpsc(record.labels))
        return record

    def plan_splits(self, reader: Cpsc2018 | ChallengeDataset) -> SplitPlan:
        options = self.builder_config.options
        record_ids = list(reader.record_ids)
        split_file = options.get("split_file") or None
        labels = reader.labels_by_record if isinstance(reader, Cpsc2018) else None
        split_of, check = load_split_with_check(split_file, labels)
        if labels is None:
            check += " (Challenge layout: labels are read per record, not up front)"
        how = f"{split_file or 'shipped resources/cpsc2018_split.json'} ({check})"
        missing = [r for r in record_ids if r not in split_of]
        if missing and split_file:
            raise EcgFormatError(
                split_file, f"has no split for {len(missing)} records, e.g. {missing[:5]}"
            )
        if missing:
            seed = int(options.get("seed", 0))
            labels = {}
            for r in record_ids:
                try:
                    labels[r] = self.read_record(reader, r).labels
                except EcgFormatError:
                    labels[r] = ()  # reported (or skipped) when the split is written
            split_of = make_cpsc2018_split(labels, record_ids=record_ids, seed=seed)
            how = f"stratified over these records' labels (seed {seed}): not the shipped split"
        plan: dict[str, list[str]] = {}
        for r in record_ids:
            plan.setdefault(split_of[r], []).append(r)
        return SplitPlan(plan, how)
