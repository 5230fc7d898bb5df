"""Best-of-k motion chosen by the model's own grounding (`handvla.vla.rerank`).

Checked: a camera-frame point lands in the model's view where the object boxes of the grounding questions
put it (canonical warp or not); HandWorld instructions give each acting hand the object its ground truth
names (text only); the choice is the sample whose named hands end nearest their boxes, recomputed here from
the samples, the camera and the answered boxes; other boxes choose other samples; on the table (3-D) a box
centre's ray meets the raised table at the object's centre, and the kept sample is the one whose wrists end
nearest those points (recomputed here), falling back to the image when the ray misses; the evaluation's
rerank scores follow their definitions.
"""

from __future__ import annotations

import numpy as np
import pytest

from handvla.errors import ConfigError, InputError
from handvla.vla.grounding import (
    box_centre,
    instruction_object_names,
    object_box_in_view,
    object_name,
    pixels_to_view,
    points_in_view,
    scene_objects,
    support_plane_in_camera,
    view_points_on_plane,
    view_to_pixels,
)
from handvla.vla.rerank import choose_by_boxes, choose_by_points


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    root = tmp_path_factory.mktemp("rerank")
    cfg = HandWorldConfig(width=64, height=48, seconds=2.0, shadows=False)
    generate_episodes(24, root / "hw", seed=21, config=cfg, progress=False)
    return root / "hw"


def test_points_land_in_the_objects_boxes(world):
    from handvla.data.store import EpisodeStore

    st = EpisodeStore(world)
    checked = 0
    for k in range(len(st)):
        ep = st.load_episode(k, with_video=False)
        for obj in scene_objects(ep.ground_truth, "t"):
            centre_cam = ep.camera.world_to_camera(np.asarray(obj["pose"], float).reshape(4, 4)[None, :3, 3])
            for align in (False, True):
                box = object_box_in_view(obj, ep.camera, align)
                if box is None:
                    continue
                u, v = points_in_view(centre_cam, ep.camera, align)[0]
                assert box[0] - 1 <= u <= box[2] + 1 and box[1] - 1 <= v <= box[3] + 1, (k, align, box, u, v)
                checked += 1
    assert checked >= 20
    behind = points_in_view(np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]), ep.camera, False)
    assert np.isnan(behind[0]).all() and np.isfinite(behind[1]).all()
    # the optical axis meets the image at the principal point
    np.testing.assert_allclose(behind[1], [1000 * ep.camera.cx / ep.camera.width, 1000 * ep.camera.cy / ep.camera.height])


def test_rays_through_the_view_meet_the_table_at_the_objects(world):
    from handvla.data.store import EpisodeStore

    st = EpisodeStore(world)
    checked, errors = 0, []
    for k in range(len(st)):
        ep = st.load_episode(k, with_video=False)
        cam = ep.camera
        plane = support_plane_in_camera(cam)
        # world points on the table satisfy n . p + d = 0 in the camera frame; the camera is d above the table
        on_table = cam.world_to_camera(np.array([[0.1, 0.2, 0.0], [-0.3, 0.05, 0.0]]))
        np.testing.assert_allclose(on_table @ plane[:3] + plane[3], 0.0, atol=1e-9)
        assert plane[3] == pytest.approx(cam.centre_world[2], abs=1e-9)
        for obj in scene_objects(ep.ground_truth, "t"):
            pose = np.asarray(obj["pose"], float).reshape(4, 4)
            centre = cam.world_to_camera(pose[None, :3, 3])
            half_height = float(pose[2, 3])  # resting objects: the centre is half the height above the table
            for align in (False, True):
                view = points_in_view(centre, cam, align)
                np.testing.assert_allclose(pixels_to_view(view_to_pixels(view, cam, align), cam, align) * 1000, view)
                back = view_points_on_plane(view, cam, align, plane, half_height)
                np.testing.assert_allclose(back, centre, atol=1e-7)  # exact: the ray through the centre
                box = object_box_in_view(obj, cam, align)
                if box is not None:  # the box centre lies near the centre's image: a few cm off on the table
                    p = view_points_on_plane(box_centre(box)[None], cam, align, plane, 0.03)
                    errors.append(float(np.linalg.norm(p - centre)))
                    checked += 1
    assert checked >= 20 and np.median(errors) < 0.03, (checked, np.median(errors))
    # a ray that meets the plane only behind the camera (a plane 1 m above a camera looking down) gives NaN
    cam = ep.camera
    above = support_plane_in_camera(cam, cam.centre_world[2] + 1.0)
    assert np.isnan(view_points_on_plane(np.array([[500.0, 500.0]]), cam, False, above)).all()
    with pytest.raises(InputError, match="extrinsics"):
        from handvla.camera import Camera

        support_plane_in_camera(Camera(cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height))


