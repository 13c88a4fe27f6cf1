"""Builds through TFDS's Apache Beam path: the same records, index and metadata, many workers.

Needs the `beam` extra (`pip install 'ecgfm[beam]'`). `prepare_dataset(..., beam_runner=...)`
sets it off; `EcgBuilder._generate_examples` then returns `generate_examples(...)`, a
`beam.PTransform` per split, and TFDS runs them all in one pipeline. What runs where:

- The launching process opens the reader and plans the splits, as a single-process build does
  (so the split plan, and `skipped_when_opening`, are the same).
- `Plan`: the split's `(key, record_id)` pairs, key = position in the plan, spread over the
  workers.
- `Convert` (`ConvertFn`, on the workers): each worker opens its own reader over the source
  folder once (`setup`; readers are not shipped, so nothing large is pickled) and calls
  `EcgBuilder.convert` (read → preprocess → quantize → example), the function the
  single-process build calls.
- TFDS's `BeamWriter` encodes the examples, groups them into shards by key (the builders
  disable shuffling, so keys keep the plan order across and within shards) and writes each
  shard with the builder's `ShardWriter`.
- `Summarize`: `SplitSummary`, the single-process build's summary, combined over the
  workers; one worker then writes the split's index (`sources.INDEX_FILE`) and its summary
  (`base.SUMMARY_FILE`) into the build's temporary folder. When the pipeline has finished,
  the launching process moves each summary into metadata.json
  (`EcgBuilder._process_pipeline_result`). TFDS renames the temporary folder only after that,
  so the build stays atomic: a failed or interrupted pipeline leaves no partial dataset.

Why not `tfds.core.BeamMetadataDict`: it writes each value to a local `tempfile.mkdtemp()` of
the launching process (workers on other machines cannot reach it) and holds top-level keys
only, while the summaries live under `metadata["ecgfm"]["splits"]`. The build's folder is
storage every worker already writes shards to.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from ecgfm.data.sources import INDEX_FILE
from ecgfm.data.tfds_builders.base import (
    SUMMARY_FILE,
    Converted,
    EcgBuilder,
    SplitSummary,
    split_file,
)

DIRECT = "DirectRunner"
# Runners one can name on a cluster (any runner Beam knows works; these are documented).
CLUSTER_RUNNERS = ("DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner")


def pipeline_options(
    runner: str | None = None,
    *,
    workers: int | None = None,
    options: str | Sequence[str] | None = None,
) -> tuple[str | None, PipelineOptions]:
    """The runner name and pipeline options for TFDS's `DownloadConfig`.

    `runner` "direct" or "DirectRunner" (or none, with `workers` given) runs `workers` local
    processes (default: one per core) with Beam's multi-process DirectRunner. Any other runner
    (`CLUSTER_RUNNERS`) goes to Beam as named, configured by `options`: flags as one string
    ("--project=... --region=...") or a list; with no `runner`, `options` may name it
    (`--runner=...`).
    """
    flags = shlex.split(options) if isinstance(options, str) else list(options or [])
    given = PipelineOptions(flags).get_all_options(drop_default=True)
    if runner is not None and runner.lower() in ("direct", DIRECT.lower()):
        runner = DIRECT
    if runner is None and given.get("runner") is None and workers is not None:
        runner = DIRECT
    if DIRECT in (runner, given.get("runner")):
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        mode = given.get("direct_running_mode")
        return runner, PipelineOptions(
            flags,
            direct_num_workers=workers or given.get("direct_num_workers") or os.cpu_count(),
            # Beam's default runs every worker in one process; ECG conversion needs processes.
            direct_running_mode="multi_processing" if mode in (None, "in_memory") else mode,
        )
    if workers is not None:
        raise ValueError(
            f"workers counts DirectRunner processes; give {runner or given.get('runner')}'s "
            "own worker count in its options (Dataflow --max_num_workers, Flink --parallelism)"
        )
    return runner, PipelineOptions(flags)


class ConvertFn(beam.DoFn):
    """`EcgBuilder.convert` on a worker, with a reader that worker opens once."""

    def __init__(self, builder: EcgBuilder, source_dir: str):
        # The builder pickles as its config (TFDS rebuilds it on the worker).
        self._builder = builder
        self._source_dir = source_dir
        self._reader: Any = None

    def setup(self) -> None:
        self._reader = self._builder.open_reader(pathlib.Path(self._source_dir))

    def process(self, key_record_id: tuple[int, str]) -> Iterator[Converted]:
        key, record_id = key_record_id
        yield self._builder.convert(self._reader, key, record_id)

    def teardown(self) -> None:
        close = getattr(self._reader, "close", None)
        if close is not None:
            close()


class SummarizeFn(beam.CombineFn):
    """A split's `SplitSummary`, each worker summarising its records, then merged."""

    def __init__(self, tasks: Mapping[str, Sequence[str]]):
        self._tasks = {t: tuple(names) for t, names in tasks.items()}

    def create_accumulator(self) -> SplitSummary:
        return SplitSummary(self._tasks)

    def add_input(self, summary: SplitSummary, converted: Converted) -> SplitSummary:
        summary.add(converted)
        return summary

    def merge_accumulators(self, summaries: Any) -> SplitSummary:
        merged = SplitSummary(self._tasks)
        for summary in summaries:
            merged.merge(summary)
        return merged

    def extract_output(self, summary: SplitSummary) -> SplitSummary:
        return summary


def write_split_files(summary: SplitSummary, *, build_dir: str, split: str) -> None:
    """The split's index and summary, into the build's temporary folder."""
    summary.write_index(split_file(build_dir, INDEX_FILE, split))
    split_file(build_dir, SUMMARY_FILE, split).write_text(json.dumps(summary.metadata()))


def _keyed_example(converted: Converted) -> Iterator[tuple[int, Mapping[str, Any]]]:
    if converted.example is not None:
        yield converted.key, converted.example


def generate_examples(
    builder: EcgBuilder,
    split: str,
    record_ids: Sequence[str],
    *,
    source_dir: os.PathLike | str,
    build_dir: os.PathLike | str,
) -> beam.PTransform:
    """The split's `(key, example)` PCollection as TFDS's Beam path takes it (see the module).

    `build_dir` is the build's temporary folder (the builder's `data_dir` while TFDS builds).
    """
    plan = list(enumerate(record_ids))
    tasks = builder.builder_config.tasks

    @beam.ptransform_fn
    def _generate(pipeline: Any) -> Any:
        converted = (
            pipeline
            | "Plan" >> beam.Create(plan)
            | "Convert" >> beam.ParDo(ConvertFn(builder, os.fspath(source_dir)))
        )
        _ = (
            converted
            | "Summarize" >> beam.CombineGlobally(SummarizeFn(tasks))
            | "WriteIndex"
            >> beam.Map(write_split_files, build_dir=os.fspath(build_dir), split=split)
        )
        return converted | "Examples" >> beam.FlatMap(_keyed_example)

    return _generate()
