"""PhysioNet/CinC Challenge 2020/2021 layout: WFDB header `X.hea` + MATLAB v4 `X.mat`.

The Challenge re-released CPSC 2018, CPSC-Extra, INCART, PTB, PTB-XL, Georgia and
Chapman-Shaoxing/Ningbo in one layout. `X.mat` holds one matrix `val` (leads × samples, int16
in the real files); the header gives per lead the gain, baseline, units, checksum and lead name,
and its comments give `# Age:`, `# Sex:` and `# Dx:` (comma-separated SNOMED-CT codes).

Headers are parsed here rather than with `wfdb.rdheader`, which accepts a header whose signal
count disagrees with its signal lines, and silently turns an unreadable gain into 200/mV or an
unreadable sampling rate into 250 Hz (checked with wfdb 4.3.1).

The Challenge's label vocabulary is its two dx_mapping tables (shipped in `ecgfm/resources/`,
from physionetchallenges/evaluation-2021, BSD-2-Clause): 30 scored and the unscored SNOMED-CT
codes, with per-source counts.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import pathlib
import re
import zlib
from collections.abc import Collection, Iterable, Iterator

import numpy as np
import pandas as pd
import scipy.io
from scipy.io.matlab import MatReadError

from ecgfm.data.cpsc2018 import CPSC_CLASSES, CPSC_TO_SNOMED
from ecgfm.data.record import (
    EcgFormatError,
    EcgRecord,
    OnError,
    Sex,
    SkipLog,
    check_signal,
    read_each,
    to_canonical_leads,
)

# Record-name prefixes of the Challenge 2021 training sources. JS numbers one combined release:
# JS00001–JS10646 are Chapman-Shaoxing, JS10647 onward Ningbo (Challenge 2021 data notes).
_DATASET_PREFIXES = {
    "A": "cpsc2018",
    "Q": "cpsc2018-extra",
    "I": "incart",
    "S": "ptb",
    "HR": "ptbxl",
    "E": "georgia",
}
_LAST_CHAPMAN_SHAOXING_JS = 10646

# Codes the Challenge scores as one diagnosis (Notes column of dx_mapping_scored.csv).
CHALLENGE_EQUIVALENT_CODES: tuple[frozenset[str], ...] = (
    frozenset({"733534002", "164909002"}),  # CLBBB, LBBB
    frozenset({"713427006", "59118001"}),  # CRBBB, RBBB
    frozenset({"284470004", "63593006"}),  # PAC, SVPB
    frozenset({"427172004", "17338001"}),  # PVC, VPB
)

DX_MAPPING_FILES = ("dx_mapping_scored.csv", "dx_mapping_unscored.csv")
_DX_COLUMNS = ("Dx", "SNOMEDCTCode", "Abbreviation", "Total")
_MAT_ERRORS = (MatReadError, OSError, ValueError, TypeError, zlib.error)
_SEX: dict[str, Sex] = {"male": "M", "m": "M", "female": "F", "f": "F"}
_UNKNOWN = {"", "unknown", "nan", "none"}
_FORMAT = re.compile(r"^(?P<fmt>\d+)(?:x\d+)?(?::\d+)?(?:\+\d+)?$")
_GAIN = re.compile(
    r"^(?P<gain>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:\((?P<baseline>-?\d+)\))?"
    r"(?:/(?P<units>\S+))?$"
)


def dataset_of(record_id: str) -> str | None:
    """The original dataset a Challenge record name points to ("HR06000" → "ptbxl"), or None."""
    match = re.fullmatch(r"([A-Z]+)(\d+)", record_id)
    if match is None:
        return None
    prefix, number = match.groups()
    if prefix == "JS":
        return "chapman-shaoxing" if int(number) <= _LAST_CHAPMAN_SHAOXING_JS else "ningbo"
    return _DATASET_PREFIXES.get(prefix)


@dataclasses.dataclass(frozen=True)
class ChallengeHeader:
    """What a Challenge `.hea` says about its record (one entry per lead where a tuple)."""

    record_name: str
    sampling_rate: float
    num_samples: int
    signal_file: str
    lead_names: tuple[str, ...]
    gains: tuple[float, ...]
    baselines: tuple[int, ...]
    checksums: tuple[int, ...]
    comments: dict[str, str]


def read_challenge_header(path: str | pathlib.Path) -> ChallengeHeader:
    """Parses a Challenge `.hea`; any field it cannot read raises `EcgFormatError` naming it."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise EcgFormatError(path, "header file is missing")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1)]
    body = [(i, line) for i, line in lines if line and not line.startswith("#")]
    if not body:
        raise EcgFormatError(path, "header has no record line")
    i, record_line = body[0]
    fields = record_line.split()
    if len(fields) < 4:
        raise EcgFormatError(
            path, f"line {i}: record line {record_line!r} lacks name, leads, rate or samples"
        )
    record_name, num_leads, rate, num_samples = fields[:4]
    if "/" in record_name:
        raise EcgFormatError(path, f"line {i}: multi-segment record {record_name!r}")
    if record_name != path.stem:
        raise EcgFormatError(path, f"line {i}: header is for record {record_name!r}")
    try:
        sampling_rate = float(rate.split("/")[0])
        n_leads, n_samples = int(num_leads), int(num_samples)
    except ValueError as err:
        raise EcgFormatError(path, f"line {i}: unreadable record line {record_line!r}") from err
    if not sampling_rate > 0 or n_leads <= 0 or n_samples <= 0:
        raise EcgFormatError(
            path, f"line {i}: record line {record_line!r} has a non-positive field"
        )
    signal_lines = body[1:]
    if len(signal_lines) != n_leads:
        raise EcgFormatError(
            path, f"record line says {n_leads} leads but {len(signal_lines)} signal lines follow"
        )
    leads = [_parse_signal_line(path, i, line) for i, line in signal_lines]
    files = {lead["file"] for lead in leads}
    if len(files) != 1:
        raise EcgFormatError(path, f"signal lines name several files {sorted(files)}")
    return ChallengeHeader(
        record_name=record_name,
        sampling_rate=sampling_rate,
        num_samples=n_samples,
        signal_file=files.pop(),
        lead_names=tuple(lead["name"] for lead in leads),
        gains=tuple(lead["gain"] for lead in leads),
        baselines=tuple(lead["baseline"] for lead in leads),
        checksums=tuple(lead["checksum"] for lead in leads),
        comments=_parse_comments(path, lines),
    )


