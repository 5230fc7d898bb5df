"""Rendering hands (skeleton, mesh, overlays, side by side) and the video helpers (MP4 / GIF, atomic)."""

import numpy as np
import pytest
import torch

from handvla.camera import Camera
from handvla.errors import InputError, MissingResourceError
from handvla.hand.model import BuiltinHand
from handvla.hand.render import (
    MESH_COLORS,
    HandTrack,
    auto_view,
    render_frames,
    render_motions,
    render_side_by_side,
    render_video,
    track_from_motion,
)
from handvla.synth.builtin_motion import sample_sequence
from handvla.video import VideoWriter, read_video, video_info, write_video

BG = (24, 24, 28)


def hand_joints(wrist, side="right", T=1, orient=(np.pi / 2, 0, 0)):
    """(T, 21, 3) joints of the built-in hand (a slightly bent pose) with its wrist at ``wrist``."""
    hp = torch.full((T, 15, 3), 0.0)
    hp[:, :, 2] = -0.3 if side == "right" else 0.3
    go = torch.tensor(np.tile(orient, (T, 1)), dtype=torch.float32)
    out = BuiltinHand(side)(go, hp, None, torch.tensor(np.tile(wrist, (T, 1)), dtype=torch.float32))
    return out.joints.double().numpy()


def test_projection_draws_a_known_point_where_K_says():
    K = np.array([[210.0, 0, 61.5], [0, 190.0, 47.25], [0, 0, 1]])
    cam = Camera.from_K(K, 128, 96)
    p = np.array([0.031, -0.017, 0.43])
    uv_ref = (K @ p)[:2] / p[2]  # independent: the textbook projection
    uv = cam.project(p)
    assert np.allclose(uv, uv_ref)
    frame = render_frames([HandTrack(hand_joints(p))], camera=cam, bg_color=BG)[0]
    u, v = np.round(uv_ref).astype(int)
    # the wrist dot of a right hand is white, centred on the projected point
    assert (frame[v, u] == 255).all()
    win = (frame[v - 4 : v + 5, u - 4 : u + 5] == 255).all(-1)
    ys, xs = np.nonzero(win)
    assert abs(xs.mean() + u - 4 - uv_ref[0]) < 0.75 and abs(ys.mean() + v - 4 - uv_ref[1]) < 0.75
    # and nothing is drawn in a corner far from the hand
    assert (frame[-5:, :5] == BG).all()
    # same camera from (fx, fy, cx, cy)
    assert Camera.from_K((210, 190, 61.5, 47.25), 128, 96) == cam


def test_overlay_on_an_image_and_a_video_keeps_the_background():
    cam = Camera(150, 150, 40, 30, 80, 60)
    bg_video = np.zeros((3, 60, 80, 3), np.uint8)
    bg_video[:, :, :, 1] = np.arange(3)[:, None, None] * 60  # frame-coded backgrounds
    j = hand_joints([0.0, 0.0, 0.5], T=3)
    frames = render_frames([HandTrack(j)], camera=cam, background=bg_video)
    assert frames.shape == (3, 60, 80, 3)
    for t in range(3):
        assert (frames[t, 0, 0] == (0, 60 * t, 0)).all()
    assert (bg_video[:, 30, 40] == bg_video[:, 0, 0]).all(), "the background array is not drawn on"
    img = render_frames([HandTrack(j)], camera=cam, background=bg_video[1], num_frames=2)
    assert img.shape == (2, 60, 80, 3)
    with pytest.raises(InputError):
        render_frames([HandTrack(j)], background=bg_video)  # overlay needs the camera
    with pytest.raises(InputError):
        render_frames([HandTrack(j)], camera=Camera(150, 150, 40, 30, 64, 64), background=bg_video)


def test_nearer_hand_occludes_the_farther_one():
    cam = Camera(200, 200, 64, 64, 128, 128)
    near, far = np.array([0.0, 0.0, 0.4]), np.array([0.0, 0.0, 0.8])  # same pixel, different depths
    for right_at, expected in ((near, 255), (far, 40)):
        left_at = far if right_at is near else near
        tracks = [
            HandTrack(hand_joints(right_at, "right"), "right"),
            HandTrack(hand_joints(left_at, "left"), "left"),
        ]
        for order in (tracks, tracks[::-1]):  # the order the hands are given in does not matter
            frame = render_frames(order, camera=cam)[0]
            assert (frame[64, 64] == expected).all()  # right dots are white, left dots dark grey


