"""A CPU renderer for HandWorld: per-pixel ray casting of analytic shapes in numpy (no OpenGL).

Every pixel casts one ray from the camera centre through its centre: pixel (col j, row i) spans
[j, j+1) x [i, i+1) in the coordinates of ``u = fx X/Z + cx, v = fy Y/Z + cy`` (``handvla.camera``'s
convention: origin at the top-left corner of the image), so its ray goes through (j + 0.5, i + 0.5) and a
point projecting to (u, v) is drawn in pixel (floor(u), floor(v)). The ray is intersected exactly with
- the table top (the world plane z = 0 inside the table rectangle, two-tone checker texture) and a floor,
- each object (box, cylinder, sphere) in its own frame, at the pose given for this frame,
- each hand as capsules along its 21-joint skeleton (bones, a filled palm, a forearm),
and the nearest hit wins (a z-buffer on the ray parameter, so occlusion between hands and objects is
depth-correct). Shading is Lambert with one directional light plus ambient, and the table receives hard
shadows of objects and hands (shadow rays towards the light), so the image shows how high a hand is.

The renderer also returns its own 2D joint positions (the projected joint centres), per-pixel depth
(camera z, metres), and a label image (background, table, objects, hands) for checks and ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from handvla.camera import Camera
from handvla.errors import InputError
from handvla.hand.topology import OPENPOSE_PARENTS, check_side
from handvla.synth.handworld.cameras import make_camera
from handvla.synth.handworld.scene import TABLE_COLOURS, Scene, SceneObject, sample_scene

LABEL_BACKGROUND = 0
LABEL_TABLE = 1
LABEL_FLOOR = 2
#: object ``k`` is labelled ``LABEL_OBJECT0 + k``
LABEL_OBJECT0 = 10
HAND_LABELS = {"right": 100, "left": 101}
ARM_LABELS = {"right": 110, "left": 111}

SKIN_RGB = np.array([0.88, 0.66, 0.52])
SLEEVE_RGB = np.array([0.20, 0.24, 0.32])
FLOOR_RGB = np.array([0.30, 0.28, 0.26])
FLOOR_Z_M = -0.75
_NEAR_M = 0.02
_AMBIENT = 0.38
_DIFFUSE = 0.62
_SHADOW = 0.55  # fraction of the diffuse light that a shadow removes


@dataclass
class RenderResult:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth_m: np.ndarray  # (H, W) float32 camera-frame z in metres, inf where nothing was hit
    labels: np.ndarray  # (H, W) int16, see LABEL_* / HAND_LABELS / ARM_LABELS
    joints_2d: dict[str, np.ndarray] = field(default_factory=dict)  # side -> (21, 2) pixels (u, v)
    #: side -> (21,) bool: the joint's pixel shows this hand (in the image, not hidden by objects or the arm)
    joints_visible: dict[str, np.ndarray] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Ray-shape intersections. Rays: origins origin (..., 3) and unit directions D (..., 3), broadcastable.
# Each returns the ray parameter t (...,) of the first hit in front of the origin (inf for a miss).
# ---------------------------------------------------------------------------------------------------------


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of broadcastable (..., 3) arrays; a matrix-vector product when one is a
    single vector (primary rays share their origin, shadow rays their direction), which is much faster."""
    if a.ndim == 1:
        return b @ a
    if b.ndim == 1:
        return a @ b
    return np.einsum("...i,...i->...", a, b)


