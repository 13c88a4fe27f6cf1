"""TFDS builders (array_record, no TensorFlow) for CODE, PTB-XL and CPSC 2018, and their API.

`prepare_dataset("code" | "ptbxl" | "cpsc2018", src_dir, data_dir)` builds
`<data_dir>/<name>/<config>/1.0.0/` from a folder the user already has (TFDS's `manual_dir`;
nothing is downloaded). Read it back with `ecgfm.data.sources.TfdsSource` (which wraps
`tfds.builder_from_directory(dir).as_data_source(split)`), or inspect it with
`describe_built_dataset`. Each builder lives in TFDS's standard layout
(`<name>/<name>_dataset_builder.py`, `class Builder`).

Scale: with `beam_runner=` / `beam_workers=` (`ecgfm prepare --beam-runner/--beam-workers`)
the same builders build through TFDS's Apache Beam path, on local processes or a cluster
(`beam_build`); the result is the same as a single-process build's.

Restarting: TFDS writes into `<config>/incomplete.*` and renames it only when every split is
written, so an interrupted build leaves no partial dataset; running `prepare_dataset` again
removes the leftover folder and builds again from the start. A finished build is not redone.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.record import EcgFormatError, OnError
from ecgfm.data.sources import ECGFM_METADATA_KEY, built_dataset_dir, read_ecgfm_metadata
from ecgfm.data.tfds_builders.base import EcgBuilder, config_in_code_quietly
from ecgfm.data.tfds_builders.code import code_dataset_builder
from ecgfm.data.tfds_builders.cpsc2018 import cpsc2018_dataset_builder
from ecgfm.data.tfds_builders.ptbxl import ptbxl_dataset_builder

BUILDERS = {
    "code": code_dataset_builder,
    "ptbxl": ptbxl_dataset_builder,
    "cpsc2018": cpsc2018_dataset_builder,
}


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Raises ValueError for an unknown dataset or an option that `name`'s builder does not take."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
    unknown = sorted(set(options) - BUILDERS[name].OPTIONS - {"config_name", "compression"})
    if unknown:
        takes = ", ".join(sorted(BUILDERS[name].OPTIONS)) or "none"
        raise ValueError(f"{name} takes no option(s) {unknown}; its options: {takes}")


def make_builder(
    name: str,
    src_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    preprocessing: Preprocessing | None = None,
    on_error: OnError = "raise",
    **options: Any,
) -> EcgBuilder:
    """The TFDS builder for `name`, its config made from the source folder (label set etc.).

    Every build records a preprocessing spec; without one, the files' own sampling rate, every
    lead, no filter and full length (raw millivolts).
    """
    check_options(name, options)
    if not pathlib.Path(src_dir).is_dir():
        raise EcgFormatError(src_dir, "source folder does not exist")
    module = BUILDERS[name]
    if preprocessing is None:
        preprocessing = Preprocessing(sampling_rate=module.NATIVE_SAMPLING_RATE)
    # Options go into metadata.json: paths as strings.
    options = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}
    config = module.make_config(
        src_dir,
        preprocessing=None if preprocessing is None else preprocessing.to_dict(),
        on_error=on_error,
        **options,
    )
    with config_in_code_quietly():
        return module.Builder(
            config=config, data_dir=os.fspath(data_dir), file_format="array_record"
        )


def prepare_dataset(
    name: str,
    src_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    preprocessing: Preprocessing | None = None,
    on_error: OnError = "raise",
    beam_runner: str | None = None,
    beam_workers: int | None = None,
    beam_options: str | Sequence[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Builds dataset `name` from `src_dir` into `data_dir`; returns `describe_built_dataset`.

    `options` are dataset-specific: code: `split_file`, `id_column`, `split_column`,
    `fractions`, `seed`; cpsc2018: `split_file`, `seed`; all: `config_name` (default
    "default") and `compression` of the shards (`base.COMPRESSIONS`, default "none"). With
    `on_error="skip"` bad records are left out and listed, with their ids and reasons, under
    `skipped` of each split.

    By default one process builds. With `beam_runner` ("direct": `beam_workers` local
    processes, default one per core; or a cluster runner such as "FlinkRunner",
    "SparkRunner", "DataflowRunner") or `beam_options` (flags, e.g. "--runner=FlinkRunner
    --flink_master=..."), Apache Beam builds (the `beam` extra; see `beam_build`): the same
    records in the same order, the same index and metadata. On a cluster, every worker must
    see `src_dir` and `data_dir` at the same paths (a shared file system: the readers open
    HDF5/WFDB/MAT files by path). A bad record that a worker raises on is raised here as
    `EcgFormatError`, as in a single-process build.
    """
    beam = None
    if beam_runner is not None or beam_workers is not None or beam_options is not None:
        beam = beam_config(beam_runner, beam_workers, beam_options)
    builder = make_builder(
        name, src_dir, data_dir, preprocessing=preprocessing, on_error=on_error, **options
    )
    if beam is not None:
        from ecgfm.data.tfds_builders.beam_build import generate_examples

        builder.beam_examples = generate_examples
    config_dir = pathlib.Path(builder.data_dir).parent
    for leftover in config_dir.glob("incomplete.*"):
        print(f"removing {leftover} left by an interrupted build")
        shutil.rmtree(leftover)
    try:
        builder.download_and_prepare(
            download_dir=os.fspath(pathlib.Path(data_dir) / "downloads"),
            download_config=tfds.download.DownloadConfig(
                manual_dir=os.fspath(src_dir),
                beam_runner=None if beam is None else beam[0],
                beam_options=None if beam is None else beam[1],
            ),
        )
    except AssertionError as err:  # TFDS's "No examples were yielded" for a split
        empty = _empty_split_error(builder, src_dir)
        if empty is None:
            raise
        raise empty from err
    except RuntimeError as err:  # how Beam reports a worker's error
        known = None if beam is None else _beam_worker_error(err, src_dir)
        if known is None:
            raise
        raise known from err
    return describe_built_dataset(data_dir, name, config=builder.builder_config.name)


