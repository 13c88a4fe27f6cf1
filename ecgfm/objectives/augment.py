"""ECG augmentations as pure, jit-able JAX functions, applied on device with a key per sample.

Each augmentation maps `(key, signal_TC) -> signal_TC` for one exam ([T, 12] leads in
`ecgfm.data.record.LEADS` order); `augment_batch` vmaps a chain of them over `[B, T, 12]` with
one key per sample folded from the example's position in the *global* batch, so the result does
not depend on how the batch is split over devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Augmentation = Callable[[jax.Array, jax.Array], jax.Array]

# Kors regression matrix: 8 independent leads (I, II, V1–V6) -> vectorcardiogram (X, Y, Z).
# Kors et al., Eur Heart J 1990; the transform 3KG (Gopal et al. 2021) rotates and scales in.
KORS_8_TO_XYZ = np.array(
    [
        [0.38, -0.07, -0.13, 0.05, -0.01, 0.14, 0.06, 0.54],
        [-0.07, 0.93, 0.06, -0.02, -0.05, 0.06, -0.17, 0.13],
        [0.11, -0.23, -0.43, -0.06, -0.14, -0.20, -0.11, 0.31],
    ]
)
_XYZ_TO_8 = np.linalg.pinv(KORS_8_TO_XYZ)
_INDEPENDENT = np.array([0, 1, 6, 7, 8, 9, 10, 11])  # I, II, V1–V6 in LEADS order


def _limb_leads_from_8(leads8_T8: jax.Array) -> jax.Array:
    """`[T, 12]` from `[T, 8]` (I, II, V1–V6): III, aVR, aVL, aVF by Einthoven/Goldberger."""
    lead_I, lead_II = leads8_T8[:, 0], leads8_T8[:, 1]
    lead_III = lead_II - lead_I
    limb = jnp.stack(
        [lead_I, lead_II, lead_III, -(lead_I + lead_II) / 2, (lead_I - lead_III) / 2,
         (lead_II + lead_III) / 2], axis=1,
    )  # fmt: skip
    return jnp.concatenate([limb, leads8_T8[:, 2:]], axis=1)


def _rotation_xyz(angles_3: jax.Array) -> jax.Array:
    """3-D rotation matrix from angles (radians) about X, then Y, then Z."""
    cx, cy, cz = jnp.cos(angles_3)
    sx, sy, sz = jnp.sin(angles_3)
    rx = jnp.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = jnp.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = jnp.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def vcg_transform(signal_TC: jax.Array, matrix_33: jax.Array) -> jax.Array:
    """Applies a linear map in vectorcardiogram space and projects back to 12 leads."""
    vcg_T3 = signal_TC[:, _INDEPENDENT] @ KORS_8_TO_XYZ.T
    leads8 = (vcg_T3 @ matrix_33.T) @ _XYZ_TO_8.T
    return _limb_leads_from_8(leads8).astype(signal_TC.dtype)


def three_kg(max_angle_deg: float = 45.0, max_scale: float = 1.5) -> Augmentation:
    """3KG: random rotation (±max_angle per axis) and scaling (1/s..s per axis) of the VCG."""

    def apply(key: jax.Array, signal_TC: jax.Array) -> jax.Array:
        k_angle, k_scale = jax.random.split(key)
        limit = np.deg2rad(max_angle_deg)
        angles = jax.random.uniform(k_angle, (3,), minval=-limit, maxval=limit)
        log_s = jax.random.uniform(k_scale, (3,), minval=-1, maxval=1) * np.log(max_scale)
        return vcg_transform(signal_TC, _rotation_xyz(angles) @ jnp.diag(jnp.exp(log_s)))

    return apply


def random_crop_resize(min_fraction: float = 0.5) -> Augmentation:
    """Crops a random window of ≥ min_fraction of the signal and stretches it back to T."""

    def apply(key: jax.Array, signal_TC: jax.Array) -> jax.Array:
        t = signal_TC.shape[0]
        k_len, k_start = jax.random.split(key)
        length = jax.random.uniform(k_len, minval=min_fraction, maxval=1.0) * (t - 1)
        start = jax.random.uniform(k_start) * (t - 1 - length)
        positions = start + jnp.linspace(0.0, 1.0, t) * length
        grid = jnp.arange(t, dtype=positions.dtype)
        return jax.vmap(lambda lead: jnp.interp(positions, grid, lead), in_axes=1, out_axes=1)(
            signal_TC
        )

    return apply


def amplitude_scale(sigma: float = 0.2) -> Augmentation:
    """Multiplies each lead by exp(N(0, sigma)): electrode gain and placement differences."""

    def apply(key: jax.Array, signal_TC: jax.Array) -> jax.Array:
        return signal_TC * jnp.exp(sigma * jax.random.normal(key, (signal_TC.shape[1],)))

    return apply


def gaussian_noise(std_mv: float = 0.05) -> Augmentation:
    """Adds white Gaussian noise of `std_mv` millivolts."""

    def apply(key: jax.Array, signal_TC: jax.Array) -> jax.Array:
        return signal_TC + std_mv * jax.random.normal(key, signal_TC.shape, signal_TC.dtype)

    return apply


def emg_noise(std_mv: float = 0.05, sampling_rate: float = 400.0) -> Augmentation:
    """Muscle artefact: broadband noise in bursts (a random 0.2–1 s envelope per lead)."""

    def apply(key: jax.Array, signal_TC: jax.Array) -> jax.Array:
        k_noise, k_start, k_len = jax.random.split(key, 3)
        t, c = signal_TC.shape
        burst = jax.random.uniform(k_len, (c,), minval=0.2, maxval=1.0) * sampling_rate
        start = jax.random.uniform(k_start, (c,)) * t
        time = jnp.arange(t)[:, None]
        envelope = ((time >= start) & (time < start + burst)).astype(signal_TC.dtype)
        return signal_TC + std_mv * envelope * jax.random.normal(k_noise, (t, c))

    return apply


def baseline_wander(
    max_amplitude_mv: float = 0.3, max_hz: float = 0.5, sampling_rate: float = 400.0
) -> Augmentation:
    """Adds a slow sinusoid (0.05–max_hz) per lead: respiration and electrode drift."""

    def apply(key: jax.Array, signal_TC: jax.Array) -> jax.Array:
        k_amp, k_freq, k_phase = jax.random.split(key, 3)
        c = signal_TC.shape[1]
        amplitude = jax.random.uniform(k_amp, (c,), maxval=max_amplitude_mv)
        freq = jax.random.uniform(k_freq, (c,), minval=0.05, maxval=max_hz)
        phase = jax.random.uniform(k_phase, (c,), maxval=2 * np.pi)
        seconds = jnp.arange(signal_TC.shape[0])[:, None] / sampling_rate
        return signal_TC + amplitude * jnp.sin(2 * np.pi * freq * seconds + phase)

    return apply


def powerline_noise(
    max_amplitude_mv: float = 0.1,
    powerline_hz: float | Sequence[float] = (50.0, 60.0),
    sampling_rate: float = 400.0,
) -> Augmentation:
    """Adds mains hum with a random amplitude and phase per lead.

    `powerline_hz` is one frequency or several, one drawn uniformly per exam. The default
    draws 50 or 60 Hz: CODE's exams were recorded on Brazil's 60 Hz mains, PTB-XL's (Germany)
    and CPSC 2018's (China) on 50 Hz mains, and an encoder pretrained on CODE is transferred
    to both.
    """
    frequencies = np.atleast_1d(np.asarray(powerline_hz, dtype=np.float32))

    def apply(key: jax.Array, signal_TC: jax.Array) -> jax.Array:
        k_amp, k_phase, k_hz = jax.random.split(key, 3)
        c = signal_TC.shape[1]
        amplitude = jax.random.uniform(k_amp, (c,), maxval=max_amplitude_mv)
        phase = jax.random.uniform(k_phase, (c,), maxval=2 * np.pi)
        hz = jax.random.choice(k_hz, frequencies)
        seconds = jnp.arange(signal_TC.shape[0])[:, None] / sampling_rate
        return signal_TC + amplitude * jnp.sin(2 * np.pi * hz * seconds + phase)

    return apply


def time_mask(max_fraction: float = 0.2) -> Augmentation:
    """Zeroes one random contiguous stretch of up to `max_fraction` of the samples, all leads."""

    def apply(key: jax.Array, signal_TC: jax.Array) -> jax.Array:
        t = signal_TC.shape[0]
        k_len, k_start = jax.random.split(key)
        length = jax.random.uniform(k_len) * max_fraction * t
        start = jax.random.uniform(k_start) * (t - length)
        time = jnp.arange(t)[:, None]
        keep = (time < start) | (time >= start + length)
        return jnp.where(keep, signal_TC, 0.0)

    return apply


def lead_mask(probability: float = 0.25) -> Augmentation:
    """Zeroes each lead with `probability`, always keeping at least one lead."""

    def apply(key: jax.Array, signal_TC: jax.Array) -> jax.Array:
        k_drop, k_keep = jax.random.split(key)
        c = signal_TC.shape[1]
        dropped = jax.random.bernoulli(k_drop, probability, (c,))
        dropped = dropped.at[jax.random.randint(k_keep, (), 0, c)].set(False)
        return jnp.where(dropped[None, :], 0.0, signal_TC)

    return apply


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run, in order; each applied with probability `probability`.

    `sampling_rate` (Hz) of the signals is needed by the augmentations that work in seconds
    or hertz (`emg_noise`, `baseline_wander`, `powerline_noise`); None refuses them.
    """

    names: Sequence[str] = ("random_crop_resize", "amplitude_scale", "gaussian_noise")
    probability: float = 0.8
    sampling_rate: float | None = None


