"""Fixture writers: small files in each source's REAL layout with known ground truth.

Each ``write_<source>`` writes one or two short episodes (5-8 frames) under a root folder, exactly where and
how the dataset stores them (the facts are cited in each adapter's docstring), and returns what the test
needs to check the adapter independently: the raw parameters in the source's own convention, the camera,
and the expected joints computed here without the adapter's code.

The MANO models are fakes (``tests/fixtures_mano.py``); ``mano_folder`` writes MANO_RIGHT.pkl and
MANO_LEFT.pkl, the left one either random (as in the other MANO tests) or the exact mirror image of the
right one in the published layout (including the left shapedirs sign bug), which is what the HaMeR
un-mirroring test needs.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_mano import make_fake_mano_arrays, write_mano_pickle  # noqa: E402

from handvla.hand.mano import MANOHand  # noqa: E402

SIGN = np.tile([1.0, -1.0, -1.0], 15)  # mirroring a 45-vector of axis-angles: (x, y, z) -> (x, -y, -z)


# ---------------------------------------------------------------------------------------------------------
# MANO
# ---------------------------------------------------------------------------------------------------------


def mirror_mano_arrays(right: dict[str, Any]) -> dict[str, Any]:
    """The left model as the exact mirror (x -> -x) of ``right``, written with the published left file's
    shapedirs sign bug (so that ``fix_left_shapedirs=True`` gives the exact mirror)."""
    m = np.array([-1.0, 1.0, 1.0])
    left = dict(right)
    left["v_template"] = right["v_template"] * m
    left["shapedirs"] = right["shapedirs"].copy()  # correct mirror would negate x; the published bug does not
    # pose blend shapes: feature (R - I)_ab mirrors to m_a m_b (R - I)_ab, offsets to m_c
    k = np.arange(135)
    a, b = (k % 9) // 3, k % 3
    left["posedirs"] = right["posedirs"] * m[None, :, None] * (m[a] * m[b])[None, None, :]
    left["hands_components"] = right["hands_components"] * SIGN[None, :]
    left["hands_mean"] = right["hands_mean"] * SIGN
    left["f"] = right["f"][:, [0, 2, 1]]
    return left


def mano_folder(root: Path, mirror_left: bool = False) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Write MANO_RIGHT.pkl / MANO_LEFT.pkl (published chumpy layout) under ``root/mano``."""
    d = Path(root) / "mano"
    right = make_fake_mano_arrays("right", seed=1)
    left = mirror_mano_arrays(right) if mirror_left else make_fake_mano_arrays("left", seed=2)
    write_mano_pickle(d / "MANO_RIGHT.pkl", right, seed=1)
    write_mano_pickle(d / "MANO_LEFT.pkl", left, seed=2)
    return d, {"right": right, "left": left}


def mano(mano_dir: Path, side: str, **kw) -> MANOHand:
    return MANOHand.from_dir(mano_dir, side, **kw)


def mano_joints_raw(model: MANOHand, go, hand_pose, betas, transl) -> np.ndarray:
    """MANO's own convention (model frame + transl) -> (T, 21, 3) float64 metres."""
    with torch.no_grad():
        out = model.forward_mano(
            torch.as_tensor(np.asarray(go), dtype=torch.float32),
            torch.as_tensor(np.asarray(hand_pose), dtype=torch.float32),
            torch.as_tensor(np.asarray(betas), dtype=torch.float32),
            torch.as_tensor(np.asarray(transl), dtype=torch.float32),
        )
    return out.joints.double().numpy()


def project_joints(model: MANOHand, motion) -> np.ndarray:
    """Joints of a converted ``HandMotion`` through the project convention (``MANOHand.forward``)."""
    with torch.no_grad():
        out = model(
            torch.as_tensor(motion.global_orient),
            torch.as_tensor(motion.hand_pose),
            torch.as_tensor(motion.betas),
            torch.as_tensor(motion.wrist_pos),
        )
    return out.joints.double().numpy()


