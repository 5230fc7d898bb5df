"""Alignment to the canonical camera, intrinsics from config/EXIF, and the balancing augmentations."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from handvla.camera import CANONICAL_K, Camera
from handvla.data.schema import Episode
from handvla.errors import InputError
from handvla.hand.model import BuiltinHand
from handvla.hand.motion import HandMotion
from handvla.ingest.align import (
    AlignConfig,
    IntrinsicsConfig,
    ViewBalanceConfig,
    align_episode,
    apply_augmentation,
    apply_intrinsics,
    augmentations_for,
    balance_plan,
    intrinsics_from_exif,
    mirror_episode,
    rotate_episode,
    swap_left_right_words,
    timescale_episode,
)
from handvla.synth.handworld.cameras import make_camera

sys.path.insert(0, str(Path(__file__).resolve().parent / "sources"))


def blob_image(width: int, height: int, uv: np.ndarray, sigma: float) -> np.ndarray:
    """A black image with one Gaussian spot centred at pixel coordinates uv (pixel centres at +0.5)."""
    y, x = np.mgrid[0:height, 0:width] + 0.5
    g = np.exp(-((x - uv[0]) ** 2 + (y - uv[1]) ** 2) / (2 * sigma**2))
    return np.repeat((255 * g).round().astype(np.uint8)[..., None], 3, -1)


def spot_centre(img: np.ndarray, near: np.ndarray, radius: float) -> np.ndarray:
    """Intensity-weighted centroid of the spot within ``radius`` px of ``near``."""
    g = img[..., 0].astype(np.float64)
    y, x = np.mgrid[0 : g.shape[0], 0 : g.shape[1]] + 0.5
    w = g * (((x - near[0]) ** 2 + (y - near[1]) ** 2) < radius**2)
    return np.array([(w * x).sum() / w.sum(), (w * y).sum() / w.sum()])


def hand_points(cam: Camera, n: int, seed: int) -> np.ndarray:
    """(n, 3) camera-frame points of a posed built-in hand in front of ``cam`` that project inside it."""
    rng = np.random.default_rng(seed)
    model = BuiltinHand("right")
    pts = []
    while len(pts) < n:
        with torch.no_grad():
            j = (
                model(
                    torch.as_tensor(rng.normal(0, 1.0, (1, 3)), dtype=torch.float32),
                    torch.as_tensor(rng.normal(0, 0.3, (1, 15, 3)), dtype=torch.float32),
                    None,
                    torch.as_tensor(
                        [[rng.uniform(-0.1, 0.1), rng.uniform(-0.08, 0.08), rng.uniform(0.35, 0.7)]]
                    ),
                )
                .joints[0]
                .double()
                .numpy()
            )
        for p in j[[0, 4, 8, 12, 16, 20]]:  # wrist and fingertips
            uv = cam.project(p)
            if 6 < uv[0] < cam.width - 6 and 6 < uv[1] < cam.height - 6:
                pts.append(p)
    return np.array(pts[:n])


def reprojection_errors(cam: Camera, pts: np.ndarray, cfg: AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pixel error of projecting 3D points with the aligned camera onto (a) the aligned (warped) frames
    and (b) frames only resized to the output size (no alignment): where each spot really is."""
    out_cam = cfg.camera()
    sigma = 1.2 * max(1.0, cam.width / cfg.out_size[0])  # a spot that stays > 1 px wide after shrinking
    after, before = [], []
    for p in pts:
        frame = blob_image(cam.width, cam.height, cam.project(p), sigma)
        ep = Episode(hands={}, camera=cam, fps=15.0, key="k")
        aligned, frames = align_episode(ep, [frame], cfg)
        assert aligned.camera.K.tolist() == out_cam.K.tolist()
        uv = aligned.camera.project(p)
        if not (4 < uv[0] < cfg.out_size[0] - 4 and 4 < uv[1] < cfg.out_size[1] - 4):
            continue
        after.append(np.linalg.norm(spot_centre(frames[0], uv, 6.0) - uv))
        resized = np.asarray(Image.fromarray(frame).resize(cfg.out_size, Image.BILINEAR))
        scale = np.array(cfg.out_size) / [cam.width, cam.height]
        before.append(np.linalg.norm(spot_centre(resized, cam.project(p) * scale, 6.0) - uv))
    return np.array(after), np.array(before)


