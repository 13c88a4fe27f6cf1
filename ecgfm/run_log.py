"""What a training run writes as it goes: metrics.jsonl + TensorBoard, and its throughput.

`metrics.jsonl` holds one JSON object per logged step (`{"step": s, ...}`), written by the main
process. The trainer writes step s's line before it starts checkpointing step s, and a resumed
run drops lines past the step it resumed from (they are redone), so after any kill the file
and the checkpoints agree: every committed step has its lines, no step has two.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

import tensorboardX

from ecgfm import distributed

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | pathlib.Path) -> list[dict]:
    """The entries of a metrics.jsonl, in order (a torn last line, from a kill, is left out)."""
    entries = []
    for line in pathlib.Path(path).read_text().splitlines():
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: ignoring an unreadable line %r", path, line[:80])
    return entries


class MetricsLog:
    """metrics.jsonl + TensorBoard of one run, written by the main process only."""

    def __init__(self, workdir: pathlib.Path, resume_step: int):
        self.enabled = distributed.is_main_process()
        self.path = workdir / METRICS_FILE
        if not self.enabled:
            return
        if self.path.exists():
            entries = read_metrics(self.path)
            kept = [e for e in entries if e["step"] <= resume_step]
            if len(kept) < len(entries) or self.path.read_text().count("\n") != len(entries):
                log.warning(
                    "dropping %d metrics.jsonl entries past step %d, which is redone",
                    len(entries) - len(kept), resume_step,
                )  # fmt: skip
                self.path.write_text("".join(json.dumps(e) + "\n" for e in kept))
        self.writer = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()

    def latest(self) -> dict[str, float]:
        """Each metric's last logged value: what a finished run reports when it is rerun."""
        latest: dict[str, float] = {}
        if self.path.exists():
            for entry in read_metrics(self.path):
                latest |= {k: v for k, v in entry.items() if k != "step"}
        return latest


class Throughput:
    """Samples per second between log points, from when each point's metrics reached the host.

    Fetching step s's metrics blocks until the device finished step s, so the time between two
    fetches is the time the device took for the steps in between. The first step after start
    (mostly compilation) only starts the first interval; an evaluation restarts it.
    """

    def __init__(self, global_batch_size: int):
        self.global_batch_size = global_batch_size
        self._start: tuple[int, float] | None = None

    def restart(self, step: int) -> None:
        self._start = (step, time.perf_counter())

    def measure(self, step: int) -> float | None:
        """Samples per second since the previous point (None for the first); starts a new one."""
        now = time.perf_counter()
        rate = None
        if self._start is not None and step > self._start[0]:
            steps, seconds = step - self._start[0], now - self._start[1]
            rate = steps * self.global_batch_size / max(seconds, 1e-9)
        self._start = (step, now)
        return rate
