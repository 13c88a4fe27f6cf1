"""What the three ECG builders share: config, feature spec, compact signal storage, generation.

Storage. Signals are kept at their real length as int16 counts with a per-record float32
`signal_scale` (value = count · scale):
- scale 0.001 (1 count = 1 µV) when the record's millivolt values are whole microvolts (raw
  PTB-XL, CPSC 2018 and Challenge files, stored as integers at 1000/mV): exact, 2 bytes/sample;
- otherwise (CODE's float tracings, resampled, filtered or standardised signals) scale =
  max|x| / 32767, so the error is at most max|x| / 65534 per sample: 1.5e-5 of the record's
  peak, finer than float16 (relative 4.9e-4 at every magnitude) at the same 2 bytes, and half
  of float32. `round_trip_tolerance` gives the bound.

Labels. Each dataset has one or more tasks (PTB-XL six, CODE and CPSC one); the label names
vary per dataset (CODE-II's 66 names are read from its CSV header), so they travel in the
`EcgBuilderConfig` that `prepare_dataset` makes from the source folder, fix the feature shapes
(`labels/<task>`, `label_mask/<task>`: uint8 [K]) and are written into `metadata.json`.

Order. Records are written in split-plan order (`disable_shuffling`, integer keys), and each
split's record_id/patient_id list is saved beside the shards (`sources.INDEX_FILE`) inside the
build's temporary folder, so it is renamed into place with the shards or not at all.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.record import LEADS, EcgFormatError, EcgRecord, SkipLog, handle_bad_record
from ecgfm.data.sources import ECGFM_METADATA_KEY, INDEX_FILE, multi_hot

VERSION = tfds.core.Version("1.0.0")
MICROVOLT = 1e-3  # mV per count when the values are whole microvolts
_INT16_MAX = 32767


def quantize(signal_TC: np.ndarray) -> tuple[np.ndarray, float]:
    """`[T, C]` float → (int16 counts, scale); exact (scale 1e-3) for whole-µV millivolts."""
    signal_TC = np.asarray(signal_TC, np.float64)
    microvolts_TC = signal_TC / MICROVOLT
    rounded_TC = np.rint(microvolts_TC)
    # 0.01 µV absorbs the float32 rounding of a whole-µV value stored as mV (≤ 0.002 µV).
    if np.abs(rounded_TC).max() <= _INT16_MAX and np.abs(microvolts_TC - rounded_TC).max() < 0.01:
        return rounded_TC.astype(np.int16), MICROVOLT
    peak = float(np.abs(signal_TC).max())
    scale = float(np.float32(peak / _INT16_MAX)) if peak > 0 else MICROVOLT
    return np.rint(signal_TC / scale).clip(-_INT16_MAX, _INT16_MAX).astype(np.int16), scale


def round_trip_tolerance(signal_TC: np.ndarray) -> float:
    """Largest absolute error `quantize` + float32 decoding may make on this signal.

    Half a count (max|x| / 65534) plus float32 rounding of the decoded value (a few 2^-24 of
    max|x|); for whole-µV input only the float32 rounding remains.
    """
    peak = max(float(np.abs(signal_TC).max()), MICROVOLT)
    return peak * (1 / (2 * _INT16_MAX) + 2**-21)


@dataclasses.dataclass(eq=False)
class EcgBuilderConfig(tfds.core.BuilderConfig):
    """One build of an ECG dataset: its label tasks, preprocessing and how splits were made.

    Attributes:
      tasks: task → label names (the `[K]` order of `labels/<task>`).
      default_task: the task `TfdsSource` reads when none is named.
      preprocessing: `Preprocessing.to_dict()` applied before storage, or None for raw mV.
      on_error: "raise" stops at the first bad record; "skip" leaves it out and reports it.
      options: dataset-specific choices (split file/column, fractions, seed), kept in metadata.
    """

    tasks: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    default_task: str = ""
    preprocessing: Mapping[str, Any] | None = None
    on_error: str = "raise"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def make_builder_config(
    tasks: Mapping[str, tuple[str, ...]], default_task: str, options: Mapping[str, Any]
) -> EcgBuilderConfig:
    """A config of `tasks` from `make_builder`'s options.

    `config_name` (default "default"), `preprocessing` and `on_error` become the config's own
    fields; the rest are the dataset's options, kept in metadata.
    """
    options = dict(options)
    return EcgBuilderConfig(
        name=options.pop("config_name", "default"),
        tasks=tasks,
        default_task=default_task,
        preprocessing=options.pop("preprocessing", None),
        on_error=options.pop("on_error", "raise"),
        options=options,
    )


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """Which record ids go to which split, and how that was decided (for the metadata)."""

    record_ids: Mapping[str, Sequence[str]]
    how: str


class EcgBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the ECG builders: subclasses open the reader, plan splits and label records."""

    VERSION = VERSION
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "ecgfm never downloads ECG datasets: pass the folder you already have as manual_dir "
        "(`ecgfm prepare <name> <folder> <data_dir>`)."
    )
    builder_config: EcgBuilderConfig

    # -- what each dataset provides ------------------------------------------------------------
    def open_reader(self, root: pathlib.Path) -> Any:
        """The dataset's reader over the manual folder."""
        raise NotImplementedError

    def plan_splits(self, reader: Any) -> SplitPlan:
        """Record ids per split."""
        raise NotImplementedError

    def read_record(self, reader: Any, record_id: str) -> EcgRecord:
        return reader.read(record_id)

    def task_labels(self, record: EcgRecord) -> Mapping[str, tuple[tuple[str, ...], bool]]:
        """task → (the record's label names, whether the task's labels are known)."""
        (task,) = self.builder_config.tasks
        return {task: (record.labels, True)}

    def extra_features(self) -> Mapping[str, tfds.features.FeatureConnector]:
        return {}

    def extra_values(self, record: EcgRecord) -> Mapping[str, Any]:
        return {}

    # -- shared ---------------------------------------------------------------------------------
    @property
    def preprocessing(self) -> Preprocessing | None:
        spec = self.builder_config.preprocessing
        return None if spec is None else Preprocessing.from_dict(spec)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        prep = self.preprocessing
        num_leads = len(LEADS) if prep is None else len(prep.leads)
        tasks = {t: tuple(names) for t, names in config.tasks.items()}

        def per_task(doc: str) -> tfds.features.FeaturesDict:
            return tfds.features.FeaturesDict(
                {
                    t: tfds.features.Tensor(shape=(len(n),), dtype=np.uint8)
                    for t, n in tasks.items()
                },
                doc=doc,
            )

        features = {
            # Raw bytes: an int16 list in a tf.train.Example proto decodes ~10x slower.
            "signal": tfds.features.Tensor(
                shape=(None, num_leads),
                dtype=np.int16,
                encoding=tfds.features.Encoding.BYTES,
                doc="[T, C] counts; value = count·scale",
            ),
            "signal_scale": tfds.features.Scalar(np.float32, doc="mV (or spec units) per count"),
            "sampling_rate": tfds.features.Scalar(np.float32, doc="Hz"),
            "record_id": tfds.features.Text(),
            "patient_id": tfds.features.Text(doc="empty where unknown"),
            "age": tfds.features.Scalar(np.float32, doc="years, NaN where unknown"),
            "sex": tfds.features.Text(doc="M, F or empty"),
            "labels": per_task("multi-hot per task, in metadata ecgfm.tasks order"),
            "label_mask": per_task("1 where the label is known"),
            **self.extra_features(),
        }
        metadata = tfds.core.MetadataDict(
            {
                ECGFM_METADATA_KEY: {
                    "tasks": {t: list(n) for t, n in tasks.items()},
                    "default_task": config.default_task,
                    "preprocessing": None if prep is None else prep.to_dict(),
                    "storage": "int16 counts x per-record signal_scale (1e-3 mV = exact µV, "
                    "else max|x|/32767); real length kept",
                    "on_error": config.on_error,
                    "options": dict(config.options),
                    "splits": {},
                }
            }
        )
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            metadata=metadata,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        reader = self.open_reader(pathlib.Path(dl_manager.manual_dir))
        # Rows the reader itself skipped while opening (bad CSV rows, exams without a shard).
        self.info.metadata[ECGFM_METADATA_KEY]["skipped_when_opening"] = [
            {"record": where, "reason": why} for where, why in reader.skip_log.skipped
        ]
        plan = self.plan_splits(reader)
        self.info.metadata[ECGFM_METADATA_KEY]["split_plan"] = plan.how
        # TFDS refuses a split that yields nothing; a small folder may leave one empty.
        return {
            split: self._generate_examples(reader, split, list(ids))
            for split, ids in plan.record_ids.items()
            if ids
        }

    def _example(self, record: EcgRecord) -> dict[str, Any]:
        prep = self.preprocessing
        signal_TC = record.signal if prep is None else prep.apply(record)
        counts_TC, scale = quantize(signal_TC)
        labels, label_mask = {}, {}
        for task, (names, known) in self.task_labels(record).items():
            labels[task] = multi_hot(names, self.builder_config.tasks[task]).astype(np.uint8)
            label_mask[task] = np.full(len(labels[task]), int(known), np.uint8)
        return {
            "signal": counts_TC,
            "signal_scale": np.float32(scale),
            "sampling_rate": np.float32(
                record.sampling_rate if prep is None else prep.sampling_rate
            ),
            "record_id": str(record.record_id),
            "patient_id": record.patient_id or "",
            "age": np.float32(np.nan if record.age is None else record.age),
            "sex": record.sex or "",
            "labels": labels,
            "label_mask": label_mask,
            **self.extra_values(record),
        }

    def _generate_examples(self, reader: Any, split: str, record_ids: list[str]) -> Iterator:
        skip_log = SkipLog()
        written: list[tuple[str, str]] = []
        label_counts = {t: np.zeros(len(n), np.int64) for t, n in self.builder_config.tasks.items()}
        for key, record_id in enumerate(record_ids):
            try:
                record = self.read_record(reader, record_id)
                example = self._example(record)
            except EcgFormatError as err:
                handle_bad_record(err, self.builder_config.on_error, skip_log)
                continue
            except ValueError as err:  # e.g. preprocessing refuses a too-short record
                bad = EcgFormatError(f"record {record_id}", str(err))
                handle_bad_record(bad, self.builder_config.on_error, skip_log)
                continue
            for task in label_counts:
                label_counts[task] += example["labels"][task] * example["label_mask"][task]
            written.append((example["record_id"], example["patient_id"]))
            yield key, example
        self._finish_split(split, written, label_counts, skip_log)

    def _finish_split(
        self,
        split: str,
        written: list[tuple[str, str]],
        label_counts: Mapping[str, np.ndarray],
        skip_log: SkipLog,
    ) -> None:
        record_ids = [r for r, _ in written]
        patient_ids = [p for _, p in written]
        # The builder's data_dir is the build's temporary folder until TFDS renames it.
        np.savez(
            pathlib.Path(self.data_dir) / INDEX_FILE.format(split=split),
            record_id=np.asarray(record_ids, dtype=np.str_),
            patient_id=np.asarray(patient_ids, dtype=np.str_),
        )
        tasks = self.builder_config.tasks
        self.info.metadata[ECGFM_METADATA_KEY]["splits"][split] = {
            "num_records": len(written),
            "num_patients": len({p for p in patient_ids if p}),
            "label_counts": {
                t: {name: int(c) for name, c in zip(tasks[t], label_counts[t], strict=True)}
                for t in tasks
            },
            "skipped": [{"record": where, "reason": why} for where, why in skip_log.skipped],
        }
        if skip_log.skipped:
            print(f"{self.name} {split}: {skip_log.summary()}")
