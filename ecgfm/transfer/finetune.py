"""Fine-tuning an exported encoder (or the same architecture from scratch) on a downstream task,
and training a head on a frozen encoder.

The model is the encoder with a new head (`ModelSpec.build_classifier`): by default a dense
layer on the pooled embedding, the ECG foundation-model benchmark's fine-tuning head, which
takes any input length (the family's own head, e.g. Ribeiro's flatten head, fixes the length
it was built for: `head=None` asks for it). With `frozen=True` and `head="attention"` it is the
benchmark's second mode: the encoder frozen in evaluation mode (`FrozenEncoderClassifier`),
an attention-pooling head trained on its per-time-step features. Trained with masked BCE
(`objectives.supervised`) by the same train state as pretraining
(`ecgfm.train_state.compile_training`: init on the device mesh, the jitted step with the batch
sharded on `data`, evaluation), `train_state.encoder_init` reads the exported encoder into it
(the head stays freshly initialised), and `checkpoint.Checkpointer` keeps the best step. What
this module adds is a thin loop:

- Discriminative learning rates (`optim.make_group_optimizer`): the head and the encoder each
  follow warm-up + cosine to their own peak (`head_lr`, `encoder_lr`). For the first
  `freeze_steps` the encoder's learning rate is 0 (its parameters stay bit-identical; its
  BatchNorm statistics still follow the downstream batches, as fastai's `freeze` allows), then
  it warms up and decays over the remaining steps.
- Inputs follow the task's `Windowing`: each training step draws records without replacement
  (one pass over the training subset, then a new permutation) and one window per record,
  either a random crop (`train_windows="random"`, the benchmark's training) or a random one of
  the protocol's strided training windows ("strided"); validation and test records are scored
  on the evaluation windows and aggregated as the protocol says: the per-class max, or the
  mean of the window probabilities (as the benchmark; "mean_embedding" has no embedding to
  average in an end-to-end model, so it means the same).
- Early stopping: every `eval_every` steps (and at the last) the record-level validation macro
  AUROC is computed; an improvement is checkpointed, and after `patience` evaluations without
  one training stops. Validation and test predictions come from the best checkpoint.

`FinetuneMethod` is a `protocol.Method`, so `run_study` evaluates it on the same label
fractions, seeds and test resamples as the probe;
`run_finetune` runs "finetune" (from the export) and "scratch" (random init, same
architecture and preprocessing) and writes the report files.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import jax
import numpy as np
import optax

from ecgfm import checkpoint, metrics, sharding, train_state
from ecgfm.data import windows
from ecgfm.data.pipeline import pad_rows
from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.record import EcgFormatError, OnError, SkipLog, handle_bad_record
from ecgfm.data.splits import TEST, TRAIN, VALIDATION
from ecgfm.models import ModelSpec
from ecgfm.objectives.supervised import SupervisedObjective
from ecgfm.optim import OptimConfig, make_group_optimizer, make_schedule
from ecgfm.transfer import report
from ecgfm.transfer.label_fractions import DEFAULT_FRACTIONS
from ecgfm.transfer.study import (
    Method,
    MethodOutput,
    describe,
    run_study,
    study_results,
    validation_macro_auroc,
)
from ecgfm.transfer.tasks import TaskData, TaskSpec, load_task
from ecgfm.transfer.windows import aggregate_window_logits, record_windows

log = logging.getLogger(__name__)

TrainWindows = Literal["random", "strided"]


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning hyperparameters (the same for the pretrained and the scratch model).

    Attributes:
      steps: optimizer steps per fit (ignored when `epochs` is set).
      epochs: if set, steps = ceil(epochs · training records / batch_size), so a smaller
        label fraction trains proportionally fewer steps (one window per record per epoch).
      batch_size: global batch (windows), divisible by the number of devices.
      eval_batch_size: global batch when scoring validation/test windows.
      head_lr: peak learning rate of the new head.
      encoder_lr: peak learning rate of the encoder (0 keeps it frozen throughout).
      weight_decay: AdamW decoupled weight decay (kernels only, see `optim.weight_decay_mask`).
      warmup_steps: linear warm-up of each learning rate (the encoder's starts after the
        frozen phase).
      end_lr_fraction: the cosine decays each learning rate to this fraction of its peak.
      clip_norm: per-group global gradient norm clip (0 disables).
      freeze_steps: steps training the head only before the encoder is unfrozen.
      eval_every: steps between validation evaluations.
      patience: evaluations without improvement before stopping; None never stops early.
      train_windows: "random" crops or "strided" (the protocol's training windows).
      seed: base seed; each fit folds in the study's seed (head init, dropout, data order).
      fsdp: size of the mesh's "fsdp" axis (the rest of the devices are data parallel).
      head: "linear" (dense on the pooled embedding, any input length), "attention"
        (attention pooling over the per-time-step features) or None (the family's own head).
      frozen: the encoder stays as it is, in evaluation mode, and only the head trains.
    """

    steps: int = 2000
    epochs: float | None = None
    batch_size: int = 64
    eval_batch_size: int = 256
    head_lr: float = 1e-3
    encoder_lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    end_lr_fraction: float = 0.01
    clip_norm: float = 1.0
    freeze_steps: int = 0
    eval_every: int = 100
    patience: int | None = 10
    train_windows: TrainWindows = "random"
    seed: int = 0
    fsdp: int = 1
    head: str | None = "linear"
    frozen: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("steps, batch_size and eval_batch_size must be positive")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be positive or None, got {self.epochs}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be positive, got {self.eval_every}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be positive or None, got {self.patience}")
        if min(self.head_lr, self.encoder_lr, self.weight_decay, self.freeze_steps) < 0:
            raise ValueError("learning rates, weight decay and freeze_steps must be >= 0")
        if self.train_windows not in ("random", "strided"):
            raise ValueError(f"train_windows must be random or strided, not {self.train_windows!r}")
        if self.head not in (None, "linear", "attention"):
            raise ValueError(f"head must be None, 'linear' or 'attention', not {self.head!r}")

    def total_steps(self, num_train_records: int) -> int:
        """Optimizer steps of one fit on `num_train_records` records."""
        if self.epochs is None:
            return self.steps
        return max(math.ceil(self.epochs * num_train_records / self.batch_size), 1)

    def schedules(self, total_steps: int) -> dict[str, optax.Schedule]:
        """Learning rate per step for the "head" and "encoder" parameter groups."""

        def warmup_cosine(peak: float, steps: int) -> optax.Schedule:
            optim = OptimConfig(
                learning_rate=peak,
                warmup_steps=self.warmup_steps,
                end_lr_fraction=self.end_lr_fraction,
            )
            return make_schedule(optim, steps)

        encoder = warmup_cosine(self.encoder_lr, max(total_steps - self.freeze_steps, 1))
        if self.freeze_steps:
            encoder = optax.join_schedules(
                [optax.constant_schedule(0.0), encoder], [self.freeze_steps]
            )
        return {"head": warmup_cosine(self.head_lr, total_steps), "encoder": encoder}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON, as recorded with results."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class EvalWindows:
    """One split's evaluation windows `[W, T, C]`; window w is of record `record_of_window_W[w]`."""

    windows_WTC: np.ndarray
    record_of_window_W: np.ndarray
    num_records: int


