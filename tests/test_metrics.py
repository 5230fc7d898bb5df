"""Hand-pose metrics against hand-computed cases and independent references (scipy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import procrustes
from scipy.spatial.transform import Rotation

from handvla.errors import InputError
from handvla.hand import metrics as M


def _hand_like(rng: np.random.Generator, T: int = 4) -> np.ndarray:
    """(T, 21, 3) points in metres spread like a hand (non-planar, ~10 cm)."""
    return (rng.normal(size=(T, 21, 3)) * 0.04).astype(np.float64)


def test_mpjpe_hand_computed():
    gt = np.zeros((2, 21, 3))
    pred = gt + np.array([0.003, 0.004, 0.0])  # every joint off by exactly 5 mm
    assert M.mpjpe(pred, gt) == pytest.approx(5.0)
    assert M.rr_mpjpe(pred, gt) == pytest.approx(0.0, abs=1e-9)  # a pure translation
    assert M.mwte(pred, gt) == pytest.approx(5.0)
    assert M.mwte(pred[:, 0], gt[:, 0]) == pytest.approx(5.0)  # (T, 3) wrist tracks
    # one joint of one frame 10 mm off along z: mean over 42 joints
    pred2 = gt.copy()
    pred2[1, 7, 2] = 0.010
    assert M.mpjpe(pred2, gt) == pytest.approx(10.0 / 42)
    # AUC of a 5 mm error over 0..50 mm: the PCK step sits at 5 mm, so the area is 45/50
    assert M.auc_pck(pred, gt) == pytest.approx(0.9)


def test_pa_matches_scipy_procrustes():
    rng = np.random.default_rng(0)
    gt = _hand_like(rng, 5)
    R = Rotation.random(5, random_state=1).as_matrix()
    pred = 1.3 * np.einsum("tij,tkj->tki", R, gt) + 0.2 + rng.normal(size=gt.shape) * 0.004
    ours = M.joint_errors_mm(pred, gt, "procrustes")  # (T, 21)
    for t in range(5):
        # scipy standardises both sets; scaling back by gt's centred norm gives errors in gt units
        m1, m2, _ = procrustes(gt[t], pred[t])
        scale = np.linalg.norm(gt[t] - gt[t].mean(0))
        ref = np.linalg.norm(m1 - m2, axis=-1) * scale * 1000
        np.testing.assert_allclose(ours[t], ref, rtol=1e-6, atol=1e-6)
    assert M.pa_mpjpe(pred, gt) == pytest.approx(float(ours.mean()))


def test_similarity_transform_matches_orthogonal_procrustes():
    rng = np.random.default_rng(3)
    src = _hand_like(rng, 1)[0]
    R_true = Rotation.random(random_state=4).as_matrix()
    dst = 0.7 * src @ R_true.T + np.array([0.1, -0.2, 0.3]) + rng.normal(size=src.shape) * 1e-3
    s, R, t = M.similarity_transform(src, dst)
    # scipy: R' minimising |A R' - B| for centred A = src, B = dst (row vectors), so R = R'^T
    A, B = src - src.mean(0), dst - dst.mean(0)
    R_ref, sca = orthogonal_procrustes(A, B)
    np.testing.assert_allclose(R.numpy(), R_ref.T, atol=1e-9)
    np.testing.assert_allclose(float(s), sca / (A * A).sum(), rtol=1e-9)
    np.testing.assert_allclose(t.numpy(), dst.mean(0) - float(s) * R_ref.T @ src.mean(0), atol=1e-9)


def test_pa_keeps_rotations_proper():
    # A mirror image is not a similarity: the best proper fit leaves an error, a reflection would not.
    rng = np.random.default_rng(5)
    gt = _hand_like(rng, 3)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert M.pa_mpjpe(mirrored, gt) > 5.0
    R_orth, _ = orthogonal_procrustes(mirrored[0] - mirrored[0].mean(0), gt[0] - gt[0].mean(0))
    assert np.linalg.det(R_orth) < 0  # the unconstrained orthogonal optimum is the reflection
    _, R, _ = M.similarity_transform(mirrored, gt)
    np.testing.assert_allclose(torch.det(R).numpy(), 1.0, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.3, 3.0),
    shift=st.lists(st.floats(-2, 2), min_size=3, max_size=3),
)
def test_pa_invariant_to_similarity_of_pred(seed, scale, shift):
    rng = np.random.default_rng(seed)
    gt = _hand_like(rng, 3)
    pred = gt + rng.normal(size=gt.shape) * 0.005
    R = Rotation.random(random_state=seed % 1000).as_matrix()
    moved = scale * pred @ R.T + np.asarray(shift)
    assert M.pa_mpjpe(moved, gt) == pytest.approx(M.pa_mpjpe(pred, gt), rel=1e-6, abs=1e-6)
    # and a similarity image of gt itself aligns exactly
    assert M.pa_mpjpe(scale * gt @ R.T + np.asarray(shift), gt) == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), noise=st.floats(0.0005, 0.02), offset=st.floats(0.0, 0.05))
def test_alignment_ordering(seed, noise, offset):
    """PA minimises the RMS error over a superset of the root alignment's transforms, and root alignment
    (a translation) removes any common offset: RMS_pa <= RMS_root and mean_pa <= RMS_root."""
    rng = np.random.default_rng(seed)
    gt = _hand_like(rng, 2)
    pred = gt + rng.normal(size=gt.shape) * noise + offset

    def rms(align):
        e = np.asarray(M.joint_errors_mm(pred, gt, align))
        return float(np.sqrt((e**2).mean(-1)).max())  # worst frame

    e_pa = np.asarray(M.joint_errors_mm(pred, gt, "procrustes"))
    e_rr = np.asarray(M.joint_errors_mm(pred, gt, "root"))
    for t in range(2):
        rms_pa, rms_rr = np.sqrt((e_pa[t] ** 2).mean()), np.sqrt((e_rr[t] ** 2).mean())
        assert rms_pa <= rms_rr + 1e-9
        assert e_pa[t].mean() <= rms_rr + 1e-9
    assert M.rr_mpjpe(pred, gt) == pytest.approx(M.rr_mpjpe(pred - offset, gt), abs=1e-9)
    assert rms("procrustes") <= rms("none") + 1e-9


def test_nan_and_valid_masking():
    rng = np.random.default_rng(7)
    gt = _hand_like(rng, 3)
    pred = gt + 0.002
    pred[1] += 0.1  # a bad frame
    gt_nan = gt.copy()
    gt_nan[2, 4] = np.nan  # a missing joint
    valid = np.array([True, False, True])
    # frame 1 excluded; the NaN joint excluded; everything else is exactly 2*sqrt(3) mm off
    assert M.mpjpe(pred, gt_nan, valid) == pytest.approx(2 * np.sqrt(3))
    e = M.joint_errors_mm(pred, gt_nan)
    assert np.isnan(e[2, 4]) and np.isfinite(e[2, 3])
    # PA still aligns frame 2 on its 20 finite joints
    assert np.isfinite(M.pa_mpjpe(pred, gt_nan, valid))
    assert np.isnan(M.mpjpe(pred, np.full_like(gt, np.nan)))
    m = M.joint_metrics(pred, gt_nan, valid)
    assert set(m) == {"mpjpe_mm", "rr_mpjpe_mm", "pa_mpjpe_mm", "mwte_mm", "auc_pck"}
    assert m["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)


def test_auc_matches_numerical_pck_integral():
    rng = np.random.default_rng(11)
    gt = _hand_like(rng, 6)
    pred = gt + rng.normal(size=gt.shape) * 0.015
    e = np.linalg.norm(pred - gt, axis=-1).ravel() * 1000
    th = np.linspace(0, 50, 20001)
    pck = (e[None, :] <= th[:, None]).mean(1)
    ref = np.trapezoid(pck, th) / 50 if hasattr(np, "trapezoid") else np.trapz(pck, th) / 50
    assert M.auc_pck(pred, gt) == pytest.approx(ref, abs=1e-3)
    assert M.auc_pck(gt, gt) == pytest.approx(1.0)
    assert M.auc_pck(gt + 1.0, gt) == pytest.approx(0.0)


def test_wrist_rotation_error_against_scipy():
    r1 = Rotation.random(8, random_state=2)
    r2 = Rotation.random(8, random_state=3)
    ref = np.degrees((r1.inv() * r2).magnitude()).mean()
    assert M.wrist_rotation_error_deg(r1.as_rotvec(), r2.as_rotvec()) == pytest.approx(ref, abs=1e-6)
    assert M.wrist_rotation_error_deg(r1.as_matrix(), r2.as_matrix()) == pytest.approx(ref, abs=1e-6)


def test_numpy_and_torch_agree():
    rng = np.random.default_rng(13)
    gt = _hand_like(rng, 2)
    pred = gt + rng.normal(size=gt.shape) * 0.01
    a = M.joint_metrics(pred, gt)
    b = M.joint_metrics(torch.tensor(pred, dtype=torch.float32), torch.tensor(gt, dtype=torch.float32))
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-4)
    assert isinstance(M.similarity_align(torch.tensor(pred), torch.tensor(gt)), torch.Tensor)
    assert isinstance(M.joint_errors_mm(pred, gt), np.ndarray)


def test_bad_input():
    with pytest.raises(InputError, match="same shape"):
        M.mpjpe(np.zeros((2, 21, 3)), np.zeros((2, 20, 3)))
    with pytest.raises(InputError, match="align"):
        M.joint_errors_mm(np.zeros((1, 21, 3)), np.zeros((1, 21, 3)), "bogus")
    with pytest.raises(InputError, match="valid"):
        M.mpjpe(np.zeros((2, 21, 3)), np.zeros((2, 21, 3)), valid=np.ones(3, bool))
