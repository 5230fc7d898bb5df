"""Motion from stated places ("where, then how"; docs/vla-learning.md (15)).

Checked: `place_prompt` puts the places where the image was and refuses prompts without exactly one image;
``data.place_motion`` adds image-free copies of the generation samples whose places are the true boxes of
their hands' targets (recomputed here from the scene with `object_box_in_view`), seeded, in the count asked,
the original samples untouched, and refuses stores without scene truth; such a sample encodes without pixels
or image tokens, with only its motion labelled; `generate_motion(places=...)` decodes from the places (the
image unused, the same answer whatever image is passed) beside image requests in one batch; and
`generate_motion_grounded(motion_from="places")` states the model's own boxes (monkeypatched here) and keeps
the samples `generate_motion(places=...)` draws with the same seed; with ``data.place_view: canonical`` the
boxes are those of the canonical camera's view, in training (the true boxes) and at inference (the model's
own), moved by `box_to_view` (checked against camera K^-1 then canonical K).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from handvla.errors import ConfigError, InputError
from handvla.vla.processing import IGNORE_INDEX, generation_prompt, place_prompt

BOX = "<ref>the red cube</ref><box>[[10, 20, 30, 40]]</box>"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    root = tmp_path_factory.mktemp("place_motion")
    cfg = HandWorldConfig(width=64, height=48, seconds=2.0, shadows=False, tasks=("reach", "both_pick_up", "wave"))
    generate_episodes(8, root / "hw", seed=7, config=cfg, progress=False)
    return root / "hw"


@pytest.fixture(scope="module")
def bundle():
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer
    from handvla.vla import build_vla

    return build_vla("tiny", motion_tokenizer=MotionTokenizer(TokenizerConfig(**PRESETS["tiny"])), seed=0)


def test_place_prompt_stands_where_the_image_was():
    p = generation_prompt("reach for the red cube", 1, "right")
    assert place_prompt(p, BOX) == f"In {BOX}, reach for the red cube, what is the 15-step motion sequence for the right hand?"
    with pytest.raises(InputError, match="exactly one <image>"):
        place_prompt(generation_prompt("reach for the red cube", 1, "right", image=False), BOX)
    with pytest.raises(InputError, match="places"):
        place_prompt(p, "the red cube")


def _true_places(store, s):
    """The places of sample ``s`` recomputed from its episode's scene: each hand's first target, left first."""
    from handvla.data.schema import camera_from_row
    from handvla.vla.grounding import grounding_answer, object_box_in_view, object_name, scene_objects
    from handvla.vla.processing import hands_for_mode

    row = store.meta(s.episode)
    gt = json.loads(row["ground_truth"])
    objs = {o["object_id"]: o for o in scene_objects(gt, "t")}
    out = ""
    for h in ("left", "right"):
        if h not in hands_for_mode(s.hand_mode):
            continue
        ids = [t["object_id"] for t in gt["targets"] if t["hand"] == h]
        if ids:
            box = object_box_in_view(objs[ids[0]], camera_from_row(row), False)
            if box is not None:
                out += grounding_answer(object_name(objs[ids[0]]), box)
    return out


def test_place_motion_samples_state_the_true_boxes(world):
    from handvla.data.store import EpisodeStore
    from handvla.vla.data import VLADataConfig, collect_samples

    base = VLADataConfig(stores=[str(world)], seconds=[1], align=False)
    specs0, _, rep0 = collect_samples(base)
    assert "place_motion" not in rep0
    cfg = base.model_copy(update={"place_motion": 1.5})
    specs, _, rep = collect_samples(cfg)
    assert specs[: len(specs0)] == specs0  # the original samples untouched
    added = specs[len(specs0) :]
    store = EpisodeStore(world)
    eligible = [s for s in specs0 if s.task_type == "generation" and _true_places(store, s)]
    assert len(eligible) >= 4 and rep["place_motion"]["distinct"] == len(eligible)
    assert len(added) == round(1.5 * len(eligible)) == rep["place_motion"]["samples"] and rep["samples"] == len(specs)
    originals = {(s.episode, s.hand_mode, s.start_s, s.end_s): s for s in eligible}
    for s in added:
        o = originals[(s.episode, s.hand_mode, s.start_s, s.end_s)]
        assert s.task_type == "generation" and s.image_s is None and "<image>" not in s.prompt
        assert s.prompt == o.prompt.replace("<image>", _true_places(store, o))
    # each distinct sample once before any repeats; a wave (no target) never gets one
    assert len({s.prompt for s in added[: len(eligible)]}) == len({s.prompt for s in eligible})
    assert not any("wave" in s.prompt for s in added)
    assert collect_samples(cfg)[0] == specs  # deterministic


def test_place_motion_needs_scene_truth(tmp_path, world):
    from handvla.vla.data import VLADataConfig, collect_samples

    dst = tmp_path / "plain"
    shutil.copytree(world, dst)
    for f in (dst / "meta" / "episodes").rglob("*.parquet"):
        t = pq.read_table(f)
        i = t.schema.get_field_index("ground_truth")
        pq.write_table(t.set_column(i, "ground_truth", pa.nulls(len(t), "string")), f)
    with pytest.raises(ConfigError, match="data.place_motion"):
        collect_samples(VLADataConfig(stores=[str(dst)], seconds=[1], place_motion=1.0))


def test_place_motion_samples_encode_without_pixels(world, bundle):
    from handvla.vla.data import VLADataConfig, VLAInstructionDataset, collect_samples

    specs, dirs, _ = collect_samples(VLADataConfig(stores=[str(world)], seconds=[1], align=False, place_motion=1.0))
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, bundle.motion_tokenizer, align=False)
    i = next(j for j, s in enumerate(ds.specs) if s.image_s is None)
    key = lambda s: (s.episode, s.hand_mode, s.start_s, s.end_s, s.task_type)  # noqa: E731
    twin = next(j for j, s in enumerate(ds.specs) if s.image_s is not None and key(s) == key(ds.specs[i]))
    enc, ref = ds.encode(i), ds.encode(twin)
    assert enc.pixel_values is None and ref.pixel_values is not None
    ids, labels = np.asarray(enc.input_ids), np.asarray(enc.labels)
    assert bundle.model.config.image_token_id not in ids
    # the same motion answer, labelled alone; the stated places are prompt
    np.testing.assert_array_equal(ids[labels != IGNORE_INDEX], np.asarray(ref.input_ids)[np.asarray(ref.labels) != IGNORE_INDEX])
    text = bundle.processor.decode(ids[labels == IGNORE_INDEX].tolist(), skip_special_tokens=False)
    assert "<box>" in text and "<IMG_CONTEXT>" not in text
    batch = ds.collate([ds[i], ds[twin]])  # image and image-free samples in one batch
    out = bundle.model(**batch, answer_logits_only=True)
    assert np.isfinite(float(out.loss.detach()))


def test_generation_from_places_ignores_the_image(world, bundle):
    from handvla.data.store import EpisodeStore
    from handvla.vla import generate_motion
    from handvla.vla.data import prepare_image

    ep = EpisodeStore(world).load_episode(0, with_video=True)
    image = prepare_image(ep.video[0], ep.camera.K, False, (56, 56))
    blank = np.zeros_like(np.asarray(image))
    model, proc = bundle.model, bundle.processor
    g = generate_motion(model, proc, [image, blank, image], ["reach for the red cube"] * 3, 1, "right",
                        places=[BOX, BOX, None])  # fmt: skip
    a = generate_motion(model, proc, image, "reach for the red cube", 1, "right")
    np.testing.assert_array_equal(g.motion[0], g.motion[1])  # the image is not read
    np.testing.assert_array_equal(g.motion[2], a.motion[0])  # an image request beside them is unchanged
    prompt = proc.decode(g.sequences[0][: g.prompt_length].tolist(), skip_special_tokens=False)
    assert f"In {BOX}, reach for the red cube" in prompt and model.config.image_token_id not in g.sequences[0].tolist()


def test_grounded_generation_from_places(world, bundle, monkeypatch):
    import handvla.vla.rerank as rr
    from handvla.data.store import EpisodeStore
    from handvla.vla import generate_motion
    from handvla.vla.data import prepare_image

    ep = EpisodeStore(world).load_episode(0, with_video=True)
    image = prepare_image(ep.video[0], ep.camera.K, False, (56, 56))
    model, proc, mt = bundle.model, bundle.processor, bundle.motion_tokenizer
    monkeypatch.setattr(rr, "answer_questions", lambda m, p, ims, qs, **kw: ["[[10, 20, 30, 40]]"] * len(qs))
    tasks = ["pick up the red cube with your left hand and the blue ball with your right hand", "wave"]
    objects = [{"left": "red cube", "right": "blue ball"}, {}]
    got = rr.generate_motion_grounded(model, proc, mt, [image, image], tasks, 1, ["both", "right"], objects=objects,
                                      cameras=ep.camera, align=False, samples=3, seed=4, motion_from="places")  # fmt: skip
    places = "<ref>the red cube</ref><box>[[10, 20, 30, 40]]</box><ref>the blue ball</ref><box>[[10, 20, 30, 40]]</box>"
    assert got.places == [places, ""]
    ref = generate_motion(model, proc, [image] * 4, [tasks[0]] * 3 + [tasks[1]], [1] * 4, ["both"] * 3 + ["right"],
                          do_sample=True, top_k=None, seed=4, places=[places] * 3 + [None])  # fmt: skip
    assert np.array_equal(got.motion[0], ref.motion[got.chosen[0]]) and np.array_equal(got.motion[1], ref.motion[3])
    # one sample from places is the greedy answer from them
    one = rr.generate_motion_grounded(model, proc, mt, image, tasks[0], 1, "both", objects=objects[0],
                                      cameras=ep.camera, align=False, samples=1, motion_from="places")  # fmt: skip
    greedy = generate_motion(model, proc, image, tasks[0], 1, "both", places=places)
    np.testing.assert_array_equal(one.motion[0], greedy.motion[0])
    with pytest.raises(InputError, match="motion_from"):
        rr.generate_motion_grounded(model, proc, mt, image, "wave", objects={}, cameras=ep.camera, align=False,
                                    motion_from="text")  # fmt: skip


def test_evaluation_from_places(world, bundle, monkeypatch):
    import handvla.vla.rerank as rr
    from handvla.vla.evaluate import evaluate_counterfactual, evaluate_handworld

    with pytest.raises(ConfigError, match="rerank_samples"):
        evaluate_handworld(bundle, world, max_episodes=1, motion_from="places")
    with pytest.raises(ConfigError, match="motion_from"):
        evaluate_handworld(bundle, world, max_episodes=1, rerank_samples=1, motion_from="text")
    monkeypatch.setattr(rr, "answer_questions", lambda m, p, ims, qs, **kw: ["[[400, 600, 440, 640]]"] * len(qs))
    r = evaluate_handworld(bundle, world, max_episodes=6, max_seconds=1, rerank_samples=1, motion_from="places")
    named = [row for row in r["episodes"] if row["rerank"]["boxes"]]
    assert named and r["summary"]["rerank"]["from_places"] == len(named)
    for row in r["episodes"]:
        assert bool(row["rerank"]["places"]) == bool(row["rerank"]["boxes"])
        assert row["rerank"]["places"].count("[[400, 600, 440, 640]]") == len(row["rerank"]["boxes"])
    cf = evaluate_counterfactual(bundle, world, max_episodes=8, seconds=1, rerank_samples=1, motion_from="places")
    assert cf["summary"]["rerank"]["motion_from"] == "places"
    with pytest.raises(ConfigError, match="motion_from"):
        evaluate_counterfactual(bundle, world, max_episodes=1, motion_from="places")


def test_places_in_the_canonical_view(world, bundle, monkeypatch):
    """``data.place_view: canonical``: a stated box means one ray from the camera whatever the rig (a prompt
    without the image does not say which camera took it). Training states the true boxes moved to the
    canonical camera's image, inference moves the model's own boxes there the same way, and the checkpoint's
    config says which view its places are in."""
    import handvla.vla.rerank as rr
    from handvla.camera import CANONICAL_IMAGE_SIZE, CANONICAL_K
    from handvla.data.store import EpisodeStore
    from handvla.vla.data import VLADataConfig, collect_samples, prepare_image
    from handvla.vla.grounding import box_to_view, model_place_view, parse_grounding_prefix, stated_places
    from handvla.vla.pretrain import load_pretrain_config

    ep = EpisodeStore(world).load_episode(0, with_video=True)
    cam = ep.camera
    # the corners are the same rays in both views: camera pixel -> K^-1 -> canonical K (an independent path)
    box = (100, 200, 300, 400)
    canon = box_to_view(box, cam, False, True)
    for (x, y), (cx, cy) in zip([box[:2], box[2:]], [canon[:2], canon[2:]]):
        ray = np.linalg.inv(cam.K) @ np.array([x / 1000 * cam.width, y / 1000 * cam.height, 1.0])
        p = CANONICAL_K @ ray
        want = [p[0] / p[2] / CANONICAL_IMAGE_SIZE[0] * 1000, p[1] / p[2] / CANONICAL_IMAGE_SIZE[1] * 1000]
        np.testing.assert_allclose([cx, cy], want, atol=0.51)
    assert canon != box and box_to_view(box, cam, True, True) == box == box_to_view(box, cam, False, False)

    # training: the same copies as in the model's view, each box moved to the canonical one
    base = VLADataConfig(stores=[str(world)], seconds=[1], align=False, place_motion=1.0)
    in_view = [s for s in collect_samples(base)[0] if s.image_s is None]
    specs = collect_samples(base.model_copy(update={"place_view": "canonical"}))[0]
    canonical = [s for s in specs if s.image_s is None]
    assert len(canonical) == len(in_view) >= 4
    episodes = {s.episode: EpisodeStore(world).load_episode(s.episode, with_video=False).camera for s in in_view}
    for a, b in zip(in_view, canonical):
        assert (a.episode, a.hand_mode, a.start_s) == (b.episode, b.hand_mode, b.start_s)
        ia, pb = parse_grounding_prefix(a.prompt), parse_grounding_prefix(b.prompt)
        assert [n for n, _ in ia] == [n for n, _ in pb]
        assert [box_to_view(bx, episodes[a.episode], False, True) for _, bx in ia] == [bx for _, bx in pb]
    with pytest.raises(ConfigError, match="data.place_view"):
        load_pretrain_config(None, ["data.stores=[x]", "train.output_dir=x", "data.place_view=camera"])

    # inference: the model's own box is moved to the view its config names (checkpoints before the option: model)
    model, proc, mt = bundle.model, bundle.processor, bundle.motion_tokenizer
    assert model_place_view(model.config) == "model"
    monkeypatch.setattr(model.config, "place_view", "canonical", raising=False)
    monkeypatch.setattr(rr, "answer_questions", lambda m, p, ims, qs, **kw: ["[[10, 20, 30, 40]]"] * len(qs))
    image = prepare_image(ep.video[0], cam.K, False, (56, 56))
    got = rr.generate_motion_grounded(model, proc, mt, image, "reach for the red cube", 1, "right",
                                      objects={"right": "red cube"}, cameras=cam, align=False, samples=1,
                                      motion_from="places")  # fmt: skip
    moved = box_to_view((10, 20, 30, 40), cam, False, True)
    assert got.places == [stated_places({"right": ("red cube", moved)})] and moved != (10, 20, 30, 40)