@dataclasses.dataclass(frozen=True)
class FinetuneInputs:
    """A task's records prepared for one encoder's preprocessing and the task's windowing.

    Attributes:
      record_ids: split → ids of the records prepared (unreadable ones skipped, if asked).
      labels: split → `[N, K]` labels of those records.
      train_signals: per training record, the whole preprocessed `[T, C]` signal (at least one
        window long: shorter records are centred in zeros, `windows.fit`), or its one fitted
        input with whole-record windowing.
      window: samples per encoder input (None: whole-record windowing).
      train_stride: samples between the protocol's training windows.
      validation, test: evaluation windows.
      aggregation: how window scores become a record's ("max" or "mean").
      skipped: (where, why) of records left out.
    """

    record_ids: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    train_signals: list[np.ndarray]
    window: int | None
    train_stride: int
    validation: EvalWindows
    test: EvalWindows
    aggregation: str
    skipped: list[tuple[str, str]]

    def train_batches(
        self, train_index: np.ndarray, batch_size: int, how: TrainWindows, rng: np.random.Generator
    ) -> Iterator[dict[str, np.ndarray]]:
        """Endless global batches of training windows of the records `train_index`."""
        order = np.empty(0, dtype=np.int64)
        num_classes = self.labels[TRAIN].shape[1]
        while True:
            while order.size < batch_size:
                order = np.concatenate([order, rng.permutation(np.asarray(train_index))])
            records, order = order[:batch_size], order[batch_size:]
            signal = np.stack([self._train_window(r, how, rng) for r in records])
            yield {
                "signal": signal,
                "labels": self.labels[TRAIN][records].astype(np.float32),
                "label_mask": np.ones((batch_size, num_classes), np.float32),
                "mask": np.ones(batch_size, np.float32),
            }

    def _train_window(self, record: int, how: TrainWindows, rng: np.random.Generator) -> np.ndarray:
        signal_TC = self.train_signals[record]
        if self.window is None:
            return signal_TC
        if how == "random":  # a uniform crop, as the pretraining pipeline draws one
            start = windows.placement(len(signal_TC), self.window, rng.random()).source_start
        else:
            start = int(
                rng.choice(windows.window_starts(len(signal_TC), self.window, self.train_stride))
            )
        return signal_TC[start : start + self.window]


