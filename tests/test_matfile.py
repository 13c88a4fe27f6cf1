"""The MATLAB reader ecgfm uses instead of scipy's: the same values on real and written files,
and an `EcgFormatError` naming the file for anything else, never a crash."""

import struct

import numpy as np
import pytest
import scipy.io

import ecgfm.data.matfile as matfile
from ecgfm.data.matfile import read_mat
from ecgfm.data.record import EcgFormatError

REAL_CPSC = [f"A198{i}" for i in range(5)]
REAL_CINC = [f"{prefix}{n}" for prefix in ("E0750", "HR0600", "JS2000") for n in range(5)]


def _assert_same(ours, theirs):
    """`theirs` as scipy.io.loadmat(mat_dtype=True) gives it: MATLAB's classes and shapes."""
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("record_id", REAL_CPSC)
def test_real_cpsc_struct_reads_as_scipy_reads_it(real_data, record_id):
    path = real_data / "cpsc2018" / f"{record_id}.mat"
    ecg = read_mat(path)["ECG"]
    theirs = scipy.io.loadmat(path, mat_dtype=True)["ECG"][0, 0]
    assert sorted(ecg) == ["age", "data", "sex"]
    _assert_same(ecg["data"], theirs["data"])
    _assert_same(ecg["age"], theirs["age"])  # double 1×1, stored as uint8 in the file
    assert ecg["sex"] == str(theirs["sex"][0]) and ecg["sex"] in ("Male", "Female")


@pytest.mark.parametrize("record_id", REAL_CINC)
def test_real_challenge_val_reads_as_scipy_reads_it(real_data, record_id):
    path = real_data / "cinc2021" / f"{record_id}.mat"
    variables = read_mat(path)
    assert list(variables) == ["val"]
    _assert_same(variables["val"], scipy.io.loadmat(path)["val"])


@pytest.mark.parametrize("compressed", [False, True])
def test_what_scipy_writes_in_matlab_5_reads_back(tmp_path, compressed):
    rng = np.random.default_rng(0)
    variables = {
        "data": rng.normal(size=(12, 300)),
        "counts": np.arange(-6, 6, dtype=np.int16).reshape(3, 4),  # column-major on disk
        "single": rng.normal(size=(2, 5)).astype(np.float32),
        "flags": np.array([[True, False, True]]),
        "empty": np.zeros((0, 3)),
        "sex": "Female",
        "nested": {"inner": {"age": np.array([[61]], np.uint8), "note": ""}},
    }
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, variables, do_compression=compressed)
    ours = read_mat(path)
    theirs = scipy.io.loadmat(path, mat_dtype=True)
    for name in ("data", "counts", "single", "flags", "empty"):
        _assert_same(ours[name], theirs[name])
    assert ours["sex"] == "Female"
    assert ours["nested"]["inner"]["note"] == ""
    _assert_same(ours["nested"]["inner"]["age"], np.array([[61]], np.uint8))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32, np.int16, np.uint16, np.uint8])
def test_every_matlab_v4_type_reads_back(tmp_path, dtype):
    val = (np.arange(24).reshape(4, 6) * 3).astype(dtype)
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"val": val, "b": val[:1]}, format="4")
    ours = read_mat(path)
    _assert_same(ours["val"], val)
    _assert_same(ours["b"], val[:1])


def test_big_endian_matlab_v4_reads_back(tmp_path):
    val = np.arange(6, dtype=">i2").reshape(2, 3)
    header = struct.pack(">5i", 1030, 2, 3, 0, 4)  # M=1 big-endian, P=3 int16, T=0 full
    path = tmp_path / "x.mat"
    path.write_bytes(header + b"val\0" + val.tobytes(order="F"))
    _assert_same(read_mat(path)["val"], val.astype(np.int16))


def _cpsc_mat(path, compress=False):
    """An uncompressed CPSC-layout file as scipy writes it; returns its bytes."""
    ecg = {"sex": "Male", "age": np.array([[52]], np.uint8), "data": np.ones((12, 40))}
    scipy.io.savemat(path, {"ECG": ecg}, do_compression=compress)
    return path.read_bytes()


def _raises(path, data, match):
    path.write_bytes(data)
    with pytest.raises(EcgFormatError, match=match) as info:
        read_mat(path)
    assert info.value.path == str(path)


def test_unknown_data_type_that_crashed_scipy_is_a_format_error(tmp_path):
    # A 2-byte change to A1980 saved uncompressed made scipy.io.loadmat die with SIGSEGV; the
    # byte that matters is the data type of ECG.age's small data element (byte 312: 2 -> 104).
    data = bytearray(_cpsc_mat(tmp_path / "A1980.mat"))
    small_uint8 = struct.pack("<HH", 2, 1)  # miUINT8, 1 byte: ECG.age = 52
    at = data.index(small_uint8 + bytes([52]))
    data[at] = 104
    _raises(tmp_path / "A1980.mat", bytes(data), rf"byte {at}: unknown data type 104")