def test_output_camera_fit_modes():
    K = CANONICAL_K
    pad = AlignConfig(out_size=(640, 360)).output_K()  # same aspect ratio: exactly K / 3
    np.testing.assert_allclose(pad[:2], K[:2] / 3)
    sq = AlignConfig(out_size=(448, 448), fit="pad").output_K()
    s = 448 / 1920
    np.testing.assert_allclose(sq, [[K[0, 0] * s, 0, 224], [0, K[1, 1] * s, 224], [0, 0, 1]])
    crop = AlignConfig(out_size=(448, 448), fit="crop").output_K()
    np.testing.assert_allclose(crop[0, 0], K[0, 0] * 448 / 1080)
    np.testing.assert_allclose(crop[:2, 2], [224, 224])
    st = AlignConfig(out_size=(448, 448), fit="stretch").output_K()
    np.testing.assert_allclose([st[0, 0], st[1, 1]], [K[0, 0] * 448 / 1920, K[1, 1] * 448 / 1080])
    with pytest.raises(ValueError, match="even"):
        AlignConfig(out_size=(641, 360))


@pytest.mark.parametrize("fit", ["pad", "stretch"])
def test_reprojection_after_alignment_is_subpixel(fit):
    """Two very different cameras (a HandWorld phone rig: wide, off-centre principal point; and an FPHA-like
    1920x1080 colour camera) and a HandWorld third-person rig: stored 3D points project onto the warped
    frames within 1 px with the aligned camera; resizing without the warp is off by many pixels."""
    cfg = AlignConfig(out_size=(320, 180) if fit == "pad" else (160, 160), fit=fit)
    phone = make_camera("phone", 256, 192, np.random.default_rng(0))
    third = make_camera("third", 200, 150, np.random.default_rng(1))
    fpha = Camera(1395.749023, 1395.749268, 935.732544, 540.681030, 1920, 1080)
    for cam, seed in ((phone, 0), (third, 1), (fpha, 2)):
        after, before = reprojection_errors(cam, hand_points(cam, 6, seed), cfg)
        assert len(after) >= 3
        assert after.max() < 1.0, (cam, after)
        assert np.median(before) > 3.0, (cam, before)


def test_align_keeps_3d_and_records_provenance():
    cam = make_camera("ego", 128, 96, np.random.default_rng(3))
    m = HandMotion(np.zeros((2, 3)), np.zeros((2, 15, 3)), [[0, 0, 0.5], [0.01, 0, 0.5]], side="left")
    ep = Episode(hands={"left": m}, camera=cam, fps=15.0, key="k", joints={"left": np.ones((2, 21, 3))})
    out, frames = align_episode(ep, None, AlignConfig())
    assert frames is None and out.hands["left"] is m and out.joints is ep.joints
    assert out.camera.width == 640 and np.array_equal(out.camera.extrinsics, cam.extrinsics)
    prov = out.annotations["provenance"]["align"]
    H = np.array(prov["H"])
    np.testing.assert_allclose(H, AlignConfig().output_K() @ np.linalg.inv(cam.K), atol=1e-6)


