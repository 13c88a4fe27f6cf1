"""Key checking for imported state dicts: every mismatch is listed, not the first one found."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


class CheckpointKeyError(ValueError):
    """The checkpoint's keys or shapes differ from the architecture's; the message lists all."""

    def __init__(
        self,
        source: str,
        missing: list[str],
        unexpected: list[str],
        mis_shaped: list[tuple[str, tuple, tuple]],
        hint: str = "",
    ):
        self.missing, self.unexpected, self.mis_shaped = missing, unexpected, mis_shaped
        lines = [f"{source}: the checkpoint does not match the architecture it was read as"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        for key, found, expected in mis_shaped:
            lines.append(f"  mis-shaped: {key} is {list(found)}, expected {list(expected)}")
        if hint:
            lines.append(f"  {hint}")
        super().__init__("\n".join(lines))


def check_state_dict(
    state: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    source: str,
    *,
    ignored: Iterable[str] = (),
    hint: str = "",
) -> None:
    """Raises `CheckpointKeyError` unless `state` has exactly `expected`'s keys and shapes.

    `ignored` keys may be present or absent (e.g. BatchNorm's `num_batches_tracked`).
    """
    ignored = set(ignored)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - ignored)
    mis_shaped = [
        (key, tuple(np.shape(state[key])), tuple(shape))
        for key, shape in expected.items()
        if key in state and tuple(np.shape(state[key])) != tuple(shape)
    ]
    if missing or unexpected or mis_shaped:
        raise CheckpointKeyError(source, missing, unexpected, mis_shaped, hint)


def architecture_key_error(source: str, error: KeyError, state: Mapping, hint: str) -> Exception:
    """A `CheckpointKeyError` for a key the architecture is read from but the file lacks."""
    present = ", ".join(sorted(state)[:8]) + (", …" if len(state) > 8 else "")
    return CheckpointKeyError(
        source, [str(error.args[0])], [], [], f"{hint}; the file has {len(state)} keys: {present}"
    )