def test_instructions_name_the_objects_the_ground_truth_targets(world):
    from handvla.data.store import EpisodeStore
    from handvla.vla.evaluate import hand_mode_of
    from handvla.vla.processing import hands_for_mode

    st = EpisodeStore(world)
    named = 0
    for k in range(len(st)):
        ep = st.load_episode(k, with_video=False)
        gt = ep.ground_truth
        hands = hands_for_mode(hand_mode_of(gt["acting_hands"]))
        names = instruction_object_names(ep.tasks[0], hands)
        objs = {int(o["object_id"]): object_name(o) for o in scene_objects(gt, "t")}
        truth = {}
        for t in gt.get("targets") or []:
            truth.setdefault(t["hand"], objs[int(t["object_id"])])
        if len(truth) == len(hands):  # every acting hand has a target: the text names each one's object
            assert names == truth, ep.tasks[0]
            named += 1
        else:
            assert set(names) <= set(truth), ep.tasks[0]
    assert named >= 8
    assert instruction_object_names("lift the Red cube and the blue ball at the same time", ["left", "right"]) == {
        "left": "red cube",
        "right": "blue ball",
    }
    assert instruction_object_names("wave your right hand", ["right"]) == {}
    assert instruction_object_names("push the red cube forward with both hands", ["left", "right"]) == {}


def test_choice_is_the_sample_nearest_the_boxes():
    ends = np.array(
        [
            [[100.0, 100.0], [900.0, 900.0]],
            [[510.0, 500.0], [600.0, 600.0]],
            [[500.0, 500.0], [100.0, 100.0]],
        ]
    )
    k, d = choose_by_boxes(ends, ("left", "right"), {"left": (480, 480, 520, 520)})
    assert k == 2 and d[2] == 0.0 and d[1] == 10.0
    k, d = choose_by_boxes(ends, ("left", "right"), {"left": (480, 480, 520, 520), "right": (80, 80, 120, 120)})
    assert k == 2 and d[1] == pytest.approx((10.0 + np.hypot(500, 500)) / 2)
    k, d = choose_by_boxes(ends, ("left", "right"), {"left": None})
    assert k == 0 and np.isnan(d).all()
    behind = ends.copy()
    behind[2, 0] = np.nan  # a sample ending behind the camera is never chosen
    k, d = choose_by_boxes(behind, ("left", "right"), {"left": (480, 480, 520, 520)})
    assert k == 1 and np.isnan(d[2])


def test_choice_in_3d_is_the_sample_nearest_the_points():
    ends = np.array([[[0.0, 0.0, 0.5], [0.3, 0.0, 0.5]], [[0.1, 0.0, 0.5], [0.0, 0.0, 0.6]]])
    k, d = choose_by_points(ends, ("left", "right"), {"left": np.array([0.09, 0.0, 0.5])})
    assert k == 1 and d == pytest.approx([0.09, 0.01])
    both = {"left": np.array([0.0, 0.0, 0.5]), "right": np.array([0.0, 0.0, 0.6])}
    k, d = choose_by_points(ends, ("left", "right"), both)
    assert k == 1 and d[1] == pytest.approx(0.05) and d[0] == pytest.approx((0.0 + np.hypot(0.3, 0.1)) / 2)
    k, d = choose_by_points(ends, ("left", "right"), {"left": None, "right": np.full(3, np.nan)})
    assert k == 0 and np.isnan(d).all()
    # along a plane (normal +z here): the offset along the normal does not count
    k, d = choose_by_points(ends, ("left", "right"), {"right": np.array([0.3, 0.0, 0.0])}, along_plane=[0, 0, 2.0, 1])
    assert k == 0 and d == pytest.approx([0.0, 0.3])
    k, d = choose_by_points(ends, ("left", "right"), {"right": np.array([0.3, 0.0, 0.0])})
    assert k == 0 and d == pytest.approx([0.5, np.hypot(0.3, 0.6)])