def _episode(cam: Camera, seed: int, T: int = 4) -> tuple[Episode, np.ndarray]:
    """A right hand moving in front of ``cam`` with joints, and frames with a spot on each fingertip."""
    rng = np.random.default_rng(seed)
    model = BuiltinHand("right")
    go = rng.normal(0, 0.5, (T, 3)) + [0, 0, 1.5]
    pose = rng.normal(0, 0.2, (T, 15, 3))
    wrist = np.array([[0.02 * t, -0.01, 0.45] for t in range(T)])
    m = HandMotion(go, pose, wrist, betas=rng.normal(0, 0.5, 10), side="right", fps=15.0)
    with torch.no_grad():
        j = model(
            torch.as_tensor(m.global_orient),
            torch.as_tensor(m.hand_pose),
            torch.as_tensor(m.betas),
            torch.as_tensor(m.wrist_pos),
        ).joints.numpy()
    frames = np.stack([blob_image(cam.width, cam.height, cam.project(j[t, 8]), 1.2) for t in range(T)])
    ep = Episode(
        hands={"right": m},
        camera=cam,
        fps=15.0,
        key="src/ep1",
        joints={"right": j},
        tasks=["Turn the cap clockwise with the right hand"],
        annotations={"per_second": [{"left": "holds the jar", "right": "turns the cap counterclockwise"}]},
    )
    return ep, frames


def test_mirror_round_trip_and_image_consistency():
    cam = make_camera("phone", 160, 120, np.random.default_rng(4))
    assert abs(cam.cx - cam.width / 2) > 2  # an off-centre principal point: the flip must move it
    ep, frames = _episode(cam, 5)
    mir, mframes = mirror_episode(ep, frames)
    assert set(mir.hands) == {"left"} and mir.hands["left"].side == "left"
    assert mir.key == "src/ep1@mirror" and mir.camera.cx == pytest.approx(cam.width - cam.cx)
    assert mir.tasks == ["Turn the cap counterclockwise with the left hand"]
    assert mir.annotations["per_second"][0] == {"right": "holds the jar", "left": "turns the cap clockwise"}
    assert mir.annotations["provenance"]["augment"][0]["op"] == "mirror"
    # the mirrored 3D projects onto the flipped image with the mirrored camera
    for t in range(len(frames)):
        uv = mir.camera.project(mir.joints["left"][t, 8])
        assert np.linalg.norm(spot_centre(mframes[t], uv, 5.0) - uv) < 0.5
    # mirrored right-hand joints = the LEFT model's joints of the mirrored parameters = x-reflected joints
    left = BuiltinHand("left")
    ml = mir.hands["left"]
    with torch.no_grad():
        jl = left(
            torch.as_tensor(ml.global_orient),
            torch.as_tensor(ml.hand_pose),
            torch.as_tensor(ml.betas),
            torch.as_tensor(ml.wrist_pos),
        ).joints.numpy()
    np.testing.assert_allclose(jl, ep.joints["right"] * [-1, 1, 1], atol=1e-5)
    np.testing.assert_allclose(mir.joints["left"], jl, atol=1e-5)
    # twice = identity (parameters, joints, camera, frames, text)
    back, bframes = mirror_episode(mir, mframes)
    m0, m2 = ep.hands["right"], back.hands["right"]
    for name in ("global_orient", "hand_pose", "wrist_pos", "betas", "valid"):
        np.testing.assert_array_equal(getattr(m2, name), getattr(m0, name))
    np.testing.assert_array_equal(back.joints["right"], ep.joints["right"])
    assert back.camera.cx == pytest.approx(cam.cx) and np.array_equal(bframes, frames)
    assert back.tasks == ep.tasks and back.annotations["per_second"] == ep.annotations["per_second"]


def test_mirror_with_mano_models(tmp_path):
    """The same identity with MANO models whose left file is the exact mirror of the right (with the
    published left shapedirs sign bug fixed by the loader)."""
    import fixtures as F

    mano_dir, _ = F.mano_folder(tmp_path, mirror_left=True)
    right, left = F.mano(mano_dir, "right"), F.mano(mano_dir, "left")
    rng = np.random.default_rng(6)
    m = HandMotion(
        rng.normal(0, 1, (3, 3)),
        rng.normal(0, 0.3, (3, 15, 3)),
        rng.normal(0, 0.1, (3, 3)),
        betas=rng.normal(0, 1, 10),
        side="right",
        hand_model="mano",
    )
    ml = m.mirrored()

    def joints(model, mm):
        with torch.no_grad():
            return (
                model(
                    torch.as_tensor(mm.global_orient),
                    torch.as_tensor(mm.hand_pose),
                    torch.as_tensor(mm.betas),
                    torch.as_tensor(mm.wrist_pos),
                )
                .joints.double()
                .numpy()
            )

    np.testing.assert_allclose(joints(left, ml), joints(right, m) * [-1, 1, 1], atol=2e-5)


