"""The procedural hand-motion generator: joint limits, determinism, speeds, targets, mirroring, labels."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from handvla.errors import InputError
from handvla.hand.anatomy import JOINT_LIMITS_RAD, anatomical_to_pose, pose_to_anatomical
from handvla.hand.model import BuiltinHand
from handvla.hand.motion import HandMotion
from handvla.synth.builtin_motion import (
    PRIMITIVES,
    BimanualScript,
    HandScript,
    Workspace,
    anatomical_frames,
    generate_dataset,
    key_shape,
    min_jerk,
    sample_labelled_sequence,
    sample_sequence,
)

MIRROR = np.array([-1.0, 1.0, 1.0])


def joints_of(m: HandMotion) -> np.ndarray:
    """(T, 21, 3) camera-frame joints through the project's hand model (the reference FK)."""
    with torch.no_grad():
        out = BuiltinHand(m.side)(
            torch.from_numpy(m.global_orient),
            torch.from_numpy(m.hand_pose),
            torch.from_numpy(m.betas),
            torch.from_numpy(m.wrist_pos),
        )
    return out.joints.double().numpy()


def anatomical_angles_scipy(m: HandMotion) -> np.ndarray:
    """(T, 15, 3) (twist, spread, bend) via rotation matrices conjugated into the model's own anatomical
    frames (a second code path to the generator's axis-angle projection), right-hand sign convention."""
    F = (
        BuiltinHand(m.side).anatomical_frames(torch.from_numpy(m.betas)[None])[0].double().numpy()
    )  # (15, 3, 3)
    R = (
        Rotation.from_rotvec(m.hand_pose.reshape(-1, 3).astype(np.float64))
        .as_matrix()
        .reshape(len(m), 15, 3, 3)
    )
    local = np.einsum("jba,tjbc,jcd->tjad", F, R, F)  # F^T R F
    angles = Rotation.from_matrix(local.reshape(-1, 3, 3)).as_rotvec().reshape(len(m), 15, 3)
    if m.side == "left":  # mirrored frames flip the sign of twist and spread
        angles = angles * np.array([-1.0, -1.0, 1.0])
    return angles


