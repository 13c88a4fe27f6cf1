"""The data module of a training run: `config.data` → training and validation batches.

    inputs = make_inputs(DataConfig.from_config(config.data), workdir=..., global_batch_size=...,
                         seed=...)
    batch = next(inputs.train)                       # this process's rows of a global batch
    for batch in inputs.validation_batches(): ...    # one padded pass over the validation split

Two sources, chosen by `data.source`:
- "tfds" (the default, the path at scale): a dataset built by `ecgfm prepare … --data-dir
  DATA_DIR`, read through grain from its array_record shards (`data.path` = DATA_DIR,
  `data.name` = the dataset). Its stored int16 counts go to the device as they are.
- "code_hdf5": a raw CODE-15% / CODE-II folder (`exams.csv` + `exams_part*.hdf5`) read and
  preprocessed in the training process, split by patient (`data.val_fraction`,
  `data.split_seed`). For quick looks at a folder without a prepare step; slow at scale.

The preprocessing is declared once: `data.preprocessing` is the spec the encoder sees (its
`num_samples` is the training window). A built dataset records the spec it was prepared with;
the two must agree in everything but the length, or `make_inputs` refuses the dataset naming
both. With `data.synthetic_exams` > 0 and no `data.path`, synthetic CODE-15%-layout exams are
written (and, for "tfds", prepared with the config's spec) under `WORKDIR/data` first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import jax
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from ecgfm.config import ConfigError, settings_from
from ecgfm.data import pipeline, splits
from ecgfm.data.preprocessing import CODE_400HZ, Preprocessing
from ecgfm.data.sources import CodeHdf5Source, PatientPairSource, Source, TfdsSource

log = logging.getLogger(__name__)

SOURCES = ("tfds", "code_hdf5")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where a run reads its exams and how they become the encoder's input (`config.data`).

    Attributes:
      source: "tfds" (a dataset built by `ecgfm prepare`) or "code_hdf5" (a raw CODE folder).
      path: tfds: the `--data-dir` given to `ecgfm prepare`; code_hdf5: the raw folder. Empty
        with `synthetic_exams` > 0: synthetic data under WORKDIR/data.
      name: tfds: the dataset's name under `path` ("code", "ptbxl", "cpsc2018").
      build: tfds: the build (TFDS config) name, where `path` holds several builds of `name`.
      task: the label set ("" = the dataset's default; PTB-XL has six).
      train_split, val_split: tfds split names; `val_split` "" evaluates nothing.
      preprocessing: the `Preprocessing` spec the encoder sees; `num_samples` is the window.
      patient_pairs: each example also carries another exam of its patient (CLOCS' view).
      worker_count: grain worker processes preparing training batches (0: threads only).
      synthetic_exams, synthetic_seed: synthetic CODE-15%-layout exams when `path` is empty.
      val_fraction, split_seed: code_hdf5: the patient-level validation split.
    """

    source: str = "tfds"
    path: str = ""
    name: str = "code"
    build: str = ""
    task: str = ""
    train_split: str = "train"
    val_split: str = "validation"
    preprocessing: Preprocessing = CODE_400HZ
    patient_pairs: bool = False
    worker_count: int = 0
    synthetic_exams: int = 0
    synthetic_seed: int = 0
    val_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        if self.preprocessing.num_samples is None:
            raise ValueError(
                "data.preprocessing.num_samples must be set: it is the training window (samples)"
            )
        if not self.path and self.synthetic_exams <= 0:
            raise ValueError(
                "data.path is empty: set it to the folder `ecgfm prepare … --data-dir` wrote "
                "(or, for source=code_hdf5, the raw CODE folder), or set data.synthetic_exams"
            )
        if self.worker_count < 0 or self.synthetic_exams < 0:
            raise ValueError("data.worker_count and data.synthetic_exams must be >= 0")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must lie in [0, 1), got {self.val_fraction}")

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> DataConfig:
        """From `config.data`; unknown keys and bad values are `ConfigError`s naming them."""
        values = dict(data)
        try:
            spec = Preprocessing.from_dict(dict(values.pop("preprocessing", {})))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"data.preprocessing: {err}") from None
        return settings_from(cls, {**values, "preprocessing": spec}, "data")


