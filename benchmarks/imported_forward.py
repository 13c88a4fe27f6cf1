"""Forward pass of imported encoders in ecgfm (JAX) beside their originals in PyTorch.

For each format: the original PyTorch model at its published size (`benchmarks/originals/`,
random weights) is saved as its repository saves it, imported with `ecgfm.interop`, and both
run inference on the same batch: PyTorch eager under `torch.no_grad()` in eval mode, ecgfm's
jitted `Encoder.predict` path (encoder + original head) after one compile call. Rounds
interleave the frameworks so that drifting load hits both; the table gives median seconds per
batch and the median per-round ratio. Outputs are compared too (max relative difference).

    python benchmarks/imported_forward.py --batch-size 8 --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "originals"))

import fairseq_signals_w2v
import hubert_ecg_torch
import net1d_torch
import ribeiro_torch
import st_mem_torch

from ecgfm.export import load_encoder
from ecgfm.interop import import_checkpoint


def _ribeiro(folder: pathlib.Path):
    model = ribeiro_torch.ResNet1d(
        (12, 4096), list(zip([64, 128, 196, 256, 320], [4096, 1024, 256, 64, 16], strict=True)), 1
    )
    torch.save({"model": model.state_dict(), "epoch": 0}, folder / "model.pth")
    return model, "ribeiro_torch", folder / "model.pth", (4096, 400.0), {}


def _ecgfounder(folder: pathlib.Path):
    model = net1d_torch.ecgfounder_12lead(n_classes=150)
    torch.save({"state_dict": model.state_dict()}, folder / "ecgfounder.pth")
    return model, "ecgfounder", folder / "ecgfounder.pth", (5000, 500.0), {}


def _st_mem(folder: pathlib.Path):
    model = st_mem_torch.st_mem_vit_base(num_leads=12, num_classes=5)
    torch.save({"model": model.state_dict()}, folder / "st_mem.pth")
    return model, "st_mem", folder / "st_mem.pth", (2250, 250.0), {}


class _LeadsEndToEnd(torch.nn.Module):
    """HuBERT-ECG's input: `[B, 12, T]` laid lead after lead into `[B, 12·T]`, as its dataset
    does; returns the classifier's logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.reshape(len(x), -1)).logits


def _hubert_ecg(folder: pathlib.Path):
    config = hubert_ecg_torch.HuBERTECGClassificationConfig(
        num_labels=5,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        conv_dim=[512] * 5,
        conv_kernel=[10, 3, 3, 2, 2],
        conv_stride=[4, 2, 2, 2, 2],
    )  # fmt: skip (HuBERT-ECG base: code/pretrain.py sizes, `--downsampling_factor=5` convs)
    model = hubert_ecg_torch.HuBERTECGForClassification(config).eval()
    model.save_pretrained(folder / "hf")
    return _LeadsEndToEnd(model), "hubert_ecg", folder / "hf", (500, 100.0), {}


def _ecg_fm(folder: pathlib.Path):
    pretrained = fairseq_signals_w2v.Wav2Vec2CMSCConfig(
        final_dim=256, quantize_targets=True, apply_mask=True
    )  # the rest: fairseq-signals defaults, which are ECG-FM's (12 × 768, [(256, 2, 2)] * 4)
    config = fairseq_signals_w2v.ECGTransformerClassificationConfig(num_labels=17)
    model = fairseq_signals_w2v.ECGTransformerClassificationModel.build_model(config, pretrained)
    fairseq_signals_w2v.save_like_fairseq_signals(
        model, folder / "ecg_fm.pt",
        fairseq_signals_w2v.to_fairseq_dict(config, "ecg_transformer_classifier"),
    )  # fmt: skip
    return model, "ecg_fm", folder / "ecg_fm.pt", (2500, 500.0), {}


MODELS = {"ribeiro_torch (ResNet1d)": _ribeiro, "ecgfounder (Net1D)": _ecgfounder,
          "st_mem (ViT-B)": _st_mem, "hubert_ecg (base)": _hubert_ecg,
          "ecg_fm (wav2vec 2.0)": _ecg_fm}  # fmt: skip


def _time(fn, x) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"python {platform.python_version()}, jax {jax.__version__}, torch {torch.__version__}")
    print(f"cpu: {os.cpu_count()} logical cores; load average {os.getloadavg()}")
    print(f"batch {args.batch_size}, {args.rounds} rounds, torch threads {args.threads}\n")
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder = pathlib.Path(tmp)
            model, fmt, path, (length, rate), options = MODELS[name](folder)
            model.eval()
            encoder = load_encoder(import_checkpoint(fmt, path, folder / "enc", **options))
        x = np.random.default_rng(0).normal(size=(args.batch_size, length, 12)).astype(np.float32)
        x_torch = torch.from_numpy(x).transpose(1, 2).contiguous()

        def run_torch(batch, model=model):
            with torch.no_grad():
                return model(batch).numpy()

        def run_jax(batch, encoder=encoder, rate=rate):
            out = encoder._run(encoder.module, batch)
            return np.asarray(jax.block_until_ready(encoder.head(out, train=False)))

        x_jax = jax.numpy.asarray(x)
        reference, ours = run_torch(x_torch), run_jax(x_jax)  # warm-up and compile
        error = float(np.abs(ours - reference).max() / np.abs(reference).max())
        torch_s, jax_s = [], []
        for _ in range(args.rounds):
            torch_s.append(_time(run_torch, x_torch))
            jax_s.append(_time(run_jax, x_jax))
        ratios = [t / j for t, j in zip(torch_s, jax_s, strict=True)]
        params = sum(p.numel() for p in model.parameters())
        rows.append((name, params, length, statistics.median(torch_s), statistics.median(jax_s),
                     statistics.median(ratios), min(ratios), max(ratios), error))  # fmt: skip
        print(f"done {name}", flush=True)
    print("\n| model | parameters | input | PyTorch eager s/batch | ecgfm JAX s/batch | "
          "PyTorch / JAX, median [range] of rounds | max rel. diff of outputs |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, params, length, t, j, ratio, low, high, error in rows:
        print(f"| {name} | {params / 1e6:.1f} M | {length} × 12 | {t:.3f} | {j:.3f} | "
              f"{ratio:.2f} [{low:.2f}, {high:.2f}] | {error:.1e} |")  # fmt: skip
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