@pytest.fixture(scope="module")
def samples():
    """A few sequences of every kind (one hand, two hands, single primitives), built once."""
    out = []
    for i in range(4):
        rng = np.random.default_rng(100 + i)
        hands = ("left", "right") if i % 2 else (("right",), ("left",))[i // 2]
        out.append(sample_labelled_sequence(rng, 5.0, hands=hands))
    rng = np.random.default_rng(7)
    out.append(sample_labelled_sequence(rng, 6.0, hands=("left", "right"), primitives=PRIMITIVES))
    return out


def all_motions(samples):
    return [m for motions, _ in samples for m in motions.values()]


def test_shapes_sides_and_depth(samples):
    motions, labels = samples[1]
    assert set(motions) == {"left", "right"}
    for side, m in motions.items():
        assert isinstance(m, HandMotion) and m.side == side and m.fps == 15.0
        T = 75  # 5 s at 15 fps
        assert (
            m.global_orient.shape == (T, 3)
            and m.hand_pose.shape == (T, 15, 3)
            and m.wrist_pos.shape == (T, 3)
        )
        assert m.betas.shape == (10,) and np.abs(m.betas).max() <= 1.5
        assert len(labels[side].primitive) == T and labels[side].grip_closed.shape == (T,)
    for m in all_motions(samples):
        assert np.isfinite(m.hand_pose).all() and np.isfinite(m.wrist_pos).all()
        j = joints_of(m)
        assert j[..., 2].min() > 0.2, "every joint stays in front of the camera"
        assert 0.25 < np.median(j[:, 0, 2]) < 0.8
    # left hands on the left of the image, right hands on the right (on average)
    assert motions["left"].wrist_pos[:, 0].mean() < 0 < motions["right"].wrist_pos[:, 0].mean()


def test_joint_limits_respected(samples):
    lo, hi = JOINT_LIMITS_RAD[..., 0], JOINT_LIMITS_RAD[..., 1]
    tol = 2e-3  # float32 storage of hand_pose
    for m in all_motions(samples):
        a = anatomical_angles_scipy(m)
        assert (a >= lo - tol).all() and (a <= hi + tol).all(), (
            f"{m.side}: {np.rad2deg(np.abs(a - np.clip(a, lo, hi)).max()):.2f} deg over"
        )
    # and the sampled poses really use the range (not trivially flat)
    bends = np.concatenate([anatomical_angles_scipy(m)[..., 2] for m in all_motions(samples)])
    assert np.rad2deg(bends.max()) > 70 and np.rad2deg(bends.min()) < 10


def test_key_shapes_within_limits_and_pinch_meets():
    for name in (
        "flat",
        "open",
        "together",
        "spread",
        "relaxed",
        "preshape",
        "fist",
        "pinch",
        "point",
        "flex_ring",
        "grasp_0.5",
    ):
        a = key_shape(name)
        assert ((a >= JOINT_LIMITS_RAD[..., 0] - 1e-9) & (a <= JOINT_LIMITS_RAD[..., 1] + 1e-9)).all(), name
    hand = BuiltinHand("right")
    F = anatomical_frames()

    def local_joints(name):
        hp = torch.from_numpy(anatomical_to_pose(key_shape(name), F)[None]).float()
        return hand(torch.zeros(1, 3), hp).joints[0].numpy()

    pinch, open_, fist = local_joints("pinch"), local_joints("open"), local_joints("fist")
    assert np.linalg.norm(pinch[4] - pinch[8]) < 0.012  # thumb tip meets index tip
    assert np.linalg.norm(open_[4] - open_[8]) > 0.08
    tips = [8, 12, 16, 20]
    assert (np.linalg.norm(fist[tips], axis=1) < 0.7 * np.linalg.norm(open_[tips], axis=1)).all()  # curled in


def test_anatomical_conversions_match_the_model_frames():
    rng = np.random.default_rng(0)
    betas = rng.normal(0, 0.5, 10)
    for side in ("left", "right"):
        ours = anatomical_frames(betas, side=side)
        model = BuiltinHand(side).anatomical_frames(torch.from_numpy(betas)[None].float())[0].double().numpy()
        assert np.allclose(ours, model, atol=1e-5)
        a = rng.uniform(JOINT_LIMITS_RAD[..., 0], JOINT_LIMITS_RAD[..., 1], size=(4, 15, 3))
        assert np.allclose(pose_to_anatomical(anatomical_to_pose(a, ours, side), ours, side), a, atol=1e-6)


def test_determinism_and_prefix_stability():
    a = generate_dataset(3, 2.0, seed=11)
    b = generate_dataset(3, 2.0, seed=11)
    c = generate_dataset(2, 2.0, seed=11)
    d = generate_dataset(3, 2.0, seed=12)
    assert len(a) == 3 and all(len(m) == 30 for m in a)
    for x, y in zip(a, b):
        assert (
            x.side == y.side
            and np.array_equal(x.hand_pose, y.hand_pose)
            and np.array_equal(x.wrist_pos, y.wrist_pos)
        )
    for x, y in zip(a, c):  # sequence i depends only on (seed, i)
        assert np.array_equal(x.global_orient, y.global_orient)
    assert not any(np.allclose(x.wrist_pos, y.wrist_pos) for x, y in zip(a, d))
    r1 = sample_sequence(np.random.default_rng(5), 2.0, hands=("left", "right"))
    r2 = sample_sequence(np.random.default_rng(5), 2.0, hands=("left", "right"))
    assert np.array_equal(r1["left"].hand_pose, r2["left"].hand_pose)


def test_velocities_plausible(samples):
    moved = []
    for m in all_motions(samples):
        v = np.linalg.norm(np.diff(m.wrist_pos, axis=0), axis=1) * m.fps  # m/s
        assert v.max() < 2.0
        moved.append(v.max())
        j = joints_of(m)
        tip_v = np.linalg.norm(np.diff(j, axis=0), axis=2) * m.fps
        assert tip_v.max() < 3.0  # fingertips, wrist motion included
        ang = anatomical_angles_scipy(m)
        assert np.abs(np.diff(ang, axis=0)).max() * m.fps < 15.0  # rad/s per finger joint axis
        # wrist rotation speed (geodesic) well below a flick of the wrist (~20 rad/s)
        R = Rotation.from_rotvec(m.global_orient.astype(np.float64))
        w = (R[:-1].inv() * R[1:]).magnitude() * m.fps
        assert w.max() < 12.0
    assert max(moved) > 0.3  # and they do move


def test_min_jerk_profile():
    t = np.linspace(0, 1, 101)
    s = min_jerk(t)
    assert s[0] == 0 and s[-1] == 1 and np.all(np.diff(s) >= 0)
    assert np.isclose(min_jerk(np.array([0.5]))[0], 0.5)
    v = np.gradient(s, t)
    assert abs(v[0]) < 1e-3 and abs(v[-1]) < 1e-3 and np.isclose(v.max(), 1.875, atol=1e-2)  # peak 15/8


@pytest.mark.parametrize("side", ["right", "left"])
def test_reach_ends_at_target(side):
    rng = np.random.default_rng(3)
    ws = Workspace()
    s = HandScript(side, rng, workspace=ws)
    targets = []
    for _ in range(3):
        p = ws.sample_point(rng)
        p = p * MIRROR if side == "left" else p
        targets.append(p)
        s.reach(p).idle(0.3)
    m, labels = s.build(noise=True)
    ends = [seg.stop - 1 for seg in labels.segments if seg.name == "reach"]
    assert len(ends) == 3
    for end, p in zip(ends, targets):
        assert np.linalg.norm(m.wrist_pos[end] - p) < 0.01
        assert labels.names[end] == "reach"


def test_pinch_anchor_puts_the_fingertips_on_the_target():
    rng = np.random.default_rng(4)
    ws = Workspace()
    for side in ("right", "left"):
        s = HandScript(side, rng, workspace=ws, betas=np.zeros(10))
        p = ws.to_camera([0.1 if side == "right" else -0.1, 0.35, 0.01])
        s.reach(p, anchor="pinch").pinch()
        m, labels = s.build(noise=False)
        j = joints_of(m)[-1]
        assert np.linalg.norm(0.5 * (j[4] + j[8]) - p) < 0.015
        assert np.linalg.norm(j[4] - j[8]) < 0.015
        assert labels.grip_closed[-1] and not labels.grip_closed[0]


def test_left_is_the_mirror_image_of_the_right():
    ws = Workspace(camera_pitch_deg=35)
    scripts = {}
    for side in ("right", "left"):
        s = HandScript(side, np.random.default_rng(9), workspace=ws, betas=np.linspace(-0.5, 0.5, 10))
        m = 1.0 if side == "right" else -1.0
        p, q = ws.to_camera([0.15 * m, 0.35, 0.04]), ws.to_camera([0.05 * m, 0.3, 0.04])
        s.reach(p, anchor="grasp").grasp(0.7).lift(0.1).rotate(60).move(q).place(q).release()
        s.wave().point().flex()
        scripts[side] = s.build(noise=True)[0]
    jr, jl = joints_of(scripts["right"]), joints_of(scripts["left"])
    assert np.allclose(jl, jr * MIRROR, atol=2e-5)
    # the palm of both hands faces the table while reaching (the left computed with its own handedness)
    for side, j in (("right", jr), ("left", jl)):
        n = np.cross(j[:, 5] - j[:, 0], j[:, 17] - j[:, 0])  # index base x little base: out of a right palm
        n = n if side == "right" else -n
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        assert (n[5:12] @ -ws.up).mean() > 0.5


def test_bimanual_clap_brings_palms_together():
    rng = np.random.default_rng(2)
    b = BimanualScript(rng, workspace=Workspace())
    b.clap(n_claps=3, period=0.5)
    motions, labels = b.build(noise=False)
    assert len(motions["left"]) == len(motions["right"])
    gap = np.linalg.norm(motions["left"].wrist_pos - motions["right"].wrist_pos, axis=1)
    clap = labels["right"].primitive == PRIMITIVES.index("clap")
    assert gap[clap].min() < 0.05 and gap[clap].max() > 0.1
    # three contacts: local minima of the gap below 5 cm
    mins = [
        t for t in range(1, len(gap) - 1) if gap[t] <= gap[t - 1] and gap[t] <= gap[t + 1] and gap[t] < 0.05
    ]
    assert len(mins) == 3
    # palms face each other: right palm normal points left (-x)
    jr = joints_of(motions["right"])
    n = np.cross(jr[:, 5] - jr[:, 0], jr[:, 17] - jr[:, 0])
    assert (n[clap, 0] / np.linalg.norm(n[clap], axis=1)).mean() < -0.8


def test_labels_follow_the_script():
    s = HandScript("right", np.random.default_rng(1))
    p = s.ws.to_camera([0.12, 0.35, 0.05])
    above, down = s.ws.to_camera([0.2, 0.3, 0.15]), s.ws.to_camera([0.2, 0.3, 0.05])
    s.reach(p, anchor="grasp").grasp().lift(0.1).move(above, anchor="grasp").place(
        down, anchor="grasp"
    ).release()
    m, labels = s.build()
    assert np.linalg.norm(s.wrist_position - m.wrist_pos[-1]) < 0.01  # the script's state is the last frame
    turn = s.wrist_rotation.inv() * Rotation.from_rotvec(m.global_orient[-1].astype(np.float64))
    assert turn.magnitude() < np.radians(5)
    names = [seg.name for seg in labels.segments]
    assert names == ["reach", "grasp", "lift", "move", "place", "release"]
    seg = {seg.name: seg for seg in labels.segments}
    assert not labels.grip_closed[: seg["grasp"].start].any()
    assert labels.grip_closed[seg["grasp"].stop - 1 : seg["release"].start].all()
    assert not labels.grip_closed[-1]
    assert labels.names[seg["lift"].start] == "lift"
    assert np.allclose(seg["reach"].params["target"], p)
    # the grasp point sits on the object at the end of the reach, and follows the hand while it is held
    grasp_pt = s.anchor_positions(m, "grasp")
    assert np.linalg.norm(grasp_pt[seg["reach"].stop - 1] - p) < 0.01
    assert np.linalg.norm(grasp_pt[seg["place"].stop - 1] - down) < 0.01
    # the wrist rises during the lift by the asked height (table up), within the noise
    rise = (
        s.ws.to_table(m.wrist_pos[seg["lift"].stop - 1])[2]
        - s.ws.to_table(m.wrist_pos[seg["lift"].start - 1])[2]
    )
    assert abs(rise - 0.1) < 0.01


def test_wave_oscillates_at_its_frequency():
    s = HandScript("right", np.random.default_rng(6))
    s.wave(duration=4.0, frequency=2.0, amplitude_deg=25)
    m, labels = s.build(noise=False)
    R = Rotation.from_rotvec(m.global_orient.astype(np.float64))
    wave = np.nonzero(labels.primitive == PRIMITIVES.index("wave"))[0][12:]  # after raising the hand
    ang = (R[wave[0]].inv() * R[wave]).as_rotvec()
    sig = ang[:, np.argmax(ang.std(0))]
    spec = np.abs(np.fft.rfft(sig - sig.mean(), n=512))
    f = np.fft.rfftfreq(512, 1 / m.fps)[np.argmax(spec)]
    assert abs(f - 2.0) < 0.25


def test_primitive_filter_and_bad_input():
    rng = np.random.default_rng(0)
    _, labels = sample_labelled_sequence(rng, 4.0, hands=("right",), primitives=["wave", "idle"])
    assert set(labels["right"].names) <= {"wave", "idle"}
    with pytest.raises(InputError):
        sample_sequence(rng, 2.0, hands=("middle",))
    with pytest.raises(InputError):
        sample_sequence(rng, -1.0)
    with pytest.raises(InputError):
        sample_sequence(rng, 2.0, primitives=["juggle"])
    with pytest.raises(InputError):
        sample_sequence(rng, 2.0, primitives=["clap"])  # needs two hands
    with pytest.raises(InputError):
        HandScript("right", rng).grasp(closure=1.5)
    with pytest.raises(InputError):
        HandScript("right", rng).reach(np.array([0.1, 0.2]))
    with pytest.raises(InputError):
        key_shape("claw")


def test_close_to_real_hand_motion_statistics(real_hands_dir):
    """Palm speeds and finger curl of generated motion compared with real Leap Motion recordings."""

    def stats(joints, fps):
        c = joints[:, [0, 5, 9, 13, 17]].mean(1)  # palm centre (Leap's point 0 is the palm centre already)
        ok = np.isfinite(c).all(1)
        v = np.linalg.norm(np.diff(c, axis=0), axis=1) * fps
        v = v[ok[1:] & ok[:-1]]
        curl = np.linalg.norm(joints[:, [8, 12, 16, 20]] - c[:, None], axis=2)[ok]
        return np.percentile(v, 95), np.median(curl)

    real = []
    for f in sorted(real_hands_dir.glob("leap_*.npz")):
        d = np.load(f)
        t = d["t"]
        idx = np.searchsorted(t, np.arange(t[0], t[-1], 1 / 15))  # resample to 15 fps
        real.append(stats(d["joints"][idx], 15.0))
    gen = [stats(joints_of(m), m.fps) for m in generate_dataset(6, 6.0, seed=3)]
    real, gen = np.array(real), np.array(gen)
    speed_ratio = np.median(gen[:, 0]) / np.median(real[:, 0])
    curl_ratio = np.median(gen[:, 1]) / np.median(real[:, 1])
    assert 0.5 < speed_ratio < 3.0, speed_ratio
    assert 0.75 < curl_ratio < 1.33, curl_ratio