def data_section(**values: Any) -> ConfigDict:
    """`config.data` with every field (defaults replaced by `values`), for a config file.

    `preprocessing` is a nested section with every `Preprocessing` field.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    spec = Preprocessing.from_dict(dict(values.pop("preprocessing", {}))) if (
        "preprocessing" in values) else defaults["preprocessing"]  # fmt: skip
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys of data: {list(defaults)}")
    preprocessing = spec.to_dict() | {"leads": spec.leads, "bandpass": spec.bandpass}
    return ConfigDict(defaults | values | {"preprocessing": ConfigDict(preprocessing)})


@dataclasses.dataclass
class Inputs:
    """A run's batches and what they hold.

    Attributes:
      train: this process's endless, resumable (`get_state`/`set_state`) training batches.
      label_names: the K label names, in the order of `labels`.
      preprocessing: the spec the signals went through (what an exported encoder expects).
      num_train, num_validation: records in each split.
      description: where the data came from (path, dataset, build, splits, stored spec).
    """

    train: grain.DatasetIterator
    label_names: tuple[str, ...]
    preprocessing: Preprocessing
    num_train: int
    num_validation: int
    description: dict[str, Any]
    _validation: Source | None
    _global_batch_size: int
    _window: int

    def close(self) -> None:
        """Stop the training iterator's read-ahead (and its worker processes, if any)."""
        close = getattr(self.train, "close", None)
        if close is not None:
            close()

    def validation_batches(self) -> Iterator[dict] | None:
        """One padded pass over the validation split (None when there is none)."""
        if self._validation is None:
            return None
        return pipeline.make_eval_iterator(
            self._validation, global_batch_size=self._global_batch_size, window=self._window
        )


def mismatches(stored: Preprocessing, wanted: Preprocessing) -> list[str]:
    """How a dataset's stored spec differs from the one a config wants (the length aside:
    a dataset stored at full length serves any window)."""
    stored_values, wanted_values = stored.to_dict(), wanted.to_dict()
    found = [
        f"{name} {stored_values[name]!r} vs {wanted_values[name]!r}"
        for name in stored_values
        if name != "num_samples" and stored_values[name] != wanted_values[name]
    ]
    if stored.num_samples is not None and stored.num_samples != wanted.num_samples:
        found.append(f"num_samples {stored.num_samples} vs {wanted.num_samples}")
    return found


def check_prepared_with(stored: Preprocessing | None, wanted: Preprocessing, where: str) -> None:
    """Raises `ConfigError` naming both specs unless the dataset at `where` was prepared as
    `wanted` says."""
    if stored is None:
        raise ConfigError(
            f"the dataset at {where} records no preprocessing spec: rebuild it with `ecgfm "
            "prepare` of this version"
        )
    differences = mismatches(stored, wanted)
    if differences:
        raise ConfigError(
            f"the dataset at {where} was prepared with [{stored.describe()}] but "
            f"data.preprocessing asks for [{wanted.describe()}] (dataset vs config: "
            f"{'; '.join(differences)}). Rebuild it with `ecgfm prepare … --config CONFIG`, or "
            "set data.preprocessing to the dataset's spec."
        )


