"""HandWorld: scenes, camera rigs, the ray-casting renderer, episodes and the store round trip.

References are independent of the code under test where possible: ray intersections against brute-force
sphere tracing of signed distance functions, rig rotations against scipy, projections against pixels of
the rendered image, episodes against the store's reader and the hand model run again on stored values.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from handvla.camera import Camera
from handvla.errors import ConfigError, InputError
from handvla.hand.registry import motion_joints
from handvla.synth.handworld import cameras as C
from handvla.synth.handworld import raster as RS
from handvla.synth.handworld import scene as S

# ---------------------------------------------------------------------------------------------------------
# Brute-force reference: sphere tracing of signed distance functions
# ---------------------------------------------------------------------------------------------------------


def _sdf_capsule(p, a, b, r):
    ba = b - a
    s = np.clip(((p - a) @ ba) / (ba @ ba), 0, 1)
    return np.linalg.norm(p - (a + s[:, None] * ba), axis=-1) - r


def _sdf_box(p, half):
    q = np.abs(p) - half
    return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)


def _sdf_cylinder(p, r, hh):
    d = np.stack([np.linalg.norm(p[:, :2], axis=-1) - r, np.abs(p[:, 2]) - hh], -1)
    return np.minimum(d.max(-1), 0) + np.linalg.norm(np.maximum(d, 0), axis=-1)


def _trace(orig, D, sdf, t_max=5.0, steps=400):
    t = np.zeros(len(D))
    for _ in range(steps):
        d = sdf(orig + t[:, None] * D)
        t = t + np.maximum(d, 0)
    hit = sdf(orig + t[:, None] * D) < 1e-6
    return np.where(hit & (t < t_max), t, np.inf)


def _random_rays(rng, n=400):
    orig = rng.normal(0, 0.02, (n, 3)) + np.array([0, 0, -0.5])
    target = rng.normal(0, 0.06, (n, 3))
    D = target - orig
    return orig, D / np.linalg.norm(D, axis=-1, keepdims=True)


def _check_same_hits(t_ref, t):
    both = np.isfinite(t_ref) & np.isfinite(t)
    # grazing rays may differ between the two methods; they are rare
    assert (np.isfinite(t_ref) != np.isfinite(t)).mean() < 0.02
    assert both.sum() > 20
    np.testing.assert_allclose(t[both], t_ref[both], atol=1e-5)


def test_capsule_intersection_matches_sphere_tracing():
    rng = np.random.default_rng(0)
    orig, D = _random_rays(rng)
    A = np.array([[-0.03, 0.01, 0.0], [0.0, -0.04, 0.02], [0.01, 0.01, 0.01]])
    B = np.array([[0.04, -0.02, 0.03], [0.0, 0.05, 0.02], [0.01, 0.01, 0.01]])  # the last is a sphere
    r = np.array([0.02, 0.012, 0.025])
    t = RS.intersect_capsules(orig, D, A, B, r)  # (P, K) per-ray origins and directions
    for k in range(3):
        t_ref = _trace(
            orig,
            D,
            lambda p, k=k: (
                _sdf_capsule(p, A[k], B[k], r[k]) if k < 2 else np.linalg.norm(p - A[k], axis=-1) - r[k]
            ),
        )
        _check_same_hits(t_ref, t[:, k])
    # the shared-origin and shared-direction forms agree with the per-ray one
    t_o = RS.intersect_capsules(orig[0], D, A, B, r)
    np.testing.assert_allclose(t_o, RS.intersect_capsules(np.repeat(orig[:1], len(D), 0), D, A, B, r))
    t_d = RS.intersect_capsules(orig, D[0], A, B, r)
    np.testing.assert_allclose(t_d, RS.intersect_capsules(orig, np.repeat(D[:1], len(orig), 0), A, B, r))


def test_elbow_keeps_arm_lengths():
    rng = np.random.default_rng(2)
    up = np.array([0.0, 0.0, 1.0])
    for _ in range(50):
        shoulder = np.array([0.19, -0.35, 0.28])
        wrist = shoulder + rng.normal(0, 0.2, 3)
        e = RS.elbow_position(wrist, shoulder, np.array([0.0, 1.0, 0.0]), up)
        d = np.linalg.norm(wrist - shoulder)
        if d < RS.UPPER_ARM_M + RS.FOREARM_M:
            assert np.isclose(np.linalg.norm(e - shoulder), RS.UPPER_ARM_M)
            if d > abs(RS.UPPER_ARM_M - RS.FOREARM_M):
                assert np.isclose(np.linalg.norm(e - wrist), RS.FOREARM_M)
        else:  # out of reach: on the line, both segments stretched alike
            assert np.isclose(np.linalg.norm(np.cross(e - shoulder, wrist - shoulder)), 0, atol=1e-9)


def test_box_cylinder_sphere_intersections_match_sphere_tracing():
    rng = np.random.default_rng(1)
    orig, D = _random_rays(rng)
    half = np.array([0.03, 0.02, 0.05])
    t_box, n_box = RS.intersect_box(orig, D, half)
    _check_same_hits(_trace(orig, D, lambda p: _sdf_box(p, half)), t_box)
    hit = np.isfinite(t_box)
    # normals are unit axis vectors facing the ray
    assert (
        np.allclose(np.abs(n_box[hit]).sum(-1), 1) and (np.einsum("ij,ij->i", n_box[hit], D[hit]) < 0).all()
    )
    t_cyl, n_cyl = RS.intersect_cylinder(orig, D, 0.03, 0.04)
    _check_same_hits(_trace(orig, D, lambda p: _sdf_cylinder(p, 0.03, 0.04)), t_cyl)
    assert np.allclose(np.linalg.norm(n_cyl[np.isfinite(t_cyl)], axis=-1), 1)
    c = np.array([0.01, 0.0, 0.02])
    t_sph = RS.intersect_sphere(orig, D, c, 0.035)
    _check_same_hits(_trace(orig, D, lambda p: np.linalg.norm(p - c, axis=-1) - 0.035), t_sph)


# ---------------------------------------------------------------------------------------------------------
# Scenes and rigs
# ---------------------------------------------------------------------------------------------------------


def test_scene_sampling_is_seeded_and_objects_do_not_overlap():
    for seed in range(20):
        a = S.sample_scene(np.random.default_rng(seed))
        b = S.sample_scene(np.random.default_rng(seed))
        assert a.to_dict() == b.to_dict()
        assert 1 <= len(a.objects) <= 4
        assert len({o.colour for o in a.objects}) == len(a.objects)
        for i, o in enumerate(a.objects):
            assert abs(o.pose[2, 3] - o.height_m / 2) < 1e-12  # resting on the table top z = 0
            assert a.table.contains(o.position[0], o.position[1])
            for p in a.objects[i + 1 :]:
                gap = (
                    np.linalg.norm(o.position[:2] - p.position[:2])
                    - o.footprint_radius_m
                    - p.footprint_radius_m
                )
                assert gap >= S.MIN_GAP_M - 1e-12
        assert S.Scene.from_dict(a.to_dict()).to_dict() == a.to_dict()
    assert (
        S.sample_scene(np.random.default_rng(0)).to_dict()
        != S.sample_scene(np.random.default_rng(1)).to_dict()
    )
    with pytest.raises(InputError):
        S.sample_scene(np.random.default_rng(0), n_objects=5)


def test_look_at_matches_scipy_and_opencv_axes():
    eye, target = np.array([0.3, -0.4, 0.5]), np.array([0.0, 0.2, 0.0])
    T = C.look_at(eye, target)
    R = T[:3, :3]
    assert np.allclose(R @ R.T, np.eye(3)) and np.isclose(np.linalg.det(R), 1)
    cam_z_world = R[2]
    assert np.allclose(cam_z_world, (target - eye) / np.linalg.norm(target - eye))
    assert R[1] @ np.array([0, 0, 1.0]) < 0  # image "down" points down in the world
    assert np.allclose(T[:3, :3] @ eye + T[:3, 3], 0)
    # roll: a rotation about the optical axis, as scipy composes it
    Tr = C.look_at(eye, target, roll_rad=0.3)
    ref = Rotation.from_rotvec([0, 0, 0.3]).as_matrix() @ R
    assert np.allclose(Tr[:3, :3], ref)


def test_rigs_differ_and_see_the_workspace():
    cams = {r: C.make_camera(r, 256, 192) for r in C.RIGS}
    hfov = {r: np.degrees(2 * np.arctan(c.width / 2 / c.fx)) for r, c in cams.items()}
    assert hfov["third"] < 60 < hfov["phone"] < hfov["ego"]
    assert np.isclose(cams["ego"].fx, 736.6339 * 256 / 1920)
    assert abs(cams["phone"].cx - 128) > 5 and abs(cams["phone"].cy - 96) > 5
    corners = np.array([[x, y, 0.0] for x in S.WORKSPACE_X for y in S.WORKSPACE_Y])
    for r, cam in cams.items():
        assert cam.in_view(corners).all(), r
        # the target point of the rig is at the principal point (up to roll, which keeps the centre)
        uv = cam.project_world(np.array(C.RIGS[r].target))
        assert np.allclose(uv, [cam.cx, cam.cy], atol=1e-6), r
    a = C.make_camera("ego", 64, 48, np.random.default_rng(3))
    b = C.make_camera("ego", 64, 48, np.random.default_rng(3))
    assert a == b and a != cams["ego"]
    assert C.camera_from_record(C.camera_record("ego", a)) == a
    with pytest.raises(ConfigError):
        C.parse_rigs("ego,drone")
    assert C.parse_rigs("ego, phone") == ["ego", "phone"]
    assert C.parse_size("96x64") == (96, 64)
    with pytest.raises(ConfigError):
        C.parse_size("96by64")


# ---------------------------------------------------------------------------------------------------------
# The renderer
# ---------------------------------------------------------------------------------------------------------


def _flat_hand_world(wrist, side="right"):
    """21 joints of the built-in hand lying flat, fingers along +y, palm down, wrist at ``wrist``."""
    import torch

    from handvla.hand.model import BuiltinHand

    R = (
        np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0.0]])
        if side == "right"
        else np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0.0]])
    )
    aa = Rotation.from_matrix(R).as_rotvec()
    out = BuiltinHand(side)(
        torch.tensor(aa[None], dtype=torch.float32),
        torch.zeros(1, 15, 3),
        wrist_pos=torch.tensor([wrist], dtype=torch.float32),
    )
    return out.joints[0].double().numpy()


def _one_object_scene(shape="box", xy=(0.0, 0.25), colour="red"):
    size = S.sample_object_size(shape, np.random.default_rng(0))
    obj = S.SceneObject(0, shape, colour, size, S.yaw_pose(xy[0], xy[1], size[2] / 2, 0.0))
    return S.Scene(S.Table(), [obj])


def test_renderer_draws_objects_where_the_camera_projects_them():
    for shape in S.SHAPES:
        scene = _one_object_scene(shape)
        for rig in C.RIGS:
            cam = C.make_camera(rig, 128, 96)
            res = RS.render_frame(scene, cam)
            mask = res.labels == RS.LABEL_OBJECT0
            assert mask.sum() > 12, (shape, rig)
            # the object's centre projects inside its drawn silhouette
            u, v = np.floor(cam.project_world(scene.objects[0].position)).astype(int)
            assert mask[v, u], (shape, rig)
            # drawn pixels are red-dominant (lit object colour), depth is finite there
            px = res.rgb[mask].astype(int)
            assert (px[:, 0] > px[:, 1] + 20).mean() > 0.9
            assert np.isfinite(res.depth_m[mask]).all()


def test_table_scenes_are_seeded_per_index_and_alternate_rigs():
    a = list(RS.render_table_scenes(4, 7, (64, 48)))
    b = list(RS.render_table_scenes(2, 7, (64, 48)))  # scene i does not depend on how many are drawn
    for (sa, ca, ra), (sb, cb, rb) in zip(a, b):
        assert [o.to_dict() for o in sa.objects] == [o.to_dict() for o in sb.objects]
        np.testing.assert_array_equal(ca.K, cb.K)
        np.testing.assert_array_equal(ra.rgb, rb.rgb)
    assert ra.rgb.shape == (48, 64, 3)
    assert not np.allclose(a[0][1].extrinsics, a[1][1].extrinsics)  # ego, then third person
    assert all(np.isin(r.labels, [RS.LABEL_OBJECT0 + o.object_id for o in s.objects]).any() for s, _, r in a)
    other = next(RS.render_table_scenes(1, 8, (64, 48)))
    assert [o.to_dict() for o in other[0].objects] != [o.to_dict() for o in a[0][0].objects]


def test_pixel_centres_are_at_half_integers():
    # A sphere on the optical axis of a camera with (cx, cy) = (W/2, H/2) is drawn symmetrically only if
    # pixel (j, i) samples the point (j + 0.5, i + 0.5), the convention of handvla.camera.
    cam = Camera(70.0, 70.0, 32.0, 24.0, 64, 48, C.look_at([0, 0, 0.6], [0, 0, 0.0], up=[0, 1, 0]))
    obj = S.SceneObject(0, "sphere", "red", np.full(3, 0.1), S.yaw_pose(0, 0, 0.05, 0.0))
    mask = RS.render_frame(S.Scene(S.Table(centre_xy=(0.0, 0.0)), [obj]), cam).labels == RS.LABEL_OBJECT0
    assert mask.sum() > 100
    assert np.array_equal(mask, mask[::-1]) and np.array_equal(mask, mask[:, ::-1])
    # half a pixel off centre, the drawing is no longer symmetric left-right
    off = Camera(70.0, 70.0, 32.5, 24.0, 64, 48, cam.extrinsics)
    mask_off = RS.render_frame(S.Scene(S.Table(), [obj]), off).labels == RS.LABEL_OBJECT0
    assert not np.array_equal(mask_off, mask_off[:, ::-1])


def test_hand_joints_2d_land_on_hand_pixels_and_occlusion_is_depth_correct():
    cam = C.make_camera("ego", 160, 120)
    scene = _one_object_scene("box", xy=(0.05, 0.2))
    hand = _flat_hand_world([0.05, 0.1, 0.12])  # above the box's height: seen over it from the head
    res = RS.render_frame(scene, cam, hands_world={"right": hand})
    uv = res.joints_2d["right"]
    # the renderer's 2D joints are the projection of the world joints through the camera
    np.testing.assert_allclose(uv, cam.project_world(hand), atol=1e-9)
    assert res.joints_visible["right"].sum() >= 18
    ui, vi = np.floor(uv).astype(int).T
    assert (res.labels[vi, ui] == RS.HAND_LABELS["right"]).mean() >= 18 / 21
    # depth at a visible joint pixel is in front of the joint centre by at most a capsule radius (2.2 cm)
    z_joint = cam.world_to_camera(hand)[:, 2]
    vis = res.joints_visible["right"]
    dz = z_joint[vis] - res.depth_m[vi[vis], ui[vis]]
    assert (dz > -0.002).all() and (dz < 0.025).all()

    # The same hand low behind the box as seen from across the table: the box hides part of it.
    third = C.make_camera("third", 160, 120)
    box = scene.objects[0]
    behind = _flat_hand_world([box.position[0], box.position[1] - 0.09, 0.015])
    r_occ = RS.render_frame(scene, third, hands_world={"right": behind})
    r_free = RS.render_frame(S.Scene(scene.table, []), third, hands_world={"right": behind})
    hand_free = r_free.labels == RS.HAND_LABELS["right"]
    obj_occ = r_occ.labels == RS.LABEL_OBJECT0
    overlap = hand_free & obj_occ
    assert overlap.sum() > 5  # the box covers pixels where the hand alone would be drawn
    assert (r_occ.depth_m[overlap] < r_free.depth_m[overlap]).all()
    assert r_occ.joints_visible["right"].sum() < r_free.joints_visible["right"].sum()
    # and from the head, the hand in front of the box covers it
    r_front = RS.render_frame(scene, cam, hands_world={"right": hand})
    r_nohand = RS.render_frame(scene, cam)
    covered = (r_nohand.labels == RS.LABEL_OBJECT0) & (r_front.labels == RS.HAND_LABELS["right"])
    assert covered.sum() > 5
    assert (r_front.depth_m[covered] < r_nohand.depth_m[covered]).all()


def test_shadows_darken_the_table_under_a_hand_and_cache_is_exact():
    cam = C.make_camera("ego", 128, 96)
    scene = _one_object_scene("sphere", xy=(-0.15, 0.3))
    scene.light_dir = np.array([0.0, 0.0, 1.0])
    hand = _flat_hand_world([0.05, 0.15, 0.05])
    r = RS.Renderer(cam)
    with_hand = r.render(scene, hands_world={"right": hand})
    empty = r.render(scene)
    # straight below the palm centre (light from straight above) the table is in shadow
    palm = hand[[0, 5, 9, 13, 17]].mean(0)
    u, v = np.floor(cam.project_world([palm[0], palm[1], 0.0])).astype(int)
    below_hidden = with_hand.labels[v, u] != RS.LABEL_TABLE
    if not below_hidden:
        assert with_hand.rgb[v, u].sum() < empty.rgb[v, u].sum() - 30
    shadowed = (with_hand.labels == RS.LABEL_TABLE) & (with_hand.rgb.sum(-1) < empty.rgb.sum(-1) - 30)
    assert shadowed.sum() > 10
    # the cached static layer gives the same image as a fresh renderer
    fresh = RS.Renderer(cam).render(scene, hands_world={"right": hand})
    assert np.array_equal(fresh.rgb, with_hand.rgb)
    moved = {0: S.yaw_pose(-0.1, 0.3, scene.objects[0].pose[2, 3] + 0.05, 0.0)}
    a = r.render(scene, object_poses=moved)
    b = RS.Renderer(cam).render(scene, object_poses=moved)
    assert np.array_equal(a.rgb, b.rgb) and not np.array_equal(a.rgb, empty.rgb)
    with pytest.raises(InputError):
        r.render(scene, hands_world={"right": hand[:20]})


# ---------------------------------------------------------------------------------------------------------
# Episodes
# ---------------------------------------------------------------------------------------------------------

SMALL = dict(width=80, height=60, seconds=3.0)


def _cfg(**kw):
    from handvla.synth.handworld.episodes import HandWorldConfig

    return HandWorldConfig(**{**SMALL, **kw})


def _stored_joints_2d(ep):
    """Joints of the stored hand parameters (hand model run again) projected with the stored intrinsics."""
    out = {}
    for side in ep.hands_present():
        out[side] = ep.camera.project(motion_joints(ep.hands[side]))
    return out


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """Episodes 0-2 of seed 5, kept in memory with the renderer's outputs and written to a store."""
    from handvla.data.store import EpisodeWriter
    from handvla.synth.handworld.episodes import make_episode

    root = tmp_path_factory.mktemp("handworld") / "store"
    cfg = _cfg()
    results = [make_episode(i, 5, cfg, keep_labels=True) for i in range(3)]
    with EpisodeWriter(root, fps=cfg.fps, hand_model="builtin", joints=True) as w:
        for r in results:
            w.add_episode(r.episode)
    return root, cfg, results


