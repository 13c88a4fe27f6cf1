"""Every objective's smoke run on the same synthetic data, exported and linear-probed alike.

    python benchmarks/ssl_probe.py --workdir /tmp/ssl_probe

For each smoke config (`experiments/configs/<name>.py`: supervised Ribeiro ResNet, SimCLR,
CLOCS, ST-MEM, JEPA, CPC on S4, supervised S4): `ecgfm pretrain` on one packed dataset of 192
synthetic CODE-15%-layout exams (`ecgfm.demo.synthetic_code_dataset`, 80/20 by patient), `ecgfm
export`, then `run_probe` on one synthetic PTB-XL-layout folder (400 records at 500 Hz,
superdiagnostic, folds 1–8 / 9 / 10, all training labels, seed 0) with the configs' common
input: 2.56 s windows (1024 samples at 400 Hz, the length they were pretrained on; every encoder
takes any length since issue 14), strided by 2.56 s, max-aggregated per record. Each row gives
the test macro AUROC with its 95 % bootstrap CI, the same probe on a randomly initialised twin
of the encoder, and the paired difference. `--finetune` names configs whose encoders are also
fine-tuned on the same task (`run_finetune` with `ecgfm demo`'s settings: `--finetune-steps`
250, the first fifth training the head alone), beside the same network trained from scratch.

The smoke runs are 40 steps on ~150 training exams: the table checks that every objective runs
end to end through the same protocol and shows how far 40 steps get, not which objective is
better at scale. Rerunning with the same `--workdir` reuses the data, the finished pretraining
runs (their recorded wall time is kept) and the embedding caches.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shlex
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = (
    "smoke",
    "smoke_simclr",
    "smoke_clocs",
    "smoke_mae",
    "smoke_jepa",
    "smoke_cpc",
    "smoke_s4",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, type=pathlib.Path)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names")
    parser.add_argument("--ptbxl-records", type=int, default=400)
    parser.add_argument("--num-bootstrap", type=int, default=500)
    parser.add_argument(
        "--finetune", default="", help="comma-separated configs to fine-tune as well"
    )
    parser.add_argument("--finetune-steps", type=int, default=250)
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    args.finetune = [c.strip() for c in args.finetune.split(",") if c.strip()]
    return args


def _pretrain(name: str, packed: pathlib.Path, workdir: pathlib.Path) -> dict:
    """Pretrain (or reuse) and export one config; its summary."""
    import jax
    from flax import nnx

    from ecgfm.config import load_config
    from ecgfm.export import export_encoder, load_encoder
    from ecgfm.train import train_and_evaluate

    config = load_config(REPO / "experiments" / "configs" / f"{name}.py", [f"data.path={packed}"])
    summary_file = workdir / "pretrain_summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
    else:
        start = time.perf_counter()
        final = train_and_evaluate(config, workdir / "run")
        summary = {"wall_s": time.perf_counter() - start, "final": final}
        summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    encoder_dir = export_encoder(workdir / "run", workdir / "encoder")
    module = load_encoder(encoder_dir).module
    summary["encoder_dir"] = str(encoder_dir)
    summary["parameters"] = sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    summary["model"] = config.model.name
    summary["objective"] = config.objective.name
    summary["sampling_rate"] = config.data.preprocessing.sampling_rate
    summary["num_samples"] = config.data.preprocessing.num_samples
    return summary


def _ci(run: dict) -> str:
    test = run["test"]
    low, high = test["macro_auroc_ci"]
    return f"{test['macro_auroc']:.3f} [{low:.3f}, {high:.3f}]"


def _row_of(results: dict, method: str) -> dict:
    return next(r for r in results["runs"] if r["method"] == method and r["fraction"] == 1.0)


def _difference(results: dict, a: str, b: str) -> str:
    comparison = next(c for c in results["comparisons"] if c["a"] == a and c["b"] == b)
    low, high = comparison["ci"]
    return f"{comparison['difference']:+.3f} [{low:+.3f}, {high:+.3f}]"


def main(argv: list[str] | None = None) -> None:
    """Pretrain, export and probe every config; print and write the table."""
    args = parse_args(argv)
    from ecgfm.data.synthetic.ptbxl import write_ptbxl_dataset
    from ecgfm.demo import synthetic_code_dataset
    from ecgfm.transfer import protocol
    from ecgfm.transfer.finetune import FinetuneConfig, run_finetune
    from ecgfm.transfer.probe import run_probe

    args.workdir.mkdir(parents=True, exist_ok=True)
    command = shlex.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    header = [
        f"command: {command}",
        f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"cpus: {os.cpu_count()}; load average (1/5/15 min) at start: "
        + " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]
    print("\n".join(header), flush=True)
    # One packed synthetic CODE dataset (192 exams, 400 Hz, full length) for every config.
    packed = synthetic_code_dataset(args.workdir / "data", num_exams=192)
    ptbxl_root = args.workdir / "data" / "ptbxl"
    if not (ptbxl_root / "ptbxl_database.csv").is_file():
        write_ptbxl_dataset(
            ptbxl_root, num_records=args.ptbxl_records, seed=1, sampling_rates=(500,)
        )

    rows = []
    for name in args.configs:
        print(f"\n== {name}: pretrain and export", flush=True)
        summary = _pretrain(name, packed, args.workdir / name)
        window_s = summary["num_samples"] / summary["sampling_rate"]
        windowing = protocol.Windowing(
            window_s=window_s, train_stride_s=window_s, eval_stride_s=window_s
        )
        task = protocol.ptbxl_task("superdiagnostic", 500, windowing)
        print(f"== {name}: linear probe", flush=True)
        probe = run_probe(
            summary["encoder_dir"], task, ptbxl_root, args.workdir / name / "probe",
            label_fractions=(1.0,), seeds=(0,), num_bootstrap=args.num_bootstrap,
        )  # fmt: skip
        row = {
            "config": name,
            "objective": summary["objective"],
            "model": summary["model"],
            "parameters": summary["parameters"],
            "wall_s": summary["wall_s"],
            "loss": summary["final"].get("loss"),
            "probe": _ci(_row_of(probe, "pretrained")),
            "random": _ci(_row_of(probe, "random_init")),
            "delta": _difference(probe, "pretrained", "random_init"),
        }
        if name in args.finetune:
            print(f"== {name}: fine-tune", flush=True)
            steps = args.finetune_steps
            finetune = run_finetune(
                summary["encoder_dir"], task, ptbxl_root, args.workdir / name / "finetune",
                label_fractions=(1.0,), seeds=(0,), num_bootstrap=args.num_bootstrap,
                # `ecgfm demo`'s settings: the head alone first, then everything.
                config=FinetuneConfig(
                    steps=steps, warmup_steps=max(steps // 10, 1),
                    eval_every=max(steps // 10, 1), freeze_steps=steps // 5,
                ),
            )  # fmt: skip
            row["finetune"] = _ci(_row_of(finetune, "finetune"))
            row["scratch"] = _ci(_row_of(finetune, "scratch"))
        rows.append(row)
        (args.workdir / "ssl_probe.json").write_text(json.dumps(rows, indent=2) + "\n")

    lines = [
        *header,
        "load average (1/5/15 min) at end: " + " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "",
        "| config | objective | encoder | encoder parameters | pretrain wall s | final train loss "
        "| probe test macro AUROC [95% CI] | random-init probe | Δ vs random [95% CI] "
        "| fine-tune | same net from scratch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        loss = f"{r['loss']:.3f}" if r["loss"] is not None else "–"
        lines.append(
            f"| {r['config']} | {r['objective']} | {r['model']} | {r['parameters']:,} "
            f"| {r['wall_s']:.0f} | {loss} | {r['probe']} | {r['random']} | {r['delta']} "
            f"| {r.get('finetune', '–')} | {r.get('scratch', '–')} |"
        )
    table = "\n".join(lines)
    (args.workdir / "ssl_probe.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
