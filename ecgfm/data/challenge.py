"""PhysioNet/CinC Challenge 2020/2021 layout: WFDB header `X.hea` + MATLAB v4 `X.mat`.

The Challenge re-released CPSC 2018, CPSC-Extra, INCART, PTB, PTB-XL, Georgia and
Chapman-Shaoxing/Ningbo in one layout. `X.mat` holds one matrix `val` (leads × samples, int16
in the real files); the header gives per lead the gain, baseline, units, checksum and lead name,
and its comments give `# Age:`, `# Sex:` and `# Dx:` (comma-separated SNOMED-CT codes).

Headers are parsed strictly by `ecgfm.data.wfdb_header` (not `wfdb.rdheader`, which reads a
missing gain as 200/mV), the same parser PTB-XL's reader uses. The Challenge copied PTB-XL's
ages, so an HR record's age 300 ("over 89") gives no age and `metadata["age_over_89"]`, as
`ecgfm.data.ptbxl` reads it.

The Challenge's label vocabulary is its two dx_mapping tables (shipped in `ecgfm/resources/`,
from physionetchallenges/evaluation-2021, BSD-2-Clause): 30 scored and the unscored SNOMED-CT
codes, with per-source counts.
"""

from __future__ import annotations

import functools
import importlib.resources
import pathlib
import re
from collections.abc import Collection, Iterable

import numpy as np
import pandas as pd

from ecgfm.data.cpsc2018 import CPSC_CLASSES, CPSC_TO_SNOMED, load_mat
from ecgfm.data.ptbxl import MASKED_AGE
from ecgfm.data.reader import Reader
from ecgfm.data.record import (
    EcgFormatError,
    EcgRecord,
    OnError,
    SkipLog,
    check_signal,
    handle_bad_record,
    parse_age,
    parse_sex,
    to_canonical_leads,
)
from ecgfm.data.wfdb_header import WfdbHeader, digital_to_millivolts, read_wfdb_header

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


def dataset_of(record_id: str) -> str | None:
    """The original dataset a Challenge record name points to ("HR06000" → "ptbxl"), or None."""
    match = re.fullmatch(r"([A-Z]+)(\d+)", record_id)
    if match is None:
        return None
    prefix, number = match.groups()
    if prefix == "JS":
        return "chapman-shaoxing" if int(number) <= _LAST_CHAPMAN_SHAOXING_JS else "ningbo"
    return _DATASET_PREFIXES.get(prefix)


def _parse_comments(path: pathlib.Path, header: WfdbHeader) -> dict[str, str]:
    """`# Key: value` comment lines as {key: value}; a key given twice raises."""
    comments: dict[str, str] = {}
    for i, line in header.comment_lines:
        if ":" not in line:
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        if key in comments:
            raise EcgFormatError(path, f"line {i}: comment '{key}' given twice")
        comments[key] = value
    return comments


def read_challenge_record(path: str | pathlib.Path) -> EcgRecord:
    """Reads `X.hea` + `X.mat` (give either, or `X`) into an `EcgRecord` (`[T, 12]` mV).

    Physical values are `(val - baseline) / gain` per lead; lead count, sample count and the
    WFDB checksums are checked against the header. Labels are the `# Dx:` SNOMED-CT codes;
    age "NaN"/"Unknown" and sex "Unknown" become None. A PTB-XL record's (HR*) age 300, PTB-XL's
    code for "over 89", becomes None with `metadata["age_over_89"]`; other ages must be 0-150.
    """
    path = pathlib.Path(path)
    header_path = path.with_suffix(".hea") if path.suffix in (".hea", ".mat") else None
    header_path = header_path or path.parent / (path.name + ".hea")
    header = read_wfdb_header(header_path)
    if not header.signal_file.lower().endswith(".mat"):
        raise EcgFormatError(
            header_path, f"signal file {header.signal_file!r} is not a MATLAB .mat"
        )
    comments = _parse_comments(header_path, header)
    mat_path = header_path.parent / header.signal_file
    val_CT = _read_val(mat_path)
    if val_CT.shape[0] != header.num_leads:
        raise EcgFormatError(
            mat_path,
            f"'val' has {val_CT.shape[0]} leads but {header_path.name} lists {header.num_leads}",
        )
    if val_CT.shape[1] != header.num_samples:
        raise EcgFormatError(
            mat_path,
            f"'val' has {val_CT.shape[1]} samples but {header_path.name} says {header.num_samples}",
        )
    physical_TC = digital_to_millivolts(val_CT.T, header, mat_path)
    signal_TC, derived = to_canonical_leads(physical_TC, header.lead_names, header_path)
    age, sex, dx = comments.pop("Age", None), comments.pop("Sex", None), comments.pop("Dx", None)
    dataset = dataset_of(header.record_name)
    metadata: dict[str, object] = {"dataset": dataset, "comments": comments}
    if dataset == "ptbxl":
        # The Challenge copied PTB-XL's ages, 300 ("over 89") included; read it as PTB-XL does.
        metadata["age_over_89"] = _is_masked_age(age)
        age = None if metadata["age_over_89"] else age
    return EcgRecord(
        signal=check_signal(signal_TC, mat_path),
        sampling_rate=header.sampling_rate,
        record_id=header.record_name,
        source="challenge",
        labels=_parse_dx(dx, header_path),
        age=parse_age(age, header_path, "'# Age:'"),
        sex=parse_sex(sex, header_path, "'# Sex:'"),
        derived_leads=derived,
        metadata=metadata,
    )