def test_body_frame_is_the_motion_generators_workspace():
    from handvla.synth.handworld.episodes import sample_body

    body = sample_body(np.random.default_rng(0))
    p_world = np.random.default_rng(1).uniform(-0.3, 0.5, (20, 3))
    table = p_world - np.array([body.eye[0], body.eye[1], 0.0])  # (lateral, forward, height) of the workspace
    np.testing.assert_allclose(body.to_motion(p_world), body.workspace.to_camera(table), atol=1e-12)
    np.testing.assert_allclose(body.dir_to_motion([0, 0, 1.0]), body.workspace.up, atol=1e-12)


def test_episodes_are_deterministic_by_seed():
    from handvla.synth.handworld.episodes import make_episode

    cfg = _cfg(seconds=2.0)
    a = make_episode(1, 7, cfg).episode
    b = make_episode(1, 7, cfg).episode
    c = make_episode(1, 8, cfg).episode
    assert np.array_equal(a.video, b.video) and a.ground_truth == b.ground_truth and a.tasks == b.tasks
    for s in a.hands:
        np.testing.assert_array_equal(a.hands[s].wrist_pos, b.hands[s].wrist_pos)
        np.testing.assert_array_equal(a.hands[s].hand_pose, b.hands[s].hand_pose)
    assert not np.array_equal(a.video, c.video)
    assert a.key != c.key and a.key.endswith("/000001")


