"""Random-access sources of training elements: built TFDS datasets, raw CODE folders, memory.

Every source is a picklable sequence (grain worker processes are spawned and receive a copy)
whose `source[i]` is one element::

    {"signal": [T, C] int16 counts or float32 values, "signal_scale": float32 (value = signal ·
     signal_scale; mV or the spec's units), "labels": [K] float32 in {0, 1}, "label_mask": [K]
     float32 (1 = label known), "record_id": str, "patient_id": str ("" where unknown)}

Built datasets hand out their stored int16 counts: the batch stays int16 on the host and is
scaled inside the jitted step (`ecgfm.train_state.decode_signals`), half the bytes of float32
and no float batch assembled on the host. `signal_mv(element)` gives float32 values.

and which exposes `label_names` (the K names), `preprocessing` (the `Preprocessing` its signals
went through, or None for raw millivolts), `record_ids` and `patient_ids` (per index, None where
the source has no patients). `ecgfm.data.pipeline` turns a source into batches.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.record import EcgRecord

Element = dict[str, Any]
# Written beside a built dataset's TFDS files: record_id and patient_id of each split in
# storage order (TFDS stores only the examples), so patient views need no pass over signals.
INDEX_FILE = "ecgfm_index_{split}.npz"
ECGFM_METADATA_KEY = "ecgfm"


@runtime_checkable
class Source(Protocol):
    """What `ecgfm.data.pipeline` reads from: a sized, picklable, random-access element store."""

    label_names: tuple[str, ...]
    preprocessing: Preprocessing | None

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Element: ...

    @property
    def record_ids(self) -> Sequence[str]: ...

    @property
    def patient_ids(self) -> Sequence[str] | None: ...


def multi_hot(labels: Sequence[str], label_names: Sequence[str]) -> np.ndarray:
    """`[K]` float32 with 1 where a name of `label_names` is in `labels`; unknown names raise."""
    index = {name: k for k, name in enumerate(label_names)}
    unknown = sorted(set(labels) - index.keys())
    if unknown:
        raise ValueError(f"labels {unknown} are not in the label set {list(label_names)}")
    out_K = np.zeros(len(label_names), np.float32)
    out_K[[index[name] for name in labels]] = 1.0
    return out_K


def signal_mv(element: Element, key: str = "signal") -> np.ndarray:
    """The element's `[T, C]` signal as float32 values (counts · scale)."""
    return np.multiply(element[key], element[f"{key}_scale"], dtype=np.float32)


def element_from_record(
    record: EcgRecord, label_names: Sequence[str], preprocessing: Preprocessing | None = None
) -> Element:
    """One element from an `EcgRecord`: signal through `preprocessing`, all labels known."""
    signal_TC = record.signal if preprocessing is None else preprocessing.apply(record)
    return {
        "signal": np.asarray(signal_TC, np.float32),
        "signal_scale": np.float32(1.0),
        "labels": multi_hot(record.labels, label_names),
        "label_mask": np.ones(len(label_names), np.float32),
        "record_id": record.record_id,
        "patient_id": record.patient_id or "",
    }


class InMemorySource:
    """Elements held in memory: for tests, small datasets and records read once.

    Signals are taken as already prepared; `preprocessing` only says how (it is reported, not
    applied).
    """

    def __init__(
        self,
        signals: Sequence[np.ndarray],
        labels_NK: np.ndarray,
        *,
        label_names: Sequence[str],
        record_ids: Sequence[str] | None = None,
        patient_ids: Sequence[str] | None = None,
        label_mask_NK: np.ndarray | None = None,
        preprocessing: Preprocessing | None = None,
    ):
        num = len(signals)
        labels_NK = np.asarray(labels_NK, np.float32).reshape(num, len(label_names))
        if label_mask_NK is None:
            label_mask_NK = np.ones_like(labels_NK)
        label_mask_NK = np.asarray(label_mask_NK, np.float32)
        if label_mask_NK.shape != labels_NK.shape:
            raise ValueError(f"label_mask {label_mask_NK.shape} != labels {labels_NK.shape}")
        for name, ids in (("record_ids", record_ids), ("patient_ids", patient_ids)):
            if ids is not None and len(ids) != num:
                raise ValueError(f"{name} has {len(ids)} entries for {num} signals")
        self._signals = [np.asarray(s, np.float32) for s in signals]
        self._labels_NK = labels_NK
        self._label_mask_NK = label_mask_NK
        self.label_names = tuple(label_names)
        self._record_ids = tuple(str(r) for r in (record_ids or range(num)))
        self._patient_ids = None if patient_ids is None else tuple(str(p) for p in patient_ids)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self._signals)

    def __getitem__(self, index: int) -> Element:
        index = int(index)
        return {
            "signal": self._signals[index],
            "signal_scale": np.float32(1.0),
            "labels": self._labels_NK[index],
            "label_mask": self._label_mask_NK[index],
            "record_id": self._record_ids[index],
            "patient_id": "" if self._patient_ids is None else self._patient_ids[index],
        }

    @property
    def record_ids(self) -> tuple[str, ...]:
        return self._record_ids

    @property
    def patient_ids(self) -> tuple[str, ...] | None:
        return self._patient_ids