def _parse_signal_line(path: pathlib.Path, i: int, line: str) -> dict:
    """One signal line: `file fmt gain(baseline)/units adcres adczero init checksum block lead`."""
    fields = line.split()
    if len(fields) < 9:
        raise EcgFormatError(path, f"line {i}: signal line {line!r} has fewer than 9 fields")
    file, fmt, gain_field, _adc_res, adc_zero, _init, checksum, _block = fields[:8]
    fmt_match, gain_match = _FORMAT.match(fmt), _GAIN.match(gain_field)
    if fmt_match is None or fmt_match["fmt"] != "16":
        raise EcgFormatError(path, f"line {i}: signal format {fmt!r}, expected 16")
    if not file.lower().endswith(".mat"):
        raise EcgFormatError(path, f"line {i}: signal file {file!r} is not a MATLAB .mat")
    if gain_match is None:
        raise EcgFormatError(path, f"line {i}: unreadable gain {gain_field!r}")
    units = gain_match["units"] or "mV"
    if units.lower() != "mv":
        raise EcgFormatError(path, f"line {i}: units {units!r}, expected mV")
    try:
        gain = float(gain_match["gain"])
        baseline = int(gain_match["baseline"] or adc_zero)
        checksum_value = int(checksum)
    except ValueError as err:
        raise EcgFormatError(path, f"line {i}: unreadable signal line {line!r}") from err
    if not gain > 0:
        # A gain of 0 means "uncalibrated" in WFDB: there is no way to get millivolts.
        raise EcgFormatError(path, f"line {i}: gain {gain_field!r} is not positive")
    return {
        "file": file,
        "gain": gain,
        "baseline": baseline,
        "checksum": checksum_value,
        "name": " ".join(fields[8:]),
    }