def test_written_episodes_read_back_and_reproject_onto_the_renderers_joints(small_store):
    import json

    from handvla.data.store import EpisodeStore
    from handvla.synth.handworld.episodes import generate_episodes, make_episode

    root, cfg, results = small_store
    store = EpisodeStore(root)
    assert len(store) == 3 and store.fps == 15.0
    rigs = []
    for k, res in enumerate(results):
        ep = store.load_episode(k)
        src = res.episode
        rigs.append(ep.rig)
        assert ep.key == src.key and ep.tasks == src.tasks and ep.source == "handworld"
        assert ep.ground_truth == json.loads(json.dumps(src.ground_truth))
        assert ep.num_frames == cfg.num_frames == 45
        # the stored camera is the rig's
        np.testing.assert_allclose(ep.camera.K, src.camera.K)
        np.testing.assert_allclose(ep.camera.extrinsics, src.camera.extrinsics)
        assert (ep.camera.width, ep.camera.height) == (80, 60)
        # stored 3D joints (and the hand model run on the stored parameters), projected with the stored
        # intrinsics, land on the renderer's own 2D joint centres
        proj = _stored_joints_2d(ep)
        assert set(proj) == set(res.joints_2d) and proj
        for side, uv in proj.items():
            err = np.linalg.norm(uv - res.joints_2d[side], axis=-1)
            assert np.nanmax(err) < 0.5, (k, side, np.nanmax(err))
            err_j = np.linalg.norm(ep.camera.project(ep.joints[side]) - res.joints_2d[side], axis=-1)
            assert np.nanmax(err_j) < 0.5
            # and the stored motion is in the camera frame: joints in front of the camera
            assert (ep.joints[side][..., 2] > 0.1).all()
        # the decoded video is the rendered one, up to the codec
        assert ep.video.shape == src.video.shape
        assert np.abs(ep.video.astype(int) - src.video.astype(int)).mean() < 6
    assert rigs == ["ego", "third", "phone"]
    # generate_episodes resumes the store: finished keys are skipped, the missing episodes are rendered
    # (here by two worker processes) and written in order
    again = generate_episodes(5, root, seed=5, config=cfg, workers=2, progress=False)
    assert again["skipped"] == 3 and again["written"] == 2 and again["frames_written"] == 90
    store = EpisodeStore(root)
    assert len(store) == 5 and [store.meta(k)["key"][-6:] for k in range(5)] == [f"{i:06d}" for i in range(5)]
    assert store.load_episode(4, with_video=False).ground_truth == json.loads(
        json.dumps(make_episode(4, 5, cfg).episode.ground_truth)
    )


