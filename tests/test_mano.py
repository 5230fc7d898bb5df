"""MANOHand against smplx's MANO layer (an independent implementation) on fake MANO-format pickles.

smplx cannot read the chumpy-typed pickle (it would import chumpy), so every fixture folder is written
twice from the same arrays: the published layout for our loader, plain numpy for smplx.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_mano import write_fake_mano_pickle, write_mano_pickle  # noqa: E402

from handvla.errors import InputError, MissingResourceError  # noqa: E402
from handvla.hand.mano import OPENPOSE_TO_MANO, MANOHand, load_mano_arrays  # noqa: E402
from handvla.hand.motion import HandMotion  # noqa: E402
from handvla.hand.pickle_safe import RestrictedUnpickler, UnsafePickleError, restricted_load  # noqa: E402
from handvla.hand.registry import load_hand_model, motion_output, shared_hand_model  # noqa: E402
from handvla.hand.rotations import axis_angle_to_matrix  # noqa: E402

smplx = pytest.importorskip("smplx")

TIP_OPENPOSE = [4, 8, 12, 16, 20]  # thumb, index, middle, ring, little tips in the 21-joint output
B = 6


@pytest.fixture(scope="module")
def mano_dirs(tmp_path_factory):
    """ours/: chumpy layout; smplx/: the same arrays plain; smplx_left_fixed/: left shapedirs corrected."""
    root = tmp_path_factory.mktemp("mano")
    arrays = {}
    for side, name, seed in (("right", "MANO_RIGHT.pkl", 1), ("left", "MANO_LEFT.pkl", 2)):
        arrays[side] = write_fake_mano_pickle(root / "ours" / name, side, seed)
        write_mano_pickle(root / "smplx" / name, arrays[side], chumpy=False)
    fixed = dict(arrays["left"], shapedirs=arrays["left"]["shapedirs"].copy())
    fixed["shapedirs"][:, 0, :] *= -1
    write_mano_pickle(root / "smplx_left_fixed" / "MANO_LEFT.pkl", fixed, chumpy=False)
    return root, arrays


def _random_inputs(seed: int, n: int = B):
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(n, 3, generator=g)
    hp = 0.6 * torch.randn(n, 45, generator=g)
    betas = torch.randn(n, 10, generator=g)
    transl = 0.2 * torch.randn(n, 3, generator=g)
    return go, hp, betas, transl


def _smplx(path: Path, side: str = "right", **kw):
    return smplx.MANO(model_path=str(path), is_rhand=side == "right", batch_size=B, **kw)


def _compare(ours, ref, go, hp, betas, transl, tips=(744, 320, 443, 554, 671)):
    with torch.no_grad():
        o = ref(betas=betas, global_orient=go, hand_pose=hp, transl=transl)
        r = ours.forward_mano(go, hp, betas, transl)
    assert o.joints.shape == (B, 16, 3)  # smplx's MANO returns the 16 native joints, no tips
    assert (r.verts - o.vertices).abs().max() < 1e-5
    assert (r.joints[:, OPENPOSE_TO_MANO[:16]] - o.joints).abs().max() < 1e-5
    assert (r.joints[:, TIP_OPENPOSE] - o.vertices[:, list(tips)]).abs().max() < 1e-5
    # the poses move the mesh a lot, so agreement is not trivial
    assert (o.vertices - o.vertices[:, :1]).abs().max() > 0.05
    return r, o


# --------------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 0])
def test_loader_reads_chumpy_layout(tmp_path, protocol):
    path = tmp_path / "MANO_RIGHT.pkl"
    arrays = write_fake_mano_pickle(path, "right", seed=3, protocol=protocol)
    raw = path.read_bytes()
    assert b"chumpy.reordering\nSelect" in raw and b"numpy.core.multiarray\n_reconstruct" in raw
    with pytest.raises(ModuleNotFoundError):  # a plain load needs chumpy (not installable)
        pickle.loads(raw, encoding="latin1")
    got = load_mano_arrays(path)
    for key in ("v_template", "shapedirs", "posedirs", "weights", "hands_components", "hands_mean"):
        np.testing.assert_array_equal(got[key], arrays[key], err_msg=key)
    np.testing.assert_array_equal(got["J_regressor"].toarray(), arrays["J_regressor"].toarray())
    np.testing.assert_array_equal(got["f"], arrays["f"].astype(np.int64))
    assert got["kintree_table"][0, 0] == 4294967295


# --------------------------------------------------------------------------------------------------------
# Against smplx
# --------------------------------------------------------------------------------------------------------


def test_matches_smplx_right(mano_dirs):
    root, _ = mano_dirs
    ours = MANOHand.from_dir(root / "ours", "right")
    ref = _smplx(root / "smplx", use_pca=False, flat_hand_mean=True)
    _compare(ours, ref, *_random_inputs(0))


def test_matches_smplx_pca_and_hands_mean(mano_dirs):
    root, _ = mano_dirs
    go, hp, betas, transl = _random_inputs(1)
    coeffs = hp[:, :12] * 2
    for flat in (False, True):
        ours = MANOHand.from_dir(root / "ours", "right", use_pca=True, num_pca_comps=12, flat_hand_mean=flat)
        ref = _smplx(root / "smplx", use_pca=True, num_pca_comps=12, flat_hand_mean=flat)
        _compare(ours, ref, go, coeffs, betas, transl)
    ours = MANOHand.from_dir(root / "ours", "right", flat_hand_mean=False)
    ref = _smplx(root / "smplx", use_pca=False, flat_hand_mean=False)
    _compare(ours, ref, go, hp, betas, transl)


def test_matches_smplx_left(mano_dirs):
    root, _ = mano_dirs
    inputs = _random_inputs(2)
    # smplx does not correct the left shapedirs: compare against it on corrected arrays, and as published
    ours = MANOHand.from_dir(root / "ours", "left")
    _compare(ours, _smplx(root / "smplx_left_fixed", "left", use_pca=False, flat_hand_mean=True), *inputs)
    ours_raw = MANOHand.from_dir(root / "ours", "left", fix_left_shapedirs=False)
    _compare(ours_raw, _smplx(root / "smplx", "left", use_pca=False, flat_hand_mean=True), *inputs)
    # the fix flips exactly the x component of the shape offsets
    betas = inputs[2]
    d_fixed = ours.shaped_vertices(betas) - ours.v_template
    d_raw = ours_raw.shaped_vertices(betas) - ours_raw.v_template
    torch.testing.assert_close(d_fixed[..., 0], -d_raw[..., 0])
    torch.testing.assert_close(d_fixed[..., 1:], d_raw[..., 1:])


def test_manopth_tip_ids(mano_dirs):
    root, _ = mano_dirs
    for side, middle in (("right", 444), ("left", 445)):
        ours = MANOHand.from_dir(root / "ours", side, tip_vertex_ids="manopth", fix_left_shapedirs=False)
        tips = (745, 317, middle, 556, 673)
        assert ours.tip_vertex_ids == tips
        _compare(
            ours,
            _smplx(root / "smplx", side, use_pca=False, flat_hand_mean=True),
            *_random_inputs(3),
            tips=tips,
        )


# --------------------------------------------------------------------------------------------------------
# Project conventions
# --------------------------------------------------------------------------------------------------------


def test_wrist_pos_convention(mano_dirs):
    root, _ = mano_dirs
    ours = MANOHand.from_dir(root / "ours", "right")
    go, hp, betas, wrist = _random_inputs(4)
    out = ours(go, hp.reshape(B, 15, 3), betas, wrist)
    assert out.joints.shape == (B, 21, 3) and out.verts.shape == (B, 778, 3)
    assert torch.equal(out.joints[:, 0], wrist)  # exactly
    # same as MANO with the transl that puts the wrist there (the root does not move under rotation)
    transl = ours.mano_transl(betas, wrist)
    ref = ours.forward_mano(go, hp, betas, transl)
    assert (ref.joints - out.joints).abs().max() < 1e-6
    assert (ref.verts - out.verts).abs().max() < 1e-6
    torch.testing.assert_close(ours.wrist_from_transl(betas, transl), wrist)
    # without wrist_pos the wrist is at the origin; (10,) betas broadcast
    out0 = ours(go, hp, betas[0])
    assert torch.equal(out0.joints[:, 0], torch.zeros(B, 3))
    assert (
        out0.verts - (ours(go, hp, betas[:1].expand(B, 10), wrist).verts - wrist[:, None])
    ).abs().max() < 1e-6
    # the same joints from rotation matrices (what 6D tokenizer features use), whatever the pose options
    rot = axis_angle_to_matrix(torch.cat([go[:, None], hp.reshape(B, 15, 3)], 1))
    torch.testing.assert_close(ours.joints_from_rotations(rot, betas, wrist), out.joints)
    pca = MANOHand.from_dir(root / "ours", "right", use_pca=True, num_pca_comps=6, flat_hand_mean=False)
    torch.testing.assert_close(pca.joints_from_rotations(rot, betas, wrist), out.joints)


def test_rest_joints_tips_and_frames(mano_dirs):
    root, arrays = mano_dirs
    ours = MANOHand.from_dir(root / "ours", "right")
    betas = _random_inputs(5)[2][:2]
    J, tips = ours.rest_joints_and_tips(betas)
    a = arrays["right"]
    v_shaped = a["v_template"] + np.einsum("bl,vcl->bvc", betas.double().numpy(), a["shapedirs"])
    np.testing.assert_allclose(
        J.numpy(), np.einsum("jv,bvc->bjc", a["J_regressor"].toarray(), v_shaped), atol=1e-6
    )
    np.testing.assert_allclose(tips.numpy(), v_shaped[:, [744, 320, 443, 554, 671]], atol=1e-6)
    # zero pose: the posed joints are the rest joints (shifted to the wrist)
    out = ours(torch.zeros(2, 3), torch.zeros(2, 15, 3), betas)
    rest = torch.cat([J, tips], 1)[:, ours._openpose_index]
    torch.testing.assert_close(out.joints, rest - rest[:, :1], atol=1e-6, rtol=0)
    frames = ours.anatomical_frames(betas)
    assert frames.shape == (2, 15, 3, 3)
    torch.testing.assert_close(
        frames.transpose(-1, -2) @ frames, torch.eye(3).expand(2, 15, 3, 3), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(ours.mano_transl(betas, torch.zeros(2, 3)), -J[:, 0])


def test_pose_convention_helpers(mano_dirs):
    root, _ = mano_dirs
    flat_model = MANOHand.from_dir(root / "ours", "right")
    mean_model = MANOHand.from_dir(root / "ours", "right", flat_hand_mean=False)
    pca_model = MANOHand.from_dir(
        root / "ours", "right", use_pca=True, num_pca_comps=45, flat_hand_mean=False
    )
    go, hp, betas, _ = _random_inputs(6)
    pose = hp.reshape(B, 15, 3)
    torch.testing.assert_close(flat_model.mean_to_flat(flat_model.flat_to_mean(pose)), pose)
    # a flat pose given to a mean-convention model after flat_to_mean gives the same hand
    a = flat_model(go, pose, betas).verts
    b = mean_model(go, mean_model.flat_to_mean(pose), betas).verts
    assert (a - b).abs().max() < 1e-6
    # 45 PCA coefficients are exact (smplx would ignore PCA at 45: not so here)
    coeffs = pca_model.axis_angle_to_pca(mean_model.flat_to_mean(pose), 45)
    torch.testing.assert_close(
        pca_model.pca_to_axis_angle(coeffs), mean_model.flat_to_mean(pose), atol=1e-5, rtol=0
    )
    c = pca_model(go, coeffs, betas).verts
    assert (a - c).abs().max() < 1e-5
    torch.testing.assert_close(pca_model.to_flat_hand_pose(coeffs), pose, atol=1e-5, rtol=0)
    # fewer components: a projection (idempotent), and the helper reproduces the model's expansion
    c12 = torch.randn(B, 12)
    p12 = flat_model.pca_to_axis_angle(c12)
    torch.testing.assert_close(flat_model.axis_angle_to_pca(p12, 12), c12, atol=1e-5, rtol=0)


def test_gradients_and_no_licensed_state(mano_dirs):
    root, _ = mano_dirs
    ours = MANOHand.from_dir(root / "ours", "right")
    assert ours.state_dict() == {}  # licensed arrays never end up in checkpoints
    go, hp, betas, wrist = (x.requires_grad_() for x in _random_inputs(7, 2))
    ours(go, hp, betas, wrist).verts.square().sum().backward()
    for x in (go, hp, betas, wrist):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    d = ours.double()
    assert d.dtype == torch.float64 and d(go.detach(), hp.detach()).verts.dtype == torch.float64


def test_load_hand_model_factory(mano_dirs):
    root, _ = mano_dirs
    m = load_hand_model("mano", "left", str(root / "ours"))
    assert isinstance(m, MANOHand) and m.side == "left" and m.has_mesh and m.faces.shape == (1538, 3)
    # a MANO motion through the shared model of its name: the same joints and mesh as the model's own
    motion = HandMotion(
        np.zeros((2, 3)), 0.3 * np.ones((2, 15, 3)), [[0.1, 0.0, 0.5]] * 2, side="left", hand_model="mano"
    )
    out = motion_output(motion, None, root / "ours")
    shared = shared_hand_model("mano", "left", str(root / "ours"))
    assert shared is shared_hand_model("mano", "left", root / "ours")  # loaded once per process
    go, hp, wp = (torch.tensor(a) for a in (motion.global_orient, motion.hand_pose, motion.wrist_pos))
    ref = m(go, hp, None, wp)
    torch.testing.assert_close(out.joints, ref.joints)
    torch.testing.assert_close(out.verts, ref.verts)


# --------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------


def test_missing_files(tmp_path):
    for mano_dir in (tmp_path, tmp_path / "nowhere"):
        with pytest.raises(MissingResourceError) as e:
            MANOHand.from_dir(mano_dir, "right")
        msg = str(e.value)
        assert str(mano_dir) in msg and "MANO_RIGHT.pkl" in msg and "MANO_LEFT.pkl" in msg
        assert "mano.is.tue.mpg.de" in msg
    with pytest.raises(MissingResourceError, match="mano.is.tue.mpg.de"):
        load_hand_model("mano", "right", None)
    # models/ subfolder is found
    write_fake_mano_pickle(tmp_path / "models" / "MANO_LEFT.pkl", "left", 0)
    assert MANOHand.from_dir(tmp_path, "left").side == "left"


def test_corrupted_and_wrong_pickles(tmp_path, mano_dirs):
    root, arrays = mano_dirs
    good = (root / "ours" / "MANO_RIGHT.pkl").read_bytes()
    bad = tmp_path / "trunc" / "MANO_RIGHT.pkl"
    bad.parent.mkdir()
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="trunc.*MANO_RIGHT.pkl"):
        MANOHand.from_dir(bad.parent, "right")
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(InputError, match="MANO_RIGHT.pkl"):
        load_mano_arrays(bad)
    bad.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(InputError, match="dict"):
        load_mano_arrays(bad)

    a = arrays["right"]
    cases = {
        "v_template": dict(a, v_template=a["v_template"][:777]),
        "posedirs": {k: v for k, v in a.items() if k != "posedirs"},
        "kintree_table": dict(a, kintree_table=a["kintree_table"][:, ::-1].copy()),
        "weights": dict(a, weights=np.full((778, 16), np.nan)),
    }
    for key, arr in cases.items():
        write_mano_pickle(bad, arr, chumpy=key != "posedirs")
        with pytest.raises(InputError) as e:
            load_mano_arrays(bad)
        assert e.value.field == key and str(bad) in str(e.value), str(e.value)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickles_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps({"v_template": np.zeros(3), "x": _Evil(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError) as e:
        load_mano_arrays(path)
    assert str(path) in str(e.value) and "system" in str(e.value)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the same bytes would have run the command
    assert marker.exists()
    marker.unlink()

    # other gadgets: builtins.eval, a dotted getattr path, _reconstructor on a real class, codecs abuse
    gadgets = [
        b"\x80\x02c__builtin__\neval\nX\x08\x00\x00\x001+1\x85R.",
        b"\x80\x04\x8c\x05numpy\x8c\x1ccore.multiarray._reconstruct\x93.",
        b"ccopy_reg\n_reconstructor\n(c__builtin__\nset\nc__builtin__\nobject\nNtR.",
        b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.",
    ]
    for g in gadgets:
        path.write_bytes(g)
        with pytest.raises(UnsafePickleError, match="MANO_RIGHT.pkl"):
            restricted_load(path)
    # a placeholder called with arguments does nothing
    obj = RestrictedUnpickler(io.BytesIO(b"\x80\x02cchumpy.ch\nCh\nX\x02\x00\x00\x00rm\x85R."), "mem").load()
    assert obj.args == ("rm",)