@pytest.fixture(scope="module")
def bundle():
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer
    from handvla.vla import build_vla

    mt = MotionTokenizer(TokenizerConfig(**PRESETS["tiny"]))
    return build_vla("tiny", motion_tokenizer=mt, seed=0)


def test_grounded_generation_keeps_the_nearest_sample(world, bundle, monkeypatch):
    import handvla.vla.rerank as rr
    from handvla.data.store import EpisodeStore
    from handvla.vla import generate_motion
    from handvla.vla.data import prepare_image

    st = EpisodeStore(world)
    ep = st.load_episode(0, with_video=True)
    image = prepare_image(ep.video[0], ep.camera.K, False, (56, 56))
    model, proc, mt = bundle.model, bundle.processor, bundle.motion_tokenizer
    K = 6

    def run(box):
        monkeypatch.setattr(rr, "answer_questions", lambda m, p, ims, qs, **kw: [f"<ref>x</ref><box>[[{box}]]</box>"] * len(qs))
        return rr.generate_motion_grounded(model, proc, mt, [image, image], ["reach for the red cube", "wave"], 1,
                                           ["right", "right"], objects=[{"right": "red cube"}, {}], cameras=ep.camera,
                                           align=False, samples=K, seed=5)  # fmt: skip

    got = run("0, 0, 10, 10")
    # the same samples, drawn again in the same batch
    ref = generate_motion(model, proc, [image] * (K + 1), ["reach for the red cube"] * K + ["wave"], [1] * (K + 1),
                          ["right"] * (K + 1), do_sample=True, top_k=None, seed=5)  # fmt: skip
    assert len({tuple(m.reshape(-1)) for m in ref.motion[:K]}) > 1  # the samples differ
    ends = np.stack([mt.decode_motion(m[:, 0], side="right").wrist_pos[-1] for m in ref.motion[:K]])
    uv = ep.camera.project(ends)
    d = np.linalg.norm(uv / [ep.camera.width, ep.camera.height] * 1000 - [5.0, 5.0], axis=1)
    assert got.chosen[0] == int(np.argmin(d)) and got.chosen[1] == 0
    np.testing.assert_allclose(got.view_distance[0], d, rtol=1e-9)
    assert np.array_equal(got.motion[0], ref.motion[int(np.argmin(d))])
    assert np.array_equal(got.motion[1], ref.motion[K])  # a request naming nothing: one sample
    assert got.candidate_ends[0].shape == (K, 1, 3) and got.candidate_ends[1].shape == (1, 1, 3)
    assert got.boxes == [{"right": (0, 0, 10, 10)}, {}]
    # another box chooses the sample nearest it
    far = run("990, 990, 1000, 1000")
    d2 = np.linalg.norm(uv / [ep.camera.width, ep.camera.height] * 1000 - [995.0, 995.0], axis=1)
    assert far.chosen[0] == int(np.argmin(d2))
    if np.argmin(d2) != np.argmin(d):
        assert not np.array_equal(far.motion[0], got.motion[0])
    assert got.space == ["view", "view"]  # no table given: chosen in the image
    # on the table: the box centre's ray meets the raised table; the sample ending nearest that point is kept
    plane = support_plane_in_camera(ep.camera)
    monkeypatch.setattr(rr, "answer_questions", lambda m, p, ims, qs, **kw: ["[[400, 600, 440, 640]]"] * len(qs))
    on = rr.generate_motion_grounded(model, proc, mt, [image, image], ["reach for the red cube", "wave"], 1,
                                     ["right", "right"], objects=[{"right": "red cube"}, {}], cameras=ep.camera,
                                     align=False, samples=K, seed=5, support_planes=plane)  # fmt: skip
    point = view_points_on_plane(np.array([[420.0, 620.0]]), ep.camera, False, plane, 0.03)[0]
    diff = ends - point
    d3 = np.linalg.norm(diff - np.outer(diff @ plane[:3], plane[:3]), axis=1)  # along the table
    assert on.space == ["table", "view"] and on.chosen[0] == int(np.argmin(d3))
    np.testing.assert_allclose(on.object_points[0]["right"], point)
    np.testing.assert_allclose(on.object_distance_m[0], d3, rtol=1e-9)
    assert np.array_equal(on.motion[0], ref.motion[int(np.argmin(d3))])
    # a table the box's ray never meets (1 m above the camera): chosen in the image
    above = support_plane_in_camera(ep.camera, ep.camera.centre_world[2] + 1.0)
    off = rr.generate_motion_grounded(model, proc, mt, image, "reach for the red cube", 1, "right",
                                      objects={"right": "red cube"}, cameras=ep.camera, align=False, samples=K,
                                      seed=5, support_planes=[above])  # fmt: skip
    assert off.space == ["view"] and off.object_points[0]["right"] is None
    with pytest.raises(InputError, match="support_planes"):
        rr.generate_motion_grounded(model, proc, mt, image, "wave", objects={}, cameras=ep.camera, align=False,
                                    support_planes=np.zeros(4))  # fmt: skip
    with pytest.raises(InputError, match="samples"):
        rr.generate_motion_grounded(model, proc, mt, image, "wave", objects={}, cameras=ep.camera, align=False, samples=0)
    with pytest.raises(InputError, match="hands of mode"):
        rr.generate_motion_grounded(model, proc, mt, image, "wave", 1, "right", objects={"left": "red cube"},
                                    cameras=ep.camera, align=False)  # fmt: skip
    with pytest.raises(InputError, match="cameras"):
        rr.generate_motion_grounded(model, proc, mt, image, "wave", objects={}, cameras=ep.camera.K, align=False)