def test_targets_are_in_view_and_drawn(small_store):
    _, _, results = small_store
    checked = 0
    for res in results:
        gt = res.episode.ground_truth
        cam = C.camera_from_record(gt["camera"])
        for tg in gt["targets"]:
            assert cam.in_view(np.array(tg["initial_world"]))
            np.testing.assert_allclose(
                tg["initial_pixel"], cam.project_world(np.array(tg["initial_world"])), atol=0.01
            )
            np.testing.assert_allclose(
                tg["initial_camera"], cam.world_to_camera(np.array(tg["initial_world"])), atol=1e-5
            )
            drawn = (res.labels == RS.LABEL_OBJECT0 + tg["object_id"]).sum((1, 2))
            assert drawn.max() >= 4  # visible in the frames (hands may cover it for a while)
            checked += 1
        # every hand's label is drawn where its visible joints project
        for side, vis in res.joints_visible.items():
            t, j = np.nonzero(vis)
            u, v = np.floor(res.joints_2d[side][t, j]).astype(int).T
            assert (res.labels[t, v, u] == RS.HAND_LABELS[side]).all()
    assert checked >= 1


def _episode_with(task, index=0, **kw):
    from handvla.synth.handworld.episodes import make_episode

    return make_episode(index, 11, _cfg(tasks=(task,), seconds=4.0, **kw), keep_labels=True)


