"""Read PyTorch `.pth`/`.pt` checkpoints into numpy without PyTorch and without running code.

`torch.save` (PyTorch ≥ 1.6) writes a zip: `<name>/data.pkl` is a pickle of the object whose
tensors point, by "persistent id", at raw little-endian storages `<name>/data/<key>`. A pickle
can name any Python callable, which is how a malicious checkpoint runs code, so this reader
unpickles with an allowlist, like `torch.load(weights_only=True)`: containers, numbers,
strings, tensors (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`, the typed storage
classes), and numpy scalars/arrays (which `torch.load(weights_only=True)` refuses since PyTorch
2.6, yet training scripts store, e.g. ecg-age-prediction's `valid_loss`). Anything else (an
`argparse.Namespace`, an omegaconf config, a model object pickled whole) raises
`UnsafeCheckpointError` naming the global, and nothing is executed.

Tensors come back as numpy arrays (bfloat16 through `ml_dtypes`); the legacy pre-1.6 tar
format is refused with a message saying how to convert it.
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint's pickle names a callable outside the allowlist; nothing was run."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, meta=None):
    del requires_grad, hooks, meta
    if not size:
        return storage[offset].copy()
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    del requires_grad, hooks
    return data


def _numpy_scalar(dtype: np.dtype, data: bytes | None = None):
    return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


def _numpy_reconstruct(cls, shape, dtype_code):
    # numpy's own `_reconstruct(ndarray, (0,), b'b')` is followed by `__setstate__`: an empty
    # ndarray whose setstate fills it from the pickled bytes (data only).
    del shape, dtype_code
    if cls is not np.ndarray:
        raise UnsafeCheckpointError(f"numpy _reconstruct of {cls!r} is not allowed")
    return np.ndarray((0,), np.uint8)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    # Pickle protocol 2 writes `bytes` as `_codecs.encode(text, "latin1")` (numpy scalars do).
    if encoding != "latin1":
        raise UnsafeCheckpointError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{(m, "scalar"): _numpy_scalar for m in _NUMPY_CORE},
    **{(m, "_reconstruct"): _numpy_reconstruct for m in _NUMPY_CORE},
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}
_ALLOWED_BUILTINS = {"set", "frozenset", "tuple", "list", "dict", "int", "float", "complex"}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, np.ndarray], where: str):
        super().__init__(file)
        self._storages = storages
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _ALLOWED_BUILTINS:
            return getattr(__import__("builtins"), name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafeCheckpointError(
            f"{self._where}: the checkpoint's pickle names {module}.{name}, which is not a "
            "tensor, number, string or container. Reading it would run code from the file, so "
            "ecgfm refuses (as torch.load(weights_only=True) does). If you trust the file, "
            "load it with torch and save only the state_dict: "
            "torch.save(torch.load(path, weights_only=False)['model'], 'clean.pth')"
        )

    def persistent_load(self, pid: Any) -> Any:
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"{self._where}: unknown persistent id {pid!r}")
        return self._storages(key, storage_type.dtype)


def read_torch_checkpoint(path: str | pathlib.Path) -> Any:
    """The object `torch.save` wrote to `path`, with numpy arrays for tensors; runs no code."""
    path = pathlib.Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a zip-format PyTorch checkpoint (the legacy format of PyTorch < 1.6, "
            "or not a checkpoint). Convert it once with PyTorch: "
            "torch.save(torch.load(path, weights_only=True), 'new.pth')"
        )
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        byteorder = archive.read(order).decode() if order in names else "little"
        cache: dict[str, np.ndarray] = {}

        def storage(key: str, dtype: np.dtype) -> np.ndarray:
            if key not in cache:
                raw = archive.read(f"{prefix}data/{key}")
                dtype = dtype.newbyteorder("<" if byteorder == "little" else ">")
                cache[key] = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
            return cache[key]

        with archive.open(pickles[0]) as f:
            return _Unpickler(io.BytesIO(f.read()), storage, str(path)).load()


def find_state_dict(checkpoint: Any, keys: tuple[str, ...] = ("state_dict", "model")) -> dict:
    """The `{name: array}` inside a checkpoint: itself, or under the first of `keys` it has."""
    if isinstance(checkpoint, dict):
        for key in keys:
            if isinstance(checkpoint.get(key), dict):
                return dict(checkpoint[key])
        if checkpoint and all(isinstance(v, np.ndarray) for v in checkpoint.values()):
            return dict(checkpoint)
    top = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise ValueError(f"no state_dict found in the checkpoint (looked under {keys}; it holds {top})")
