"""Standardisation: a source episode -> the store's convention at the motion rate (15 fps by default).

What happens to each hand of a ``SourceEpisode`` (``handvla.ingest.sources``):

- **joints only** (EgoDex, FPHA, joints21 files; ``needs_fit``): the 21 points are low-passed (when the
  source rate is above 1.5x the motion rate), sampled at the output times, and fitted to hand parameters with
  ``handvla.hand.fitting`` (joint limits, temporal smoothness, shape per sequence). A fit worse than
  ``max_fit_error_mm``, or joints that look like the other hand (a mislabelled side: `handedness_cues`),
  fails the episode with an ``InputError`` (the build reports and skips it). The side check weighs two
  cues that a mirror image flips: the finger flexion (PIP/DIP joints bend towards the palm) and the
  transverse arch of the knuckles (the middle and ring MCPs lie on the back side of the index-little line);
  each votes only when it is clear (``side_check_flex_deg``, ``side_check_arch``), and the hand is refused
  only when the clear votes say "the other hand". A flat hand with slightly hyperextended fingers (turning
  pages, pressing) is then not refused on its small backward bend alone.
- **hand parameters** (MANO sources, HaMeR pseudo-labels): cleaned as one ``ParamTrack`` per hand (unit
  quaternions for every rotation, wrist position in metres, a validity mask, timestamps):
  1. left/right swap repair (per-frame pseudo-labels): the per-frame detections are re-assigned to the two
     tracks by a Viterbi search over "as labelled" / "exchanged" per frame whose costs are the wrist jump
     (metres, with a tolerance that grows with the time since the track was last seen), the wrist rotation
     change and the finger pose change, plus a fixed cost per detection moved against the detector's label.
     Each path keeps its own last-seen value per track, so a hand that was lost for a while is compared
     with where it was last. A moved detection was predicted with the other hand's model (HaMeR flips left
     crops), so by default its parameters are replaced by interpolation from its correctly labelled
     neighbours when the run is short (``swap_refill='interpolate'``), or kept (``'keep'``).
  2. outlier rejection: a Hampel-style test on the wrist position, the wrist rotation and the finger pose:
     each frame is predicted from its neighbours (the median of two interpolations and two extrapolations
     from frames ``outlier_step_s`` and twice that away, which follows curved motion where a running median
     lags), and rejected when it is further than ``outlier_mad_k`` robust standard deviations of the whole
     track's residuals and than a floor in mm / degrees (so that tracker jitter never trips it); plus a
     velocity test (a frame entered and left faster than ``max_speed_m_s`` in opposite directions).
     Rejected frames become gaps.
  3. temporal smoothing: a Gaussian in time (sigma ``smooth_sigma_s``; timestamps may be uneven) on the
     positions and on every rotation as hemisphere-aligned quaternions (a weighted chordal mean,
     renormalised), within runs of valid frames only. Sources above 1.5x the motion rate always get at
     least an anti-alias Gaussian (sigma 1 / (pi fps_out)) before they are decimated.
  4. resampling to the output times: slerp for rotations, linear for positions; an output frame is valid
     when both source frames around it are.
  5. gap repair: runs of at most ``max_gap_frames`` invalid output frames with valid frames on both sides
     are interpolated (slerp / linear) and become valid; longer gaps and gaps at the ends stay invalid
     (their values are filled for finiteness but ``valid`` is False).
  Parameters of a different hand model than the store's (MANO sources into a 'builtin' store) are turned
  into joints with their own model and re-fitted with the store's model (``origin = 'refit'``).

Output times: with a video at or above the motion rate the output frames are the source frames nearest to
the grid ``k / fps`` (``frame_index``), and the motion is taken at exactly those frames, so image and
motion stay in sync (the timing jitter, at most half a source frame, is reported as
``max_time_offset_ms``); otherwise the grid itself, from uneven timestamps too, and a video (if any) takes
the nearest frame.

Every step is reported per hand (``StandardizeResult.report``): fit error (mm), frames fitted, swaps
repaired, outliers rejected, frames repaired (gap-filled), frames dropped (invalid in the output).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import Field

from handvla.config import ConfigModel
from handvla.data.schema import Episode
from handvla.errors import InputError
from handvla.hand import rotations as R
from handvla.hand.fitting import FitConfig, fit_joints
from handvla.hand.io import DEFAULT_JOINT_ORDER, JOINT_SCHEMES
from handvla.hand.model import HandModel
from handvla.hand.motion import HandMotion, fill_frames, interp_points, sample_frames
from handvla.hand.registry import motion_joints, shared_hand_model
from handvla.hand.topology import SIDES

Switch = Literal["auto", "on", "off"]


class StandardizeConfig(ConfigModel):
    """Options of the standardisation step (YAML section ``standardize`` of a build config)."""

    fps: float = Field(15.0, gt=0, description="motion rate of the output (Being-H0: 15)")
    max_gap_frames: int = Field(5, ge=0, description="gaps up to this many output frames are interpolated")
    snap_to_video: bool = Field(True, description="take the motion at the video frames kept (exact sync)")
    antialias: bool = Field(True, description="low-pass sources above the motion rate before decimating")
    # -- swap repair
    swap_repair: Switch = Field("auto", description="auto: on for per-frame pseudo-labels (kind rgb, MANO)")
    swap_refill: Literal["interpolate", "keep"] = "interpolate"
    swap_label_cost: float = Field(1.0, ge=0, description="cost of moving one detection against its label")
    swap_pos_tol_m: float = Field(0.03, gt=0, description="wrist jump tolerated between consecutive frames")
    swap_speed_m_s: float = Field(1.5, ge=0, description="tolerance growth per second without the hand")
    swap_rot_tol_deg: float = Field(30.0, gt=0)
    swap_pose_tol_deg: float = Field(15.0, gt=0, description="mean finger-joint change tolerated")
    # -- outliers
    outliers: Switch = Field("auto", description="auto: on except for motion capture sources")
    outlier_step_s: float = Field(
        1 / 30,
        gt=0,
        description="spacing of the neighbours that predict a frame (glitches shorter are caught)",
    )
    outlier_mad_k: float = Field(5.0, gt=0, description="threshold in robust standard deviations")
    outlier_floor_mm: float = Field(30.0, ge=0, description="never reject a wrist closer than this")
    outlier_floor_deg: float = Field(30.0, ge=0, description="never reject a wrist rotation closer than this")
    outlier_pose_floor_deg: float = Field(25.0, ge=0, description="same for the mean finger-joint angle")
    max_speed_m_s: float = Field(5.0, gt=0, description="a wrist entering and leaving faster is a spike")
    # -- smoothing
    smooth: Switch = Field("auto", description="auto: on for per-frame estimates (kind rgb)")
    smooth_sigma_s: float = Field(0.03, ge=0, description="Gaussian sigma in seconds")
    # -- fitting (joints -> parameters)
    fit_rate: Literal["target", "source"] = Field(
        "target", description="fit at the motion rate or the source's"
    )
    fit_iters: int = Field(50, ge=0)
    fit_global_iters: int = Field(5, ge=0)
    fit_acc_hz: float = Field(8.0, ge=0)
    fit_limit_margin_deg: float = Field(10.0, ge=0)
    max_fit_error_mm: float = Field(25.0, gt=0, description="a worse fit fails the episode")
    side_check_flex_deg: float = Field(
        10.0, gt=0, description="median PIP/DIP flexion (deg) beyond which it votes in the side check"
    )
    side_check_arch: float = Field(
        0.02,
        gt=0,
        description="knuckle arch (share of the palm width) beyond which it votes in the side check",
    )

    def fit_config(self) -> FitConfig:
        return FitConfig(
            iters=self.fit_iters,
            global_iters=self.fit_global_iters,
            acc_hz=self.fit_acc_hz,
            limit_margin_deg=self.fit_limit_margin_deg,
        )


# ---------------------------------------------------------------------------------------------------------
# Quaternions (numpy, wxyz, float64; conversions, slerp and angles are handvla.hand.rotations')
# ---------------------------------------------------------------------------------------------------------


def _continuous(q: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Flip signs so consecutive valid quaternions (T, ..., 4) lie in the same hemisphere (per channel)."""
    q = q.copy()
    idx = np.flatnonzero(valid)
    if idx.size < 2:
        return q
    d = (q[idx[1:]] * q[idx[:-1]]).sum(-1)  # (N-1, ...)
    sign = np.cumprod(np.where(d < 0, -1.0, 1.0), axis=0)
    q[idx[1:]] *= sign[..., None]
    return q


