"""Rotation conversions: the one rotation face of the project, for torch tensors and numpy arrays.

Every conversion takes a torch tensor (batched, differentiable, computed here in torch) or anything
else array-like (numpy, float64, computed by ``scipy.spatial.transform.Rotation``) and returns the same
kind. Numpy-only: ``slerp`` and ``quaternion_angle`` on wxyz quaternions (closed forms).

Conventions (the single source of truth for the project):
- axis-angle: (..., 3) rotation vector, angle = norm in radians.
- matrix: (..., 3, 3), acting on column vectors (x' = R @ x).
- 6D: (..., 6) = the first two columns of R, flattened row-major as ``R[..., :, :2].reshape(6)``, i.e.
  ``[R00, R01, R10, R11, R20, R21]``; decoded with Gram-Schmidt.
- quaternion: (..., 4) scalar first ``(w, x, y, z)``.

Everything is safe near angle 0 (Taylor expansions) and near pi (no division by sin(pi)). Numpy inputs
may have any leading shape; rows with non-finite values give NaN (as torch propagates them).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

_EPS = 1e-6


def _scipy(
    x, tail: tuple[int, ...], fn: Callable[[np.ndarray], np.ndarray], out_tail: tuple[int, ...]
) -> np.ndarray:
    """Apply ``fn`` (rows (N, *tail) -> (N, *out_tail), through scipy) to a float64 array (..., *tail);
    non-finite rows give NaN."""
    a = np.asarray(x, np.float64)
    if a.shape[a.ndim - len(tail) :] != tail:
        raise ValueError(f"expected an array of shape (..., {', '.join(map(str, tail))}), got {a.shape}")
    lead = a.shape[: a.ndim - len(tail)]
    rows = a.reshape((-1,) + tail)
    ok = np.isfinite(rows).reshape(len(rows), -1).all(1)
    out = np.full((len(rows),) + out_tail, np.nan)
    if ok.any():
        out[ok] = fn(rows[ok])
    return out.reshape(lead + out_tail)


def _wxyz(xyzw: np.ndarray) -> np.ndarray:
    return xyzw[..., [3, 0, 1, 2]]


def _xyzw(wxyz: np.ndarray) -> np.ndarray:
    q = wxyz[..., [1, 2, 3, 0]]
    zero = np.linalg.norm(q, axis=-1) < 1e-300
    return np.where(zero[..., None], [0.0, 0.0, 0.0, 1.0], q)  # a zero quaternion reads as the identity


def _skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrix."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(v.shape[:-1] + (3, 3))


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula. (..., 3) -> (..., 3, 3)."""
    if not isinstance(aa, torch.Tensor):
        return _scipy(aa, (3,), lambda r: Rotation.from_rotvec(r).as_matrix(), (3, 3))
    theta2 = (aa * aa).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < _EPS
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    # sin(t)/t and (1-cos t)/t^2 with Taylor series near 0
    a = torch.where(small, 1 - theta2 / 6 + theta2 * theta2 / 120, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, (1 - torch.cos(theta)) / theta2_safe)
    K = _skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand(K.shape)
    return eye + a * K + b * (K @ K)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 4) wxyz with w >= 0. Numerically stable (picks the largest pivot)."""
    if not isinstance(R, torch.Tensor):
        return _scipy(R, (3, 3), lambda m: _wxyz(Rotation.from_matrix(m).as_quat(canonical=True)), (4,))
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # Four candidate quaternions (each exact where its pivot is large), pick the best conditioned one.
    q_abs = torch.sqrt(
        torch.clamp(
            torch.stack(
                [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
            ),
            min=0,
        )
        + 1e-12
    )
    cands = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], -1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], -1),
        ],
        -2,
    )  # (..., 4 candidates, 4)
    cands = cands / (2.0 * q_abs[..., None].clamp(min=0.1))
    idx = q_abs.argmax(-1)
    q = torch.gather(cands, -2, idx[..., None, None].expand(idx.shape + (1, 4))).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) wxyz (need not be unit) -> (..., 3, 3)."""
    if not isinstance(q, torch.Tensor):
        return _scipy(q, (4,), lambda r: Rotation.from_quat(_xyzw(r)).as_matrix(), (3, 3))
    q = F.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    # fmt: off
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(q.shape[:-1] + (3, 3))
    # fmt: on


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) wxyz (need not be unit) -> (..., 3), angle in [0, pi]. Uses atan2, so exact near 0 and pi."""
    if not isinstance(q, torch.Tensor):
        return _scipy(q, (4,), lambda r: Rotation.from_quat(_xyzw(r)).as_rotvec(), (3,))
    q = F.normalize(q, dim=-1)
    q = torch.where(q[..., :1] < 0, -q, q)
    w, xyz = q[..., :1], q[..., 1:]
    s = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, w)
    small = s < 1e-4
    # angle / sin(angle/2), with its Taylor series 2 + angle^2/12 near 0
    factor = torch.where(small, 2.0 + angle * angle / 12.0, angle / s.clamp(min=1e-8))
    return xyz * factor


def axis_angle_to_quaternion(aa: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 4) wxyz, w = cos(angle / 2)."""
    if not isinstance(aa, torch.Tensor):
        return _scipy(aa, (3,), lambda r: _wxyz(Rotation.from_rotvec(r).as_quat()), (4,))
    theta2 = (aa * aa).sum(-1, keepdim=True)
    small = theta2 < _EPS
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    half_sinc = torch.where(small, 0.5 - theta2 / 48, torch.sin(theta / 2) / theta)
    w = torch.where(small, 1 - theta2 / 8, torch.cos(theta / 2))
    return torch.cat([w, aa * half_sinc], -1)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3) via the quaternion (stable at 0 and pi)."""
    if not isinstance(R, torch.Tensor):
        return _scipy(R, (3, 3), lambda m: Rotation.from_matrix(m).as_rotvec(), (3,))
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def matrix_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns, flattened row-major."""
    return R[..., :, :2].reshape(R.shape[:-2] + (6,))