def _is_masked_age(age: str | None) -> bool:
    try:
        return age is not None and float(age) == MASKED_AGE
    except ValueError:
        return False


def _read_val(mat_path: pathlib.Path) -> np.ndarray:
    """The `val` matrix (leads × samples) of a Challenge MATLAB v4 file."""
    contents = load_mat(mat_path)
    if "val" not in contents:
        raise EcgFormatError(mat_path, "no matrix 'val'")
    val = contents["val"]
    if not isinstance(val, np.ndarray) or val.ndim != 2 or val.dtype.kind not in "iuf":
        kind = f"{val.dtype} {val.shape}" if isinstance(val, np.ndarray) else type(val).__name__
        raise EcgFormatError(mat_path, f"'val' is {kind}, expected a numeric matrix")
    return val


def _parse_dx(dx: str | None, path: pathlib.Path) -> tuple[str, ...]:
    if dx is None:
        raise EcgFormatError(path, "no '# Dx:' comment")
    codes = [code.strip() for code in dx.split(",")]
    if not codes or any(not code.isdigit() for code in codes):
        raise EcgFormatError(path, f"'# Dx: {dx}' is not a list of SNOMED-CT codes")
    return tuple(sorted(set(codes)))


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


class ChallengeDataset(Reader):
    """Every Challenge-layout record (`X.hea` + `X.mat`) anywhere under `root`.

    `check_codes` (default) rejects records whose `# Dx:` codes are not in `vocabulary` (the
    shipped Challenge 2021 tables when None). `record_ids` lists every id that a `.hea` or a
    `.mat` names, so a `.mat` without a header is reported when read, not dropped. A record name
    found in two folders raises, or with `on_error="skip"` keeps the first and lists the other in
    `skip_log` (a new `SkipLog` when None, also `iter_records`' default). `label_names` are the
    vocabulary's codes, sorted (None without `check_codes`).
    """

    def __init__(
        self,
        root: str | pathlib.Path,
        *,
        check_codes: bool = True,
        vocabulary: Collection[str] | None = None,
        on_error: OnError = "raise",
        skip_log: SkipLog | None = None,
    ):
        super().__init__(root, on_error=on_error, skip_log=skip_log)
        if not self.root.is_dir():
            raise EcgFormatError(self.root, "dataset folder is missing")
        self.vocabulary = None
        if check_codes:
            self.vocabulary = (
                challenge_vocabulary() if vocabulary is None else frozenset(vocabulary)
            )
        self.label_names = None if self.vocabulary is None else tuple(sorted(self.vocabulary))
        self._files: dict[str, pathlib.Path] = {}
        for file in sorted([*self.root.rglob("*.hea"), *self.root.rglob("*.mat")]):
            known = self._files.setdefault(file.stem, file.with_suffix(""))
            if known != file.with_suffix(""):
                repeat = EcgFormatError(file, f"repeats record {file.stem} of {known}")
                handle_bad_record(repeat, on_error, self.skip_log)
        self.record_ids: tuple[str, ...] = tuple(sorted(self._files))

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