# ---------------------------------------------------------------------------------------------------------
# One hand's parameters on a time axis
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ParamTrack:
    """One hand as unit quaternions on a time axis: what the cleaning steps work on."""

    times: np.ndarray  # (T,) seconds, increasing
    go: np.ndarray  # (T, 4) wrist rotation, wxyz
    pose: np.ndarray  # (T, 15, 4) finger rotations, wxyz
    wrist: np.ndarray  # (T, 3) metres
    valid: np.ndarray  # (T,) bool
    betas: np.ndarray  # (10,)
    side: str = "right"
    hand_model: str = "builtin"

    @classmethod
    def from_motion(cls, m: HandMotion, times: np.ndarray | None = None) -> ParamTrack:
        q = m.rotations_quat()
        return cls(
            times=m.times if times is None else np.asarray(times, np.float64),
            go=q[:, 0],
            pose=q[:, 1:],
            wrist=np.asarray(m.wrist_pos, np.float64).copy(),
            valid=np.asarray(m.valid, bool).copy(),
            betas=np.asarray(m.betas, np.float64).copy(),
            side=m.side,
            hand_model=m.hand_model,
        )

    def __len__(self) -> int:
        return self.times.shape[0]

    def copy(self) -> ParamTrack:
        return replace(
            self,
            times=self.times.copy(),
            go=self.go.copy(),
            pose=self.pose.copy(),
            wrist=self.wrist.copy(),
            valid=self.valid.copy(),
            betas=self.betas.copy(),
        )

    def take(self, idx: np.ndarray) -> ParamTrack:
        """Frames ``idx`` (exact samples, no interpolation)."""
        return replace(
            self,
            times=self.times[idx],
            go=self.go[idx],
            pose=self.pose[idx],
            wrist=self.wrist[idx],
            valid=self.valid[idx],
        )

    def rotations(self) -> np.ndarray:
        """(T, 16, 4) the wrist rotation then the finger rotations."""
        return np.concatenate([self.go[:, None], self.pose], 1)

    def to_motion(self, fps: float) -> HandMotion:
        """A ``HandMotion``; invalid frames get interpolated/held values so that everything is finite."""
        tr = fill_gaps(self, max_gap=None)[0] if self.valid.any() else self
        go = R.quaternion_to_axis_angle(tr.go) if self.valid.any() else np.zeros((len(self), 3))
        pose = R.quaternion_to_axis_angle(tr.pose) if self.valid.any() else np.zeros((len(self), 15, 3))
        wrist = tr.wrist if self.valid.any() else np.zeros((len(self), 3))
        return HandMotion(
            global_orient=go.astype(np.float32),
            hand_pose=pose.astype(np.float32),
            wrist_pos=np.nan_to_num(wrist).astype(np.float32),
            betas=self.betas.astype(np.float32),
            side=self.side,
            fps=float(fps),
            valid=self.valid.copy(),
            hand_model=self.hand_model,
        )