class CodeHdf5Source:
    """A raw CODE-15% / CODE-II folder read directly (no prepare step), e.g. for smoke runs.

    Random access into the HDF5 parts through `ecgfm.data.code.CodeDataset`; the reader (and its
    open files) is created lazily in each process, so the source pickles as its folder and ids.
    `record_ids` restricts it to those exams (e.g. one side of `splits.patient_split`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        preprocessing: Preprocessing | None = None,
        record_ids: Sequence[str] | None = None,
    ):
        self.root = pathlib.Path(root)
        self.preprocessing = preprocessing
        dataset = self._dataset()
        self.label_names = tuple(dataset.label_names)
        known = tuple(dataset.record_ids)
        if record_ids is None:
            self._record_ids = known
        else:
            missing = sorted(set(map(str, record_ids)) - set(known))
            if missing:
                raise KeyError(f"{len(missing)} exams not in {self.root}, e.g. {missing[:5]}")
            self._record_ids = tuple(str(r) for r in record_ids)
        self._patient_ids = tuple(dataset.patient_id(int(r)) or "" for r in self._record_ids)

    def _dataset(self):
        # Pickled with the source: CodeDataset drops its open HDF5 handles and reopens them in
        # each worker, without parsing exams.csv again.
        if getattr(self, "_reader", None) is None:
            from ecgfm.data.code import CodeDataset

            self._reader = CodeDataset(self.root)
        return self._reader

    def __len__(self) -> int:
        return len(self._record_ids)

    def __getitem__(self, index: int) -> Element:
        record = self._dataset().read(self._record_ids[int(index)])
        return element_from_record(record, self.label_names, self.preprocessing)

    @property
    def record_ids(self) -> tuple[str, ...]:
        return self._record_ids

    @property
    def patient_ids(self) -> tuple[str, ...]:
        return self._patient_ids


def built_dataset_dir(
    data_dir: str | os.PathLike, name: str, *, config: str | None = None
) -> pathlib.Path:
    """`<data_dir>/<name>/<config>/<version>` of a dataset built by `prepare_dataset`.

    With `config` None there must be exactly one build of `name` under `data_dir`.
    """
    pattern = f"{config or '*'}/*/dataset_info.json"
    found = sorted(pathlib.Path(data_dir, name).glob(pattern))
    if not found:
        raise FileNotFoundError(
            f"no built dataset {name!r} under {data_dir} (expected "
            f"{name}/<config>/<version>/dataset_info.json); run `ecgfm prepare {name}` first"
        )
    if len(found) > 1:
        raise ValueError(
            f"several builds of {name!r} under {data_dir}: {[str(p.parent) for p in found]}; "
            "name the config"
        )
    return found[0].parent


def read_ecgfm_metadata(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """The ecgfm part of a built dataset's `metadata.json` (tasks, preprocessing, storage)."""
    path = pathlib.Path(dataset_dir, "metadata.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {dataset_dir} was not built by ecgfm")
    return json.loads(path.read_text())[ECGFM_METADATA_KEY]


def _example_proto():
    """The `tf.train.Example` message class that TFDS ships (no TensorFlow needed)."""
    from tensorflow_datasets.proto import tf_example_pb2

    return tf_example_pb2.Example