def prepare_inputs(
    task: TaskData, preprocessing: Preprocessing, *, on_error: OnError = "raise"
) -> FinetuneInputs:
    """Reads every record of `task` once and prepares it for an encoder with `preprocessing`.

    Training records are kept whole (preprocessed at full length, as `windows.record_windows`
    does before cutting windows) so each step can crop anew; validation and test records are
    cut into the protocol's evaluation windows. Memory: all of them, as float32.
    """
    windowing = task.spec.windowing
    rate = preprocessing.sampling_rate
    train_window = windowing.samples(rate, train=True)
    eval_window = windowing.samples(rate, train=False)
    whole = dataclasses.replace(preprocessing, num_samples=None)
    skip_log = SkipLog()
    record_ids: dict[str, list[str]] = {}
    labels: dict[str, np.ndarray] = {}
    prepared: dict[str, list[np.ndarray]] = {}
    for split in (VALIDATION, TEST, TRAIN):
        kept, arrays = [], []
        for n, record_id in enumerate(task.record_ids[split]):
            try:
                record = task.read(record_id)
            except EcgFormatError as err:
                handle_bad_record(err, on_error, skip_log)
                continue
            if split != TRAIN:
                arrays.append(record_windows(record.signal, record.sampling_rate,
                                             preprocessing, eval_window))  # fmt: skip
            elif train_window is None:
                arrays.append(preprocessing(record.signal, record.sampling_rate))
            else:
                signal_TC = whole(record.signal, record.sampling_rate)
                if len(signal_TC) < train_window[0]:
                    signal_TC = windows.fit(signal_TC, train_window[0])
                arrays.append(signal_TC)
            kept.append(n)
        record_ids[split] = [task.record_ids[split][n] for n in kept]
        labels[split] = task.labels[split][np.asarray(kept, dtype=np.int64)]
        prepared[split] = arrays

    def eval_windows(split: str) -> EvalWindows:
        arrays = prepared[split]
        return EvalWindows(
            windows_WTC=np.concatenate(arrays).astype(np.float32),
            record_of_window_W=np.concatenate([np.full(len(a), n) for n, a in enumerate(arrays)]),
            num_records=len(arrays),
        )

    return FinetuneInputs(
        record_ids=record_ids,
        labels=labels,
        train_signals=[a.astype(np.float32) for a in prepared[TRAIN]],
        window=None if train_window is None else train_window[0],
        train_stride=1 if train_window is None else train_window[1],
        validation=eval_windows(VALIDATION),
        test=eval_windows(TEST),
        aggregation="max" if windowing.aggregation == "max" else "mean",
        skipped=list(skip_log.skipped),
    )


