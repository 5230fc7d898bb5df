"""DexYCB (NVIDIA; CC BY-NC 4.0): single-hand grasps of YCB objects, 8 static RGB-D cameras, 30 fps.

Layout (as read by NVlabs/dex-ycb-toolkit ``dex_ycb_toolkit/dex_ycb.py``, ``sequence_loader.py`` and its
README):

    <root>/<subject>/<sequence>/meta.yml                       serials, num_frames, mano_sides, mano_calib, ycb_ids, ycb_grasp_ind
    <root>/<subject>/<sequence>/<serial>/labels_%06d.npz       pose_m (1, 51), joint_3d (1, 21, 3), ...
    <root>/<subject>/<sequence>/<serial>/color_%06d.jpg        640 x 480
    <root>/calibration/intrinsics/<serial>_640x480.yml         color: {fx, fy, ppx, ppy}
    <root>/calibration/mano_<mano_calib>/mano.yml              betas (10)

One episode per (sequence, camera): key ``<subject>/<sequence>/<serial>``. The labels are already in that
camera's frame, metres.

MANO convention (the toolkit's ``layers/mano_layer.py``: manopth ``ManoLayer(flat_hand_mean=False,
ncomps=45, use_pca=True)``): ``pose_m[:, :3]`` global rotation, ``pose_m[:, 3:48]`` 45 PCA coefficients
relative to ``hands_mean``, ``pose_m[:, 48:51]`` MANO ``transl`` (wrist = J0(betas) + transl, manopth with
``center_idx=None``). manopth uses the published left model as is (no shapedirs sign fix), so the wrist is
placed with that model. ``pose_m`` all zero = no hand in that frame; ``joint_3d`` all -1 = no joints (NaN
here). ``joint_3d`` is passed through as ``joints`` (manopth fingertip vertices 745/317/444/556/673).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from handvla.camera import intrinsics_matrix
from handvla.errors import InputError
from handvla.ingest.sources.base import (
    Source,
    SourceEpisode,
    as_array,
    camera_from_K,
    existing_frames,
    load_yaml,
    mano_motion,
    pca_to_flat,
    require_keys,
    wrist_from_mano_transl,
)

#: YCB object of each ``ycb_ids`` entry (dex-ycb-toolkit ``dex_ycb.py``), used for the task text
YCB_CLASSES = {
    1: "002_master_chef_can", 2: "003_cracker_box", 3: "004_sugar_box", 4: "005_tomato_soup_can",
    5: "006_mustard_bottle", 6: "007_tuna_fish_can", 7: "008_pudding_box", 8: "009_gelatin_box",
    9: "010_potted_meat_can", 10: "011_banana", 11: "019_pitcher_base", 12: "021_bleach_cleanser",
    13: "024_bowl", 14: "025_mug", 15: "035_power_drill", 16: "036_wood_block", 17: "037_scissors",
    18: "040_large_marker", 19: "051_large_clamp", 20: "052_extra_large_clamp", 21: "061_foam_brick",
}  # fmt: skip
WIDTH, HEIGHT = 640, 480


def object_phrase(ycb_name: str) -> str:
    """'003_cracker_box' -> 'cracker box'."""
    return " ".join(ycb_name.split("_")[1:])


class DexYCBSource(Source):
    name = "dexycb"
    licence = "CC BY-NC 4.0"
    kind = "mocap"
    params = "mano"
    fps = 30.0
    url = "https://dex-ycb.github.io"
    needs_mano = True
    layout = "<subject>/<sequence>/{meta.yml,<serial>/labels_%06d.npz}, calibration/{intrinsics,mano_*}"

    def list_episodes(self, root: str | Path) -> list[str]:
        r = self._root(root)
        keys = []
        for meta in sorted(r.glob("*/*/meta.yml")):
            seq = meta.parent
            serials = load_yaml(meta).get("serials", []) if meta.is_file() else []
            for s in serials:
                if (seq / str(s)).is_dir():
                    keys.append(f"{seq.parent.name}/{seq.name}/{s}")
        return keys

    def read_episode(self, root: str | Path, key: str) -> SourceEpisode:
        r = self._root(root)
        subject, sequence, serial = self._key_parts(key, 3)
        seq_dir = r / subject / sequence
        meta_path = seq_dir / "meta.yml"
        meta = require_keys(
            load_yaml(meta_path),
            meta_path,
            ("num_frames", "mano_sides", "mano_calib"),
            "present (dex-ycb meta.yml)",
            mapping="a YAML mapping",
        )
        T = int(meta["num_frames"])
        side = str(meta["mano_sides"][0])
        if side not in ("left", "right") or T < 1:
            raise InputError(
                meta_path, "mano_sides/num_frames", "'left'/'right' and >= 1 frame", f"{side!r}, {T}"
            )

        intr_path = r / "calibration" / "intrinsics" / f"{serial}_{WIDTH}x{HEIGHT}.yml"
        intr = load_yaml(intr_path)
        try:
            c = intr["color"]
            K = intrinsics_matrix(c["fx"], c["fy"], c["ppx"], c["ppy"])
        except (KeyError, TypeError):
            raise InputError(intr_path, "color", "a mapping with fx, fy, ppx, ppy", repr(intr)[:80]) from None
        camera = camera_from_K(K, WIDTH, HEIGHT, intr_path)

        mano_path = r / "calibration" / f"mano_{meta['mano_calib'][0]}" / "mano.yml"
        mano_yml = load_yaml(mano_path)
        betas = as_array((mano_yml or {}).get("betas"), mano_path, "betas", (10,))

        pose_m = np.zeros((T, 51))
        joints = np.full((T, 21, 3), np.nan)
        for f in range(T):
            p = seq_dir / serial / f"labels_{f:06d}.npz"
            try:
                with np.load(p, allow_pickle=False) as d:
                    if "pose_m" not in d:
                        raise InputError(p, "pose_m", "a (1, 51) array", "missing")
                    pose_m[f] = as_array(d["pose_m"], p, "pose_m", (51,))
                    if "joint_3d" in d:
                        j = as_array(d["joint_3d"], p, "joint_3d", (21, 3))
                        if not np.all(j == -1):
                            joints[f] = j
            except FileNotFoundError:
                raise InputError(
                    p, None, "the label file of every frame in meta.yml num_frames", "no such file"
                ) from None
            except (OSError, ValueError) as e:
                if isinstance(e, InputError):
                    raise
                raise InputError(p, None, "a readable .npz", f"{type(e).__name__}: {e}") from None

        valid = ~np.all(pose_m == 0.0, axis=1)
        model = self.mano_model(side, fix_left_shapedirs=False)  # manopth: published left model as is
        hand_pose = pca_to_flat(model, pose_m[:, 3:48], mean=True)
        wrist = wrist_from_mano_transl(model, betas, pose_m[:, 48:51])
        motion = mano_motion(
            side=side,
            global_orient=pose_m[:, :3],
            hand_pose=hand_pose,
            betas=betas,
            wrist=wrist,
            fps=self.fps,
            valid=valid,
        )

        frames = [str(seq_dir / serial / f"color_{f:06d}.jpg") for f in range(T)]
        tasks = []
        ids, grasp = meta.get("ycb_ids"), meta.get("ycb_grasp_ind")
        if (
            isinstance(ids, list)
            and isinstance(grasp, int)
            and 0 <= grasp < len(ids)
            and ids[grasp] in YCB_CLASSES
        ):
            tasks = [f"grasp the {object_phrase(YCB_CLASSES[ids[grasp]])}"]
        notes = {
            "mano_convention": "manopth PCA-45 relative to hands_mean, transl = wrist - J0, left shapedirs as published",
            "joints": "dataset joint_3d (manopth tips)",
        }
        return self.episode(
            key,
            [meta_path, intr_path, mano_path],
            notes,
            hands={side: motion},
            joints={side: joints.astype(np.float32)},
            camera=camera,
            tasks=tasks,
            rig=f"dexycb-{serial}",
            frame_paths=existing_frames(frames),
            frame_ids=np.arange(T),
        )