class TfdsSource:
    """A split of a dataset built by `ecgfm.data.tfds_builders.prepare_dataset`.

    Reads through `tfds.data_source` (array_record, random access, no TensorFlow). `task`
    picks the label set for datasets that have several (PTB-XL's six); None takes the
    dataset's default task; `config` picks one build where `data_dir` holds several.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        name: str,
        split: str,
        *,
        task: str | None = None,
        config: str | None = None,
    ):
        self.dataset_dir = built_dataset_dir(data_dir, name, config=config)
        self.split = split
        metadata = read_ecgfm_metadata(self.dataset_dir)
        tasks = metadata["tasks"]
        self.task = metadata["default_task"] if task is None else task
        if self.task not in tasks:
            raise ValueError(f"{name} has tasks {sorted(tasks)}, not {self.task!r}")
        self.label_names = tuple(tasks[self.task])
        spec = metadata["preprocessing"]
        self.preprocessing = None if spec is None else Preprocessing.from_dict(spec)
        index_path = self.dataset_dir / INDEX_FILE.format(split=split)
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path} is missing; is {split!r} a split of {name}?")
        with np.load(index_path, allow_pickle=False) as index:
            self._record_ids = tuple(index["record_id"].tolist())
            patients = index["patient_id"].tolist()
        self._patient_ids = tuple(patients) if any(patients) else None
        self._data_source = None
        self._raw_source = None
        self._num_leads = 0
        if len(self) != len(self._records()):
            raise ValueError(
                f"{index_path} lists {len(self)} records but split {split!r} holds "
                f"{len(self._records())}: the build is incomplete or was changed"
            )

    def _records(self):
        if self._data_source is None:
            import tensorflow_datasets as tfds

            self._data_source = tfds.builder_from_directory(self.dataset_dir).as_data_source(
                self.split
            )
        return self._data_source

    def _serialized(self):
        """The split's array_record reader (TFDS's own, so shards and order are TFDS's)."""
        if self._raw_source is None:
            records = self._records()
            self._num_leads = records.dataset_info.features["signal"].shape[-1]
            self._raw_source = records.data_source
        return self._raw_source

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data_source": None, "_raw_source": None}

    def __len__(self) -> int:
        return len(self._record_ids)

    def _element(self, serialized: bytes, index: int) -> Element:
        # Reads the tf.train.Example proto directly: TFDS's generic numpy decoder spends more
        # time walking its feature tree than reading the record. Values are the same bits.
        feature = _example_proto().FromString(serialized).features.feature
        try:
            record_id = feature["record_id"].bytes_list.value[0].decode()
            counts = feature["signal"].bytes_list.value[0]
            scale = feature["signal_scale"].float_list.value[0]
            labels = feature[f"labels/{self.task}"].int64_list.value
            label_mask = feature[f"label_mask/{self.task}"].int64_list.value
        except (KeyError, IndexError) as err:
            raise ValueError(
                f"{self.dataset_dir}: split {self.split!r} row {index} lacks field {err}: "
                "not an ecgfm build, or the shards were changed"
            ) from err
        if record_id != self._record_ids[index]:
            raise ValueError(
                f"{self.dataset_dir}: split {self.split!r} row {index} holds {record_id!r}, "
                f"the index says {self._record_ids[index]!r}: the shards were changed"
            )
        return {
            "signal": np.frombuffer(counts, np.int16).reshape(-1, self._num_leads),
            "signal_scale": np.float32(scale),
            "labels": np.array(labels, np.float32),
            "label_mask": np.array(label_mask, np.float32),
            "record_id": record_id,
            "patient_id": "" if self._patient_ids is None else self._patient_ids[index],
        }

    def __getitem__(self, index: int) -> Element:
        index = int(index)
        return self._element(self._serialized()[index], index)

    def __getitems__(self, indices: Sequence[int]) -> list[Element]:
        """Elements of `indices`, read in one call (array_record decompresses them in parallel)."""
        indices = [int(i) for i in indices]
        records = self._serialized().__getitems__(indices)
        return [self._element(r, i) for r, i in zip(records, indices, strict=True)]

    def example(self, index: int) -> dict[str, Any]:
        """The stored example as TFDS decodes it (all tasks, metadata fields)."""
        return self._records()[int(index)]

    @property
    def record_ids(self) -> tuple[str, ...]:
        return self._record_ids

    @property
    def patient_ids(self) -> tuple[str, ...] | None:
        return self._patient_ids


class PatientPairSource:
    """Pairs of different exams of one patient (CLOCS-style contrastive views).

    Index i is the i-th exam among patients with at least two exams; its partner is another
    exam of the same patient, drawn from a generator seeded by (seed, i). An element is the
    anchor's element plus `signal_b`, `signal_b_scale`, `record_id_b` (the partner's); labels
    are the anchor's.
    """

    def __init__(self, source: Source, *, seed: int = 0):
        patient_ids = source.patient_ids
        if patient_ids is None:
            raise ValueError(f"{type(source).__name__} has no patient ids; cannot pair exams")
        by_patient: dict[str, list[int]] = {}
        for index, patient in enumerate(patient_ids):
            if patient:
                by_patient.setdefault(patient, []).append(index)
        self._groups = [g for g in by_patient.values() if len(g) > 1]
        self._anchors = [(a, g) for g in self._groups for a in range(len(g))]
        if not self._anchors:
            raise ValueError("no patient has two or more exams in this source")
        self.source = source
        self.seed = seed
        self.label_names = source.label_names
        self.preprocessing = source.preprocessing

    @property
    def num_patients(self) -> int:
        return len(self._groups)

    def __len__(self) -> int:
        return len(self._anchors)

    def pair(self, index: int) -> tuple[int, int]:
        """Source indices (anchor, partner) of pair `index`: two exams of one patient."""
        position, group = self._anchors[int(index)]
        rng = np.random.default_rng([self.seed, int(index)])
        other = int(rng.integers(len(group) - 1))
        return group[position], group[other + (other >= position)]

    def __getitem__(self, index: int) -> Element:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Element]:
        """Pairs of `indices`, anchors and partners read from the source in one call."""
        wanted = [i for index in indices for i in self.pair(index)]
        getitems = getattr(self.source, "__getitems__", None)
        read = getitems(wanted) if getitems is not None else [self.source[i] for i in wanted]
        elements = []
        for anchor, partner in zip(read[0::2], read[1::2], strict=True):
            element = dict(anchor)
            element["signal_b"] = partner["signal"]
            element["signal_b_scale"] = partner["signal_scale"]
            element["record_id_b"] = partner["record_id"]
            elements.append(element)
        return elements

    @property
    def record_ids(self) -> list[str]:
        ids = self.source.record_ids
        return [ids[self.pair(i)[0]] for i in range(len(self))]

    @property
    def patient_ids(self) -> list[str]:
        ids = self.source.patient_ids
        return [ids[self.pair(i)[0]] for i in range(len(self))]
