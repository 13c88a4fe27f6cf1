"""On-device ECG augmentations: shapes, determinism under a key, and the property each claims."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgfm.objectives import augment

T, RATE = 800, 400.0


def _signal(seed: int = 0) -> np.ndarray:
    """[T, 12] with the limb leads consistent with I and II (as a real 12-lead ECG)."""
    rng = np.random.default_rng(seed)
    t = np.arange(T) / RATE
    leads8 = np.stack(
        [
            np.sin(2 * np.pi * f * t + p)
            for f, p in zip(rng.uniform(1, 10, 8), rng.uniform(0, 6, 8), strict=True)
        ],
        axis=1,
    )
    return np.asarray(augment._limb_leads_from_8(jnp.asarray(leads8)), dtype=np.float32)


ALL = ("random_crop_resize", "amplitude_scale", "gaussian_noise", "emg_noise",
       "baseline_wander", "powerline_noise", "time_mask", "lead_mask", "three_kg")  # fmt: skip


@pytest.mark.parametrize("name", ALL)
def test_each_augmentation_keeps_shape_and_is_deterministic_under_a_key(name):
    (fn,) = augment.build_augmentations(augment.AugmentConfig(names=(name,), sampling_rate=RATE))
    x = jnp.asarray(_signal())
    apply = jax.jit(fn)
    a, b, c = apply(jax.random.key(1), x), apply(jax.random.key(1), x), apply(jax.random.key(2), x)
    assert a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, x)


def test_three_kg_identity_keeps_what_the_vcg_carries_and_its_inverse_undoes_it():
    x = jnp.asarray(_signal())
    projected = augment.vcg_transform(x, jnp.eye(3))
    rotation = augment._rotation_xyz(jnp.array([0.3, -0.5, 0.7])) @ jnp.diag(
        jnp.array([1.2, 0.8, 1.4])
    )
    there = augment.vcg_transform(x, rotation)
    back = augment.vcg_transform(there, jnp.linalg.inv(rotation))
    np.testing.assert_allclose(back, projected, atol=1e-4)
    # The VCG is 3-D: the projection is idempotent.
    np.testing.assert_allclose(augment.vcg_transform(projected, jnp.eye(3)), projected, atol=1e-4)


def test_three_kg_output_obeys_einthoven_and_goldberger():
    y = np.asarray(augment.three_kg()(jax.random.key(0), jnp.asarray(_signal())))
    lead = {n: y[:, i] for i, n in enumerate(("I", "II", "III", "aVR", "aVL", "aVF"))}
    np.testing.assert_allclose(lead["III"], lead["II"] - lead["I"], atol=1e-5)
    np.testing.assert_allclose(lead["aVR"], -(lead["I"] + lead["II"]) / 2, atol=1e-5)
    np.testing.assert_allclose(lead["aVL"], (lead["I"] - lead["III"]) / 2, atol=1e-5)
    np.testing.assert_allclose(lead["aVF"], (lead["II"] + lead["III"]) / 2, atol=1e-5)


def test_powerline_noise_adds_energy_only_at_the_mains_frequency():
    x = jnp.zeros((T, 12))
    y = np.asarray(augment.powerline_noise(0.1, 50.0, RATE)(jax.random.key(0), x))
    spectrum = np.abs(np.fft.rfft(y, axis=0))
    freqs = np.fft.rfftfreq(T, 1 / RATE)
    assert np.all(freqs[spectrum.argmax(axis=0)] == 50.0)


def test_baseline_wander_is_slow():
    y = np.asarray(augment.baseline_wander(0.3, 0.5, RATE)(jax.random.key(0), jnp.zeros((T, 12))))
    spectrum = np.abs(np.fft.rfft(y, n=8 * T, axis=0)) ** 2
    freqs = np.fft.rfftfreq(8 * T, 1 / RATE)
    assert spectrum[freqs > 2.0].sum() < 0.05 * spectrum.sum()


def test_time_mask_zeroes_one_contiguous_stretch_of_all_leads():
    x = jnp.ones((T, 12))
    y = np.asarray(augment.time_mask(0.3)(jax.random.key(3), x))
    zero_rows = np.flatnonzero((y == 0).all(axis=1))
    assert 0 < zero_rows.size <= 0.3 * T
    assert np.all(np.diff(zero_rows) == 1)
    assert ((y == 0).any(axis=1) == (y == 0).all(axis=1)).all()


def test_lead_mask_always_keeps_a_lead():
    x = jnp.ones((T, 12))
    for seed in range(20):
        y = np.asarray(augment.lead_mask(0.99)(jax.random.key(seed), x))
        assert (y != 0).any(axis=0).sum() >= 1


def test_random_crop_resize_of_a_line_is_a_line_with_a_smaller_or_equal_slope():
    ramp = jnp.tile(jnp.arange(T, dtype=jnp.float32)[:, None], (1, 12))
    y = np.asarray(augment.random_crop_resize(0.5)(jax.random.key(0), ramp))
    slope = np.diff(y[:, 0])
    np.testing.assert_allclose(slope, slope[0], rtol=1e-3)
    assert 0.5 - 1e-3 <= slope[0] <= 1.0 + 1e-6


def test_batch_augmentation_does_not_depend_on_how_the_batch_is_split():
    batch = jnp.asarray(np.stack([_signal(s) for s in range(4)]))
    names = ("random_crop_resize", "three_kg", "lead_mask")
    chain = augment.build_augmentations(augment.AugmentConfig(names=names, sampling_rate=RATE))
    key = jax.random.key(7)
    run = jax.jit(lambda x, offset: augment.augment_batch(key, x, chain, 0.5, offset))
    whole = run(batch, 0)
    halves = [run(batch[i : i + 2], i) for i in (0, 2)]
    np.testing.assert_array_equal(whole, np.concatenate(halves))


def test_unknown_augmentation_is_refused_by_name():
    with pytest.raises(ValueError, match="wobble"):
        augment.build_augmentations(augment.AugmentConfig(names=("wobble",)))


def test_powerline_noise_draws_50_or_60_hz_per_exam_by_default():
    # CODE was recorded on 60 Hz mains, PTB-XL and CPSC 2018 on 50 Hz: both must occur.
    apply = jax.jit(augment.powerline_noise(sampling_rate=RATE))
    freqs = np.fft.rfftfreq(T, 1 / RATE)
    seen = set()
    for seed in range(16):
        y = np.asarray(apply(jax.random.key(seed), jnp.zeros((T, 12))))
        peaks = set(freqs[np.abs(np.fft.rfft(y, axis=0)).argmax(axis=0)])
        assert len(peaks) == 1  # one mains frequency per exam, on every lead
        seen |= peaks
    assert seen == {50.0, 60.0}
    y = np.asarray(augment.powerline_noise(0.1, 60.0, RATE)(jax.random.key(0), jnp.zeros((T, 12))))
    assert np.all(freqs[np.abs(np.fft.rfft(y, axis=0)).argmax(axis=0)] == 60.0)


def test_augmentations_in_seconds_refuse_an_unknown_sampling_rate():
    for name in ("emg_noise", "baseline_wander", "powerline_noise"):
        with pytest.raises(ValueError, match="sampling_rate"):
            augment.build_augmentations(augment.AugmentConfig(names=(name,)))
    assert len(augment.build_augmentations(augment.AugmentConfig(names=("three_kg",)))) == 1
