"""Best-of-k motion chosen by the model's own grounding (`handvla.vla.rerank`).

Checked: a camera-frame point lands in the model's view where the object boxes of the grounding questions
put it (canonical warp or not); HandWorld instructions give each acting hand the object its ground truth
names (text only); the choice is the sample whose named hands end nearest their boxes, recomputed here from
the samples, the camera and the answered boxes; other boxes choose other samples; the evaluation's rerank
scores follow their definitions.
"""

from __future__ import annotations

import numpy as np
import pytest

from handvla.errors import ConfigError, InputError
from handvla.vla.grounding import (
    instruction_object_names,
    object_box_in_view,
    object_name,
    points_in_view,
    scene_objects,
)
from handvla.vla.rerank import choose_by_boxes


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
    with pytest.raises(InputError, match="samples"):
        rr.generate_motion_grounded(model, proc, mt, image, "wave", objects={}, cameras=ep.camera, align=False, samples=0)
    with pytest.raises(InputError, match="hands of mode"):
        rr.generate_motion_grounded(model, proc, mt, image, "wave", 1, "right", objects={"left": "red cube"},
                                    cameras=ep.camera, align=False)  # fmt: skip
    with pytest.raises(InputError, match="cameras"):
        rr.generate_motion_grounded(model, proc, mt, image, "wave", objects={}, cameras=ep.camera.K, align=False)


def test_evaluation_reports_rerank_scores(world, bundle):
    from handvla.vla.evaluate import evaluate_handworld

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
    for row in rows:  # the choice by the true box is one of the samples too
        assert len(row["rerank_true_box_hits"]) == len(row["target_hits"])
        assert all(a or not t for t, a in zip(row["rerank_true_box_hits"], row["rerank_any_hits"]))
    for key in ("box_points_at_target", "first_sample_target_accuracy", "any_sample_target_accuracy",
                "true_box_choice_target_accuracy"):  # fmt: skip
        lo, hi = s[f"{key}_ci95"]
        assert lo <= s[key] <= hi
    assert len(rows) == len(r["episodes"])  # every episode goes through the grounded decoder
    assert s["any_sample_target_accuracy"] >= max(s["first_sample_target_accuracy"], r["summary"]["target_accuracy"])
