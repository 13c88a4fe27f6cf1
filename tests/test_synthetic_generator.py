"""The synthetic 12-lead generator: each condition label must be visible in the signal.

Everything is measured on the returned signal with ordinary ECG signal processing (QRS detection
on the derivative energy, a spline through the PR segments as baseline), never read back from the
generator's internal parameters.
"""

import time

import numpy as np
import pytest
from scipy import interpolate, signal

from ecgfm.data.record import LEADS
from ecgfm.data.synthetic.generator import CONDITIONS, CONFLICTS, synthesize_ecg

FS = 500.0
N_EXAMS = 10
LEAD = {name: i for i, name in enumerate(LEADS)}


def _exams(conditions, n=N_EXAMS, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    return [synthesize_ecg(rng, conditions, **kwargs) for _ in range(n)]


def _lowpass(signal_TC, fs=FS, cutoff_hz=40.0):
    sos = signal.butter(4, cutoff_hz / (fs / 2), output="sos")
    return signal.sosfiltfilt(sos, signal_TC, axis=0)


def _qrs_energy(signal_TC, fs=FS, band_hz=(None, 40.0)):
    """Energy of the derivative summed over leads, smoothed over 20 ms; the QRS dominates it."""
    low, high = band_hz
    if low is None:
        sos = signal.butter(4, high / (fs / 2), output="sos")
    else:
        sos = signal.butter(2, [low / (fs / 2), high / (fs / 2)], btype="band", output="sos")
    slope_TC = np.diff(signal.sosfiltfilt(sos, signal_TC, axis=0), axis=0) * fs
    energy_T = np.sum(slope_TC**2, axis=1)
    window = max(1, round(0.02 * fs))
    return np.convolve(energy_T, np.ones(window) / window, mode="same")


def _qrs_centres(signal_TC, fs=FS):
    """Sample indices of the QRS complexes (peaks of the derivative energy in the QRS band)."""
    energy_T = _qrs_energy(signal_TC, fs, band_hz=(8.0, 30.0))
    peaks, _ = signal.find_peaks(energy_T, height=0.05 * energy_T.max(), distance=0.28 * fs)
    return peaks


def _rr_s(signal_TC, fs=FS):
    return np.diff(_qrs_centres(signal_TC, fs)) / fs


def _heart_rate_bpm(signal_TC, fs=FS):
    return 60.0 / np.mean(_rr_s(signal_TC, fs))


def _inner(centres, n_samples, fs=FS, before_s=0.45, after_s=0.45):
    keep = (centres > before_s * fs) & (centres < n_samples - after_s * fs)
    return centres[keep]


def _qrs_width_s(signal_TC, fs=FS):
    """Median over beats of the span (within -100..+120 ms) where the derivative energy exceeds
    4% of the beat's peak."""
    energy_T = _qrs_energy(signal_TC, fs)
    widths = []
    for c in _inner(_qrs_centres(signal_TC, fs), len(energy_T)):
        lo = c - round(0.1 * fs)
        above = np.flatnonzero(energy_T[lo : c + round(0.12 * fs)] > 0.04 * energy_T[c])
        widths.append((above[-1] - above[0]) / fs)
    return float(np.median(widths))


def _baseline_corrected(signal_TC, fs=FS):
    """Low-passed signal minus a cubic spline through the PR segment (isoelectric) of each beat."""
    smooth_TC = _lowpass(signal_TC, fs)
    centres = _inner(_qrs_centres(signal_TC, fs), len(signal_TC), fs, 0.1, 0.0)
    knots = centres - round(0.07 * fs)
    width = round(0.015 * fs)
    levels = np.stack([np.median(smooth_TC[k - width : k + width], axis=0) for k in knots])
    spline = interpolate.CubicSpline(knots, levels, axis=0)
    return smooth_TC - spline(np.arange(len(signal_TC))), centres


def _st_level_mv(signal_TC, fs=FS, after_qrs_s=0.08):
    """`[12]` median over beats of the level 80 ms after the QRS centre, relative to PR."""
    flat_TC, centres = _baseline_corrected(signal_TC, fs)
    centres = _inner(centres, len(signal_TC), fs)
    return np.median(flat_TC[centres + round(after_qrs_s * fs)], axis=0)


def _average_beat(signal_TC, fs=FS, before_s=0.45, after_s=0.45):
    """`[L, 12]` baseline-corrected ensemble average aligned on the QRS centres, and its offset."""
    flat_TC, centres = _baseline_corrected(signal_TC, fs)
    centres = _inner(centres, len(signal_TC), fs, before_s, after_s)
    pre, post = round(before_s * fs), round(after_s * fs)
    return np.mean([flat_TC[c - pre : c + post] for c in centres], axis=0), pre


def _p_to_qrs_s(signal_TC, fs=FS):
    """Time from the P-wave peak (the last clear peak before the QRS, lead II, averaged beat) to
    the QRS centre; NaN when there is none."""
    beat_LC, zero = _average_beat(signal_TC, fs)
    lo = zero - round(0.4 * fs)
    segment = beat_LC[lo : zero - round(0.06 * fs), LEAD["II"]]
    peaks, _ = signal.find_peaks(segment, prominence=0.04)
    return (zero - lo - peaks[-1]) / fs if len(peaks) else np.nan


def _qrs_bounds(beat_LC, zero, fs=FS):
    """Onset and end (samples) of the QRS of an averaged beat, where the derivative energy first
    exceeds 1.5% and last exceeds 4% of its peak (the septal onset is slow, the end is not)."""
    energy_L = np.sum(np.diff(beat_LC, axis=0) ** 2, axis=1)
    lo = zero - round(0.1 * fs)
    window = energy_L[lo : zero + round(0.12 * fs)]
    onset = np.flatnonzero(window > 0.015 * window.max())[0]
    end = np.flatnonzero(window > 0.04 * window.max())[-1]
    return lo + onset, lo + end


def _p_wave_mv(signal_TC, fs=FS):
    """Prominence of the largest peak of the averaged lead II in the 300..60 ms before the QRS."""
    beat_LC, zero = _average_beat(signal_TC, fs)
    segment = beat_LC[zero - round(0.3 * fs) : zero - round(0.06 * fs), LEAD["II"]]
    _, props = signal.find_peaks(segment, prominence=0.0)
    return float(props["prominences"].max(initial=0.0))


def _q_wave_s(beat_LC, zero, lead, fs=FS):
    """Duration of an initial negative QRS deflection (a Q wave) in an averaged beat; 0 if the
    QRS starts upwards."""
    onset, end = _qrs_bounds(beat_LC, zero, fs)
    qrs = beat_LC[onset : end + 1, LEAD[lead]] - beat_LC[onset, LEAD[lead]]
    first = np.flatnonzero(np.abs(qrs) > 0.05)
    if not len(first) or qrs[first[0]] > 0:
        return 0.0
    back_up = np.flatnonzero(qrs[first[0] :] >= 0)
    return (first[0] + (back_up[0] if len(back_up) else len(qrs))) / fs


@pytest.fixture(scope="module")
def exams():
    """Exams per condition set, generated once for the whole module."""
    cache = {}

    def get(*conditions):
        if conditions not in cache:
            cache[conditions] = _exams(conditions, seed=len(cache))
        return cache[conditions]

    return get


# --- the signal contract -------------------------------------------------------------------


@pytest.mark.parametrize("sampling_rate", [100.0, 400.0, 500.0])
@pytest.mark.parametrize("duration_s", [7.0, 10.0])
def test_shape_dtype_and_millivolt_range(sampling_rate, duration_s):
    rng = np.random.default_rng(1)
    for conditions in [(), ("lvh",), ("pvc", "lbbb")]:
        x = synthesize_ecg(rng, conditions, sampling_rate=sampling_rate, duration_s=duration_s)
        assert x.shape == (round(duration_s * sampling_rate), 12)
        assert x.dtype == np.float32
        assert np.all(np.isfinite(x))
        # Millivolts: the R wave in lead II is ~0.5-2 mV, nothing reaches 10 mV.
        assert np.abs(x).max() < 8.0
        assert 0.4 < np.ptp(x[:, LEAD["II"]]) < 6.0


def test_a_non_integer_sample_count_is_rounded():
    x = synthesize_ecg(np.random.default_rng(0), sampling_rate=257.0, duration_s=7.3)
    assert x.shape == (round(7.3 * 257.0), 12)


def test_limb_leads_obey_einthoven_and_goldberger_exactly():
    rng = np.random.default_rng(2)
    for conditions in [(), ("af", "lbbb"), ("mi_inferior", "pvc"), ("rbbb", "st_depression")]:
        x = synthesize_ecg(rng, conditions).astype(np.float64)
        lead_I, lead_II, lead_III = x[:, LEAD["I"]], x[:, LEAD["II"]], x[:, LEAD["III"]]
        np.testing.assert_allclose(lead_III, lead_II - lead_I, atol=1e-6)
        np.testing.assert_allclose(x[:, LEAD["aVR"]], -(lead_I + lead_II) / 2, atol=1e-6)
        np.testing.assert_allclose(x[:, LEAD["aVL"]], (lead_I - lead_III) / 2, atol=1e-6)
        np.testing.assert_allclose(x[:, LEAD["aVF"]], (lead_II + lead_III) / 2, atol=1e-6)


def test_same_rng_state_gives_the_same_exam_and_the_rng_advances():
    a = synthesize_ecg(np.random.default_rng(7), ("af", "pvc"))
    b = synthesize_ecg(np.random.default_rng(7), ("af", "pvc"))
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(7)
    first, second = synthesize_ecg(rng), synthesize_ecg(rng)
    assert not np.allclose(first, second)


def test_unknown_condition_is_named_in_the_error():
    with pytest.raises(ValueError, match="afib"):
        synthesize_ecg(np.random.default_rng(0), ("af", "afib"))


def test_a_bare_string_is_not_taken_as_a_set_of_letters():
    with pytest.raises(ValueError, match="collection"):
        synthesize_ecg(np.random.default_rng(0), "af")


@pytest.mark.parametrize("pair", [tuple(sorted(p)) for p in CONFLICTS])
def test_conflicting_conditions_raise(pair):
    with pytest.raises(ValueError, match=pair[0]):
        synthesize_ecg(np.random.default_rng(0), pair)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_every_condition_is_accepted(condition):
    x = synthesize_ecg(np.random.default_rng(0), [condition], sampling_rate=100.0)
    assert x.shape == (1000, 12)


def test_it_is_fast_enough_for_thousands_of_exams():
    rng = np.random.default_rng(0)
    synthesize_ecg(rng)
    start = time.process_time()  # CPU time: other processes on a shared machine do not count
    for conditions in [(), ("af",), ("tachy", "pvc"), ("lbbb",)] * 10:
        synthesize_ecg(rng, conditions)
    # ~4 ms each for 10 s at 500 Hz; the bound catches a loss of vectorisation.
    assert (time.process_time() - start) / 40 < 0.02


# --- rate and rhythm -------------------------------------------------------------------------


def test_normal_sinus_rhythm_is_60_to_100_bpm_and_regular(exams):
    for x in exams():
        assert 60 <= _heart_rate_bpm(x) <= 100
        rr = _rr_s(x)
        assert np.std(rr) / np.mean(rr) < 0.06


def test_bradycardia_is_below_60_and_tachycardia_above_100_bpm(exams):
    assert all(_heart_rate_bpm(x) < 60 for x in exams("brady"))
    assert all(_heart_rate_bpm(x) > 100 for x in exams("tachy"))


def test_af_is_irregularly_irregular_without_p_waves(exams):
    for x in exams("af"):
        rr = _rr_s(x)
        assert np.std(rr) / np.mean(rr) > 0.1
    # Averaged over beats the f-waves cancel; a sinus P wave stays (≥ 0.05 mV in lead II).
    af_p = [_p_wave_mv(x) for x in exams("af", "brady")]
    sinus_p = [_p_wave_mv(x) for x in exams("brady")]
    assert np.median(af_p) < 0.03 < 0.05 < np.median(sinus_p)
    assert np.mean(np.array(sinus_p) > 0.05) >= 0.9


def test_first_degree_av_block_prolongs_pr(exams):
    # At slow rates the P wave is clear of the previous T wave.
    normal = [_p_to_qrs_s(x) for x in exams("brady")]
    blocked = [_p_to_qrs_s(x) for x in exams("avb1", "brady")]
    assert all(0.11 < pr < 0.22 for pr in normal)
    assert all(pr > 0.23 for pr in blocked)
    at_any_rate = [_p_to_qrs_s(x) for x in exams("avb1")]
    assert np.nanmedian(at_any_rate) > np.median(normal) + 0.06


def test_pvc_is_an_early_wide_beat_followed_by_a_compensatory_pause(exams):
    for x in exams("pvc"):
        centres = _qrs_centres(x)
        rr = np.diff(centres) / FS
        usual = np.median(rr)
        early = [k for k in range(len(rr) - 1) if rr[k] < 0.85 * usual]
        assert early, "no premature beat"
        compensated = [k for k in early if abs(rr[k] + rr[k + 1] - 2 * usual) < 0.1 * usual]
        assert compensated, "no compensatory pause after the premature beat"


def test_pac_is_an_early_narrow_beat_that_resets_the_sinus_node(exams):
    for x in exams("pac"):
        rr = np.diff(_qrs_centres(x)) / FS
        usual = np.median(rr)
        early = [k for k in range(len(rr) - 1) if rr[k] < 0.85 * usual]
        assert early, "no premature beat"
        assert all(rr[k] + rr[k + 1] < 1.95 * usual for k in early)
    assert max(_qrs_width_s(x) for x in exams("pac")) < 0.1


# --- QRS morphology --------------------------------------------------------------------------


def test_bundle_branch_blocks_widen_the_qrs(exams):
    normal = [_qrs_width_s(x) for x in exams()]
    assert all(w < 0.1 for w in normal)
    for block in ("lbbb", "rbbb"):
        widths = [_qrs_width_s(x) for x in exams(block)]
        assert all(w >= 0.115 for w in widths), block
        assert np.median(widths) > np.median(normal) + 0.035, block


def _terminal_and_area(x, lead):
    """(mean of the last 30 ms of the QRS, fraction of the QRS area that is negative)."""
    beat_LC, zero = _average_beat(x)
    onset, end = _qrs_bounds(beat_LC, zero)
    qrs = beat_LC[onset : end + 1, LEAD[lead]]
    terminal = float(np.mean(qrs[-round(0.03 * FS) :]))
    return terminal, float(-qrs[qrs < 0].sum() / np.abs(qrs).sum())


def test_rbbb_has_a_positive_terminal_r_in_v1_and_a_wide_s_in_i_and_v6(exams):
    for x in exams("rbbb"):
        assert _terminal_and_area(x, "V1")[0] > 0.1
        assert _terminal_and_area(x, "V6")[0] < -0.05
        assert _terminal_and_area(x, "I")[0] < -0.02
    # Without the block the end of the QRS in V1 is the S wave, not an R'.
    assert np.median([_terminal_and_area(x, "V1")[0] for x in exams()]) < 0.05


def test_lbbb_is_negative_in_v1_positive_in_v6_with_discordant_t(exams):
    for x in exams("lbbb"):
        assert _terminal_and_area(x, "V1")[1] > 0.85
        assert _terminal_and_area(x, "V6")[1] < 0.15
        beat_LC, zero = _average_beat(x)
        _, end = _qrs_bounds(beat_LC, zero)
        st_t = beat_LC[end + round(0.05 * FS) : zero + round(0.4 * FS)]
        assert st_t[:, LEAD["V6"]].mean() < 0 < st_t[:, LEAD["V1"]].mean()


def test_lvh_raises_sokolow_lyon_voltage_above_3_5_mv(exams):
    def sokolow(x):
        beat_LC, zero = _average_beat(x)
        qrs = beat_LC[zero - round(0.08 * FS) : zero + round(0.08 * FS)]
        return -qrs[:, LEAD["V1"]].min() + qrs[:, LEAD["V5"]].max()

    assert all(sokolow(x) > 3.5 for x in exams("lvh"))
    assert np.median([sokolow(x) for x in exams()]) < 3.0


# --- ST segment, T wave and infarction -------------------------------------------------------


def test_normal_st_segment_is_isoelectric(exams):
    for x in exams():
        assert np.abs(_st_level_mv(x)).max() < 0.05


def test_st_elevation_and_depression_shift_the_st_segment(exams):
    assert all(_st_level_mv(x).max() > 0.08 for x in exams("st_elevation"))
    assert all(_st_level_mv(x).min() < -0.08 for x in exams("st_depression"))


def test_t_inversion_turns_the_lateral_t_waves_negative(exams):
    def lateral_t(x):
        beat_LC, zero = _average_beat(x)
        t_wave = beat_LC[zero + round(0.12 * FS) : zero + round(0.4 * FS)]
        return t_wave[:, [LEAD["V4"], LEAD["V5"], LEAD["V6"]]].mean()

    assert all(lateral_t(x) < -0.03 for x in exams("t_inversion"))
    assert all(lateral_t(x) > 0.03 for x in exams())


@pytest.mark.parametrize(
    ("infarct", "leads"), [("mi_inferior", ["III", "aVF"]), ("mi_anterior", ["V2", "V3"])]
)
def test_infarction_gives_q_waves_and_st_elevation_in_its_territory(exams, infarct, leads):
    for x in exams(infarct):
        beat_LC, zero = _average_beat(x)
        assert max(_q_wave_s(beat_LC, zero, n) for n in leads) >= 0.035, "no pathological Q"
        assert max(_st_level_mv(x)[[LEAD[n] for n in leads]]) > 0.1
