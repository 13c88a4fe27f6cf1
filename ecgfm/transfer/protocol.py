"""The fixed downstream protocol, in one import: windows, task definitions and the study runner.

Each part has its module; this one gathers their public names for scripts and notebooks
(`from ecgfm.transfer import protocol; protocol.ptbxl_task(...)`):

- `ecgfm.transfer.windows`: 2.5 s windows, strides and the max/mean aggregation of window
  scores (the PTB-XL benchmark's and the ECG foundation-model benchmark's); where the windows
  fall is `ecgfm.data.windows`'s one rule;
- `ecgfm.transfer.tasks`: PTB-XL's six tasks on folds 1–8 / 9 / 10, CPSC 2018 on the shipped
  split, the CODE test set, and how their records are read;
- `ecgfm.transfer.study`: methods × label fractions × seeds on one task, bootstrap CIs,
  paired differences, thresholds fitted on validation, and the results' provenance.
"""

from ecgfm.data.windows import cut_windows, window_starts
from ecgfm.transfer.study import (
    THRESHOLD_RULES,
    Method,
    MethodOutput,
    describe,
    evaluable_classes,
    run_study,
    study_results,
    summarize,
    validation_macro_auroc,
    versions,
)
from ecgfm.transfer.tasks import (
    BENCHMARK_TASKS,
    CODE_TEST_TASK,
    CPSC_TASK,
    DATASETS,
    SPLITS,
    TaskData,
    TaskSpec,
    code_test_task,
    cpsc2018_task,
    labelled_task,
    load_task,
    ptbxl_task,
)
from ecgfm.transfer.windows import (
    AGGREGATIONS,
    BENCHMARK_WINDOWING,
    WHOLE_RECORD,
    WINDOW_AGGREGATION,
    Aggregation,
    Windowing,
    aggregate_window_logits,
    aggregate_windows,
    record_windows,
    sigmoid,
)

__all__ = [
    "AGGREGATIONS",
    "BENCHMARK_TASKS",
    "BENCHMARK_WINDOWING",
    "CODE_TEST_TASK",
    "CPSC_TASK",
    "DATASETS",
    "SPLITS",
    "THRESHOLD_RULES",
    "WHOLE_RECORD",
    "WINDOW_AGGREGATION",
    "Aggregation",
    "Method",
    "MethodOutput",
    "TaskData",
    "TaskSpec",
    "Windowing",
    "aggregate_window_logits",
    "aggregate_windows",
    "code_test_task",
    "cpsc2018_task",
    "cut_windows",
    "describe",
    "evaluable_classes",
    "labelled_task",
    "load_task",
    "ptbxl_task",
    "record_windows",
    "run_study",
    "sigmoid",
    "study_results",
    "summarize",
    "validation_macro_auroc",
    "versions",
    "window_starts",
]
