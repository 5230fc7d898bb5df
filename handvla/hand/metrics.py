"""Hand-pose metrics in the usual convention: inputs in metres, outputs in millimetres (or degrees).

Every function takes numpy arrays or torch tensors (any float dtype, any device); the work is done in
float64 torch so numpy and torch inputs give the same numbers. Scalars come back as Python floats,
per-joint errors in the type of ``pred``.

Masking: a joint counts only where both ``pred`` and ``gt`` are finite, and a frame only where
``valid`` (T,) is True (None = every frame). A scalar over nothing is NaN, never 0.

- ``mpjpe``: mean per-joint L2 error, absolute (same frame, no alignment).
- ``rr_mpjpe``: root-relative: both skeletons translated so their wrist (joint 0) is at the origin.
- ``pa_mpjpe``: per frame, ``pred`` is first mapped by the similarity (scale, rotation, translation) that
  best fits it to ``gt`` in the least-squares sense (Umeyama), with the rotation kept proper (det +1, no
  reflection).
- ``mwte``: mean wrist translation error (joint 0, or a (T, 3) wrist track).
- ``wrist_rotation_error_deg``: mean geodesic angle between the wrist rotations.
- ``auc_pck``: area under the PCK curve for thresholds 0..``max_mm`` normalised to [0, 1]. It is computed
  exactly (the integral of a step function), which equals ``mean(max(0, 1 - e / max_mm))`` over joints.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from handvla.errors import InputError
from handvla.hand.rotations import axis_angle_to_matrix, geodesic_angle

ALIGNMENTS = ("none", "root", "procrustes")
ROOT_JOINT = 0  # the wrist, OpenPose order


def _t(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise InputError("metrics", name, "a numeric array", type(x).__name__) from e


def _like(x: torch.Tensor, ref: Any) -> Any:
    """Return ``x`` in the container type of ``ref`` (numpy in -> numpy out)."""
    if isinstance(ref, torch.Tensor):
        return x.to(ref.device)
    return x.cpu().numpy()


def _check_pair(pred: torch.Tensor, gt: torch.Tensor) -> None:
    if pred.shape != gt.shape or pred.dim() < 2 or pred.shape[-1] != 3:
        raise InputError(
            "metrics",
            "pred/gt",
            "two arrays of the same shape (..., J, 3) in metres",
            f"{tuple(pred.shape)} and {tuple(gt.shape)}",
        )


def _frame_mask(valid: Any, lead: tuple[int, ...]) -> torch.Tensor:
    if valid is None:
        return torch.ones(lead, dtype=torch.bool)
    v = torch.as_tensor(np.asarray(valid.detach().cpu() if isinstance(valid, torch.Tensor) else valid)).bool()
    if tuple(v.shape) != lead:
        raise InputError("metrics", "valid", f"a boolean mask of shape {lead}", str(tuple(v.shape)))
    return v


def similarity_transform(
    src: Any, dst: Any, weights: Any = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares similarity ``dst ~ s R src + t`` per frame (Umeyama 1991), batched.

    src, dst (..., P, 3); weights (..., P) (0/1 or soft; default: points finite in both). The rotation
    is proper: when the best orthogonal map is a reflection the last singular direction is flipped.
    Returns float64 tensors s (...), R (..., 3, 3), t (..., 3). Frames with fewer than 3 usable points
    get NaN.
    """
    p, g = _t(src, "src"), _t(dst, "dst")
    _check_pair(p, g)
    finite = torch.isfinite(p).all(-1) & torch.isfinite(g).all(-1)  # (..., P)
    w = finite.to(p.dtype) if weights is None else _t(weights, "weights") * finite
    w = w[..., None]  # (..., P, 1)
    n = w.sum(-2, keepdim=True).clamp(min=1e-12)  # (..., 1, 1)
    p0, g0 = torch.nan_to_num(p), torch.nan_to_num(g)
    mu_p, mu_g = (p0 * w).sum(-2, keepdim=True) / n, (g0 * w).sum(-2, keepdim=True) / n
    pc, gc = p0 - mu_p, g0 - mu_g
    H = (pc * w).transpose(-1, -2) @ gc  # (..., 3, 3) = sum_j w_j pc_j gc_j^T
    U, S, Vh = torch.linalg.svd(H)
    d = torch.sign(torch.det(Vh.transpose(-1, -2) @ U.transpose(-1, -2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.ones(S.shape, dtype=S.dtype, device=S.device)
    D[..., -1] = d
    R = Vh.transpose(-1, -2) @ (D[..., :, None] * U.transpose(-1, -2))  # maps centred src onto centred dst
    var_p = (pc * pc * w).sum((-1, -2))
    s = (S * D).sum(-1) / var_p.clamp(min=1e-30)
    t = mu_g[..., 0, :] - s[..., None] * (R @ mu_p[..., 0, :, None])[..., 0]
    bad = (finite.sum(-1) < 3) | (var_p <= 0)
    nan = float("nan")
    return (
        s.masked_fill(bad, nan),
        R.masked_fill(bad[..., None, None], nan),
        t.masked_fill(bad[..., None], nan),
    )


def similarity_align(pred: Any, gt: Any) -> Any:
    """Map ``pred`` (..., J, 3) onto ``gt`` by the per-frame least-squares similarity transform.

    Only joints finite in both arrays enter the fit, so frames with missing joints still align on the
    rest; frames with fewer than 3 usable joints come back as NaN. Returns the aligned pred (..., J, 3).
    """
    p = _t(pred, "pred")
    s, R, t = similarity_transform(p, gt)
    out = s[..., None, None] * (p @ R.transpose(-1, -2)) + t[..., None, :]
    return _like(out, pred)


def joint_errors_mm(pred: Any, gt: Any, align: str = "none") -> Any:
    """Per-joint L2 errors in mm, (..., J), NaN where either input is missing.

    align: 'none' (absolute), 'root' (subtract joint 0 from each skeleton) or 'procrustes' (per-frame
    similarity alignment of pred onto gt, see ``similarity_align``).
    """
    p, g = _t(pred, "pred"), _t(gt, "gt")
    _check_pair(p, g)
    if align == "root":
        p = p - p[..., ROOT_JOINT : ROOT_JOINT + 1, :]
        g = g - g[..., ROOT_JOINT : ROOT_JOINT + 1, :]
    elif align == "procrustes":
        p = _t(similarity_align(p, g), "pred")
    elif align != "none":
        raise InputError("metrics", "align", f"one of {ALIGNMENTS}", repr(align))
    e = (p - g).norm(dim=-1) * 1000.0
    return _like(e, pred)


def _masked_mean(e: torch.Tensor, valid: Any) -> float:
    m = torch.isfinite(e) & _frame_mask(valid, tuple(e.shape[:-1])).to(e.device)[..., None]
    if not bool(m.any()):
        return float("nan")
    return float(e[m].mean())


def mpjpe(pred: Any, gt: Any, valid: Any = None) -> float:
    """Mean per-joint position error in mm, absolute. pred, gt (T, J, 3) metres; valid (T,)."""
    return _masked_mean(_t(joint_errors_mm(pred, gt, "none"), "e"), valid)


def rr_mpjpe(pred: Any, gt: Any, valid: Any = None) -> float:
    """Root-relative MPJPE in mm: each skeleton translated so its wrist (joint 0) is the origin."""
    return _masked_mean(_t(joint_errors_mm(pred, gt, "root"), "e"), valid)


def pa_mpjpe(pred: Any, gt: Any, valid: Any = None) -> float:
    """Procrustes-aligned MPJPE in mm (per-frame similarity: scale, proper rotation, translation)."""
    return _masked_mean(_t(joint_errors_mm(pred, gt, "procrustes"), "e"), valid)


def mwte(pred: Any, gt: Any, valid: Any = None) -> float:
    """Mean wrist translation error in mm. Takes joints (T, J, 3) (uses joint 0) or wrist tracks (T, 3)."""
    p, g = _t(pred, "pred"), _t(gt, "gt")
    if p.shape != g.shape or p.shape[-1] != 3:
        raise InputError(
            "metrics",
            "pred/gt",
            "joints (T, J, 3) or wrist positions (T, 3), same shape",
            f"{tuple(p.shape)} and {tuple(g.shape)}",
        )
    if p.dim() >= 3:
        p, g = p[..., ROOT_JOINT, :], g[..., ROOT_JOINT, :]
    e = (p - g).norm(dim=-1) * 1000.0  # (T,)
    return _masked_mean(e[..., None], valid)


def _as_matrix(r: torch.Tensor, name: str) -> torch.Tensor:
    if r.shape[-2:] == (3, 3):
        return r
    if r.shape[-1] == 3:
        return axis_angle_to_matrix(r)
    raise InputError(
        "metrics", name, "axis-angle (..., 3) or rotation matrices (..., 3, 3)", str(tuple(r.shape))
    )


def wrist_rotation_error_deg(pred_rot: Any, gt_rot: Any, valid: Any = None) -> float:
    """Mean geodesic angle in degrees between wrist rotations (axis-angle (T, 3) or matrices (T, 3, 3))."""
    Rp, Rg = _as_matrix(_t(pred_rot, "pred_rot"), "pred_rot"), _as_matrix(_t(gt_rot, "gt_rot"), "gt_rot")
    if Rp.shape != Rg.shape:
        raise InputError(
            "metrics", "pred_rot/gt_rot", "the same shape", f"{tuple(Rp.shape)} and {tuple(Rg.shape)}"
        )
    ang = torch.rad2deg(geodesic_angle(Rp, Rg))  # (T,)
    return _masked_mean(ang[..., None], valid)


def auc_pck(pred: Any, gt: Any, valid: Any = None, max_mm: float = 50.0, align: str = "none") -> float:
    """Area under the PCK curve over thresholds 0..max_mm, normalised to [0, 1] (1 = every joint exact).

    PCK(th) is the fraction of joints with error <= th; its integral over [0, max_mm] divided by max_mm
    is exactly the mean over joints of max(0, 1 - e / max_mm), computed here without a threshold grid.
    """
    if not max_mm > 0:
        raise InputError("metrics", "max_mm", "a positive threshold in mm", repr(max_mm))
    e = _t(joint_errors_mm(pred, gt, align), "e")
    score = (1.0 - e / max_mm).clamp(min=0.0)
    return _masked_mean(torch.where(torch.isfinite(e), score, e), valid)


def joint_metrics(pred: Any, gt: Any, valid: Any = None) -> dict[str, float]:
    """All joint metrics for (T, 21, 3) predictions and ground truth in metres.

    Returns {mpjpe_mm, rr_mpjpe_mm, pa_mpjpe_mm, mwte_mm, auc_pck}; auc_pck is on the absolute errors
    (the same errors as mpjpe_mm), over 0-50 mm.
    """
    return {
        "mpjpe_mm": mpjpe(pred, gt, valid),
        "rr_mpjpe_mm": rr_mpjpe(pred, gt, valid),
        "pa_mpjpe_mm": pa_mpjpe(pred, gt, valid),
        "mwte_mm": mwte(pred, gt, valid),
        "auc_pck": auc_pck(pred, gt, valid),
    }
