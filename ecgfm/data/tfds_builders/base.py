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

Shards. array_record files, one record per group (random access), compressed as
`EcgBuilderConfig.compression` says: "none" by default, because int16 ECG barely compresses
(zstd saves ~10–20 % of the bytes) while decompression is most of the reader's CPU time
(benchmarks/README.md, "Shard compression").

Order. Records are written in split-plan order (`disable_shuffling`, integer keys), and each
split's record_id/patient_id list is saved beside the shards (`sources.INDEX_FILE`) inside the
build's temporary folder, so it is renamed into place with the shards or not at all.

Generation. `EcgBuilder.convert` does one record's work (read → preprocess → quantize →
example) and `SplitSummary` collects a split's index and metadata from its results. A build in
this process calls both in a loop; a Beam build (`beam_build`, when `prepare_dataset` is given
a runner) calls the same two on its workers and gives the same records, index and metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core import writer as tfds_writer

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.record import LEADS, EcgFormatError, EcgRecord, SkipLog, handle_bad_record
from ecgfm.data.sources import ECGFM_METADATA_KEY, INDEX_FILE, multi_hot

VERSION = tfds.core.Version("1.0.0")
# array_record writer options per shard compression; one record per group, for random access.
COMPRESSIONS = {
    "none": "group_size:1,uncompressed",
    "snappy": "group_size:1,snappy",
    "zstd": "group_size:1,zstd:3",
}
DEFAULT_COMPRESSION = "none"
# A Beam build's per-split summary, written by the pipeline beside the shards and moved into
# metadata.json (then deleted) when the pipeline has finished.
SUMMARY_FILE = "ecgfm_summary_{split}.json"
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
      compression: of the shards, a key of `COMPRESSIONS`.
    """

    tasks: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    default_task: str = ""
    preprocessing: Mapping[str, Any] | None = None
    on_error: str = "raise"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    compression: str = DEFAULT_COMPRESSION

    @classmethod
    def create(
        cls, tasks: Mapping[str, tuple[str, ...]], default_task: str, options: Mapping[str, Any]
    ) -> EcgBuilderConfig:
        """A build's config: `options` holds the fields every build has (`config_name`,
        `preprocessing`, `on_error`, `compression`) and the dataset's own choices."""
        options = dict(options)
        return cls(
            name=options.pop("config_name", "default"),
            tasks=tasks,
            default_task=default_task,
            preprocessing=options.pop("preprocessing", None),
            on_error=options.pop("on_error", "raise"),
            compression=options.pop("compression", DEFAULT_COMPRESSION),
            options=options,
        )


class ShardWriter(tfds_writer.ExampleWriter):
    """Writes array_record shards with chosen options (TFDS's own writer always uses zstd).

    TFDS's documented hook for custom storage (`DatasetBuilder._example_writer`); it pickles,
    so distributed (Beam) builds write the same shards.
    """

    def __init__(self, compression: str):
        if compression not in COMPRESSIONS:
            raise ValueError(
                f"compression must be one of {sorted(COMPRESSIONS)}, not {compression!r}"
            )
        super().__init__(file_format=file_adapters.FileFormat.ARRAY_RECORD)
        self.compression = compression

    def write(self, path: Any, examples: Any) -> None:
        from array_record.python import array_record_module

        writer = array_record_module.ArrayRecordWriter(str(path), COMPRESSIONS[self.compression])
        for _, serialized in examples:
            writer.write(serialized)
        writer.close()


