"""Test session set-up: 8 fake CPU devices before JAX starts, so sharding code runs everywhere."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import absl.flags
import pytest

# grain's worker processes read absl flags: with grain 0.2.18 a worker stops with
# `UnparsedFlagAccessError ... grain_enable_multiprocess_worker_profiling` unless they are parsed.
absl.flags.FLAGS.mark_as_parsed()

REAL_DATA = pathlib.Path(__file__).resolve().parent / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> pathlib.Path:
    """`tests/data/real`: real records in their shipped formats (read-only; see its README)."""
    if not REAL_DATA.is_dir():
        pytest.fail(f"real sample data not found at {REAL_DATA}")
    return REAL_DATA