def test_rotate_and_timescale_augmentations():
    cam = Camera(90.0, 90.0, 70.0, 55.0, 128, 96)
    ep, frames = _episode(cam, 7)
    rot, rframes = rotate_episode(ep, frames, 8.0)
    assert rot.key == "src/ep1@rot+8.0"
    for t in range(len(frames)):
        uv = rot.camera.project(rot.joints["right"][t, 8])
        assert np.linalg.norm(spot_centre(rframes[t], uv, 5.0) - uv) < 0.6
    # the rotated parameters still give the rotated joints
    with torch.no_grad():
        r = rot.hands["right"]
        j = BuiltinHand("right")(
            torch.as_tensor(r.global_orient),
            torch.as_tensor(r.hand_pose),
            torch.as_tensor(r.betas),
            torch.as_tensor(r.wrist_pos),
        ).joints.numpy()
    np.testing.assert_allclose(j, rot.joints["right"], atol=1e-5)
    back, _ = rotate_episode(rot, None, -8.0)
    np.testing.assert_allclose(back.joints["right"], ep.joints["right"], atol=1e-6)
    # time-scaling: x2 keeps every other frame exactly; x1 is the identity
    fast, fframes = timescale_episode(ep, frames, 2.0)
    assert fast.num_frames == 2 and np.array_equal(fframes, frames[::2])
    np.testing.assert_allclose(fast.hands["right"].wrist_pos, ep.hands["right"].wrist_pos[::2], atol=1e-6)
    same, _ = timescale_episode(ep, frames, 1.0)
    np.testing.assert_allclose(same.hands["right"].hand_pose, ep.hands["right"].hand_pose, atol=1e-5)
    chain, cframes = apply_augmentation(ep, frames, [("mirror", 0.0), ("rotate", -5.0)])
    assert chain.key == "src/ep1@mirror+rot-5.0" and len(chain.annotations["provenance"]["augment"]) == 2


def test_text_swap_words():
    s = "Left hand turns it clockwise; the RIGHT one counter-clockwise, leftward. Bright copyright leftover."
    assert swap_left_right_words(s) == (
        "Right hand turns it counterclockwise; the LEFT one clockwise, rightward. Bright copyright leftover."
    )
    assert swap_left_right_words("anticlockwise, rightmost") == "clockwise, leftmost"


def test_balance_plan_and_copies():
    cfg = ViewBalanceConfig(enabled=True, max_copies=3)
    plan = balance_plan({"big": 100, "mid": 50, "small": 10}, cfg)
    assert plan == {"big": 0.0, "mid": 1.0, "small": 3.0}  # small would need 9: capped
    plan = balance_plan({"a": 30, "b": 20}, ViewBalanceConfig(enabled=True, target={"a": 1, "b": 1}))
    assert plan["a"] == 0 and plan["b"] == pytest.approx(0.5)
    copies = [augmentations_for(f"b/{i}", 0.5, cfg) for i in range(400)]
    assert 0.4 < np.mean([len(c) for c in copies]) < 0.6  # the expected count, by a stable hash
    assert copies == [augmentations_for(f"b/{i}", 0.5, cfg) for i in range(400)]  # deterministic
    three = augmentations_for("s/1", 3.0, cfg)
    assert [[op for op, _ in c] for c in three] == [["mirror"], ["rotate"], ["mirror", "rotate"]]
    assert all(2.5 <= abs(p) <= 10 for c in three for op, p in c if op == "rotate")
    assert balance_plan({"a": 5}, ViewBalanceConfig()) == {"a": 0.0}


def _jpeg_with_exif(path: Path, size, **tags) -> Path:
    im = Image.new("RGB", size)
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    for tag, v in tags.items():
        sub[int(tag[1:], 16)] = v
    im.save(path, exif=exif)
    return path