def test_evaluation_reports_rerank_scores(world, bundle, monkeypatch, benchmark_script):
    import handvla.vla.rerank as rr
    from handvla.vla.evaluate import evaluate_handworld
    from handvla.vla.processing import hands_for_mode

    with pytest.raises(ConfigError, match="block constraint"):
        evaluate_handworld(bundle, world, max_episodes=1, max_seconds=1, rerank_samples=2, constrained=False)
    r = evaluate_handworld(bundle, world, max_episodes=8, max_seconds=1, rerank_samples=3)
    s = r["summary"]["rerank"]
    rows = [row for row in r["episodes"] if "rerank_box_hits" in row]
    pairs = sum(len(row["target_hits"]) for row in rows)
    assert s["samples"] == 3 and pairs >= 3 and s["first_sample_target_accuracy_n"] == pairs
    for row in rows:
        assert len(row["rerank_box_hits"]) == len(row["target_hits"])
        for hit, anyhit in zip(row["target_hits"], row["rerank_any_hits"]):
            assert anyhit or not hit  # the kept sample is one of the samples
    choices = ("view", "table", "true_box_view", "true_box_table", "true_centre")
    for row in rows:  # every choice is one of the samples too; the kept one is the choice of its space
        for c in choices:
            assert len(row[f"rerank_{c}_hits"]) == len(row["target_hits"])
            assert all(a or not t for t, a in zip(row[f"rerank_{c}_hits"], row["rerank_any_hits"]))
        space = "table" if any(p is not None for p in row["rerank"]["object_points_m"].values()) else "view"
        assert row["rerank"]["space"] == space and row[f"rerank_{space}_hits"] == row["target_hits"]
        ends = np.asarray(row["rerank"]["final_wrists_m"])
        assert ends.shape == (row["rerank"]["samples"], len(hands_for_mode(row["hands"])), 3)
        assert row["rerank"]["samples"] == (3 if row["rerank"]["boxes"] else 1)  # naming nothing: one sample
    for key in ("box_points_at_target", "first_sample_target_accuracy", "any_sample_target_accuracy",
                *(f"{c}_choice_target_accuracy" for c in choices)):  # fmt: skip
        lo, hi = s[f"{key}_ci95"]
        assert lo <= s[key] <= hi
    assert sum(s["chosen_in"].values()) == len(rows)
    # boxes on the table (the model's answers replaced): every request is chosen in 3-D, by its point
    monkeypatch.setattr(rr, "answer_questions", lambda m, p, ims, qs, **kw: ["[[400, 600, 440, 640]]"] * len(qs))
    boxed = evaluate_handworld(bundle, world, max_episodes=8, max_seconds=1, rerank_samples=3)
    brows = [row for row in boxed["episodes"] if "rerank_box_hits" in row]
    named = [row for row in brows if row["rerank"]["boxes"]]
    assert len(named) >= 3 and boxed["summary"]["rerank"]["chosen_in"].get("table") == len(named)
    for row in named:
        assert row["rerank"]["space"] == "table" and row["rerank_table_hits"] == row["target_hits"]
        assert all(p is not None for p in row["rerank"]["object_points_m"].values())
    # the offline rules (benchmarks/vla_rerank_rules.py) on these rows agree with the evaluation's own rates
    from handvla.data.store import EpisodeStore

    offline = benchmark_script("vla_rerank_rules").score_rules(boxed["episodes"], EpisodeStore(world), False,
                                                              boxed["episodes"])  # fmt: skip
    bs = boxed["summary"]
    assert offline["pairs"] == bs["target_pairs"] == bs["rerank"]["any_sample_target_accuracy_n"]
    for rule, key in (("kept", "target_accuracy"), ("greedy", "target_accuracy")):
        assert offline["rules"][rule]["rate"] == pytest.approx(bs[key], abs=1e-4)
    for rule, key in (("any", "any_sample"), ("true_box_table", "true_box_table_choice"),
                      ("true_end_table", "true_centre_choice")):  # fmt: skip
        assert offline["rules"][rule]["rate"] == pytest.approx(bs["rerank"][f"{key}_target_accuracy"], abs=1e-4)
    monkeypatch.undo()
    view = evaluate_handworld(bundle, world, max_episodes=8, max_seconds=1, rerank_samples=3, rerank_space="view")
    vrows = [row for row in view["episodes"] if "rerank_box_hits" in row]
    assert [row["target_hits"] for row in vrows] == [row["rerank_view_hits"] for row in vrows]
    assert [row["rerank_view_hits"] for row in vrows] == [row["rerank_view_hits"] for row in rows]  # same samples
    with pytest.raises(ConfigError, match="rerank_space"):
        evaluate_handworld(bundle, world, max_episodes=1, rerank_samples=2, rerank_space="3d")
    assert len(rows) == len(r["episodes"])  # every episode goes through the grounded decoder
    assert s["any_sample_target_accuracy"] >= max(s["first_sample_target_accuracy"], r["summary"]["target_accuracy"])


