"""Preprocessing: each step checked against a closed-form expectation, and the stored spec.

Butterworth responses are compared with the textbook formula for a digital Butterworth filter
designed by the bilinear transform: with Ω(f) = tan(π f / fs), a high-pass of order n has
|H|² = 1 / (1 + (Ω(fc) / Ω(f))^(2n)); a band-pass has |H|² = 1 / (1 + ((Ω² − Ωl·Ωh) /
(Ω·(Ωh − Ωl)))^(2n)). Forward-backward filtering multiplies a tone's amplitude by |H|².
"""

import json

import numpy as np
import pytest
import scipy.io
import scipy.signal

from ecgfm.data import preprocessing as pp
from ecgfm.data.record import LEADS, EcgRecord


def tones(freqs_hz, sampling_rate, duration_s, amplitude=1.0, phase=0.0):
    """`[T, len(freqs)]`: one sine per column, A·sin(2π f t + phase) at t = n / fs."""
    t_T = np.arange(round(duration_s * sampling_rate)) / sampling_rate
    return amplitude * np.sin(2 * np.pi * np.outer(t_T, freqs_hz) + phase)


def fit_tone(y_T, sampling_rate, freq_hz, margin_s):
    """(amplitude, phase) of the f-Hz sine in y by least squares, skipping `margin_s` at ends."""
    t_T = np.arange(y_T.shape[0]) / sampling_rate
    keep = (t_T >= margin_s) & (t_T <= t_T[-1] - margin_s)
    w_T = 2 * np.pi * freq_hz * t_T[keep]
    design = np.stack([np.sin(w_T), np.cos(w_T), np.ones_like(w_T)], axis=1)
    (a, b, _), *_ = np.linalg.lstsq(design, y_T[keep].astype(np.float64), rcond=None)
    return float(np.hypot(a, b)), float(np.arctan2(b, a))


def butterworth_gain2_highpass(f, fc, fs, order):
    return 1 / (1 + (np.tan(np.pi * fc / fs) / np.tan(np.pi * f / fs)) ** (2 * order))


def butterworth_gain2_bandpass(f, low, high, fs, order):
    w, wl, wh = (np.tan(np.pi * x / fs) for x in (f, low, high))
    return 1 / (1 + ((w**2 - wl * wh) / (w * (wh - wl))) ** (2 * order))


def db(ratio):
    return 20 * np.log10(ratio)


# --- resampling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_samples", "from_hz", "to_hz", "expected"),
    [
        (5000, 500, 400, 4000),
        (5000, 500, 100, 1000),
        (5000, 500, 250, 2500),
        (4000, 400, 500, 5000),
        (2570, 257, 500, 5000),  # INCART's 257 Hz
        (5003, 500, 400, 4002),  # 4002.4 rounds down
        (5002, 500, 400, 4002),  # 4001.6 rounds up
        (5001, 500, 250, 2501),  # 2500.5: halves round up
        (4097, 400, 500, 5121),  # 5121.25
    ],
)
def test_resample_length_is_rounded_duration(num_samples, from_hz, to_hz, expected):
    signal_TC = np.zeros((num_samples, 3), np.float32)
    out_TC = pp.resample(signal_TC, from_hz, to_hz)
    assert out_TC.shape == (expected, 3)
    assert out_TC.dtype == np.float32
    assert pp.resampled_length(num_samples, from_hz, to_hz) == expected


def test_resample_factors_are_the_reduced_rate_ratio():
    assert pp.resample_factors(500, 400) == (4, 5)
    assert pp.resample_factors(500, 100) == (1, 5)
    assert pp.resample_factors(400, 500) == (5, 4)
    assert pp.resample_factors(1000 / 3, 500) == (3, 2)  # a float rate that is really rational


@pytest.mark.parametrize(("from_hz", "to_hz"), [(0, 400), (500, -1), (500, float("nan"))])
def test_resample_rejects_non_positive_rates(from_hz, to_hz):
    with pytest.raises(ValueError, match="positive"):
        pp.resample(np.zeros((100, 1)), from_hz, to_hz)


