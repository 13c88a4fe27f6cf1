"""The PyTorch twin in benchmarks/ trains the same architecture as ecgfm's Ribeiro ResNet.

A speed ratio between frameworks means something only if both run the same layers: same
parameter count, same parameter shapes (PyTorch stores conv kernels [C_out, C_in, k], Flax
[k, C_in, C_out]), and the same output length under "same" padding. Needs the `bench` extra.
"""

import importlib.util
import math
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from ecgfm.models import build_model

torch = pytest.importorskip("torch")

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _load_twin():
    spec = importlib.util.spec_from_file_location("torch_ribeiro", BENCHMARKS / "torch_ribeiro.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


twin = _load_twin()


def _jax_param_sizes(hparams: dict, num_classes: int) -> list[int]:
    # Shapes only: building the paper's model eagerly costs ~30 s of initialisation on CPU.
    model = nnx.eval_shape(lambda: build_model("ribeiro_resnet", hparams, num_classes, nnx.Rngs(0)))
    return sorted(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _torch_param_sizes(model) -> list[int]:
    return sorted(p.numel() for p in model.parameters())


def test_paper_model_has_the_same_parameters_in_both_frameworks():
    sizes = _torch_param_sizes(twin.RibeiroResNetTorch(6))
    # Ribeiro et al.: 6,387,456 conv weights + 3,728 BatchNorm scales/shifts + 6 × 5,121 head.
    assert sum(sizes) == 6_387_456 + 3_728 + 6 * 5_121 == 6_421_910
    assert sizes == _jax_param_sizes({}, 6)


def test_small_model_with_odd_length_matches_and_rounds_lengths_up():
    hparams = {"widths": (8, 16, 24), "kernel_size": 7, "input_length": 1000}
    model = twin.RibeiroResNetTorch(3, widths=(8, 16, 24), kernel_size=7, input_length=1000)
    assert _torch_param_sizes(model) == _jax_param_sizes(hparams, 3)
    # "same" padding: 1000 → ceil(1000/4) = 250 → ceil(250/4) = 63 positions of width 24.
    assert model.dense.in_features == 63 * 24
    model.eval()
    with torch.no_grad():
        logits = model(torch.zeros(2, 12, 1000))
    assert logits.shape == (2, 3)


@pytest.mark.parametrize(
    ("length", "kernel", "stride", "expected"),
    [(4096, 16, 1, (7, 8)), (4096, 16, 4, (6, 6)), (10, 3, 4, (0, 1)), (8, 1, 1, (0, 0))],
)
def test_same_padding_puts_the_extra_sample_on_the_right(length, kernel, stride, expected):
    assert twin.same_padding(length, kernel, stride) == expected


@pytest.mark.parametrize(("length", "kernel", "stride"), [(37, 6, 4), (40, 16, 1), (41, 16, 4)])
def test_same_convolution_equals_flax_same_convolution(length, kernel, stride):
    rng = np.random.default_rng(0)
    x_BTC = rng.standard_normal((2, length, 3)).astype(np.float32)
    flax_conv = nnx.Conv(
        3, 5, (kernel,), strides=(stride,), padding="SAME", use_bias=False, rngs=nnx.Rngs(0)
    )
    kernel_KIO = np.asarray(flax_conv.kernel[...])
    torch_conv = twin.SameConv1d(3, 5, kernel, stride)
    with torch.no_grad():
        torch_conv.weight.copy_(torch.from_numpy(kernel_KIO.transpose(2, 1, 0).copy()))
        out_BCT = torch_conv(torch.from_numpy(x_BTC.transpose(0, 2, 1).copy())).numpy()
    assert out_BCT.shape[-1] == math.ceil(length / stride)
    np.testing.assert_allclose(out_BCT.transpose(0, 2, 1), flax_conv(x_BTC), atol=1e-5)
