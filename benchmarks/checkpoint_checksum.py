"""What the checkpoint content checksum costs, beside the Orbax save it protects.

    python benchmarks/checkpoint_checksum.py --rounds 5

The state is the one `experiments/configs/code15_resnet.py` trains (Ribeiro ResNet, 6.4 M
parameters, AdamW moments, step, RNG key: ≈ 19 M numbers), initialised on every local device's
mesh. Per round, interleaved: `checkpoint.content_checksums(state)` (the checksum and the
finiteness check that `Checkpointer.save` runs before Orbax sees the state), and a
`Checkpointer.save` + `wait_until_finished` of the same state into a fresh directory (which
includes the checksum), and the same with the checksum replaced by nothing (Orbax alone, the
save as it was before). Prints the median seconds of each, the range, and the checksum's share.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import jax
import orbax.checkpoint as ocp

REPO = pathlib.Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--config", default=str(REPO / "experiments/configs/code15_resnet.py"))
    args = parser.parse_args(argv)

    from ecgfm import checkpoint, sharding, train_state
    from ecgfm.config import load_config
    from ecgfm.experiment import Experiment
    from ecgfm.optim import make_optimizer

    exp = Experiment.from_config(load_config(args.config, ["data.path=unused"]))
    tx, schedule = make_optimizer(exp.optim, exp.train.steps)
    mesh = sharding.make_mesh()
    training = train_state.compile_training(
        lambda rngs: exp.objective.build_model(exp.model, 6, rngs), exp.objective, tx, schedule,
        mesh,
    )  # fmt: skip
    with jax.set_mesh(mesh):
        state = training.init(jax.random.key(0))
    numbers = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size"))
    checkpoint.content_checksums(state)  # compile once

    def plain_save(directory: pathlib.Path) -> None:
        with ocp.CheckpointManager(directory) as manager:
            manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
            manager.wait_until_finished()

    def ecgfm_save(directory: pathlib.Path) -> None:
        saver = checkpoint.Checkpointer(directory, keep=1)
        saver.save(0, state, None)
        saver.wait_until_finished()
        saver.close()

    timings: dict[str, list[float]] = {"checksum": [], "orbax save": [], "ecgfm save": []}
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="ckpt_checksum_"))
    try:
        for round_ in range(args.rounds):
            for name, run in (("checksum", lambda _: checkpoint.content_checksums(state)),
                              ("orbax save", plain_save), ("ecgfm save", ecgfm_save)):  # fmt: skip
                directory = scratch / f"{name.replace(' ', '_')}_{round_}"
                began = time.perf_counter()
                run(directory)
                timings[name].append(time.perf_counter() - began)
                shutil.rmtree(directory, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"state: {numbers / 1e6:.1f} M numbers on {mesh.size} {jax.devices()[0].platform} "
          f"device(s); {args.rounds} rounds")  # fmt: skip
    print("| what | median s | range |")
    print("|---|---|---|")
    for name, values in timings.items():
        print(f"| {name} | {statistics.median(values):.3f} | "
              f"{min(values):.3f}–{max(values):.3f} |")  # fmt: skip
    share = statistics.median(timings["checksum"]) / statistics.median(timings["orbax save"])
    print(f"checksum / Orbax save: {share:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