def test_resample_rejects_a_ratio_without_small_integer_factors():
    with pytest.raises(ValueError, match="not a fraction"):
        pp.resample(np.zeros((100, 1)), 500, 400 * np.pi)


@pytest.mark.parametrize(
    ("from_hz", "to_hz", "freqs_hz"),
    [(500, 100, [2.0, 7.0, 30.0]), (500, 400, [5.0, 40.0, 150.0]), (400, 500, [1.0, 30.0, 150.0])],
)
def test_resample_keeps_a_tone_below_the_new_nyquist(from_hz, to_hz, freqs_hz):
    signal_TC = tones(freqs_hz, from_hz, 10.0, amplitude=1.3, phase=0.4).astype(np.float32)
    out_TC = pp.resample(signal_TC, from_hz, to_hz)
    # Output sample n sits at n / to_hz: the same sine sampled at the new rate, not a fit.
    expected_TC = tones(freqs_hz, to_hz, out_TC.shape[0] / to_hz, amplitude=1.3, phase=0.4)
    interior = slice(to_hz // 2, -to_hz // 2)
    np.testing.assert_allclose(out_TC[interior], expected_TC[interior], atol=0.013)
    for c, f in enumerate(freqs_hz):
        amplitude, _ = fit_tone(out_TC[:, c], to_hz, f, margin_s=0.5)
        assert abs(db(amplitude / 1.3)) < 0.1


@pytest.mark.parametrize(
    ("from_hz", "to_hz", "freq_hz"), [(500, 100, 80.0), (500, 250, 200.0), (500, 400, 240.0)]
)
def test_resample_attenuates_a_tone_above_the_new_nyquist_by_40db(from_hz, to_hz, freq_hz):
    signal_TC = tones([freq_hz], from_hz, 10.0)
    out_T = pp.resample(signal_TC, from_hz, to_hz)[to_hz:-to_hz, 0]
    # Aliasing would fold the tone to |f − to_hz| with its full amplitude.
    peak_amplitude = np.sqrt(2) * out_T.std() + abs(out_T.mean())
    assert db(peak_amplitude) < -40


def test_resample_keeps_a_baseline_offset_flat_up_to_the_edges():
    signal_TC = np.full((5000, 2), [1.5, -0.7], np.float32)
    # Within the polyphase filter's passband ripple (< 0.1 %), also in the first and last
    # samples, where zero extension would halve the offset.
    np.testing.assert_allclose(pp.resample(signal_TC, 500, 400), [[1.5, -0.7]] * 4000, rtol=1e-3)


def test_resample_to_the_same_rate_is_a_copy():
    signal_TC = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    out_TC = pp.resample(signal_TC, 500, 500)
    np.testing.assert_array_equal(out_TC, signal_TC)
    out_TC[0, 0] = 99.0
    assert signal_TC[0, 0] != 99.0


# --- filters ------------------------------------------------------------------------------


def test_baseline_high_pass_matches_the_butterworth_response():
    fs, cutoff = 100.0, 0.5
    freqs = np.array([0.1, 0.25, 0.5, 1.0, 5.0, 10.0, 20.0, 40.0])
    signal_TC = tones(freqs, fs, 120.0).astype(np.float32)
    out_TC = pp.remove_baseline(signal_TC, fs, cutoff_hz=cutoff, order=2)
    gains = np.array([fit_tone(out_TC[:, c], fs, f, margin_s=20)[0] for c, f in enumerate(freqs)])
    expected = butterworth_gain2_highpass(freqs, cutoff, fs, order=2)
    np.testing.assert_allclose(gains, expected, rtol=0.01, atol=2e-4)
    assert db(gains[freqs == 0.1][0]) < -20
    assert np.all(np.abs(db(gains[freqs >= 5])) < 0.5)
    assert abs(db(gains[freqs == cutoff][0]) + 6.02) < 0.1  # cutoff: −3 dB per pass


def test_baseline_high_pass_is_zero_phase():
    fs = 500.0
    t_T = np.arange(5000) / fs
    qrs_T = np.exp(-0.5 * ((t_T - 4.0) / 0.01) ** 2)  # a QRS-like pulse peaking at sample 2000
    wander_T = 0.8 + 0.5 * np.sin(2 * np.pi * 0.15 * t_T)
    out_T = pp.remove_baseline((qrs_T + wander_T)[:, None], fs)[:, 0]
    assert np.argmax(out_T) == 2000
    for f in (5.0, 20.0):
        _, phase = fit_tone(pp.remove_baseline(tones([f], fs, 10.0), fs)[:, 0], fs, f, 2.0)
        assert abs(phase) < 1e-3


def test_notch_removes_powerline_and_keeps_the_ecg_band():
    fs = 500.0
    freqs = [10.0, 30.0, 50.0, 60.0]
    out50_TC = pp.notch(tones(freqs, fs, 20.0), fs, powerline_hz=50)
    out60_TC = pp.notch(tones(freqs, fs, 20.0), fs, powerline_hz=60)
    gains50 = [fit_tone(out50_TC[:, c], fs, f, margin_s=2)[0] for c, f in enumerate(freqs)]
    gains60 = [fit_tone(out60_TC[:, c], fs, f, margin_s=2)[0] for c, f in enumerate(freqs)]
    assert db(gains50[2]) < -30 and db(gains60[3]) < -30
    assert all(abs(db(g)) < 0.5 for g in gains50[:2] + gains60[:3])
    # Zero-phase: the kept tones are not shifted.
    assert abs(fit_tone(out50_TC[:, 1], fs, 30.0, margin_s=2)[1]) < 1e-3


def test_notch_at_or_above_nyquist_is_refused():
    with pytest.raises(ValueError, match="Nyquist"):
        pp.notch(np.zeros((1000, 1)), 100.0, powerline_hz=50)


def test_bandpass_matches_the_butterworth_response_and_is_zero_phase():
    fs, low, high = 500.0, 0.5, 40.0
    freqs = np.array([0.1, 0.5, 2.0, 10.0, 40.0, 80.0, 150.0])
    out_TC = pp.bandpass(tones(freqs, fs, 60.0), fs, low, high, order=2)
    gains = np.array([fit_tone(out_TC[:, c], fs, f, margin_s=10)[0] for c, f in enumerate(freqs)])
    expected = butterworth_gain2_bandpass(freqs, low, high, fs, order=2)
    np.testing.assert_allclose(gains, expected, rtol=0.01, atol=2e-4)
    assert abs(db(gains[freqs == 10.0][0])) < 0.5
    assert db(gains[freqs == 150.0][0]) < -35
    noise_T = np.random.default_rng(1).normal(size=5000)
    filtered_T = pp.bandpass(noise_T[:, None], fs, 1.0, 40.0)[:, 0]
    lags = np.arange(-20, 21)
    xcorr = [np.dot(np.roll(filtered_T, lag), noise_T) for lag in lags]
    assert lags[np.argmax(xcorr)] == 0


def test_bandpass_rejects_inverted_or_out_of_range_edges():
    with pytest.raises(ValueError, match="low_hz < high_hz"):
        pp.bandpass(np.zeros((1000, 1)), 500.0, 40.0, 0.5)
    with pytest.raises(ValueError, match="Nyquist"):
        pp.bandpass(np.zeros((1000, 1)), 100.0, 0.5, 60.0)


def test_filtering_a_too_short_signal_names_the_filter_and_the_length():
    with pytest.raises(
        ValueError, match=r"baseline high-pass needs .* longer than 9 samples, got 9"
    ):
        pp.remove_baseline(np.zeros((9, 12)), 500.0)


def test_filters_do_not_modify_their_input():
    signal_TC = np.random.default_rng(2).normal(size=(2000, 3)).astype(np.float32)
    before = signal_TC.copy()
    pp.remove_baseline(signal_TC, 500.0)
    pp.notch(signal_TC, 500.0)
    pp.bandpass(signal_TC, 500.0, 0.5, 100.0)
    pp.standardize(signal_TC)
    pp.center_crop_or_pad(signal_TC, 1000)
    np.testing.assert_array_equal(signal_TC, before)


# --- crop/pad, standardisation, lead selection --------------------------------------------


@pytest.mark.parametrize(
    ("num_samples", "length", "kept", "start"),
    [
        (10, 6, (2, 8), 0),  # crop, even difference: 2 cut at each end
        (11, 6, (2, 8), 0),  # crop, odd difference: the extra sample is cut from the end
        (4, 8, (0, 4), 2),  # pad, even: 2 zeros before, 2 after
        (4, 7, (0, 4), 1),  # pad, odd: 1 zero before, the extra one after
        (4000, 4096, (0, 4000), 48),  # Ribeiro: 10 s at 400 Hz in 4096 samples
        (5, 5, (0, 5), 0),
    ],
)
def test_center_crop_or_pad_against_hand_computed_indices(num_samples, length, kept, start):
    signal_TC = np.stack([np.arange(1, num_samples + 1)] * 2, axis=1).astype(np.float32)
    out_TC = pp.center_crop_or_pad(signal_TC, length)
    expected_T = np.zeros(length, np.float32)
    expected_T[start : start + kept[1] - kept[0]] = np.arange(kept[0] + 1, kept[1] + 1)
    np.testing.assert_array_equal(out_TC, np.stack([expected_T] * 2, axis=1))
    assert pp.valid_range(num_samples, length) == (start, start + kept[1] - kept[0])


def test_standardize_gives_zero_mean_unit_std_per_lead_and_a_flat_lead_stays_finite():
    rng = np.random.default_rng(3)
    signal_TC = (rng.normal(size=(4000, 3)) * [0.05, 1.0, 3.0] + [1.0, -2.0, 0.3]).astype(
        np.float32
    )
    signal_TC[:, 2] = 0.7  # a flat lead, e.g. a disconnected electrode
    out_TC = pp.standardize(signal_TC)
    np.testing.assert_allclose(out_TC[:, :2].mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(out_TC[:, :2].std(axis=0), 1, rtol=1e-5)
    assert np.all(np.isfinite(out_TC))
    np.testing.assert_array_equal(out_TC[:, 2], 0)


def test_min_max_scaling_maps_each_lead_onto_minus_one_to_one_as_hubert_ecg_does():
    signal_TC = np.array([[0.0, 5.0, 2.0], [1.0, 3.0, 2.0], [4.0, 1.0, 2.0]], np.float32)
    out_TC = pp.min_max_scale(signal_TC)
    # HuBERT-ECG code/utils.py `scaling`: 2 (x - min) / (max - min + 1e-8) - 1
    expected = 2 * (signal_TC - signal_TC.min(0)) / (np.ptp(signal_TC, 0) + 1e-8) - 1
    np.testing.assert_allclose(out_TC, expected, atol=1e-6)
    np.testing.assert_allclose(out_TC[:, :2].min(0), -1, atol=1e-6)
    np.testing.assert_allclose(out_TC[:, :2].max(0), 1, atol=1e-6)
    np.testing.assert_array_equal(out_TC[:, 2], -1)  # a flat lead stays finite
    spec = pp.Preprocessing(sampling_rate=100, normalization="per_lead_min_max")
    assert pp.Preprocessing.from_json(spec.to_json()) == spec
    raw_TC = np.random.default_rng(0).normal(size=(300, 12))
    np.testing.assert_allclose(np.abs(spec(raw_TC, 100)).max(0), 1, atol=1e-6)


def test_select_leads_picks_columns_by_canonical_name():
    signal_TC = np.tile(np.arange(12, dtype=np.float32), (5, 1))  # column i holds i
    np.testing.assert_array_equal(pp.select_leads(signal_TC, ("II", "V1", "aVR"))[0], [1, 6, 3])
    with pytest.raises(ValueError, match="unknown lead"):
        pp.select_leads(signal_TC, ("II", "avr"))


# --- the Preprocessing spec ---------------------------------------------------------------

FILTERED = pp.Preprocessing(
    sampling_rate=500,
    num_samples=5000,
    leads=("I", "II", "V1"),
    baseline_cutoff_hz=0.5,
    powerline_hz=60,
    bandpass=(0.5, 100),
    normalization="per_lead_standardize",
)


@pytest.mark.parametrize("spec", [pp.CODE_400HZ, pp.PTBXL_100HZ, pp.PTBXL_500HZ, FILTERED])
def test_spec_round_trips_through_json_exactly(spec):
    text = spec.to_json()
    assert pp.Preprocessing.from_json(text) == spec
    assert pp.Preprocessing.from_json(text).to_json() == text
    assert pp.Preprocessing.from_dict(json.loads(text)) == spec
    plain = (type(None), bool, int, float, str)
    values = spec.to_dict()
    assert all(
        isinstance(v, plain) or all(isinstance(x, plain) for x in v) for v in values.values()
    )
    assert hash(pp.Preprocessing.from_json(text)) == hash(spec)


def test_spec_equal_whether_written_with_ints_or_floats():
    a = pp.Preprocessing(sampling_rate=400, num_samples=4096, bandpass=(1, 40))
    b = pp.Preprocessing(sampling_rate=400.0, num_samples=4096, bandpass=[1.0, 40.0])
    assert a == b and a.to_json() == b.to_json()


def test_from_dict_rejects_unknown_fields_by_name():
    with pytest.raises(ValueError, match=r"unknown fields.*'sample_rate'"):
        pp.Preprocessing.from_dict({"sampling_rate": 400, "sample_rate": 400})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sampling_rate", -400),
        ("sampling_rate", "400"),
        ("num_samples", 4096.5),
        ("num_samples", 0),
        ("leads", ["I", "avr"]),
        ("leads", ["I", "I"]),
        ("leads", "II"),
        ("baseline_cutoff_hz", 0),
        ("powerline_hz", 55),
        ("bandpass", [40, 0.5]),
        ("bandpass", [0.5, 250]),
        ("filter_order", True),
        ("normalization", "zscore"),
        ("input_units", "uV"),
    ],
)
def test_from_dict_rejects_bad_values_naming_the_field(field, value):
    values = {"sampling_rate": 400, field: value}
    with pytest.raises(ValueError, match=rf"Preprocessing\.{field}:"):
        pp.Preprocessing.from_dict(values)


