"""A dataset built by `ecgfm prepare`, opened as a reader, holds what the files hold."""

import numpy as np
import pytest

from ecgfm.data.packed import PackedDataset, is_packed
from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.ptbxl import PtbXl
from ecgfm.data.splits import ptbxl_split_of_fold
from ecgfm.data.synthetic.cpsc2018 import write_cpsc2018_dataset
from ecgfm.data.synthetic.ptbxl import write_ptbxl_dataset
from ecgfm.data.tfds_builders import prepare_dataset
from ecgfm.data.tfds_builders.base import round_trip_tolerance
from ecgfm.transfer.tasks import cpsc2018_task, load_task, ptbxl_task


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


# --- Transfer takes its task from a packed build as from the files ----------------------------


def _same_task(from_files, from_build):
    assert from_build.class_names == from_files.class_names
    assert from_build.dropped == from_files.dropped
    for split in ("train", "validation", "test"):
        order = np.argsort(from_files.record_ids[split])
        assert sorted(from_build.record_ids[split]) == sorted(from_files.record_ids[split])
        by_id = dict(zip(from_build.record_ids[split], from_build.labels[split], strict=True))
        rows = [by_id[from_files.record_ids[split][i]] for i in order]
        np.testing.assert_array_equal(rows, from_files.labels[split][order])


def test_a_ptbxl_task_from_a_packed_build_is_the_task_from_the_files(ptbxl):
    src, data_dir = ptbxl
    spec = ptbxl_task("superdiagnostic", sampling_rate=100)
    _same_task(load_task(spec, src), load_task(spec, data_dir))


def test_a_cpsc2018_task_from_a_packed_build_is_the_task_from_the_files(tmp_path):
    src = write_cpsc2018_dataset(tmp_path / "src", num_records=30, seed=4)
    prepare_dataset("cpsc2018", src, tmp_path / "data")
    _same_task(load_task(cpsc2018_task(), src), load_task(cpsc2018_task(), tmp_path / "data"))


def test_a_build_that_is_not_the_files_at_the_tasks_rate_is_refused_naming_it(ptbxl, tmp_path):
    src, _ = ptbxl
    filtered = Preprocessing(sampling_rate=100, bandpass=(0.5, 40.0))
    prepare_dataset("ptbxl", src, tmp_path / "filtered", preprocessing=filtered)
    with pytest.raises(ValueError, match=r"prepared with 100 Hz.*encoder's own preprocessing"):
        load_task(ptbxl_task(sampling_rate=100), tmp_path / "filtered")
    _, data_dir = ptbxl
    with pytest.raises(ValueError, match=r"holds 100 Hz records, the task .* 500 Hz"):
        load_task(ptbxl_task(sampling_rate=500), data_dir)