def test_mesh_is_painted_by_depth_with_flat_shading():
    cam = Camera(100, 100, 32, 32, 64, 64)

    def square(z, half, tilt=0.0):  # two triangles facing the camera (tilted about y by ``tilt``)
        x = np.array([-half, half, half, -half])
        y = np.array([-half, -half, half, half])
        return np.stack([x * np.cos(tilt), y, z + x * np.sin(tilt)], 1), np.array([[0, 2, 1], [0, 3, 2]])

    v_far, f = square(1.0, 0.3)
    v_near, _ = square(0.5, 0.04)
    joints = np.zeros((1, 21, 3)) + [0, 0, 0.7]
    far = HandTrack(joints, "left", v_far[None], f)
    near = HandTrack(joints, "right", v_near[None], f)
    for cull in (True, False):
        frame = render_frames([near, far], camera=cam, mode="mesh", cull_backfaces=cull)[0]
        # facing the headlight: the full base colour; the near square covers the centre
        assert np.abs(frame[32, 32].astype(int) - MESH_COLORS["right"]).max() <= 1
        # the far square's faces are seen slightly off-axis: a touch darker
        assert np.abs(frame[32, 2].astype(int) - MESH_COLORS["left"]).max() <= 4
    # a face tilted by 60 degrees gets darker (Lambert: 0.35 + 0.65 cos)
    v_tilt, _ = square(2.0, 0.05, tilt=np.radians(60))  # far and small: every face seen almost on-axis
    tele = Camera(400, 400, 32, 32, 64, 64)
    frame = render_frames(
        [HandTrack(joints, "right", v_tilt[None], f)], camera=tele, mode="mesh", cull_backfaces=False
    )[0]
    k = 0.35 + 0.65 * np.cos(np.radians(60))
    assert np.abs(frame[32, 32].astype(int) - np.array(MESH_COLORS["right"]) * k).max() <= 3
    with pytest.raises(InputError):
        render_frames([HandTrack(joints)], mode="mesh")


def test_auto_view_keeps_every_joint_in_the_image():
    motions = sample_sequence(np.random.default_rng(0), 2.0, hands=("left", "right"))
    tracks = [track_from_motion(m) for m in motions.values()]
    for view in ((0, 0), (90, 30), (-45, -20)):
        cam, R, t = auto_view(tracks, 96, 64, view)
        for tr in tracks:
            p = tr.joints @ R.T + t
            uv = cam.project(p)
            assert (p[..., 2] > 0).all()
            assert (
                (uv[..., 0] >= 0).all()
                and (uv[..., 0] < 96).all()
                and (uv[..., 1] >= 0).all()
                and (uv[..., 1] < 64).all()
            )
        assert np.allclose(R @ R.T, np.eye(3))
    frames = render_frames(motions, width=96, height=64, title="t", labels=["a"] * 30, side_tags=True)
    assert frames.shape == (30, 64, 96, 3) and frames.dtype == np.uint8
    assert (frames != BG).any(axis=-1).mean() > 0.01  # something was drawn


def test_side_by_side_shares_the_camera():
    m = sample_sequence(np.random.default_rng(1), 1.0)["right"]
    a = track_from_motion(m)
    shifted = HandTrack(a.joints + [0.05, 0, 0], "right")
    out = render_side_by_side([a], [a], width=96, height=80, gap=4, titles=("", ""))
    assert out.shape == (15, 80, 196, 3)
    assert (out[:, :, 96:100] == 255).all()  # the separator
    assert np.array_equal(out[:, :, :96], out[:, :, 100:]), "same motion, same camera: identical panels"
    out2 = render_side_by_side([a], [shifted], width=96, height=80, gap=4, titles=("truth", "reconstruction"))
    assert not np.array_equal(out2[:, :, :96], out2[:, :, 100:])
    # motions of different lengths: the shorter one holds its last frame
    short = HandTrack(a.joints[:5], "right")
    assert render_side_by_side([a], [short], width=32, height=32).shape[0] == 15


