"""Hostile input, mutated at random: no file may crash, hang or confuse a reader.

Runs `benchmarks/fuzz_readers.py` (its docstring lists the mutations and the outcome classes)
on `CASES_PER_READER` seeded cases per reader, in worker processes, so that a segfault or a
hang is a counted failure of this test rather than a dead pytest. Every case must end as a
valid record or an `EcgFormatError` naming a file of the case, within `TIMEOUT_S`, with skip
mode iterating to the end. `ECGFM_FUZZ_CASES=2000` runs more; the README gives the figures of
a run of thousands.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import pathlib
import sys
import types

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
CASES_PER_READER = int(os.environ.get("ECGFM_FUZZ_CASES", "60"))
TIMEOUT_S = 5.0
SEED = 0


def _load_fuzzer() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_readers", BENCHMARKS / "fuzz_readers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzzer()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("fuzz")
    fuzz.build_samples(workdir)
    return workdir


def test_harness_counts_a_segfault_a_hang_and_a_stray_exception(workdir: pathlib.Path) -> None:
    # Zero failures below means something only if each kind would have been seen.
    results = fuzz.run(
        [{"probe": "segfault"}, {"probe": "hang"}, {"probe": "stray"}],
        workdir=workdir,
        workers=1,
        timeout=2.0,
    )
    outcomes = {r["probe"]: (r["outcome"], r["detail"]) for r in results}
    assert outcomes["segfault"] == ("crash", "worker died: SIGSEGV")
    assert outcomes["hang"] == ("timeout", "no answer in 2 s")
    assert outcomes["stray"][0] == "exception" and "KeyError" in outcomes["stray"][1]


def test_mutations_are_a_pure_function_of_seed_reader_and_case(workdir: pathlib.Path) -> None:
    files = fuzz.list_files(workdir / "pristine" / "cpsc2018")
    first = [fuzz.plan("cpsc2018", i, SEED, files) for i in range(50)]
    assert first == [fuzz.plan("cpsc2018", i, SEED, files) for i in range(50)]
    assert first != [fuzz.plan("cpsc2018", i, SEED + 1, files) for i in range(50)]


def test_every_reader_reads_or_names_the_file_for_each_mutated_case(workdir: pathlib.Path) -> None:
    requests = [
        {"reader": reader, "index": i} for i in range(CASES_PER_READER) for reader in fuzz.READERS
    ]
    results = fuzz.run(requests, workdir=workdir, seed=SEED, workers=2, timeout=TIMEOUT_S)
    assert len(results) == len(requests)
    failed = fuzz.failures(results)
    report = "\n".join(
        f"{r['reader']}:{r['index']} {r['outcome']}: {r['mutation']}\n    {r['detail']}\n"
        f"    replay: python benchmarks/fuzz_readers.py --seed {SEED} --replay "
        f"{r['reader']}:{r['index']}"
        for r in failed
    )
    assert not failed, f"{len(failed)} of {len(results)} cases failed:\n{report}"
    outcomes = collections.Counter((r["reader"], r["outcome"]) for r in results)
    for reader in fuzz.READERS:
        # Neither a mutator that breaks nothing nor one that breaks everything tests much.
        assert outcomes[reader, "read"] > 0 and outcomes[reader, "refused"] > 0, reader
    kinds = {**fuzz.GENERIC_KINDS, **fuzz.TEXT_KINDS, **fuzz.BINARY_KINDS, **fuzz.SEMANTIC_KINDS}
    for reader in fuzz.READERS:
        assert {r["kind"] for r in results if r["reader"] == reader} == set(kinds), reader