@contextlib.contextmanager
def config_in_code_quietly() -> Iterator[None]:
    """Silences TFDS's absl warning that a config was passed in code, as every ecgfm build does."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


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
    _beam_splits: list[str] | None = None  # the splits a Beam pipeline builds, else None
    # `beam_build.generate_examples`, set by `prepare_dataset` for a Beam build: this module
    # imports neither Beam (an optional extra) nor the module built on it.
    beam_examples: Callable[..., Any] | None = None

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
    def __setstate__(self, state: dict[str, Any]) -> None:
        # TFDS pickles a builder as its constructor's arguments (Beam workers get it so).
        with config_in_code_quietly():
            super().__setstate__(state)

    def _example_writer(self) -> ShardWriter:
        return ShardWriter(self.builder_config.compression)

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
                    "else max|x|/32767); real length kept; array_record shards, compression "
                    f"{config.compression}",
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

    def _download_and_prepare(
        self, dl_manager: tfds.download.DownloadManager, download_config: Any
    ) -> None:
        # TFDS builds through Beam when a `_generate_examples` returns a PTransform; ours do
        # exactly when the caller named a runner or pipeline options.
        self._beam_splits = None
        if download_config.beam_runner is not None or download_config.beam_options is not None:
            if self.beam_examples is None:
                raise ValueError("a Beam build goes through prepare_dataset(beam_runner=...)")
            self._beam_splits = []
        super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        self._source_dir = pathlib.Path(dl_manager.manual_dir)
        reader = self.open_reader(self._source_dir)
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

    def convert(self, reader: Any, key: int, record_id: str) -> Converted:
        """Record `key` of a split plan: read → preprocess → quantize → example.

        The per-record work of both builds (a single process, or Beam workers). A bad record
        raises `EcgFormatError`, or with `on_error="skip"` comes back as skipped, with why.
        """
        try:
            record = self.read_record(reader, record_id)
            return Converted(key, record_id, example=self._example(record))
        except EcgFormatError as err:
            bad = err
        except ValueError as err:  # e.g. preprocessing refuses a too-short record
            bad = EcgFormatError(f"record {record_id}", str(err))
        skip_log = SkipLog()
        handle_bad_record(bad, self.builder_config.on_error, skip_log)
        return Converted(key, record_id, skipped=skip_log.skipped[0])

    def _generate_examples(self, reader: Any, split: str, record_ids: list[str]) -> Any:
        if self._beam_splits is not None:  # the same work, spread over Beam's workers
            self._beam_splits.append(split)
            return self.beam_examples(
                self, split, record_ids, source_dir=self._source_dir, build_dir=self.data_dir
            )
        return self._generate_in_process(reader, split, record_ids)

    def _generate_in_process(self, reader: Any, split: str, record_ids: list[str]) -> Iterator:
        summary = SplitSummary(self.builder_config.tasks)
        for key, record_id in enumerate(record_ids):
            converted = self.convert(reader, key, record_id)
            summary.add(converted)
            if converted.example is not None:
                yield key, converted.example
        # The builder's data_dir is the build's temporary folder until TFDS renames it.
        summary.write_index(split_file(self.data_dir, INDEX_FILE, split))
        self._record_split(split, summary.metadata())

    def _process_pipeline_result(self, pipeline_result: Any) -> None:
        """After a Beam build: each split's summary, written by the pipeline, into metadata."""
        super()._process_pipeline_result(pipeline_result)
        for split in self._beam_splits or ():
            path = split_file(self.data_dir, SUMMARY_FILE, split)
            self._record_split(split, json.loads(path.read_text()))
            path.unlink()  # only metadata.json keeps it, as in a single-process build

    def _record_split(self, split: str, summary: Mapping[str, Any]) -> None:
        self.info.metadata[ECGFM_METADATA_KEY]["splits"][split] = dict(summary)
        if summary["skipped"]:
            lines = [f"{len(summary['skipped'])} records skipped:"]
            lines += [f"  {s['record']}: {s['reason']}" for s in summary["skipped"]]
            print(f"{self.name} {split}: " + "\n".join(lines))


@dataclasses.dataclass(frozen=True)
class Converted:
    """Record `key` of a split plan after `EcgBuilder.convert`: its example, or why not."""

    key: int
    record_id: str
    example: Mapping[str, Any] | None = None
    skipped: tuple[str, str] | None = None  # (where, reason)


class SplitSummary:
    """A split's index (record and patient ids) and metadata summary, record by record.

    Records may arrive in any order and in parts (`merge` joins the summaries of Beam
    workers); everything is put in key order (the split plan's) when read, so both builds
    write the same index and metadata.
    """

    def __init__(self, tasks: Mapping[str, Sequence[str]]):
        self.tasks = {t: tuple(names) for t, names in tasks.items()}
        self.written: list[tuple[int, str, str]] = []  # (key, record_id, patient_id)
        self.skipped: list[tuple[int, str, str]] = []  # (key, where, reason)
        self.label_counts = {t: np.zeros(len(n), np.int64) for t, n in self.tasks.items()}

    def add(self, converted: Converted) -> None:
        example = converted.example
        if example is None:
            where, why = converted.skipped or ("", "")
            self.skipped.append((converted.key, where, why))
            return
        self.written.append((converted.key, example["record_id"], example["patient_id"]))
        for task, counts in self.label_counts.items():
            counts += np.asarray(example["labels"][task]) * np.asarray(example["label_mask"][task])

    def merge(self, other: SplitSummary) -> SplitSummary:
        self.written += other.written
        self.skipped += other.skipped
        for task, counts in self.label_counts.items():
            counts += other.label_counts[task]
        return self

    def metadata(self) -> dict[str, Any]:
        """`num_records`, `num_patients`, `label_counts`, `skipped`: metadata.json's per split."""
        patients = {p for _, _, p in self.written if p}
        return {
            "num_records": len(self.written),
            "num_patients": len(patients),
            "label_counts": {
                t: {name: int(c) for name, c in zip(names, self.label_counts[t], strict=True)}
                for t, names in self.tasks.items()
            },
            "skipped": [{"record": where, "reason": why} for _, where, why in sorted(self.skipped)],
        }

    def write_index(self, path: epath.PathLike) -> None:
        """`sources.INDEX_FILE`: record_id and patient_id of the written records, in order."""
        written = sorted(self.written)
        with epath.Path(path).open("wb") as f:  # also on a cluster's storage (gs://, s3://)
            np.savez(
                f,
                record_id=np.asarray([r for _, r, _ in written], dtype=np.str_),
                patient_id=np.asarray([p for _, _, p in written], dtype=np.str_),
            )


def split_file(build_dir: epath.PathLike, template: str, split: str) -> epath.Path:
    """A split's file beside the shards, e.g. `INDEX_FILE` of "train"."""
    return epath.Path(build_dir) / template.format(split=split)
