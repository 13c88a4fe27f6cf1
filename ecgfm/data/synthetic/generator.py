"""A physiologically shaped synthetic 12-lead ECG whose condition labels change the signal.

Each beat is a sum of Gaussian waves (P, Q, R, S, T, as in McSharry et al. 2003, "ECGSYN")
whose amplitudes are 3-D vectors: the cardiac dipole (a vectorcardiogram in Frank X left,
Y feet, Z back coordinates). The dipole is projected onto leads I, II and V1–V6 with Dower's
inverse transform (Dower et al. 1980); III, aVR, aVL and aVF are then computed from I and II, so
Einthoven's and Goldberger's laws hold exactly, also for the noise. Each exam draws its own heart
rate, heart-rate variability, electrical axis, amplitudes, intervals, noise and baseline wander.

Conflicting conditions (`CONFLICTS`) raise ValueError: AF has no P waves, so no PR interval to
prolong and no premature P wave; a rhythm cannot be both slow and fast; one exam has at most one
bundle branch block. `brady`/`tachy` with `af` set the ventricular rate of the AF.

How conditions act: `st_elevation` lifts the ST segment by 0.1–0.3 mV in a random territory
(anterior, inferior or lateral; the infarct's territory when `mi_*` is also given) with reciprocal
depression; `st_depression` is diffuse subendocardial ischaemia (down in I, II, V4–V6, up in
aVR); `t_inversion` inverts the T vector; `lvh` sets Sokolow–Lyon voltage to 3.8–5.5 mV without
strain; `mi_*` are acute infarcts (pathological Q + ST elevation; with `lbbb` only the ST change
shows); `pac`/`pvc` put 1–3 ectopic beats in the record.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from ecgfm.data.record import LEADS

CONDITIONS: tuple[str, ...] = (
    "af", "avb1", "lbbb", "rbbb", "brady", "tachy", "st_elevation",
    "st_depression", "t_inversion", "pac", "pvc", "lvh", "mi_anterior", "mi_inferior",
)  # fmt: skip

CONFLICTS: tuple[frozenset[str], ...] = (
    frozenset({"af", "avb1"}),
    frozenset({"af", "pac"}),
    frozenset({"brady", "tachy"}),
    frozenset({"lbbb", "rbbb"}),
)

# Dower's inverse transform, Frank X (left), Y (feet), Z (back) -> leads I, II, V1..V6.
_DOWER_8x3 = np.array(
    [
        [0.632, -0.235, 0.059],
        [0.235, 1.066, -0.132],
        [-0.515, 0.157, -0.917],
        [0.044, 0.164, -1.387],
        [0.882, 0.098, -1.277],
        [1.213, 0.127, -0.601],
        [1.125, 0.127, -0.086],
        [0.831, 0.076, 0.230],
    ]
)
_I, _II = _DOWER_8x3[0], _DOWER_8x3[1]
# All 12 leads as projections of the dipole (limb leads by Einthoven/Goldberger), LEADS order.
_LEAD_FIELD_12x3 = np.concatenate(
    [np.stack([_I, _II, _II - _I, -(_I + _II) / 2, _I - _II / 2, _II - _I / 2]), _DOWER_8x3[2:]]
)
_V1, _V5 = LEADS.index("V1"), LEADS.index("V5")

_P, _QRS, _T = 0, 1, 2  # wave groups: P waves move with the PR interval, T waves with QT
_SINUS, _PAC, _PVC = 0, 1, 2  # beat kinds

# Unit-ish injury-current directions (Frank coordinates) of the ST territories.
_TERRITORIES = {
    "anterior": np.array([0.25, 0.0, -1.0]),
    "inferior": np.array([-0.15, 1.0, 0.05]),
    "lateral": np.array([1.0, -0.25, 0.1]),
}
# Diffuse subendocardial ischaemia: ST vector towards aVR, depressing I, II, V4–V6.
_SUBENDOCARDIAL = np.array([-0.75, -0.6, 0.35])

_PRE_S, _POST_S = 0.55, 0.75  # beat window around the R peak, seconds


class _Waves:
    """A beat's waves: centre (s from R), left/right widths (s), dipole vector, group."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, float, np.ndarray, int]] = []

    def add(self, centre: float, sigma_l: float, sigma_r: float, vec: object, group: int) -> None:
        self.rows.append((centre, sigma_l, sigma_r, np.asarray(vec, float), group))

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        """Padded to `n` waves (zero-amplitude padding)."""
        c = np.zeros(n)
        sl = np.full(n, 0.01)
        sr = np.full(n, 0.01)
        v = np.zeros((n, 3))
        g = np.full(n, _QRS)
        for i, (ci, sli, sri, vi, gi) in enumerate(self.rows):
            c[i], sl[i], sr[i], v[i], g[i] = ci, sli, sri, vi, gi
        return c, sl, sr, v, g


