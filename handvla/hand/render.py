"""Render hand motion to images and videos, on the CPU with numpy + PIL.

What is drawn, per hand and frame:
- a skeleton: the 20 bones of the 21 OpenPose joints (one colour per finger), the joints as dots and the
  palm as a light polygon; line widths and dot sizes follow perspective (nearer = thicker);
- or, when vertices and faces are given (MANO), a flat-shaded mesh (headlight shading, two-sided).

Everything of all hands in a frame (bones, dots, palm polygons, triangles) is sorted by depth and painted
far to near (painter's algorithm), so hands and fingers occlude each other by depth.

Cameras are ``handvla.camera.Camera`` (OpenCV: x right, y down, z forward, pixel ``u = fx X / Z + cx``;
extrinsics are not used). Two ways to look:
- ``camera=Camera(fx, fy, cx, cy, width, height)``: the points are in that camera's frame, e.g. to
  overlay the hands on the image or video they were seen in (``background``);
- no camera: a virtual camera frames all frames of all hands automatically (``auto_view``); ``view`` =
  (azimuth, elevation) in degrees turns it around the motion, (0, 0) looks along the source camera's z.

``render_side_by_side`` draws two sets of hands (e.g. ground truth and a tokenizer's reconstruction) under
one shared virtual camera, next to each other, with titles. ``render_video`` and ``render_motions`` write
MP4 or GIF files through ``handvla.video``. Hand motions become joints (and meshes) through
``handvla.hand.registry.motion_output``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from handvla.camera import Camera
from handvla.errors import InputError
from handvla.hand.model import HandModel
from handvla.hand.motion import HandMotion
from handvla.hand.registry import hand_model_for, motion_output
from handvla.hand.topology import NUM_JOINTS, OPENPOSE_FINGERS, OPENPOSE_PARENTS, check_side
from handvla.video import VideoWriter

#: RGB colour of each finger's bones; the palm and wrist bones are drawn in PALM_COLOR
FINGER_COLORS = {
    "thumb": (235, 70, 60),
    "index": (245, 175, 40),
    "middle": (80, 200, 80),
    "ring": (50, 150, 235),
    "little": (185, 85, 225),
}
PALM_COLOR = (215, 215, 215)
#: base colour of mesh skin per side (right a warm tone, left a cooler one, so two hands read apart)
MESH_COLORS = {"right": (225, 170, 140), "left": (160, 180, 215)}

#: palm outline in OpenPose indices: wrist, thumb base, then the four finger bases
PALM_POLYGON = (0, 1, 5, 9, 13, 17)
#: metres: physical radius of a drawn bone and of a drawn joint dot (their pixel size follows perspective)
BONE_RADIUS_M = 0.004
JOINT_RADIUS_M = 0.005
_NEAR_M = 0.01  # anything closer to the camera than this is not drawn

_BONE_COLOR = np.zeros((NUM_JOINTS, 3), np.int64)  # colour of the bone ending at each joint
for _finger, _idx in OPENPOSE_FINGERS.items():
    _BONE_COLOR[list(_idx)] = FINGER_COLORS[_finger]
_BONE_COLOR[[1, 5, 9, 13, 17]] = PALM_COLOR  # wrist -> finger bases belong to the palm


@dataclass
class HandTrack:
    """One hand over T frames, in the frame of the camera it is rendered with (metres).

    joints: (T, 21, 3) OpenPose order; verts: (T, V, 3) and faces: (F, 3) for a mesh; valid: (T,) bool.
    """

    joints: np.ndarray
    side: str = "right"
    verts: np.ndarray | None = None
    faces: np.ndarray | None = None
    valid: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_side(self.side)
        self.joints = np.asarray(self.joints, np.float64)
        if self.joints.ndim == 2:
            self.joints = self.joints[None]
        if self.joints.ndim != 3 or self.joints.shape[1:] != (NUM_JOINTS, 3):
            raise InputError("HandTrack", "joints", "shape (T, 21, 3)", str(self.joints.shape))
        T = self.joints.shape[0]
        if (self.verts is None) != (self.faces is None):
            raise InputError("HandTrack", "verts/faces", "both or neither", "only one")
        if self.verts is not None:
            self.verts = np.asarray(self.verts, np.float64)
            if self.verts.ndim == 2:
                self.verts = self.verts[None]
            if self.verts.ndim != 3 or self.verts.shape[0] != T or self.verts.shape[2] != 3:
                raise InputError("HandTrack", "verts", f"shape ({T}, V, 3)", str(self.verts.shape))
            self.faces = np.asarray(self.faces)
            if (
                self.faces.ndim != 2
                or self.faces.shape[1] != 3
                or not np.issubdtype(self.faces.dtype, np.integer)
            ):
                raise InputError(
                    "HandTrack",
                    "faces",
                    "an integer array of shape (F, 3)",
                    f"{self.faces.dtype} {self.faces.shape}",
                )
            if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= self.verts.shape[1]):
                raise InputError(
                    "HandTrack", "faces", f"vertex indices in [0, {self.verts.shape[1]})", "out of range"
                )
        self.valid = np.ones(T, bool) if self.valid is None else np.asarray(self.valid, bool)
        if self.valid.shape != (T,):
            raise InputError("HandTrack", "valid", f"shape ({T},)", str(self.valid.shape))
        # non-finite joints (lost tracking) are not drawn
        self.valid = self.valid & np.isfinite(self.joints).all(axis=(1, 2))

    def __len__(self) -> int:
        return self.joints.shape[0]

    def transformed(self, R: np.ndarray, t: np.ndarray) -> HandTrack:
        """Points p -> R p + t (e.g. into a virtual camera's frame)."""
        return HandTrack(
            joints=self.joints @ R.T + t,
            side=self.side,
            verts=None if self.verts is None else self.verts @ R.T + t,
            faces=self.faces,
            valid=self.valid,
        )


def track_from_motion(
    motion: HandMotion, hand_model: HandModel | str | None = None, mano_dir: str | None = None
) -> HandTrack:
    """Joints (and, for a model with a mesh, vertices) of a ``HandMotion`` through a hand model.

    ``hand_model``: a ``HandModel`` of the motion's side, a model name, or None (the motion's own
    ``hand_model`` name); see ``handvla.hand.registry.motion_output``.
    """
    model = hand_model_for(motion, hand_model, mano_dir, "track_from_motion")
    out = motion_output(motion, model)
    verts = faces = None
    if out.verts is not None and getattr(model, "faces", None) is not None:
        verts = out.verts.numpy()
        faces = np.asarray(model.faces.cpu() if hasattr(model.faces, "cpu") else model.faces, np.int64)
    return HandTrack(
        joints=out.joints.numpy(), side=motion.side, verts=verts, faces=faces, valid=motion.valid
    )


def _as_tracks(hands) -> list[HandTrack]:
    """Accept a HandTrack, a HandMotion, a dict side -> either, or a sequence of them."""
    if isinstance(hands, (HandTrack, HandMotion)):
        hands = [hands]
    elif isinstance(hands, Mapping):
        hands = list(hands.values())
    out = []
    for h in hands:
        if isinstance(h, HandMotion):
            h = track_from_motion(h)
        if not isinstance(h, HandTrack):
            raise InputError(
                "render",
                "hands",
                "HandTrack / HandMotion objects (or a dict or list of them)",
                type(h).__name__,
            )
        out.append(h)
    if not out:
        raise InputError("render", "hands", "at least one hand", "none")
    return out


# ---------------------------------------------------------------------------------------------------------
# Virtual camera
# ---------------------------------------------------------------------------------------------------------


def _all_points(tracks: Sequence[HandTrack]) -> np.ndarray:
    pts = []
    for tr in tracks:
        pts.append(tr.joints[tr.valid].reshape(-1, 3))
        if tr.verts is not None:
            pts.append(tr.verts[tr.valid].reshape(-1, 3))
    p = np.concatenate(pts) if pts else np.zeros((0, 3))
    return p[np.isfinite(p).all(1)]


def view_rotation(azimuth_deg: float = 0.0, elevation_deg: float = 0.0) -> np.ndarray:
    """(3, 3) rotation from the source camera frame into a virtual camera turned by ``azimuth`` (about the
    vertical image axis, positive = the camera moves to the right) and ``elevation`` (positive = the camera
    moves up and looks down)."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    # Camera axes in the source frame: turn about y (down) by -a, then tilt about the new x by -e.
    Ry = np.array([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
    Rx = np.array([[1, 0, 0], [0, math.cos(e), math.sin(e)], [0, -math.sin(e), math.cos(e)]])
    C = Ry @ Rx  # columns = virtual camera axes in source coordinates
    return C.T


def auto_view(
    tracks: Sequence[HandTrack],
    width: int,
    height: int,
    view: tuple[float, float] = (0.0, 0.0),
    fov_deg: float = 40.0,
    margin: float = 1.08,
) -> tuple[Camera, np.ndarray, np.ndarray]:
    """A virtual camera that keeps every valid point of every frame in view.

    Returns (camera, R, t): points go into the virtual camera frame as ``R p + t``. The camera looks at the
    centre of the points' bounding box from a distance at which their bounding sphere fits the field of view.
    """
    p = _all_points(tracks)
    if len(p) == 0:
        centre, radius = np.array([0.0, 0.0, 0.5]), 0.1
    else:
        centre = 0.5 * (p.min(0) + p.max(0))
        radius = max(float(np.linalg.norm(p - centre, axis=1).max()), 0.02)
    half = math.radians(fov_deg) / 2
    dist = margin * radius / math.sin(half)
    f = 0.5 * min(width, height) / math.tan(half)
    R = view_rotation(*view)
    t = np.array([0.0, 0.0, dist]) - R @ centre
    return Camera(f, f, width / 2, height / 2, int(width), int(height)), R, t


# ---------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@lru_cache(maxsize=512)
def _text_patch(text: str, size: int) -> Image.Image:
    """White text with a dark outline on a transparent RGBA patch (made once per text: drawing text with an
    outline costs far more than pasting it)."""
    font, stroke = _font(size), max(1, size // 8)
    x0, y0, x1, y1 = font.getbbox(text, stroke_width=stroke, anchor="la")
    patch = Image.new("RGBA", (max(1, x1 - x0), max(1, y1 - y0)), (0, 0, 0, 0))
    ImageDraw.Draw(patch).text(
        (-x0, -y0),
        text,
        fill=(255, 255, 255, 255),
        font=font,
        anchor="la",
        stroke_width=stroke,
        stroke_fill=(0, 0, 0, 255),
    )
    return patch


def _text(img: Image.Image, xy: tuple[float, float], text: str, size: int, anchor: str = "la") -> None:
    """Paste readable text; ``anchor``: 'la' = xy is the top left, 'ld' = bottom left, 'mt' = top centre."""
    patch = _text_patch(text, size)
    x, y = xy
    if anchor == "ld":
        y -= patch.height
    elif anchor == "mt":
        x -= patch.width / 2
    img.paste(patch, (int(round(x)), int(round(y))), patch)


def _shade(color: np.ndarray, z: np.ndarray, z_near: float, z_far: float) -> np.ndarray:
    """Depth cue: farther things a little darker. color (N, 3), z (N,) -> (N, 3) int."""
    k = 1.0 - 0.35 * np.clip((z - z_near) / max(z_far - z_near, 1e-6), 0, 1)
    return np.clip(color * k[:, None], 0, 255).astype(np.int64)


_CHILD = np.arange(1, NUM_JOINTS)
_PARENT = OPENPOSE_PARENTS[1:]
_PALM_IDX = list(PALM_POLYGON)


def _skeleton_items(tr: HandTrack, t: int, cam: Camera, palm: bool, scale: float) -> list[tuple]:
    """Drawable items (depth, kind, data, colour, extra) of one hand's skeleton at frame t. Kinds: 0 polygon,
    1 line (extra = width), 2 dot (data = x, y, radius; extra = outline colour)."""
    uv, z = cam.project(tr.joints[t]), tr.joints[t, :, 2]  # (21, 2), (21,)
    ok = (z > _NEAR_M) & np.isfinite(uv).all(1)
    if not ok.any():
        return []
    zmin, zmax = float(z[ok].min()), float(z[ok].max())
    f = 0.5 * (cam.fx + cam.fy)
    bone_ok = ok[_CHILD] & ok[_PARENT]
    zb = 0.5 * (z[_CHILD] + z[_PARENT])
    colors = _shade(_BONE_COLOR[_CHILD].astype(np.float64), zb, zmin - 0.02, zmax + 0.02)
    widths = np.maximum(1, np.round(2 * f * BONE_RADIUS_M * scale / np.where(bone_ok, zb, 1.0))).astype(int)
    # a dot sorts just in front of the bones that meet at it (a bone sorts by its middle)
    dot_z = z.astype(np.float64).copy()
    np.minimum.at(dot_z, _CHILD, np.where(bone_ok, zb, np.inf))
    np.minimum.at(dot_z, _PARENT, np.where(bone_ok, zb, np.inf))
    radii = np.maximum(1.0, f * JOINT_RADIUS_M * scale / np.where(ok, z, 1.0))
    # plain Python numbers from here: PIL takes them much faster than numpy scalars
    uvl, zbl, dzl = uv.tolist(), zb.tolist(), (dot_z - 1e-4).tolist()
    items = [
        (zbl[k], 1, (uvl[p], uvl[c]), tuple(col), w)
        for k, (c, p, col, w) in enumerate(
            zip(_CHILD.tolist(), _PARENT.tolist(), colors.tolist(), widths.tolist())
        )
        if bone_ok[k]
    ]
    dot_fill = (255, 255, 255) if tr.side == "right" else (40, 40, 40)
    dot_line = (40, 40, 40) if tr.side == "right" else (255, 255, 255)
    items += [(dzl[i], 2, (*uvl[i], r), dot_fill, dot_line) for i, r in enumerate(radii.tolist()) if ok[i]]
    if palm and ok[_PALM_IDX].all():
        zp = float(z[_PALM_IDX].mean()) + 0.01  # behind its own bones
        col = (235, 210, 190) if tr.side == "right" else (190, 205, 230)
        items.append((zp, 0, [tuple(uvl[i]) for i in _PALM_IDX], col, None))
    return items


@dataclass
class _MeshBatch:
    """Triangles of a frame ready to paint: flat pixel coords (N, 6), colours (N, 3) and depths (N,)."""

    coords: np.ndarray
    colors: np.ndarray
    depth: np.ndarray


def _mesh_batch(tr: HandTrack, t: int, cam: Camera, winding: float, cull: bool) -> _MeshBatch:
    """Flat-shaded triangles of one hand's mesh at frame t (headlight at the camera)."""
    v = tr.verts[t]  # (V, 3)
    uv, z = cam.project(v), v[:, 2]
    tri = v[tr.faces]  # (F, 3, 3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]) * winding  # outward normals
    area2 = np.linalg.norm(n, axis=1)
    n /= area2[:, None] + 1e-12
    centre = tri.mean(1)
    view = centre / (np.linalg.norm(centre, axis=1, keepdims=True) + 1e-12)
    cos = -(n * view).sum(1)  # > 0: the face looks at the camera
    zf = z[tr.faces]  # (F, 3)
    fuv = uv[tr.faces]  # (F, 3, 2)
    # degenerate faces (zero area) cover nothing
    good = (zf > _NEAR_M).all(1) & np.isfinite(fuv).all((1, 2)) & (area2 > 1e-12)
    if cull:  # faces turned away are hidden by nearer ones on a closed surface: skip them (2x faster)
        good &= cos > 0
    light = 0.35 + 0.65 * np.abs(cos[good])  # two-sided where not culled (the inside of the open wrist)
    base = np.asarray(MESH_COLORS[tr.side], np.float64)
    col = np.clip(base[None] * light[:, None], 0, 255).astype(np.int64)
    return _MeshBatch(fuv[good].reshape(-1, 6), col, zf[good].mean(1))


def _mesh_winding(tr: HandTrack) -> float:
    """+1 if the faces wind counter-clockwise seen from outside (normals = cross product point out), else -1,
    from the signed volume at the first valid frame (positive for outward normals of a closed surface)."""
    ts = np.nonzero(tr.valid)[0]
    if len(ts) == 0:
        return 1.0
    tri = tr.verts[ts[0]][tr.faces]
    c = tri.reshape(-1, 3).mean(0)
    vol = np.einsum("ij,ij->i", tri[:, 0] - c, np.cross(tri[:, 1] - c, tri[:, 2] - c)).sum()
    return 1.0 if vol >= 0 else -1.0


def _paint(draw: ImageDraw.ImageDraw, items: list[tuple], meshes: list[_MeshBatch]) -> None:
    """Paint skeleton items and mesh triangles together, far to near."""
    if meshes:
        coords = np.concatenate([m.coords for m in meshes]).tolist()
        colors = [tuple(c) for c in np.concatenate([m.colors for m in meshes]).tolist()]
        depth = np.concatenate([m.depth for m in meshes] + [np.array([it[0] for it in items], np.float64)])
    else:
        coords, colors = [], []
        depth = np.array([it[0] for it in items], np.float64)
    nf = len(coords)
    polygon, line, ellipse = draw.polygon, draw.line, draw.ellipse
    for k in np.argsort(-depth, kind="stable").tolist():
        if k < nf:
            polygon(coords[k], fill=colors[k])
            continue
        _, kind, data, color, extra = items[k - nf]
        if kind == 0:
            polygon(data, fill=color)
        elif kind == 1:
            line(data, fill=color, width=extra)
        else:
            x, y, r = data
            ellipse((x - r, y - r, x + r, y + r), fill=color, outline=extra)


def _background_frame(background, t: int) -> np.ndarray:
    """Frame t of a background: a function of t, one image, or a video held on its last frame."""
    if callable(background):
        return np.asarray(background(t), np.uint8)
    if background.ndim == 3:
        return background
    return background[min(t, len(background) - 1)]


def iter_frames(
    hands,
    *,
    width: int = 320,
    height: int = 320,
    camera: Camera | None = None,
    view: tuple[float, float] = (0.0, 0.0),
    background: np.ndarray | Callable[[int], np.ndarray] | None = None,
    bg_color: tuple[int, int, int] = (24, 24, 28),
    mode: str = "auto",
    palm: bool = True,
    title: str | None = None,
    labels: Sequence[str] | Callable[[int], str] | None = None,
    side_tags: bool = False,
    num_frames: int | None = None,
    scale: float = 1.0,
    cull_backfaces: bool = True,
) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 frames of one or more hands.

    hands: HandTrack(s) / HandMotion(s) (a list or a dict side -> hand). camera: render in that camera
    (points in its frame); else an automatic virtual camera of ``width`` x ``height`` turned by ``view``.
    background: an (H, W, 3) image or a (T, H, W, 3) video (uint8, held on its last frame) or a function
    frame -> image; it sets the size when given. mode: 'skeleton', 'mesh' or 'auto' (mesh where a hand has
    one). title: text at the top; labels: per-frame text at the bottom (a list or a function of the frame).
    side_tags: write L / R next to each wrist. scale: multiplies bone and dot sizes. cull_backfaces: skip
    mesh faces turned away from the camera (hidden anyway on a closed surface; set False to see into an
    open mesh such as MANO's wrist).
    """
    tracks = _as_tracks(hands)
    if mode not in ("auto", "skeleton", "mesh"):
        raise InputError("render", "mode", "'auto', 'skeleton' or 'mesh'", repr(mode))
    if mode == "mesh" and any(tr.verts is None for tr in tracks):
        raise InputError(
            "render", "mode", "hands with verts and faces for mode='mesh'", "a hand without a mesh"
        )
    if background is not None and not callable(background):
        background = np.asarray(background)
        if background.dtype != np.uint8 or background.ndim not in (3, 4) or background.shape[-1] != 3:
            raise InputError(
                "render",
                "background",
                "uint8 (H, W, 3) or (T, H, W, 3)",
                f"{background.dtype} {background.shape}",
            )
        if background.ndim == 4 and len(background) == 0:
            raise InputError("render", "background", "at least one frame", "an empty video")
        height, width = background.shape[-3:-1]
    if camera is None:
        if background is not None:
            raise InputError(
                "render", "camera", "the camera (intrinsics) of the background to overlay on", "none"
            )
        camera, R, t = auto_view(tracks, width, height, view)
        tracks = [tr.transformed(R, t) for tr in tracks]
    elif (
        background is not None
        and not callable(background)
        and (camera.width, camera.height) != (width, height)
    ):
        raise InputError(
            "render",
            "camera",
            f"the background's size {width} x {height}",
            f"{camera.width} x {camera.height}",
        )
    cam = camera
    T = num_frames if num_frames is not None else max(len(tr) for tr in tracks)
    windings = [_mesh_winding(tr) if tr.verts is not None else 1.0 for tr in tracks]
    use_mesh = [tr.verts is not None and mode != "skeleton" for tr in tracks]
    text_size = max(10, cam.height // 22)
    bg = np.empty((cam.height, cam.width, 3), np.uint8)
    bg[:] = bg_color
    for ti in range(T):
        frame = bg if background is None else _background_frame(background, ti)
        if frame.shape != (cam.height, cam.width, 3):
            raise InputError(
                "render", "background", f"frames of {cam.height} x {cam.width}", str(frame.shape)
            )
        img = Image.fromarray(frame)  # copies, so the background is never drawn on
        draw = ImageDraw.Draw(img)
        items: list[tuple] = []
        meshes: list[_MeshBatch] = []
        tags = []
        for tr, w, mesh in zip(tracks, windings, use_mesh):
            if ti >= len(tr) or not tr.valid[ti]:
                continue
            if mesh:
                meshes.append(_mesh_batch(tr, ti, cam, w, cull_backfaces))
            else:
                items += _skeleton_items(tr, ti, cam, palm, scale)
            if side_tags:
                uv, z = cam.project(tr.joints[ti, 0]), tr.joints[ti, 0, 2]
                if z > _NEAR_M and np.isfinite(uv).all():
                    tags.append((uv, "R" if tr.side == "right" else "L"))
        _paint(draw, items, meshes)
        for uv, tag in tags:
            _text(img, (float(uv[0]), float(uv[1]) + 4), tag, text_size, anchor="mt")
        if title:
            _text(img, (6, 4), title, text_size)
        if labels is not None:
            label = labels(ti) if callable(labels) else (labels[ti] if ti < len(labels) else "")
            if label:
                _text(img, (6, cam.height - 4), label, text_size, anchor="ld")
        yield np.asarray(img)


def render_frames(hands, **kwargs) -> np.ndarray:
    """All frames of ``iter_frames`` as a (T, H, W, 3) uint8 array (same arguments)."""
    frames = list(iter_frames(hands, **kwargs))
    return np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)


def iter_side_by_side(
    before,
    after,
    *,
    titles: tuple[str, str] = ("before", "after"),
    width: int = 320,
    height: int = 320,
    camera: Camera | None = None,
    view: tuple[float, float] = (0.0, 0.0),
    background: np.ndarray | None = None,
    gap: int = 4,
    **kwargs,
) -> Iterator[np.ndarray]:
    """Yield (H, 2W + gap, 3) frames: ``before`` on the left, ``after`` on the right, under ONE camera
    (the given one, or a virtual camera framing both), so positions can be compared across the two panels.
    The shorter motion holds its last frame."""
    a, b = _as_tracks(before), _as_tracks(after)
    if camera is None and background is None:
        camera, R, t = auto_view(a + b, width, height, view)
        a = [tr.transformed(R, t) for tr in a]
        b = [tr.transformed(R, t) for tr in b]
    T = max(len(tr) for tr in a + b)

    def held(tracks):  # hold each hand's last frame so both panels run for T frames
        out = []
        for tr in tracks:
            idx = np.minimum(np.arange(T), len(tr) - 1)
            out.append(
                HandTrack(
                    tr.joints[idx],
                    tr.side,
                    None if tr.verts is None else tr.verts[idx],
                    tr.faces,
                    tr.valid[idx],
                )
            )
        return out

    common = dict(width=width, height=height, camera=camera, background=background, num_frames=T, **kwargs)
    left = iter_frames(held(a), title=titles[0], **common)
    right = iter_frames(held(b), title=titles[1], **common)
    for fa, fb in zip(left, right):
        sep = np.full((fa.shape[0], gap, 3), 255, np.uint8)
        yield np.concatenate([fa, sep, fb], axis=1)


def render_side_by_side(before, after, **kwargs) -> np.ndarray:
    """All frames of ``iter_side_by_side`` as a (T, H, 2W + gap, 3) uint8 array."""
    return np.stack(list(iter_side_by_side(before, after, **kwargs)))


def render_video(path: str | Path, hands, fps: float = 15.0, compare=None, **kwargs) -> Path:
    """Render hands (and, with ``compare``, a side-by-side against a second set) to an MP4 or GIF file,
    chosen by the extension, written atomically. Other arguments as ``iter_frames`` / ``iter_side_by_side``."""
    frames = iter_frames(hands, **kwargs) if compare is None else iter_side_by_side(hands, compare, **kwargs)
    with VideoWriter(path, fps=fps) as w:
        w.write_all(frames)
    return Path(path)


def render_motions(
    path: str | Path,
    motions,
    compare=None,
    hand_model=None,
    mano_dir: str | None = None,
    fps: float | None = None,
    **kwargs,
) -> Path:
    """HandMotion(s) (one, a list, or a dict side -> motion) to a video through a hand model (a model name
    or None for each motion's own, see ``track_from_motion``); ``compare`` gives a second set for a
    side-by-side (e.g. ground truth vs reconstruction). fps defaults to the motions' own."""

    def tracks(ms):
        if isinstance(ms, HandMotion):
            ms = [ms]
        elif isinstance(ms, Mapping):
            ms = list(ms.values())
        ms = list(ms)
        for m in ms:
            if not isinstance(m, HandMotion):
                raise InputError("render_motions", "motions", "HandMotion objects", type(m).__name__)
        return ms, [track_from_motion(m, hand_model, mano_dir) for m in ms]

    ms, a = tracks(motions)
    b = None if compare is None else tracks(compare)[1]
    if fps is None:
        fps = float(ms[0].fps)
    return render_video(path, a, fps=fps, compare=b, **kwargs)
