"""TFDS builder for PTB-XL from a local copy of the PhysioNet folder.

All six benchmark tasks (`ptbxl.TASKS`) are stored as `labels/<task>`; a record with no label
in a task has `label_mask/<task>` all 0 (the benchmark leaves such records out of that task).
Splits by `strat_fold`: 1–8 train, 9 validation, 10 test. `strat_fold` and `patient_id` are
features. Signals come from the 100 Hz files when the preprocessing spec asks for 100 Hz or
less, otherwise from the 500 Hz files (raw builds: 500 Hz).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from ecgfm.data.ptbxl import TASKS, PtbXl
from ecgfm.data.record import EcgRecord
from ecgfm.data.splits import ptbxl_split_of_fold
from ecgfm.data.tfds_builders.base import (
    EcgBuilder,
    EcgBuilderConfig,
    SplitPlan,
)

DEFAULT_TASK = "superdiagnostic"
# No dataset-specific options: the split is the published strat_fold one.
# The rate the files ship at: what a build without a spec stores.
NATIVE_SAMPLING_RATE = 500.0
OPTIONS: frozenset[str] = frozenset()


def make_config(root: str | pathlib.Path, **options: Any) -> EcgBuilderConfig:
    """A config with the six task vocabularies of the folder's `scp_statements.csv`."""
    vocabularies = PtbXl(root, on_error="skip").vocabularies  # bad rows: the build reports them
    return EcgBuilderConfig.create(
        {t: tuple(vocabularies[t]) for t in TASKS}, DEFAULT_TASK, options
    )


class Builder(EcgBuilder):
    """PTB-XL records with six label tasks, `strat_fold` and patient id."""

    def open_reader(self, root: pathlib.Path) -> PtbXl:
        prep = self.preprocessing
        rate = 100 if prep is not None and prep.sampling_rate <= 100 else 500
        return PtbXl(root, sampling_rate=rate, on_error=self.builder_config.on_error)

    def plan_splits(self, reader: PtbXl) -> SplitPlan:
        plan: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
        for ecg_id, fold in reader.database["strat_fold"].items():
            plan[ptbxl_split_of_fold(int(fold))].append(str(ecg_id))
        return SplitPlan(plan, "strat_fold 1-8 train, 9 validation, 10 test")

    def task_labels(self, record: EcgRecord) -> Mapping[str, tuple[tuple[str, ...], bool]]:
        labels = record.metadata["task_labels"]
        return {t: (tuple(labels[t]), bool(labels[t])) for t in TASKS}

    def extra_features(self) -> Mapping[str, tfds.features.FeatureConnector]:
        return {"strat_fold": tfds.features.Scalar(np.int32, doc="PTB-XL fold 1-10")}

    def extra_values(self, record: EcgRecord) -> Mapping[str, Any]:
        return {"strat_fold": np.int32(record.metadata["strat_fold"])}