def transform(E: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(4, 4) or (T, 4, 4) rigid transform applied to (T, J, 3) points (independent of the adapter code)."""
    E = np.asarray(E, np.float64)
    if E.ndim == 2:
        E = np.broadcast_to(E, (p.shape[0], 4, 4))
    return np.einsum("tij,tkj->tki", E[:, :3, :3], p) + E[:, None, :3, 3]


def random_rigid(rng: np.random.Generator, dist: float = 0.6) -> np.ndarray:
    """A random world->camera transform that puts the world origin ``dist`` metres in front of the camera."""
    E = np.eye(4)
    E[:3, :3] = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
    E[:3, 3] = [rng.normal(0, 0.05), rng.normal(0, 0.05), dist]
    return E


def random_mano(rng: np.random.Generator, T: int, pca: int | None = None) -> dict[str, np.ndarray]:
    """Plausible random raw MANO parameters for T frames (angles in radians, positions in metres)."""
    return {
        "go": rng.normal(0, 1.0, (T, 3)),
        "pose": rng.normal(0, 0.4, (T, pca if pca else 45)),
        "betas": rng.normal(0, 1.0, 10),
        "transl": rng.normal(0, 0.1, (T, 3)),
    }


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_yaml(path: Path, obj: Any) -> Path:
    import yaml

    return write_text(path, yaml.safe_dump(obj))


def write_pickle(path: Path, obj: Any, protocol: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def write_jpgs(paths: list[Path], size=(32, 24)) -> None:
    from PIL import Image

    for i, p in enumerate(paths):
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size[1], size[0], 3), 10 * i % 255, np.uint8)).save(p)


def write_mp4(path: Path, T: int, size=(32, 24), fps: float = 30.0) -> Path:
    from handvla.video import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.zeros((T, size[1], size[0], 3), np.uint8)
    frames[:, :, :, 0] = (np.arange(T) * 20 % 255)[:, None, None]
    return write_video(path, frames, fps=fps)


# ---------------------------------------------------------------------------------------------------------
# DexYCB
# ---------------------------------------------------------------------------------------------------------


def write_dexycb(root: Path, side: str = "right", T: int = 6, seed: int = 0) -> dict[str, Any]:
    """One sequence with two cameras; frame 2 has no hand (pose_m all 0, joint_3d all -1)."""
    rng = np.random.default_rng(seed)
    subject, seq, serials = "20200709-subject-01", "20200709_141754", ["836212060125", "839512060362"]
    raw = random_mano(rng, T, pca=45)
    raw["transl"][:, 2] += 0.6
    pose_m = np.concatenate([raw["go"], raw["pose"], raw["transl"]], 1).astype(np.float32)  # (T, 51)
    pose_m[2] = 0.0
    write_yaml(
        root / subject / seq / "meta.yml",
        {
            "serials": serials,
            "num_frames": T,
            "ycb_ids": [1, 11, 12, 20],
            "ycb_grasp_ind": 1,
            "mano_sides": [side],
            "mano_calib": ["20200709_weiyu"],
            "extrinsics": "20200702_151821",
        },
    )
    K = {"fx": 613.07, "fy": 611.99, "ppx": 313.03, "ppy": 245.01}
    for s in serials:
        write_yaml(root / "calibration" / "intrinsics" / f"{s}_640x480.yml", {"color": K, "depth": K})
    write_yaml(root / "calibration" / "mano_20200709_weiyu" / "mano.yml", {"betas": raw["betas"].tolist()})
    joints = rng.normal(0, 0.1, (T, 21, 3)).astype(np.float32)
    joints[2] = -1.0
    for s in serials:
        for f in range(T):
            p = root / subject / seq / s / f"labels_{f:06d}.npz"
            p.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                p,
                pose_m=pose_m[f : f + 1],
                joint_3d=joints[f : f + 1],
                joint_2d=np.zeros((1, 21, 2), np.float32),
                seg=np.zeros((4, 4), np.uint8),
                pose_y=np.zeros((4, 3, 4), np.float32),
            )
    write_jpgs([root / subject / seq / serials[0] / f"color_{f:06d}.jpg" for f in range(T)], size=(640, 480))
    return {
        "keys": [f"{subject}/{seq}/{s}" for s in serials],
        "pose_m": pose_m,
        "raw": raw,
        "joints": joints,
        "side": side,
        "K": K,
        "T": T,
        "serials": serials,
        "seq_dir": root / subject / seq,
    }


def json_dump(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj))


# ---------------------------------------------------------------------------------------------------------
# ARCTIC
# ---------------------------------------------------------------------------------------------------------


def write_arctic(root: Path, T: int = 6, seed: int = 1) -> dict[str, Any]:
    """raw_seqs/s01/box_grab_01.{mano,egocam.dist}.npy, meta/misc.json, a few allocentric images."""
    rng = np.random.default_rng(seed)
    sid, seq = "s01", "box_grab_01"
    raw = {s: random_mano(rng, T) for s in ("right", "left")}
    mano_npy = {
        s: {
            "rot": raw[s]["go"].astype(np.float32),
            "pose": raw[s]["pose"].astype(np.float32),
            "trans": raw[s]["transl"].astype(np.float32),
            "shape": raw[s]["betas"].astype(np.float32),
            "fitting_err": np.zeros(T, np.float32),
        }
        for s in ("right", "left")
    }
    d = root / "raw_seqs" / sid
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / f"{seq}.mano.npy", mano_npy, allow_pickle=True)
    world2cam = np.stack([random_rigid(rng) for _ in range(8)]).astype(np.float32)
    K = np.array([[[1000.0 + 10 * i, 0, 1400], [0, 1000.0 + 10 * i, 1000], [0, 0, 1]] for i in range(8)])
    ego_E = np.stack([random_rigid(rng, 0.4) for _ in range(T)])
    K_ego = np.array([[800.0, 0, 1400], [0, 800.0, 1000], [0, 0, 1]])
    np.save(
        d / f"{seq}.egocam.dist.npy",
        {
            "R_k_cam_np": ego_E[:, :3, :3].astype(np.float32),
            "T_k_cam_np": ego_E[:, :3, 3:].astype(np.float32),
            "intrinsics": K_ego.astype(np.float32),
            "dist8": np.arange(8, dtype=np.float32) * 0.01,
            "R0": np.eye(3),
            "T0": np.zeros((3, 1)),
            "ego_markers.ref": np.zeros((4, 3)),
            "ego_markers.label": ["a"] * 4,
        },
        allow_pickle=True,
    )
    sizes = [[2800, 2000]] + [[2800, 2000]] * 8
    json_dump(
        root / "meta" / "misc.json",
        {
            sid: {
                "world2cam": world2cam.tolist(),
                "intris_mat": K.tolist(),
                "image_size": sizes,
                "ioi_offset": 3,
                "gender": "male",
            }
        },
    )
    write_jpgs([root / "images" / sid / seq / "1" / f"{k + 3:05d}.jpg" for k in range(T)])
    return {
        "sid": sid,
        "seq": seq,
        "raw": {s: {k: v.astype(np.float32).astype(np.float64) for k, v in raw[s].items()} for s in raw},
        "world2cam": world2cam.astype(np.float64),
        "K": K,
        "ego_E": np.concatenate(
            [
                np.concatenate([ego_E[:, :3, :3].astype(np.float32), ego_E[:, :3, 3:].astype(np.float32)], 2),
                np.tile([[[0, 0, 0, 1.0]]], (T, 1, 1)),
            ],
            1,
        ).astype(np.float64),
        "K_ego": K_ego,
        "T": T,
        "mano_path": d / f"{seq}.mano.npy",
    }


# ---------------------------------------------------------------------------------------------------------
# HOI4D
# ---------------------------------------------------------------------------------------------------------

HOI4D_SEQ = "ZY20210800001/H1/C2/N31/S92/s5/T2"


def write_hoi4d(
    root: Path,
    T: int = 6,
    seed: int = 2,
    video: bool = True,
    hand_dirs=("handpose/refinehandpose_right", "handpose/refinehandpose_left"),
) -> dict[str, Any]:
    """Right hand on all frames but 1, left hand on frames 2..4; a 15 fps mp4 of T frames; intrin.npy."""
    rng = np.random.default_rng(seed)
    raw = {s: random_mano(rng, T) for s in ("right", "left")}
    frames = {"right": [f for f in range(T) if f != 1], "left": [2, 3, 4]}
    for s, hd in zip(("right", "left"), hand_dirs):
        raw[s]["transl"][:, 2] += 0.5
        for f in frames[s]:
            write_pickle(
                root / hd / HOI4D_SEQ / f"{f}.pickle",
                {
                    "poseCoeff": np.concatenate([raw[s]["go"][f], raw[s]["pose"][f]]).astype(np.float32),
                    "beta": raw[s]["betas"].astype(np.float32),
                    "trans": raw[s]["transl"][f].astype(np.float32),
                    "kps2D": np.zeros((21, 2), np.float32),
                },
                protocol=4,
            )
    K = np.array([[1000.0, 0, 960.0], [0, 1001.0, 540.0], [0, 0, 1]])
    (root / "camera_params" / "ZY20210800001").mkdir(parents=True, exist_ok=True)
    np.save(root / "camera_params" / "ZY20210800001" / "intrin.npy", K)
    if video:
        write_mp4(root / "HOI4D_release" / HOI4D_SEQ / "align_rgb" / "image.mp4", T, fps=15.0)
    for s in raw:
        for k in raw[s]:
            raw[s][k] = raw[s][k].astype(np.float32).astype(np.float64)
    return {"key": HOI4D_SEQ, "raw": raw, "frames": frames, "K": K, "T": T}


# ---------------------------------------------------------------------------------------------------------
# H2O
# ---------------------------------------------------------------------------------------------------------


def _fmt(v) -> str:
    return " ".join(f"{x:.8f}" for x in np.ravel(v))


def write_h2o(
    root: Path,
    mano_dir: Path,
    T: int = 5,
    seed: int = 3,
    trans_is_wrist: bool = False,
    with_mano: bool = True,
) -> dict[str, Any]:
    """subject1/h1/0/cam0 (static) and cam4 (moving, with action labels). Left hand missing on frame 0.

    ``hand_pose`` joints are computed here from the MANO parameters (manopth-style, flat pose, published
    left model), so they agree with ``hand_pose_MANO`` the way the real files do."""
    rng = np.random.default_rng(seed)
    seqdir = root / "subject1" / "h1" / "0"
    raw = {s: random_mano(rng, T) for s in ("left", "right")}
    valid = {"left": np.arange(T) > 0, "right": np.ones(T, bool)}
    joints, files_trans = {}, {}
    for s in raw:
        raw[s]["transl"][:, 2] += 0.5
        for k in raw[s]:
            raw[s][k] = np.round(raw[s][k], 8)
        model = mano(mano_dir, s, fix_left_shapedirs=False)
        joints[s] = mano_joints_raw(model, raw[s]["go"], raw[s]["pose"], raw[s]["betas"], raw[s]["transl"])
        files_trans[s] = np.round(joints[s][:, 0], 8) if trans_is_wrist else raw[s]["transl"]
    out = {"keys": [], "raw": raw, "valid": valid, "joints": joints, "T": T, "c2w": {}}
    for cam in ("cam0", "cam4"):
        d = seqdir / cam
        write_text(d / "cam_intrinsics.txt", "636.6593 636.2520 635.2839 366.8740 1280 720\n")
        c2w = (
            [np.linalg.inv(random_rigid(rng))] * T
            if cam == "cam0"
            else [np.linalg.inv(random_rigid(rng)) for _ in range(T)]
        )
        out["c2w"][cam] = np.stack(c2w)
        for f in range(T):
            jl = [float(valid["left"][f])] + list(np.ravel(joints["left"][f]))
            jr = [float(valid["right"][f])] + list(np.ravel(joints["right"][f]))
            write_text(d / "hand_pose" / f"{f:06d}.txt", _fmt(jl + jr))
            if with_mano:
                vals = []
                for s in ("left", "right"):
                    vals += (
                        [float(valid[s][f])]
                        + list(files_trans[s][f])
                        + list(raw[s]["go"][f])
                        + list(raw[s]["pose"][f])
                        + list(raw[s]["betas"])
                    )
                write_text(d / "hand_pose_MANO" / f"{f:06d}.txt", _fmt(vals))
            write_text(d / "cam_pose" / f"{f:06d}.txt", _fmt(c2w[f]))
            if cam == "cam4":
                write_text(d / "action_label" / f"{f:06d}.txt", str([0, 0, 23, 23, 5][f % 5]))
        out["keys"].append(f"subject1/h1/0/{cam}")
    write_jpgs([seqdir / "cam4" / "rgb" / f"{f:06d}.png" for f in range(T)])
    return out


# ---------------------------------------------------------------------------------------------------------
# TACO
# ---------------------------------------------------------------------------------------------------------


def write_taco(
    root: Path,
    mano_dir: Path,
    T: int = 6,
    seed: int = 4,
    per_frame_files: bool = False,
    video_frames: int | None = None,
) -> dict[str, Any]:
    """Hand_Poses with torch tensors (as the real pickles), egocentric intrinsics/extrinsics and an mp4.

    The expected joints follow the official loader: manopth centred on joint 0 (the layer's output minus
    its joint 0), plus hand_trans, then world -> camera."""
    rng = np.random.default_rng(seed)
    triplet, seq = "(stir, spoon, bowl)", "20231105_019"
    hd = root / "Hand_Poses" / triplet / seq
    E = np.stack([random_rigid(rng, 0.5) for _ in range(T)])
    expected = {}
    raw = {}
    for side in ("left", "right"):
        r = random_mano(rng, T)
        raw[side] = r
        frames = {
            f"{f + 1:05d}": {
                "hand_pose": torch.tensor(np.concatenate([r["go"][f], r["pose"][f]]), dtype=torch.float32),
                "hand_trans": torch.tensor(r["transl"][f], dtype=torch.float32),
            }
            for f in range(T)
        }
        if per_frame_files:
            for k, v in frames.items():
                write_pickle(hd / f"{side}_hand" / f"hand_{k}.pkl", v, protocol=4)
        else:
            write_pickle(hd / f"{side}_hand.pkl", frames, protocol=4)
        write_pickle(
            hd / f"{side}_hand_shape.pkl",
            {"hand_shape": torch.tensor(r["betas"][None], dtype=torch.float32)},
            protocol=4,
        )
        model = mano(mano_dir, side, fix_left_shapedirs=False)
        pose32 = np.stack([v["hand_pose"].double().numpy() for v in frames.values()])
        trans32 = np.stack([v["hand_trans"].double().numpy() for v in frames.values()])
        j = mano_joints_raw(
            model, pose32[:, :3], pose32[:, 3:], r["betas"].astype(np.float32), np.zeros((T, 3))
        )
        expected[side] = transform(E, j - j[:, :1] + trans32[:, None])
    cd = root / "Egocentric_Camera_Parameters" / triplet / seq
    cd.mkdir(parents=True, exist_ok=True)
    K = np.array([[1470.0, 0, 960.0], [0, 1470.0, 540.0], [0, 0, 1]])
    np.savetxt(cd / "egocentric_intrinsic.txt", K)
    np.save(cd / "egocentric_frame_extrinsic.npy", E)
    write_mp4(root / "Egocentric_RGB_Videos" / triplet / seq / "color.mp4", video_frames or T)
    return {"key": f"{triplet}/{seq}", "expected": expected, "E": E, "K": K, "T": T, "raw": raw}


# ---------------------------------------------------------------------------------------------------------
# OakInk2
# ---------------------------------------------------------------------------------------------------------

OAKINK2_TOKEN = "scene_01__A001++seq__0a1b2c__2023-04-23-10-00-00"


def write_oakink2(root: Path, mano_dir: Path, T: int = 6, seed: int = 5) -> dict[str, Any]:
    """anno_preview/<token>.pkl with torch tensors in raw_mano (quaternions w x y z); frames every 4th mocap
    frame; the left hand missing at the third image frame; images for the allocentric_top camera."""
    rng = np.random.default_rng(seed)
    fids = [100 + 4 * i for i in range(T)]
    raw_mano, expected = {}, {}
    aa = {s: rng.normal(0, 0.6, (T, 16, 3)) for s in ("rh", "lh")}
    tsl = {s: rng.normal(0, 0.1, (T, 3)) for s in ("rh", "lh")}
    betas = {s: rng.normal(0, 1, 10) for s in ("rh", "lh")}
    for mocap in range(fids[0], fids[-1] + 1):
        item = {}
        for s in ("rh", "lh"):
            if s == "lh" and mocap == fids[2]:
                continue
            i = fids.index(mocap) if mocap in fids else 0
            xyzw = Rotation.from_rotvec(aa[s][i]).as_quat()
            q = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], 1)  # w x y z
            q *= np.where(
                rng.random((16, 1)) < 0.5, -1.0, 1.0
            )  # either sign of a quaternion is the same rotation
            item[f"{s}__pose_coeffs"] = torch.tensor(q[None], dtype=torch.float32)
            item[f"{s}__tsl"] = torch.tensor(tsl[s][i][None], dtype=torch.float32)
            item[f"{s}__betas"] = torch.tensor(betas[s][None], dtype=torch.float32)
        raw_mano[mocap] = item
    cams = {
        "allocentric_top": "22070938",
        "allocentric_left": "22139905",
        "allocentric_right": "22139906",
        "egocentric": "22139908",
    }
    K = np.array([[600.0, 0, 424.0], [0, 600.0, 240.0], [0, 0, 1]], np.float32)
    static = random_rigid(rng, 0.7).astype(np.float32)
    ego = [random_rigid(rng, 0.4).astype(np.float32) for _ in fids]
    cam_extr = {c: {f: (ego[i] if c == "egocentric" else static) for i, f in enumerate(fids)} for c in cams}
    anno = {
        "cam_def": {v: k for k, v in cams.items()},
        "cam_selection": list(cams),
        "frame_id_list": fids,
        "cam_intr": {c: {f: K for f in fids} for c in cams},
        "cam_extr": cam_extr,
        "mocap_frame_id_list": list(range(fids[0], fids[-1] + 1)),
        "obj_list": ["O02@0039@00002"],
        "obj_transf": {
            "O02@0039@00002": {f: np.eye(4, dtype=np.float32) for f in range(fids[0], fids[-1] + 1)}
        },
        "raw_smplx": {f: {"world_tsl": torch.zeros(1, 3)} for f in fids},
        "raw_mano": raw_mano,
    }
    write_pickle(root / "anno_preview" / f"{OAKINK2_TOKEN}.pkl", anno, protocol=4)
    write_jpgs(
        [root / "data" / OAKINK2_TOKEN / cams["allocentric_top"] / f"{f:06d}.png" for f in fids],
        size=(848, 480),
    )
    for s, side in (("rh", "right"), ("lh", "left")):
        q32 = np.stack(
            [
                raw_mano[f][f"{s}__pose_coeffs"][0].double().numpy()
                if f"{s}__pose_coeffs" in raw_mano[f]
                else np.tile([1.0, 0, 0, 0], (16, 1))
                for f in fids
            ]
        )
        rv = (
            Rotation.from_quat(np.concatenate([q32[..., 1:], q32[..., :1]], -1).reshape(-1, 4))
            .as_rotvec()
            .reshape(T, 16, 3)
        )
        b32 = betas[s].astype(np.float32).astype(np.float64)
        t32 = tsl[s].astype(np.float32).astype(np.float64)
        j = mano_joints_raw(
            mano(mano_dir, side, fix_left_shapedirs=False), rv[:, 0], rv[:, 1:], b32, np.zeros((T, 3))
        )
        world = j - j[:, :1] + t32[:, None]  # manotorch center_idx=0, then + tsl
        expected[side] = {
            c: transform(np.stack([cam_extr[c][f] for f in fids]).astype(np.float64), world) for c in cams
        }
    valid = {"right": np.ones(T, bool), "left": np.arange(T) != 2}
    return {
        "token": OAKINK2_TOKEN,
        "fids": fids,
        "expected": expected,
        "valid": valid,
        "K": K,
        "ego": np.stack(ego),
        "static": static,
        "T": T,
    }


# ---------------------------------------------------------------------------------------------------------
# FPHA
# ---------------------------------------------------------------------------------------------------------

#: OpenPose index -> FPHA file column (wrist, 5 MCPs, then PIP/DIP/TIP per finger), written out by hand
OPENPOSE_TO_FPHA_FILE = {
    0: 0,
    1: 1,
    2: 6,
    3: 7,
    4: 8,
    5: 2,
    6: 9,
    7: 10,
    8: 11,
    9: 3,
    10: 12,
    11: 13,
    12: 14,
    13: 4,
    14: 15,
    15: 16,
    16: 17,
    17: 5,
    18: 18,
    19: 19,
    20: 20,
}


def write_fpha(
    root: Path,
    T: int = 5,
    seed: int = 6,
    joints: np.ndarray | None = None,
    key: str = "Subject_1/put_salt/1",
    blank: int | None = 3,
) -> dict[str, Any]:
    """A skeleton.txt (mm, depth-camera frame, file joint order), frame ``blank`` all zeros, colour frames.

    Ground truth: OpenPose-order joints in the colour camera (random, or ``joints`` (T, 21, 3) metres),
    chosen first; the file is made from them."""
    rng = np.random.default_rng(seed)
    if joints is None:
        color = rng.normal(0, 0.05, (T, 21, 3)) + [0.0, 0.0, 0.45]  # metres, colour camera, OpenPose order
    else:
        color = np.asarray(joints, np.float64)
        T = len(color)
    R = np.array(
        [
            [0.999988496304, -0.00468848412856, 0.000982563360594],
            [0.00469115935266, 0.999985218048, -0.00273845880292],
            [-0.000969709653873, 0.00274303671904, 0.99999576807],
        ]
    )
    t_mm = np.array([25.7, 1.22, 3.902])
    depth_mm = np.einsum("ij,tkj->tki", R.T, color * 1000.0 - t_mm)  # invert p_col = R p + t
    file_order = np.zeros_like(depth_mm)
    for op, col in OPENPOSE_TO_FPHA_FILE.items():
        file_order[:, col] = depth_mm[:, op]
    if blank is not None:
        file_order[blank] = 0.0
    d = root / "Hand_pose_annotation_v1" / key
    d.mkdir(parents=True, exist_ok=True)
    lines = [" ".join([str(t)] + [f"{x:.6f}" for x in file_order[t].ravel()]) for t in range(T)]
    (d / "skeleton.txt").write_text("\n".join(lines) + "\n")
    write_jpgs([root / "Video_files" / key / "color" / f"color_{t:04d}.jpeg" for t in range(T)])
    return {"key": key, "joints": color, "T": T}


# ---------------------------------------------------------------------------------------------------------
# EgoDex
# ---------------------------------------------------------------------------------------------------------

EGODEX_FINGERS = ("Index", "Middle", "Ring", "Little")


def egodex_names(side: str) -> list[str]:
    """Written out independently of the adapter: OpenPose order of the EgoDex transforms."""
    n = [f"{side}Hand"] + [
        f"{side}Thumb{p}" for p in ("Knuckle", "IntermediateBase", "IntermediateTip", "Tip")
    ]
    for fi in EGODEX_FINGERS:
        n += [f"{side}{fi}Finger{p}" for p in ("Knuckle", "IntermediateBase", "IntermediateTip", "Tip")]
    return n


def write_egodex(
    root: Path, T: int = 6, seed: int = 7, arkit: bool = False, video: bool = True
) -> dict[str, Any]:
    """part1/add_remove_lid/0.hdf5 (+ .mp4): both hands, a moving camera, one low-confidence joint.

    Ground truth = joints in an OpenCV camera (x right, y down, z forward). The file stores world poses
    ``camera_pose @ p_cam``, where ``p_cam`` is in the file's camera axes: OpenCV, or ARKit (y up, looking
    down -z: ``diag(1, -1, -1) p``)."""
    import h5py

    rng = np.random.default_rng(seed)
    gt = {
        s: rng.normal(0, 0.04, (T, 21, 3)) + [0.1 * (1 if s == "right" else -1), 0.1, 0.45]
        for s in ("left", "right")
    }
    c2w = np.stack([np.linalg.inv(random_rigid(rng, 0.3)) for _ in range(T)])
    flip = np.diag([1.0, -1.0, -1.0]) if arkit else np.eye(3)
    K = np.array([[736.6339, 0, 960], [0, 736.6339, 540], [0, 0, 1]], np.float32)
    path = root / "part1" / "add_remove_lid" / "0.hdf5"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("camera/intrinsic", data=K)
        f.create_dataset("transforms/camera", data=c2w.astype(np.float32))
        for s in ("left", "right"):
            names = egodex_names(s) + [f"{s}{fi}FingerMetacarpal" for fi in EGODEX_FINGERS] + [f"{s}Forearm"]
            for i, name in enumerate(names):
                local = gt[s][:, i] if i < 21 else rng.normal(0, 0.05, (T, 3)) + [0, 0, 0.4]
                pose = np.tile(np.eye(4), (T, 1, 1))
                pose[:, :3, :3] = Rotation.random(T, random_state=i).as_matrix()
                pose[:, :3, 3] = np.einsum("tij,tj->ti", c2w[:, :3, :3], local @ flip.T) + c2w[:, :3, 3]
                f.create_dataset(f"transforms/{name}", data=pose.astype(np.float32))
                c = np.ones(T, np.float32)
                if name == "rightIndexFingerTip":
                    c[2] = 0.1
                f.create_dataset(f"confidences/{name}", data=c)
        f.create_dataset("transforms/hip", data=np.tile(np.eye(4, dtype=np.float32), (T, 1, 1)))
        f.attrs["llm_description"] = "Remove the lid from the jar, then put it back on."
        f.attrs["task"] = "add_remove_lid"
        f.attrs["llm_type"] = "reversible"
    if video:
        write_mp4(path.with_suffix(".mp4"), T, size=(64, 36))
    return {
        "key": "part1/add_remove_lid/0",
        "joints": gt,
        "c2w": c2w,
        "K": K.astype(np.float64),
        "T": T,
        "path": path,
    }


# ---------------------------------------------------------------------------------------------------------
# joints21 (the real_hands format)
# ---------------------------------------------------------------------------------------------------------


def write_joints21(root: Path, T: int = 8, seed: int = 8) -> dict[str, Any]:
    """rec_left.npz + rec_right.npz (same timestamps, camera frame, openpose21) with a video rec.mp4, and a
    Leap-style single file with jittered timestamps in the Leap device frame (y up)."""
    from handvla.hand.io import JointsRecording, save_joints

    rng = np.random.default_rng(seed)
    out = {"pair": {}}
    t = np.arange(T) / 30.0
    for s in ("left", "right"):
        j = rng.normal(0, 0.05, (T, 21, 3)) + [0, 0, 0.5]
        j[3, 5] = np.nan
        save_joints(
            root / "clips" / f"rec_{s}.npz",
            JointsRecording(
                j, t, side=s, fps=30.0, source="synthetic", licence="CC0", frame="camera (OpenCV), metres"
            ),
        )
        out["pair"][s] = j
    write_mp4(root / "clips" / "rec.mp4", T, size=(40, 30))
    tl = np.cumsum(np.r_[0.0, rng.uniform(0.5, 1.5, T - 1) / 100.0])  # ~100 fps with jitter
    leap = rng.normal(0, 0.03, (T, 21, 3)) + [0.0, 0.2, 0.0]  # above the sensor (y up)
    save_joints(
        root / "leap_grab_right.npz",
        JointsRecording(
            leap,
            tl,
            side="right",
            fps=100.0,
            source="leap",
            licence="Apache-2.0",
            joint_order="leap21: PALM CENTRE, then thumb(cmc, ...)",
            frame="Leap device frame, origin on the sensor, y up, metres",
        ),
    )
    out.update(leap=leap, leap_t=tl, T=T)
    return out


# ---------------------------------------------------------------------------------------------------------
# HaMeR pseudo-labels
# ---------------------------------------------------------------------------------------------------------


def write_hamer(
    root: Path, T: int = 6, seed: int = 9, intrinsics: np.ndarray | None = None, size=(64, 48)
) -> dict[str, Any]:
    """clips/cup.hamer.npz + clips/cup.mp4: right hand on frames != 4 (plus a weaker duplicate on frame 2),
    left hand on frames 1..5. Betas constant per hand."""
    rng = np.random.default_rng(seed)
    dets = []
    betas = {1: rng.normal(0, 1, 10), 0: rng.normal(0, 1, 10)}
    for f in range(T):
        for right in (1, 0):
            if (right and f == 4) or (not right and f == 0):
                continue
            for dup in (0, 1) if (right and f == 2) else (0,):
                dets.append(
                    {
                        "frame_index": f,
                        "is_right": right,
                        "global_orient": Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()[
                            None
                        ],
                        "hand_pose": Rotation.from_rotvec(rng.normal(0, 0.3, (15, 3))).as_matrix(),
                        "betas": betas[right],
                        "pred_cam": [rng.uniform(0.6, 1.2), rng.normal(0, 0.1), rng.normal(0, 0.1)],
                        "box_center": [rng.uniform(10, 54), rng.uniform(10, 38)],
                        "box_size": rng.uniform(15, 30),
                        "score": 0.3 if dup else 0.9,
                    }
                )
    arrays = {
        k: np.array([d[k] for d in dets], np.float32 if k not in ("frame_index", "is_right") else np.int64)
        for k in dets[0]
    }
    arrays["img_size"] = np.array(size, np.float32)
    if intrinsics is not None:
        arrays["intrinsics"] = intrinsics
    p = root / "clips" / "cup.hamer.npz"
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, **arrays)
    write_mp4(root / "clips" / "cup.mp4", T, size=size, fps=25.0)
    return {"key": "clips/cup", "arrays": arrays, "T": T, "path": p}


def hamer_reference(
    right_model: MANOHand, arrays: dict[str, np.ndarray], i: int, intrinsics: np.ndarray | None = None
) -> np.ndarray:
    """HaMeR demo pipeline for detection i, written out from hamer/demo.py + renderer.cam_crop_to_full:
    right MANO in its model frame, x negated for left hands, plus the full-image camera translation."""
    right = bool(arrays["is_right"][i])
    go = Rotation.from_matrix(arrays["global_orient"][i, 0].astype(np.float64)).as_rotvec()[None]
    hp = Rotation.from_matrix(arrays["hand_pose"][i].astype(np.float64)).as_rotvec()[None]
    j = mano_joints_raw(right_model, go, hp, arrays["betas"][i].astype(np.float64)[None], np.zeros((1, 3)))[0]
    if not right:
        j[:, 0] *= -1
    s, tx, ty = arrays["pred_cam"][i].astype(np.float64)
    tx = tx if right else -tx
    W, H = arrays["img_size"].astype(np.float64)
    if intrinsics is None:
        F, cx0, cy0 = 5000.0 / 256.0 * max(W, H), W / 2, H / 2
    else:
        F, cx0, cy0 = intrinsics[0, 0], intrinsics[0, 2], intrinsics[1, 2]
    bs = float(arrays["box_size"][i]) * s
    cx, cy = arrays["box_center"][i].astype(np.float64)
    cam_t = np.array([tx + 2 * (cx - cx0) / bs, ty + 2 * (cy - cy0) / bs, 2 * F / bs])
    return j + cam_t
