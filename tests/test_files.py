"""Opening dataset files as untrusted input: whatever stands at a path, the answer is the file's
bytes or an `EcgFormatError` naming the path, at once (no hang on a FIFO or a device)."""

import os
import time

import pytest

from ecgfm.data.files import check_file, csv_error, is_regular_file, non_utf8_lines, read_bytes
from ecgfm.data.record import EcgFormatError


def test_regular_file_is_read_and_sized(tmp_path):
    path = tmp_path / "A0001.hea"
    path.write_bytes(b"A0001 12 500 5000\n")
    assert read_bytes(path, max_bytes=100) == b"A0001 12 500 5000\n"
    assert check_file(path) == 18
    assert is_regular_file(path)


def test_missing_file_is_reported_in_the_readers_words(tmp_path):
    with pytest.raises(EcgFormatError, match="signal file is missing") as info:
        read_bytes(tmp_path / "A0001.mat", missing="signal file is missing", max_bytes=10)
    assert info.value.path == str(tmp_path / "A0001.mat")
    with pytest.raises(EcgFormatError, match="shard is missing"):
        check_file(tmp_path / "exams_part0.hdf5", missing="shard is missing")


def test_fifo_in_a_files_place_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "A0001.mat"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    start = time.monotonic()
    with pytest.raises(EcgFormatError, match="FIFO, socket or device"):
        read_bytes(fifo, max_bytes=10)
    with pytest.raises(EcgFormatError, match="FIFO, socket or device"):
        check_file(fifo)
    assert time.monotonic() - start < 1.0
    assert not is_regular_file(fifo)


def test_device_and_folder_are_not_files(tmp_path):
    with pytest.raises(EcgFormatError, match="FIFO, socket or device"):
        read_bytes("/dev/zero", max_bytes=10)  # would never end
    with pytest.raises(EcgFormatError, match="is a folder"):
        read_bytes(tmp_path, max_bytes=10)


def test_symlink_loop_and_overlong_name_are_format_errors(tmp_path):
    loop = tmp_path / "A0001.mat"
    loop.symlink_to(loop)
    with pytest.raises(EcgFormatError, match="cannot be opened: Too many levels of symbolic links"):
        read_bytes(loop, max_bytes=10)
    long_name = tmp_path / ("A" * 300 + ".mat")  # os.stat raises ENAMETOOLONG
    with pytest.raises(EcgFormatError, match="cannot be opened: File name too long"):
        check_file(long_name)
    with pytest.raises(EcgFormatError, match="cannot be opened"):
        check_file(str(tmp_path / "nul\0byte"))  # os.stat raises ValueError
    assert not is_regular_file(loop) and not is_regular_file(long_name)


def test_file_over_the_formats_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "A0001.hea"
    path.write_bytes(b"x" * 101)
    with pytest.raises(EcgFormatError, match="101 bytes, more than the 100"):
        read_bytes(path, max_bytes=100)
    with pytest.raises(EcgFormatError, match="101 bytes, more than the 100"):
        check_file(path, max_bytes=100)


def test_text_that_is_not_utf8_is_named_by_line(tmp_path):
    path = tmp_path / "scp_statements.csv"
    path.write_bytes(b"code,description\nNORM,normal\nIMI,inf\xe9rior\nAMI,x\nLMI,\xff\n")
    assert non_utf8_lines(path) == [3, 5]
    assert non_utf8_lines(path, limit=1) == [3]
    with pytest.raises(UnicodeDecodeError) as info:
        path.read_bytes().decode("utf-8")
    error = csv_error(path, info.value)
    assert (error.path, error.problem) == (str(path), "line 3: not UTF-8 text")
