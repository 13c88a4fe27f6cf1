"""S4D: a stack of diagonal structured state-space layers, the encoder of ECG-CPC.

Gu, Goel, Gupta & Ré, "On the Parameterization and Initialization of Diagonal State Space
Models", NeurIPS 2022 (S4D); reference code state-spaces/s4 `models/s4/s4d.py` (the minimal
layer) and `src/models/sequence/kernels/ssm.py` (`SSMKernelDiag`: ZOH discretisation, the
S4D-Lin/S4D-Inv initialisations of `kernels/dplr.py`, the two-sided kernel of `fftconv.py`).
The network around the layers is the ECG S4 model of Mehari & Strodthoff (tmehari/ssm_ecg
`dl_models/modified_s4_model.py`), the supervised baseline and the CPC context network of the
ECG foundation-model benchmark (Al-Masud, Lopez Alcaraz & Strodthoff, ICLR 2026).

Each layer holds H = `width` independent single-input single-output SSMs with state size
N = `state_size`, kept as N/2 complex conjugate pairs (only their real part is output). For
channel h (subscripts dropped), the paper's equations, written out because we could not check
its numbering:

- continuous SSM:   x'(t) = A x(t) + B u(t),   y(t) = Re(C x(t)) + D u(t),  A = diag(λ_n)
- parameterisation: λ_n = −exp(log_A_real_n) + i · A_imag_n,  Δ = exp(log_dt)
- ZOH discretisation (diagonal A):  Ā_n = exp(Δ λ_n),  B̄_n = (exp(Δ λ_n) − 1) / λ_n · B_n
- recurrence:       x_t = Ā x_{t−1} + B̄ u_t,   y_t = 2 Re(Σ_n C_n x_{t,n}) + D u_t
- kernel (Vandermonde product over the conjugate pairs, length L):
                    K_ℓ = 2 Re(Σ_n C_n B̄_n Ā_n^ℓ),  ℓ = 0 … L−1;   y = K ∗ u + D u
- initialisation:   log_A_real_n = log ½ (real part −½);  B_n = 1;  C_n ~ CN(0, 1);
                    log Δ ~ U(log dt_min, log dt_max) per channel (0.001, 0.1);  D ~ N(0, 1);
                    S4D-Lin:  A_imag_n = π n;   S4D-Inv:  A_imag_n = (N/π)(N/(2n+1) − 1),
                    n = 0 … N/2 − 1.

The convolution y = K ∗ u is computed with an FFT of length 2L (O(L log L), the default) or,
with `conv="scan"`, by running the recurrence as a parallel (associative) scan; both give the
same result (tested against a step-by-step loop). On the 2-core CPU the FFT was faster at
every length we measured (benchmarks/README.md, "S4D convolution: FFT vs parallel scan").

Bidirectional layers (`bidirectional=True`) add a second, anti-causal kernel with its own C
(A, B and Δ are shared, as in the reference's `channels *= 2`): y_t also receives
Σ_ℓ K'_ℓ u_{t+1+ℓ}. The reference builds this by padding the flipped second kernel in front
of the first; its comment calls the resulting one-sample shift a deliberate off-by-one, and we
keep it (the anti-causal half starts at u_{t+1}, so the two halves never both see u_t).

One layer: u → K ∗ u + D u → GELU → dropout → dense H→2H → GLU (the reference's
`postact='glu'`). The network: optional pointwise stem (dense → BatchNorm → ReLU per entry of
`stem_widths`: Mehari & Strodthoff's "fc encoder" of their CPC), a dense input projection to
H, `depth` residual blocks `x ← LayerNorm(x + dropout(layer(x)))` (post-norm, the
reference's default), and the mean over time as the pooled embedding. Every operation but the
SSM convolution acts on each time step alone, so with `bidirectional=False` the encoder is
causal: features at t depend only on samples ≤ t (what CPC's context network needs). There is
no downsampling and no fixed input length: any T trains and embeds (a new T compiles anew).

Where ecgfm differs from the references, and why:
- S4D, not the DPLR S4 (HiPPO-LegS + low rank) that Mehari & Strodthoff's ECG models use:
  the issue asks for S4D, whose kernel is a plain Vandermonde product (no Cauchy kernel).
- Dropout after the activation and after each layer is tied over time (whole channels are
  dropped per example), what the reference means by `DropoutNd`/`Dropout2d` on `(B, H, L)`.
- The S4 examples train A, B and Δ at a capped learning rate (`lr=min(0.001, lr)`) and
  without weight decay; ecgfm's optimizer has one learning rate per parameter group, so they
  share the run's learning rate (still without weight decay: see `ecgfm.optim`). C is decayed
  like a dense kernel, as there; D is not (ecgfm decays only weight matrices; the reference's
  optimizer decays it too).
- Dense layers use Flax's default initialisers (LeCun normal, zero bias), not PyTorch's.
- The SSM convolution is computed in float32 even when `dtype` is bfloat16 (the kernel's
  powers Ā^ℓ underflow and lose precision in bf16); the dense layers use `dtype`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecgfm.models.heads import EncoderOutput

_INITS = ("lin", "inv")
_CONVS = ("fft", "scan")


@dataclasses.dataclass(frozen=True)
class S4Config:
    """Hyperparameters of the S4D encoder; the defaults are the ECG benchmark's supervised S4.

    The benchmark's `run.sh` runs its S4 baseline with `--s4-n 8 --s4-h 512 --s4-layers 4`
    on 2.5 s at 100 Hz, and its `main_lite.py` builds it with `bidirectional=True` (read in the
    fork mkeoliya/ecg-fm-benchmarking; AI4HealthUOL's repository itself was not readable
    here); the dropout of 0.2 and the linear input encoder are the defaults of the `S4Model`
    of Mehari & Strodthoff's code.

    Attributes:
      width: H, the channels of every S4D layer (the reference's `d_model`).
      depth: the number of residual S4D blocks.
      state_size: N, the state size per channel (`d_state`); even, kept as N/2 complex pairs.
      bidirectional: a causal and an anti-causal kernel per layer; False makes the encoder
        causal (CPC's context network).
      stem_widths: widths of the pointwise dense → BatchNorm → ReLU layers before the input
        projection; () for the linear input encoder, (512,) * 4 for the CPC "fc encoder".
      init: "lin" (S4D-Lin) or "inv" (S4D-Inv) imaginary parts of A.
      dt_min, dt_max: the range of the log-uniform initial step sizes Δ.
      dropout: rate after each layer's activation and after each layer (tied over time).
      head_dropout: before the linear head (used by `build_model`).
      conv: "fft" or "scan": how K ∗ u is computed (same result).
      num_leads: C of the input `[B, T, C]`.
      bn_momentum: of the stem's BatchNorm (PyTorch's default 0.1 is Flax's 0.9).
      dtype: compute dtype of the dense layers ("bfloat16" for mixed precision);
        param_dtype: parameter dtype (the SSM parameters are always float32).
    """

    width: int = 512
    depth: int = 4
    state_size: int = 8
    bidirectional: bool = True
    stem_widths: tuple[int, ...] = ()
    init: str = "lin"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dropout: float = 0.2
    head_dropout: float = 0.0
    conv: str = "fft"
    num_leads: int = 12
    bn_momentum: float = 0.9
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.state_size < 2 or self.state_size % 2:
            raise ValueError(f"state_size must be even and at least 2, got {self.state_size}")
        if self.init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {self.init!r}")
        if self.conv not in _CONVS:
            raise ValueError(f"conv must be one of {_CONVS}, got {self.conv!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    @property
    def embedding_dim(self) -> int:
        """D of `embedding_BD` (and of `features_BND`)."""
        return self.width

    @property
    def latent_dim(self) -> int:
        """P of the stem's per-time-step latents (the input width without a stem)."""
        return self.stem_widths[-1] if self.stem_widths else self.num_leads


def imaginary_init(init: str, state_size: int) -> np.ndarray:
    """`[N/2]` imaginary parts of A: S4D-Lin π n, or S4D-Inv (N/π)(N/(2n+1) − 1)."""
    n = np.arange(state_size // 2, dtype=np.float64)
    if init == "lin":
        return np.pi * n
    if init == "inv":
        return state_size / np.pi * (state_size / (2 * n + 1) - 1)
    raise ValueError(f"init must be one of {_INITS}, got {init!r}")


def as_complex(pair: jax.Array) -> jax.Array:
    """A complex array from one whose last axis holds (real, imaginary)."""
    return jax.lax.complex(pair[..., 0], pair[..., 1])


def discretize(
    log_dt_H: jax.Array, log_A_real_HN: jax.Array, A_imag_HN: jax.Array, B_HN: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """ZOH: (Δλ `[H, N/2]`, B̄ `[H, N/2]`), so that Ā = exp(Δλ) and B̄ = (Ā − 1)/λ · B."""
    A_HN = jax.lax.complex(-jnp.exp(log_A_real_HN), A_imag_HN)
    dtA_HN = jnp.exp(log_dt_H)[:, None] * A_HN
    return dtA_HN, (jnp.exp(dtA_HN) - 1.0) / A_HN * B_HN


def ssm_kernel(dtA_HN: jax.Array, dB_HN: jax.Array, C_cHN: jax.Array, length: int) -> jax.Array:
    """`[c, H, L]` float32 kernels K_ℓ = 2 Re(Σ_n C_n B̄_n exp(Δλ_n ℓ)): a Vandermonde product."""
    vandermonde_HNL = jnp.exp(dtA_HN[..., None] * jnp.arange(length, dtype=jnp.float32))
    return 2.0 * jnp.einsum("chn,hnl->chl", C_cHN * dB_HN, vandermonde_HNL).real


def fft_conv(u_BTH: jax.Array, K_cHL: jax.Array) -> jax.Array:
    """`[B, T, H]` K ∗ u (float32) with an FFT of length 2T; c = 2 adds the anti-causal kernel.

    With two kernels, the second is laid out in front of the first after flipping (the
    reference's `F.pad(k1.flip(-1), (L, 0))`), so output t receives Σ_ℓ K1_ℓ u_{t+1+ℓ}.
    """
    length = u_BTH.shape[1]
    kernel_HL = K_cHL[0]
    if K_cHL.shape[0] == 2:
        kernel_HL = jnp.pad(kernel_HL, ((0, 0), (0, length))) + jnp.pad(
            K_cHL[1, :, ::-1], ((0, 0), (length, 0))
        )
    kernel_f = jnp.fft.rfft(kernel_HL, n=2 * length, axis=-1)
    u_f = jnp.fft.rfft(u_BTH.astype(jnp.float32), n=2 * length, axis=1)
    return jnp.fft.irfft(u_f * kernel_f.T[None], n=2 * length, axis=1)[:, :length]


def _causal_scan(u_BTH: jax.Array, dtA_HN: jax.Array, dB_HN: jax.Array, C_HN: jax.Array):
    """Σ_{ℓ≤t} K_ℓ u_{t−ℓ} by an associative scan of x_t = Ā x_{t−1} + B̄ u_t."""
    dA_HN = jnp.exp(dtA_HN)
    increments = u_BTH.astype(jnp.float32)[..., None] * dB_HN  # [B, T, H, N/2]
    decays = jnp.broadcast_to(dA_HN, increments.shape)

    def combine(first, second):
        a1, b1 = first
        a2, b2 = second
        return a1 * a2, a2 * b1 + b2

    _, states = jax.lax.associative_scan(combine, (decays, increments), axis=1)
    return 2.0 * jnp.einsum("bthn,hn->bth", states, C_HN).real


def scan_conv(u_BTH: jax.Array, dtA_HN: jax.Array, dB_HN: jax.Array, C_cHN: jax.Array):
    """What `fft_conv` computes, by running the recurrence as a parallel scan (float32)."""
    y = _causal_scan(u_BTH, dtA_HN, dB_HN, C_cHN[0])
    if C_cHN.shape[0] == 2:
        # The anti-causal half: the causal scan over the reversed signal, shifted by one.
        backward = _causal_scan(u_BTH[:, ::-1], dtA_HN, dB_HN, C_cHN[1])[:, ::-1]
        y = y + jnp.pad(backward[:, 1:], ((0, 0), (0, 1), (0, 0)))
    return y


def _dense(in_features: int, out_features: int, axes, config: S4Config, rngs, use_bias=True):
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_metadata={"logical_axes": axes},
        bias_metadata={"logical_axes": axes[-1:]},
        rngs=rngs,
    )


class S4D(nnx.Module):
    """One S4D layer: `[B, T, H]` → `[B, T, H]` (see the module docstring)."""

    def __init__(self, config: S4Config, *, rngs: nnx.Rngs):
        self.config = config
        h, half = config.width, config.state_size // 2
        channels = 2 if config.bidirectional else 1
        lo, hi = math.log(config.dt_min), math.log(config.dt_max)
        self.log_dt = nnx.Param(
            jax.random.uniform(rngs.params(), (h,), jnp.float32, lo, hi), logical_axes=("embed",)
        )
        state_axes = ("embed", "ssm_state")
        self.log_A_real = nnx.Param(
            jnp.full((h, half), math.log(0.5), jnp.float32), logical_axes=state_axes
        )
        imag = imaginary_init(config.init, config.state_size).astype(np.float32)
        self.A_imag = nnx.Param(jnp.tile(jnp.asarray(imag), (h, 1)), logical_axes=state_axes)
        # Complex B and C as (real, imaginary) pairs on the last axis; C ~ CN(0, 1).
        self.B = nnx.Param(
            jnp.zeros((h, half, 2), jnp.float32).at[..., 0].set(1.0),
            logical_axes=(*state_axes, None),
        )
        self.C = nnx.Param(
            jax.random.normal(rngs.params(), (channels, h, half, 2)) * math.sqrt(0.5),
            logical_axes=(None, *state_axes, None),
        )
        self.D = nnx.Param(jax.random.normal(rngs.params(), (h,)), logical_axes=("embed",))
        self.dropout = nnx.Dropout(config.dropout, broadcast_dims=(1,))
        self.output = _dense(h, 2 * h, ("embed", "mlp"), config, rngs)

    def discretized(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(Δλ `[H, N/2]`, B̄ `[H, N/2]`, C `[c, H, N/2]`) of the current parameters."""
        dtA, dB = discretize(
            self.log_dt[...], self.log_A_real[...], self.A_imag[...], as_complex(self.B[...])
        )
        return dtA, dB, as_complex(self.C[...])

    def kernel(self, length: int) -> jax.Array:
        """`[c, H, L]` float32 convolution kernels for sequences of `length` samples."""
        return ssm_kernel(*self.discretized(), length)

    def convolve(self, u_BTH: jax.Array) -> jax.Array:
        """K ∗ u + D u in float32 (the linear SSM, before the activation)."""
        if self.config.conv == "fft":
            y = fft_conv(u_BTH, self.kernel(u_BTH.shape[1]))
        else:
            y = scan_conv(u_BTH, *self.discretized())
        return y + u_BTH.astype(jnp.float32) * self.D[...]

    def __call__(self, u_BTH: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        """`[B, T, H]` → `[B, T, H]` in the compute dtype."""
        y = nnx.gelu(self.convolve(u_BTH), approximate=False).astype(u_BTH.dtype)
        y = self.dropout(y, deterministic=not train, rngs=rngs)
        return nnx.glu(self.output(y), axis=-1)


class S4Encoder(nnx.Module):
    """S4D encoder: `signal [B, T, C]` → features `[B, T, width]` (no downsampling).

    `features_BND` are the last block's outputs, one per sample; `embedding_BD` is their mean
    over time (the benchmark's pooling for its linear evaluation). `latents` and
    `contextualize` split the forward pass for CPC: the stem's per-sample latents are the
    targets, the S4D stack (causal) is the context network.
    """

    def __init__(self, config: S4Config, *, rngs: nnx.Rngs):
        self.config = config
        widths = (config.num_leads, *config.stem_widths)
        stem, norms = [], []
        for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            axes = ("leads", "embed") if i == 0 else ("embed", "mlp")
            stem.append(_dense(c_in, c_out, axes, config, rngs, use_bias=False))
            norms.append(
                nnx.BatchNorm(
                    c_out,
                    momentum=config.bn_momentum,
                    dtype=jnp.dtype(config.dtype),
                    param_dtype=jnp.dtype(config.param_dtype),
                    rngs=rngs,
                )
            )
        self.stem = nnx.List(stem)
        self.stem_norms = nnx.List(norms)
        in_axes = ("embed", "mlp") if config.stem_widths else ("leads", "embed")
        self.input_proj = _dense(widths[-1], config.width, in_axes, config, rngs)
        self.layers = nnx.List([S4D(config, rngs=rngs) for _ in range(config.depth)])
        self.norms = nnx.List(
            [
                nnx.LayerNorm(
                    config.width,
                    dtype=jnp.dtype(config.dtype),
                    param_dtype=jnp.dtype(config.param_dtype),
                    rngs=rngs,
                )
                for _ in range(config.depth)
            ]
        )
        self.dropout = nnx.Dropout(config.dropout, broadcast_dims=(1,))

    @property
    def embedding_dim(self) -> int:
        """D of `embedding_BD`."""
        return self.config.width

    def latents(
        self, signal_BTC: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """`[B, T, P]` per-sample latents: the stem's output (the signal itself without one)."""
        del rngs  # the stem has no dropout
        b, t, c = signal_BTC.shape
        if c != self.config.num_leads:
            raise ValueError(
                f"expected {self.config.num_leads} leads, got signal shape {[b, t, c]}"
            )
        x = signal_BTC.astype(jnp.dtype(self.config.dtype))
        for dense, norm in zip(self.stem, self.stem_norms, strict=True):
            x = nnx.relu(norm(dense(x), use_running_average=not train))
        return x

    def contextualize(
        self, latents_BTP: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """`[B, T, P]` → `[B, T, width]`: input projection and the residual S4D blocks."""
        x = self.input_proj(latents_BTP)
        for layer, norm in zip(self.layers, self.norms, strict=True):
            z = self.dropout(layer(x, train=train, rngs=rngs), deterministic=not train, rngs=rngs)
            x = norm(x + z)
        return x

    def __call__(
        self, signal_BTC: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> EncoderOutput:
        """Per-sample features and their mean; `rngs` needs a "dropout" stream when `train`."""
        latents = self.latents(signal_BTC, train=train, rngs=rngs)
        features = self.contextualize(latents, train=train, rngs=rngs)
        return EncoderOutput(features_BND=features, embedding_BD=jnp.mean(features, axis=1))
