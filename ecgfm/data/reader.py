"""The one reader interface: how a dataset lists its records and reads one, with skip-or-raise.

Every dataset folder ecgfm reads is a `Reader` (`code.CodeDataset`, `ptbxl.PtbXl`,
`cpsc2018.Cpsc2018`, `challenge.ChallengeDataset`)::

    reader = PtbXl(root, on_error="skip")   # opening checks the metadata, skipping bad rows
    reader.record_ids                       # the records opening kept, as strings
    reader.read("17")                       # one EcgRecord; a bad file raises EcgFormatError
    for record in reader.iter_records(on_error="skip"):   # bad records counted, not raised
        ...
    print(reader.skip_log.summary())        # everything skipped, with its reason

A record that opening skipped (a bad metadata row) is not in `record_ids`, so iterating in skip
mode never meets it. A record that opening could not judge without reading its signal file
stays listed, and reading it raises `EcgFormatError` (or, when iterating with
`on_error="skip"`, is counted in the `SkipLog`).

Files are untrusted input: whatever a file holds (truncated, byte-flipped, a wrong dtype, a
huge declared size, text that is not UTF-8, a FIFO, a symlink loop, a name too long), every
reader failure is an `EcgFormatError` naming the file and the problem, and every record that
is returned passes `record.check_signal`'s plausibility rule. `ecgfm/data/files.py`,
`matfile.py` (no scipy C code) and the bounds in `code_hdf5.py` and `wfdb_header.py` say how;
`benchmarks/fuzz_readers.py` and `tests/test_fuzz.py` check it with mutated files.
"""

from __future__ import annotations

import abc
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Sequence

from ecgfm.data.record import EcgRecord, OnError, SkipLog, check_on_error, read_each


class Reader(abc.ABC):
    """A dataset folder opened for reading.

    Attributes:
      root: the dataset folder.
      record_ids: the ids (strings, as `EcgRecord.record_id`) of the records opening kept, in
        the dataset's order.
      skip_log: what opening skipped with `on_error="skip"`, and by default what `iter_records`
        skips.
      label_names: the names `EcgRecord.labels` are drawn from (CODE: the CSV's label columns;
        PTB-XL: the 71 SCP codes; CPSC: the nine classes; Challenge: the SNOMED-CT codes of the
        vocabulary), or None where the reader does not check labels against a vocabulary.
    """

    root: pathlib.Path
    record_ids: Sequence[str]
    skip_log: SkipLog
    label_names: tuple[str, ...] | None

    def __init__(self, root: str | os.PathLike, *, on_error: OnError, skip_log: SkipLog | None):
        """Checks `on_error` before anything is read; keeps `root` and `skip_log` (new if None)."""
        check_on_error(on_error)
        self.root = pathlib.Path(root)
        self.skip_log = SkipLog() if skip_log is None else skip_log

    @abc.abstractmethod
    def read(self, record_id: str) -> EcgRecord:
        """One record; bad input raises `EcgFormatError` naming the file and the problem."""

    def iter_records(
        self, on_error: OnError = "raise", skip_log: SkipLog | None = None
    ) -> Iterator[EcgRecord]:
        """Every record of `record_ids`; a bad one raises, or is skipped, counted and logged.

        Skips are listed in `skip_log`, by default this reader's `skip_log`. `on_error` is
        checked here, before the first record is read.
        """
        record_ids, read = self._reading_plan()
        return read_each(
            read, record_ids, on_error, self.skip_log if skip_log is None else skip_log
        )

    def _reading_plan(self) -> tuple[Iterable[str], Callable[[str], EcgRecord]]:
        """The ids `iter_records` reads, in order, and the function that reads one.

        `record_ids` and `read` here; a reader whose files are faster to read in another order
        (CODE: shard by shard, blocks of rows) says so by overriding this.
        """
        return self.record_ids, self.read

    def __len__(self) -> int:
        return len(self.record_ids)

    def __iter__(self) -> Iterator[EcgRecord]:
        return self.iter_records()