def test_sizes_beyond_the_file_are_refused_before_allocating(tmp_path):
    path = tmp_path / "A0001.mat"
    data = bytearray(_cpsc_mat(path))
    dims = data.index(struct.pack("<iiii", 5, 8, 12, 40))  # miINT32 tag, 8 bytes, 12 × 40
    huge = bytearray(data)
    huge[dims + 8 : dims + 16] = struct.pack("<ii", 2**31 - 1, 2**31 - 1)
    _raises(path, bytes(huge), "is 2147483647×2147483647 = .* values, holds 480")
    top_size = bytearray(data)
    top_size[132:136] = struct.pack("<I", 2**32 - 1)
    _raises(path, bytes(top_size), "miMATRIX element declares 4294967295 bytes, .* remain")


def test_every_truncation_of_a_file_is_a_format_error(tmp_path):
    path = tmp_path / "A0001.mat"
    data = _cpsc_mat(path)
    for size in range(0, len(data) - 1, 13):
        path.write_bytes(data[:size])
        with pytest.raises(EcgFormatError):
            read_mat(path)


def test_any_single_byte_change_of_the_structure_reads_or_is_a_format_error(tmp_path):
    # The tags, sizes, flags and names of an uncompressed file lie in its first ~400 bytes.
    path = tmp_path / "A0001.mat"
    data = _cpsc_mat(path)
    outcomes = {"read": 0, "refused": 0}
    for offset in range(116, 420):
        for value in (0x00, 0x7F, 0xFF):
            changed = bytearray(data)
            changed[offset] = value
            path.write_bytes(bytes(changed))
            try:
                read_mat(path)
                outcomes["read"] += 1
            except EcgFormatError as err:
                assert err.path == str(path)
                outcomes["refused"] += 1
    assert outcomes["read"] > 0 and outcomes["refused"] > 0


def test_matlab_73_and_hdf5_files_are_named_as_such(tmp_path):
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8
    _raises(tmp_path / "A.mat", header + struct.pack("<H", 0x0200) + b"IM", "v7.3 file \\(HDF5\\)")
    _raises(tmp_path / "A.mat", b"\x89HDF\r\n\x1a\n" + b"\0" * 100, "HDF5 file, not a MATLAB")
    _raises(tmp_path / "A.mat", b"text, not MATLAB at all" * 10, "not a MATLAB file")


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        ({"x": np.ones((2, 2)) * 1j}, "complex values"),
        ({"x": np.array([[1, "a"]], dtype=object)}, "cell; only numeric, char and struct"),
        ({"x": np.array([("a", 1), ("b", 2)], dtype=[("s", "O"), ("n", "O")])}, "struct array"),
        ({"x": np.array(["ab", "cd"])}, "char array, not one row"),
    ],
)
def test_classes_ecg_files_do_not_use_are_refused(tmp_path, variables, problem):
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, variables)
    with pytest.raises(EcgFormatError, match=problem):
        read_mat(path)


def test_structs_nested_too_deep_are_refused(tmp_path):
    nested = {"leaf": np.ones((1, 1))}
    for _ in range(matfile.MAX_DEPTH):
        nested = {"s": nested}
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"top": nested})
    with pytest.raises(EcgFormatError, match="nested more than 4 deep"):
        read_mat(path)


def test_compressed_element_over_the_limit_is_refused_while_inflating(tmp_path, monkeypatch):
    # A few KB of zlib can inflate to MBs; the limit is enforced during inflation.
    monkeypatch.setattr(matfile, "MAX_FILE_BYTES", 1000)
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"x": np.zeros((1, 400))}, do_compression=True)  # 3.2 KB inflated
    assert path.stat().st_size < 1000
    with pytest.raises(EcgFormatError, match="inflates to over 1000 bytes"):
        read_mat(path)


def test_garbled_compressed_element_is_a_format_error(tmp_path):
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"x": np.arange(100.0)[None]}, do_compression=True)
    data = bytearray(path.read_bytes())
    data[140:150] = b"\xff" * 10
    path.write_bytes(bytes(data))
    with pytest.raises(EcgFormatError, match="does not inflate"):
        read_mat(path)


def test_matlab_v4_header_lies_are_refused(tmp_path):
    path = tmp_path / "HR06000.mat"

    def v4(mopt=30, rows=2, cols=3, imagf=0, name=b"val\0", body=b"\0" * 12):
        return struct.pack("<5i", mopt, rows, cols, imagf, len(name)) + name + body

    _raises(path, v4(rows=2**31 - 1, cols=2**31 - 1), r"declares 2147483647 × 2147483647 int16")
    _raises(path, v4(mopt=31), "text matrix")
    _raises(path, v4(mopt=32), "sparse matrix")
    _raises(path, v4(mopt=70), "not a MATLAB v4 numeric type")
    _raises(path, v4(imagf=1), "complex")
    _raises(path, v4(rows=-1), "dimensions -1 × 3")
    _raises(path, v4(name=b"val"), "not NUL-terminated")
    _raises(path, v4() + v4(), "'val' is stored twice")
    _raises(path, v4() + b"\0" * 5, "matrix header needs 20 bytes, 5 remain")
    path.write_bytes(v4())  # the same header, truthful: reads
    _assert_same(read_mat(path)["val"], np.zeros((2, 3), np.int16))
