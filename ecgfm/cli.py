"""The `ecgfm` command: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
from collections.abc import Sequence
from typing import NoReturn

DESCRIPTION = """\
ecgfm: pretrain ECG foundation models on CODE-II and transfer them to PTB-XL and CPSC 2018.

Start with `ecgfm demo` (the whole pipeline on synthetic data, a few minutes on a CPU), or
`ecgfm synth code --out DIR` + `ecgfm inspect DIR/exams_part0.hdf5#1` to look at data.
"""


def _inspect(args: argparse.Namespace) -> int:
    from ecgfm.data.summary import summarize_path

    for path in args.paths:
        if _is_encoder(path):
            summary = _encoder_summary(pathlib.Path(path))
            print(json.dumps(summary) if args.json else _format_encoder(summary), flush=True)
            continue
        summary = summarize_path(path)
        if args.json:
            print(json.dumps(summary), flush=True)
        else:
            print(_format_summary(summary), flush=True)
    return 0


def _is_encoder(path: str) -> bool:
    folder = pathlib.Path(path)
    return (folder / "ecgfm_encoder.json").is_file() or (
        (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    )


def _format_built_dataset(summary: dict) -> str:
    from ecgfm.data.preprocessing import Preprocessing

    spec = summary.get("preprocessing")
    lines = [
        f"{summary['name']} {summary.get('version')}  at {summary['path']}",
        f"  preprocessing: {Preprocessing.from_dict(spec).describe() if spec else 'none'}",
        f"  storage: {summary['storage']}",
        f"  splits: {summary.get('split_plan')}",
    ]
    if summary.get("skipped_when_opening"):
        lines.append(f"  skipped while reading the source: {len(summary['skipped_when_opening'])}")
    for split, info in summary["splits"].items():
        lines.append(
            f"  {split:<11} {info['num_records']:>8} records  {info.get('num_patients', 0):>7} "
            f"patients  {info.get('num_shards', 0)} shards  {len(info.get('skipped', []))} skipped"
        )
        for task, frequencies in info.get("label_frequency", {}).items():
            top = sorted(frequencies.items(), key=lambda kv: -kv[1])
            shown = ", ".join(f"{label} {freq:.1%}" for label, freq in top[:12])
            more = f" (+{len(top) - 12} more)" if len(top) > 12 else ""
            lines.append(f"      {task}: {shown}{more}")
    return "\n".join(lines)


def _format_summary(summary: dict) -> str:
    if "splits" in summary:
        return _format_built_dataset(summary)
    lines = [
        f"{summary['path']}  [{summary['format']}]",
        f"  record {summary['record_id']}  patient {summary.get('patient_id')}  "
        f"age {summary['age']}  sex {summary['sex']}",
        f"  {summary['num_samples']} samples at {summary['sampling_rate']:g} Hz "
        f"({summary['num_samples'] / summary['sampling_rate']:.2f} s)",
        f"  labels: {', '.join(summary['labels']) or '(none)'}",
    ]
    if summary.get("derived_leads"):
        lines.append(f"  derived leads: {', '.join(summary['derived_leads'])}")
    lines.append("  lead      mean mV    std mV")
    for lead, mean, std in zip(
        summary["leads"], summary["lead_mean_mv"], summary["lead_std_mv"], strict=True
    ):
        lines.append(f"  {lead:<6} {mean:>10.4f} {std:>9.4f}")
    return "\n".join(lines)


def _synth(args: argparse.Namespace) -> int:
    from ecgfm.data.synthetic import write_dataset

    out = write_dataset(args.layout, args.out, num_records=args.exams, seed=args.seed)
    print(f"wrote a synthetic {args.layout} dataset ({args.exams} records) to {out}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from ecgfm.data.formats import read_any
    from ecgfm.plot import plot_12lead

    out = plot_12lead(read_any(args.path), args.out)
    print(f"wrote {out}")
    return 0


def _split_fractions(text: str) -> dict[str, float]:
    """ "train=0.9,validation=0.1" → {"train": 0.9, "validation": 0.1}."""
    try:
        pairs = [
            (name.strip(), float(value)) for name, value in (i.split("=") for i in text.split(","))
        ]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected name=fraction,… got {text!r}") from err
    names = [name for name, _ in pairs]
    if "" in names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"each split named once, got {text!r}")
    return dict(pairs)


def _prepare_spec(args: argparse.Namespace):
    """The spec `--config` or `--preprocessing` asks for (full length), or None."""
    from ecgfm.config import load_config
    from ecgfm.data.preprocessing import Preprocessing

    if args.config is not None:
        spec = load_config(args.config).data.preprocessing.to_dict()
        return Preprocessing.from_dict(spec | {"num_samples": None})
    if args.preprocessing is not None:
        return Preprocessing.from_json(args.preprocessing)
    return None


def _prepare(args: argparse.Namespace) -> int:
    from ecgfm.data.tfds_builders import beam_config, check_options, prepare_dataset

    given = {"split_file": args.split_file, "split_column": args.split_column,
             "id_column": args.id_column, "seed": args.seed,
             "fractions": args.fractions, "compression": args.compression}  # fmt: skip
    options = {k: v for k, v in given.items() if v is not None}
    try:
        check_options(args.dataset, options)
    except ValueError as error:
        print(f"ecgfm prepare: {error}", file=sys.stderr)
        return 2
    try:
        preprocessing = _prepare_spec(args)
    except ValueError as error:
        print(f"ecgfm prepare: {error}", file=sys.stderr)
        return 2
    beam = {"beam_runner": args.beam_runner, "beam_workers": args.beam_workers,
            "beam_options": args.beam_options}  # fmt: skip
    if any(v is not None for v in beam.values()):
        try:
            beam_config(args.beam_runner, args.beam_workers, args.beam_options)
        except (ImportError, ValueError) as error:
            print(f"ecgfm prepare: {error}", file=sys.stderr)
            return 2
    on_error = "skip" if args.skip_bad else "raise"
    summary = prepare_dataset(
        args.dataset, args.src, args.data_dir, preprocessing=preprocessing, on_error=on_error,
        **beam, **options,
    )  # fmt: skip
    print(_format_built_dataset(summary))
    return 0


def _pretrain(args: argparse.Namespace, overrides: list[str]) -> int:
    from ecgfm.config import load_config
    from ecgfm.train import train_and_evaluate

    if args.workdir.exists() and not args.workdir.is_dir():
        raise NotADirectoryError(f"--workdir {args.workdir} is a file, not a folder")
    # Config errors, diverged runs and preemption end in `main`, as for every command.
    train_and_evaluate(load_config(args.config, overrides), args.workdir)
    return 0


def _export(args: argparse.Namespace) -> int:
    from ecgfm.export import convert_encoder, export_encoder

    if (args.workdir is None) == (args.encoder is None):
        print(
            "ecgfm export: give --workdir (a training run) or --encoder (a folder)", file=sys.stderr
        )
        return 2
    if args.workdir is not None:
        out = export_encoder(args.workdir, args.out, layout=args.format)
    else:
        out = convert_encoder(args.encoder, args.out, layout=args.format)
    print(f"exported encoder ({args.format} layout) to {out}")
    return 0


# The format-specific options of `ecgfm import` (keyword arguments of each format's reader).
_IMPORT_OPTIONS = {
    "ribeiro_torch": ("config",),
    "ecgfounder": ("use_bn",),
    "st_mem": ("dim_head",),
    "ecg_fm": ("heads", "conv_feature_layers", "layer_norm_first", "label_names"),
}


def _import(args: argparse.Namespace) -> int:
    from ecgfm.interop import CheckpointKeyError, UnsafeCheckpointError, import_checkpoint

    given = {
        "config": args.config,
        "use_bn": None if args.use_bn is None else args.use_bn == "true",
        "dim_head": args.dim_head,
        "heads": args.heads,
        "conv_feature_layers": args.conv_feature_layers,
        "layer_norm_first": None
        if args.layer_norm_first is None
        else args.layer_norm_first == "true",
        "label_names": args.label_names,
    }
    options = {name: value for name, value in given.items() if value is not None}
    if wrong := sorted(set(options) - set(_IMPORT_OPTIONS.get(args.format, ()))):
        flags = ", ".join("--" + name.replace("_", "-") for name in wrong)
        print(f"ecgfm import: {flags} does not apply to {args.format}", file=sys.stderr)
        return 2
    if args.label_names is not None:
        try:
            text = args.label_names.read_text()
        except (OSError, UnicodeDecodeError) as error:
            print(f"ecgfm import: {args.label_names}: {error}", file=sys.stderr)
            return 2
        options["label_names"] = [line.strip() for line in text.splitlines() if line.strip()]
    try:
        out = import_checkpoint(args.format, args.src, args.out, layout=args.layout, **options)
    except (CheckpointKeyError, UnsafeCheckpointError, ValueError, FileNotFoundError) as error:
        print(f"ecgfm import: {error}", file=sys.stderr)
        return 2
    print(_format_encoder(_encoder_summary(out)))
    print(f"imported {args.src} ({args.format}) to {out}")
    return 0


def _encoder_summary(path: pathlib.Path) -> dict:
    from ecgfm.export import read_spec

    return {"path": str(path), "format": "ecgfm encoder", "spec": read_spec(path)}


def _format_encoder(summary: dict) -> str:
    from ecgfm.data.preprocessing import Preprocessing

    spec = summary["spec"]
    pre = spec.get("preprocessing")
    lines = [
        f"{summary['path']}  [ecgfm encoder: {spec.get('title') or spec['model']}]",
        f"  architecture: {spec['model']} {json.dumps(spec['hparams'])}",
        f"  input: {Preprocessing.from_dict(pre).describe() if pre else 'raw millivolts'}",
        f"  objective: {spec.get('objective')}; training data: {spec.get('training_data')}",
        f"  licence: {spec.get('license') or 'not stated (ecgfm export: the project licence)'}",
    ]
    if spec.get("label_names"):
        lines.append(f"  labels ({len(spec['label_names'])}): {', '.join(spec['label_names'])}")
    if spec.get("head"):
        head = spec["head"]
        lines.append(f"  original head: {head['num_classes']} outputs, {head.get('activation')}")
    for key, value in (spec.get("source") or {}).items():
        lines.append(f"  source {key}: {value}")
    for note in spec.get("preprocessing_notes") or []:
        lines.append(f"  contract: {note}")
    return "\n".join(lines)


def _task_spec(args: argparse.Namespace):
    from ecgfm.transfer.protocol import Windowing, cpsc2018_task, ptbxl_task

    # Every encoder embeds any length: the benchmark's 2.5 s windows unless asked otherwise.
    windowing = Windowing(
        window_s=args.window_s or None,
        train_stride_s=args.train_stride_s,
        eval_stride_s=args.eval_stride_s,
        aggregation=args.aggregation,
    )
    if args.dataset == "ptbxl":
        return ptbxl_task(args.task, args.sampling_rate, windowing)
    return cpsc2018_task(windowing, split_file=args.split_file)


def _run_study(args: argparse.Namespace, run, **method_options) -> int:
    """Runs `run_probe` or `run_finetune` with the arguments both share, then prints the table."""
    results = run(
        args.encoder,
        _task_spec(args),
        args.data_root,
        args.out,
        label_fractions=args.fractions,
        seeds=args.seeds,
        threshold_rule=args.threshold_rule,
        num_bootstrap=args.bootstrap,
        **method_options,
    )
    table = args.out / "results.md"
    print(table.read_text() if table.is_file() else json.dumps(results, indent=2, default=str))
    print(f"results, plots and provenance in {args.out}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from ecgfm.transfer.probe import run_probe

    return _run_study(
        args,
        run_probe,
        head=args.head,
        baseline=None if args.no_baseline else "random",
        on_error="skip" if args.skip_bad else "raise",
    )


def _finetune(args: argparse.Namespace) -> int:
    from ecgfm.transfer.finetune import FinetuneConfig, run_finetune

    return _run_study(
        args,
        run_finetune,
        config=FinetuneConfig(steps=args.steps, freeze_steps=args.freeze_steps),
        include_scratch=not args.no_baseline,
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _floats(text: str) -> tuple[float, ...]:
    """ "10,100" (percent) → (0.1, 1.0); each must lie in (0, 100]."""
    percents = tuple(float(v) for v in text.split(","))
    if not all(0 < v <= 100 for v in percents):
        raise argparse.ArgumentTypeError(f"label fractions are percent in (0, 100], got {text!r}")
    return tuple(v / 100 for v in percents)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _add_transfer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", required=True, type=pathlib.Path, help="`ecgfm export` output")
    p.add_argument("--dataset", required=True, choices=("ptbxl", "cpsc2018"))
    p.add_argument(
        "--data-root", required=True, type=pathlib.Path, help="the dataset folder as shipped"
    )
    p.add_argument("--out", required=True, type=pathlib.Path, help="results folder")
    p.add_argument(
        "--task",
        default="superdiagnostic",
        help="PTB-XL: all, diagnostic, subdiagnostic, superdiagnostic, form, rhythm",
    )
    p.add_argument("--sampling-rate", type=int, default=100, help="PTB-XL files: 100 or 500")
    p.add_argument("--split-file", help="CPSC 2018: a split file instead of the shipped one")
    p.add_argument(
        "--fractions",
        type=_floats,
        default=_floats("1,5,10,25,50,100"),
        help="label fractions in %% of the training fold (nested, stratified)",
    )
    p.add_argument("--seeds", type=_ints, default=(0, 1, 2), help="comma-separated")
    p.add_argument(
        "--window-s",
        type=float,
        default=2.5,
        help="input window in s (default 2.5, the PTB-XL benchmark's, whatever length the "
        "encoder was pretrained on; 0: one input per record, cropped/padded to the encoder's "
        "length)",
    )
    p.add_argument("--train-stride-s", type=float, default=2.5)
    p.add_argument("--eval-stride-s", type=float, default=1.25)
    p.add_argument(
        "--aggregation", choices=("max", "mean", "mean_embedding"), default="max",
        help="how window predictions become a record's",
    )  # fmt: skip
    p.add_argument(
        "--bootstrap", type=_non_negative_int, default=1000, help="resamples for the CIs"
    )
    p.add_argument(
        "--threshold-rule",
        choices=("gbeta", "youden"),
        default="gbeta",
        help="per-class thresholds for F/G beta, fitted on the validation fold (gbeta: the PTB-XL "
        "benchmark's grid search)",
    )
    p.add_argument(
        "--no-baseline", action="store_true", help="skip the random-init / from-scratch baseline"
    )


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _benchmark(args: argparse.Namespace) -> int:
    import dataclasses

    from ecgfm.transfer.benchmark import BenchmarkConfig, DataRoots, run_benchmark

    roots = DataRoots(
        ptbxl=args.ptbxl, cpsc2018=args.cpsc2018, code_test=args.code_test,
        code_train=args.code_train,
    )  # fmt: skip
    try:
        config = BenchmarkConfig(
            tasks=args.tasks, modes=args.modes, fractions=args.fractions, seeds=args.seeds,
            ptbxl_sampling_rate=args.sampling_rate, num_bootstrap=args.bootstrap,
            baselines=not args.no_baselines,
        )  # fmt: skip
        overrides = {"epochs": args.epochs} if args.epochs is not None else {}
        if args.steps is not None:
            overrides = {"epochs": None, "steps": args.steps}
        config = dataclasses.replace(
            config,
            attention=dataclasses.replace(config.attention, **overrides),
            finetune=dataclasses.replace(config.finetune, **overrides),
        )
        run_benchmark(args.encoder, roots, args.out, config)
    except (ValueError, FileNotFoundError) as error:
        print(f"ecgfm benchmark: {error}", file=sys.stderr)
        return 2
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ecgfm.transfer.predictor import Predictor, open_dataset, write_predictions

    try:
        predictor = Predictor.load(args.encoder, args.head)
        reader, id_column = open_dataset(args.data, on_error="skip" if args.skip_bad else "raise")
    except (ValueError, FileNotFoundError) as error:
        print(f"ecgfm predict: {error}", file=sys.stderr)
        return 2
    on_error = "skip" if args.skip_bad else "raise"
    sidecar = write_predictions(
        predictor, reader.iter_records(on_error=on_error), args.out, id_column=id_column,
        data=str(args.data), on_error=on_error,
    )  # fmt: skip
    print(
        f"wrote {sidecar['num_exams']} rows × {len(predictor.label_names)} classes to "
        f"{args.out} and the model card to {sidecar['sidecar']}"
        + (f" ({len(sidecar['skipped'])} records skipped)" if sidecar["skipped"] else "")
    )
    return 0


def _add_benchmark_parser(commands) -> None:
    from ecgfm.transfer.benchmark import DEFAULT_FRACTIONS, DEFAULT_SEEDS, MODES
    from ecgfm.transfer.tasks import BENCHMARK_TASKS

    p = commands.add_parser(
        "benchmark",
        help="the transfer suite: PTB-XL's six tasks, CPSC 2018, the CODE test set; three modes",
        description="Runs every ENCODER through linear probe, frozen encoder + attention-pooling "
        "head, and full fine-tuning (Al-Masud, Lopez Alcaraz & Strodthoff, ICLR 2026), each "
        "beside its baseline (random-init encoder; the network trained from scratch), on PTB-XL's "
        "six tasks (folds 1-8/9/10), CPSC 2018 (shipped split) and the CODE test set (Ribeiro "
        "et al. 2020, beside its annotators), at nested label fractions and several seeds, with "
        "2.5 s windows and max aggregation for every encoder. Writes OUT/leaderboard.{md,csv,json} "
        "and plots with 95%% CIs and paired differences. Resumable: rerun the same command "
        "after an interruption and finished cells are loaded, not recomputed.",
    )
    p.add_argument(
        "--encoder", required=True, action="append", type=pathlib.Path,
        help="an `ecgfm export`/`ecgfm import` folder (repeat for several)",
    )  # fmt: skip
    p.add_argument("--ptbxl", type=pathlib.Path, help="PTB-XL folder as shipped")
    p.add_argument("--cpsc2018", type=pathlib.Path, help="CPSC 2018 training set folder")
    p.add_argument(
        "--code-test", type=pathlib.Path,
        help="the CODE test set folder (ecg_tracings.hdf5, attributes.csv, annotations/)",
    )  # fmt: skip
    p.add_argument(
        "--code-train", type=pathlib.Path,
        help="CODE-15%%/CODE-II folder whose exams train (90%%) and validate (10%%, by patient) "
        "the heads scored on the CODE test set",
    )  # fmt: skip
    p.add_argument("--out", required=True, type=pathlib.Path, help="results folder")
    p.add_argument(
        "--tasks", type=_names, help=f"comma list from {', '.join(BENCHMARK_TASKS)} "
        "(default: every task the data flags allow)",
    )  # fmt: skip
    p.add_argument(
        "--modes", type=_names, default=MODES, help=f"comma list from {', '.join(MODES)}"
    )
    p.add_argument(
        "--fractions", type=_floats, default=DEFAULT_FRACTIONS,
        help="label fractions in %% of the training fold (default 1,10,100)",
    )  # fmt: skip
    p.add_argument("--seeds", type=_ints, default=DEFAULT_SEEDS, help="comma list (default 0,1,2)")
    p.add_argument("--sampling-rate", type=int, default=100, help="PTB-XL files: 100 or 500")
    p.add_argument("--bootstrap", type=int, default=1000, help="test resamples for the CIs")
    p.add_argument("--epochs", type=float, help="attention head and fine-tuning epochs (20)")
    p.add_argument("--steps", type=int, help="fixed steps per fit instead of epochs")
    p.add_argument("--no-baselines", action="store_true", help="skip random-init and scratch")
    p.set_defaults(run=_benchmark)


def _add_predict_parser(commands) -> None:
    p = commands.add_parser(
        "predict",
        help="predict with a trained head: one CSV row per exam + a JSON model card",
        description="Scores every exam of DATA (a CODE-15%%/CODE-II/CODE-II-test folder, the "
        "CODE test set, PTB-XL, CPSC 2018 or a Challenge folder) with ENCODER + HEAD (written "
        "by `ecgfm benchmark` in OUT/models/<encoder>/<task>/<mode>/: head/, and for "
        "fine-tuning its encoder/) as the study did (2.5 s windows, aggregated per exam). "
        "Writes OUT: exam id, then one probability column per class in the model's label "
        "order; and OUT.json: the model card (encoder hash and spec, head, task, thresholds "
        "from validation, versions), for blinded scoring of withheld labels.",
    )
    p.add_argument("--encoder", required=True, type=pathlib.Path, help="encoder folder")
    p.add_argument("--head", required=True, type=pathlib.Path, help="head folder")
    p.add_argument("--data", required=True, type=pathlib.Path, help="dataset folder")
    p.add_argument("--out", required=True, type=pathlib.Path, help="predictions CSV")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable records (listed)")
    p.set_defaults(run=_predict)


def _load_matrix(path: pathlib.Path, what: str):
    import numpy as np

    try:
        array = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as error:
        raise SystemExit(f"ecgfm evaluate: cannot read {what} from {path}: {error}") from error
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise SystemExit(f"ecgfm evaluate: {path}: {what} must be [examples, classes]")
    return array


def _evaluate(args: argparse.Namespace) -> int:
    from ecgfm.metrics import evaluate

    labels = _load_matrix(args.labels, "labels")
    scores = _load_matrix(args.scores, "scores")
    thresholds = _load_matrix(args.thresholds, "thresholds").ravel() if args.thresholds else None
    try:
        result = evaluate(
            labels,
            scores,
            class_names=args.class_names.split(",") if args.class_names else None,
            thresholds_K=thresholds,
            thresholds_from=str(args.thresholds) if args.thresholds else "given",
            num_bootstrap=args.bootstrap,
            seed=args.seed,
        )
    except ValueError as error:
        raise SystemExit(f"ecgfm evaluate: {args.labels} / {args.scores}: {error}") from error
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['num_examples']} examples, {len(result['class_names'])} classes")
    for name in ("macro_auroc", "macro_auprc"):
        low, high = result.get(f"{name}_ci", (float("nan"), float("nan")))
        print(f"  {name:<12} {result[name]:.4f}  [{low:.4f}, {high:.4f}]")
    for name in ("f_beta2", "g_beta2", "fmax"):
        print(f"  {name:<12} {result[name]:.4f}")
    print(f"  (thresholds for F/G beta from {result['thresholds_from']})")
    for cls, auroc in zip(result["class_names"], result["per_class_auroc"], strict=True):
        print(f"    {cls:<16} AUROC {auroc:.4f}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ecgfm.demo import run_demo

    run_demo(args.workdir, pretrain_steps=args.steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ecgfm", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (anywhere on the line)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "demo",
        help="the whole pipeline on synthetic data (a few minutes on a CPU)",
        description="Synthetic CODE-layout exams -> supervised pretraining (sharded over all "
        "local devices) -> checkpoint -> export -> linear probe and fine-tune on synthetic "
        "PTB-XL and CPSC 2018 data -> a results table with 95%% CIs beside random-init and "
        "from-scratch baselines. Rerunning reuses what WORKDIR already holds.",
    )
    p.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("workdirs/demo"))
    p.add_argument("--steps", type=_positive_int, default=300, help="pretraining steps")
    p.set_defaults(run=_demo)

    p = commands.add_parser(
        "inspect",
        help="summarise ECG records or a built dataset",
        description="Summarises each PATH: a CPSC 2018 `A0001.mat`, a Challenge `X.hea`/`X.mat`, "
        "a PTB-XL record (`.../records500/00000/00001_hr`), `FILE.hdf5#EXAM_ID` for a CODE exam, "
        "a dataset built by `ecgfm prepare` (DATA_DIR/NAME), or an encoder folder (`ecgfm "
        "export`/`ecgfm import`: architecture, input contract, sources and licence).",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="one JSON object per line per PATH")
    p.set_defaults(run=_inspect)

    p = commands.add_parser(
        "synth",
        help="write a synthetic dataset in a real dataset's layout",
        description="Writes synthetic 12-lead ECGs whose labels change the signal the way the "
        "condition does, in the exact file layout of CODE-15%%, PTB-XL or CPSC 2018.",
    )
    p.add_argument("layout", choices=("code", "ptbxl", "cpsc2018"))
    p.add_argument("--out", required=True, type=pathlib.Path, help="output folder")
    p.add_argument("--exams", type=_positive_int, default=200, help="number of exams/records")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_synth)

    p = commands.add_parser("plot", help="draw the standard 12-lead grid of one record")
    p.add_argument("path", metavar="PATH", help="any PATH `ecgfm inspect` accepts")
    p.add_argument("--out", required=True, type=pathlib.Path, help="image file (.png, .pdf)")
    p.set_defaults(run=_plot)

    p = commands.add_parser(
        "prepare",
        help="build a TFDS array_record dataset from files you have",
        description="Builds DATASET from the folder SRC (the files as the dataset ships them; "
        "nothing is downloaded) into DATA_DIR as array_record shards that grain reads.",
    )
    p.add_argument("dataset", choices=("code", "ptbxl", "cpsc2018"))
    p.add_argument("--src", required=True, type=pathlib.Path, help="the dataset as shipped")
    p.add_argument("--data-dir", required=True, type=pathlib.Path, help="TFDS data dir")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable records (counted and listed)"
    )
    p.add_argument(
        "--split-file",
        type=pathlib.Path,
        help="code: a CSV of exam ids and splits (e.g. CODE-II-open's published split); "
        "cpsc2018: a JSON from ecgfm.data.splits.write_cpsc2018_split (default: the shipped one)",
    )
    p.add_argument("--id-column", help="code: the id column of --split-file (default exam_id)")
    p.add_argument("--split-column", help="code: a column of exams.csv that names each split")
    p.add_argument(
        "--fractions",
        type=_split_fractions,
        help="code: sizes of the patient-level split, e.g. train=0.9,validation=0.1 "
        "(default train=0.8,validation=0.1,test=0.1)",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="code: seed of the patient-level split (default 0); cpsc2018: seed of the split "
        "made over the folder's own labels when the shipped split does not list every record "
        "(then no record keeps the shipped assignment; the metadata says so)",
    )
    p.add_argument(
        "--compression",
        choices=("none", "snappy", "zstd"),
        help="of the array_record shards (default none: ECG int16 barely compresses and "
        "decompressing is most of the reader's CPU time; see benchmarks/README.md)",
    )
    beam = p.add_argument_group(
        "distributed build (Apache Beam; pip install 'ecgfm[beam]')",
        "The same records, order, index and metadata as the default single-process build. "
        "A cluster's workers must see SRC and DATA_DIR at the same paths (shared storage).",
    )
    beam.add_argument(
        "--beam-runner",
        help="DirectRunner (local processes, see --beam-workers), or a cluster runner: "
        "DataflowRunner, FlinkRunner, SparkRunner, PortableRunner (configured by --beam-options)",
    )
    beam.add_argument(
        "--beam-workers",
        type=int,
        help="number of local DirectRunner processes (default: one per core); alone, it implies "
        "--beam-runner DirectRunner",
    )
    beam.add_argument(
        "--beam-options",
        help="Beam pipeline flags as one string, given with '=': "
        '--beam-options="--runner=FlinkRunner --flink_master=HOST:8081 --parallelism=256 '
        '--environment_type=EXTERNAL --environment_config=localhost:50000" '
        '(README: "Preparing at scale")',
    )
    spec = p.add_mutually_exclusive_group()
    spec.add_argument(
        "--config",
        type=pathlib.Path,
        help="store the signals as this training config's data.preprocessing says (full length: "
        "training crops its windows), so the config and the dataset agree",
    )
    spec.add_argument(
        "--preprocessing",
        help='a Preprocessing spec as JSON, e.g. \'{"sampling_rate": 500, "bandpass": [0.5, 40]}\' '
        "(default: the files' own rate, all 12 leads, no filter)",
    )
    p.set_defaults(run=_prepare)

    p = commands.add_parser(
        "pretrain",
        help="pretrain an encoder from an experiment config",
        description="Trains per CONFIG (experiments/configs/*.py) in WORKDIR; resumes when "
        "WORKDIR holds a checkpoint. Override any field: --config.train.steps=100.",
    )
    p.add_argument("--config", required=True, type=pathlib.Path)
    p.add_argument("--workdir", required=True, type=pathlib.Path)
    p.set_defaults(run=_pretrain, takes_overrides=True)

    p = commands.add_parser(
        "export",
        help="write a shareable, self-describing encoder",
        description="Writes the encoder of a training run (--workdir), or rewrites an encoder "
        "folder (--encoder), to OUT: Orbax arrays + ecgfm_encoder.json + model card, or with "
        "--format safetensors the Hugging Face layout (config.json, model.safetensors, "
        "README.md) that ecgfm.load_encoder reads without running code from it.",
    )
    p.add_argument("--workdir", type=pathlib.Path, help="a training run (`ecgfm pretrain`)")
    p.add_argument("--encoder", type=pathlib.Path, help="an encoder folder (export or import)")
    p.add_argument("--out", required=True, type=pathlib.Path)
    p.add_argument("--format", choices=("orbax", "safetensors"), default="orbax")
    p.set_defaults(run=_export)

    p = commands.add_parser(
        "import",
        help="turn a published checkpoint into an ecgfm encoder folder",
        description="Reads a published ECG encoder's checkpoint as its original repository "
        "writes it and writes the folder `ecgfm export` writes (so load_encoder, probe and "
        "finetune take it), with the preprocessing contract, sources and licence in its model "
        "card and the original classifier in head/. Every key and shape is checked first; "
        "mismatches are listed. PyTorch files are read without PyTorch and without running "
        "pickled code. Formats: ribeiro_keras (automatic-ecg-diagnosis model.hdf5), "
        "ribeiro_torch (ecg-age-prediction model.pth, or its folder with config.json), "
        "ecgfounder (ECGFounder .pth), st_mem (ST-MEM .pth), hubert_ecg (HuBERT-ECG Hugging "
        "Face folder), ecg_fm (ECG-FM fairseq-signals .pt, pre-trained or fine-tuned).",
    )
    p.add_argument(
        "format",
        choices=("ribeiro_keras", "ribeiro_torch", "ecgfounder", "st_mem", "hubert_ecg", "ecg_fm"),
    )
    p.add_argument("src", type=pathlib.Path, metavar="SRC", help="the published file")
    p.add_argument("--out", required=True, type=pathlib.Path, help="encoder folder to write")
    p.add_argument("--layout", choices=("orbax", "safetensors"), default="orbax")
    p.add_argument("--config", type=pathlib.Path, help="ribeiro_torch: the run's config.json")
    p.add_argument(
        "--use-bn", choices=("true", "false"),
        help="ecgfounder: apply BatchNorm (default: only if the file's BatchNorm was trained)",
    )  # fmt: skip
    p.add_argument("--dim-head", type=int, help="st_mem: width per attention head (64)")
    p.add_argument(
        "--heads", type=int, help="ecg_fm: attention heads, if the file's cfg lacks them"
    )
    p.add_argument(
        "--conv-feature-layers", metavar="SPEC",
        help="ecg_fm: the conv spec if the file has no cfg, e.g. '[(256, 2, 2)] * 4'",
    )  # fmt: skip
    p.add_argument(
        "--layer-norm-first", choices=("true", "false"),
        help="ecg_fm: pre-LN transformer, if the file's cfg does not say (ECG-FM: false)",
    )  # fmt: skip
    p.add_argument(
        "--label-names", type=pathlib.Path, metavar="FILE",
        help="ecg_fm: the fine-tuned head's label names, one per line",
    )  # fmt: skip
    p.set_defaults(run=_import)

    p = commands.add_parser(
        "probe",
        help="linear probe of a frozen encoder on PTB-XL or CPSC 2018",
        description="Embeds the task's records with the frozen encoder (cached), fits a "
        "logistic probe per label fraction and seed with L2 chosen on the validation fold, and "
        "scores the test fold with CIs, beside the same probe on a randomly initialised encoder.",
    )
    _add_transfer_arguments(p)
    p.add_argument("--head", choices=("linear", "mlp"), default="linear")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable records (listed)")
    p.set_defaults(run=_probe)

    p = commands.add_parser(
        "finetune",
        help="fine-tune an encoder on PTB-XL or CPSC 2018, beside training from scratch",
    )
    _add_transfer_arguments(p)
    p.add_argument("--steps", type=_positive_int, default=500, help="training steps per run")
    p.add_argument(
        "--freeze-steps", type=_non_negative_int, default=0, help="head-only steps first"
    )
    p.set_defaults(run=_finetune)

    _add_benchmark_parser(commands)
    _add_predict_parser(commands)

    p = commands.add_parser(
        "evaluate",
        help="score prediction files with the benchmark metrics and 95%% CIs",
        description="Scores any multilabel predictions (ecgfm's or another framework's) the same "
        "way: macro/per-class AUROC, macro AUPRC, F/G beta=2 (PTB-XL benchmark), Fmax, with "
        "bootstrap confidence intervals that keep every class present. Files: .npy or .csv, "
        "[examples, classes].",
    )
    p.add_argument("--labels", required=True, type=pathlib.Path, help="0/1 labels")
    p.add_argument("--scores", required=True, type=pathlib.Path, help="scores or probabilities")
    p.add_argument(
        "--thresholds",
        type=pathlib.Path,
        help="per-class thresholds for F/G beta (fit on validation data); default: fit here",
    )
    p.add_argument("--class-names", help="comma-separated, in column order")
    p.add_argument(
        "--bootstrap", type=_non_negative_int, default=1000, help="resamples (0: no CIs)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_evaluate)
    return parser


# Errors that mean the input or the request cannot be used (not a bug in ecgfm): one line on
# stderr naming what to fix, exit code 2. Looked up in sys.modules, so that the CLI imports
# nothing it does not run (an error of a module never imported cannot have been raised).
USER_ERRORS = (
    ("ecgfm.config", "ConfigError"),
    ("ecgfm.data.record", "EcgFormatError"),
    ("ecgfm.export", "EncoderFormatError"),
    ("ecgfm.checkpoint", "CheckpointMismatchError"),
    ("ecgfm.checkpoint", "CheckpointDamagedError"),
    ("ecgfm.checkpoint", "NonFiniteStateError"),
    ("ecgfm.train", "NonFiniteError"),
    ("ecgfm.interop.keys", "CheckpointKeyError"),
    ("ecgfm.interop.torch_file", "UnsafeCheckpointError"),
)
# Paths given on the command line that are missing, or of the wrong kind.
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)  # fmt: skip
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def _is_user_error(error: BaseException) -> bool:
    types = tuple(
        getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules
    )
    return isinstance(error, types + PATH_ERRORS)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one `ecgfm` command; returns its exit code.

    Misuse (a bad argument or config, a missing or damaged file, a diverged run) is one line on
    stderr and exit code 2; preemption exits 143, Ctrl-C 130, anything else (a bug) 1 with its
    type and message. `--debug` (anywhere on the line) shows the traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # Orbax and TFDS log routine notices through absl at WARNING; keep the console for ours.
        logging.getLogger("absl").setLevel(logging.ERROR)
    if getattr(args, "takes_overrides", False):
        bad = [a for a in unknown if not a.startswith("--config.")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    prefix = f"ecgfm {args.command}"
    try:
        if getattr(args, "takes_overrides", False):
            return args.run(args, [a.removeprefix("--") for a in unknown])
        return args.run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prefix}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except Exception as error:
        if debug:
            raise
        preemption = sys.modules.get("ecgfm.preemption")
        if preemption is not None and isinstance(error, preemption.Preempted):
            print(f"{prefix}: {_one_line(error)}", file=sys.stderr)
            return error.exit_code
        if _is_user_error(error):
            print(f"{prefix}: {_one_line(error)}", file=sys.stderr)
            return 2
        print(
            f"{prefix}: internal error {type(error).__name__}: {_one_line(error)} (rerun with "
            "--debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