def test_code_spec_resamples_10s_at_500hz_into_4096_samples_centred_in_zeros():
    offsets_C = np.linspace(-1.0, 1.0, 12, dtype=np.float32)
    signal_TC = np.tile(offsets_C, (5000, 1))
    out_TC = pp.CODE_400HZ(signal_TC, 500)
    assert out_TC.shape == (4096, 12) and out_TC.dtype == np.float32
    np.testing.assert_array_equal(out_TC[:48], 0)  # 4000 real samples, 48 zeros each side
    np.testing.assert_array_equal(out_TC[4048:], 0)
    np.testing.assert_allclose(out_TC[48:4048], np.tile(offsets_C, (4000, 1)), rtol=1e-3)


def test_ptbxl_spec_standardises_each_lead_of_a_500hz_record():
    rng = np.random.default_rng(4)
    signal_TC = rng.normal(size=(5000, 12)) * np.linspace(0.1, 2, 12) + 0.5
    record = EcgRecord(
        signal=signal_TC.astype(np.float32), sampling_rate=500, record_id="1", source="t"
    )
    out_TC = pp.PTBXL_100HZ.apply(record)
    assert out_TC.shape == (1000, 12)
    np.testing.assert_allclose(out_TC.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out_TC.std(axis=0), 1, rtol=1e-4)
    np.testing.assert_array_equal(out_TC, pp.PTBXL_100HZ(record.signal, 500))


