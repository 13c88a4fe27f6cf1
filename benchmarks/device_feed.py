"""Step time and MFU on an accelerator, fed by the real input pipeline beside device-resident data.

    python benchmarks/device_feed.py --model ribeiro_resnet --batch-size 256 --steps 30
    python benchmarks/device_feed.py --model vit1d --batch-size 256 --steps 30

Writes `--num-exams` synthetic CODE-15%-layout exams, packs them with `prepare_dataset` (the
path every shipped config reads), and compiles the trainer's own step (`ecgfm.train_state`,
bf16 compute with fp32 weights by default) for the paper-scale model: the Ribeiro ResNet at
4096 samples or the ViT-S/1d at 4050. Then, after warm-up, times `--steps` steps two ways,
alternating over `--rounds` rounds:
- device-resident: the same global batch, already on the device, every step (the compute bound);
- fed: each step's batch from the real pipeline (`ecgfm.data.inputs.make_inputs`, grain over
  array_record with `--workers` worker processes) and `Training.global_batch` (host → device),
  exactly as `ecgfm.train` does.
The difference between the two is the input bottleneck. FLOPs per step come from XLA's cost
analysis; MFU is against the device's dense bf16 peak (`train_step.PEAK_BF16_FLOPS`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import absl.flags

sys.path.insert(0, str(pathlib.Path(__file__).parent))

WINDOWS = {"ribeiro_resnet": 4096, "vit1d": 4050}
HPARAMS = {
    "ribeiro_resnet": {"input_length": 4096},
    "vit1d": {"patch_size": 75, "width": 384, "depth": 12, "num_heads": 6, "max_patches": 54},
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(WINDOWS), default="ribeiro_resnet")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--num-exams", type=int, default=4096)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--workdir", type=pathlib.Path, default=None)
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    args = parser.parse_args(argv)
    absl.flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags

    import jax
    from train_step import peak_flops

    from ecgfm import sharding, train_state
    from ecgfm.data.inputs import DataConfig, make_inputs
    from ecgfm.data.preprocessing import Preprocessing
    from ecgfm.data.synthetic import write_dataset
    from ecgfm.data.tfds_builders import prepare_dataset
    from ecgfm.models import ModelSpec
    from ecgfm.objectives.supervised import SupervisedObjective
    from ecgfm.optim import OptimConfig, make_optimizer

    window = WINDOWS[args.model]
    normalization = "per_lead_standardize" if args.model == "vit1d" else "none"
    stored = Preprocessing(sampling_rate=400.0, normalization=normalization)
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="ecgfm_device_"))
    raw = workdir / "code"
    started = time.perf_counter()
    if not raw.is_dir():
        write_dataset("code", raw, num_records=args.num_exams, seed=0, exams_per_shard=512)
    prepare_dataset("code", raw, workdir / "tfds", preprocessing=stored,
                    fractions={"train": 1.0}, config_name=normalization)  # fmt: skip
    print(f"data ready in {time.perf_counter() - started:.0f} s", flush=True)

    device = jax.devices()[0]
    mesh = sharding.make_mesh()
    model = ModelSpec.create(args.model, {**HPARAMS[args.model], "dtype": args.dtype})
    tx, schedule = make_optimizer(OptimConfig(learning_rate=1e-4), 10_000)
    training = train_state.compile_training(
        lambda rngs: model.build_classifier(6, rngs), SupervisedObjective(), tx, schedule, mesh
    )
    data = DataConfig(
        path=str(workdir / "tfds"), build=normalization, val_split="",
        preprocessing=Preprocessing(sampling_rate=400.0, num_samples=window,
                                    normalization=normalization),
        worker_count=args.workers,
    )  # fmt: skip
    inputs = make_inputs(data, workdir=workdir, global_batch_size=args.batch_size, seed=0)
    with jax.set_mesh(mesh):
        state = training.init(jax.random.key(0))
        resident = training.global_batch(next(inputs.train))
        compiled = training.step.lower(state, resident).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost["flops"])

        def run(fed: bool) -> float:
            nonlocal state
            start = time.perf_counter()
            for _ in range(args.steps):
                batch = training.global_batch(next(inputs.train)) if fed else resident
                state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            return (time.perf_counter() - start) / args.steps

        run(False), run(True)  # warm-up: allocation, worker start-up, read-ahead
        times: dict[str, list[float]] = {"device-resident": [], "fed by the pipeline": []}
        for _ in range(args.rounds):
            times["device-resident"].append(run(False))
            times["fed by the pipeline"].append(run(True))
    inputs.close()
    peak = peak_flops(device.device_kind)
    results = {
        "model": args.model,
        "parameters": sum(x.size for x in jax.tree.leaves(state["params"])),
        "device": device.device_kind,
        "host_cpus": len(os.sched_getaffinity(0)),
        "batch_size": args.batch_size,
        "window": window,
        "dtype": args.dtype,
        "workers": args.workers,
        "gflop_per_exam": flops / args.batch_size / 1e9,
        "rows": {},
    }
    print(f"\n{args.model} ({results['parameters']:,} parameters), {args.dtype}, batch "
          f"{args.batch_size} x {window} x 12, {device.device_kind}, {args.workers} grain "
          f"workers on {results['host_cpus']} host CPUs")  # fmt: skip
    print("| feed | s/step median (min–max) | exams/s | TFLOP/s | MFU (bf16 peak) |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        step = statistics.median(values)
        mfu = flops / step / peak if peak else None
        results["rows"][name] = {"seconds_per_step": step, "exams_per_second":
                                 args.batch_size / step, "mfu": mfu}  # fmt: skip
        print(f"| {name} | {step:.4f} ({min(values):.4f}–{max(values):.4f}) | "
              f"{args.batch_size / step:,.0f} | {flops / step / 1e12:.1f} | "
              f"{'–' if mfu is None else f'{mfu:.1%}'} |")  # fmt: skip
    bottleneck = (statistics.median(times["fed by the pipeline"])
                  / statistics.median(times["device-resident"]))  # fmt: skip
    print(f"input bottleneck: fed steps take {bottleneck:.2f}× the device-resident ones")
    if args.json:
        args.json.write_text(json.dumps(results | {"fed_over_resident": bottleneck}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
