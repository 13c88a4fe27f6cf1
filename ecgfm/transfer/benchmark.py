"""`ecgfm benchmark`: the field's transfer suite for one or more encoders, cell by cell.

For each encoder × task × mode it runs a study (`study.run_study`) of the pretrained encoder
beside its baseline, on nested label fractions and several seeds:

| mode | what is trained | baseline |
|---|---|---|
| `linear` | logistic probe on frozen embeddings (`probe`) | the same probe on a random-init twin |
| `attention` | attention-pooling head on the frozen encoder's features | same, random-init twin |
| `finetune` | encoder + dense head on the pooled embedding | the same network from scratch |

These are the three modes of Al-Masud, Lopez Alcaraz & Strodthoff, "Benchmarking ECG
foundation models: a reality check across clinical tasks" (ICLR 2026): `linear`, `frozen`
(learnable-query attention pooling) and `finetuning_linear` in AI4HealthUOL/ecg-fm-benchmarking.
The random-init baseline is in every leaderboard because a random encoder often matches a
pretrained one under a linear probe.

Tasks: PTB-XL's six (folds 1–8 / 9 / 10, 100 Hz by default), CPSC 2018 on the shipped split,
and the CODE test set (`tasks.code_test_task`; scored per class beside the annotators,
`code_test`). Inputs: 2.5 s windows, per-class max of the window predictions at test time
(`windows.BENCHMARK_WINDOWING`), for every encoder.

Resumable: each fit is a cell, `OUT/cells/<encoder>/<task>/<mode>/<method>/<records>-<seed>-
<subset hash>.npz` (its validation and test scores and what the fit reported), written
atomically when the fit ends. A rerun loads finished cells and fits only the others; a
study whose settings changed (encoder weights, protocol, hyperparameters: `fingerprint.json`)
starts its cells again. Embeddings are cached in `OUT/embedding_cache`. The fitted pretrained
model of each study at 100 % of the labels is kept in `OUT/models/...` for `ecgfm predict`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ecgfm import metrics
from ecgfm.atomic import replace_atomically
from ecgfm.data.ptbxl import TASKS as PTBXL_TASKS
from ecgfm.data.splits import TEST, TRAIN, VALIDATION
from ecgfm.encoder import Encoder
from ecgfm.models import ModelSpec
from ecgfm.transfer import code_test, leaderboard, predictor, report
from ecgfm.transfer.finetune import FinetuneConfig, FinetuneMethod, finetune_settings
from ecgfm.transfer.probe import (
    DEFAULT_L2_GRID,
    embed_task,
    probe_method,
    probe_settings,
)
from ecgfm.transfer.study import Method, MethodOutput, run_study, study_results, study_runs
from ecgfm.transfer.tasks import (
    BENCHMARK_TASKS,
    TaskData,
    TaskSpec,
    code_test_task,
    cpsc2018_task,
    load_task,
    ptbxl_task,
)
from ecgfm.transfer.windows import BENCHMARK_WINDOWING, Windowing

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("linear", "attention", "finetune")
# Each mode's methods: the pretrained encoder first (the reference), then its baseline.
METHODS: dict[str, tuple[str, str]] = {
    "linear": ("pretrained", "random_init"),
    "attention": ("pretrained", "random_init"),
    "finetune": ("finetune", "scratch"),
}
DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.1, 1.0)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
# The frozen-encoder head: attention pooling, encoder learning rate 0, evaluation mode.
ATTENTION = FinetuneConfig(
    epochs=20,
    batch_size=64,
    head_lr=1e-3,
    encoder_lr=0.0,
    weight_decay=1e-2,
    warmup_steps=50,
    eval_every=100,
    patience=10,
    head="attention",
    frozen=True,
)
FINETUNE = FinetuneConfig(
    epochs=20,
    batch_size=64,
    head_lr=1e-3,
    encoder_lr=1e-4,
    warmup_steps=50,
    eval_every=100,
    patience=10,
    head="linear",
)


@dataclasses.dataclass(frozen=True)
class DataRoots:
    """Where each dataset lies, as shipped (None: its tasks are not run)."""

    ptbxl: str | None = None
    cpsc2018: str | None = None
    code_test: str | None = None
    code_train: str | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                object.__setattr__(self, field.name, str(value))

    def available(self) -> tuple[str, ...]:
        """The benchmark tasks these folders allow."""
        tasks = list(PTBXL_TASKS) if self.ptbxl else []
        tasks += ["cpsc2018"] if self.cpsc2018 else []
        tasks += ["code_test"] if self.code_test and self.code_train else []
        return tuple(tasks)


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """What the suite runs; every field is recorded with the results.

    Attributes:
      tasks: subset of `tasks.BENCHMARK_TASKS` (default: every task the data allows).
      modes: subset of `MODES`.
      fractions: label fractions of the training fold (nested, stratified per seed).
      seeds: seeds of the label subsets and of the trained heads.
      ptbxl_sampling_rate: PTB-XL's files to read, 100 or 500 Hz.
      windowing: inputs and aggregation (the benchmark's 2.5 s windows, max at test).
      l2_grid: the linear probe's λ grid (chosen on validation).
      attention, finetune: how the attention head and fine-tuning are trained.
      num_bootstrap: test resamples for CIs and paired differences (shared by every run).
      baselines: run each mode's baseline (random init / from scratch).
      embed_batch_size: windows per encoder call when embedding.
    """

    tasks: tuple[str, ...] | None = None
    modes: tuple[str, ...] = MODES
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    ptbxl_sampling_rate: int = 100
    windowing: Windowing = BENCHMARK_WINDOWING
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID
    attention: FinetuneConfig = ATTENTION
    finetune: FinetuneConfig = FINETUNE
    num_bootstrap: int = metrics.DEFAULT_BOOTSTRAP
    baselines: bool = True
    embed_batch_size: int = 256

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tasks or ()) - set(BENCHMARK_TASKS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; choose from {list(BENCHMARK_TASKS)}")
        bad_modes = sorted(set(self.modes) - set(MODES))
        if bad_modes or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {list(MODES)}, not {bad_modes}")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must lie in (0, 1], got {self.fractions}")
        if not self.seeds:
            raise ValueError("give at least one seed")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def task_spec(task: str, roots: DataRoots, config: BenchmarkConfig) -> tuple[TaskSpec, str]:
    """(spec, data root) of a benchmark task name."""
    if task in PTBXL_TASKS:
        return ptbxl_task(task, config.ptbxl_sampling_rate, config.windowing), roots.ptbxl
    if task == "cpsc2018":
        return cpsc2018_task(config.windowing), roots.cpsc2018
    return code_test_task(roots.code_train, config.windowing), roots.code_test


def slug(path: str | os.PathLike) -> str:
    """A folder-safe name for an encoder folder."""
    path = pathlib.Path(path)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name) or "encoder"
    return name


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class Progress:
    """Counts cells and prints one line per cell: fitted (with its time) or loaded."""

    def __init__(self, total: int, out_dir: pathlib.Path, echo: Callable[[str], None] = print):
        self.total, self.done, self.loaded = total, 0, 0
        self.out_dir = out_dir
        self.echo = echo
        self.start = time.perf_counter()

    def cell(self, label: str, *, cached: bool, seconds: float = 0.0, note: str = "") -> None:
        self.done += 1
        self.loaded += cached
        what = "loaded" if cached else f"fitted in {seconds:.1f} s"
        self.echo(f"[{self.done:>4}/{self.total}] {label}: {what}{note}")
        state = {
            "cells_done": self.done,
            "cells_total": self.total,
            "cells_loaded": self.loaded,
            "elapsed_s": round(time.perf_counter() - self.start, 1),
            "last": label,
        }
        (self.out_dir / "progress.json").write_text(json.dumps(state) + "\n")


class CachedMethod:
    """A `study.Method` whose fits are cells on disk: loaded when present, else fitted (the
    method is built only then) and saved. At 100 % of the labels and the first seed the
    fitted model is handed to `keep` (to write it for `ecgfm predict`)."""

    def __init__(
        self,
        cell_dir: pathlib.Path,
        make: Callable[[], Method],
        progress: Progress,
        label: str,
        *,
        num_train: int,
        first_seed: int,
        keep: Callable[[MethodOutput], None] | None = None,
    ):
        self.cell_dir, self.make, self.progress, self.label = cell_dir, make, progress, label
        self.num_train, self.first_seed, self.keep = num_train, first_seed, keep
        self._method: Method | None = None

    def fit_predict(self, train_index: np.ndarray, seed: int) -> MethodOutput:
        subset = hashlib.sha256(np.asarray(train_index, np.int64).tobytes()).hexdigest()[:10]
        path = self.cell_dir / f"{len(train_index)}-{seed}-{subset}.npz"
        full = len(train_index) == self.num_train and seed == self.first_seed
        kept = self.keep is None or not full or (self.cell_dir / "model_kept").is_file()
        label = f"{self.label} n={len(train_index)} seed={seed}"
        if path.is_file() and kept:
            with np.load(path, allow_pickle=False) as f:
                out = MethodOutput(
                    f["validation_scores_NK"], f["test_scores_NK"], json.loads(str(f["info"]))
                )
            self.progress.cell(label, cached=True)
            return out
        if self._method is None:
            self._method = self.make()
        start = time.perf_counter()
        out = self._method.fit_predict(train_index, seed)
        info = json.dumps(out.info, default=float)
        replace_atomically(
            path,
            lambda f: np.savez(
                f,
                validation_scores_NK=out.validation_scores_NK,
                test_scores_NK=out.test_scores_NK,
                info=np.array(info),
            ),
        )
        if full and self.keep is not None:
            self.keep(out)
            (self.cell_dir / "model_kept").write_text("")
        score = out.info.get("validation_macro_auroc")
        note = f" (validation macro AUROC {score:.3f})" if isinstance(score, float) else ""
        self.progress.cell(label, cached=False, seconds=time.perf_counter() - start, note=note)
        return out


@dataclasses.dataclass
class EncoderUnderTest:
    """One encoder of the suite and what its studies share (built once, when first needed)."""

    path: pathlib.Path
    name: str
    encoder: Encoder

    @functools.cached_property
    def model(self) -> ModelSpec:
        return ModelSpec.create(
            self.encoder.architecture["model"], self.encoder.architecture["config"]
        )

    @functools.cached_property
    def random_twin(self) -> Encoder:
        return self.encoder.random_twin(seed=0)


def _cells_per_study(config: BenchmarkConfig) -> int:
    methods = 2 if config.baselines else 1
    return methods * len(study_runs(config.fractions, config.seeds))


def _check_fingerprint(study_dir: pathlib.Path, fingerprint: Mapping[str, Any]) -> None:
    """Removes a study's cells when its settings changed since they were computed."""
    path = study_dir / "fingerprint.json"
    text = json.dumps(fingerprint, indent=2, sort_keys=True, default=str) + "\n"
    if path.is_file() and path.read_text() != text:
        log.warning("%s: settings changed since its cells were computed; starting again", study_dir)
        for cell in study_dir.glob("*/*.npz"):
            cell.unlink()
        for marker in study_dir.glob("*/model_kept"):
            marker.unlink()
    study_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run_benchmark(
    encoder_paths: Sequence[str | os.PathLike],
    roots: DataRoots,
    out_dir: str | os.PathLike,
    config: BenchmarkConfig = BenchmarkConfig(),
    *,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs the suite (see the module docstring) and writes `OUT/leaderboard.{md,csv,json}`,
    its plots, each study's report (`OUT/studies/...`) and, with the CODE test set,
    `OUT/code_test.{md,json}`. Returns the leaderboard."""
    from ecgfm.export import load_encoder

    out_dir = pathlib.Path(out_dir)
    available = roots.available()
    tasks = [t for t in (config.tasks or available) if t in BENCHMARK_TASKS]
    missing = [t for t in tasks if t not in available]
    if missing:
        raise ValueError(
            f"tasks {missing} need data: --ptbxl for PTB-XL, --cpsc2018, and --code-test with "
            "--code-train (CODE-15%/CODE-II folder) for the CODE test set"
        )
    if not tasks:
        raise ValueError("no task to run: give --ptbxl, --cpsc2018 or --code-test/--code-train")
    encoders = []  # every encoder is read (and checked) before anything is written
    for path in encoder_paths:
        loaded = load_encoder(path)
        if loaded.preprocessing is None:
            raise ValueError(f"{path}: the encoder stores no preprocessing spec")
        name = slug(path)
        if any(e.name == name for e in encoders):
            name = f"{name}-{loaded.checkpoint_hash[:8]}"
        encoders.append(EncoderUnderTest(pathlib.Path(path).resolve(), name, loaded))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmark_config.json").write_text(
        json.dumps(
            {
                "config": config.to_dict(),
                "roots": dataclasses.asdict(roots),
                "encoders": [str(e.path) for e in encoders],
                "tasks": tasks,
            },
            indent=2,
        )
        + "\n"
    )
    progress = Progress(
        len(encoders) * len(tasks) * len(config.modes) * _cells_per_study(config), out_dir, echo
    )
    echo(
        f"ecgfm benchmark: {len(encoders)} encoder(s) × {len(tasks)} task(s) × "
        f"{len(config.modes)} mode(s) = {progress.total} cells → {out_dir}"
    )
    studies: list[dict[str, Any]] = []
    code_test_results: list[dict[str, Any]] = []
    for task in tasks:
        spec, root = task_spec(task, roots, config)
        data = load_task(spec, root)
        for under_test in encoders:
            inputs = functools.cache(
                lambda u=under_test, d=data: _prepare(u, d)
            )  # shared by attention and fine-tuning
            for mode in config.modes:
                results, predictions = _run_one(
                    under_test, task, data, mode, config, out_dir, progress, inputs
                )
                studies.append(results)
                if task == "code_test":
                    code_test_results.append(
                        code_test.evaluate_study(results, predictions, root, config.num_bootstrap)
                    )
    board = leaderboard.build(studies, code_test_results)
    files = leaderboard.write(board, out_dir)
    if code_test_results:
        files |= code_test.write(code_test_results, out_dir)
    board["files"] = {k: str(v) for k, v in files.items()}
    echo((out_dir / "leaderboard.md").read_text())
    echo(f"leaderboard, plots, per-study reports and provenance in {out_dir}")
    return board


def _prepare(under_test: EncoderUnderTest, data: TaskData):
    from ecgfm.transfer.finetune import prepare_inputs

    inputs = prepare_inputs(data, under_test.encoder.preprocessing)
    for split in (TRAIN, VALIDATION, TEST):
        if len(inputs.record_ids[split]) != len(data.record_ids[split]):
            raise ValueError(f"{data.spec.name}: unreadable records in the {split} split")
    return inputs


def _run_one(
    under_test: EncoderUnderTest,
    task: str,
    data: TaskData,
    mode: str,
    config: BenchmarkConfig,
    out_dir: pathlib.Path,
    progress: Progress,
    inputs: Callable[[], Any],
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One study: the pretrained encoder and its baseline in `mode` on `task`."""
    study_dir = out_dir / "cells" / under_test.name / task / mode
    reference, baseline = METHODS[mode]
    settings: dict[str, Any]
    if mode == "linear":
        settings = probe_settings("linear", config.l2_grid)
    else:
        settings = finetune_settings(getattr(config, mode), data.spec)
    fingerprint = {
        "encoder_hash": under_test.encoder.checkpoint_hash,
        "task": data.spec.to_dict(),
        "records": _digest({s: data.record_ids[s] for s in data.record_ids}),
        "mode": mode,
        "settings": settings,
    }
    _check_fingerprint(study_dir, fingerprint)
    encoder = under_test.encoder
    models_dir = out_dir / "models" / under_test.name / task / mode

    def keep(out: MethodOutput) -> None:
        _keep_model(out, mode, under_test, data, config, models_dir)

    embedded = functools.cache(
        lambda: embed_task(
            {"pretrained": encoder, "random_init": under_test.random_twin},
            data,
            cache_dir=out_dir / "embedding_cache",
            batch_size=config.embed_batch_size,
        )
    )

    def make(method: str) -> Callable[[], Method]:
        if mode == "linear":
            return lambda: probe_method(embedded()[method], data, l2_grid=config.l2_grid)
        init_from = under_test.path if method == reference else None
        return lambda: FinetuneMethod(inputs(), under_test.model, getattr(config, mode), init_from)

    names = [reference, baseline] if config.baselines else [reference]
    methods = {
        name: CachedMethod(
            study_dir / name,
            make(name),
            progress,
            f"{under_test.name}/{task}/{mode}/{name}",
            num_train=len(data.record_ids[TRAIN]),
            first_seed=config.seeds[0],
            keep=keep if name == reference else None,
        )
        for name in names
    }
    study, predictions = run_study(
        data,
        methods,
        fractions=config.fractions,
        seeds=config.seeds,
        reference=reference if len(methods) > 1 else None,
        num_bootstrap=config.num_bootstrap,
        threshold_rule="f1" if task == "code_test" else "gbeta",
    )
    baselines = {}
    if config.baselines:
        baselines[baseline] = (
            under_test.random_twin.describe()
            if mode != "finetune"
            else {
                "path": "random init (seed per run), trained on the training subset",
                "hash": "none (random init)",
                "architecture": under_test.model.to_dict(),
            }
        )
    results = study_results(
        study,
        checkpoint=encoder.describe() | {"name": under_test.name},
        baselines=baselines,
        method_name={"linear": "probe"}.get(mode, mode),
        method_settings=settings,
        preprocessing=encoder.preprocessing,
        extra={
            "benchmark": {
                "task": task,
                "mode": mode,
                "encoder": under_test.name,
                "models": str(models_dir),
            }
        },
    )
    report.write_report(results, predictions, out_dir / "studies" / under_test.name / task / mode)
    return results, predictions


def _keep_model(
    out: MethodOutput,
    mode: str,
    under_test: EncoderUnderTest,
    data: TaskData,
    config: BenchmarkConfig,
    models_dir: pathlib.Path,
) -> None:
    """Writes the pretrained method's model fitted on all labels (first seed) for predict."""
    from ecgfm.metrics import f1_thresholds, gbeta_thresholds
    from ecgfm.transfer.windows import sigmoid

    rule = f1_thresholds if data.spec.dataset == "code_test" else gbeta_thresholds
    thresholds = rule(data.labels[VALIDATION], sigmoid(out.validation_scores_NK))
    common = dict(
        label_names=data.class_names,
        task=data.spec.to_dict(),
        thresholds=thresholds.tolist(),
        provenance={
            "mode": mode,
            "benchmark_config": config.to_dict(),
            "trained_on": {s: len(data.record_ids[s]) for s in (TRAIN, VALIDATION)},
        },
    )
    if mode == "linear":
        predictor.save_probe(models_dir / "head", out.model, encoder=under_test.encoder, **common)
        return
    settings = getattr(config, mode)
    predictor.save_trained(
        models_dir / "head",
        out.model.state,
        kind=settings.head,
        encoder=under_test.encoder,
        encoder_dir=None if settings.frozen else models_dir / "encoder",
        **common,
    )
