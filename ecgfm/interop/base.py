"""What every importer returns, and the preprocessing contract shared by the CODE models."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Any

from ecgfm.data.preprocessing import Preprocessing


@dataclasses.dataclass
class Imported:
    """A published checkpoint read into ecgfm's arrays, with what its model card must say.

    Attributes:
      model, hparams: the `ecgfm.models.MODELS` family and its hyperparameters.
      params, model_state: the encoder's pure dicts (host arrays).
      head_params: the original classifier's parameters (the family's head), or None.
      head: {"num_classes", "activation", "meaning"} of that classifier, or None.
      preprocessing: the input contract; notes: what it cannot express, with sources.
      label_names: the head's outputs, where the source publishes them.
      source: citation, repository + file the architecture follows, weights' address.
      license: the licence of code and weights, as their publishers state it.
      title, summary, objective, training_data: model card text.
      ignored_keys: keys read but not used (listed in the card).
    """

    model: str
    hparams: dict[str, Any]
    params: Any
    model_state: Any
    head_params: Any
    head: dict[str, Any] | None
    preprocessing: Preprocessing
    notes: list[str]
    label_names: list[str]
    source: dict[str, str]
    license: str
    title: str
    summary: str
    objective: str
    training_data: str
    ignored_keys: list[str] = dataclasses.field(default_factory=list)


def sha256(path: str | pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
