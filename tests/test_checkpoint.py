"""Checkpoints: exact resume after kill -9, damaged steps skipped, restore onto another mesh,
content checksums that catch what Orbax's own reads do not, no non-finite state saved."""

import importlib.util
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import time

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from ecgfm import checkpoint, sharding
from ecgfm.preemption import PREEMPTED_EXIT_CODE

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load_kill_resume():
    """benchmarks/kill_resume.py: the training command, kill moments and the final check."""
    path = REPO / "benchmarks" / "kill_resume.py"
    spec = importlib.util.spec_from_file_location("kill_resume", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KILL_RESUME = _load_kill_resume()


def _train(workdir: pathlib.Path) -> subprocess.Popen:
    """24 steps of the smoke config, checkpointed every 4 (asynchronously), in a subprocess."""
    return KILL_RESUME.start(workdir)


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {e["step"]: e["loss"] for e in map(json.loads, lines) if "loss" in e}


def _finished(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pathlib.Path:
    """An uninterrupted 24-step run from synthetic exams it writes and packs (synth → prepare
    → pretrain); its data folder is shared by the interrupted runs."""
    workdir = tmp_path_factory.mktemp("reference")
    _finished(_train(workdir))
    return workdir


def _interrupt_after_first_checkpoint(
    reference: pathlib.Path, workdir: pathlib.Path, signum: int
) -> subprocess.Popen:
    workdir.mkdir()
    os.symlink(reference / "data", workdir / "data")  # generating data is not under test
    proc = _train(workdir)
    deadline = time.time() + 180
    while time.time() < deadline:
        steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
        metrics = workdir / "metrics.jsonl"
        done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        if steps and done > max(steps) + 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signum)
    return proc


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing(reference, tmp_path):
    """Four kills drawn with a seed (while an asynchronous checkpoint is written or just after
    one is committed, at any moment from writing the exams through start-up to training, just
    after a metrics line); each run completes on rerun with every step logged once and
    bit-identical losses, and no kill leaves a damaged checkpoint behind. A handful, to stay
    near a minute: `benchmarks/kill_resume.py` runs many."""
    record = KILL_RESUME.run_kills(tmp_path, reference, kills=4, seed=13, any_window_s=30.0)
    assert record["kills"] == 4 and record["runs_completed"] >= 1
    assert record["by_moment"].get("checkpoint_write", 0) >= 1, record


@pytest.mark.slow
def test_sigterm_checkpoints_exits_as_preempted_and_the_rerun_continues(reference, tmp_path):
    preempted = tmp_path / "preempted"
    proc = _interrupt_after_first_checkpoint(reference, preempted, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE == 143, err[-3000:]
    stopped_at = max(_losses(preempted))
    assert stopped_at < 24
    # The step it stopped at is on disk, so nothing logged is redone.
    steps = [int(p.name) for p in (preempted / "checkpoints").iterdir() if p.name.isdigit()]
    assert max(steps) == stopped_at

    _finished(_train(preempted))
    expected, got = _losses(reference), _losses(preempted)
    assert sorted(got) == list(range(1, 25))
    assert got == expected


def _state(mesh) -> dict:
    spec = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    w = jax.device_put(np.arange(32, dtype=np.float32).reshape(8, 4), spec)
    return {"params": {"w": w, "layers": {0: {"b": np.float32(1.5)}}}, "step": np.int32(7)}


def _iterator():
    return iter(grain.MapDataset.range(100).batch(4).to_iter_dataset())


def _target(mesh):
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = jax.eval_shape(lambda: _state(sharding.make_mesh()))
    return checkpoint.abstract_like(abstract, jax.tree.map(lambda _: replicated, abstract))


def test_restores_onto_another_mesh_with_the_data_position(tmp_path):
    checkpointer = checkpoint.Checkpointer(tmp_path, keep=2)
    it = _iterator()
    next(it), next(it)
    checkpointer.save(2, _state(sharding.make_mesh()), it)
    checkpointer.wait_until_finished()
    expected_next = next(it)

    one_device = sharding.make_mesh(devices=jax.devices()[:1])
    fresh = _iterator()
    state, step = checkpoint.Checkpointer(tmp_path, keep=2).restore_latest(
        _target(one_device), fresh
    )
    assert step == 2
    np.testing.assert_array_equal(state["params"]["w"], np.arange(32).reshape(8, 4))
    assert state["params"]["w"].sharding.mesh.size == 1
    assert float(state["params"]["layers"][0]["b"]) == 1.5
    np.testing.assert_array_equal(next(fresh), expected_next)


def test_damaged_latest_checkpoint_is_moved_aside_and_the_previous_one_used(tmp_path, caplog):
    mesh = sharding.make_mesh()
    checkpointer = checkpoint.Checkpointer(tmp_path, keep=3)
    it = _iterator()
    for step in (1, 2):
        next(it)
        checkpointer.save(step, _state(mesh), it)
        checkpointer.wait_until_finished()
    for path in (tmp_path / "2" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0garbage")
    # An unfinished save (a process killed mid-write) is a temporary directory: never used.
    (tmp_path / "3.orbax-checkpoint-tmp-123").mkdir()

    fresh = _iterator()
    restarted = checkpoint.Checkpointer(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING):
        _, step = restarted.restore_latest(_target(mesh), fresh)
    assert step == 1
    assert "step 2" in caplog.text
    np.testing.assert_array_equal(next(fresh), np.arange(4, 8))
    # Kept for a post-mortem, out of the way of the run that redoes step 2.
    assert (tmp_path / "corrupt" / "2" / "state").is_dir()
    assert restarted.all_steps() == [1]
    restarted.save(2, _state(mesh), fresh)
    restarted.wait_until_finished()
    assert restarted.all_steps() == [1, 2]


# The failing restore leaves Orbax's asyncio work behind; it may complain once its loop closes.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_checkpoints_of_another_config_are_refused_and_kept(tmp_path):
    mesh = sharding.make_mesh()
    checkpointer = checkpoint.Checkpointer(tmp_path, keep=3)
    it = _iterator()
    for step in (1, 2, 3):
        checkpointer.save(step, _state(mesh), it)
    checkpointer.wait_until_finished()
    # The same run with a wider layer: its state no longer matches any saved step.
    wider = _target(mesh)
    w = wider["params"]["w"]
    wider["params"]["w"] = jax.ShapeDtypeStruct((8, 6), w.dtype, sharding=w.sharding)
    restarted = checkpoint.Checkpointer(tmp_path, keep=3)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="do not match this config"):
        restarted.restore_latest(wider, _iterator())
    assert restarted.all_steps() == [1, 2, 3]
    assert not (tmp_path / "corrupt").exists()
    # The matching config still resumes from the newest step.
    _, step = restarted.restore_latest(_target(mesh), _iterator())
    assert step == 3


def test_empty_directory_has_nothing_to_restore(tmp_path):
    checkpointer = checkpoint.Checkpointer(tmp_path / "ckpt", keep=1)
    assert checkpointer.restore_latest(_target(sharding.make_mesh()), _iterator()) is None


def test_partial_restore_reads_only_the_requested_arrays(tmp_path):
    mesh = sharding.make_mesh()
    checkpointer = checkpoint.Checkpointer(tmp_path, keep=1)
    checkpointer.save(5, _state(mesh), None)
    checkpointer.close()
    target = _target(mesh)
    del target["params"]["layers"]
    state = checkpoint.restore_state(tmp_path, target, partial=True)
    assert set(state["params"]) == {"w"} and int(state["step"]) == 7
    np.testing.assert_array_equal(state["params"]["w"], np.arange(32).reshape(8, 4))


# --- Content checksums -----------------------------------------------------------------------


def _weights() -> np.ndarray:
    """Finite float32 weights from random bits: incompressible and too large to be inlined in
    OCDBT's index nodes (which carry a CRC), so Orbax stores their bytes as they are and a
    flipped byte on disk reads back as a changed weight without any error."""
    bits = np.random.default_rng(0).integers(0, 2**32, size=(256, 256), dtype=np.uint32)
    return (bits & np.uint32(0xBFFFFFFF)).view(np.float32)  # exponent < 128: finite


def _weights_state(mesh, scale: float = 1.0) -> dict:
    spec = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    return {"params": {"w": jax.device_put(_weights() * np.float32(scale), spec)},
            "step": np.int32(scale)}  # fmt: skip


def _weights_target(mesh) -> dict:
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = jax.eval_shape(lambda: _weights_state(mesh))
    return checkpoint.abstract_like(abstract, jax.tree.map(lambda _: replicated, abstract))


def _save_two_steps(directory: pathlib.Path, mesh) -> None:
    """Steps 1 and 2 (weights ×1 and ×2), the iterator one batch further at each."""
    checkpointer = checkpoint.Checkpointer(directory, keep=3)
    it = _iterator()
    for step in (1, 2):
        next(it)
        checkpointer.save(step, _weights_state(mesh, step), it)
        checkpointer.wait_until_finished()
    checkpointer.close()


def _flip_a_stored_weight(step_dir: pathlib.Path, weights: np.ndarray) -> None:
    """Flips one bit of weight [0, 5] wherever its bytes are stored (OCDBT keeps more than one
    file holding a chunk; which one is read is its business)."""
    flipped = 0
    for path in (step_dir / "state").rglob("*"):
        data = bytearray(path.read_bytes() if path.is_file() else b"")
        at = data.find(weights[0].tobytes())  # the first row (rows are split over devices)
        if at >= 0:
            data[at + 4 * 5 + 1] ^= 0x04
            path.write_bytes(bytes(data))
            flipped += 1
    assert flipped, f"the weights' bytes are not stored verbatim under {step_dir}"


def test_content_checksums_are_layout_independent_and_see_one_flipped_bit():
    eight = sharding.make_mesh(data=2, fsdp=4)
    one = sharding.make_mesh(devices=jax.devices()[:1])
    sums_eight, non_finite = checkpoint.content_checksums(_weights_state(eight))
    sums_one, _ = checkpoint.content_checksums(_weights_state(one))
    assert sums_eight == sums_one and non_finite == []
    assert set(sums_one) == {"params/w", "step"}
    flipped = _weights()
    flipped.view(np.uint32)[3, 4] ^= 1 << 10
    changed, _ = checkpoint.content_checksums({"params": {"w": flipped}, "step": np.int32(1)})
    assert changed["params/w"] != sums_one["params/w"] and changed["step"] == sums_one["step"]
    # Two equal and opposite changes cancel in a plain sum; not in the checksum.
    swapped = _weights()
    swapped[0, 0], swapped[0, 1] = swapped[0, 1], swapped[0, 0]
    assert checkpoint.content_checksums({"w": swapped})[0] != checkpoint.content_checksums(
        {"w": _weights()})[0]  # fmt: skip
    nan = _weights()
    nan[5, 5] = np.nan
    assert checkpoint.content_checksums({"a": {"w": nan}, "b": np.ones(3)})[1] == ["a/w"]


def test_a_flipped_byte_in_a_stored_weight_falls_back_to_the_previous_step(tmp_path, caplog):
    mesh = sharding.make_mesh()
    _save_two_steps(tmp_path, mesh)
    _flip_a_stored_weight(tmp_path / "2", _weights() * 2)
    # Orbax alone reads the flipped weight back without complaint:
    with ocp.StandardCheckpointer() as plain:
        read = plain.restore(tmp_path / "2" / "state", _weights_target(mesh))
    assert np.asarray(read["params"]["w"])[0, 5] != _weights()[0, 5] * 2
    assert np.array_equal(np.delete(np.asarray(read["params"]["w"]).ravel(), 5),
                          np.delete(_weights().ravel() * 2, 5))  # fmt: skip

    fresh = _iterator()
    restarted = checkpoint.Checkpointer(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING):
        state, step = restarted.restore_latest(_weights_target(mesh), fresh)
    assert step == 1
    np.testing.assert_array_equal(state["params"]["w"], _weights())
    assert "params/w" in caplog.text and "differ from the checksum" in caplog.text
    np.testing.assert_array_equal(next(fresh), np.arange(4, 8))  # step 1's position
    assert (tmp_path / "corrupt" / "2").is_dir() and restarted.all_steps() == [1]


def test_an_edited_iterator_position_falls_back_to_the_previous_step(tmp_path, caplog):
    mesh = sharding.make_mesh()
    _save_two_steps(tmp_path, mesh)
    (position_file,) = (tmp_path / "2" / "data").glob("process_0-of-1.json")
    assert json.loads(position_file.read_text()) == {"next_index": 2}
    position_file.write_text(json.dumps({"next_index": 7}))  # valid, but not what was saved

    fresh = _iterator()
    with caplog.at_level(logging.WARNING):
        _, step = checkpoint.Checkpointer(tmp_path, keep=3).restore_latest(
            _weights_target(mesh), fresh
        )
    assert step == 1
    assert "data iterator position" in caplog.text
    np.testing.assert_array_equal(next(fresh), np.arange(4, 8))  # not batch 7
    assert (tmp_path / "corrupt" / "2").is_dir()


def test_a_state_holding_nan_is_never_saved(tmp_path):
    mesh = sharding.make_mesh()
    checkpointer = checkpoint.Checkpointer(tmp_path, keep=3)
    checkpointer.save(1, _weights_state(mesh), _iterator())
    state = _weights_state(mesh, 2)
    state["opt_state"] = {"nu": np.array([1.0, np.inf], np.float32)}
    expected = r"not checkpointing step 2 .* \(opt_state/nu\); nothing was written"
    with pytest.raises(checkpoint.NonFiniteStateError, match=expected):
        checkpointer.save(2, state, _iterator())
    checkpointer.wait_until_finished()
    assert checkpointer.all_steps() == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("2")]


def _save_as_an_older_ecgfm(directory: pathlib.Path, step: int, state: dict) -> None:
    """A step as ecgfm wrote it before checksums (state and data only, never checked)."""
    with ocp.CheckpointManager(directory) as manager:
        args = {"state": ocp.args.StandardSave(state),
                "data": grain.checkpoint.CheckpointSave(_iterator())}  # fmt: skip
        manager.save(step, args=ocp.args.Composite(**args))


def test_a_step_from_an_older_ecgfm_restores_unverified_with_a_warning(tmp_path, caplog):
    mesh = sharding.make_mesh()
    _save_as_an_older_ecgfm(tmp_path, 1, _weights_state(mesh))
    with caplog.at_level(logging.WARNING):
        state, step = checkpoint.Checkpointer(tmp_path, keep=3).restore_latest(
            _weights_target(mesh), None
        )
    assert step == 1 and "unverified" in caplog.text
    np.testing.assert_array_equal(state["params"]["w"], _weights())


def test_a_step_from_an_older_ecgfm_holding_nan_is_skipped(tmp_path, caplog):
    mesh = sharding.make_mesh()
    _save_as_an_older_ecgfm(tmp_path, 1, _weights_state(mesh))
    diverged = _weights_state(mesh, 2)
    diverged["params"]["w"] = diverged["params"]["w"].at[0, 0].set(np.nan)
    _save_as_an_older_ecgfm(tmp_path, 2, diverged)
    with caplog.at_level(logging.WARNING):
        _, step = checkpoint.Checkpointer(tmp_path, keep=3).restore_latest(
            _weights_target(mesh), None
        )
    assert step == 1 and "hold NaN/Inf (params/w)" in caplog.text


def test_a_step_whose_checksum_item_was_removed_is_damaged(tmp_path):
    mesh = sharding.make_mesh()
    _save_two_steps(tmp_path, mesh)
    shutil.rmtree(tmp_path / "2" / "checksum")
    _, step = checkpoint.Checkpointer(tmp_path, keep=3).restore_latest(
        _weights_target(mesh), _iterator()
    )
    assert step == 1


def test_when_every_step_is_damaged_the_run_is_refused_and_nothing_moved(tmp_path):
    mesh = sharding.make_mesh()
    _save_two_steps(tmp_path, mesh)
    _flip_a_stored_weight(tmp_path / "1", _weights())
    _flip_a_stored_weight(tmp_path / "2", _weights() * 2)
    restarted = checkpoint.Checkpointer(tmp_path, keep=3)
    expected = rf"every checkpoint in {tmp_path} \(steps 2, 1\) is damaged"
    with pytest.raises(checkpoint.CheckpointDamagedError, match=expected):
        restarted.restore_latest(_weights_target(mesh), _iterator())
    assert restarted.all_steps() == [1, 2] and not (tmp_path / "corrupt").exists()


def test_reading_another_runs_checkpoints_skips_a_damaged_step_without_moving_it(tmp_path):
    mesh = sharding.make_mesh()
    _save_two_steps(tmp_path, mesh)
    _flip_a_stored_weight(tmp_path / "2", _weights() * 2)
    target = _weights_target(mesh)
    del target["step"]
    state = checkpoint.restore_state(tmp_path, target, partial=True)
    np.testing.assert_array_equal(state["params"]["w"], _weights())
    assert (tmp_path / "2").is_dir() and not (tmp_path / "corrupt").exists()
    with pytest.raises(checkpoint.NoCheckpointError, match="no checkpoint directory"):
        checkpoint.restore_state(tmp_path / "nothing", target, partial=True)