def test_mp4_round_trip_range_and_window(tmp_path):
    T, H, W = 12, 25, 33  # odd size: stored padded to even
    colours = np.array(
        [[(37 * i) % 256, (90 + 53 * i) % 256, (200 - 15 * i) % 256] for i in range(T)], np.uint8
    )
    frames = np.broadcast_to(colours[:, None, None], (T, H, W, 3)).copy()
    path = write_video(tmp_path / "x.mp4", frames, fps=15)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mp4"], "no temporary file left behind"
    info = video_info(path)
    assert (info.width, info.height, info.num_frames, info.fps, info.codec) == (34, 26, T, 15.0, "h264")
    back = read_video(path)
    assert back.shape == (T, 26, 34, 3) and back.dtype == np.uint8
    assert np.abs(back[:, 12, 16].astype(int) - colours).max() <= 6  # yuv420p round trip
    part = read_video(path, 5, 9)
    assert len(part) == 4 and np.abs(part[:, 12, 16].astype(int) - colours[5:9]).max() <= 6
    win = read_video(path, start_s=0.2, stop_s=0.5)  # frames shown at 3/15 .. 7/15 s
    assert len(win) == 5 and np.abs(win[:, 12, 16].astype(int) - colours[3:8]).max() <= 6
    assert read_video(path, 20, 30).shape == (0, 26, 34, 3)


def test_gif_round_trip_with_repeated_frames(tmp_path):
    values = [0, 0, 0, 120, 240, 240, 60]  # PIL stores repeats once with a longer delay
    frames = np.stack([np.full((16, 20, 3), v, np.uint8) for v in values])
    path = write_video(tmp_path / "x.gif", frames, fps=10)
    info = video_info(path)
    assert (
        info.num_frames == len(values)
        and info.fps == pytest.approx(10.0)
        and (info.width, info.height) == (20, 16)
    )
    back = read_video(path)
    assert back.shape == (7, 16, 20, 3)
    assert np.abs(back[:, 5, 5, 0].astype(int) - values).max() <= 2
    assert np.abs(read_video(path, 2, 5)[:, 0, 0, 0].astype(int) - values[2:5]).max() <= 2


def test_writer_is_atomic_and_checks_input(tmp_path):
    target = tmp_path / "keep.mp4"
    write_video(target, np.zeros((2, 8, 8, 3), np.uint8))
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with VideoWriter(target, fps=15) as w:
            w.write(np.full((8, 8, 3), 255, np.uint8))
            raise RuntimeError("stop half-way")
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]
    with pytest.raises(InputError):
        write_video(tmp_path / "x.avi", np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(InputError):
        write_video(tmp_path / "x.mp4", np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(InputError):
        with VideoWriter(tmp_path / "y.mp4") as w:
            w.write(np.zeros((8, 8, 3), np.uint8))
            w.write(np.zeros((10, 8, 3), np.uint8))
    with pytest.raises(MissingResourceError):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(InputError):
        read_video(tmp_path / "bad.mp4")
    assert not (tmp_path / "y.mp4").exists()


def test_render_motions_to_files(tmp_path):
    motions = sample_sequence(np.random.default_rng(3), 1.0, hands=("left", "right"))
    mp4 = render_motions(tmp_path / "both.mp4", motions, width=64, height=48, title="two hands")
    assert video_info(mp4).num_frames == 15 and (video_info(mp4).width, video_info(mp4).height) == (64, 48)
    recon = {s: m for s, m in motions.items()}
    gif = render_motions(tmp_path / "cmp.gif", motions, compare=recon, width=40, height=40, gap=2, fps=10)
    info = video_info(gif)
    assert (info.width, info.height, info.num_frames) == (82, 40, 15)
    tr = track_from_motion(motions["left"])
    out = render_video(tmp_path / "one.mp4", [tr], fps=15, width=32, height=32)
    assert read_video(out).shape == (15, 32, 32, 3)


def test_writer_uses_the_encoder_threads_asked_for(tmp_path):
    """A fixed thread count (what the data build uses) is what libx264 records in the stream; it is what
    makes the bytes the same on machines with other core counts."""
    frames = np.random.default_rng(0).integers(0, 256, (4, 240, 320, 3), dtype=np.uint8)  # tall: 2 threads
    for n in (1, 2):
        data = write_video(tmp_path / f"t{n}.mp4", frames, threads=n).read_bytes()
        assert f" threads={n} ".encode() in data
    with pytest.raises(InputError, match="threads"):
        write_video(tmp_path / "bad.mp4", frames, threads=-1)
    assert not (tmp_path / "bad.mp4").exists()