def test_standardisation_uses_only_real_samples_and_padding_stays_zero():
    spec = pp.Preprocessing(
        sampling_rate=400, num_samples=4096, normalization="per_lead_standardize"
    )
    signal_TC = np.random.default_rng(5).normal(size=(4000, 12), loc=3.0).astype(np.float32)
    out_TC = spec(signal_TC, 400)
    np.testing.assert_array_equal(out_TC[:48], 0)
    np.testing.assert_array_equal(out_TC[4048:], 0)
    np.testing.assert_allclose(out_TC[48:4048].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out_TC[48:4048].std(axis=0), 1, rtol=1e-4)


def test_spec_filters_and_selects_leads_in_the_given_order():
    fs = 500.0
    clean_T = tones([10.0], fs, 10.0)[:, 0]
    hum_T = 0.3 * tones([60.0], fs, 10.0)[:, 0]
    wander_T = 1.0 + 0.8 * tones([0.05], fs, 10.0)[:, 0]
    signal_TC = np.stack([clean_T * (c + 1) + hum_T + wander_T for c in range(12)], axis=1)
    spec = pp.Preprocessing(
        sampling_rate=500, leads=("V1", "I"), baseline_cutoff_hz=0.5, powerline_hz=60
    )
    out_TC = spec(signal_TC, fs)
    assert out_TC.shape == (5000, 2)
    interior = slice(1000, 4000)
    for column, lead in enumerate(("V1", "I")):
        expected_T = clean_T * (LEADS.index(lead) + 1)
        np.testing.assert_allclose(
            out_TC[interior, column], expected_T[interior], atol=0.01 * (LEADS.index(lead) + 1)
        )