def test_intrinsics_from_exif(tmp_path):
    # a phone: 4.2 mm lens, FocalPlaneXResolution 1000 px per mm (unit 4 = mm) for a 4000 px wide sensor
    p = _jpeg_with_exif(
        tmp_path / "a.jpg",
        (400, 300),
        x920A=IFDRational(42, 10),
        xA20E=IFDRational(1000, 1),
        xA210=4,
        xA002=4000,
    )
    fx, fy, cx, cy, info = intrinsics_from_exif(p)
    assert fx == pytest.approx(4.2 * 1000 * 400 / 4000) and (cx, cy) == (200, 150)
    fx, *_ = intrinsics_from_exif(p, sensor_width_mm=6.0)
    assert fx == pytest.approx(4.2 * 400 / 6.0)
    # 35 mm equivalent only: f_px = f35 * diagonal / 43.27 mm
    p = _jpeg_with_exif(tmp_path / "b.jpg", (640, 480), xA405=26)
    fx, *_, info = intrinsics_from_exif(p)
    assert fx == pytest.approx(26 * 800 / math.hypot(36, 24)) and "35 mm" in info["method"]
    p = _jpeg_with_exif(tmp_path / "c.jpg", (64, 48))
    with pytest.raises(InputError, match="FocalLength"):
        intrinsics_from_exif(p)
    # through the per-source config, with a scaled image size
    cfg = IntrinsicsConfig(exif={"sensor_width_mm": 6.0})
    K, origin = cfg.resolve("clips/x", 800, 600, [str(tmp_path / "a.jpg")])
    assert K[0, 0] == pytest.approx(4.2 * 800 / 6.0) and "exif" in origin


def test_intrinsics_config_and_weak_perspective(tmp_path):
    (tmp_path / "cams.yaml").write_text("'cam2/*': {hfov_deg: 90}\n")
    cfg = IntrinsicsConfig(
        default={"fx": 1000, "width": 1920, "height": 1080},
        per_key={"cam1/*": {"K": [[500, 0, 310], [0, 505, 250], [0, 0, 1]]}},
        file=str(tmp_path / "cams.yaml"),
    )
    K, origin = cfg.resolve("cam1/a", 640, 480)
    assert K[1, 1] == 505 and origin == "per_key 'cam1/*'"
    K, origin = cfg.resolve("cam2/a", 640, 480)
    assert K[0, 0] == pytest.approx(320) and K[0, 2] == 320
    K, origin = cfg.resolve("other", 960, 540)  # 1920x1080 numbers at half resolution
    np.testing.assert_allclose(K, [[500, 0, 480], [0, 500, 270], [0, 0, 1]])
    assert IntrinsicsConfig().resolve("x", 10, 10) is None
    with pytest.raises(InputError):
        IntrinsicsConfig(file=str(tmp_path / "missing.yaml")).resolve("x", 10, 10)
    # weak perspective: wrist pixel kept, depth scaled by f'/f; joints move with the wrist
    cam = Camera(1000, 1000, 320, 240, 640, 480)
    ep, _ = _episode(cam, 8)
    K2 = np.array([[600.0, 0, 300], [0, 600, 250], [0, 0, 1]])
    out = apply_intrinsics(ep, K2, "weak_perspective")
    w0, w1 = ep.hands["right"].wrist_pos.astype(np.float64), out.hands["right"].wrist_pos.astype(np.float64)
    np.testing.assert_allclose(out.camera.project(w1), cam.project(w0), atol=1e-3)
    np.testing.assert_allclose(w1[:, 2], w0[:, 2] * 0.6, rtol=1e-5)
    np.testing.assert_allclose(out.joints["right"] - w1[:, None], ep.joints["right"] - w0[:, None], atol=1e-5)
    metric = apply_intrinsics(ep, K2, "metric")
    assert metric.hands["right"] is ep.hands["right"] and metric.camera.fx == 600
