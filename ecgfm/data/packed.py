"""A dataset built by `ecgfm prepare`, opened as a `Reader`: transfer reads it like the files.

`PackedDataset(data_dir, "ptbxl")` lists every record of every split of the build and reads
one through grain's array_record source (`sources.TfdsSource`), as an `EcgRecord` at the
stored rate in millivolts (stored counts × scale). The split and each task's labels are the
ones `prepare` stored, so `ecgfm.transfer` can take its task from a packed dataset on a
cluster's shared storage instead of tens of thousands of small files.

What it holds is what `prepare` stored: a build made with a filter or normalisation spec
holds already-filtered signals, so `raw_rate()` says whether the build is the files at a
sampling rate and nothing more (the spec transfer needs, since the encoder's own spec is
applied to each record as it is to the files).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.reader import Reader
from ecgfm.data.record import EcgFormatError, EcgRecord, SkipLog
from ecgfm.data.sources import TfdsSource, built_dataset_dir, read_ecgfm_metadata, signal_mv
from ecgfm.data.splits import TEST, TRAIN, VALIDATION

SPLITS = (TRAIN, VALIDATION, TEST)


def is_packed(data_dir: str | os.PathLike, name: str) -> bool:
    """Whether `data_dir` holds a build of `name` (`<data_dir>/<name>/<config>/<version>`)."""
    try:
        built_dataset_dir(data_dir, name)
    except FileNotFoundError:
        return False
    return True


class PackedDataset(Reader):
    """Every split of a built dataset, read by record id (see the module docstring).

    Attributes (besides `Reader`'s):
      name: the dataset ("code", "ptbxl", "cpsc2018").
      dataset_dir: `<data_dir>/<name>/<config>/<version>`.
      preprocessing: the spec `prepare` applied.
      split_of: record id → split.
      tasks: task → its label names, as stored.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        name: str,
        *,
        config: str | None = None,
        skip_log: SkipLog | None = None,
    ):
        # A packed record was checked when it was built; reading it again can only fail if
        # the shards changed, which TfdsSource refuses by name.
        super().__init__(data_dir, on_error="raise", skip_log=skip_log)
        self.name = name
        self.dataset_dir = built_dataset_dir(data_dir, name, config=config)
        metadata = read_ecgfm_metadata(self.dataset_dir)
        self.tasks: dict[str, tuple[str, ...]] = {
            t: tuple(names) for t, names in metadata["tasks"].items()
        }
        self.default_task: str = metadata["default_task"]
        self.preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
        self._sources = {
            split: TfdsSource(data_dir, name, split, config=config) for split in SPLITS
        }
        self.split_of: dict[str, str] = {}
        self._row: dict[str, tuple[str, int]] = {}
        for split, source in self._sources.items():
            for row, record_id in enumerate(source.record_ids):
                self.split_of[record_id] = split
                self._row[record_id] = (split, row)
        self.record_ids = list(self._row)
        self.label_names = None

    def raw_rate(self) -> float | None:
        """The rate if the build holds the files' 12 leads only resampled (or not), else None."""
        rate = self.preprocessing.sampling_rate
        return rate if self.preprocessing == Preprocessing(sampling_rate=rate) else None

    def labels_in(self, task: str) -> dict[str, tuple[str, ...]]:
        """record id → its label names in `task` (no entry where the record has none)."""
        if task not in self.tasks:
            raise ValueError(f"{self.dataset_dir} has tasks {sorted(self.tasks)}, not {task!r}")
        names = np.array(self.tasks[task], dtype=object)
        labels: dict[str, tuple[str, ...]] = {}
        for split in SPLITS:
            source = TfdsSource(self.root, self.name, split, task=task)
            for row in range(len(source)):
                element = source[row]
                known = element["labels"] * element["label_mask"] > 0
                if known.any():
                    labels[element["record_id"]] = tuple(names[known])
        return labels

    def read(self, record_id: str) -> EcgRecord:
        """The stored record: `[T, C]` float32 mV at the build's rate, leads as the spec's."""
        try:
            split, row = self._row[record_id]
        except KeyError:
            raise EcgFormatError(self.dataset_dir, f"holds no record {record_id!r}") from None
        element = self._sources[split][row]
        return EcgRecord(
            signal=signal_mv(element),
            sampling_rate=self.preprocessing.sampling_rate,
            record_id=record_id,
            source=self.name,
            patient_id=element["patient_id"] or None,
            metadata={"split": split, "packed": str(self.dataset_dir)},
        )

    def check_task_split(self, split_of: Mapping[str, str], how: str) -> None:
        """Raises ValueError naming both unless every record's stored split is `split_of`'s."""
        moved = [r for r in self.record_ids if split_of.get(r) != self.split_of[r]]
        if moved:
            example = moved[0]
            raise ValueError(
                f"{self.dataset_dir} was split differently from {how}: {len(moved)} records "
                f"moved, e.g. {example!r} is in {self.split_of[example]!r} there, "
                f"{split_of.get(example)!r} in the task; prepare it again with that split"
            )