def rot6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt on the two stored columns."""
    cols = d6.reshape(d6.shape[:-1] + (3, 2))
    a1, a2 = cols[..., 0], cols[..., 1]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def axis_angle_to_rot6d(aa: torch.Tensor) -> torch.Tensor:
    return matrix_to_rot6d(axis_angle_to_matrix(aa))


def rot6d_to_axis_angle(d6: torch.Tensor) -> torch.Tensor:
    return matrix_to_axis_angle(rot6d_to_matrix(d6))


def mirror_axis_angle(aa: torch.Tensor) -> torch.Tensor:
    """Reflect a rotation through the x = 0 plane (right <-> left hand): (x, y, z) -> (x, -y, -z)."""
    if not isinstance(aa, torch.Tensor):
        return np.asarray(aa) * np.array([1.0, -1.0, -1.0], np.asarray(aa).dtype)
    return aa * aa.new_tensor([1.0, -1.0, -1.0])


def geodesic_angle(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Angle in radians of R1^T R2, (..., 3, 3) x2 -> (...). Stable near 0 and pi (via quaternion)."""
    q = matrix_to_quaternion(R1.transpose(-1, -2) @ R2)
    return 2 * torch.atan2(q[..., 1:].norm(dim=-1), q[..., 0].abs())


# ---------------------------------------------------------------------------------------------------------
# Numpy only: quaternion interpolation and distance (closed forms, vectorised: per call they are about ten
# times faster than composing scipy Rotations, and the ingest pipeline calls them frame by frame)
# ---------------------------------------------------------------------------------------------------------


def quaternion_angle(q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """Rotation angle (radians, [0, pi]) between unit quaternions (..., 4): exact near 0 (no arccos of ~1)."""
    q0, q1 = np.asarray(q0, np.float64), np.asarray(q1, np.float64)
    s = np.where((q0 * q1).sum(-1, keepdims=True) < 0, -1.0, 1.0)
    a = np.linalg.norm(q0 - s * q1, axis=-1)
    b = np.linalg.norm(q0 + s * q1, axis=-1)
    return 4.0 * np.arctan2(a, b)


def slerp(q0: np.ndarray, q1: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Spherical interpolation of unit quaternions (..., 4) by ``a`` (...) in [0, 1], shortest arc
    (shapes broadcast); returns unit quaternions (float64)."""
    q0, q1 = np.asarray(q0, np.float64), np.asarray(q1, np.float64)
    a = np.asarray(a, np.float64)[..., None]
    q1 = np.where((q0 * q1).sum(-1, keepdims=True) < 0, -q1, q1)
    phi = 2.0 * np.arctan2(np.linalg.norm(q0 - q1, axis=-1), np.linalg.norm(q0 + q1, axis=-1))[..., None]
    s = np.sin(phi)
    small = s < 1e-9
    safe = np.where(small, 1.0, s)
    w0 = np.where(small, 1.0 - a, np.sin((1.0 - a) * phi) / safe)
    w1 = np.where(small, a, np.sin(a * phi) / safe)
    out = w0 * q0 + w1 * q1
    return out / np.linalg.norm(out, axis=-1, keepdims=True)