_NEEDS_RATE: dict[str, Callable[..., Augmentation]] = {
    "emg_noise": emg_noise,
    "baseline_wander": baseline_wander,
    "powerline_noise": powerline_noise,
}
_RATE_FREE: dict[str, Callable[[], Augmentation]] = {
    "random_crop_resize": random_crop_resize,
    "amplitude_scale": amplitude_scale,
    "gaussian_noise": gaussian_noise,
    "time_mask": time_mask,
    "lead_mask": lead_mask,
    "three_kg": three_kg,
}


def build_augmentations(config: AugmentConfig) -> list[Augmentation]:
    """The augmentation chain named by `config`, from an explicit table."""
    unknown = [n for n in config.names if n not in _NEEDS_RATE and n not in _RATE_FREE]
    if unknown:
        raise ValueError(
            f"unknown augmentations {unknown}; known: {sorted(_NEEDS_RATE | _RATE_FREE)}"
        )
    timed = [n for n in config.names if n in _NEEDS_RATE]
    if timed and config.sampling_rate is None:
        raise ValueError(f"augmentations {timed} need the signals' sampling_rate")
    return [
        _NEEDS_RATE[n](sampling_rate=config.sampling_rate) if n in _NEEDS_RATE else _RATE_FREE[n]()
        for n in config.names
    ]


def augment_batch(
    key: jax.Array,
    signal_BTC: jax.Array,
    augmentations: Sequence[Augmentation],
    probability: float = 1.0,
    example_offset: jax.Array | int = 0,
) -> jax.Array:
    """Applies the chain to every exam with its own key, each step with `probability`.

    The key of example i is `fold_in(key, example_offset + i)`: the same exam at the same step
    gets the same augmentation whatever the device count.
    """

    def one(index: jax.Array, signal_TC: jax.Array) -> jax.Array:
        sample_key = jax.random.fold_in(key, index)
        for position, augmentation in enumerate(augmentations):
            k_apply, k_aug = jax.random.split(jax.random.fold_in(sample_key, position))
            applied = augmentation(k_aug, signal_TC)
            use = jax.random.bernoulli(k_apply, probability)
            signal_TC = jnp.where(use, applied, signal_TC)
        return signal_TC

    indices = example_offset + jnp.arange(signal_BTC.shape[0])
    return jax.vmap(one)(indices, signal_BTC)
