"""MATLAB `.mat` files read in pure Python and numpy: v4 (the Challenge's `val`) and a v5 subset.

Why not `scipy.io.loadmat`: its MATLAB 5 reader is compiled code (`scipy.io.matlab._mio5_utils`)
that trusts the sizes and data types a file declares. Changing 2 bytes of an uncompressed CPSC
2018 `.mat` (e.g. the data type of `ECG.age`'s small data element) made it read out of bounds and
kill the process with SIGSEGV or SIGBUS: 7 of 300 two-byte mutations of a real record did, with
scipy 1.17. A crash cannot be caught, so `on_error="skip"` and `ecgfm inspect` died with it.
Checking the structure first would mean walking every tag as a parser does, and a sandbox
process per record would cost ~100 ms each; so the small part of the format ECG files use is
parsed here, every size checked against the bytes that are there before anything is allocated.
Reading a CPSC record takes about as long as loadmat did (the zlib inflate dominates).

What is read:
- MATLAB v4 (Level 1.0): a sequence of real, full numeric matrices (double, single, int32,
  int16, uint16, uint8), little- or big-endian. The Challenge's `X.mat` is one int16 `val`.
- MATLAB 5 (Level 5, also what `save -v7` writes): `miMATRIX` variables, zlib-compressed
  (`miCOMPRESSED`) or not, of the numeric classes (stored in any numeric data type, as MATLAB
  stores whole doubles as small integers), logical, char (one row of text, returned as `str`)
  and 1×1 structs of those (returned as `dict`), nested at most `MAX_DEPTH` deep. Numeric
  arrays keep MATLAB's dimensions (at least 2) in MATLAB's (column-major) order, as
  `scipy.io.loadmat` returns them.

What raises `EcgFormatError` naming the file and the byte offset: a file over `MAX_FILE_BYTES`,
a tag or a size that runs past its container, an unknown data type, dimensions whose product
does not match the data, a decompressed element over `MAX_FILE_BYTES`, complex values, and the
classes ECG files do not use (cell, sparse, object, function handle, struct arrays of other than
one element). A MATLAB v7.3 file is HDF5; it is refused with a message saying so.
"""

from __future__ import annotations

import math
import pathlib
import struct
import zlib
from typing import Any

import numpy as np

from ecgfm.data.files import MIB, read_bytes
from ecgfm.data.record import EcgFormatError

# The largest `.mat` read, and the most one compressed element may inflate to: 60 s of 12 leads
# at 500 Hz in double (CPSC's longest) is 2.9 MB; a 30 min INCART record in int16 is 11 MB.
MAX_FILE_BYTES = 256 * MIB
MAX_DEPTH = 4  # struct nesting
MAX_NAME_BYTES = 256  # MATLAB names are at most 63 characters (namelengthmax)
MAX_FIELDS = 1024
MAX_DIMS = 32

MatValue = np.ndarray | str | dict[str, Any]

_HEADER_BYTES = 128
_V5, _V73 = 0x0100, 0x0200

# MAT-file 5 data types: code -> (name, numpy type code); None where it holds no numbers.
_MI_TYPES: dict[int, tuple[str, str | None]] = {
    1: ("miINT8", "i1"),
    2: ("miUINT8", "u1"),
    3: ("miINT16", "i2"),
    4: ("miUINT16", "u2"),
    5: ("miINT32", "i4"),
    6: ("miUINT32", "u4"),
    7: ("miSINGLE", "f4"),
    9: ("miDOUBLE", "f8"),
    12: ("miINT64", "i8"),
    13: ("miUINT64", "u8"),
    14: ("miMATRIX", None),
    15: ("miCOMPRESSED", None),
    16: ("miUTF8", "u1"),
    17: ("miUTF16", "u2"),
    18: ("miUTF32", "u4"),
}
_MI_MATRIX, _MI_COMPRESSED, _MI_UTF8 = 14, 15, 16
# Which data types each part of a matrix may be stored as.
_MI_NUMERIC = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13})
_UINT32, _INT32, _BYTES = frozenset({6}), frozenset({5}), frozenset({1, 2})
_TEXT = frozenset({1, 2, 3, 4, 5, 6, 16, 17, 18})  # MATLAB writes miUINT16, scipy miUTF8
# MATLAB array classes (code -> numpy type of the values for the numeric ones).
_CELL, _STRUCT, _OBJECT, _CHAR, _SPARSE = 1, 2, 3, 4, 5
_NUMERIC_CLASSES: dict[int, str] = {
    6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8",
}  # fmt: skip
_CLASS_NAMES = {_CELL: "cell", _OBJECT: "object", _SPARSE: "sparse", 16: "function handle",
                17: "opaque (e.g. a table or string object)"}  # fmt: skip
