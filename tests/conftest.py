"""Test session set-up: 8 fake CPU devices before JAX starts, so sharding code runs everywhere."""

import os
import pathlib
import shutil
import tempfile

import absl.flags
import pytest

# Once: pytest-xdist's workers inherit the environment of the process that loaded this first.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling dominates the end-to-end tests on CPU, and many compile the same programs (the smoke
# config's step, the probe's embedding): JAX's persistent cache, fresh for each session and
# inherited by the runs tests start in subprocesses, compiles each program once (the CLI's
# pretrain → export → probe → fine-tune test: 75 s cold, 33 s with every program cached).
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ecgfm-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# Most tests run a program once or twice on tiny inputs, so XLA's optimisation passes cost more
# than they save: JAX's own test suite turns them off the same way. Side by side on the
# compile-heavy end-to-end files (test_inputs, test_ssl_smoke, test_finetune; 41 tests, two
# workers): 404 s with them, 322 s without (0.80x). Results do not depend on it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


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


def pytest_sessionfinish(session, exitstatus) -> None:
    """Removes the session's compilation cache (one it did not create is left alone)."""
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