def _parse_comments(path: pathlib.Path, lines: list[tuple[int, str]]) -> dict[str, str]:
    """`# Key: value` comment lines as {key: value}; a key given twice raises."""
    comments: dict[str, str] = {}
    for i, line in lines:
        if not line.startswith("#") or ":" not in line:
            continue
        key, value = (part.strip() for part in line.lstrip("#").split(":", 1))
        if key in comments:
            raise EcgFormatError(path, f"line {i}: comment '{key}' given twice")
        comments[key] = value
    return comments


def read_challenge_record(path: str | pathlib.Path) -> EcgRecord:
    """Reads `X.hea` + `X.mat` (give either, or `X`) into an `EcgRecord` (`[T, 12]` mV).

    Physical values are `(val - baseline) / gain` per lead; lead count, sample count and the
    WFDB checksums are checked against the header. Labels are the `# Dx:` SNOMED-CT codes;
    age "NaN"/"Unknown" and sex "Unknown" become None. Ages are as written (PTB-XL codes ages
    over 89 as 300).
    """
    path = pathlib.Path(path)
    header_path = path.with_suffix(".hea") if path.suffix in (".hea", ".mat") else None
    header_path = header_path or path.parent / (path.name + ".hea")
    header = read_challenge_header(header_path)
    mat_path = header_path.parent / header.signal_file
    val_CT = _read_val(mat_path)
    if val_CT.shape[0] != len(header.lead_names):
        raise EcgFormatError(
            mat_path,
            f"'val' has {val_CT.shape[0]} leads but {header_path.name} lists "
            f"{len(header.lead_names)}",
        )
    if val_CT.shape[1] != header.num_samples:
        raise EcgFormatError(
            mat_path,
            f"'val' has {val_CT.shape[1]} samples but {header_path.name} says {header.num_samples}",
        )
    if np.issubdtype(val_CT.dtype, np.integer):
        _check_checksums(val_CT, header, mat_path)
    baseline_C1 = np.asarray(header.baselines, dtype=np.float64)[:, None]
    gain_C1 = np.asarray(header.gains, dtype=np.float64)[:, None]
    physical_CT = (val_CT.astype(np.float64) - baseline_C1) / gain_C1
    signal_TC, derived = to_canonical_leads(physical_CT.T, header.lead_names, header_path)
    comments = dict(header.comments)
    age, sex, dx = comments.pop("Age", None), comments.pop("Sex", None), comments.pop("Dx", None)
    return EcgRecord(
        signal=check_signal(signal_TC, mat_path),
        sampling_rate=header.sampling_rate,
        record_id=header.record_name,
        source="challenge",
        labels=_parse_dx(dx, header_path),
        age=_parse_age(age, header_path),
        sex=_parse_sex(sex, header_path),
        derived_leads=derived,
        metadata={"dataset": dataset_of(header.record_name), "comments": comments},
    )


def _read_val(mat_path: pathlib.Path) -> np.ndarray:
    """The `val` matrix (leads × samples) of a Challenge MATLAB v4 file."""
    if not mat_path.is_file():
        raise EcgFormatError(mat_path, "signal file is missing")
    try:
        contents = scipy.io.loadmat(mat_path)
    except _MAT_ERRORS as err:
        raise EcgFormatError(mat_path, f"unreadable MATLAB file ({err})") from err
    if "val" not in contents:
        raise EcgFormatError(mat_path, "no matrix 'val'")
    val = contents["val"]
    if val.ndim != 2 or not np.issubdtype(val.dtype, np.number):
        raise EcgFormatError(mat_path, f"'val' is {val.dtype} {val.shape}, expected a matrix")
    return val


