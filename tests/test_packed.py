"""A dataset built by `ecgfm prepare`, opened as a reader, holds what the files hold."""

import numpy as np
import pytest

from ecgfm.data.packed import PackedDataset, is_packed
from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.ptbxl import PtbXl
from ecgfm.data.splits import ptbxl_split_of_fold
from ecgfm.data.synthetic.ptbxl import write_ptbxl_dataset
from ecgfm.data.tfds_builders import prepare_dataset
from ecgfm.data.tfds_builders.base import round_trip_tolerance


@pytest.fixture(scope="module")
def ptbxl(tmp_path_factory):
    """A synthetic PTB-XL folder and its build at the 100 Hz files' rate, nothing else applied."""
    root = tmp_path_factory.mktemp("ptbxl")
    src = write_ptbxl_dataset(root / "src", num_records=40, seed=3, sampling_rates=(100,))
    prepare_dataset("ptbxl", src, root / "data", preprocessing=Preprocessing(sampling_rate=100))
    return src, root / "data"


def test_a_packed_record_is_the_file_record_within_the_storage_rounding(ptbxl):
    src, data_dir = ptbxl
    files, packed = PtbXl(src, sampling_rate=100), PackedDataset(data_dir, "ptbxl")
    assert sorted(packed.record_ids, key=int) == sorted(files.record_ids, key=int)
    for record_id in packed.record_ids[:10]:
        want, got = files.read(record_id), packed.read(record_id)
        assert got.sampling_rate == want.sampling_rate == 100
        np.testing.assert_allclose(
            got.signal, want.signal, rtol=0, atol=round_trip_tolerance(want.signal)
        )


def test_the_stored_split_and_labels_are_the_benchmark_ones(ptbxl):
    src, data_dir = ptbxl
    files, packed = PtbXl(src, sampling_rate=100), PackedDataset(data_dir, "ptbxl")
    folds = files.database["strat_fold"]
    assert packed.split_of == {str(i): ptbxl_split_of_fold(int(f)) for i, f in folds.items()}
    for task in ("superdiagnostic", "rhythm"):
        want = {str(i): tuple(sorted(names)) for i, names in files.labels(task).items() if names}
        got = {r: tuple(sorted(names)) for r, names in packed.labels_in(task).items()}
        assert got == want


def test_only_a_build_of_the_files_at_a_rate_counts_as_raw(ptbxl, tmp_path):
    src, data_dir = ptbxl
    assert PackedDataset(data_dir, "ptbxl").raw_rate() == 100
    filtered = Preprocessing(sampling_rate=100, baseline_cutoff_hz=0.5)
    prepare_dataset("ptbxl", src, tmp_path, preprocessing=filtered)
    assert PackedDataset(tmp_path, "ptbxl").raw_rate() is None


def test_a_folder_without_a_build_is_not_packed(ptbxl):
    src, data_dir = ptbxl
    assert is_packed(data_dir, "ptbxl")
    assert not is_packed(src, "ptbxl")
