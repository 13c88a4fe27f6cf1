"""grain pipelines: order, sharding, resume, crops, eval padding and patient pairs."""

import itertools
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from ecgfm.data.pipeline import (
    PREFETCH_BATCHES,
    PREFETCH_THREADS,
    make_eval_iterator,
    make_train_iterator,
    steps_per_epoch,
)
from ecgfm.data.sources import InMemorySource, PatientPairSource, TfdsSource, signal_mv
from ecgfm.data.synthetic.code import write_code_dataset
from ecgfm.data.tfds_builders import prepare_dataset

NUM_RECORDS = 24
NUM_SAMPLES = 40


def make_source(num_records: int = NUM_RECORDS) -> InMemorySource:
    """Record i's signal is the constant i (so a batch row tells which record it came from)."""
    signals = [np.full((NUM_SAMPLES, 12), i, np.float32) for i in range(num_records)]
    labels = np.eye(3, dtype=np.float32)[np.arange(num_records) % 3]
    return InMemorySource(
        signals,
        labels,
        label_names=("a", "b", "c"),
        record_ids=[f"r{i:02d}" for i in range(num_records)],
        patient_ids=[f"p{i // 3}" for i in range(num_records)],
    )


def records_of(batch) -> list[int]:
    return [int(row[0, 0]) for row in batch["signal"]]


def take(iterator, steps):
    return [next(iterator) for _ in range(steps)]


def test_train_batch_follows_the_contract():
    batch = next(make_train_iterator(make_source(), global_batch_size=8, seed=0, window=16))
    assert batch["signal"].shape == (8, 16, 12) and batch["signal"].dtype == np.float32
    np.testing.assert_array_equal(batch["signal_scale"], np.ones(8, np.float32))
    np.testing.assert_array_equal(batch["valid_range"], [[0, 16]] * 8)  # cropped: all real
    assert batch["labels"].shape == (8, 3) and batch["labels"].dtype == np.float32
    assert batch["label_mask"].shape == (8, 3) and np.all(batch["label_mask"] == 1)
    np.testing.assert_array_equal(batch["mask"], np.ones(8, np.float32))
    assert [f"r{i:02d}" for i in records_of(batch)] == batch["record_id"].tolist()
    for i, row in zip(records_of(batch), batch["labels"], strict=True):
        np.testing.assert_array_equal(row, np.eye(3)[i % 3])


def test_an_epoch_visits_every_record_once_and_the_next_epoch_reshuffles():
    steps = steps_per_epoch(NUM_RECORDS, 6)
    assert steps == 4
    iterator = make_train_iterator(make_source(), global_batch_size=6, seed=3)
    epoch0 = list(itertools.chain.from_iterable(records_of(b) for b in take(iterator, steps)))
    epoch1 = list(itertools.chain.from_iterable(records_of(b) for b in take(iterator, steps)))
    assert sorted(epoch0) == sorted(epoch1) == list(range(NUM_RECORDS))
    assert epoch0 != epoch1
    assert epoch0 != list(range(NUM_RECORDS))


def test_same_seed_same_order_other_seed_other_order():
    def order(seed):
        iterator = make_train_iterator(make_source(), global_batch_size=4, seed=seed)
        return [records_of(b) for b in take(iterator, 6)]

    assert order(7) == order(7)
    assert order(7) != order(8)


