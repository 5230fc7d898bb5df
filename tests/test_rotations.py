"""Rotation conversions against scipy's Rotation, including the numerically hard cases (angle ~0, ~pi)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from handvla.hand import rotations as R


def _hard_axis_angles(n: int = 400, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(0, np.pi, n)
    angles[:50] = 10.0 ** rng.uniform(-9, -3, 50)  # near 0
    angles[50:100] = np.pi - 10.0 ** rng.uniform(-9, -3, 50)  # near pi
    angles[100] = 0.0
    angles[101] = np.pi
    return torch.from_numpy(axes * angles[:, None])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_axis_angle_to_matrix_matches_scipy(dtype):
    aa = _hard_axis_angles().to(dtype)
    ours = R.axis_angle_to_matrix(aa).double().numpy()
    ref = Rotation.from_rotvec(aa.double().numpy()).as_matrix()
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert np.abs(ours - ref).max() < tol


def test_matrix_to_axis_angle_and_quaternion_match_scipy():
    aa = _hard_axis_angles()
    M = torch.from_numpy(Rotation.from_rotvec(aa.numpy()).as_matrix())
    q = R.matrix_to_quaternion(M).numpy()
    q_ref = Rotation.from_matrix(M.numpy()).as_quat()[:, [3, 0, 1, 2]]
    q_ref *= np.where(q_ref[:, :1] < 0, -1, 1)
    # at exactly pi, q and -q both have w = 0: compare up to sign
    err = np.minimum(np.abs(q - q_ref).max(1), np.abs(q + q_ref).max(1))
    assert err.max() < 1e-9
    back = R.matrix_to_axis_angle(M)
    assert np.abs(Rotation.from_rotvec(back.numpy()).as_matrix() - M.numpy()).max() < 1e-9
    # the returned angle is the principal one
    assert (back.norm(dim=-1) <= np.pi + 1e-9).all()


def test_quaternion_axis_angle_round_trip():
    aa = _hard_axis_angles()
    q = R.axis_angle_to_quaternion(aa)
    ref = Rotation.from_rotvec(aa.numpy()).as_quat()[:, [3, 0, 1, 2]]
    assert np.abs(q.numpy() - ref).max() < 1e-12
    assert np.abs(R.quaternion_to_matrix(q).numpy() - Rotation.from_rotvec(aa.numpy()).as_matrix()).max() < 1e-12


def test_rot6d_is_first_two_columns_and_gram_schmidt_inverts():
    M = torch.from_numpy(Rotation.random(100, random_state=1).as_matrix())
    d6 = R.matrix_to_rot6d(M)
    assert torch.equal(d6.reshape(-1, 3, 2), M[:, :, :2])
    assert (R.rot6d_to_matrix(d6) - M).abs().max() < 1e-12
    # Gram-Schmidt projects a perturbed 6D back onto a rotation
    noisy = R.rot6d_to_matrix(d6 + 0.05 * torch.randn_like(d6))
    eye = torch.eye(3, dtype=M.dtype).expand_as(noisy)
    assert (noisy.transpose(-1, -2) @ noisy - eye).abs().max() < 1e-12
    assert torch.allclose(torch.det(noisy), torch.ones(100, dtype=M.dtype))


def test_gradients_are_finite_at_zero_and_pi():
    aa = torch.tensor([[0.0, 0.0, 0.0], [1e-8, 0.0, 0.0], [np.pi - 1e-7, 0.0, 0.0]], dtype=torch.float64)
    aa.requires_grad_(True)
    R.matrix_to_axis_angle(R.axis_angle_to_matrix(aa)).sum().backward()
    assert torch.isfinite(aa.grad).all()
    assert torch.autograd.gradcheck(R.axis_angle_to_matrix, (torch.randn(5, 3, dtype=torch.float64, requires_grad=True),))


def test_mirror_is_reflection_through_x_plane():
    M = Rotation.random(50, random_state=2).as_matrix()
    S = np.diag([-1.0, 1.0, 1.0])
    aa = torch.from_numpy(Rotation.from_matrix(M).as_rotvec())
    mirrored = R.axis_angle_to_matrix(R.mirror_axis_angle(aa)).numpy()
    assert np.abs(mirrored - S @ M @ S).max() < 1e-12


def test_geodesic_angle_matches_scipy():
    a, b = Rotation.random(64, random_state=3), Rotation.random(64, random_state=4)
    ours = R.geodesic_angle(torch.from_numpy(a.as_matrix()), torch.from_numpy(b.as_matrix())).numpy()
    ref = (a.inv() * b).magnitude()
    assert np.abs(ours - ref).max() < 1e-9


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=3))
def test_property_axis_angle_round_trip(v):
    aa = torch.tensor([v], dtype=torch.float64)
    back = R.matrix_to_axis_angle(R.axis_angle_to_matrix(aa))
    assert np.allclose(R.axis_angle_to_matrix(back).numpy(), Rotation.from_rotvec(aa.numpy()).as_matrix(), atol=1e-9)
