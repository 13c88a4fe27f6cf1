"""TFDS builder for CODE-15% / CODE-II (`exams.csv` + `exams_part{i}.hdf5`), from a local folder.

Label names come from the `exams.csv` header (`CodeDataset.label_names`), one task "code".
Splits, first that applies: `options["split_file"]` (CSV of id and split columns, e.g. the
published CODE-II-open split), `options["split_column"]` (a column of `exams.csv`), else
`splits.patient_split` with `options["fractions"]` and `options["seed"]`: no patient on two
sides.
"""

from __future__ import annotations

import pathlib
from typing import Any

from ecgfm.data.code import CodeDataset
from ecgfm.data.code_csv import CSV_NAME, METADATA_COLUMNS
from ecgfm.data.record import EcgFormatError
from ecgfm.data.splits import DEFAULT_FRACTIONS, patient_split, read_split_file
from ecgfm.data.tables import read_csv_header
from ecgfm.data.tfds_builders.base import (
    EcgBuilder,
    EcgBuilderConfig,
    SplitPlan,
)

TASK = "code"
# The dataset-specific options `make_config` takes (see the module docstring).
# The rate the files ship at: what a build without a spec stores.
NATIVE_SAMPLING_RATE = 400.0
OPTIONS: frozenset[str] = frozenset(
    {"split_file", "id_column", "split_column", "fractions", "seed"}
)


def label_columns(root: str | pathlib.Path, split_column: str | None = None) -> tuple[str, ...]:
    """The label columns of `exams.csv`: every header column that is not metadata or the split."""
    header = read_csv_header(pathlib.Path(root) / CSV_NAME)  # bad input: EcgFormatError
    return tuple(c for c in header if c not in METADATA_COLUMNS and c != split_column)


def make_config(root: str | pathlib.Path, **options: Any) -> EcgBuilderConfig:
    """A config whose label set is the folder's CSV header."""
    labels = label_columns(root, options.get("split_column"))
    return EcgBuilderConfig.create({TASK: labels}, TASK, options)


class Builder(EcgBuilder):
    """CODE-15% / CODE-II exams as array_record shards."""

    def open_reader(self, root: pathlib.Path) -> CodeDataset:
        # The config's label set, so a split column is not mistaken for a label.
        return CodeDataset(
            root,
            label_columns=self.builder_config.tasks[TASK],
            on_error=self.builder_config.on_error,
        )

    def plan_splits(self, reader: CodeDataset) -> SplitPlan:
        options = self.builder_config.options
        exam_ids = list(reader.record_ids)
        if options.get("split_file") or options.get("split_column"):
            if options.get("split_file"):
                split_of = read_split_file(
                    options["split_file"], id_column=options.get("id_column", "exam_id")
                )
                how = f"split file {options['split_file']}"
            else:
                split_of = read_split_file(
                    reader.csv_path, id_column="exam_id", split_column=options["split_column"]
                )
                how = f"column {options['split_column']!r} of {reader.csv_path.name}"
            missing = [e for e in exam_ids if e not in split_of]
            if missing:
                # The error names the file; for a column of exams.csv, also the column.
                where = options.get("split_file") or reader.csv_path
                column = "" if options.get("split_file") else f"column {options['split_column']!r} "
                raise EcgFormatError(
                    where, f"{column}has no split for {len(missing)} exams, e.g. {missing[:5]}"
                )
            plan: dict[str, list[str]] = {}
            for exam in exam_ids:
                plan.setdefault(split_of[exam], []).append(exam)
            return SplitPlan(plan, how)
        fractions = dict(options.get("fractions", DEFAULT_FRACTIONS))
        seed = int(options.get("seed", 0))
        patients = [reader.patient_id(e) for e in exam_ids]
        plan = patient_split(exam_ids, patients, fractions=fractions, seed=seed)
        return SplitPlan(plan, f"patient_split(fractions={fractions}, seed={seed})")