def test_grasped_object_moves_with_the_hand_and_lands_at_its_destination():
    from scipy.spatial.transform import Rotation as Rot

    res = _episode_with("move")
    ep, gt = res.episode, res.episode.ground_truth
    assert gt["task"] == "move" and gt["task_params"]["direction"] in ("left", "right", "forward", "back")
    (tg,) = gt["targets"]
    side, k = tg["hand"], tg["object_id"]
    grip = np.array(gt["grip_closed"][side], bool)
    assert grip.any() and not grip[-1]  # held, then released
    # while held, the object's pose relative to the wrist is constant
    cam = ep.camera.extrinsics
    R_wc = cam[:3, :3].T
    m = ep.hands[side]
    wrist_w = (m.wrist_pos.astype(np.float64) - cam[:3, 3]) @ cam[:3, :3]
    rot_w = R_wc @ Rot.from_rotvec(m.global_orient.astype(np.float64)).as_matrix()
    obj = res.object_poses[:, k]
    idx = np.flatnonzero(grip)
    rel = [
        np.linalg.inv(np.block([[rot_w[t], wrist_w[t, :, None]], [np.zeros((1, 3)), np.ones((1, 1))]]))
        @ obj[t]
        for t in idx
    ]
    np.testing.assert_allclose(np.stack(rel), np.repeat(rel[0][None], len(rel), 0), atol=1e-6)
    # it moved the way the instruction says, and came to rest on the table near the planned spot
    d = {"left": [-1, 0], "right": [1, 0], "forward": [0, 1], "back": [0, -1]}[gt["task_params"]["direction"]]
    shift = np.array(tg["final_world"][:2]) - np.array(tg["initial_world"][:2])
    assert shift @ np.array(d) > 0.06
    assert np.linalg.norm(np.array(tg["final_world"]) - np.array(tg["destination_world"])) < 0.03
    size = gt["scene"]["objects"][k]["size_m"]
    # resting on the table (the ground truth is rounded to 10 um)
    assert abs(tg["final_world"][2] - size[2] / 2) < 1e-5
    # and it is drawn there at the end
    u, v = np.floor(tg["final_pixel"]).astype(int)
    assert (res.labels[-1, max(v - 2, 0) : v + 3, max(u - 2, 0) : u + 3] == RS.LABEL_OBJECT0 + k).any()


