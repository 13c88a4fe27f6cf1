"""Training objectives: what the one trainer optimizes (`base.Objective`), by name.

    objective = make_objective("contrastive", {"method": "clocs", "view": "cmsc"},
                               RunContext(sampling_rate=400.0))

Each objective's settings are a frozen dataclass (`SETTINGS[name]`); `objective_section` gives
a config section holding every setting, so each can be overridden from the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict

from ecgfm.config import ConfigError, section, settings_from
from ecgfm.objectives.base import NO_CONTEXT, Batch, Objective, RunContext
from ecgfm.objectives.contrastive import ContrastiveObjective, ContrastiveSettings
from ecgfm.objectives.cpc import CpcObjective, CpcSettings
from ecgfm.objectives.jepa import JepaObjective, JepaSettings
from ecgfm.objectives.masked import MaskedObjective, MaskedSettings
from ecgfm.objectives.supervised import SupervisedObjective, SupervisedSettings

__all__ = [
    "OBJECTIVES",
    "Batch",
    "Objective",
    "RunContext",
    "make_objective",
    "objective_section",
]

# name → (settings dataclass, objective class taking (settings, context)).
OBJECTIVES: dict[str, tuple[type, type]] = {
    "supervised": (SupervisedSettings, SupervisedObjective),
    "contrastive": (ContrastiveSettings, ContrastiveObjective),
    "masked": (MaskedSettings, MaskedObjective),
    "jepa": (JepaSettings, JepaObjective),
    "cpc": (CpcSettings, CpcObjective),
}


def _entry(name: str) -> tuple[type, type]:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


def make_objective(
    name: str, settings: Mapping[str, Any] | None = None, context: RunContext = NO_CONTEXT
) -> Objective:
    """The objective `name` with `settings` (unknown keys are a `ConfigError` naming them)."""
    settings_cls, objective_cls = _entry(name)
    return objective_cls(settings_from(settings_cls, settings, "objective"), context)


def objective_section(name: str, **settings: Any) -> ConfigDict:
    """`{"name": name, <every setting>}` with `settings` replacing defaults, for a config file."""
    settings_cls, _ = _entry(name)
    return section(settings_from(settings_cls, settings, "objective"), name=name)