@dataclasses.dataclass
class EarlyStopping:
    """Tracks the best validation score; ties keep the earlier step."""

    patience: int | None
    best_score: float = -math.inf
    best_step: int | None = None
    evaluations_since_best: int = 0

    def update(self, step: int, score: float) -> bool:
        """Records an evaluation; True when it is a new best."""
        if score > self.best_score:
            self.best_score, self.best_step, self.evaluations_since_best = score, step, 0
            return True
        self.evaluations_since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.evaluations_since_best >= self.patience


@dataclasses.dataclass(frozen=True)
class Fit:
    """One fit's outcome: the best step's host state and scores, and the validation history."""

    state: dict[str, Any]
    best_step: int
    steps_run: int
    history: list[dict[str, float]]
    validation_scores_NK: np.ndarray
    test_scores_NK: np.ndarray


@functools.lru_cache(maxsize=8)
def _compile(model: ModelSpec, num_classes: int, config: FinetuneConfig) -> train_state.Training:
    """The compiled train state of one architecture and `config` (fits of `config.steps`).

    Cached, so the pretrained and the scratch model, and every seed, share one compilation.
    """
    mesh = sharding.make_mesh(data=-1, fsdp=config.fsdp)
    for size in (config.batch_size, config.eval_batch_size):
        if size % mesh.size:
            raise ValueError(f"batch size {size} is not divisible by {mesh.size} devices")
    optim = OptimConfig(weight_decay=config.weight_decay, clip_norm=config.clip_norm)
    schedules = config.schedules(config.steps)
    tx = make_group_optimizer(optim, schedules)
    return train_state.compile_training(
        lambda rngs: model.build_classifier(
            num_classes, rngs, head=config.head, frozen=config.frozen
        ),
        SupervisedObjective(),
        tx,
        schedules["head"],
        mesh,
    )


def _process_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's rows of a global batch that every process computed alike."""
    size = len(next(iter(batch.values()))) // jax.process_count()
    start = jax.process_index() * size
    return {k: v[start : start + size] for k, v in batch.items()}