def test_push_slides_the_object_and_two_hand_tasks_use_both_hands():
    res = _episode_with("push")
    gt = res.episode.ground_truth
    (tg,) = gt["targets"]
    d = {"left": [-1, 0], "right": [1, 0], "forward": [0, 1]}[gt["task_params"]["direction"]]
    shift = np.array(tg["final_world"]) - np.array(tg["initial_world"])
    assert shift[:2] @ np.array(d) > 0.04 and abs(shift[2]) < 1e-5
    contact = np.array(gt["contact"][tg["hand"]], bool)
    assert contact.sum() >= 3
    names = [p["name"] for p in gt["primitives"][tg["hand"]]]
    assert names.index("reach") < names.index("push") < names.index("release")

    res2 = _episode_with("both_pick_up", index=1)
    gt2 = res2.episode.ground_truth
    assert gt2["acting_hands"] == ["left", "right"] and gt2["hands_present"] == ["left", "right"]
    assert {t["hand"] for t in gt2["targets"]} == {"left", "right"}
    for t in gt2["targets"]:
        assert t["final_world"][2] > t["initial_world"][2] + 0.03  # both lifted
        assert any(g["name"] == "grasp" for g in gt2["primitives"][t["hand"]])
    assert (
        "left hand" in gt2["instruction"]
        or "at the same time" in gt2["instruction"]
        or "both hands" in gt2["instruction"]
    )