def _check_checksums(val_CT: np.ndarray, header: ChallengeHeader, mat_path: pathlib.Path) -> None:
    """Compares the 16-bit sums of each lead with the header's WFDB checksums."""
    sums = (val_CT.astype(np.int64).sum(axis=1) + 2**15) % 2**16 - 2**15
    for name, expected, found in zip(header.lead_names, header.checksums, sums, strict=True):
        if expected != found:
            raise EcgFormatError(
                mat_path, f"lead {name}: checksum {found} differs from the header's {expected}"
            )


def _parse_dx(dx: str | None, path: pathlib.Path) -> tuple[str, ...]:
    if dx is None:
        raise EcgFormatError(path, "no '# Dx:' comment")
    codes = [code.strip() for code in dx.split(",")]
    if not codes or any(not code.isdigit() for code in codes):
        raise EcgFormatError(path, f"'# Dx: {dx}' is not a list of SNOMED-CT codes")
    return tuple(sorted(set(codes)))


def _parse_age(age: str | None, path: pathlib.Path) -> float | None:
    if age is None or age.lower() in _UNKNOWN:
        return None
    try:
        years = float(age)
    except ValueError as err:
        raise EcgFormatError(path, f"'# Age: {age}' is not a number") from err
    if np.isnan(years):
        return None
    if years < 0:
        raise EcgFormatError(path, f"'# Age: {age}' is negative")
    return years


def _parse_sex(sex: str | None, path: pathlib.Path) -> Sex | None:
    if sex is None or sex.lower() in _UNKNOWN:
        return None
    if sex.lower() not in _SEX:
        raise EcgFormatError(path, f"'# Sex: {sex}' is not Male/Female")
    return _SEX[sex.lower()]


def validate_codes(codes: Iterable[str], vocabulary: Collection[str], path: object) -> None:
    """Raises `EcgFormatError` naming `path` for codes that are not in `vocabulary`."""
    unknown = sorted(set(codes) - set(vocabulary))
    if unknown:
        raise EcgFormatError(path, f"SNOMED-CT codes {unknown} are not in the vocabulary")


def load_dx_mapping(
    scored_csv: str | pathlib.Path | None = None,
    unscored_csv: str | pathlib.Path | None = None,
) -> pd.DataFrame:
    """The Challenge's scored and unscored diagnoses, one row per SNOMED-CT code.

    Defaults to the 2021 tables shipped in `ecgfm/resources/`. Indexed by the code (a string);
    columns: Dx, Abbreviation, the per-source counts (CPSC, CPSC_Extra, StPetersburg, PTB,
    PTB_XL, Georgia, Chapman_Shaoxing, Ningbo), Total, Notes ("" where none) and `scored`.
    """
    resources = importlib.resources.files("ecgfm") / "resources"
    paths = [
        resources / name if given is None else pathlib.Path(given)
        for given, name in zip((scored_csv, unscored_csv), DX_MAPPING_FILES, strict=True)
    ]
    tables = []
    for path, scored in zip(paths, (True, False), strict=True):
        try:
            with path.open(encoding="utf-8") as f:
                table = pd.read_csv(f, dtype={"SNOMEDCTCode": str})
        except (OSError, ValueError, pd.errors.ParserError) as err:
            raise EcgFormatError(path, f"unreadable dx mapping ({err})") from err
        missing = [c for c in _DX_COLUMNS if c not in table.columns]
        if missing:
            raise EcgFormatError(path, f"missing columns {missing}")
        bad = table.loc[~table["SNOMEDCTCode"].str.fullmatch(r"\d+", na=False), "SNOMEDCTCode"]
        if len(bad):
            raise EcgFormatError(path, f"codes {bad.tolist()} are not SNOMED-CT codes")
        tables.append(table.assign(scored=scored))
    mapping = pd.concat(tables, ignore_index=True)
    mapping["Notes"] = mapping.get("Notes", pd.Series(dtype=str)).fillna("").astype(str)
    repeated = mapping["SNOMEDCTCode"][mapping["SNOMEDCTCode"].duplicated()]
    if len(repeated):
        raise EcgFormatError(paths[1], f"codes {repeated.tolist()} are listed twice")
    return mapping.set_index("SNOMEDCTCode")


