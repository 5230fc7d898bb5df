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

from pathlib import Path

import numpy as np

from handvla.errors import ConfigError, InputError
from handvla.ingest.sources.base import (
    Provenance,
    Source,
    SourceEpisode,
    camera_from_K,
    check_rigid,
    constant_betas,
    invert_rigid,
    mano_motion,
    mean_to_flat,
    numeric_key,
    read_numbers,
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
        return sorted((c.relative_to(r).as_posix() for c in cams), key=numeric_key)

    def read_episode(self, root: str | Path, key: str) -> SourceEpisode:
        r = self._root(root)
        parts = self._key_path(r, key, 4)
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
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

        joints = {s: np.full((T, 21, 3), np.nan) for s in ("left", "right")}
        if joint_dir.is_dir():
            for f in ids:
                p = joint_dir / f"{f:06d}.txt"
                if not p.is_file():
                    continue
                v = read_numbers(p, 128, "hand joints (2 x [valid, 21 x 3])")
                for i, s in enumerate(("left", "right")):
                    block = v[64 * i : 64 * (i + 1)]
                    if block[0] > 0.5:
                        joints[s][f] = block[1:].reshape(21, 3)
        has_joints = {s for s in joints if np.isfinite(joints[s]).any()}

        notes: dict = {}
        hands = {}
        if mano_files.is_dir():
            raw = {
                s: {
                    "valid": np.zeros(T, bool),
                    "trans": np.zeros((T, 3)),
                    "pose": np.zeros((T, 48)),
                    "shape": [],
                }
                for s in ("left", "right")
            }
            for f in ids:
                p = mano_files / f"{f:06d}.txt"
                if not p.is_file():
                    continue
                v = read_numbers(p, 124, "MANO values (2 x [valid, trans 3, pose 48, shape 10])")
                for i, s in enumerate(("left", "right")):
                    b = v[62 * i : 62 * (i + 1)]
                    if b[0] > 0.5:
                        raw[s]["valid"][f] = True
                        raw[s]["trans"][f], raw[s]["pose"][f] = b[1:4], b[4:52]
                        raw[s]["shape"].append(b[52:62])
            for s in ("left", "right"):
                q = raw[s]
                if not q["valid"].any():
                    continue
                betas, dev = constant_betas(np.stack(q["shape"]), mano_files, f"{s} shape")
                model = self.mano_model(s, fix_left_shapedirs=self.left_fixed)
                as_mano = wrist_from_mano_transl(model, betas, q["trans"])
                kind = self.transl
                if kind == "auto":
                    kind, dists = self._choose_transl(joints[s], q["valid"], as_mano, q["trans"])
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
                    valid=q["valid"],
                )
                notes[f"{s}_mano_convention"] = (
                    f"{self.pose} pose, trans = {'wrist - J0' if kind == 'mano' else 'wrist'}"
                )
                if dev > 1e-6:
                    notes[f"{s}_betas_max_deviation"] = dev
        needs_fit = tuple(s for s in ("left", "right") if s in has_joints and s not in hands)
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
        static = E is not None and np.abs(E - E[0]).max() < 1e-9
        camera = camera_from_K(K, int(w), int(h), intr_path, extrinsics=E[0] if static else None)

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
        annotations["provenance"] = Provenance(
            self.name, key, [str(listing), str(intr_path)], notes
        ).as_dict()
        return SourceEpisode(
            hands=hands,
            joints={s: joints[s].astype(np.float32) for s in has_joints},
            camera=camera,
            fps=self.fps,
            key=f"{self.name}/{key}",
            tasks=tasks,
            source=self.name,
            licence=self.licence,
            rig=f"h2o-{parts[3]}",
            annotations=annotations,
            needs_fit=needs_fit,
            frame_paths=[str(p) for p in rgb] if rgb[0].is_file() else None,
            frame_ids=np.arange(T),
            world_to_camera=None if E is None or static else E,
        ).validate()

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
