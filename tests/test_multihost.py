"""Two processes on one machine (2 fake devices each) train the same model as one process."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = (
    "import sys; from ecgfm.config import load_config; from ecgfm.train import train_and_evaluate;"
    " train_and_evaluate(load_config('experiments/configs/smoke.py', sys.argv[2:]), sys.argv[1])"
)
OVERRIDES = [
    "train.steps=6", "train.checkpoint_every=3", "train.eval_every=6",
    "data.synthetic_exams=48",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir: pathlib.Path, devices: int, extra: list[str]) -> subprocess.Popen:
    env = os.environ | {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN, str(workdir), *OVERRIDES, *extra],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait(procs: list[subprocess.Popen]) -> None:
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def _metrics(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one(tmp_path):
    """Dropout on, and initialised from an exported encoder (each process reads its shards)."""
    from ecgfm.config import load_config
    from ecgfm.export import export_encoder
    from ecgfm.train import train_and_evaluate

    single, multi, source = tmp_path / "single", tmp_path / "multi", tmp_path / "source"
    train_and_evaluate(
        load_config("experiments/configs/smoke.py", [*OVERRIDES, "train.steps=1"]), source
    )
    (build,) = (source / "data" / "tfds" / "code").iterdir()  # the packed synthetic exams
    data = [f"data.path={source / 'data' / 'tfds'}", f"data.build={build.name}"]
    init_from = [*data, f"init_from={export_encoder(source, tmp_path / 'export')}"]
    _wait([_launch(single, 4, init_from)])
    address = f"127.0.0.1:{_free_port()}"
    _wait([
        _launch(multi, 2, [*init_from, f"distributed.coordinator_address={address}",
                           "distributed.num_processes=2", f"distributed.process_id={i}"])
        for i in range(2)
    ])  # fmt: skip
    one, two = _metrics(single), _metrics(multi)
    assert [e["step"] for e in one] == [e["step"] for e in two]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "grad_norm", "val_loss", "val_macro_auroc"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)
    assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == [
        "3", "6"
    ]  # fmt: skip