@functools.cache
def challenge_vocabulary() -> frozenset[str]:
    """Every SNOMED-CT code in the shipped Challenge 2021 dx_mapping tables."""
    return frozenset(load_dx_mapping().index)


def _cpsc_of_code() -> dict[str, str]:
    """SNOMED-CT code → CPSC class, including the codes the Challenge scores as equivalent."""
    mapping = {code: name for name, code in CPSC_TO_SNOMED.items()}
    for group in CHALLENGE_EQUIVALENT_CODES:
        names = {mapping[code] for code in group if code in mapping}
        mapping.update({code: name for code in group for name in names})
    return mapping


def snomed_to_cpsc(codes: Iterable[str]) -> tuple[str, ...]:
    """The CPSC 2018 classes among SNOMED-CT `codes`, in `CPSC_CLASSES` order.

    Uses the Challenge's codes for the nine classes and the codes it scores as the same
    diagnosis (CLBBB → LBBB, CRBBB → RBBB, SVPB → PAC). Other codes are not CPSC classes and are
    dropped. The scored PVC code 427172004 (and its equivalent 17338001) does not map to CPSC's
    PVC, which the Challenge coded as "ventricular ectopics" 164884008.
    """
    mapping = _cpsc_of_code()
    found = {mapping[code] for code in codes if code in mapping}
    return tuple(name for name in CPSC_CLASSES if name in found)


class ChallengeDataset:
    """Every Challenge-layout record (`X.hea` + `X.mat`) anywhere under `root`.

    `check_codes` (default) rejects records whose `# Dx:` codes are not in `vocabulary` (the
    shipped Challenge 2021 tables when None). `record_ids` lists every id that a `.hea` or a
    `.mat` names, so a `.mat` without a header is reported when read, not dropped.
    """

    def __init__(
        self,
        root: str | pathlib.Path,
        *,
        check_codes: bool = True,
        vocabulary: Collection[str] | None = None,
    ):
        self.root = pathlib.Path(root)
        if not self.root.is_dir():
            raise EcgFormatError(self.root, "dataset folder is missing")
        self.vocabulary = None
        if check_codes:
            self.vocabulary = (
                challenge_vocabulary() if vocabulary is None else frozenset(vocabulary)
            )
        self._files: dict[str, pathlib.Path] = {}
        for file in sorted([*self.root.rglob("*.hea"), *self.root.rglob("*.mat")]):
            known = self._files.setdefault(file.stem, file.with_suffix(""))
            if known != file.with_suffix(""):
                raise EcgFormatError(file, f"repeats record {file.stem} of {known}")
        self.record_ids: tuple[str, ...] = tuple(sorted(self._files))

    def __len__(self) -> int:
        return len(self.record_ids)

    def read(self, record_id: str) -> EcgRecord:
        """Reads one record; raises `EcgFormatError` for a bad record or an unknown code."""
        if record_id not in self._files:
            raise EcgFormatError(self.root, f"no record {record_id}")
        record = read_challenge_record(self._files[record_id].with_suffix(".hea"))
        if self.vocabulary is not None:
            validate_codes(
                record.labels, self.vocabulary, self._files[record_id].with_suffix(".hea")
            )
        return record

    def iter_records(
        self, on_error: OnError = "raise", skip_log: SkipLog | None = None
    ) -> Iterator[EcgRecord]:
        """Yields every record in `record_ids` order; bad ones raise or are skipped and logged."""
        return read_each(self.read, self.record_ids, on_error, skip_log)
