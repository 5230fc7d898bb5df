"""H2O (ETH / Microsoft; research use): two hands manipulating objects, 4 static + 1 head-mounted RGB-D
cameras, per-frame 3D joints and MANO fits.

Layout (taeinkwon/h2odataset ``README.md``):

    <root>/<subject>/<scene>/<seq>/cam<k>/rgb/%06d.png                1280 x 720
    <root>/<subject>/<scene>/<seq>/cam<k>/hand_pose/%06d.txt          128 numbers: left [valid, 21 x 3], right [...]
    <root>/<subject>/<scene>/<seq>/cam<k>/hand_pose_MANO/%06d.txt     124 numbers: left [valid, trans 3, pose 48,
                                                                      shape 10], right [...] (the README's "59" is a
                                                                      typo for 62 = 1 + 3 + 48 + 10)
    <root>/<subject>/<scene>/<seq>/cam<k>/cam_pose/%06d.txt           16 numbers, camera -> world 4 x 4
    <root>/<subject>/<scene>/<seq>/cam<k>/action_label/%06d.txt       action id (cam4 only)
    <root>/<subject>/<scene>/<seq>/cam<k>/cam_intrinsics.txt          fx fy cx cy width height

Both hand files are in that camera's frame (README: "cam_to_hand"). One episode per camera folder: key
``<subject>/<scene>/<seq>/cam<k>``; cam4 is the egocentric one (its ``cam_pose`` changes per frame).

The MANO convention of ``hand_pose_MANO`` is not documented: the pose is taken as flat axis-angle (the
manopth default, as in this project's datasets.md) and ``trans`` as MANO's translation (wrist = J0 + trans)
or as the wrist itself, decided per episode (``transl='auto'``) by which of the two lands on the wrist of
the dataset's own ``hand_pose`` joints; the choice is recorded in the provenance. Without
``hand_pose_MANO`` the episode is joint-only (``needs_fit``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from handvla.camera import intrinsics_matrix
from handvla.errors import ConfigError, InputError
from handvla.ingest.sources.base import (
    Source,
    SourceEpisode,
    camera_from_K,
    check_rigid,
    constant_betas,
    existing_frames,
    frame_table,
    invert_rigid,
    mano_motion,
    mean_to_flat,
    read_numbers,
    relative_keys,
    split_extrinsics,
    wrist_from_mano_transl,
)

#: action_label ids (README "action_label"), 0 = background
ACTIONS = (
    "background", "grab book", "grab espresso", "grab lotion", "grab spray", "grab milk", "grab cocoa", "grab chips",
    "grab cappuccino", "place book", "place espresso", "place lotion", "place spray", "place milk", "place cocoa",
    "place chips", "place cappuccino", "open lotion", "open milk", "open chips", "close lotion", "close milk",
    "close chips", "pour milk", "take out espresso", "take out cocoa", "take out chips", "take out cappuccino",
    "put in espresso", "put in cocoa", "put in cappuccino", "apply lotion", "apply spray", "read book",
    "read espresso", "spray spray", "squeeze lotion",
)  # fmt: skip
WRIST_MATCH_M = 0.01  # 'auto': the chosen translation convention must put the wrist within 1 cm of the joints
HANDS = ("left", "right")  # the order of the two hand blocks in every per-frame hand file
MANO_FIELDS = {"trans": (3,), "pose": (48,), "shape": (10,)}  # a hand_pose_MANO block after its valid flag


def hand_blocks(folder: Path, ids: list[int], size: int, what: str) -> Iterator[tuple[int, str, np.ndarray]]:
    """(frame, side, values) of every valid hand block in the per-frame files ``folder/%06d.txt``: two blocks
    of ``size`` numbers (left, right), each [valid, values...]; a missing frame file has no hand."""
    for f in ids:
        p = folder / f"{f:06d}.txt"
        if not p.is_file():
            continue
        v = read_numbers(p, 2 * size, what)
        for i, side in enumerate(HANDS):
            block = v[size * i : size * (i + 1)]
            if block[0] > 0.5:
                yield f, side, block[1:]


class H2OSource(Source):
    name = "h2o"
    licence = "H2O dataset licence (non-commercial research use)"
    kind = "mocap"
    params = "mano"
    fps = 30.0
    url = "https://h2odataset.ethz.ch"
    needs_mano = True
    layout = (
        "<subject>/<scene>/<seq>/cam<k>/{hand_pose,hand_pose_MANO,cam_pose,rgb}/%06d.*, cam_intrinsics.txt"
    )

    def __init__(
        self, mano_dir=None, transl: str = "auto", pose: str = "flat", left_shapedirs_fixed: bool = False
    ):
        super().__init__(mano_dir)
        if transl not in ("auto", "mano", "wrist") or pose not in ("flat", "mean"):
            raise ConfigError(
                f"h2o: transl must be auto|mano|wrist and pose flat|mean, got {transl!r}, {pose!r}"
            )
        self.transl, self.pose, self.left_fixed = transl, pose, bool(left_shapedirs_fixed)

    def list_episodes(self, root: str | Path) -> list[str]:
        r = self._root(root)
        cams = {
            p.parent
            for sub in ("hand_pose_MANO", "hand_pose")
            for p in r.glob(f"*/*/*/cam*/{sub}")
            if p.is_dir()
        }
        return relative_keys(cams, r)

    def read_episode(self, root: str | Path, key: str) -> SourceEpisode:
        r = self._root(root)
        parts = self._key_parts(key, 4)
        cam = r.joinpath(*parts)
        mano_files, joint_dir = cam / "hand_pose_MANO", cam / "hand_pose"
        listing = mano_files if mano_files.is_dir() else joint_dir
        if not listing.is_dir():
            raise InputError(cam, "hand_pose_MANO", "a folder of per-frame hand files", "missing")
        ids = sorted(int(p.stem) for p in listing.glob("*.txt") if p.stem.isdigit())
        if not ids:
            raise InputError(listing, None, "per-frame %06d.txt files", "none")
        T = ids[-1] + 1

        intr_path = cam / "cam_intrinsics.txt"
        fx, fy, cx, cy, w, h = read_numbers(intr_path, 6, "intrinsics (fx fy cx cy width height)")
        K = intrinsics_matrix(fx, fy, cx, cy)

        joints = {s: np.full((T, 21, 3), np.nan) for s in HANDS}
        if joint_dir.is_dir():
            for f, s, v in hand_blocks(joint_dir, ids, 64, "hand joints (2 x [valid, 21 x 3])"):
                joints[s][f] = v.reshape(21, 3)
        has_joints = [s for s in HANDS if np.isfinite(joints[s]).any()]

        notes: dict = {}
        hands = {}
        if mano_files.is_dir():
            rows: dict[str, dict] = {s: {} for s in HANDS}
            what = "MANO values (2 x [valid, trans 3, pose 48, shape 10])"
            for f, s, v in hand_blocks(mano_files, ids, 62, what):
                rows[s][f] = {"trans": v[:3], "pose": v[3:51], "shape": v[51:61]}
            for s in HANDS:
                if not rows[s]:
                    continue
                q, valid = frame_table(T, rows[s], MANO_FIELDS)
                betas = constant_betas(q["shape"][valid], mano_files, f"{s} shape", notes, s)
                model = self.mano_model(s, fix_left_shapedirs=self.left_fixed)
                as_mano = wrist_from_mano_transl(model, betas, q["trans"])
                kind = self.transl
                if kind == "auto":
                    kind, dists = self._choose_transl(joints[s], valid, as_mano, q["trans"])
                    notes[f"{s}_wrist_to_joints_m"] = dists
                wrist = as_mano if kind == "mano" else q["trans"]
                hp = q["pose"][:, 3:] if self.pose == "flat" else mean_to_flat(model, q["pose"][:, 3:])
                hands[s] = mano_motion(
                    side=s,
                    global_orient=q["pose"][:, :3],
                    hand_pose=hp,
                    betas=betas,
                    wrist=wrist,
                    fps=self.fps,
                    valid=valid,
                )
                notes[f"{s}_mano_convention"] = (
                    f"{self.pose} pose, trans = {'wrist - J0' if kind == 'mano' else 'wrist'}"
                )
        needs_fit = tuple(s for s in HANDS if s in has_joints and s not in hands)
        if not hands and not needs_fit:
            raise InputError(cam, "hand_pose", "at least one annotated hand", "none")

        # extrinsics: world -> camera = inverse of the camera -> world poses
        E = None
        pose_dir = cam / "cam_pose"
        if pose_dir.is_dir() and all((pose_dir / f"{f:06d}.txt").is_file() for f in range(T)):
            c2w = np.stack(
                [
                    read_numbers(pose_dir / f"{f:06d}.txt", 16, "a 4 x 4 camera pose").reshape(4, 4)
                    for f in range(T)
                ]
            )
            E = invert_rigid(check_rigid(c2w, pose_dir, "cam_pose"))
        static, moving = split_extrinsics(E)
        camera = camera_from_K(K, int(w), int(h), intr_path, extrinsics=static)

        tasks, annotations = [], {}
        act_dir = cam / "action_label"
        if act_dir.is_dir():
            acts = [
                int(read_numbers(p, 1, "an action id")[0]) if (p := act_dir / f"{f:06d}.txt").is_file() else 0
                for f in range(T)
            ]
            annotations["action_label"] = acts
            for a in acts:
                if 0 < a < len(ACTIONS) and ACTIONS[a] not in tasks:
                    tasks.append(ACTIONS[a])
        rgb = [cam / "rgb" / f"{f:06d}.png" for f in range(T)]
        return self.episode(
            key,
            [listing, intr_path],
            notes,
            annotations=annotations,
            hands=hands,
            joints={s: joints[s].astype(np.float32) for s in has_joints},
            camera=camera,
            tasks=tasks,
            rig=f"h2o-{parts[3]}",
            needs_fit=needs_fit,
            frame_paths=existing_frames(rgb),
            frame_ids=np.arange(T),
            world_to_camera=moving,
        )

    @staticmethod
    def _choose_transl(
        joints: np.ndarray, valid: np.ndarray, as_mano: np.ndarray, as_wrist: np.ndarray
    ) -> tuple[str, dict]:
        """Which reading of ``trans`` puts the MANO wrist on the dataset's wrist joint (median over frames)."""
        both = valid & np.isfinite(joints[:, 0]).all(1)
        if not both.any():
            return "mano", {}
        d_mano = float(np.median(np.linalg.norm(as_mano[both] - joints[both, 0], axis=1)))
        d_wrist = float(np.median(np.linalg.norm(as_wrist[both] - joints[both, 0], axis=1)))
        dists = {"mano": d_mano, "wrist": d_wrist}
        best = "mano" if d_mano <= d_wrist else "wrist"
        if min(d_mano, d_wrist) > WRIST_MATCH_M:
            raise InputError(
                "h2o hand_pose_MANO",
                "trans",
                f"a translation that puts the MANO wrist within {WRIST_MATCH_M * 100:g} cm of the hand_pose wrist "
                "(pass transl='mano' or 'wrist' to force one)",
                f"median distances {dists}",
            )
        return best, dists