def beam_config(
    runner: str | None, workers: int | None, options: str | Sequence[str] | None
) -> tuple[str | None, Any]:
    """(runner, PipelineOptions) for a Beam build; a clear error without the `beam` extra."""
    try:
        from ecgfm.data.tfds_builders.beam_build import pipeline_options
    except ImportError as err:
        raise ImportError(
            f"a Beam build needs Apache Beam ({err}); install it with: pip install 'ecgfm[beam]'"
        ) from err
    return pipeline_options(runner, workers=workers, options=options)


def _beam_worker_error(err: RuntimeError, src_dir: str | os.PathLike) -> EcgFormatError | None:
    """The `EcgFormatError` a Beam worker raised, as a single-process build raises it."""
    text = str(err)
    bad = re.search(
        rf"{EcgFormatError.__module__}.EcgFormatError: (.+?): (.+?) \[while running", text
    )
    if bad:  # a bad record with on_error="raise"
        return EcgFormatError(bad[1], bad[2])
    empty = re.search(r"total number of generated examples is 0 for split (\S+)\.", text)
    if empty:  # the split's every record was skipped; the workers logged each one
        return EcgFormatError(
            pathlib.Path(src_dir),
            f"split {empty[1]!r} has no readable record: all were skipped as bad (each is "
            "logged above)",
        )
    return None


def _empty_split_error(builder: Any, src_dir: str | os.PathLike) -> EcgFormatError | None:
    """Names the split whose every record was skipped as bad (e.g. a partial download)."""
    splits = builder.info.metadata[ECGFM_METADATA_KEY]["splits"]
    for split, summary in splits.items():
        if summary["num_records"] == 0 and summary["skipped"]:
            skipped = summary["skipped"]
            examples = "; ".join(f"{s['record']}: {s['reason']}" for s in skipped[:3])
            return EcgFormatError(
                pathlib.Path(src_dir),
                f"split {split!r} has no readable record: all {len(skipped)} were skipped as bad "
                f"(e.g. {examples})",
            )
    return None


def describe_built_dataset(
    data_dir: str | os.PathLike, name: str, *, config: str | None = None
) -> dict[str, Any]:
    """Splits, record and patient counts, label frequencies, preprocessing and skipped records."""
    dataset_dir = built_dataset_dir(data_dir, name, config=config)
    metadata = read_ecgfm_metadata(dataset_dir)
    info = json.loads((dataset_dir / "dataset_info.json").read_text())
    shards = {s["name"]: len(s.get("shardLengths", [])) for s in info.get("splits", [])}
    splits: dict[str, Mapping[str, Any]] = {}
    for split, summary in metadata["splits"].items():
        n = max(summary["num_records"], 1)
        splits[split] = {
            **summary,
            "num_shards": shards.get(split, 0),
            "label_frequency": {
                t: {k: c / n for k, c in counts.items()}
                for t, counts in summary["label_counts"].items()
            },
        }
    return {
        "name": name,
        "path": str(dataset_dir),
        "version": info.get("version"),
        "preprocessing": metadata["preprocessing"],
        "storage": metadata["storage"],
        "tasks": metadata["tasks"],
        "default_task": metadata["default_task"],
        "split_plan": metadata.get("split_plan"),
        "skipped_when_opening": metadata.get("skipped_when_opening", []),
        "splits": splits,
    }