def test_two_processes_see_disjoint_halves_whose_union_is_the_epoch():
    def shard(process_index):
        iterator = make_train_iterator(
            make_source(), global_batch_size=4, seed=1, process_index=process_index,
            process_count=2,
        )  # fmt: skip
        batches = take(iterator, NUM_RECORDS // 4)
        assert all(b["signal"].shape[0] == 2 for b in batches)
        return list(itertools.chain.from_iterable(records_of(b) for b in batches))

    first, second = shard(0), shard(1)
    assert not set(first) & set(second)
    assert sorted(first + second) == list(range(NUM_RECORDS))


def test_processes_read_contiguous_rows_of_the_single_process_global_batch():
    def batches(process_index, process_count):
        iterator = make_train_iterator(
            make_source(), global_batch_size=4, seed=3, window=10,
            process_index=process_index, process_count=process_count,
        )  # fmt: skip
        return take(iterator, 9)  # crosses an epoch boundary

    whole = batches(0, 1)
    halves = [batches(p, 2) for p in (0, 1)]
    for step, batch in enumerate(whole):
        for key in ("signal", "labels", "record_id"):
            joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
            np.testing.assert_array_equal(joined, batch[key])


def test_global_batch_must_divide_among_processes():
    with pytest.raises(ValueError, match="multiple of the process count"):
        make_train_iterator(make_source(), global_batch_size=5, seed=0, process_count=2,
                            process_index=0)  # fmt: skip


def test_resuming_from_a_saved_state_gives_the_same_following_batches():
    iterator = make_train_iterator(make_source(), global_batch_size=4, seed=5, window=10)
    take(iterator, 7)  # crosses the epoch boundary at step 6
    state = iterator.get_state()
    expected = take(iterator, 5)

    restored = make_train_iterator(make_source(), global_batch_size=4, seed=5, window=10)
    restored.set_state(pickle.loads(pickle.dumps(state)))
    for want, got in zip(expected, take(restored, 5), strict=True):
        np.testing.assert_array_equal(want["signal"], got["signal"])
        assert want["record_id"].tolist() == got["record_id"].tolist()


def test_resuming_in_a_new_process_gives_the_same_following_batches(tmp_path):
    iterator = make_train_iterator(make_source(), global_batch_size=4, seed=5, window=10)
    take(iterator, 3)
    state_path = tmp_path / "state.pkl"
    state_path.write_bytes(pickle.dumps(iterator.get_state()))
    expected = np.stack([b["signal"] for b in take(iterator, 4)])
    script = textwrap.dedent(f"""
        import pickle, sys, numpy as np
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        from test_pipeline import make_source
        from ecgfm.data.pipeline import make_train_iterator
        it = make_train_iterator(make_source(), global_batch_size=4, seed=5, window=10)
        it.set_state(pickle.loads(open({str(state_path)!r}, "rb").read()))
        np.save({str(tmp_path / "got.npy")!r}, np.stack([next(it)["signal"] for _ in range(4)]))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "got.npy"), expected)


def test_random_crops_are_windows_of_the_signal_and_reproducible():
    ramp = np.arange(NUM_SAMPLES, dtype=np.float32)[:, None] * np.ones((1, 12), np.float32)
    source = InMemorySource([ramp] * 8, np.zeros((8, 1)), label_names=("x",))
    first = next(make_train_iterator(source, global_batch_size=8, seed=2, window=10))
    again = next(make_train_iterator(source, global_batch_size=8, seed=2, window=10))
    np.testing.assert_array_equal(first["signal"], again["signal"])
    starts = first["signal"][:, 0, 0]
    for row, start in zip(first["signal"], starts, strict=True):
        np.testing.assert_array_equal(row[:, 3], np.arange(start, start + 10))
    assert len(set(starts.tolist())) > 1  # offsets differ between examples


def test_augment_hook_receives_each_element_with_its_own_generator():
    def signs(seed):
        iterator = make_train_iterator(
            make_source(), global_batch_size=8, seed=seed, augment=_negate_some
        )
        batch = next(iterator)
        values = batch["signal"][:, 0, 0]
        assert [f"r{abs(int(v)):02d}" for v in values] == batch["record_id"].tolist()
        return np.sign(values[values != 0]).tolist()

    assert signs(0) == signs(0)
    assert set(signs(0) + signs(1)) == {-1.0, 1.0}


def _negate_some(element, rng):
    return {**element, "signal": element["signal"] * rng.choice([-1.0, 1.0])}


def test_unequal_lengths_without_a_window_fail_with_a_clear_message():
    source = InMemorySource(
        [np.zeros((10, 12)), np.zeros((12, 12))], np.zeros((2, 1)), label_names=("x",)
    )
    with pytest.raises(ValueError, match="give a window"):
        next(make_train_iterator(source, global_batch_size=2, seed=0))


def test_records_shorter_than_the_window_are_centred_and_their_real_samples_marked():
    short = [np.full((6, 12), i + 1, np.float32) for i in range(2)] + [np.ones((9, 12))]
    source = InMemorySource(short, np.zeros((3, 1)), label_names=("x",))
    for make in (
        lambda: make_train_iterator(source, global_batch_size=3, seed=0, window=10),
        lambda: make_eval_iterator(source, global_batch_size=3, window=10),
    ):
        batch = next(make())
        for row, (start, stop) in zip(batch["signal"], batch["valid_range"], strict=True):
            length = stop - start
            assert (start, length) in {(2, 6), (0, 9)}  # 4 zeros split 2 + 2; 1 zero at the end
            assert np.all(row[start:stop] != 0) and not row[:start].any() and not row[stop:].any()


def test_eval_iterator_pads_the_last_batch_and_masks_it():
    source = make_source(10)
    batches = list(make_eval_iterator(source, global_batch_size=4))
    assert len(batches) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, [1] * 10 + [0] * 2)
    real = list(itertools.chain.from_iterable(records_of(b) for b in batches))[:10]
    assert real == list(range(10))
    assert np.all(batches[-1]["label_mask"][2:] == 0) and np.all(batches[-1]["labels"][2:] == 0)


def test_eval_shards_cover_every_record_once_across_processes():
    source = make_source(10)
    seen = []
    for process_index in (0, 1):
        for batch in make_eval_iterator(
            source, global_batch_size=4, process_index=process_index, process_count=2
        ):
            assert batch["signal"].shape[0] == 2
            seen += [r for r, m in zip(records_of(batch), batch["mask"], strict=True) if m]
    assert sorted(seen) == list(range(10))


def test_worker_processes_deliver_the_same_batches_as_the_main_process():
    def first_batches(worker_count):
        iterator = make_train_iterator(
            make_source(), global_batch_size=4, seed=9, window=8, worker_count=worker_count
        )
        return [records_of(b) for b in take(iterator, 3)]

    assert first_batches(2) == first_batches(0)


def test_patient_pairs_are_different_exams_of_one_patient():
    source = make_source(11)  # patients p0..p2 have 3 exams each, p3 has 2
    pairs = PatientPairSource(source, seed=0)
    assert pairs.num_patients == 4 and len(pairs) == 11
    for i in range(len(pairs)):
        element = pairs[i]
        a, b = element["record_id"], element["record_id_b"]
        assert a != b
        assert int(a[1:]) // 3 == int(b[1:]) // 3
        assert element["signal_b"][0, 0] == int(b[1:])
    batch = next(make_train_iterator(pairs, global_batch_size=4, seed=0, window=8))
    assert batch["signal_b"].shape == (4, 8, 12)


def test_patient_pairs_need_a_patient_with_two_exams():
    single = InMemorySource(
        [np.zeros((4, 12))] * 2, np.zeros((2, 1)), label_names=("x",), patient_ids=["p", "q"]
    )
    with pytest.raises(ValueError, match="two or more exams"):
        PatientPairSource(single)


class CountingSource(InMemorySource):
    """Counts the records read, to see how far the pipeline reads ahead of its consumer."""

    reads = 0

    def __getitem__(self, index):
        CountingSource.reads += 1
        return super().__getitem__(index)


def test_read_ahead_is_bounded_while_the_consumer_is_slow():
    source = make_source()
    counting = CountingSource(
        [source[i]["signal"] for i in range(NUM_RECORDS)], np.zeros((NUM_RECORDS, 1)),
        label_names=("x",),
    )  # fmt: skip
    CountingSource.reads = 0
    iterator = make_train_iterator(counting, global_batch_size=4, seed=0)
    next(iterator)
    time.sleep(1.0)  # a slow train step: read-ahead threads run meanwhile
    # One batch taken, at most PREFETCH_BATCHES waiting and one being made per thread
    # (grain's default would read 500 batches ahead: gigabytes at real batch sizes).
    assert CountingSource.reads <= 4 * (1 + PREFETCH_BATCHES + PREFETCH_THREADS)


@pytest.fixture(scope="module")
def code_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("code")
    src = write_code_dataset(root / "src", num_exams=10, seed=7)
    prepare_dataset("code", src, root / "data", fractions={"train": 1.0})
    return root / "data"


def tfds_decoded(source, index):
    """Record `index` decoded by TFDS's own example parser: counts · scale in float32."""
    example = source.example(index)
    counts_TC = example["signal"]
    assert counts_TC.dtype == np.int16
    return counts_TC.astype(np.float32) * np.float32(example["signal_scale"]), example


def test_built_elements_are_the_stored_counts_bit_for_bit(code_build):
    source = TfdsSource(code_build, "code", "train")
    indices = list(range(len(source)))[::-1]
    for index, element in zip(indices, source.__getitems__(indices), strict=True):
        want_TC, example = tfds_decoded(source, index)
        for got in (element, source[index]):
            assert got["signal"].dtype == np.int16  # counts: scaled on the device, not here
            np.testing.assert_array_equal(got["signal"], example["signal"])
            assert got["signal_scale"] == example["signal_scale"]
            assert signal_mv(got).tobytes() == want_TC.tobytes()
            np.testing.assert_array_equal(got["labels"], example["labels"]["code"])
            np.testing.assert_array_equal(got["label_mask"], example["label_mask"]["code"])
            assert got["record_id"] == example["record_id"].decode() == source.record_ids[index]


def test_built_dataset_batches_hold_the_stored_counts_centred_in_the_window(code_build):
    source = TfdsSource(code_build, "code", "train")
    window = 4096  # longer than every exam (7 s or 10 s at 400 Hz): no random offset
    batch = next(make_train_iterator(source, global_batch_size=8, seed=0, window=window))
    assert batch["signal"].dtype == np.int16
    by_id = {r: i for i, r in enumerate(source.record_ids)}
    for row_TC, scale, valid, record_id in zip(
        batch["signal"], batch["signal_scale"], batch["valid_range"], batch["record_id"],
        strict=True,
    ):  # fmt: skip
        counts_TC = source.example(by_id[record_id])["signal"]
        start = (window - len(counts_TC)) // 2
        expected_TC = np.zeros((window, 12), np.int16)
        expected_TC[start : start + len(counts_TC)] = counts_TC
        np.testing.assert_array_equal(row_TC, expected_TC)
        assert tuple(valid) == (start, start + len(counts_TC))
        assert scale == source[by_id[record_id]]["signal_scale"]
    (evaluated,) = list(make_eval_iterator(source, global_batch_size=16, window=2000))
    for row_TC, index in zip(evaluated["signal"][: len(source)], range(len(source)), strict=True):
        counts_TC = source.example(index)["signal"]
        start = (len(counts_TC) - 2000) // 2
        np.testing.assert_array_equal(row_TC, counts_TC[start : start + 2000])
    np.testing.assert_array_equal(evaluated["mask"], [1] * len(source) + [0] * (16 - len(source)))