# ---------------------------------------------------------------------------------------------------------
# Resampling, gap repair, smoothing
# ---------------------------------------------------------------------------------------------------------


def resample_track(tr: ParamTrack, tq: np.ndarray) -> ParamTrack:
    """The track at times ``tq`` (seconds): slerp for rotations, linear for the wrist
    (``handvla.hand.motion.sample_frames``: a query is valid when both source samples around it are)."""
    tq = np.asarray(tq, np.float64)
    if len(tr) == 0:
        raise InputError("resample_track", "times", "at least one source frame", "0")
    q, wrist, valid = sample_frames(tr.times, tq, tr.rotations(), tr.wrist, tr.valid)
    return replace(tr, times=tq.copy(), go=q[:, 0], pose=q[:, 1:], wrist=wrist, valid=valid)


def fill_gaps(tr: ParamTrack, max_gap: int | None) -> tuple[ParamTrack, np.ndarray]:
    """Interpolate invalid frames from the nearest valid frames around them (slerp / linear, by time;
    ``handvla.hand.motion.fill_frames``).

    Gaps of at most ``max_gap`` frames with valid frames on both sides become valid (``None``: values are
    filled everywhere but validity is unchanged; frames before the first / after the last valid frame hold
    its value). Returns the track and the (T,) mask of frames that were repaired (made valid).
    """
    q, wrist, valid = fill_frames(tr.times, tr.rotations(), tr.wrist, tr.valid, max_gap)
    out = replace(tr.copy(), go=q[:, 0], pose=q[:, 1:], wrist=wrist, valid=valid)
    return out, valid & ~tr.valid


def _gaussian_average(
    vals: np.ndarray, t: np.ndarray, valid: np.ndarray, sigma_s: float, same_run: bool = True
) -> np.ndarray:
    """Gaussian-weighted average over time of (T, C) values, among valid frames (of the same run of
    consecutive valid frames when ``same_run``); uneven timestamps are weighted by their real distance."""
    T = vals.shape[0]
    if T < 2 or sigma_s <= 0:
        return vals.copy()
    dt = np.diff(t)
    step = float(np.median(dt)) if dt.size else 1.0
    K = int(min(max(1, np.ceil(3.0 * sigma_s / max(step, 1e-6))), 256))
    run = np.cumsum(~valid) if same_run else np.zeros(T, int)
    v = np.where(valid[:, None], vals, 0.0)
    num = np.zeros_like(v)
    den = np.zeros(T)
    i = np.arange(T)
    for o in range(-K, K + 1):
        j = i + o
        ok = (j >= 0) & (j < T)
        jj = np.clip(j, 0, T - 1)
        ok &= valid & valid[jj] & (run[jj] == run)
        w = np.exp(-0.5 * ((t[jj] - t) / sigma_s) ** 2) * ok
        num += w[:, None] * v[jj]
        den += w
    out = vals.copy()
    good = den > 0
    out[good] = num[good] / den[good, None]
    return out


def smooth_track(tr: ParamTrack, sigma_s: float) -> ParamTrack:
    """Gaussian smoothing in time of the wrist position and of every rotation (hemisphere-aligned
    quaternions averaged and renormalised), within runs of valid frames."""
    if sigma_s <= 0 or tr.valid.sum() < 3:
        return tr.copy()
    T = len(tr)
    go = _continuous(tr.go, tr.valid)
    pose = _continuous(tr.pose, tr.valid)
    packed = np.concatenate([tr.wrist, go, pose.reshape(T, 60)], 1)  # (T, 67)
    sm = _gaussian_average(packed, tr.times, tr.valid, sigma_s)
    out = tr.copy()
    out.wrist = np.where(tr.valid[:, None], sm[:, :3], tr.wrist)
    g = sm[:, 3:7]
    p = sm[:, 7:].reshape(T, 15, 4)
    g = g / np.linalg.norm(g, axis=-1, keepdims=True).clip(1e-12)
    p = p / np.linalg.norm(p, axis=-1, keepdims=True).clip(1e-12)
    out.go = np.where(tr.valid[:, None], g, tr.go)
    out.pose = np.where(tr.valid[:, None, None], p, tr.pose)
    return out


def smooth_points(joints: np.ndarray, t: np.ndarray, sigma_s: float) -> np.ndarray:
    """Gaussian smoothing of (T, J, 3) points (NaN = missing frame) within runs of observed frames."""
    j = np.asarray(joints, np.float64)
    ok = np.isfinite(j).all(axis=tuple(range(1, j.ndim)))
    flat = np.nan_to_num(j.reshape(j.shape[0], -1))
    sm = _gaussian_average(flat, np.asarray(t, np.float64), ok, sigma_s).reshape(j.shape)
    sm[~ok] = np.nan
    return sm