def test_cli_handworld_and_view(small_store, tmp_path):
    import argparse

    from handvla.commands import data as H
    from handvla.synth.handworld.episodes import TASKS
    from handvla.video import read_video

    root, _, _ = small_store
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    hw = H.add_handworld(sub)
    H.add_view(sub)
    assert all(t in hw.format_help().replace("\n", " ").replace("  ", " ") for t in TASKS)
    out = tmp_path / "v.mp4"
    args = parser.parse_args(["view", str(root), "--episode", "1", "--out", str(out)])
    assert args.func(args) == 0
    frames = read_video(out)
    assert frames.shape[0] == 45
    args = parser.parse_args(
        ["handworld", "--episodes", "1", "--out", str(tmp_path / "s"), "--rigs", "ego,drone"]
    )
    with pytest.raises(ConfigError):
        args.func(args)
    args = parser.parse_args(
        ["handworld", "--episodes", "1", "--out", str(tmp_path / "s"), "--tasks", "juggle"]
    )
    with pytest.raises(ConfigError):
        args.func(args)
    args = parser.parse_args(["view", str(root), "--episode", "9", "--out", str(out)])
    with pytest.raises(InputError):
        args.func(args)


def test_scene_repeats_share_the_set_up_and_vary_the_task():
    """scene_repeats k: k consecutive episodes share scene, camera and body (contrastive instructions); the
    default (k = 1) draws a new set-up per episode, as before."""
    from handvla.synth.handworld.episodes import HandWorldConfig, make_episode

    cfg = HandWorldConfig(width=32, height=24, seconds=3.0, shadows=False, scene_repeats=3)
    gts = [make_episode(i, 5, cfg).episode.ground_truth for i in range(6)]
    for group in (gts[:3], gts[3:]):
        assert all(g["scene"] == group[0]["scene"] and g["camera"] == group[0]["camera"] for g in group)
        assert all(g["body"] == group[0]["body"] for g in group)
    assert gts[0]["scene"] != gts[3]["scene"]
    assert len({g["instruction"] for g in gts}) >= 4  # each episode draws its own task
    one = HandWorldConfig(width=32, height=24, seconds=3.0, shadows=False)
    assert make_episode(1, 5, one).episode.ground_truth["scene"] != make_episode(0, 5, one).episode.ground_truth["scene"]
    assert cfg.key_prefix(5) == one.key_prefix(5) + "/x3"