@dataclasses.dataclass
class FinetuneMethod:
    """Encoder (from an export, or randomly initialised) + a new head, trained with masked
    BCE (the encoder too, unless frozen): a `study.Method`. Head and encoder follow their own
    warm-up + cosine learning rates (the encoder's at 0 for `freeze_steps`); the record-level
    validation macro AUROC picks the best step, whose predictions are reported.

    Attributes:
      inputs: the task prepared for the encoder's preprocessing (`prepare_inputs`).
      model: the encoder architecture (an export's `model` and `hparams`).
      config: fine-tuning hyperparameters.
      init_from: exported encoder directory; None trains the architecture from scratch.
      checkpoint_dir: where each fit keeps its best checkpoint (`<records>-<seed>/`); None
        uses a temporary directory removed after the fit.
    """

    inputs: FinetuneInputs
    model: ModelSpec
    config: FinetuneConfig
    init_from: pathlib.Path | None = None
    checkpoint_dir: pathlib.Path | None = None

    def _compile(self, total_steps: int) -> train_state.Training:
        # Only what shapes the compiled functions is in the cache key.
        key = dataclasses.replace(
            self.config, steps=total_steps, epochs=None, eval_every=1, patience=None,
            train_windows="random", seed=0,
        )  # fmt: skip
        return _compile(self.model, self.inputs.labels[TRAIN].shape[1], key)

    def _scores(
        self, compiled: train_state.Training, state: Any, eval_windows: EvalWindows
    ) -> np.ndarray:
        """`[N, K]` record logits: the windows' max, or their mean probability as a logit."""
        size = self.config.eval_batch_size
        num_classes = self.inputs.labels[TRAIN].shape[1]
        logits = []
        for start in range(0, len(eval_windows.windows_WTC), size):
            signal = eval_windows.windows_WTC[start : start + size]
            rows = len(signal)
            # Padded to a full batch (weight 0), so the evaluation compiles once.
            batch = {
                "signal": pad_rows(signal, size),
                "labels": np.zeros((size, num_classes), np.float32),
                "label_mask": np.zeros((size, num_classes), np.float32),
                "mask": pad_rows(np.ones(rows, np.float32), size),
            }
            out = compiled.eval(state, compiled.global_batch(_process_rows(batch)))
            logits.append(train_state.to_host(out["logits"])[:rows])
        return aggregate_window_logits(
            np.concatenate(logits), eval_windows.record_of_window_W, eval_windows.num_records,
            self.inputs.aggregation,
        )  # fmt: skip

    def fit(self, train_index: np.ndarray, seed: int) -> Fit:
        """Fine-tunes on the training records `train_index`; the best validation step wins."""
        cfg = self.config
        train_index = np.asarray(train_index, dtype=np.int64)
        if train_index.size == 0:
            raise ValueError("cannot fine-tune on an empty training subset")
        total = cfg.total_steps(train_index.size)
        compiled = self._compile(total)
        key = jax.random.fold_in(jax.random.key(cfg.seed), seed)
        with jax.set_mesh(compiled.mesh):
            state = compiled.init(key)
        if self.init_from is not None:
            state = train_state.encoder_init(state, self.init_from)
        batches = self.inputs.train_batches(
            train_index, cfg.batch_size, cfg.train_windows, np.random.default_rng([cfg.seed, seed])
        )
        labels_val = self.inputs.labels[VALIDATION]
        stopping = EarlyStopping(cfg.patience)
        history: list[dict[str, float]] = []
        with tempfile.TemporaryDirectory(prefix="ecgfm-finetune-") as scratch_dir:
            if self.checkpoint_dir is not None:
                fit_dir = pathlib.Path(self.checkpoint_dir) / f"{train_index.size}-{seed}"
                shutil.rmtree(fit_dir, ignore_errors=True)  # a rerun's steps start again
            else:
                fit_dir = pathlib.Path(scratch_dir)
            checkpointer = checkpoint.Checkpointer(fit_dir, keep=1)
            step = 0
            with jax.set_mesh(compiled.mesh):
                while step < total and not stopping.should_stop:
                    batch = compiled.global_batch(_process_rows(next(batches)))
                    state, step_metrics = compiled.step(state, batch)
                    step += 1
                    if step % cfg.eval_every and step != total:
                        continue
                    loss = float(train_state.to_host(step_metrics["loss"]))
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"fine-tuning loss is {loss} at step {step}")
                    score = validation_macro_auroc(
                        labels_val,
                        self._scores(compiled, state, self.inputs.validation),
                        "stop early",
                    )
                    history.append(
                        {"step": step, "train_loss": loss, "validation_macro_auroc": score}
                    )
                    if stopping.update(step, score):
                        checkpointer.save(step, state, None)
            checkpointer.wait_until_finished()
            restored = checkpointer.restore_latest(compiled.target, None)
            checkpointer.close()
        if restored is None:
            raise RuntimeError(f"the best fine-tuning checkpoint in {fit_dir} does not restore")
        best, best_step = restored
        with jax.set_mesh(compiled.mesh):
            val_scores = self._scores(compiled, best, self.inputs.validation)
            test_scores = self._scores(compiled, best, self.inputs.test)
        return Fit(
            state=train_state.to_host({k: best[k] for k in ("params", "model_state")}),
            best_step=best_step,
            steps_run=step,
            history=history,
            validation_scores_NK=val_scores,
            test_scores_NK=test_scores,
        )

    def fit_predict(self, train_index: np.ndarray, seed: int) -> MethodOutput:
        """`protocol.Method`: the best validation step's validation and test scores."""
        fit = self.fit(train_index, seed)
        return MethodOutput(
            validation_scores_NK=fit.validation_scores_NK,
            test_scores_NK=fit.test_scores_NK,
            model=fit,
            info={
                "init": str(self.init_from) if self.init_from is not None else "random",
                "best_step": fit.best_step,
                "steps_run": fit.steps_run,
                "planned_steps": self.config.total_steps(len(train_index)),
                "validation_macro_auroc": max(h["validation_macro_auroc"] for h in fit.history),
                "history": fit.history,
            },
        )


