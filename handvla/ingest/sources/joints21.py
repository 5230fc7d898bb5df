"""Joint files (the format of ``/work/shared/data/real_hands``, read by ``handvla.hand.io.load_joints``).

One ``.npz`` per hand and recording: ``joints`` (T, 21, 3) metres (NaN = lost), ``t`` seconds, ``side``,
``fps``, ``source``, ``licence``, ``joint_order`` (``openpose21`` / ``mediapipe21`` / ``leap21``: point 0 is
the wrist, or for Leap the PALM CENTRE), ``frame`` (free text). ``<name>_left.npz`` and ``<name>_right.npz``
with the same timestamps are one episode with two hands (key ``<name>``); any other file is its own
episode (key = its path without ``.npz``). ``<name>.mp4`` / ``<stem>.mp4`` beside it is the video.

Frames: a file whose ``frame`` says "Leap device frame" (origin on the sensor, y up) is rotated into the
view of a camera on the sensor looking up (camera z = Leap +y, camera x = Leap +x, camera y = Leap -z), so
the hands are in front of it; other frames are kept as they are (recorded in the provenance). There are no
intrinsics in these files: the camera is nominal (``rig='virtual'``; fx = fy = the larger image side, the
principal point at the centre, the video's size or 640 x 480). Uneven timestamps (tracker jitter) are
resampled onto a uniform grid at the file's nominal rate (NaN-aware, ``JointsRecording.resample``); a
video's own timeline is never resampled. Joints only: every hand is ``needs_fit``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from handvla.errors import InputError
from handvla.hand.io import load_joints
from handvla.ingest.sources.base import Source, SourceEpisode, centred_camera, numeric_key, video_size

#: Leap device frame (x right, y up, z towards the user) -> a camera on the sensor looking up (OpenCV axes)
LEAP_TO_CAMERA = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
UNEVEN_TOLERANCE = 0.1  # resample when some frame spacing differs from 1/fps by more than 10 %
DEFAULT_SIZE = (640, 480)


def _npz_t(path: Path) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as d:
            return np.asarray(d["t"], np.float64) if "t" in d else None
    except (OSError, ValueError):
        return None


class Joints21Source(Source):
    name = "joints21"
    licence = "per file (the 'licence' field of each joints file)"
    kind = "rgb"
    params = "joints"
    fps = 30.0  # nominal only: each file states its own rate
    url = ""
    needs_mano = False
    layout = "**/<name>[_left|_right].npz (+ <name>.mp4), keys joints, t, side, fps, joint_order, frame"

    def list_episodes(self, root: str | Path) -> list[str]:
        r = self._root(root)
        files = sorted(r.rglob("*.npz"))
        rel = {p.relative_to(r).with_suffix("").as_posix(): p for p in files}
        keys, used = [], set()
        for k in rel:
            if k in used:
                continue
            for a, b in (("_left", "_right"), ("_right", "_left")):
                if k.endswith(a) and (other := k[: -len(a)] + b) in rel:
                    ta, tb = _npz_t(rel[k]), _npz_t(rel[other])
                    if (
                        ta is not None
                        and tb is not None
                        and ta.shape == tb.shape
                        and np.allclose(ta, tb, atol=1e-9)
                    ):
                        keys.append(k[: -len(a)])
                        used |= {k, other}
            if k not in used:
                keys.append(k)
                used.add(k)
        return sorted(keys, key=numeric_key)

    def read_episode(self, root: str | Path, key: str) -> SourceEpisode:
        r = self._root(root)
        base = r.joinpath(*self._key_parts(key, expected="a relative path without .npz"))
        single = base.with_name(base.name + ".npz")
        if single.is_file():
            recs = [load_joints(single)]
        else:
            recs = [
                load_joints(p)
                for s in ("left", "right")
                if (p := base.with_name(f"{base.name}_{s}.npz")).is_file()
            ]
        if not recs:
            raise InputError(
                f"{base}.npz",
                None,
                f"a joints file {base.name}.npz or {base.name}_left/_right.npz",
                "no such file",
            )
        sides = [rec.side for rec in recs]
        if len(set(sides)) != len(sides):
            raise InputError(recs[-1].where, "side", "one file per side", f"sides {sides}")
        if len(recs) == 2 and not (
            recs[0].t.shape == recs[1].t.shape and np.allclose(recs[0].t, recs[1].t, atol=1e-9)
        ):
            raise InputError(recs[1].where, "t", f"the timestamps of {recs[0].where}", "different timestamps")
        video = next((v for v in (base.with_suffix(".mp4"), single.with_suffix(".mp4")) if v.is_file()), None)
        width, height, n_video = video_size(video, DEFAULT_SIZE)
        notes: dict = {
            "frames": {rec.side: rec.frame for rec in recs},
            "sources": {rec.side: rec.source for rec in recs},
        }

        rec0 = recs[0]
        dt = np.diff(rec0.t)
        uneven = dt.size > 0 and np.abs(dt * rec0.fps - 1.0).max() > UNEVEN_TOLERANCE
        if uneven and video is None:
            recs = [rec.resample(rec0.fps) for rec in recs]
            notes["resampled_to_fps"] = rec0.fps
        out: dict[str, np.ndarray] = {}
        for rec in recs:
            j = np.asarray(rec.joints, np.float64)
            if rec.frame.lower().startswith("leap device frame"):
                j = j @ LEAP_TO_CAMERA.T
                notes["camera"] = "virtual camera on the Leap sensor looking up (camera z = Leap +y)"
            out[rec.side] = j.astype(np.float32)
        T = recs[0].joints.shape[0]
        use_video = video is not None and n_video == T
        if video is not None and not use_video:
            notes["video"] = f"{video.name}: {n_video} frames, the joints have {T}"
        camera = centred_camera(float(max(width, height)), width, height)
        schemes = {rec.joint_scheme for rec in recs}
        if len(schemes) > 1:
            raise InputError(
                recs[-1].where,
                "joint_order",
                f"the scheme of {recs[0].where} ({rec0.joint_scheme})",
                str(schemes),
            )
        licences = sorted({rec.licence for rec in recs})
        return self.episode(
            key,
            [rec.where for rec in recs],
            notes,
            hands={},
            joints={s: out[s] for s in ("left", "right") if s in out},
            camera=camera,
            fps=float(recs[0].fps),
            video=str(video) if use_video else None,
            licence=", ".join(licences),
            rig="virtual",
            needs_fit=tuple(s for s in ("left", "right") if s in out),
            joint_order=rec0.joint_order,
            frame_ids=np.arange(T),
        )