def test_spec_refuses_a_signal_that_is_not_12_canonical_leads():
    with pytest.raises(ValueError, match=r"\[time, 12\]"):
        pp.CODE_400HZ(np.zeros((4000, 8)), 400)


def test_check_compatible_accepts_matching_input_and_refuses_rate_length_or_leads():
    pp.CODE_400HZ.check_compatible(np.zeros((4096, 12)), 400)
    pp.CODE_400HZ.check_compatible(np.zeros((32, 4096, 12)), 400.0)  # a batch
    with pytest.raises(ValueError, match="sampling_rate is 500 Hz, expected 400"):
        pp.CODE_400HZ.check_compatible(np.zeros((4096, 12)), 500)
    with pytest.raises(ValueError, match="5000 samples, expected 4096"):
        pp.CODE_400HZ.check_compatible(np.zeros((5000, 12)), 400)
    with pytest.raises(ValueError, match="8 leads, expected 12"):
        pp.CODE_400HZ.check_compatible(np.zeros((4096, 8)), 400)


def test_describe_is_one_line_naming_rate_length_and_filters():
    assert pp.CODE_400HZ.describe() == (
        "400 Hz, 4096 samples, 12 leads, no filters, normalization none, input mV"
    )
    line = FILTERED.describe()
    assert "\n" not in line
    for part in (
        "500 Hz",
        "5000 samples",
        "3 leads",
        "high-pass 0.5 Hz",
        "notch 60 Hz",
        "band-pass 0.5–100 Hz",
        "per_lead_standardize",
    ):
        assert part in line


def test_real_record_r_peaks_keep_their_times_through_resampling_and_filters(real_data):
    # PTB-XL record 06000 as the CinC 2021 copy: int16 in µV, 12 × 5000 at 500 Hz, LEADS order.
    signal_TC = scipy.io.loadmat(real_data / "cinc2021" / "HR06000.mat")["val"].T / 1000.0
    spec = pp.Preprocessing(
        sampling_rate=400, num_samples=4096, baseline_cutoff_hz=0.5, powerline_hz=50
    )
    out_TC = spec(signal_TC.astype(np.float32), 500)

    def r_peak_times_s(lead_II_T, sampling_rate):
        peaks, _ = scipy.signal.find_peaks(
            lead_II_T, distance=0.3 * sampling_rate, prominence=0.5 * np.ptp(lead_II_T)
        )
        return peaks / sampling_rate

    raw_s = r_peak_times_s(signal_TC[:, 1], 500)
    start, stop = pp.valid_range(4000, 4096)
    out_s = r_peak_times_s(out_TC[start:stop, 1], 400)
    assert len(raw_s) == len(out_s) >= 10
    np.testing.assert_allclose(out_s, raw_s, atol=1 / 400)  # within one output sample