def test_counterfactual_reranked_asks_for_the_asked_object(world, bundle, monkeypatch):
    import handvla.vla.rerank as rr
    from handvla.vla.evaluate import evaluate_counterfactual
    from handvla.vla.grounding import grounding_prompt

    asked = []

    def answers(m, p, ims, qs, **kw):
        asked.extend(qs)
        return ["[[400, 600, 440, 640]]"] * len(qs)

    monkeypatch.setattr(rr, "answer_questions", answers)
    res = evaluate_counterfactual(bundle, world, max_episodes=12, seconds=1, batch_size=4, rerank_samples=3)
    s, rows = res["summary"], res["rows"]
    assert s["episodes"] >= 2 and len(rows) == 2 * s["episodes"]
    assert s["rerank"] == {"samples": 3, "temperature": 1.0, "space": "table", "motion_from": "image"}
    # one grounding question per request, naming the object that request asks for
    assert asked == [grounding_prompt(r["task"].split(" hand to the ")[1]) for r in rows]
    for key in ("named_target_accuracy", "other_object_accuracy"):
        lo, hi = s[f"{key}_ci95"]
        assert lo <= s[key] <= hi
    for r in rows:
        assert len(r["final_wrist_m"]) == 3
    greedy = evaluate_counterfactual(bundle, world, max_episodes=12, seconds=1, batch_size=4)
    assert [r["task"] for r in greedy["rows"]] == [r["task"] for r in rows] and "rerank" not in greedy["summary"]
    with pytest.raises(ConfigError, match="rerank_space"):
        evaluate_counterfactual(bundle, world, max_episodes=1, rerank_samples=2, rerank_space="3d")