def _check_conditions(conditions: Collection[str]) -> frozenset[str]:
    if isinstance(conditions, str):
        raise ValueError(f"conditions must be a collection of names, got the string {conditions!r}")
    conds = frozenset(conditions)
    unknown = sorted(conds - set(CONDITIONS))
    if unknown:
        raise ValueError(f"unknown ECG condition(s) {unknown}; expected some of {CONDITIONS}")
    for pair in CONFLICTS:
        if pair <= conds:
            raise ValueError(f"conditions {sorted(pair)} cannot occur together in one exam")
    return conds


def _rotation(rng: np.random.Generator, frontal_deg: float, horizontal_deg: float) -> np.ndarray:
    """Rotation about Z (frontal-plane axis) then about Y (horizontal plane)."""
    a, b = np.deg2rad(frontal_deg), np.deg2rad(horizontal_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return ry @ rz


def _heart_rate(rng: np.random.Generator, conds: frozenset[str]) -> float:
    if "brady" in conds:
        return rng.uniform(40, 55)
    if "tachy" in conds:
        return rng.uniform(105, 150)
    return rng.uniform(62, 98)


def _rhythm(
    rng: np.random.Generator, conds: frozenset[str], duration_s: float, resp_hz: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R-peak times (s), beat kinds and the RR interval (s) before each beat."""
    rr_mean = 60.0 / _heart_rate(rng, conds)
    n = int(np.ceil((duration_s + _PRE_S + _POST_S + 2.0) / (0.45 * rr_mean))) + 4
    if "af" in conds:
        # Irregularly irregular: independent RR intervals, coefficient of variation 0.2–0.35.
        cv = rng.uniform(0.2, 0.35)
        rr = np.maximum(rr_mean * (1 + cv * rng.standard_normal(n)), 0.3)
    else:
        nominal = np.arange(n) * rr_mean
        rsa = rng.uniform(0.01, 0.04) * np.sin(2 * np.pi * resp_hz * nominal + rng.uniform(0, 6.3))
        lf = rng.uniform(0.0, 0.03) * np.sin(2 * np.pi * 0.1 * nominal + rng.uniform(0, 6.3))
        rr = rr_mean * (1 + rsa + lf + rng.normal(0, 0.008, n))
    kinds = np.full(n, _SINUS)
    start = -rng.uniform(1.0, 2.0) * rr_mean - _POST_S
    times = start + np.cumsum(rr)
    ectopic = [c for c in ("pac", "pvc") if c in conds]
    if ectopic:
        inside = np.flatnonzero((times > 0.5) & (times < duration_s - 1.5))
        candidates = list(rng.permutation(inside))
        chosen: list[int] = []
        for k in candidates:
            if all(abs(k - j) > 1 for j in chosen):
                chosen.append(int(k))
        n_ectopic = min(len(chosen), int(rng.integers(len(ectopic), len(ectopic) + 3)))
        chosen = chosen[:n_ectopic]
        kinds_for = [_PAC if c == "pac" else _PVC for c in ectopic]
        for i, k in enumerate(chosen):
            kind = kinds_for[i % len(kinds_for)] if i < len(kinds_for) else rng.choice(kinds_for)
            kinds[k] = kind
            normal = rr[k]
            coupling = rng.uniform(0.55, 0.75) if kind == _PVC else rng.uniform(0.6, 0.8)
            rr[k] = coupling * normal
            # A PVC does not reset the sinus node (full compensatory pause); a PAC does.
            rr[k + 1] = rr[k + 1] + (1 - coupling) * normal if kind == _PVC else normal * 1.05
        times = start + np.cumsum(rr)
    keep = (times > -_POST_S) & (times < duration_s + _PRE_S)
    return times[keep], kinds[keep], rr[keep]


def _sinus_beat(
    rng: np.random.Generator, conds: frozenset[str], rot: np.ndarray, scale: dict[str, float]
) -> tuple[_Waves, float, float]:
    """Waves of a conducted beat, its QRS onset and its J point (s from the R peak)."""
    w = _Waves()
    q = rng.uniform(0.9, 1.1)  # QRS width factor
    qrs_s = scale["qrs"]
    if "lbbb" in conds:
        # Left bundle block: septum activates right-to-left, LV late: broad leftward-posterior
        # notched R in I/V5/V6, QS in V1.
        width = rng.uniform(0.9, 1.1)
        w.add(-0.028 * width, 0.016 * width, 0.018 * width, [0.85, 0.25, 0.8], _QRS)
        w.add(0.022 * width, 0.018 * width, 0.02 * width, [1.05, 0.05, 1.0], _QRS)
        onset, j = -0.075 * width, 0.072 * width
    else:
        septal = np.array([-0.2, 0.05, -0.25])
        r_vec = np.array([1.2, 0.9, 0.45])
        for infarct, wall in (("mi_anterior", "anterior"), ("mi_inferior", "inferior")):
            if infarct in conds:
                # Dead myocardium adds no forces, so the early QRS vector points away from the
                # wall: a Q wave of ≥ 40 ms in the leads facing it, and less R there.
                u = _TERRITORIES[wall] / np.linalg.norm(_TERRITORIES[wall])
                septal = septal - np.dot(septal, u) * u
                r_vec = r_vec - 0.75 * max(np.dot(r_vec, u), 0.0) * u
                w.add(-0.024 * q, 0.015 * q, 0.013 * q, -rng.uniform(0.5, 0.8) * u, _QRS)
        w.add(-0.024 * q, 0.009 * q, 0.008 * q, septal, _QRS)
        w.add(0.0, 0.0095 * q, 0.0095 * q, r_vec, _QRS)
        s_vec = np.array([-0.35, -0.3, 0.7])
        if "rbbb" in conds:
            # Right bundle block: late unopposed right-ventricular activation, rightward and
            # anterior: R' in V1, broad S in I and V6.
            s_vec = s_vec * 0.4
            w.add(0.022 * q, 0.01 * q, 0.01 * q, s_vec, _QRS)
            w.add(0.058, 0.016, 0.02, [-0.5, -0.05, -0.75], _QRS)
            onset, j = -0.045 * q, 0.1
        else:
            w.add(0.022 * q, 0.01 * q, 0.01 * q, s_vec, _QRS)
            onset, j = -0.045 * q, 0.045 * q
    pr = rng.uniform(0.24, 0.32) if "avb1" in conds else rng.uniform(0.12, 0.2)
    p_centre = onset - pr + 0.05
    w.add(p_centre - 0.012, 0.02, 0.016, np.array([0.02, 0.1, -0.07]) * scale["p"], _P)
    w.add(p_centre + 0.014, 0.016, 0.02, np.array([0.09, 0.06, 0.07]) * scale["p"], _P)
    t_vec = np.array([0.5, 0.3, -0.3])
    if "lbbb" in conds:
        t_vec = np.array([-0.35, 0.05, -0.45])
    if "rbbb" in conds:
        t_vec = t_vec + np.array([0.05, 0.0, 0.3])
    if "t_inversion" in conds:
        t_vec = -t_vec * rng.uniform(0.6, 1.0)
    # Centred per beat from QT; a blocked beat repolarises more slowly (broader T).
    t_width = 1.25 if "lbbb" in conds else 1.0
    w.add(0.0, 0.06 * t_width, 0.037 * t_width, t_vec * scale["t"], _T)
    w.rows = [(c, sl, sr, rot @ v * (qrs_s if g == _QRS else 1.0), g) for c, sl, sr, v, g in w.rows]
    return w, onset, j


def _pvc_beat(rng: np.random.Generator) -> tuple[_Waves, float, float]:
    """A unifocal ventricular ectopic beat: wide bizarre QRS, no P, discordant T."""
    w = _Waves()
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    amp = rng.uniform(2.0, 3.2)
    turn = _rotation(rng, rng.uniform(-40, 40), rng.uniform(-40, 40))
    # The ectopic wavefront spreads muscle-to-muscle: slurred start, one steep main deflection,
    # slurred end, turning as it goes; 130–180 ms in all.
    w.add(-0.04, 0.02, 0.016, 0.5 * amp * direction, _QRS)
    w.add(0.0, 0.013, 0.013, amp * turn @ direction, _QRS)
    w.add(0.042, 0.016, 0.022, 0.5 * amp * turn @ turn @ direction, _QRS)
    w.add(0.0, 0.07, 0.045, -0.35 * amp * direction, _T)
    return w, -0.08, 0.085


def synthesize_ecg(
    rng: np.random.Generator,
    conditions: Collection[str] = (),
    *,
    sampling_rate: float = 500.0,
    duration_s: float = 10.0,
) -> np.ndarray:
    """[T, 12] float32 in millivolts, leads in ecgfm.data.record.LEADS order.

    T = round(duration_s * sampling_rate). Empty `conditions` is normal sinus rhythm at
    60–100 bpm; each name in `CONDITIONS` changes the signal the way that condition does.
    Raises ValueError for an unknown condition or a pair in `CONFLICTS`. The result depends only
    on the state of `rng`.
    """
    conds = _check_conditions(conditions)
    fs = float(sampling_rate)
    n_samples = round(duration_s * fs)
    if n_samples <= 0 or fs <= 0:
        raise ValueError(f"need positive duration and sampling rate, got {duration_s}, {fs}")
    resp_hz = rng.uniform(0.15, 0.35)
    times, kinds, rr_prev = _rhythm(rng, conds, duration_s, resp_hz)

    frontal = rng.uniform(-35, 25) + (-15 if "lvh" in conds else 0)
    rot = _rotation(rng, frontal, rng.uniform(-15, 15))
    scale = {"qrs": rng.uniform(0.75, 1.3), "p": rng.uniform(0.7, 1.3), "t": rng.uniform(0.7, 1.3)}
    sinus, onset, j_point = _sinus_beat(rng, conds, rot, scale)
    if "lvh" in conds:
        _scale_lvh(rng, sinus)
    pac = _Waves()
    pac.rows = [r for r in sinus.rows if r[4] != _P]
    p_axis = _rotation(rng, rng.choice([-1, 1]) * rng.uniform(70, 150), rng.uniform(-30, 30))
    for c, sl, sr, v, g in sinus.rows:
        if g == _P:
            pac.add(c + rng.uniform(0.0, 0.04), sl, sr, p_axis @ v * rng.uniform(0.7, 1.3), _P)
    pvc, pvc_onset, pvc_j = _pvc_beat(rng)
    if "af" in conds:
        sinus.rows = [r for r in sinus.rows if r[4] != _P]
    morphs = (sinus, pac, pvc)
    n_waves = max(len(m.rows) for m in morphs)
    c_MW, sl_MW, sr_MW, v_MW3, g_MW = (
        np.stack(a) for a in zip(*(m.arrays(n_waves) for m in morphs), strict=True)
    )

    # Per-beat wave parameters; T waves follow QT (Fridericia) of the preceding RR.
    qtc = rng.uniform(0.37, 0.43) + (0.03 if {"lbbb", "rbbb"} & conds else 0.0)
    qt_K = qtc * np.cbrt(np.clip(rr_prev, 0.3, 2.0))
    onset_K = np.where(kinds == _PVC, pvc_onset, onset)
    t_peak_K = onset_K + qt_K - 2.2 * 0.037 * qt_K / 0.4
    c_KW = c_MW[kinds] + np.where(g_MW[kinds] == _T, t_peak_K[:, None], 0.0)
    t_stretch = np.where(g_MW[kinds] == _T, (qt_K / 0.4)[:, None], 1.0)
    sl_KW, sr_KW = sl_MW[kinds] * t_stretch, sr_MW[kinds] * t_stretch
    # Anti-aliasing: a Gaussian low-pass widens each wave and keeps its area, so narrow waves
    # sampled at 100 Hz are not missed between samples.
    aa = 0.5 / fs
    gain_KW = (sl_KW + sr_KW) / (np.hypot(sl_KW, aa) + np.hypot(sr_KW, aa))
    sl_KW, sr_KW = np.hypot(sl_KW, aa), np.hypot(sr_KW, aa)
    resp = 1 + rng.uniform(0.02, 0.08) * np.sin(2 * np.pi * resp_hz * times + rng.uniform(0, 6.3))
    jitter = rng.normal(1.0, 0.03, (len(times), n_waves))
    v_KW3 = v_MW3[kinds] * (gain_KW * jitter * resp[:, None])[:, :, None]

    pre, post = round(_PRE_S * fs), round(_POST_S * fs)
    start_K = np.round(times * fs).astype(int) - pre
    t_KL = (start_K[:, None] + np.arange(pre + post)[None, :]) / fs - times[:, None]
    dt = t_KL[:, None, :] - c_KW[:, :, None]
    sigma = np.where(dt < 0, sl_KW[:, :, None], sr_KW[:, :, None])
    g_KWL = np.exp(-0.5 * (dt / sigma) ** 2)
    dipole_KL3 = np.einsum("kwl,kwc->klc", g_KWL, v_KW3)

    st_vec = _st_vector(rng, conds)
    if np.any(st_vec):
        j_K = np.where(kinds == _PVC, pvc_j, j_point)
        plateau_KL = _expit((t_KL - j_K[:, None]) / 0.006) * _expit(
            (t_peak_K[:, None] - t_KL) / 0.03
        )
        dipole_KL3 += (
            plateau_KL[:, :, None] * np.where(kinds == _PVC, 0.0, 1.0)[:, None, None] * st_vec
        )

    # Beats run from before the start to after the end, so the record begins mid-rhythm.
    pad = pre + post
    dipole_T3 = np.zeros((n_samples + 2 * pad, 3))
    for k, s in enumerate(start_K + pad):
        dipole_T3[s : s + pre + post] += dipole_KL3[k]
    dipole_T3 = dipole_T3[pad : pad + n_samples]
    t = np.arange(n_samples) / fs
    if "af" in conds:
        dipole_T3 += _fibrillatory_waves(rng, t)
    leads_T8 = dipole_T3 @ _DOWER_8x3.T
    leads_T8 += _noise(rng, t, fs, resp_hz)
    leads_T8 = leads_T8.astype(np.float32)
    lead_I, lead_II = leads_T8[:, 0], leads_T8[:, 1]
    lead_III = lead_II - lead_I
    out = np.empty((n_samples, len(LEADS)), np.float32)
    out[:, 0], out[:, 1], out[:, 2] = lead_I, lead_II, lead_III
    out[:, 3] = -(lead_I + lead_II) / 2
    out[:, 4] = (lead_I - lead_III) / 2
    out[:, 5] = (lead_II + lead_III) / 2
    out[:, 6:] = leads_T8[:, 2:]
    return out


def _expit(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


def _st_vector(rng: np.random.Generator, conds: frozenset[str]) -> np.ndarray:
    """The ST-segment dipole: injury current of the territory, or subendocardial ischaemia."""
    vec = np.zeros(3)
    territory = None
    if "mi_anterior" in conds:
        territory = "anterior"
    elif "mi_inferior" in conds:
        territory = "inferior"
    elif "st_elevation" in conds:
        territory = str(rng.choice(list(_TERRITORIES)))
    if territory is not None:
        u = _TERRITORIES[territory]
        low, high = (0.15, 0.4) if {"mi_anterior", "mi_inferior"} & conds else (0.1, 0.3)
        vec += u * rng.uniform(low, high) / np.max(_LEAD_FIELD_12x3 @ u)
    if "st_depression" in conds:
        u = _SUBENDOCARDIAL
        vec += u * rng.uniform(0.1, 0.3) / -np.min(_LEAD_FIELD_12x3 @ u)
    if "lbbb" in conds:
        vec += np.array([-0.08, 0.0, -0.1])
    return vec


def _scale_lvh(rng: np.random.Generator, waves: _Waves) -> None:
    """Scales the QRS so that S in V1 + R in V5 (Sokolow–Lyon) is 3.8–5.5 mV."""
    t = np.linspace(-0.1, 0.15, 501)
    qrs = np.zeros((len(t), 3))
    for c, sl, sr, v, g in waves.rows:
        if g == _QRS:
            s = np.where(t < c, sl, sr)
            qrs += np.exp(-0.5 * ((t - c) / s) ** 2)[:, None] * v
    leads = qrs @ _LEAD_FIELD_12x3.T
    sokolow = -leads[:, _V1].min() + leads[:, _V5].max()
    k = rng.uniform(3.8, 5.5) / sokolow
    waves.rows = [(c, sl, sr, v * (k if g == _QRS else 1.0), g) for c, sl, sr, v, g in waves.rows]


def _fibrillatory_waves(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """`[T, 3]` atrial fibrillation f-waves: 4–9 Hz, drifting frequency and amplitude."""
    out = np.zeros((len(t), 3))
    f0 = rng.uniform(4, 9)
    for _ in range(2):
        drift = 0.4 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 6.3))
        phase = 2 * np.pi * np.cumsum(f0 + drift) * (t[1] - t[0] if len(t) > 1 else 0.0)
        amp = rng.uniform(0.03, 0.08) * (1 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t))
        direction = np.array([-0.2, 0.4, -1.0]) + rng.normal(0, 0.3, 3)
        out += (amp * np.sin(phase + rng.uniform(0, 6.3)))[:, None] * direction
        f0 *= rng.uniform(0.9, 1.1)
    return out


def _noise(rng: np.random.Generator, t: np.ndarray, fs: float, resp_hz: float) -> np.ndarray:
    """`[T, 8]` white noise, baseline wander (< 0.5 Hz) and sometimes powerline hum."""
    n = len(t)
    out = rng.normal(0, rng.uniform(0.008, 0.025), (n, 8))
    freq = np.stack([np.full(8, resp_hz), rng.uniform(0.03, 0.12, 8), rng.uniform(0.1, 0.45, 8)])
    amp = np.stack([rng.uniform(0.02, 0.1, 8), rng.uniform(0.03, 0.15, 8), rng.uniform(0, 0.05, 8)])
    phase = rng.uniform(0, 2 * np.pi, (3, 8))
    for f, a, p in zip(freq, amp, phase, strict=True):
        out += a * np.sin(2 * np.pi * f * t[:, None] + p)
    line_hz = rng.choice([50.0, 60.0])
    if rng.random() < 0.3 and fs > 2 * line_hz:
        out += rng.uniform(0.005, 0.02, 8) * np.sin(2 * np.pi * line_hz * t[:, None] + phase[0])
    return out
