"""`ecgfm import`: published ECG encoders → ecgfm encoder folders, with their input contract.

    from ecgfm.interop import import_checkpoint
    import_checkpoint("ecgfounder", "12_lead_ECGFounder.pth", "encoders/ecgfounder")
    encoder = ecgfm.load_encoder("encoders/ecgfounder")

Each format reads the file as its original repository writes it (key names, layouts, the
hyperparameters its shapes imply), checks every key and shape before copying (a
`CheckpointKeyError` lists all missing, unexpected and mis-shaped keys), and writes the same
folder `ecgfm export` does: Orbax arrays, `ecgfm_encoder.json`, and a model card with the
preprocessing contract, the sources it comes from and the licence. The original classifier
is kept in `head/` (`Encoder.predict`). PyTorch files are read without PyTorch and without
running pickled code (`torch_file`); Keras HDF5 with h5py.

| format | file | architecture |
|---|---|---|
| ribeiro_keras | automatic-ecg-diagnosis `model.hdf5` (Keras) | `ribeiro_resnet` |
| ribeiro_torch | ecg-age-prediction `model.pth` (+ `config.json`) | `ribeiro_resnet` |
| ecgfounder | ECGFounder `.pth` | `net1d` |
| st_mem | ST-MEM `.pth` | `st_mem_vit` |
| hubert_ecg | HuBERT-ECG Hugging Face folder (`config.json` + `model.safetensors`) | `wav2vec2` |
| ecg_fm | ECG-FM fairseq-signals `.pt` (pre-trained or fine-tuned) | `wav2vec2` |
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

from ecgfm.interop import ecg_fm, ecgfounder, hubert_ecg, ribeiro, st_mem
from ecgfm.interop.base import Imported
from ecgfm.interop.keys import CheckpointKeyError
from ecgfm.interop.torch_file import UnsafeCheckpointError, read_torch_checkpoint

FORMATS: dict[str, Callable[..., Imported]] = {
    "ribeiro_keras": ribeiro.read_keras,
    "ribeiro_torch": ribeiro.read_torch,
    "ecgfounder": ecgfounder.read,
    "st_mem": st_mem.read,
    "hubert_ecg": hubert_ecg.read,
    "ecg_fm": ecg_fm.read,
}

__all__ = [
    "FORMATS",
    "CheckpointKeyError",
    "Imported",
    "UnsafeCheckpointError",
    "import_checkpoint",
    "read_checkpoint",
    "read_torch_checkpoint",
]


def read_checkpoint(fmt: str, src: str | pathlib.Path, **options: Any) -> Imported:
    """The checkpoint `src` of format `fmt` (a key of `FORMATS`) read into ecgfm's arrays."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {sorted(FORMATS)}")
    if not pathlib.Path(src).exists():
        raise FileNotFoundError(f"{src}: no such file")
    return FORMATS[fmt](src, **options)


def spec_of(imported: Imported, fmt: str) -> dict[str, Any]:
    """The `ecgfm_encoder.json` of an imported encoder."""
    from ecgfm.export import FORMAT_VERSION

    spec = {
        "format_version": FORMAT_VERSION,
        "model": imported.model,
        "hparams": imported.hparams,
        "preprocessing": imported.preprocessing.to_dict(),
        "label_names": imported.label_names,
        "training_data": imported.training_data,
        "trained_steps": None,
        "objective": imported.objective,
        "title": imported.title,
        "summary": imported.summary,
        "imported_from": fmt,
        "source": imported.source,
        "license": imported.license,
        "preprocessing_notes": imported.notes,
    }
    if imported.ignored_keys:
        spec["source"] = imported.source | {
            "keys read but unused": ", ".join(imported.ignored_keys)
        }
    if imported.head is not None:
        spec["head"] = imported.head
    return spec


def import_checkpoint(
    fmt: str,
    src: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    layout: str = "orbax",
    **options: Any,
) -> pathlib.Path:
    """Read `src` as format `fmt` and write an ecgfm encoder folder to `out_dir`."""
    from ecgfm.export import write_encoder

    imported = read_checkpoint(fmt, src, **options)
    return write_encoder(
        out_dir,
        imported.params,
        imported.model_state,
        spec_of(imported, fmt),
        head_params=imported.head_params,
        layout=layout,
    )
