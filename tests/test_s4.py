"""The S4D encoder: its kernel against hand-computed values and the step-by-step recurrence,
the S4D initialisations, causality, shapes on any length, parameter counts, and sharding."""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ecgfm import sharding
from ecgfm.models import S4Config, S4Encoder, build_encoder, build_model
from ecgfm.models.s4 import S4D, as_complex, discretize, imaginary_init, ssm_kernel
from ecgfm.optim import weight_decay_mask

TINY = {"width": 16, "depth": 2, "state_size": 8, "dropout": 0.0}


def count(module: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def kernel_of(log_dt, log_A_real, A_imag, B, C, length):
    dtA, dB = discretize(
        jnp.asarray([log_dt]), jnp.asarray([[log_A_real]]), jnp.asarray([[A_imag]]), B
    )
    return np.asarray(ssm_kernel(dtA, dB, jnp.asarray([[[C]]], jnp.complex64), length))[0, 0]


def test_kernel_known_answer_for_a_decaying_real_mode():
    # λ = −½, Δ = 2 ln 2: Ā = e^(−ln 2) = ½ and B̄ = (Ā − 1)/λ = 1, so K_ℓ = 2 Re(C B̄ Ā^ℓ) = 2^(1−ℓ).
    got = kernel_of(math.log(2 * math.log(2)), math.log(0.5), 0.0, 1.0 + 0j, 1.0 + 0j, 5)
    np.testing.assert_allclose(got, [2.0, 1.0, 0.5, 0.25, 0.125], rtol=1e-5)


def test_kernel_known_answer_for_an_oscillating_mode():
    # Δ = 1, λ = −ln 2 + iπ/2: Ā = ½ e^(iπ/2) = i/2, a quarter turn per sample. With C = 1/B̄,
    # K_ℓ = 2 Re((i/2)^ℓ) = 2, 0, −½, 0, ⅛.
    a = -math.log(2) + 0.5j * math.pi
    b_bar = (np.exp(a) - 1) / a
    got = kernel_of(0.0, math.log(math.log(2)), math.pi / 2, 1.0 + 0j, 1 / b_bar, 5)
    np.testing.assert_allclose(got, [2.0, 0.0, -0.5, 0.0, 0.125], atol=1e-6)


def test_initialisation_is_s4d_lin_or_s4d_inv():
    np.testing.assert_allclose(imaginary_init("lin", 8), np.pi * np.arange(4))
    # S4D-Inv: (N/π)(N/(2n+1) − 1) with N = 4: 12/π and 4/(3π).
    np.testing.assert_allclose(imaginary_init("inv", 4), [12 / np.pi, 4 / (3 * np.pi)])
    layer = nnx.jit(lambda: S4D(S4Config(width=64, state_size=8, init="inv"), rngs=nnx.Rngs(0)))()
    np.testing.assert_allclose(-np.exp(layer.log_A_real[...]), -0.5)  # real part of A
    np.testing.assert_allclose(layer.A_imag[...], np.tile(imaginary_init("inv", 8), (64, 1)))
    np.testing.assert_array_equal(as_complex(layer.B[...]), np.ones((64, 4)))
    dt = np.exp(layer.log_dt[...])
    assert dt.min() >= 0.001 and dt.max() <= 0.1 and dt.max() / dt.min() > 10  # log-uniform
    c = np.asarray(as_complex(layer.C[...]))
    assert c.shape == (2, 64, 4)  # one C per direction
    assert np.mean(np.abs(c) ** 2) == pytest.approx(1.0, rel=0.2)  # C ~ CN(0, 1)


def random_layer(bidirectional: bool, conv: str) -> S4D:
    """A small layer whose A, B and Δ are moved away from their (structured) init."""
    config = S4Config(width=3, state_size=4, bidirectional=bidirectional, conv=conv, dropout=0.0)
    layer = S4D(config, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(2)
    layer.log_A_real[...] += 0.3 * rng.normal(size=layer.log_A_real.shape)
    layer.A_imag[...] += rng.normal(size=layer.A_imag.shape)
    layer.B[...] += 0.5 * rng.normal(size=layer.B.shape)
    layer.log_dt[...] = np.log([0.05, 0.3, 1.0])
    return layer


def recurrence(u_TH, dA_HN, dB_HN, C_HN):
    """The discretised SSM stepped sample by sample: x_t = Ā x_{t−1} + B̄ u_t, y_t = 2 Re(C x_t)."""
    x = np.zeros(dA_HN.shape, np.complex128)
    y = np.zeros(u_TH.shape)
    for t in range(len(u_TH)):
        x = dA_HN * x + dB_HN * u_TH[t][:, None]
        y[t] = 2 * np.real(np.sum(C_HN * x, axis=-1))
    return y


@pytest.mark.parametrize("conv", ["fft", "scan"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
def test_convolution_equals_the_step_by_step_recurrence(bidirectional, conv):
    layer = random_layer(bidirectional, conv)
    u = np.random.default_rng(3).normal(size=(2, 40, 3))
    got = np.asarray(nnx.jit(lambda m, x: m.convolve(x))(layer, jnp.asarray(u, jnp.float32)))
    dtA, dB, C = (np.asarray(x, np.complex128) for x in nnx.jit(lambda m: m.discretized())(layer))
    dA, D = np.exp(dtA), np.asarray(layer.D[...], np.float64)
    for b in range(2):
        expected = recurrence(u[b], dA, dB, C[0]) + D * u[b]
        if bidirectional:
            # The anti-causal kernel sees u_{t+1}, u_{t+2}, …: the recurrence over the reversed
            # signal, read back one sample later (the reference's deliberate off-by-one).
            backward = recurrence(u[b, ::-1], dA, dB, C[1])[::-1]
            expected[:-1] += backward[1:]
        np.testing.assert_allclose(got[b], expected, rtol=2e-4, atol=2e-4)


@pytest.fixture(scope="module")
def encoders() -> dict[bool, S4Encoder]:
    """Tiny encoders with a stem, causal (False) and bidirectional (True), built once."""
    return {
        bidirectional: nnx.jit(
            lambda b=bidirectional: S4Encoder(
                S4Config(**TINY, bidirectional=b, stem_widths=(8,)), rngs=nnx.Rngs(0)
            )
        )()
        for bidirectional in (False, True)
    }


def forward(encoder: S4Encoder):
    graphdef, state = nnx.split(encoder)
    run = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, train=False))
    return lambda x: run(state, x)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
def test_features_at_t_see_the_future_only_when_bidirectional(bidirectional, encoders):
    run = forward(encoders[bidirectional])
    x = jax.random.normal(jax.random.key(0), (2, 60, 12))
    changed = x.at[:, 30].add(1.0)
    # Up to the FFT's float32 round-off (~1e-7), which reaches every output position.
    change_T = np.abs(np.asarray(run(x).features_BND - run(changed).features_BND)).max(axis=(0, 2))
    assert change_T[30:].min() > 1e-3
    assert (change_T[:30].max() > 1e-3) == bidirectional
    if not bidirectional:
        assert change_T[:30].max() < 1e-5


def test_any_length_trains_and_embeds(encoders):
    encoder = encoders[False]
    graphdef, state = nnx.split(encoder)
    for length in (1, 7, 250, 4096):
        out = jax.eval_shape(
            lambda s, x: nnx.merge(graphdef, s)(x, train=False),
            state,
            jax.ShapeDtypeStruct((3, length, 12), jnp.float32),
        )
        assert out.features_BND.shape == (3, length, 16)
        assert out.embedding_BD.shape == (3, 16)
    # The same weights on a second length; the embedding is the features' mean over time.
    out = forward(encoder)(jax.random.normal(jax.random.key(1), (2, 123, 12)))
    assert np.isfinite(out.features_BND).all()
    np.testing.assert_allclose(out.embedding_BD, out.features_BND.mean(axis=1), rtol=1e-5)


def s4_reference_count(width, depth, state_size, leads, stem, bidirectional, num_classes):
    """Parameters counted by hand: stem dense (no bias) + BN scale/bias, input projection,
    per layer log_dt, A (real, imag), B and C (complex), D, GLU dense H → 2H, LayerNorm."""
    widths = (leads, *stem)
    total = sum(a * b + 2 * b for a, b in itertools.pairwise(widths))
    total += widths[-1] * width + width
    half, directions = state_size // 2, 2 if bidirectional else 1
    ssm = width + 2 * width * half + 2 * width * half + 2 * directions * width * half + width
    total += depth * (ssm + width * 2 * width + 2 * width + 2 * width)
    return total + width * num_classes + num_classes


@pytest.mark.parametrize(
    ("hparams", "expected"),
    [
        # The ECG benchmark's supervised S4 (d_model 512, d_state 8, 4 layers), 71 classes.
        ({}, 2_218_055),
        # ECG-CPC's shape: the fc encoder (4 × 512) and a causal S4D stack, 5 classes.
        ({"stem_widths": (512,) * 4, "bidirectional": False}, 3_220_485),
    ],
    ids=["benchmark_supervised", "cpc_encoder"],
)
def test_parameter_counts(hparams, expected):
    config = S4Config(**hparams)
    num_classes = 71 if not hparams else 5
    model = nnx.eval_shape(lambda: build_model("s4", hparams, num_classes, nnx.Rngs(0)))
    reference = s4_reference_count(
        config.width, config.depth, config.state_size, 12, config.stem_widths,
        config.bidirectional, num_classes,
    )  # fmt: skip
    assert count(model) == reference == expected


def test_every_parameter_has_a_weight_decay_rule_and_ssm_dynamics_are_not_decayed():
    model = nnx.eval_shape(lambda: build_model("s4", {**TINY, "stem_widths": (8,)}, 3, nnx.Rngs(0)))
    mask = weight_decay_mask(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    layer = mask["encoder"]["layers"][0]
    assert layer["C"] and layer["output"]["kernel"]
    assert not any(layer[name] for name in ("log_dt", "log_A_real", "A_imag", "B", "D"))


def test_config_is_validated():
    with pytest.raises(ValueError, match="even"):
        S4Config(state_size=7)
    with pytest.raises(ValueError, match="init"):
        S4Config(init="legs")
    with pytest.raises(ValueError, match="conv"):
        S4Config(conv="cauchy")
    encoder = nnx.eval_shape(lambda: S4Encoder(S4Config(**TINY), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="12 leads"):
        jax.eval_shape(lambda x: encoder(x, train=False), jnp.zeros((1, 10, 8)))


def test_outputs_are_the_same_on_one_device_and_sharded_over_eight(encoders):
    graphdef, state = nnx.split(encoders[False])
    x = np.asarray(jax.random.normal(jax.random.key(1), (8, 64, 12)))

    def run(mesh):
        with jax.set_mesh(mesh):
            placed = jax.device_put(state, sharding.state_shardings(state, mesh))
            batch = jax.device_put(x, sharding.batch_sharding(mesh))
            out = jax.jit(
                lambda s, b: nnx.merge(graphdef, s)(b, train=False),
                out_shardings=NamedSharding(mesh, PartitionSpec()),
            )(placed, batch)
            return placed, np.asarray(out.features_BND)

    _, one = run(sharding.make_mesh(devices=jax.devices()[:1]))
    # 2-way data parallel × 4-way FSDP: the batch and the layers' channels are both split.
    placed, eight = run(sharding.make_mesh(data=2, fsdp=4))
    assert placed["layers"][0]["C"].sharding.spec == PartitionSpec(None, "fsdp", None, None)
    assert placed["layers"][0]["output"]["kernel"].sharding.spec == PartitionSpec("fsdp", None)
    np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters_and_close_features(encoders):
    config = {**TINY, "bidirectional": False, "stem_widths": (8,)}
    mixed = nnx.eval_shape(
        lambda: build_encoder("s4", {**config, "dtype": "bfloat16"}, rngs=nnx.Rngs(0))
    )
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(mixed, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    # The same float32 parameters, computed once in float32 and once in bfloat16.
    graph_full, state = nnx.split(encoders[False])
    graph_mixed = nnx.graphdef(mixed)

    @jax.jit
    def both(state, x):
        a = nnx.merge(graph_full, state)(x, train=False).embedding_BD
        return a, nnx.merge(graph_mixed, state)(x, train=False).embedding_BD

    reference, approx = both(state, jax.random.normal(jax.random.key(0), (2, 100, 12)))
    assert approx.dtype == jnp.bfloat16
    reference, approx = np.asarray(reference), np.asarray(approx, np.float32)
    assert np.abs(approx - reference).max() <= 0.05 * np.abs(reference).max()
    assert not np.array_equal(approx, reference)


@pytest.mark.slow
def test_smoke_s4_pretrains_exports_fine_tunes_and_is_benchmarked(tmp_path, capsys):
    from test_finetune import CONFIG, _toy_task

    from ecgfm.cli import main
    from ecgfm.config import load_config
    from ecgfm.data.code_test import write_code_test_set
    from ecgfm.data.synthetic import write_dataset
    from ecgfm.export import export_encoder, load_encoder
    from ecgfm.metrics import macro_auroc
    from ecgfm.models import ModelSpec
    from ecgfm.train import train_and_evaluate
    from ecgfm.transfer.finetune import FinetuneMethod, prepare_inputs

    config = load_config("experiments/configs/smoke_s4.py", [
        "train.steps=4", "train.eval_every=4", "train.checkpoint_every=4",
        "train.global_batch_size=8", "train.async_checkpoint=false", "data.synthetic_exams=32",
        "data.preprocessing.sampling_rate=100.0", "data.preprocessing.num_samples=250",
    ])  # fmt: skip
    final = train_and_evaluate(config, tmp_path / "run")
    assert np.isfinite(final["loss"]) and np.isfinite(final["val_macro_auroc"])
    exported = export_encoder(tmp_path / "run", tmp_path / "export")
    encoder = load_encoder(exported)
    assert encoder.config["model"] == "s4"
    # The toy task's 2.5 s windows at 100 Hz: a linear head on the fine-tuned S4 separates them.
    inputs = prepare_inputs(_toy_task(), encoder.preprocessing)
    model = ModelSpec.create("s4", encoder.config["hparams"])
    method = FinetuneMethod(inputs, model, CONFIG, exported)
    fit = method.fit(np.arange(48), seed=0)
    assert macro_auroc(inputs.labels["test"], fit.test_scores_NK) > 0.8
    # `ecgfm benchmark` takes it like any exported encoder (fine-tuning it is checked above).
    write_dataset("code", tmp_path / "code", num_records=80, seed=3)
    write_code_test_set(tmp_path / "code_test", num_exams=40, seed=4)
    assert main([
        "benchmark", "--encoder", str(exported), "--code-test", str(tmp_path / "code_test"),
        "--code-train", str(tmp_path / "code"), "--out", str(tmp_path / "bench"),
        "--modes", "linear", "--fractions", "100", "--seeds", "0", "--steps", "2",
        "--bootstrap", "20", "--no-baselines",
    ]) == 0  # fmt: skip
    assert capsys.readouterr().out.count("fitted in") == 1
    (row,) = json.loads((tmp_path / "bench" / "leaderboard.json").read_text())["rows"]
    assert (row["task"], row["mode"], row["method"]) == ("code_test", "linear", "pretrained")
    assert 0.0 <= row["macro_auroc"] <= 1.0
