"""Trajectory pieces: the minimum-jerk profile, paths through via-points, rotation slerp, smooth noise."""


from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation

# ---------------------------------------------------------------------------------------------------------
# Trajectory pieces
# ---------------------------------------------------------------------------------------------------------


def min_jerk(tau: np.ndarray) -> np.ndarray:
    """Minimum-jerk position profile 10t^3 - 15t^4 + 6t^5 on t in [0, 1] (clipped outside)."""
    t = np.clip(tau, 0.0, 1.0)
    return t**3 * (10 - 15 * t + 6 * t * t)


def min_jerk_profile(n: int, start: float = 0.0, stop: float = 1.0) -> np.ndarray:
    """(n,) min-jerk progress of frames 1..n of a segment, moving only during [start, stop] of it."""
    tau = np.arange(1, n + 1) / n
    return min_jerk((tau - start) / max(stop - start, 1e-9))


def path_through(points: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Positions (n, 3) at progress s along a smooth curve through ``points`` (K, 3): a cubic spline in
    chord length, so the via-points are passed without stopping; the ends are exact."""
    if len(points) == 2:
        return points[0] + s[:, None] * (points[1] - points[0])
    chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]
    if chord[-1] < 1e-9:
        return np.repeat(points[-1:], len(s), 0)
    keep = np.r_[True, np.diff(chord) > 1e-9]
    spline = CubicSpline(chord[keep], points[keep], bc_type="natural")
    return spline(s * chord[-1])


def slerp(r0: Rotation, r1: Rotation, s: np.ndarray) -> Rotation:
    """Rotations (n,) from r0 to r1 along the shortest arc at progress s (n,)."""
    delta = (r0.inv() * r1).as_rotvec()
    return r0 * Rotation.from_rotvec(s[:, None] * delta[None])


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_frames: float, amplitude: float
) -> np.ndarray:
    """Gaussian noise low-passed along axis 0 and rescaled to standard deviation ``amplitude``."""
    if amplitude == 0 or shape[0] == 0:
        return np.zeros(shape)
    x = gaussian_filter1d(rng.standard_normal(shape), sigma_frames, axis=0, mode="reflect")
    return x * (amplitude / max(float(x.std()), 1e-9))
