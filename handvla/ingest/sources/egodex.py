"""EgoDex (Apple; CC BY-NC-ND 4.0): 829 h of egocentric Apple Vision Pro video, 1080p 30 Hz, with the
headset's hand tracking as per-joint poses.

Layout (this project's datasets.md; the Apple EgoDex utilities ``utils/data_utils.py``,
``utils/skeleton_tfs.py`` and the reprojection script, as redistributed in public repositories):

    <root>/<part>/<task>/<k>.hdf5     camera/intrinsic (3, 3) = [[736.6339, 0, 960], [0, 736.6339, 540], [0, 0, 1]];
                                      transforms/<joint> (N, 4, 4) world-frame poses; transforms/camera (N, 4, 4)
                                      the camera pose (camera -> world); confidences/<joint> (N,);
                                      file attributes llm_description, task, ...
    <root>/<part>/<task>/<k>.mp4      the video, one frame per pose

Per hand (prefix ``left``/``right``): ``<p>Hand`` (wrist), ``<p>Thumb{Knuckle, IntermediateBase,
IntermediateTip, Tip}``, ``<p>{Index,Middle,Ring,Little}Finger{Metacarpal, Knuckle, IntermediateBase,
IntermediateTip, Tip}``. OpenPose order takes the wrist, the four thumb points (thumb knuckle = CMC base), and
Knuckle, IntermediateBase, IntermediateTip, Tip of each finger (the metacarpal points are not used).

Camera frame = ``inv(transforms/camera) @ T`` (Apple's ``convert_to_camera_frame``). Apple's reprojection
script projects those points with ``cv2.projectPoints`` and the intrinsics directly, i.e. in OpenCV axes; an
ARKit-style camera (y up, looking down -z) would need ``diag(1, -1, -1)``. ``camera_axes='auto'``
(default) decides per file from the hands themselves (observed wrists must be in front of the camera:
z > 0) and records the choice; 'opencv' or 'arkit' force one. Joints only: both hands are ``needs_fit``.
Key: ``<part>/<task>/<k>``. The task is the file's ``llm_description`` (else the phrase of its task name,
`action_phrase`); ``annotations['action']`` keeps the task name and that text for the annotators.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from handvla.errors import ConfigError, InputError, MissingResourceError
from handvla.ingest.sources.base import (
    Source,
    SourceEpisode,
    action_annotation,
    action_phrase,
    camera_from_K,
    check_rigid,
    invert_rigid,
    relative_keys,
    video_size,
)

FINGER_POINTS = ("Knuckle", "IntermediateBase", "IntermediateTip", "Tip")


def joint_names(side: str) -> list[str]:
    """The 21 EgoDex transforms of one hand in OpenPose order."""
    p = side
    names = [
        f"{p}Hand",
        f"{p}ThumbKnuckle",
        f"{p}ThumbIntermediateBase",
        f"{p}ThumbIntermediateTip",
        f"{p}ThumbTip",
    ]
    for finger in ("Index", "Middle", "Ring", "Little"):
        names += [f"{p}{finger}Finger{pt}" for pt in FINGER_POINTS]
    return names


ARKIT_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
WIDTH, HEIGHT = 1920, 1080


def _attr(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _attr(v.item())
    return str(v)


class EgoDexSource(Source):
    name = "egodex"
    licence = "CC BY-NC-ND 4.0"
    kind = "vr"
    params = "joints"
    fps = 30.0
    url = "https://github.com/apple/ml-egodex"
    needs_mano = False
    layout = "<part>/<task>/<k>.hdf5 (+ <k>.mp4)"

    def __init__(self, mano_dir=None, camera_axes: str = "auto", min_confidence: float = 0.0):
        super().__init__(mano_dir)
        if camera_axes not in ("auto", "opencv", "arkit"):
            raise ConfigError(f"egodex: camera_axes must be auto|opencv|arkit, got {camera_axes!r}")
        self.camera_axes, self.min_confidence = camera_axes, float(min_confidence)

    def list_episodes(self, root: str | Path) -> list[str]:
        r = self._root(root)
        return relative_keys(r.rglob("*.hdf5"), r, ".hdf5")

    def read_episode(self, root: str | Path, key: str) -> SourceEpisode:
        try:
            import h5py  # optional (the 'data' extra): only this reader needs it
        except ImportError:
            raise MissingResourceError(
                "egodex: reading its .hdf5 files needs h5py (pip install h5py)"
            ) from None
        r = self._root(root)
        parts = self._key_parts(key, expected="a relative path <part>/<task>/<k>")
        path = r.joinpath(*parts).with_suffix(".hdf5")
        if not path.is_file():
            raise InputError(path, None, "an existing EgoDex .hdf5 file", "no such file")
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise InputError(path, None, "a readable HDF5 file", f"{type(e).__name__}: {e}") from None
        with f:

            def read(name: str, shape_tail: tuple[int, ...]) -> np.ndarray:
                if name not in f:
                    raise InputError(path, name, "present (EgoDex HDF5)", "missing")
                try:
                    a = np.asarray(f[name][()], np.float64)
                except (OSError, TypeError, ValueError) as e:
                    raise InputError(
                        path, name, "a readable numeric dataset", f"{type(e).__name__}: {e}"
                    ) from None
                if a.shape[1:] != shape_tail or (shape_tail and a.ndim != 1 + len(shape_tail)):
                    raise InputError(
                        path, name, f"shape (N, {', '.join(map(str, shape_tail))})", str(a.shape)
                    )
                return a

            K = np.asarray(f["camera/intrinsic"][()], np.float64) if "camera/intrinsic" in f else None
            if K is None:
                raise InputError(path, "camera/intrinsic", "the (3, 3) camera intrinsics", "missing")
            cam_pose = read("transforms/camera", (4, 4))
            N = cam_pose.shape[0]
            w2c = invert_rigid(check_rigid(cam_pose, path, "transforms/camera"))
            world = {}
            conf = {}
            for side in ("left", "right"):
                pts = []
                cs = []
                for name in joint_names(side):
                    T_j = read(f"transforms/{name}", (4, 4))
                    if T_j.shape[0] != N:
                        raise InputError(
                            path,
                            f"transforms/{name}",
                            f"{N} frames (as transforms/camera)",
                            str(T_j.shape[0]),
                        )
                    pts.append(T_j[:, :3, 3])
                    c = f.get(f"confidences/{name}")
                    cs.append(np.asarray(c[()], np.float64) if c is not None else np.ones(N))
                world[side] = np.stack(pts, 1)  # (N, 21, 3)
                conf[side] = np.stack(cs, 1)  # (N, 21)
                if conf[side].shape != (N, 21):
                    raise InputError(
                        path, f"confidences/{side}*", f"(N={N},) per joint", str(conf[side].shape)
                    )
            attrs = {k: _attr(v) for k, v in f.attrs.items()}

        cam = {s: np.einsum("nij,nkj->nki", w2c[:, :3, :3], world[s]) + w2c[:, None, :3, 3] for s in world}
        for s in cam:
            bad = ~np.isfinite(cam[s]).all(-1) | (conf[s] < self.min_confidence)
            cam[s][bad] = np.nan
        axes = self.camera_axes
        wrists = np.concatenate([cam[s][:, 0] for s in cam])
        wrists = wrists[np.isfinite(wrists).all(1)]
        if axes == "auto":
            if wrists.size == 0:
                raise InputError(
                    path, "transforms", "at least one observed wrist to find the camera axes", "none"
                )
            axes = "opencv" if np.median(wrists[:, 2]) > 0 else "arkit"
        if axes == "arkit":
            for s in cam:
                cam[s] = cam[s] * np.array([1.0, -1.0, -1.0])
            w2c = ARKIT_TO_OPENCV @ w2c

        mp4 = path.with_suffix(".mp4")
        width, height, n_video = video_size(mp4, (WIDTH, HEIGHT))
        if n_video is not None and n_video != N:
            raise InputError(mp4, "frames", f"{N} frames (one per pose in {path.name})", str(n_video))
        camera = camera_from_K(K, width, height, path)
        label = attrs.get("task") or path.parent.name  # the dataset's task name (attribute, else folder)
        tasks = [attrs[k] for k in ("llm_description", "llm_description2") if attrs.get(k)]
        if not tasks:
            tasks = [action_phrase(label)]
        notes = {"camera_axes": axes, "min_confidence": self.min_confidence}
        return self.episode(
            key,
            [path],
            notes,
            annotations={
                "attributes": {k: v for k, v in attrs.items() if len(v) < 2000},
                **action_annotation(label, tasks[0]),
            },
            hands={},
            joints={
                s: cam[s].astype(np.float32)
                for s in ("left", "right")
                if np.isfinite(cam[s]).all(-1).all(-1).any()
            },
            camera=camera,
            video=str(mp4) if n_video is not None else None,
            tasks=tasks,
            rig="apple-vision-pro",
            needs_fit=tuple(s for s in ("left", "right") if np.isfinite(cam[s]).all(-1).all(-1).any()),
            frame_ids=np.arange(N),
            world_to_camera=w2c,
        )