# ---------------------------------------------------------------------------------------------------------
# Outliers
# ---------------------------------------------------------------------------------------------------------


def _trend_prediction(vals: np.ndarray, valid: np.ndarray, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Each frame predicted from its neighbours ``step`` and ``2 step`` frames away: the componentwise
    median of two linear interpolations ((v[i-s] + v[i+s]) / 2, (v[i-2s] + v[i+2s]) / 2) and two linear
    extrapolations (2 v[i-s] - v[i-2s], 2 v[i+s] - v[i+2s]). It follows curved motion (a running median
    lags behind it), survives one bad neighbour, and with step > 1 sees through glitches shorter than the
    step. (T, C) -> (T, C) predictions and the (T,) mask of frames whose four neighbours and every frame
    between them are valid (the others are not tested)."""
    T = vals.shape[0]
    s = max(1, int(step))
    pred = np.full(vals.shape, np.nan)
    tested = np.zeros(T, bool)
    if T < 4 * s + 1:
        return pred, tested
    i = np.arange(2 * s, T - 2 * s)
    # all frames within +-2s valid: a sliding-window minimum of the valid mask

    tested[i] = sliding_window_view(valid, 4 * s + 1).all(-1)
    v = vals
    cands = np.stack(
        [
            (v[i - s] + v[i + s]) / 2,
            (v[i - 2 * s] + v[i + 2 * s]) / 2,
            2 * v[i - s] - v[i - 2 * s],
            2 * v[i + s] - v[i + 2 * s],
        ]
    )  # (4, N, C)
    pred[i] = np.median(cands, axis=0)
    return pred, tested


def _robust_flags(resid: np.ndarray, ok: np.ndarray, k: float, floor: float) -> np.ndarray:
    """resid (T,) > max(k * 1.4826 * median(resid), floor) where ``ok``."""
    if ok.sum() < 3:
        return np.zeros_like(ok)
    scale = 1.4826 * float(np.median(resid[ok]))
    return ok & (resid > max(k * scale, floor))


def _prediction_flags(
    series: list[tuple[np.ndarray, str]], clean: list[np.ndarray], v: np.ndarray, step: int, cfg
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Flags (T,) of the neighbour-prediction test for each (values, kind) of ``series``, predicting from
    ``clean`` (the same values with suspect frames replaced); returns the predictions too."""
    T = v.shape[0]
    out = np.zeros(T, bool)
    preds = []
    floors = {"pos": cfg.outlier_floor_mm / 1000.0, "rot": np.radians(cfg.outlier_floor_deg)}
    floors["pose"] = np.radians(cfg.outlier_pose_floor_deg)
    for (vals, kind), cl in zip(series, clean):
        pred, ok = _trend_prediction(cl.reshape(T, -1), v, step)
        pred = pred.reshape(vals.shape)
        if kind == "pos":
            r = np.linalg.norm(vals - pred, axis=-1)
        else:  # quaternions: renormalise the componentwise prediction, mean angle over joints
            pred = pred / np.linalg.norm(np.nan_to_num(pred), axis=-1, keepdims=True).clip(1e-12)
            r = R.quaternion_angle(vals, pred)
            r = r.mean(-1) if r.ndim > 1 else r
        out |= _robust_flags(np.nan_to_num(r), ok, cfg.outlier_mad_k, floors[kind])
        preds.append(pred)
    return out, preds


def _reject_outliers(tr: ParamTrack, cfg: StandardizeConfig) -> int:
    """Mark ``tr``'s outlier frames invalid (in place); returns how many were rejected."""
    bad = outlier_frames(tr, cfg)
    tr.valid &= ~bad
    return int(bad.sum())


def outlier_frames(tr: ParamTrack, cfg: StandardizeConfig) -> np.ndarray:
    """(T,) True for valid frames rejected as outliers (the neighbour-prediction test on wrist position,
    wrist rotation and finger pose, and the two-sided speed test).

    Two passes: a spike also spoils the predictions of its neighbours, so the second pass predicts from
    the series with the first pass's suspects replaced by their predictions (residuals are still those
    of the original values): the spike stays flagged, its neighbours are cleared."""
    T = len(tr)
    v = tr.valid
    out = np.zeros(T, bool)
    if v.sum() < 5:
        return out
    dt = float(np.median(np.diff(tr.times))) if T > 1 else 1.0
    step = max(1, int(round(cfg.outlier_step_s / max(dt, 1e-6))))
    series = [(tr.wrist, "pos"), (_continuous(tr.go, v), "rot"), (_continuous(tr.pose, v), "pose")]
    suspect, preds = _prediction_flags(series, [x for x, _ in series], v, step, cfg)
    if suspect.any():
        clean = []
        for (x, _), p in zip(series, preds):
            c = x.copy()
            c[suspect] = p[suspect]
            clean.append(np.where(np.isfinite(c), c, x))
        suspect, _ = _prediction_flags(series, clean, v, step, cfg)
    out |= suspect
    # speed spikes between consecutive valid frames
    idx = np.flatnonzero(v)
    if idx.size >= 3:
        d = np.diff(tr.wrist[idx], axis=0)
        dt = np.diff(tr.times[idx]).clip(1e-6)
        speed = np.linalg.norm(d, axis=-1) / dt
        cos = (d[1:] * d[:-1]).sum(-1) / (
            np.linalg.norm(d[1:], axis=-1) * np.linalg.norm(d[:-1], axis=-1) + 1e-12
        )
        spike = (speed[1:] > cfg.max_speed_m_s) & (speed[:-1] > cfg.max_speed_m_s) & (cos < 0)
        out[idx[1:-1][spike]] = True
    return out


# ---------------------------------------------------------------------------------------------------------
# Handedness of joint tracks
# ---------------------------------------------------------------------------------------------------------

#: (MCP, PIP, DIP, tip) of index, middle, ring and little in every 21-point scheme (handvla.hand.io)
_FINGER_CHAINS = ((5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20))


def handedness_cues(joints: np.ndarray, side: str) -> dict[str, float]:
    """Two cues that a mirror image (the other hand) flips, as medians over the frames with all points:

    - ``flex_deg``: flexion of the PIP and DIP joints of the four fingers (the per-frame median of the 8
      signed angles about the palm's index-to-little axis), positive towards the palm for a hand of ``side``;
      relaxed and grasping hands are clearly positive, a flat or pressing hand is near 0 either way.
    - ``arch``: how far the middle and ring MCPs lie from the index-little MCP line towards the back of the
      hand (the transverse metacarpal arch), in palm widths, positive for a hand of ``side``; 0 for a
      model whose palm is flat.

    Computed on the points themselves (before any fit); ``frames`` is how many frames had all points."""
    j = np.asarray(joints, np.float64)
    j = j[np.isfinite(j).all(axis=(1, 2))]
    if not len(j):
        return {"flex_deg": 0.0, "arch": 0.0, "frames": 0}
    mirror = 1.0 if side == "right" else -1.0  # the formulas below are signed for a right hand
    lateral = j[:, 17] - j[:, 5]
    width = np.linalg.norm(lateral, axis=-1)
    lateral = lateral / np.maximum(width, 1e-9)[:, None]
    angles = []
    for chain in _FINGER_CHAINS:
        for a, b, c in (chain[:3], chain[1:]):
            u1, u2 = j[:, b] - j[:, a], j[:, c] - j[:, b]
            sin = np.einsum("ij,ij->i", np.cross(u1, u2), lateral)
            angles.append(-np.degrees(np.arctan2(sin, np.einsum("ij,ij->i", u1, u2))))
    flex = mirror * np.median(np.stack(angles, 1), axis=1)
    normal = np.cross(j[:, 5] - j[:, 0], j[:, 17] - j[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=-1), 1e-12)[:, None]
    mid = 0.5 * (j[:, 9] + j[:, 13]) - 0.5 * (j[:, 5] + j[:, 17])
    arch = -mirror * np.einsum("ij,ij->i", mid, normal) / np.maximum(width, 1e-9)
    return {"flex_deg": float(np.median(flex)), "arch": float(np.median(arch)), "frames": len(j)}


def side_verdict(cues: dict[str, float], cfg: StandardizeConfig) -> str:
    """'same' (the clear cues agree with the label), 'other' (they say the other hand) or 'unclear'."""
    votes = [
        np.sign(cues["flex_deg"]) if abs(cues["flex_deg"]) >= cfg.side_check_flex_deg else 0.0,
        np.sign(cues["arch"]) if abs(cues["arch"]) >= cfg.side_check_arch else 0.0,
    ]
    total = sum(votes)
    return "same" if total > 0 else "other" if total < 0 else "unclear"


# ---------------------------------------------------------------------------------------------------------
# Left/right swap repair
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SwapResult:
    tracks: dict[str, ParamTrack]
    moved: dict[str, np.ndarray]  # side -> (T,) frames whose content came from the other side's label
    exchanged_frames: int  # frames where the assignment differs from the labels
    cost: float


def repair_swaps(left: ParamTrack, right: ParamTrack, cfg: StandardizeConfig) -> SwapResult:
    """Re-assign the per-frame contents of two tracks (same times) so that each track moves continuously.

    Viterbi over per-frame states {0: as labelled, 1: exchanged}; each path keeps the last value and time
    of each track, so a track is compared with where it was last seen (tolerances grow with the elapsed
    time). Cost per assigned detection: (wrist jump / tol)^2 + (rotation change / tol)^2 + (pose change /
    tol)^2, plus ``swap_label_cost`` per detection moved against its label. Contents move unchanged.
    """
    if len(left) != len(right) or not np.allclose(left.times, right.times):
        raise InputError("repair_swaps", "times", "two tracks on the same time axis", "different times")
    T = len(left)
    tracks = (left, right)
    has = np.stack([left.valid, right.valid], 1)  # (T, 2) detection labelled left / right
    frames = np.flatnonzero(has.any(1))
    go = [_continuous(tr.go, tr.valid) for tr in tracks]
    rot_tol = np.radians(cfg.swap_rot_tol_deg)
    pose_tol = np.radians(cfg.swap_pose_tol_deg)
    rot_speed = np.radians(360.0)  # tolerance growth per second unseen (rad/s)

    def jump(mem, d: int, t: int) -> float:
        if mem is None:
            return 0.0
        mt, mw, mq, mp = mem
        dt = left.times[t] - left.times[mt]
        src = tracks[d]
        pos = np.linalg.norm(src.wrist[t] - mw) / (cfg.swap_pos_tol_m + cfg.swap_speed_m_s * dt)
        rot = float(R.quaternion_angle(go[d][t], mq)) / (rot_tol + rot_speed * dt)
        pose = float(R.quaternion_angle(src.pose[t], mp).mean()) / (pose_tol + rot_speed * dt)
        return pos * pos + rot * rot + pose * pose

    # state b assigns detection perm[b][k] to track k
    perm = ((0, 1), (1, 0))
    cost = [0.0, np.inf]
    mems: list[tuple] = [(None, None), (None, None)]
    back = np.zeros((len(frames), 2), np.int8)
    for n, t in enumerate(frames):
        new_cost, new_mem = [np.inf, np.inf], [None, None]
        for b in (0, 1):
            n_moved = int(sum(has[t, perm[b][k]] for k in (0, 1) if perm[b][k] != k))
            best, arg = np.inf, 0
            for a in (0, 1):
                if not np.isfinite(cost[a]):
                    continue
                c = cost[a] + cfg.swap_label_cost * n_moved
                for k in (0, 1):
                    d = perm[b][k]
                    if has[t, d]:
                        c += jump(mems[a][k], d, t)
                if c < best:
                    best, arg = c, a
            mem = list(mems[arg])
            for k in (0, 1):
                d = perm[b][k]
                if has[t, d]:
                    mem[k] = (t, tracks[d].wrist[t], go[d][t], tracks[d].pose[t])
            new_cost[b], new_mem[b] = best, tuple(mem)
            back[n, b] = arg
        cost, mems = new_cost, new_mem
    state = np.zeros(T, np.int8)
    if len(frames):
        s = int(np.argmin(cost))
        total = float(min(cost))
        for n in range(len(frames) - 1, -1, -1):
            state[frames[n]] = s
            s = int(back[n, s])
    else:
        total = 0.0
    ex = state == 1
    out = {}
    moved = {}
    for k, side in enumerate(("left", "right")):
        o = 1 - k
        tr = tracks[k].copy()
        src = tracks[o]
        tr.go[ex], tr.pose[ex], tr.wrist[ex], tr.valid[ex] = (
            src.go[ex],
            src.pose[ex],
            src.wrist[ex],
            src.valid[ex],
        )
        out[side] = tr
        moved[side] = ex & src.valid
    return SwapResult(out, moved, int((ex & has.any(1)).sum()), total)


# ---------------------------------------------------------------------------------------------------------
# The episode
# ---------------------------------------------------------------------------------------------------------


@dataclass
class StandardizeResult:
    """The standardised episode (no video yet: ``frame_index`` says which source frames to take)."""

    episode: Episode
    times_s: np.ndarray  # (T,) source time of each output frame
    frame_index: np.ndarray  # (T,) index of the source video frame shown at each output frame
    report: dict[str, Any] = field(default_factory=dict)


def output_times(
    times_src: np.ndarray, fps_src: float, fps_out: float, snap: bool
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Output times (T_out,) and the source frame index nearest each; ``snapped`` says the output times
    are source frame times (exact sync with the video)."""
    t = np.asarray(times_src, np.float64)
    n = int(np.floor((t[-1] - t[0]) * fps_out + 1e-6)) + 1
    grid = t[0] + np.arange(n) / fps_out
    if snap and fps_src >= fps_out * (1 - 1e-9):
        idx = np.clip(np.searchsorted(t, grid), 0, t.size - 1)
        prev = np.clip(idx - 1, 0, t.size - 1)
        idx = np.where(np.abs(t[prev] - grid) <= np.abs(t[idx] - grid), prev, idx)
        idx = np.unique(idx)
        return t[idx], idx, True
    idx = np.clip(np.searchsorted(t, grid), 0, t.size - 1)
    prev = np.clip(idx - 1, 0, t.size - 1)
    idx = np.where(np.abs(t[prev] - grid) <= np.abs(t[idx] - grid), prev, idx)
    return grid, idx, False


def _auto(switch: str, default: bool) -> bool:
    return default if switch == "auto" else switch == "on"


def _fit_side(
    joints: np.ndarray,
    t_src: np.ndarray,
    t_out: np.ndarray,
    snap_idx: np.ndarray | None,
    side: str,
    model: HandModel,
    root_is_palm: bool,
    fps_src: float,
    cfg: StandardizeConfig,
    where: str,
    check_side: bool = True,
) -> tuple[ParamTrack, dict[str, Any]]:
    """Joints (T_src, 21, 3) -> fitted track at the output times and the fit report. ``check_side``:
    refuse joints that look like the other hand (not for re-fits of another model's parameters, whose side
    is known)."""
    downsample = fps_src > cfg.fps * 1.5
    j = np.asarray(joints, np.float64)
    if cfg.fit_rate == "target":
        if cfg.antialias and downsample:
            j = smooth_points(j, t_src, 1.0 / (np.pi * cfg.fps))
        j_fit = j[snap_idx] if snap_idx is not None else interp_points(j, t_src, t_out)
        t_fit, fps_fit = t_out, cfg.fps
    else:
        j_fit, t_fit, fps_fit = j, t_src, fps_src
    if not np.isfinite(j_fit).all(axis=(1, 2)).any():
        raise InputError(where, f"joints[{side!r}]", "at least one frame with all 21 points observed", "none")
    cues = handedness_cues(j, side)
    verdict = side_verdict(cues, cfg)
    if check_side and verdict == "other":
        raise InputError(
            where,
            f"joints[{side!r}]",
            f"a {side} hand (fingers flexing towards the palm, knuckles arched towards the back)",
            f"finger flexion {cues['flex_deg']:+.1f} deg, knuckle arch {cues['arch']:+.3f} palm widths: "
            f"the mirror image, a mislabelled hand",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the handedness warning: checked below instead
        fit = fit_joints(
            j_fit.astype(np.float32),
            side=side,
            fps=float(fps_fit),
            t=t_fit,
            hand_model=model,
            root_is_palm=root_is_palm,
            config=cfg.fit_config(),
            where=where,
        )
    if not np.isfinite(fit.fit_mpjpe_mm) or fit.fit_mpjpe_mm > cfg.max_fit_error_mm:
        raise InputError(
            where,
            f"joints[{side!r}]",
            f"a fit error <= {cfg.max_fit_error_mm} mm (StandardizeConfig.max_fit_error_mm)",
            f"{fit.fit_mpjpe_mm:.1f} mm",
        )
    tr = ParamTrack.from_motion(fit.motion, t_fit)
    if cfg.fit_rate == "source":
        tr = smooth_track(tr, 1.0 / (np.pi * cfg.fps)) if (cfg.antialias and downsample) else tr
        tr = tr.take(snap_idx) if snap_idx is not None else resample_track(tr, t_out)
    rep = {
        "fit_error_mm": round(fit.fit_mpjpe_mm, 3),
        "fit_error_p95_mm": round(float(np.nanpercentile(fit.per_frame_mpjpe_mm, 95)), 3),
        "frames_fitted": int(np.isfinite(fit.per_frame_mpjpe_mm).sum()),
        "fit_frames_per_s": round(fit.frames_per_s, 2),
        "beyond_limits_deg": fit.beyond_limits_deg,
        "landmark_offsets_mm": fit.summary()["landmark_offsets_mm"],
        "side_check": {
            "verdict": verdict,
            "flex_deg": round(cues["flex_deg"], 2),
            "arch": round(cues["arch"], 4),
        },
    }
    return tr, rep


def _without_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: _without_timing(v) for k, v in obj.items() if k not in ("seconds",) and not k.endswith("per_s")
        }
    return obj


def standardize_episode(
    ep: Any,
    cfg: StandardizeConfig | None = None,
    *,
    hand_model: str = "builtin",
    mano_dir: str | None = None,
    kind: str = "mocap",
    params: str = "mano",
    has_video: bool | None = None,
    with_joints: bool = True,
    times_s: np.ndarray | None = None,
) -> StandardizeResult:
    """Standardise one ``SourceEpisode`` (or ``Episode``): hands in ``hand_model``'s parameters at
    ``cfg.fps``, joints from those parameters, the camera, text and provenance kept.

    ``mano_dir``: the MANO files, for MANO parameters or a 'mano' store (hand models are loaded once per
    process, ``handvla.hand.registry.shared_hand_model``). ``kind`` / ``params``: the source's
    (``Source.kind``, ``Source.params``), which choose the 'auto' steps; ``has_video``: whether a video
    will be attached (default: the episode has one); ``times_s``: the source frames' timestamps in seconds
    when they are uneven (default: k / ``ep.fps``).
    Raises ``InputError`` for an episode that cannot be standardised (the build reports and skips it).
    """
    cfg = cfg or StandardizeConfig()
    t_start = time.perf_counter()
    where = f"episode '{ep.key}'" if ep.key else "episode"
    T_src = ep.num_frames
    if T_src < 1:
        raise InputError(where, "frames", "at least one frame", "0")
    fps_src = float(ep.fps)
    t_src = np.arange(T_src) / fps_src
    if times_s is not None:
        t_src = np.asarray(times_s, np.float64)
        if t_src.shape != (T_src,) or not np.isfinite(t_src).all() or (np.diff(t_src) <= 0).any():
            raise InputError(where, "times_s", f"({T_src},) strictly increasing seconds", str(t_src.shape))
        if T_src > 1:
            fps_src = float(1.0 / np.median(np.diff(t_src)))
    if has_video is None:
        has_video = ep.video is not None or bool(getattr(ep, "frame_paths", None))
    t_out, frame_index, snapped = output_times(t_src, fps_src, cfg.fps, cfg.snap_to_video and has_video)
    snap_idx = frame_index if snapped else None
    needs_fit = tuple(getattr(ep, "needs_fit", ()))
    do_swap = _auto(cfg.swap_repair, kind == "rgb" and params == "mano")
    do_outliers = _auto(cfg.outliers, kind != "mocap")
    do_smooth = _auto(cfg.smooth, kind == "rgb")
    downsample = fps_src > cfg.fps * 1.5
    sigma = max(
        cfg.smooth_sigma_s if do_smooth else 0.0,
        1.0 / (np.pi * cfg.fps) if (cfg.antialias and downsample) else 0.0,
    )
    report: dict[str, Any] = {
        "fps_in": fps_src,
        "fps_out": cfg.fps,
        "frames_in": T_src,
        "frames_out": int(t_out.size),
        "max_time_offset_ms": round(
            1000.0 * float(np.abs(t_out - (t_out[0] + np.arange(t_out.size) / cfg.fps)).max()), 3
        ),
        "steps": {"swap_repair": do_swap, "outliers": do_outliers, "param_smooth_sigma_s": round(sigma, 4)},
        "hands": {},
    }

    # -- parameter sides: swap repair, outliers, smoothing at the source rate -----------------------------
    param_tracks: dict[str, ParamTrack] = {}
    hand_reports: dict[str, dict[str, Any]] = {}
    for side, m in ep.hands.items():
        if side in needs_fit or not np.any(m.valid):
            continue
        param_tracks[side] = ParamTrack.from_motion(m, t_src)
        hand_reports[side] = {"origin": "params", "frames_in_valid": int(np.sum(m.valid))}
    moved = {s: np.zeros(T_src, bool) for s in SIDES}
    if (
        do_swap
        and len(param_tracks) == 2
        and all(tr.hand_model == param_tracks["left"].hand_model for tr in param_tracks.values())
    ):
        sw = repair_swaps(param_tracks["left"], param_tracks["right"], cfg)
        param_tracks, moved = sw.tracks, sw.moved
        report["swap_frames_exchanged"] = sw.exchanged_frames
    for side, tr in param_tracks.items():
        rep = hand_reports[side]
        rep["swaps_repaired"] = int(moved[side].sum())
        if cfg.swap_refill == "interpolate" and moved[side].any():
            tr.valid = tr.valid & ~moved[side]  # refilled by the gap repair below when short
        rep["outliers_rejected"] = _reject_outliers(tr, cfg) if do_outliers else 0
        tr = smooth_track(tr, sigma) if sigma > 0 else tr
        param_tracks[side] = tr.take(snap_idx) if snap_idx is not None else resample_track(tr, t_out)

    # -- joint sides: fit at the output times --------------------------------------------------------------
    scheme = str(getattr(ep, "joint_order", DEFAULT_JOINT_ORDER)).split(":", 1)[0].strip().lower()
    if needs_fit and scheme not in JOINT_SCHEMES:
        raise InputError(where, "joint_order", f"a scheme in {sorted(JOINT_SCHEMES)}", repr(scheme))
    root_is_palm = bool(JOINT_SCHEMES.get(scheme, False))
    for side in needs_fit:
        model = shared_hand_model(hand_model, side, mano_dir)
        tr, rep = _fit_side(
            ep.joints[side], t_src, t_out, snap_idx, side, model, root_is_palm, fps_src, cfg, where
        )
        rep = {"origin": "fit", **rep, "swaps_repaired": 0}
        rep["outliers_rejected"] = _reject_outliers(tr, cfg) if do_outliers else 0
        param_tracks[side] = tr
        hand_reports[side] = rep

    # -- gap repair, model conversion, joints ----------------------------------------------------------------
    hands: dict[str, HandMotion] = {}
    joints: dict[str, np.ndarray] = {}
    for side in SIDES:
        if side not in param_tracks:
            continue
        tr, rep = param_tracks[side], hand_reports[side]
        tr, repaired = fill_gaps(tr, cfg.max_gap_frames)
        rep["frames_repaired"] = int(repaired.sum())
        motion = tr.to_motion(cfg.fps)
        if motion.hand_model != hand_model:
            # another model's parameters: its joints, re-fitted with the store's model
            jm = motion_joints(motion, None, mano_dir).astype(np.float64)
            jm[~motion.valid] = np.nan
            if not motion.valid.any():
                continue
            tr2, fit_rep = _fit_side(
                jm,
                t_out,
                t_out,
                np.arange(t_out.size),
                side,
                shared_hand_model(hand_model, side, mano_dir),
                False,
                cfg.fps,
                # the parameters are already cleaned: no temporal prior, so the re-fit follows them frame by frame
                cfg.model_copy(update={"fit_rate": "target", "antialias": False, "fit_acc_hz": 0.0}),
                where,
                check_side=False,
            )
            tr2.valid &= motion.valid
            motion = tr2.to_motion(cfg.fps)
            rep["origin"] = "refit"
            rep.update({f"refit_{k}": v for k, v in fit_rep.items()})
        rep["frames_dropped"] = int((~motion.valid).sum())
        rep["frames_valid"] = int(motion.valid.sum())
        if not motion.valid.any():
            rep["note"] = "no valid frame left: hand dropped"
            report["hands"][side] = rep
            continue
        hands[side] = motion
        if with_joints:
            joints[side] = motion_joints(motion, hand_model, mano_dir).astype(np.float32)
        report["hands"][side] = rep
    if not hands:
        raise InputError(where, "hands", "at least one hand with a valid frame after standardisation", "none")
    report["seconds"] = round(time.perf_counter() - t_start, 3)
    annotations = dict(ep.annotations)
    prov = dict(annotations.get("provenance", {}))
    # timings differ between runs: kept in the returned report, not in the stored provenance
    prov["standardize"] = _without_timing(report)
    annotations["provenance"] = prov
    out = Episode(
        hands=hands,
        camera=ep.camera,
        fps=cfg.fps,
        key=ep.key,
        video=None,
        joints=joints,
        tasks=list(ep.tasks),
        source=ep.source,
        licence=ep.licence,
        rig=ep.rig,
        annotations=annotations,
        ground_truth=ep.ground_truth,
    )
    return StandardizeResult(out, t_out, frame_index, report)
