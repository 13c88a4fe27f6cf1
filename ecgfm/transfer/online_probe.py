"""A linear probe while pretraining: the encoder's downstream macro AUROC every N steps.

Like big_vision's evaluators: a pretraining config names a small downstream set (`config.
probe`, `ProbeEvalConfig`: a PTB-XL task or CPSC 2018 prepared locally) and every `every`
steps the trainer (`ecgfm.train`) hands this evaluator the current encoder weights. It embeds
the set's records with them (the benchmark's 2.5 s windows, `train=False`), fits the linear
probe of `ecgfm.transfer.probe` (λ chosen on the validation fold) and returns the validation
and test macro AUROC, which the trainer writes to metrics.jsonl and TensorBoard as
`probe_val_macro_auroc` and `probe_test_macro_auroc`. Off by default (`every = 0`).

The records are read once, when the evaluator is built, and at most `max_records` per split
are kept (a seeded draw, the same every evaluation), so each evaluation costs one embedding
pass over them and one probe fit. Every process computes the same numbers (the weights are
gathered to each host); the trainer's metrics log writes them once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import nnx

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.splits import TEST, TRAIN, VALIDATION
from ecgfm.encoder import Encoder
from ecgfm.experiment import ProbeEvalConfig
from ecgfm.models import ModelSpec
from ecgfm.transfer.probe import embed_task, probe_method
from ecgfm.transfer.study import validation_macro_auroc
from ecgfm.transfer.tasks import TaskData, cpsc2018_task, load_task, ptbxl_task
from ecgfm.transfer.windows import Windowing


def _draw(task: TaskData, max_records: int) -> None:
    """Keeps at most `max_records` records per split, drawn with seed 0 (in task order)."""
    if not max_records:
        return
    for n, split in enumerate((TRAIN, VALIDATION, TEST)):
        ids = task.record_ids[split]
        if len(ids) > max_records:
            rng = np.random.default_rng([0, n])
            task.subset(split, [ids[i] for i in rng.choice(len(ids), max_records, replace=False)])


class ProbeEvaluator:
    """`evaluator(encoder_params, encoder_model_state)` → the probe's macro AUROCs."""

    def __init__(self, config: ProbeEvalConfig, model: ModelSpec, preprocessing: Preprocessing):
        windowing = Windowing(window_s=config.window_s or None)
        if config.dataset == "ptbxl":
            spec = ptbxl_task(config.task, config.sampling_rate, windowing)
        else:
            spec = cpsc2018_task(windowing)
        self.config, self.model, self.preprocessing = config, model, preprocessing
        self.task = load_task(spec, config.root)
        _draw(self.task, config.max_records)
        ids = [r for s in (TRAIN, VALIDATION, TEST) for r in self.task.record_ids[s]]
        records = {r: self.task.read(r) for r in ids}  # read once, embedded at every evaluation
        self.task = dataclasses.replace(self.task, read=records.__getitem__)
        self.graphdef = nnx.graphdef(nnx.eval_shape(lambda: model.build_encoder(nnx.Rngs(0))))

    def __call__(self, params: Any, model_state: Any) -> dict[str, float]:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            gathered = multihost_utils.process_allgather((params, model_state), tiled=True)
            params, model_state = gathered
        params, model_state = jax.device_get((params, model_state))
        module = nnx.merge(self.graphdef, params, model_state)
        encoder = Encoder.from_module(
            module, self.preprocessing, model=self.model.name, hparams=self.model.hparams,
            source="pretraining run (online probe)",
        )  # fmt: skip
        embedded = embed_task({"encoder": encoder}, self.task, cache_dir=None)["encoder"]
        method = probe_method(embedded, self.task, l2_grid=self.config.l2_grid)
        out = method.fit_predict(np.arange(len(self.task.record_ids[TRAIN])), seed=0)
        labels = self.task.labels
        return {
            "probe_val_macro_auroc": validation_macro_auroc(
                labels[VALIDATION], out.validation_scores_NK, "score the probe"
            ),
            "probe_test_macro_auroc": validation_macro_auroc(
                labels[TEST], out.test_scores_NK, "score the probe"
            ),
        }