def finetune_settings(config: FinetuneConfig, task: TaskSpec) -> dict[str, Any]:
    """How fine-tuning (or the frozen-encoder head) was trained, as the protocol records it."""
    return {
        "method": describe(FinetuneMethod),
        **config.to_dict(),
        "evaluation_window_stride_s": task.windowing.eval_stride_s,
    }


def run_finetune(
    encoder_path: str | os.PathLike,
    task: TaskSpec,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    label_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = (0, 1, 2),
    config: FinetuneConfig = FinetuneConfig(),
    include_scratch: bool = True,
    keep_checkpoints: bool = False,
    num_bootstrap: int = metrics.DEFAULT_BOOTSTRAP,
    threshold_rule: str = "gbeta",
    on_error: OnError = "raise",
) -> dict[str, Any]:
    """Fine-tunes the exported encoder on `task` (and the architecture from scratch); reports.

    Methods "finetune" (encoder from `encoder_path`, new head) and, with `include_scratch`,
    "scratch" (same architecture and preprocessing, random init, trained on the same
    subsets) run on every label fraction and seed; `comparisons` gives finetune minus each
    other method on the same test resamples, i.e. what pretraining added. With
    `keep_checkpoints`, each fit's best checkpoint stays in `out_dir/checkpoints/<method>/`.
    Fβ/Gβ thresholds follow `threshold_rule` (`study.THRESHOLD_RULES`, fitted on validation).
    Writes results.json/.csv/.md, roc.png, label_fractions.png, predictions.npz to `out_dir`
    (see `report.write_report`) and returns the results dict.
    """
    from ecgfm.export import load_encoder

    encoder_path = pathlib.Path(encoder_path).resolve()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder(encoder_path)
    spec = encoder.config
    model = ModelSpec.create(spec["model"], spec["hparams"])
    if encoder.preprocessing is None:
        raise ValueError(f"{encoder_path} stores no preprocessing spec: cannot prepare inputs")
    data = load_task(task, data_root)
    inputs = prepare_inputs(data, encoder.preprocessing, on_error=on_error)
    for split in (TRAIN, VALIDATION, TEST):
        data.subset(split, inputs.record_ids[split])

    def method(name: str, init_from: pathlib.Path | None) -> FinetuneMethod:
        where = out_dir / "checkpoints" / name if keep_checkpoints else None
        return FinetuneMethod(inputs, model, config, init_from, where)

    methods: dict[str, Method] = {"finetune": method("finetune", encoder_path)}
    if include_scratch:
        methods["scratch"] = method("scratch", None)
    study, predictions = run_study(
        data,
        methods,
        fractions=label_fractions,
        seeds=seeds,
        reference="finetune" if len(methods) > 1 else None,
        num_bootstrap=num_bootstrap,
        threshold_rule=threshold_rule,
    )
    architecture = model.to_dict()
    results = study_results(
        study,
        checkpoint=encoder.describe(),
        baselines=(
            {
                "scratch": {
                    "path": "random init (seed per run), trained on the training subset",
                    "hash": "none (random init)",
                    "architecture": architecture,
                }
            }
            if include_scratch
            else {}
        ),
        method_name="finetune",
        method_settings=finetune_settings(config, task),
        preprocessing=encoder.preprocessing,
        extra={"skipped_records": [{"where": w, "reason": r} for w, r in inputs.skipped]},
    )
    results["files"] = {
        k: str(v) for k, v in report.write_report(results, predictions, out_dir).items()
    }
    return results