_COMPLEX, _LOGICAL = 0x08, 0x02

# MATLAB v4 precision digit P -> numpy type code.
_V4_TYPES = {0: "f8", 1: "f4", 2: "i4", 3: "i2", 4: "u2", 5: "u1"}


def read_mat(
    path: str | pathlib.Path, *, missing: str = "signal file is missing"
) -> dict[str, MatValue]:
    """The variables of a MATLAB v4 or v5 `.mat` file, by name; anything else raises.

    `missing` is the problem a missing file is reported with.
    """
    path = pathlib.Path(path)
    data = read_bytes(path, missing=missing, max_bytes=MAX_FILE_BYTES)
    if len(data) < 4:
        raise EcgFormatError(path, f"is {len(data)} bytes: not a MATLAB file")
    if data[:4] == b"\x89HDF":
        raise EcgFormatError(path, "is an HDF5 file, not a MATLAB v4/v5 .mat")
    if 0 in data[:4]:  # a v5 header starts with text; a v4 one with a small integer
        return _Mat4(path, data).variables()
    return _Mat5(path, data).variables()


class _Mat4:
    """A MATLAB v4 file: matrices one after another, each a 20-byte header, name and data."""

    def __init__(self, path: pathlib.Path, data: bytes):
        self.path, self.data = path, data

    def fail(self, offset: int, problem: str) -> EcgFormatError:
        return EcgFormatError(self.path, f"MATLAB v4, byte {offset}: {problem}")

    def variables(self) -> dict[str, MatValue]:
        out: dict[str, MatValue] = {}
        pos = 0
        while pos < len(self.data):
            name, value, pos = self._matrix(pos)
            if name in out:
                raise self.fail(pos, f"variable {name!r} is stored twice")
            out[name] = value
        return out

    def _matrix(self, pos: int) -> tuple[str, np.ndarray, int]:
        data = self.data
        if pos + 20 > len(data):
            raise self.fail(pos, f"matrix header needs 20 bytes, {len(data) - pos} remain")
        mopt = struct.unpack_from("<i", data, pos)[0]
        order = "<"
        if not 0 <= mopt < 1000:
            mopt = struct.unpack_from(">i", data, pos)[0]
            order = ">"
            if not 1000 <= mopt < 2000:
                raise self.fail(pos, "type field is not a MATLAB v4 type (IEEE little/big endian)")
        _, rows, cols, imagf, namlen = struct.unpack_from(order + "5i", data, pos)
        precision, kind = (mopt // 10) % 10, mopt % 10
        if (mopt // 100) % 10 != 0 or precision not in _V4_TYPES:
            raise self.fail(pos, f"type {mopt} is not a MATLAB v4 numeric type")
        if kind != 0:
            what = {1: "a text", 2: "a sparse"}.get(kind, "an unknown kind of")
            raise self.fail(pos, f"type {mopt} is {what} matrix; only full numeric ones are read")
        if imagf:
            raise self.fail(pos, "complex values; an ECG is real")
        if rows < 0 or cols < 0:
            raise self.fail(pos, f"dimensions {rows} × {cols}")
        if not 1 <= namlen <= MAX_NAME_BYTES:
            raise self.fail(pos, f"name length {namlen}, expected 1..{MAX_NAME_BYTES}")
        start = pos + 20 + namlen
        if start > len(data):
            raise self.fail(pos, "truncated in the matrix name")
        raw_name = data[pos + 20 : start]
        if raw_name[-1:] != b"\0":
            raise self.fail(pos + 20, "matrix name is not NUL-terminated")
        name = raw_name[:-1].decode("latin-1")
        dtype = np.dtype(_V4_TYPES[precision]).newbyteorder(order)
        nbytes = rows * cols * dtype.itemsize
        if start + nbytes > len(data):
            raise self.fail(
                start,
                f"matrix {name!r} declares {rows} × {cols} {dtype.name} ({nbytes} bytes), "
                f"{len(data) - start} bytes remain (truncated?)",
            )
        values = np.frombuffer(data, dtype=dtype, count=rows * cols, offset=start)
        matrix = values.reshape((rows, cols), order="F").astype(dtype.newbyteorder("="))
        return name, matrix, start + nbytes


class _Mat5:
    """A MATLAB 5 file: a 128-byte header, then tagged data elements."""

    def __init__(self, path: pathlib.Path, data: bytes):
        self.path, self.data = path, data
        if len(data) < _HEADER_BYTES:
            raise EcgFormatError(path, f"is {len(data)} bytes: shorter than a MATLAB 5 header")
        endian = data[126:128]
        if endian not in (b"IM", b"MI"):
            raise EcgFormatError(path, "not a MATLAB file (no v4 header, no v5 'IM'/'MI' mark)")
        self.order = "<" if endian == b"IM" else ">"
        version = struct.unpack_from(self.order + "H", data, 124)[0]
        if version == _V73:
            raise EcgFormatError(
                path, "is a MATLAB v7.3 file (HDF5), which is not read: save it with -v7"
            )
        if version != _V5:
            raise EcgFormatError(path, f"MATLAB 5 header has version {version:#06x}, not 0x0100")

    def fail(self, offset: int, problem: str, where: str = "") -> EcgFormatError:
        return EcgFormatError(self.path, f"MATLAB 5, byte {offset}{where}: {problem}")

    def variables(self) -> dict[str, MatValue]:
        out: dict[str, MatValue] = {}
        pos = _HEADER_BYTES
        data = self.data
        while pos < len(data):
            mi_type, start, end, _ = self._tag(data, pos, len(data), "")
            if mi_type == _MI_COMPRESSED:
                inner = self._inflate(data[start:end], start)
                inner_type, inner_start, inner_end, _ = self._tag(
                    inner, 0, len(inner), " (inflated)"
                )
                if inner_type != _MI_MATRIX:
                    raise self.fail(start, f"compressed element holds {_type_name(inner_type)}")
                name, value = self._matrix(inner, inner_start, inner_end, 0, " (inflated)")
            elif mi_type == _MI_MATRIX:
                name, value = self._matrix(data, start, end, 0, "")
            else:
                raise self.fail(pos, f"top-level element is {_type_name(mi_type)}, not a variable")
            if name in out:
                raise self.fail(pos, f"variable {name!r} is stored twice")
            out[name] = value
            # Top-level elements follow one another unpadded (compressed ones are never padded;
            # a matrix's size already includes its padding).
            pos = end
        return out

    def _inflate(self, compressed: bytes, offset: int) -> bytes:
        inflater = zlib.decompressobj()
        try:
            inner = inflater.decompress(compressed, MAX_FILE_BYTES + 1)
        except zlib.error as err:
            raise self.fail(offset, f"compressed element does not inflate ({err})") from None
        if len(inner) > MAX_FILE_BYTES:
            raise self.fail(offset, f"compressed element inflates to over {MAX_FILE_BYTES} bytes")
        return inner

    def _tag(self, buf: bytes, pos: int, end: int, where: str) -> tuple[int, int, int, int]:
        """`(type, data start, data end, next element)` of the element at `pos` (< `end`)."""
        if pos + 8 > end:
            raise self.fail(pos, f"element tag needs 8 bytes, {end - pos} remain", where)
        first, second = struct.unpack_from(self.order + "II", buf, pos)
        if first >> 16:  # small data element: size and type in 4 bytes, data in the next 4
            mi_type, nbytes = first & 0xFFFF, first >> 16
            if nbytes > 4:
                raise self.fail(pos, f"small data element of {nbytes} bytes (at most 4)", where)
            start, stop, following = pos + 4, pos + 4 + nbytes, pos + 8
        else:
            mi_type, nbytes = first, second
            start, stop = pos + 8, pos + 8 + nbytes
            following = start + -(-nbytes // 8) * 8  # padded to 8 bytes
            if stop > end:
                raise self.fail(
                    pos,
                    f"{_type_name(mi_type)} element declares {nbytes} bytes, {end - start} remain "
                    "(truncated?)",
                    where,
                )
        if mi_type not in _MI_TYPES:
            raise self.fail(pos, f"unknown data type {mi_type}", where)
        return mi_type, start, stop, min(following, end)

    def _element(
        self, buf: bytes, pos: int, end: int, where: str, what: str, allowed: frozenset[int]
    ) -> tuple[int, np.ndarray, int]:
        """`(type, flat values, next element)` of the element at `pos`, of an `allowed` type."""
        mi_type, start, stop, following = self._tag(buf, pos, end, where)
        if mi_type not in allowed:
            raise self.fail(pos, f"{what} is stored as {_type_name(mi_type)}", where)
        dtype = np.dtype(_MI_TYPES[mi_type][1]).newbyteorder(self.order)
        count, rest = divmod(stop - start, dtype.itemsize)
        if rest:
            raise self.fail(
                pos, f"{what}: {stop - start} bytes of {dtype.itemsize}-byte values", where
            )
        return mi_type, np.frombuffer(buf, dtype=dtype, count=count, offset=start), following

    def _matrix(
        self, buf: bytes, start: int, end: int, depth: int, where: str
    ) -> tuple[str, MatValue]:
        """The `(name, value)` of the miMATRIX whose contents lie in `buf[start:end]`."""
        if start == end:  # an empty matrix: MATLAB writes [] fields this way
            return "", np.zeros((0, 0))
        _, flags, pos = self._element(buf, start, end, where, "array flags", _UINT32)
        if flags.size != 2:
            raise self.fail(start, f"array flags are {flags.size} × miUINT32, expected 2", where)
        array_class, flag_bits = int(flags[0]) & 0xFF, (int(flags[0]) >> 8) & 0xFF
        dims_at = pos
        _, dims, pos = self._element(buf, pos, end, where, "dimensions", _INT32)
        shape = tuple(int(d) for d in dims)
        if not 2 <= len(shape) <= MAX_DIMS or min(shape) < 0:
            raise self.fail(dims_at, f"dimensions {shape}", where)
        count = math.prod(shape)
        size = "×".join(map(str, shape))
        _, raw_name, pos = self._element(buf, pos, end, where, "array name", _BYTES)
        if raw_name.size > MAX_NAME_BYTES:
            raise self.fail(pos, f"array name of {raw_name.size} bytes", where)
        name = raw_name.tobytes().decode("latin-1")
        label = f"variable {name!r}" if name else "a field"
        if flag_bits & _COMPLEX:
            raise self.fail(start, f"{label} holds complex values; an ECG is real", where)
        if array_class in _NUMERIC_CLASSES:
            _, values, _ = self._element(buf, pos, end, where, f"{label}'s values", _MI_NUMERIC)
            if values.size != count:
                raise self.fail(
                    pos, f"{label} is {size} = {count} values, holds {values.size}", where
                )
            dtype = np.dtype(bool if flag_bits & _LOGICAL else _NUMERIC_CLASSES[array_class])
            return name, values.reshape(shape, order="F").astype(dtype)
        if array_class == _CHAR:
            if count and sum(d != 1 for d in shape) > 1:
                raise self.fail(pos, f"{label} is a {size} char array, not one row", where)
            return name, self._text(buf, pos, end, count, where, label)
        if array_class == _STRUCT:
            if count != 1:
                raise self.fail(start, f"{label} is a {size} struct array, not 1×1", where)
            if depth + 1 > MAX_DEPTH:
                raise self.fail(start, f"structs nested more than {MAX_DEPTH} deep", where)
            return name, self._struct(buf, pos, end, depth, where, label)
        kind = _CLASS_NAMES.get(array_class, f"of an unknown class ({array_class})")
        raise self.fail(start, f"{label} is {kind}; only numeric, char and struct are read", where)

    def _text(self, buf: bytes, pos: int, end: int, count: int, where: str, label: str) -> str:
        mi_type, codes, _ = self._element(buf, pos, end, where, f"{label}'s text", _TEXT)
        if mi_type == _MI_UTF8:  # `count` is in characters, the data in bytes
            try:
                text = codes.tobytes().decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail(pos, f"{label} is not UTF-8 text", where) from None
        else:
            wide = codes.astype(np.int64)
            if wide.size and (wide.min() < 0 or wide.max() > 0x10FFFF):
                raise self.fail(pos, f"{label} holds codes that are not characters", where)
            text = "".join(map(chr, wide.tolist()))
        if len(text) != count:
            raise self.fail(pos, f"{label} is {count} characters, holds {len(text)}", where)
        return text

    def _struct(
        self, buf: bytes, pos: int, end: int, depth: int, where: str, label: str
    ) -> dict[str, Any]:
        at = pos
        _, length, pos = self._element(buf, pos, end, where, f"{label}'s name length", _INT32)
        width = int(length[0]) if length.size == 1 else 0
        if not 1 <= width <= MAX_NAME_BYTES:
            raise self.fail(at, f"{label}'s field name length is {length.tolist()}", where)
        at = pos
        _, raw, pos = self._element(buf, pos, end, where, f"{label}'s field names", _BYTES)
        if raw.size % width or raw.size // width > MAX_FIELDS:
            raise self.fail(at, f"{label}'s field names: {raw.size} bytes for width {width}", where)
        names = [
            raw[i : i + width].tobytes().split(b"\0", 1)[0].decode("latin-1")
            for i in range(0, raw.size, width)
        ]
        if len(set(names)) != len(names):
            raise self.fail(at, f"{label} repeats a field name: {names}", where)
        fields: dict[str, Any] = {}
        for field in names:
            mi_type, start, stop, following = self._tag(buf, pos, end, where)
            if mi_type != _MI_MATRIX:
                raise self.fail(pos, f"field {field!r} is {_type_name(mi_type)}", where)
            _, fields[field] = self._matrix(buf, start, stop, depth + 1, where)
            pos = following
        return fields


def _type_name(mi_type: int) -> str:
    return _MI_TYPES.get(mi_type, (f"data type {mi_type}", None))[0]