def _synthetic_code(data: DataConfig, workdir: pathlib.Path) -> DataConfig:
    """`data` pointing at synthetic exams under WORKDIR/data, written (and built) if absent.

    The raw folder appears only when complete (written beside, then renamed), and a TFDS
    build only when every split is written, so an interrupted run rebuilds what is missing.
    The build is named by its spec, so a changed spec builds anew rather than mismatching.
    """
    from ecgfm.data.synthetic import write_dataset
    from ecgfm.data.tfds_builders import prepare_dataset

    root = workdir / "data"
    raw = root / f"code_synthetic_{data.synthetic_exams}_{data.synthetic_seed}"
    stored = dataclasses.replace(data.preprocessing, num_samples=None)
    build = "synthetic_" + hashlib.sha256(stored.to_json().encode()).hexdigest()[:10]
    if jax.process_index() == 0:
        if not raw.is_dir():
            write_dataset("code", raw, num_records=data.synthetic_exams, seed=data.synthetic_seed)
        if data.source == "tfds":
            prepare_dataset("code", raw, root / "tfds", preprocessing=stored, config_name=build)
    multihost_utils.sync_global_devices("synthetic data ready")
    if data.source == "tfds":
        return dataclasses.replace(data, path=str(root / "tfds"), name="code", build=build)
    return dataclasses.replace(data, path=str(raw))


def _tfds_sources(data: DataConfig) -> tuple[Source, Source | None, dict[str, Any]]:
    task, build = data.task or None, data.build or None
    train = TfdsSource(data.path, data.name, data.train_split, task=task, config=build)
    check_prepared_with(train.preprocessing, data.preprocessing, str(train.dataset_dir))
    validation = None
    if data.val_split:
        validation = TfdsSource(data.path, data.name, data.val_split, task=task, config=build)
    description = {
        "source": "tfds",
        "path": str(train.dataset_dir),
        "name": data.name,
        "task": train.task,
        "splits": {"train": data.train_split, "validation": data.val_split},
        "stored_preprocessing": train.preprocessing.to_dict(),
    }
    return train, validation, description


def _code_hdf5_sources(data: DataConfig) -> tuple[Source, Source | None, dict[str, Any]]:
    # Records are read whole and prepared on the fly; the pipeline cuts the windows.
    spec = dataclasses.replace(data.preprocessing, num_samples=None)
    everything = CodeHdf5Source(data.path, preprocessing=spec)
    fractions = {"train": 1.0 - data.val_fraction, "validation": data.val_fraction}
    split = splits.patient_split(
        everything.record_ids, everything.patient_ids, fractions=fractions, seed=data.split_seed
    )
    train = CodeHdf5Source(data.path, preprocessing=spec, record_ids=split["train"])
    validation = None
    if split["validation"]:
        validation = CodeHdf5Source(data.path, preprocessing=spec, record_ids=split["validation"])
    description = {
        "source": "code_hdf5",
        "path": str(pathlib.Path(data.path).absolute()),
        "splits": f"patient_split(val_fraction={data.val_fraction}, seed={data.split_seed})",
    }
    return train, validation, description


def make_inputs(
    data: DataConfig,
    *,
    workdir: str | pathlib.Path,
    global_batch_size: int,
    seed: int,
) -> Inputs:
    """The run's training iterator (this process's rows) and validation split, per `data`."""
    if not data.path:
        data = _synthetic_code(data, pathlib.Path(workdir))
    if data.source == "tfds":
        train, validation, description = _tfds_sources(data)
    else:
        train, validation, description = _code_hdf5_sources(data)
    label_names = tuple(train.label_names)
    if data.patient_pairs:
        train = PatientPairSource(train, seed=seed)
    if len(train) < global_batch_size:
        raise ConfigError(
            f"train.global_batch_size {global_batch_size} is larger than the {len(train)} "
            f"training records of {description['path']}"
        )
    window = data.preprocessing.num_samples
    iterator = pipeline.make_train_iterator(
        train,
        global_batch_size=global_batch_size,
        seed=seed,
        window=window,
        worker_count=data.worker_count,
    )
    return Inputs(
        train=iterator,
        label_names=label_names,
        preprocessing=data.preprocessing,
        num_train=len(train),
        num_validation=len(validation) if validation is not None else 0,
        description=description,
        _validation=validation,
        _global_batch_size=global_batch_size,
        _window=window,
    )