def intersect_sphere(origin: np.ndarray, D: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    oc = origin - centre
    b = _dot(oc, D)
    c = _dot(oc, oc) - radius * radius
    h = b * b - c
    sq = np.sqrt(np.maximum(h, 0.0))
    t = -b - sq
    t = np.where(t > 1e-9, t, -b + sq)  # origin inside: the far root
    return np.where((h >= 0) & (t > 1e-9), t, np.inf)


def intersect_box(O_l: np.ndarray, D_l: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box ``[-half, half]`` in the ray's (local) frame. Returns t and the local normal."""
    D_safe = np.where(np.abs(D_l) < 1e-12, 1e-12, D_l)
    t1 = (-half - O_l) / D_safe
    t2 = (half - O_l) / D_safe
    tmin = np.minimum(t1, t2)
    tmax = np.maximum(t1, t2)
    tn = tmin.max(-1)
    tf = tmax.min(-1)
    hit = (tn <= tf) & (tn > 1e-9)
    axis = tmin.argmax(-1)
    n = np.zeros(np.broadcast_shapes(O_l.shape, D_l.shape))
    sign = -np.sign(np.take_along_axis(np.broadcast_to(D_l, n.shape), axis[..., None], -1))
    np.put_along_axis(n, axis[..., None], sign, -1)
    return np.where(hit, tn, np.inf), n


def intersect_cylinder(
    O_l: np.ndarray, D_l: np.ndarray, radius: float, half_height: float
) -> tuple[np.ndarray, np.ndarray]:
    """Closed cylinder along the local z axis, centred at the origin. Returns t and the local normal."""
    ox, oy, oz = O_l[..., 0], O_l[..., 1], O_l[..., 2]
    dx, dy, dz = D_l[..., 0], D_l[..., 1], D_l[..., 2]
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - radius * radius
    h = b * b - a * c
    a_safe = np.where(a < 1e-12, 1e-12, a)
    t_side = (-b - np.sqrt(np.maximum(h, 0))) / a_safe
    z_side = oz + t_side * dz
    side_ok = (h >= 0) & (a > 1e-12) & (t_side > 1e-9) & (np.abs(z_side) <= half_height)
    t_side = np.where(side_ok, t_side, np.inf)
    dz_safe = np.where(np.abs(dz) < 1e-12, 1e-12, dz)
    best_cap = np.full(np.shape(t_side), np.inf)
    cap_sign = np.zeros(np.shape(t_side))
    for s in (-1.0, 1.0):
        t_cap = (s * half_height - oz) / dz_safe
        x = ox + t_cap * dx
        y = oy + t_cap * dy
        ok = (t_cap > 1e-9) & (x * x + y * y <= radius * radius) & (t_cap < best_cap)
        best_cap = np.where(ok, t_cap, best_cap)
        cap_sign = np.where(ok, s, cap_sign)
    t = np.minimum(t_side, best_cap)
    p = O_l + np.where(np.isfinite(t_side), t_side, 0)[..., None] * D_l
    n_side = np.stack([p[..., 0], p[..., 1], np.zeros_like(p[..., 0])], -1) / radius
    n_cap = np.stack([np.zeros_like(cap_sign), np.zeros_like(cap_sign), cap_sign], -1)
    n = np.where((t_side <= best_cap)[..., None], n_side, n_cap)
    return t, n


def intersect_capsules(
    origin: np.ndarray, D: np.ndarray, A: np.ndarray, B: np.ndarray, radius: np.ndarray
) -> np.ndarray:
    """Rays against K capsules (segments A (K, 3) -> B (K, 3) swept by spheres of ``radius`` (K,)).

    origin, D: (P, 3) or one shared (3,). Returns t (P, K) (inf for a miss). The body is a quadratic in t kept
    where the hit lies within the segment's span; the rounded ends are the spheres at A and B, whose
    quadratics reuse the same dot products (for B: origin - B = (origin - A) - (B - A)).
    """
    origin = np.asarray(origin, np.float64)
    D = np.asarray(D, np.float64)
    A = np.asarray(A, np.float64).reshape(-1, 3)
    ba = np.asarray(B, np.float64).reshape(-1, 3) - A  # (K, 3)
    r2 = np.asarray(radius, np.float64).reshape(-1) ** 2  # (K,)
    baba = np.einsum("kc,kc->k", ba, ba)
    oa = (origin[None, None] if origin.ndim == 1 else origin[:, None]) - A[None]  # (P or 1, K, 3)
    bard = D @ ba.T  # (P, K) or (K,)
    baoa = np.einsum("pkc,kc->pk", oa, ba)
    rdoa = oa @ D if D.ndim == 1 else np.einsum("pkc,pc->pk", oa, D)
    oaoa = np.einsum("pkc,pkc->pk", oa, oa)
    qa = baba - bard * bard
    qb = baba * rdoa - baoa * bard
    qc = baba * oaoa - baoa * baoa - r2 * baba
    h = qb * qb - qa * qc
    qa_safe = np.where(np.abs(qa) < 1e-15, 1e-15, qa)
    t_body = (-qb - np.sqrt(np.maximum(h, 0))) / qa_safe
    y = baoa + t_body * bard
    t = np.where((h >= 0) & (np.abs(qa) >= 1e-15) & (y > 0) & (y < baba) & (t_body > 1e-9), t_body, np.inf)
    for b, c in ((rdoa, oaoa - r2), (rdoa - bard, oaoa - 2 * baoa + baba - r2)):  # end spheres A, B
        hh = b * b - c
        ts = -b - np.sqrt(np.maximum(hh, 0))
        t = np.where((hh >= 0) & (ts > 1e-9) & (ts < t), ts, t)
    return t


def capsule_normals(P: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Outward normals at points P (N, 3) on capsules A (N, 3) -> B (N, 3)."""
    ba = B - A
    s = np.clip(_dot(P - A, ba) / np.maximum(_dot(ba, ba), 1e-15), 0, 1)
    n = P - (A + s[:, None] * ba)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------------------------
# Hand geometry: capsules along the skeleton
# ---------------------------------------------------------------------------------------------------------

#: default shoulder positions (world frame, metres) that the arms hang from; the user sits at y < 0
SHOULDERS_WORLD = {"right": np.array([0.19, -0.35, 0.28]), "left": np.array([-0.19, -0.35, 0.28])}
UPPER_ARM_M = 0.29
FOREARM_M = 0.26


def elbow_position(
    wrist: np.ndarray, shoulder: np.ndarray, hand_dir: np.ndarray, up: np.ndarray
) -> np.ndarray:
    """Where the elbow of a two-segment arm (``UPPER_ARM_M``, ``FOREARM_M``) goes for a given wrist.

    The elbow lies on the circle of points at the two segment lengths from shoulder and wrist; of those,
    the one nearest to "a forearm continuing the hand backwards, sagging a little" is taken. A wrist out
    of reach stretches the arm along the shoulder -> wrist line."""
    L1, L2 = UPPER_ARM_M, FOREARM_M
    v = wrist - shoulder
    d = float(np.linalg.norm(v))
    a = v / max(d, 1e-9)
    if d >= L1 + L2:
        return shoulder + a * d * L1 / (L1 + L2)
    d = max(d, abs(L1 - L2) + 1e-6)
    x = (d * d + L1 * L1 - L2 * L2) / (2 * d)  # along the axis from the shoulder to the circle's centre
    rho = math.sqrt(max(L1 * L1 - x * x, 0.0))
    c = shoulder + x * a
    pref = wrist - L2 * hand_dir - 0.08 * up - c
    u = pref - (pref @ a) * a
    if np.linalg.norm(u) < 1e-9:
        u = -up - (-up @ a) * a
    return c + rho * u / max(np.linalg.norm(u), 1e-12)


def hand_capsules(
    joints: np.ndarray, side: str, shoulder: np.ndarray | None = None, up: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """Capsules for a hand with joints (21, 3) in OpenPose order (any frame, metres), and its arm.

    ``shoulder`` and ``up`` (the world's up direction), both in the joints' frame, place the arm; without
    a shoulder the forearm continues the hand backwards. Returns A (K, 3), B (K, 3), radius (K,),
    rgb (K, 3), is_arm (K,) bool; the hand's own capsules come first.
    """
    check_side(side)
    j = np.asarray(joints, np.float64)
    if j.shape != (21, 3):
        raise InputError("hand_capsules", "joints", "shape (21, 3)", str(j.shape))
    A, B, R = [], [], []
    for i in range(1, 21):
        p = int(OPENPOSE_PARENTS[i])
        seg = (i - 1) % 4  # 0: wrist -> base, 1..3 phalanges
        if i <= 4:  # thumb, thicker at its base (thenar)
            r = (0.014, 0.0115, 0.010, 0.0088)[seg]
        else:
            r = (0.011, 0.0098, 0.0088, 0.0078)[seg]
            if i >= 17:  # little finger
                r *= 0.88
        A.append(j[p])
        B.append(j[i])
        R.append(r)
    wrist, mcp = j[0], j[[5, 9, 13, 17]]
    for a, b in zip(mcp[:-1], mcp[1:]):  # knuckle line
        A.append(a)
        B.append(b)
        R.append(0.010)
    for a, b in zip(mcp[:-1], mcp[1:]):  # fill between the metacarpals
        A.append(wrist)
        B.append((a + b) / 2)
        R.append(0.0115)
    A.append((wrist + mcp[0]) / 2)  # across the middle of the palm
    B.append((wrist + mcp[3]) / 2)
    R.append(0.0125)
    A.append(wrist)  # the wrist itself, a little wider than the hand's bones
    B.append(wrist + 0.25 * (j[9] - wrist))
    R.append(0.019)
    rgb = [SKIN_RGB] * len(A)
    is_arm = [False] * len(A)
    hand_dir = j[9] - wrist
    hand_dir /= max(np.linalg.norm(hand_dir), 1e-9)
    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, np.float64)
    if shoulder is None:
        elbow = wrist - FOREARM_M * hand_dir
    else:
        shoulder = np.asarray(shoulder, np.float64)
        elbow = elbow_position(wrist, shoulder, hand_dir, up)
    f = elbow - wrist
    f /= max(np.linalg.norm(f), 1e-9)
    cuff = wrist + 0.06 * f
    A += [wrist + 0.01 * f, cuff]  # bare wrist, then the sleeve to the elbow
    B += [cuff, elbow]
    R += [0.022, 0.030]
    rgb += [SKIN_RGB, SLEEVE_RGB]
    is_arm += [True, True]
    if shoulder is not None:
        A.append(elbow)
        B.append(shoulder)
        R.append(0.038)
        rgb.append(SLEEVE_RGB)
        is_arm.append(True)
    return np.array(A), np.array(B), np.array(R), np.array(rgb), np.array(is_arm)


def _capsule_groups(is_arm: np.ndarray) -> list[np.ndarray]:
    """Capsules tested together over one screen box: all of the hand's (small, close together; one call
    costs less than many small ones), then each arm capsule alone (long, they span much of the image)."""
    return [np.flatnonzero(~is_arm)] + [np.array([k]) for k in np.flatnonzero(is_arm)]


# ---------------------------------------------------------------------------------------------------------
# The renderer
# ---------------------------------------------------------------------------------------------------------


#: which of (lo, hi) each of the 8 corners of a box takes per axis
_CORNER_MASK = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], bool)


@dataclass
class _StaticLayer:
    """What does not change while only some objects and the hands move: buffers with the table, floor
    and the resting objects drawn, and which table pixels those objects shadow."""

    scene: Scene
    static_ids: tuple[int, ...]
    static_poses: dict[int, np.ndarray]
    t: np.ndarray  # (H, W) ray parameter of the nearest hit
    label: np.ndarray  # (H, W)
    albedo: np.ndarray  # (H, W, 3)
    normal: np.ndarray  # (H, W, 3) camera frame
    table_xy: np.ndarray  # (H, W, 2) world x, y where the ray meets z = 0 (used on table pixels only)
    blocked: np.ndarray  # (H, W) bool: table pixel in the shadow of a resting object


class Renderer:
    """Renders HandWorld frames for one camera.

    The ray grid is computed once; the table, floor and objects that stay at their scene pose are drawn
    once per scene and reused, so a frame costs the moving objects, the hands and the shading.
    """

    def __init__(
        self, camera: Camera, shadows: bool = True, shoulders_world: dict[str, np.ndarray] | None = None
    ):
        self.camera = camera
        self.shadows = shadows
        #: where the forearms point to (world frame, per side)
        self.shoulders_world = {**SHOULDERS_WORLD, **(shoulders_world or {})}
        W, H = camera.width, camera.height
        u, v = np.meshgrid(np.arange(W, dtype=np.float64) + 0.5, np.arange(H, dtype=np.float64) + 0.5)
        d = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], -1)
        self.rays = d / np.linalg.norm(d, axis=-1, keepdims=True)  # (H, W, 3) unit, camera frame
        self.R = camera.extrinsics[:3, :3]
        self.t = camera.extrinsics[:3, 3]
        self.rays_world = self.rays @ self.R  # (H, W, 3) the same directions in the world frame
        self._layer: _StaticLayer | None = None

    # -- helpers ------------------------------------------------------------------------------------------
    def _bbox(self, lo: np.ndarray, hi: np.ndarray) -> tuple[int, int, int, int] | None:
        """Pixel box (u0, u1, v0, v1) covering the camera-frame axis-aligned box [lo, hi]; None if unseen.

        When all 8 corners are in front of the camera, the projection of the box lies inside the hull of
        the projected corners, so the box is conservative."""
        cam = self.camera
        if hi[2] <= _NEAR_M:
            return None
        if lo[2] <= _NEAR_M:  # crosses the near plane: the projection is unbounded, use the whole image
            return 0, cam.width, 0, cam.height
        corners = np.where(_CORNER_MASK, hi, lo)  # (8, 3)
        uv = cam.project(corners)
        u0 = int(max(np.floor(uv[:, 0].min()) - 1, 0))
        u1 = int(min(np.ceil(uv[:, 0].max()) + 2, cam.width))
        v0 = int(max(np.floor(uv[:, 1].min()) - 1, 0))
        v1 = int(min(np.ceil(uv[:, 1].max()) + 2, cam.height))
        if u0 >= u1 or v0 >= v1:  # (pixel j covers [j, j+1): floor of the low edge, ceil of the high one)
            return None
        return u0, u1, v0, v1

    def _intersect_object(
        self, obj: SceneObject, T_co: np.ndarray, origin: np.ndarray, D: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rays (camera frame) against one object at camera-from-object ``T_co``: t and camera normals."""
        Rco, tco = T_co[:3, :3], T_co[:3, 3]
        if obj.shape == "sphere":
            t = intersect_sphere(origin, D, tco, obj.size_m[0] / 2)
            P = origin + np.where(np.isfinite(t), t, 0)[..., None] * D
            n = (P - tco) / (obj.size_m[0] / 2)
            return t, n
        O_l = (origin - tco) @ Rco
        D_l = D @ Rco
        if obj.shape == "box":
            t, n_l = intersect_box(O_l, D_l, obj.size_m / 2)
        else:
            t, n_l = intersect_cylinder(O_l, D_l, obj.size_m[0] / 2, obj.size_m[2] / 2)
        return t, n_l @ Rco.T

    def _draw_object(self, obj: SceneObject, T_co: np.ndarray, t_best, label, albedo, normal) -> None:
        rad = float(np.linalg.norm(obj.size_m) / 2)
        box = self._bbox(T_co[:3, 3] - rad, T_co[:3, 3] + rad)
        if box is None:
            return
        u0, u1, v0, v1 = box
        t_o, n_c = self._intersect_object(obj, T_co, np.zeros(3), self.rays[v0:v1, u0:u1])
        cur = t_best[v0:v1, u0:u1]  # views: writes go to the buffers
        ok = t_o < cur
        cur[ok] = t_o[ok]
        label[v0:v1, u0:u1][ok] = LABEL_OBJECT0 + obj.object_id
        albedo[v0:v1, u0:u1][ok] = obj.rgb
        normal[v0:v1, u0:u1][ok] = n_c[ok]

    def _static_layer(
        self, scene: Scene, static_ids: tuple[int, ...], poses: dict[int, np.ndarray]
    ) -> _StaticLayer:
        lay = self._layer
        if (
            lay is not None
            and lay.scene is scene
            and lay.static_ids == static_ids
            and all(np.array_equal(lay.static_poses[i], poses[i]) for i in static_ids)
        ):
            return lay
        cam = self.camera
        H, W = cam.height, cam.width
        t_best = np.full((H, W), np.inf)
        label = np.zeros((H, W), np.int16)
        normal = np.zeros((H, W, 3))
        albedo = np.zeros((H, W, 3))
        # Table top (z = 0) and floor, as world planes seen from the camera centre.
        C = cam.centre_world
        Dw = self.rays_world
        dz = Dw[..., 2]
        dz_safe = np.where(np.abs(dz) < 1e-12, -1e-12, dz)
        table = scene.table
        tone_a, tone_b = (np.array(c) for c in TABLE_COLOURS[table.colour])
        table_xy = np.zeros((H, W, 2))
        for plane_z, lab in ((0.0, LABEL_TABLE), (FLOOR_Z_M, LABEL_FLOOR)):
            tp = (plane_z - C[2]) / dz_safe
            pw = C + tp[..., None] * Dw
            ok = (tp > 1e-9) & (tp < t_best)
            if lab == LABEL_TABLE:
                table_xy = pw[..., :2]
                ok &= table.contains(pw[..., 0], pw[..., 1])
                checker = (np.floor(pw[..., 0] / table.tile_m) + np.floor(pw[..., 1] / table.tile_m)) % 2
                col = np.where(checker[..., None] > 0, tone_a, tone_b)
            else:
                col = np.broadcast_to(FLOOR_RGB, (H, W, 3))
            t_best = np.where(ok, tp, t_best)
            label[ok] = lab
            albedo[ok] = col[ok]
            normal[ok] = self.R[:, 2]  # world +z in the camera frame
        casters = []
        for obj in scene.objects:
            if obj.object_id in static_ids:
                T_co = cam.extrinsics @ poses[obj.object_id]
                self._draw_object(obj, T_co, t_best, label, albedo, normal)
                casters.append((obj, T_co))
        blocked = np.zeros((H, W), bool)
        if self.shadows:
            on_table = label == LABEL_TABLE
            blocked[on_table] = self._shadow_rays(
                scene, t_best[on_table], self.rays[on_table], table_xy[on_table], casters, []
            )
        self._layer = _StaticLayer(
            scene,
            static_ids,
            {i: poses[i].copy() for i in static_ids},
            t_best,
            label,
            albedo,
            normal,
            table_xy,
            blocked,
        )
        return self._layer

    def _shadow_rays(self, scene, t, D, xy, casters, hand_caps) -> np.ndarray:
        """(N,) bool: whether table points (at ray parameter ``t`` along camera rays ``D``, world ``xy``)
        see an object in ``casters`` or a hand capsule in ``hand_caps`` on their way to the light."""
        light_w = scene.light_dir
        light_c = self.R @ light_w
        origin = t[:, None] * D + 1e-4 * self.R[:, 2]  # (N, 3) camera frame, lifted off the surface
        blocked = np.zeros(len(origin), bool)
        lz = max(light_w[2], 0.2)
        for obj, T_co in casters:
            # prefilter: the shadow of the object's bounding sphere on z = 0
            c = self.camera.camera_to_world(T_co[:3, 3])
            rad = float(np.linalg.norm(obj.size_m) / 2)
            foot = c[:2] - max(c[2], 0) / lz * light_w[:2]
            near = np.flatnonzero(np.linalg.norm(xy - foot, axis=-1) < rad / lz + 0.01)
            if len(near):
                t_o, _ = self._intersect_object(obj, T_co, origin[near], light_c)
                blocked[near] |= np.isfinite(t_o)
        # Hands: only the table points inside the footprint of a capsule's shadow on z = 0; the hand's
        # capsules together, the arm's one by one (as in drawing).
        for A, B, Rr, is_arm in hand_caps:
            ends = np.stack([self.camera.camera_to_world(A), self.camera.camera_to_world(B)], 1)  # (K, 2, 3)
            s = np.maximum(ends[..., 2], 0) / lz  # follow the light ray from each end down to z = 0
            foot = ends[..., :2] - s[..., None] * light_w[:2]  # (K, 2, 2)
            pads = Rr / lz + 0.005
            for ks in _capsule_groups(is_arm):
                lo = (foot[ks].min(1) - pads[ks, None]).min(0)
                hi = (foot[ks].max(1) + pads[ks, None]).max(0)
                near = np.flatnonzero(np.all((xy >= lo) & (xy <= hi), -1) & ~blocked)
                if len(near):
                    t_all = intersect_capsules(origin[near], light_c, A[ks], B[ks], Rr[ks])
                    blocked[near] |= np.isfinite(t_all).any(1)
        return blocked

    # -- the frame ----------------------------------------------------------------------------------------
    def render(
        self,
        scene: Scene,
        object_poses: dict[int, np.ndarray] | None = None,
        hands_world: dict[str, np.ndarray] | None = None,
    ) -> RenderResult:
        """One frame. ``object_poses``: object id -> (4, 4) object -> world (default: the scene's poses);
        ``hands_world``: side -> (21, 3) joints in the WORLD frame, OpenPose order, metres."""
        cam = self.camera
        H, W = cam.height, cam.width
        D = self.rays
        poses = {o.object_id: o.pose for o in scene.objects}
        for k, v in (object_poses or {}).items():
            if int(k) not in poses:
                raise InputError("Renderer.render", "object_poses", f"ids among {sorted(poses)}", str(k))
            poses[int(k)] = np.asarray(v, np.float64).reshape(4, 4)
        static_ids = tuple(o.object_id for o in scene.objects if np.array_equal(poses[o.object_id], o.pose))
        lay = self._static_layer(scene, static_ids, poses)
        t_best, label, albedo, normal = lay.t.copy(), lay.label.copy(), lay.albedo.copy(), lay.normal.copy()

        # Objects away from their resting pose (carried, pushed).
        movers = []
        for obj in scene.objects:
            if obj.object_id not in static_ids:
                T_co = cam.extrinsics @ poses[obj.object_id]
                self._draw_object(obj, T_co, t_best, label, albedo, normal)
                movers.append((obj, T_co))

        # Hands.
        hand_caps = []
        joints_2d = {}
        for side, jw in (hands_world or {}).items():
            check_side(side)
            jw = np.asarray(jw, np.float64)
            if jw.shape != (21, 3) or not np.isfinite(jw).all():
                raise InputError(
                    "Renderer.render", f"hands_world[{side}]", "finite (21, 3) joints", str(jw.shape)
                )
            jc = cam.world_to_camera(jw)
            joints_2d[side] = cam.project(jc)
            A, B, Rr, rgb, is_arm = hand_capsules(
                jc, side, cam.world_to_camera(self.shoulders_world[side]), self.R[:, 2]
            )
            hand_caps.append((A, B, Rr, is_arm))
            # The hand's capsules together over the hand's screen box, the arm's one by one.
            for ks in _capsule_groups(is_arm):
                lo = (np.minimum(A[ks], B[ks]) - Rr[ks, None]).min(0)
                hi = (np.maximum(A[ks], B[ks]) + Rr[ks, None]).max(0)
                box = self._bbox(lo, hi)
                if box is None:
                    continue
                u0, u1, v0, v1 = box
                Dp = D[v0:v1, u0:u1]
                t_all = intersect_capsules(np.zeros(3), Dp.reshape(-1, 3), A[ks], B[ks], Rr[ks])  # (P, k)
                kmin = t_all.argmin(1)
                t_h = np.take_along_axis(t_all, kmin[:, None], 1)[:, 0].reshape(v1 - v0, u1 - u0)
                cur = t_best[v0:v1, u0:u1]  # a view: writes go to the buffers
                ok = t_h < cur
                if not ok.any():
                    continue
                kk = ks[kmin.reshape(v1 - v0, u1 - u0)[ok]]
                cur[ok] = t_h[ok]
                P = t_h[ok][:, None] * Dp[ok]
                label[v0:v1, u0:u1][ok] = np.where(is_arm[kk], ARM_LABELS[side], HAND_LABELS[side])
                albedo[v0:v1, u0:u1][ok] = rgb[kk]
                normal[v0:v1, u0:u1][ok] = capsule_normals(P, A[kk], B[kk])

        # Lambert shading; table pixels in shadow lose part of their direct light.
        light_c = self.R @ scene.light_dir
        ndl = np.clip(_dot(normal, light_c), 0, None)
        if self.shadows:
            on_table = label == LABEL_TABLE
            blocked = lay.blocked & on_table
            if movers or hand_caps:
                idx = np.flatnonzero(on_table & ~blocked)
                vv, uu = np.divmod(idx, W)
                blocked[vv, uu] = self._shadow_rays(
                    scene, t_best[vv, uu], D[vv, uu], lay.table_xy[vv, uu], movers, hand_caps
                )
            ndl = np.where(blocked, ndl * (1 - _SHADOW), ndl)
        rgb_f = albedo * (_AMBIENT + _DIFFUSE * ndl)[..., None]
        # Background (missed everything): a wall gradient by elevation of the ray.
        bg = label == LABEL_BACKGROUND
        if bg.any():
            elev = np.clip(self.rays_world[..., 2], -1, 1)
            rgb_f[bg] = np.array([0.72, 0.74, 0.78]) * (0.85 + 0.15 * elev[bg][:, None])
        rgb = (np.clip(rgb_f, 0, 1) * 255 + 0.5).astype(np.uint8)
        depth = np.where(np.isfinite(t_best), t_best * D[..., 2], np.inf).astype(np.float32)

        joints_visible = {}
        for side, uv in joints_2d.items():
            vis = np.zeros(21, bool)
            ok = np.isfinite(uv).all(-1)
            ui = np.floor(np.nan_to_num(uv[:, 0], nan=-1)).astype(int)
            vi = np.floor(np.nan_to_num(uv[:, 1], nan=-1)).astype(int)
            ok &= (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H)
            vis[ok] = label[vi[ok], ui[ok]] == HAND_LABELS[side]
            joints_visible[side] = vis
        return RenderResult(rgb, depth, label, joints_2d, joints_visible)


def render_frame(
    scene: Scene,
    camera: Camera,
    object_poses: dict[int, np.ndarray] | None = None,
    hands_world: dict[str, np.ndarray] | None = None,
    shadows: bool = True,
) -> RenderResult:
    """One-off convenience wrapper around ``Renderer``."""
    return Renderer(camera, shadows=shadows).render(scene, object_poses, hands_world)


def render_table_scenes(
    n: int, seed: int, size: tuple[int, int], rigs: tuple[str, ...] = ("ego", "third")
) -> Iterator[tuple[Scene, Camera, RenderResult]]:
    """``n`` hand-free table scenes, rendered at ``size`` (width, height) pixels: scene ``i`` and its camera
    (the rigs in turn) drawn from the seed ``[seed, i]``, so a scene does not depend on ``n``. Yields (scene,
    camera, render)."""
    for i in range(n):
        rng = np.random.default_rng([seed, i, 0x5EE])
        scene = sample_scene(rng)
        cam = make_camera(rigs[i % len(rigs)], size[0], size[1], rng)
        yield scene, cam, Renderer(cam).render(scene)
