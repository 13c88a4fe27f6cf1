"""A pretraining experiment: every config field defined once, and read into typed settings once.

`base_config()` is the complete config with default values: every experiment file in
`experiments/configs/` starts from it and sets its own values (one level, nothing inherited
from another experiment). `Experiment.from_config(config)` turns a config into frozen
dataclasses — data, model, objective, optimizer, loop, mesh, distributed start-up — so an
unknown or misspelt key, or an impossible value (a non-positive step count, batch or save
interval, a negative learning rate), is a `ConfigError` naming it before anything runs. The two
checks that need more than the config are made, as `ConfigError` too, where that becomes known:
a batch the devices cannot split evenly (`train_and_evaluate`, once the mesh exists: the
devices are not known before `jax.distributed` starts) and a batch larger than the training
split (`make_inputs`, before it builds the pipeline).
"""

from __future__ import annotations

import dataclasses

from ml_collections import ConfigDict

from ecgfm.config import ConfigError, section, settings_from
from ecgfm.data.inputs import DataConfig, data_section
from ecgfm.distributed import DistributedConfig
from ecgfm.models import ModelSpec, model_section
from ecgfm.objectives import Objective, RunContext, make_objective, objective_section
from ecgfm.optim import OptimConfig
from ecgfm.sharding import MeshConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop (`config.train`).

    Attributes:
      steps: train steps (micro-batches; `optim.grad_accum_steps` of them per update).
      global_batch_size: exams per step over all processes and devices.
      log_every: steps between metrics.jsonl lines.
      eval_every: steps between validation passes, and one at the last step (0: none).
      checkpoint_every: steps between checkpoints (the last step is always saved).
      keep_checkpoints: checkpoints kept on disk (the newest).
      async_checkpoint: write checkpoints in the background.
    """

    steps: int = 1000
    global_batch_size: int = 64
    log_every: int = 100
    eval_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    async_checkpoint: bool = True

    def __post_init__(self) -> None:
        positive = ("steps", "global_batch_size", "log_every", "checkpoint_every",
                    "keep_checkpoints")  # fmt: skip
        problems = [f"{n} is {getattr(self, n)}, must be > 0" for n in positive
                    if getattr(self, n) <= 0]  # fmt: skip
        if self.eval_every < 0:
            problems.append(f"eval_every is {self.eval_every}, must be >= 0 (0: no validation)")
        if problems:
            raise ValueError("train: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class ProbeEvalConfig:
    """The probe evaluated while pretraining (`config.probe`).

    Attributes:
      every: steps between probe evaluations, and one at the last step (0: off).
      dataset: "ptbxl" or "cpsc2018".
      root: the dataset folder, as shipped.
      task: PTB-XL's task (all, diagnostic, subdiagnostic, superdiagnostic, form, rhythm).
      sampling_rate: PTB-XL's files, 100 or 500 Hz.
      max_records: records kept per split (a seeded draw; 0: all).
      window_s: input window in seconds (the benchmark's 2.5 s; 0: one input per record).
      l2_grid: the probe's λ values, chosen by validation macro AUROC.
    """

    every: int = 0
    dataset: str = "ptbxl"
    root: str = ""
    task: str = "superdiagnostic"
    sampling_rate: int = 100
    max_records: int = 1000
    window_s: float = 2.5
    l2_grid: tuple[float, ...] = (1e-3, 1e-1, 10.0)

    def __post_init__(self) -> None:
        if self.every < 0 or self.max_records < 0:
            raise ValueError("probe: every and max_records must be >= 0")
        if self.every and not self.root:
            raise ValueError("probe: every > 0 needs root, a PTB-XL or CPSC 2018 folder")
        if self.dataset not in ("ptbxl", "cpsc2018"):
            raise ValueError(f"probe: dataset must be ptbxl or cpsc2018, not {self.dataset!r}")
        if not self.l2_grid:
            raise ValueError("probe: l2_grid is empty")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A config read once into typed settings; see `base_config` for what each section holds."""

    seed: int
    data: DataConfig
    model: ModelSpec
    objective_name: str
    objective: Objective
    optim: OptimConfig
    train: TrainConfig
    probe: ProbeEvalConfig
    mesh: MeshConfig
    distributed: DistributedConfig
    resume: str
    init_from: str

    @classmethod
    def from_config(cls, config: ConfigDict) -> Experiment:
        """Typed settings of `config`; raises `ConfigError` naming what is unknown or wrong."""
        values = config.to_dict() if isinstance(config, ConfigDict) else dict(config)
        known = {f.name for f in dataclasses.fields(cls)} - {"objective_name"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {unknown}; valid top-level keys: {sorted(known)}"
            )
        model = values.get("model", {})
        objective = dict(values.get("objective", {}))
        data = DataConfig.from_config(values.get("data", {}))
        optim = settings_from(OptimConfig, values.get("optim"), "optim")
        try:
            spec = ModelSpec.create(model.get("name", ""), model.get("hparams"))
        except ValueError as err:  # an unknown family
            raise ConfigError(f"model: {err}") from None
        name = objective.pop("name", "supervised")
        context = RunContext(
            sampling_rate=data.preprocessing.sampling_rate, accum_steps=optim.grad_accum_steps
        )
        return cls(
            seed=int(values.get("seed", 0)),
            data=data,
            model=spec,
            objective_name=name,
            objective=make_objective(name, objective, context),
            optim=optim,
            train=settings_from(TrainConfig, values.get("train"), "train"),
            probe=settings_from(ProbeEvalConfig, values.get("probe"), "probe"),
            mesh=settings_from(MeshConfig, values.get("mesh"), "mesh"),
            distributed=settings_from(DistributedConfig, values.get("distributed"), "distributed"),
            resume=values.get("resume") or "",
            init_from=values.get("init_from") or "",
        )


def base_config() -> ConfigDict:
    """Every config field with its default: what experiment files start from.

    Sections: `data` (`ecgfm.data.inputs.DataConfig`; `data.preprocessing` every
    `Preprocessing` field), `model` (`name` + every hyperparameter of the family,
    `ecgfm.models`), `objective` (`name` + every setting, `ecgfm.objectives`), `optim`
    (`ecgfm.optim.OptimConfig`), `train` (`TrainConfig`), `probe` (`ProbeEvalConfig`: a
    linear probe on a small downstream set every N steps, off by default), `mesh`
    (`ecgfm.sharding.MeshConfig`), `distributed` (`ecgfm.distributed.DistributedConfig`),
    `resume` (another run's checkpoints to continue when this workdir has none) and
    `init_from` (an `ecgfm export` directory whose encoder initialises a fresh run; the head
    is new).
    """
    return ConfigDict(
        {
            "seed": 0,
            "data": data_section(),
            "model": model_section("ribeiro_resnet"),
            "objective": objective_section("supervised"),
            "optim": section(OptimConfig()),
            "train": section(TrainConfig()),
            "probe": section(ProbeEvalConfig()),
            "mesh": section(MeshConfig()),
            "distributed": section(DistributedConfig()),
            "resume": "",
            "init_from": "",
        }
    )
