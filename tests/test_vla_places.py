"""Places said in end-point ids (``motion_answer_prefix: target_places`` / ``hand_places``; `handvla.vla.places`).

Checked: a place is the end-point bins of a camera-frame point (against the bins computed here from the
tokenizer's span by hand), reads back from generated text and decodes to a point in its own cell; the answer
of a generation sample starts with its hands' target places (the targets' centres recomputed here from the
scene's poses and the camera's extrinsics), labelled, then its motion; a grounding question is answered with
the object's place; decoding states whole places in axis order (at most one per hand) before the blocks,
whatever the model; the evaluation scores the stated places; a layout without end points is refused. With
``hand_places`` a left hand's place is mirrored (the tokenizer's frame) and mapped back when scored, while
grounding answers stay in the camera frame. With ``place_names`` each place comes after its object's name
(written, read back, decoded under the automaton, scored, forced, printed).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import end_point_bins, places_bundle

from handvla.errors import ConfigError, InputError
from handvla.vla.processing import IGNORE_INDEX


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    root = tmp_path_factory.mktemp("places")
    cfg = HandWorldConfig(width=64, height=48, seconds=2.0, shadows=False, tasks=("reach", "both_pick_up", "wave"))
    generate_episodes(8, root / "hw", seed=7, config=cfg, progress=False)
    return root / "hw"


@pytest.fixture(scope="module")
def bundle():
    return places_bundle()


def test_places_are_end_point_bins_and_read_back(bundle):
    from handvla.vla.places import nearest_object_by_ray, parse_places, place_ids, place_point, place_text

    mt = bundle.motion_tokenizer
    lay, cfg = mt.layout, mt.config
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-0.3, 0.3, 20), rng.uniform(-0.2, 0.3, 20), rng.uniform(0.3, 0.9, 20)])
    ids = place_ids(pts, mt)
    lo = lay.end_point_id_range[0]
    for p, row in zip(pts, ids):
        want = end_point_bins(p, cfg)
        np.testing.assert_array_equal(row - lo - np.arange(3) * lay.end_point_bins, want)
    text = place_text(ids[:2])
    assert text.count("<motion_id_") == 6
    back = parse_places("noise " + text + "<motion_id_0>", lay)
    assert len(back) == 2
    for b, p in zip(back, pts[:2]):
        q = place_point(b, cfg)
        np.testing.assert_array_equal(end_point_bins(q, cfg), end_point_bins(p, cfg))  # its own cell
    # a run out of axis order ends the list
    assert parse_places(place_text(ids[0][[1, 0, 2]]), lay) == []
    near = {1: np.array([0.1, 0.0, 0.5]), 2: np.array([-0.1, 0.0, 0.5])}
    assert nearest_object_by_ray(np.array([0.18, 0.0, 0.9]), near) == 1  # by image place, not depth
    assert nearest_object_by_ray(np.zeros(3), {}) is None


def _centre(store, episode, object_id):
    from handvla.data.schema import camera_from_row

    row = store.meta(episode)
    gt = json.loads(row["ground_truth"])
    obj = next(o for o in gt["scene"]["objects"] if o["object_id"] == object_id)
    E = camera_from_row(row).extrinsics
    return E[:3, :3] @ np.asarray(obj["pose"]).reshape(4, 4)[:3, 3] + E[:3, 3]


@pytest.fixture
def prefix(request, bundle):
    """The bundle's motion_answer_prefix set to ``request.param`` for one test, then restored."""
    old = bundle.model.config.motion_answer_prefix
    bundle.model.config.motion_answer_prefix = request.param
    yield request.param
    bundle.model.config.motion_answer_prefix = old


@pytest.mark.parametrize("prefix", ["target_places", "hand_places"], indirect=True)
def test_answers_state_target_places_then_motion(world, bundle, prefix):
    from handvla.data.store import EpisodeStore
    from handvla.vla.data import VLADataConfig, VLAInstructionDataset, collect_samples
    from handvla.vla.processing import hands_for_mode

    specs, dirs, _ = collect_samples(VLADataConfig(stores=[str(world)], seconds=[1], align=False, grounding=1.0))
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, bundle.motion_tokenizer, align=False)
    assert bundle.processor.config.motion_answer_prefix == prefix  # the dataset reads the model's config
    store, mt, vocab = EpisodeStore(world), bundle.motion_tokenizer, bundle.processor.vocab
    lo = vocab.motion_offset + mt.layout.end_point_id_range[0]
    nb = mt.layout.end_point_bins
    checked = {"generation": 0, "grounding": 0, "none": 0}
    for i, s in enumerate(ds.specs):
        if s.task_type not in ("generation", "grounding"):
            continue
        enc = ds.encode(i)
        ans = np.asarray(enc.input_ids)[np.asarray(enc.labels) != IGNORE_INDEX]
        gt = json.loads(store.meta(s.episode)["ground_truth"])
        if s.task_type == "grounding":  # its values: the next test
            assert len(ans) == 4 and ans[-1] == vocab.eos_id  # three place ids, then the end of the turn
            got = ans[:3] - lo - np.arange(3) * nb
            assert ((got >= 0) & (got < nb)).all()
            checked["grounding"] += 1
            continue
        hands = hands_for_mode(s.hand_mode)
        wanted = []
        for h in hands:
            tids = [t["object_id"] for t in gt.get("targets") or [] if t["hand"] == h]
            if tids:
                c = _centre(store, s.episode, tids[0])
                if prefix == "hand_places" and h == "left":  # the hand's own frame: mirrored, as the tokenizer
                    c = c * np.array([-1.0, 1.0, 1.0])
                wanted.append(end_point_bins(c, mt.config))
        k = 3 * len(wanted)
        assert ans[k] == vocab.mot_start_id  # the blocks follow the places at once
        if wanted:
            got = (ans[:k] - lo).reshape(-1, 3) - np.arange(3) * nb
            np.testing.assert_array_equal(got, np.stack(wanted))
            checked["generation"] += 1
        else:
            checked["none"] += 1
    assert checked["generation"] >= 3 and checked["grounding"] >= 3 and checked["none"] >= 1
    batch = ds.collate([ds[0], ds[1]])
    assert np.isfinite(float(bundle.model(**batch, answer_logits_only=True).loss.detach()))


@pytest.mark.parametrize("prefix", ["target_places", "hand_places"], indirect=True)
def test_grounding_answer_is_the_named_objects_place(world, bundle, prefix):
    from handvla.data.store import EpisodeStore
    from handvla.vla.data import VLADataConfig, VLAInstructionDataset, collect_samples
    from handvla.vla.grounding import object_name

    specs, dirs, _ = collect_samples(VLADataConfig(stores=[str(world)], seconds=[1], align=False, grounding=2.0))
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, bundle.motion_tokenizer, align=False)
    store, mt = EpisodeStore(world), bundle.motion_tokenizer
    n = 0
    for s in ds.specs:
        if s.task_type != "grounding":
            continue
        gt = json.loads(store.meta(s.episode)["ground_truth"])
        obj = next(o for o in gt["scene"]["objects"] if f"where is the {object_name(o)}?" in s.prompt)
        want = end_point_bins(_centre(store, s.episode, obj["object_id"]), mt.config)
        ids = [int(t) for t in ds.answer_text(s).replace("<motion_id_", " ").replace(">", " ").split()]
        np.testing.assert_array_equal(np.asarray(ids) - mt.layout.end_point_id_range[0] - np.arange(3) * 16, want)
        n += 1
    assert n >= 5


def test_decoding_states_whole_places_before_the_blocks(world, bundle):
    from handvla.data.store import EpisodeStore
    from handvla.vla import generate_motion
    from handvla.vla.data import prepare_image
    from handvla.vla.generation import MotionBlockConstraint
    from handvla.vla.places import parse_places

    ep = EpisodeStore(world).load_episode(0, with_video=True)
    image = prepare_image(ep.video[0], ep.camera.K, False, (56, 56))
    model, proc = bundle.model, bundle.processor
    lay = proc.vocab.layout
    for seed in range(3):
        g = generate_motion(model, proc, [image] * 2, ["reach for the red cube"] * 2, 1, ["right", "both"],
                            do_sample=True, seed=seed)  # fmt: skip
        for i, hands in enumerate((1, 2)):
            assert g.motion[i].shape == (1, hands, lay.tokens_per_block)
            places = parse_places(g.prefix_texts[i], lay)
            assert len(places) <= 2 and g.prefix_texts[i].count("<motion_id_") == 3 * len(places)
    # the automaton itself: axis order, <mot> only between whole places, forced after the last
    v = proc.vocab
    c = MotionBlockConstraint(v, 0, 1, place_prefix=2)
    V = v.motion_token_range[1] + 4
    ep_lo = v.motion_offset + lay.end_point_id_range[0]
    seq: list[int] = []
    for step in range(7):
        allowed = torch.isfinite(c(torch.tensor([seq], dtype=torch.long), torch.zeros(1, V)))[0]
        if step < 6:
            a = step % 3
            want = set(range(ep_lo + a * lay.end_point_bins, ep_lo + (a + 1) * lay.end_point_bins))
            if a == 0:
                want.add(v.mot_start_id)
            assert set(torch.nonzero(allowed).flatten().tolist()) == want
            seq.append(ep_lo + a * lay.end_point_bins)
        else:
            assert torch.nonzero(allowed).flatten().tolist() == [v.mot_start_id]
    assert c.max_new_tokens == 6 + v.block_length + 1
    # one cap per row (one place per hand of the row's request): after one place, row 0 (one hand) must start
    # its blocks, row 1 (two hands) may state a second place
    c = MotionBlockConstraint(v, 0, [1, 2], place_prefix=[1, 2])
    seq = [[ep_lo + a * lay.end_point_bins for a in range(3)]] * 2
    allowed = torch.isfinite(c(torch.tensor(seq, dtype=torch.long), torch.zeros(2, V)))
    assert torch.nonzero(allowed[0]).flatten().tolist() == [v.mot_start_id]
    assert allowed[1, v.mot_start_id] and allowed[1, ep_lo] and int(allowed[1].sum()) == lay.end_point_bins + 1
    assert c.max_new_tokens == 6 + 2 * v.block_length + 1
    with pytest.raises(InputError, match="place_prefix"):
        MotionBlockConstraint(v, 0, 1, place_prefix=1, text_prefix_tokens=8)


def test_evaluation_scores_the_stated_places(world, bundle):
    from handvla.vla.evaluate import evaluate_handworld

    res = evaluate_handworld(bundle, world, max_seconds=1)
    scored = [r for r in res["episodes"] if r.get("prefix_hits")]
    assert scored and "prefix_target_accuracy" in res["summary"]
    for r in scored:
        assert len(r["prefix_hits"]) == len(r["motion_follows_prefix"])


def test_places_need_end_point_ids():
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.layout import token_layout
    from handvla.vla.configuration import HandVLAConfig

    layout = token_layout(TokenizerConfig(**PRESETS["tiny"])).to_dict()
    for prefix in ("target_places", "hand_places"):
        with pytest.raises(ConfigError, match=prefix):
            HandVLAConfig(motion_token_layout=layout, motion_answer_prefix=prefix)


def test_hand_frame_places_are_mirrored_for_left_hands_and_scored_back(world, bundle):
    """hand_places: a left hand's place is its target's centre with x negated (the tokenizer's frame), and the
    evaluation maps it back before asking which object it points at."""
    from handvla.data.store import EpisodeStore
    from handvla.vla.evaluate import _score_places, object_positions_camera
    from handvla.vla.places import in_place_frame, nearest_object_by_ray, place_frame, place_ids, place_text

    p = np.array([[0.2, -0.1, 0.7], [-0.3, 0.05, 0.9]])
    np.testing.assert_array_equal(in_place_frame(p, "left", "hand"), p * [-1, 1, 1])
    np.testing.assert_array_equal(in_place_frame(in_place_frame(p, "left", "hand"), "left", "hand"), p)
    for hand, frame in (("right", "hand"), ("left", "camera"), ("left", None)):
        np.testing.assert_array_equal(in_place_frame(p, hand, frame), p)
    assert [place_frame(type("C", (), {"motion_answer_prefix": v})) for v in ("target_places", "hand_places", "none")] == [
        "camera", "hand", None]

    store, mt = EpisodeStore(world), bundle.motion_tokenizer
    found = None  # an object whose mirrored centre would point at another object (so a missing map-back fails)
    for k in range(len(store)):
        ep = store.load_episode(k, with_video=False)
        pos = object_positions_camera(ep, 0)
        for oid, c in pos.items():
            if len(pos) > 1 and nearest_object_by_ray(c * [-1, 1, 1], pos) != oid:
                found = (ep, pos, oid)
                break
        if found:
            break
    assert found is not None
    ep, pos, oid = found
    ctx = {"ground_truth": ep.ground_truth, "objects": pos, "pairs": [("left", oid)], "final_wrist": {"left": pos[oid]}}
    said = place_text(place_ids(in_place_frame(pos[oid], "left", "hand"), mt))
    for frame, hit in (("hand", True), ("camera", False)):
        row: dict = {}
        _score_places(row, ctx, said, ep, mt, False, "test", frame)
        assert row["prefix_hits"] == [hit]


def test_counterfactual_evaluation_scores_the_stated_places(world, bundle):
    from handvla.vla.evaluate import evaluate_counterfactual

    res = evaluate_counterfactual(bundle, world, seconds=1)
    s = res["summary"]
    for which in ("factual", "counterfactual"):
        assert f"{which}_place_accuracy" in s and f"{which}_motion_follows_place_rate" in s
    assert all("answer_prefix" in r for r in res["rows"])
    # the other object's true place forced as the answer's start: scored against both objects
    assert s["stated_other_requests"] > 0
    assert s["stated_object_accuracy_n"] == s["asked_object_accuracy_when_other_stated_n"] == s["stated_other_requests"]


def test_generate_prints_the_stated_places(world, bundle, tmp_path, capsys):
    from PIL import Image

    from handvla.cli import main
    from handvla.data.store import EpisodeStore
    from handvla.vla import save_vla
    from handvla.vla.places import parse_places, place_point

    ckpt = save_vla(tmp_path / "ckpt", bundle)
    ep = EpisodeStore(world).load_episode(0, with_video=True)
    Image.fromarray(ep.video[0]).save(tmp_path / "frame.png")
    c = ep.camera
    stated = []
    for seed in range(4):  # sampled, so that some answers state places
        argv = ["generate", "--ckpt", str(ckpt), "--image", str(tmp_path / "frame.png"), "--intrinsics",
                f"{c.fx},{c.fy},{c.cx},{c.cy}", "--instruction", "pick up the red cube", "--hands", "both",
                "--seconds", "1", "--sample", "--seed", str(seed), "--no-video", "--out", str(tmp_path / f"g{seed}")]  # fmt: skip
        assert main(argv) == 0
        info = json.loads(capsys.readouterr().out)
        want = [place_point(b, bundle.motion_tokenizer.config) for b in parse_places(info["answer_prefix"], bundle.motion_tokenizer.layout)]
        got = info.get("stated_places_m", [])
        assert len(got) == len(want)
        np.testing.assert_allclose(np.asarray(got).reshape(-1, 3), np.asarray(want).reshape(-1, 3), atol=1e-4)
        with np.load(tmp_path / f"g{seed}.npz") as d:
            assert d["stated_places_m"].shape == (len(want), 3)
        stated += got
    assert stated  # at least one answer stated a place
    # ground, then act: the stated place is the model's grounding answer for the instruction's object
    argv = ["generate", "--ckpt", str(ckpt), "--image", str(tmp_path / "frame.png"), "--instruction",
            "pick up the red cube", "--hands", "right", "--seconds", "1", "--ground-then-act", "--no-video",
            "--out", str(tmp_path / "gta")]  # fmt: skip
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    g = info["ground_then_act"]
    assert g["objects"] == {"right": "red cube"} and g["stated"]
    np.testing.assert_allclose(info["stated_places_m"], [g["places_m"]["right"]], atol=1e-4)
    assert main(argv[:-2] + ["--rerank-samples", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--ground-then-act" in capsys.readouterr().err


def test_vla_eval_ground_then_act(world, bundle, tmp_path, capsys):
    """``handvla vla-eval --ground-then-act --counterfactual``: beside the greedy answers, the grounded ones
    (paired against them, per task) and the counterfactual requests the same way; per-episode rows in --out."""
    from handvla.cli import main
    from handvla.vla import save_vla

    ckpt = save_vla(tmp_path / "ckpt", bundle)
    argv = ["vla-eval", "--ckpt", str(ckpt), "--store", f"seen={world}", "--episodes", "6", "--max-seconds", "1",
            "--translation-episodes", "0", "--prediction-episodes", "0", "--ground-then-act", "--counterfactual",
            "--quiet", "--out", str(tmp_path / "eval.json")]  # fmt: skip
    assert main(argv) == 0
    s = json.loads(capsys.readouterr().out)["seen"]
    g = s["ground_then_act"]
    assert g["target_pairs"] == s["target_pairs"] > 0
    pv = g["paired_vs_greedy"]
    assert pv["n"] == s["target_pairs"] and 0 <= pv["won"] + pv["lost"] <= pv["n"]
    assert sum(t["target_pairs"] for t in g["per_task"].values()) == g["target_pairs"]
    assert "factual_place_accuracy" in s["counterfactual_ground_then_act"]
    rows = json.loads((tmp_path / "eval.json").read_text())["seen"]["ground_then_act_episodes"]
    assert len(rows) == 6 and all("answer_prefix" in r for r in rows if r["target_hits"])


def test_places_without_image_state_the_places_and_show_no_image(world, bundle):
    from handvla.vla.data import VLADataConfig, VLAInstructionDataset, collect_samples

    base = VLADataConfig(stores=[str(world)], seconds=[1], align=False)
    specs0, _, _ = collect_samples(base)
    specs, dirs, rep = collect_samples(base.model_copy(update={"places_without_image": 1.0}))
    assert specs[: len(specs0)] == specs0
    added = specs[len(specs0) :]
    assert added and rep["places_without_image"]["samples"] == len(added)
    assert all(s.state_places and s.image_s is None and "<image>" not in s.prompt and "the scene" in s.prompt for s in added)
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, bundle.motion_tokenizer, align=False)
    vocab, lay = bundle.processor.vocab, bundle.motion_tokenizer.layout
    for i, s in enumerate(ds.specs):
        if not s.state_places:
            continue
        twin = next(j for j, t in enumerate(ds.specs) if not t.state_places and t.image_s is not None
                    and (t.episode, t.hand_mode, t.start_s, t.task_type) == (s.episode, s.hand_mode, s.start_s, s.task_type))  # fmt: skip
        enc, ref = ds.encode(i), ds.encode(twin)
        assert enc.pixel_values is None
        a = np.asarray(enc.input_ids)[np.asarray(enc.labels) != IGNORE_INDEX]
        b = np.asarray(ref.input_ids)[np.asarray(ref.labels) != IGNORE_INDEX]
        np.testing.assert_array_equal(a, b)  # the same answer: places, then motion
        lo = vocab.motion_offset + lay.end_point_id_range[0]
        assert lo <= a[0] < lo + lay.end_point_bins  # it starts with a place
    cfg = copy.deepcopy(bundle.model.config)
    cfg.motion_answer_prefix = "none"
    plain = type(bundle.processor)(bundle.processor.tokenizer, cfg)
    with pytest.raises(ConfigError, match="places_without_image"):
        VLAInstructionDataset(added[:2], dirs, plain, bundle.motion_tokenizer, align=False)


def test_places_probe_benchmark(world, bundle, tmp_path):
    import importlib.util
    from pathlib import Path

    from handvla.vla import save_vla

    ckpt = save_vla(tmp_path / "ckpt", bundle)
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "vla_places_probe.py"
    spec = importlib.util.spec_from_file_location("vla_places_probe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--ckpt", str(ckpt), "--store", str(world), "--seconds", "1"])
    assert out["scenes"] >= 1
    assert out["own_place_at_own_n"] == out["other_place_at_other_n"] == out["other_place_at_asked_n"] == out["scenes"]
    assert 0 < out["chance"] <= 0.5


def test_hand_places_refuse_a_camera_frame_tokenizer(tmp_path):
    """A tokenizer whose end-point ids are in the camera frame (``end_point_frame: camera``) already states a
    left hand's end unmirrored: ``hand_places`` (mirrored places) would contradict its blocks, so pretraining
    refuses it and names the prefix to use."""
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer, with_end_points
    from handvla.vla.pretrain import PretrainConfig, build_model

    with_end_points(MotionTokenizer(TokenizerConfig(**PRESETS["tiny"])), "ray", 8, frame="camera").save_pretrained(
        tmp_path / "tok"
    )
    model = {"preset": "tiny", "motion_tokenizer": str(tmp_path / "tok"), "text_vocab_size": 300}
    cfg = PretrainConfig(data={"stores": [str(tmp_path)]}, train={"output_dir": str(tmp_path / "x")},
                         model={**model, "motion_answer_prefix": "hand_places"})  # fmt: skip
    with pytest.raises(ConfigError, match="target_places"):
        build_model(cfg, ["a b c"] * 50, tmp_path / "x", True, lambda: None)
    cfg.model.motion_answer_prefix = "target_places"
    assert build_model(cfg, ["a b c"] * 50, tmp_path / "y", True, lambda: None).model.config.motion_answer_prefix == "target_places"


@pytest.mark.parametrize("prefix", ["target_places", "hand_places"], indirect=True)
def test_ground_then_act_states_the_grounded_places(world, bundle, prefix, monkeypatch):
    """``places_from="grounding"``: each named hand's place is the model's own answer to the grounding question
    (exactly one place, `answer_places`), stated in the model's place frame (a left hand's mirrored with
    hand_places) as the start of its motion answer; a request that names no object for every hand states its
    own; the evaluation scores the stated places."""
    import handvla.vla.evaluate as E
    from handvla.vla.generation import answer_places, generate_motion
    from handvla.vla.grounding import grounding_prompt
    from handvla.vla.places import grounded_place_prefixes, parse_places, place_point

    mt = bundle.motion_tokenizer
    lay, cfg = mt.layout, mt.config
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    bins = answer_places(bundle.model, bundle.processor, imgs, [grounding_prompt("red cube")] * 3)
    assert bins.shape == (3, 3) and bins.min() >= 0 and bins.max() < lay.end_point_bins
    objects = [{"left": "red cube"}, {}, {"left": "red cube", "right": "blue ball"}]
    starts, points = grounded_place_prefixes(bundle.model, bundle.processor, mt, imgs, objects, ["left", "right", "both"])
    assert starts[1] is None and points[1] == {}
    for i in (0, 2):
        stated = parse_places(starts[i], lay)
        assert len(stated) == len(objects[i])
        for (h, point), b in zip(sorted(points[i].items()), stated):
            q = np.array(point)
            if prefix == "hand_places" and h == "left":
                q[0] = -q[0]
            np.testing.assert_array_equal(b, end_point_bins(q, cfg))
    # camera frame: the stated place is the grounding answer itself
    if prefix == "target_places":
        np.testing.assert_array_equal(parse_places(starts[0], lay)[0], bins[0])
        np.testing.assert_allclose(points[0]["left"], place_point(bins[0], cfg))
    gen = generate_motion(bundle.model, bundle.processor, imgs[:2], ["pick up the red cube"] * 2, 1, ["left", "right"],
                          prefixes=starts[:2])  # fmt: skip
    assert gen.prefix_texts[0] == starts[0] and len(parse_places(gen.prefix_texts[1], lay)) <= 1
    assert all(m.shape == (1, 1, lay.tokens_per_block) for m in gen.motion)
    # the evaluation states them and scores them
    seen = []

    def recording(*args, **kwargs):
        out = grounded_place_prefixes(*args, **kwargs)
        seen.extend(out[0])
        return out

    monkeypatch.setattr(E, "grounded_place_prefixes", recording)
    res = E.evaluate_handworld(bundle, world, max_seconds=1, places_from="grounding")
    forced = [s for s in seen if s is not None]
    assert forced and "prefix_target_accuracy" in res["summary"]
    assert [r["answer_prefix"] for r in res["episodes"] if r["answer_prefix"] in forced]
    cf = E.evaluate_counterfactual(bundle, world, places_from="grounding")["summary"]
    assert cf["episodes"] > 0 and "factual_place_accuracy" in cf
    with pytest.raises(ConfigError, match="places_from"):
        E.evaluate_handworld(bundle, world, max_seconds=1, places_from="grounding", rerank_samples=2)
    with pytest.raises(ConfigError, match="places_from"):
        E.evaluate_handworld(bundle, world, max_seconds=1, places_from="boxes")


@pytest.fixture
def named(bundle):
    """The bundle's answers state each place after its object's name (``place_names``) for one test."""
    bundle.model.config.place_names = True
    yield
    bundle.model.config.place_names = False


def test_named_places_are_written_and_read_back(bundle):
    from handvla.vla.places import parse_named_places, parse_places, place_ids, place_text, stated_places_text

    mt = bundle.motion_tokenizer
    ids = place_ids(np.array([[0.1, 0.0, 0.5], [-0.2, 0.1, 0.8]]), mt)
    text = stated_places_text(list(ids), ["red cube", "blue ball"])
    assert text == " red cube" + place_text(ids[0]) + " blue ball" + place_text(ids[1])
    # said after a space, a name is the instruction's own tokens (a copy), not other pieces of the same letters
    tok = bundle.processor.tokenizer
    said = tok(text, add_special_tokens=False)["input_ids"]
    inside = tok("pick up the red cube", add_special_tokens=False)["input_ids"]
    cube = tok(" red cube", add_special_tokens=False)["input_ids"]
    assert said[: len(cube)] == cube and inside[-len(cube):] == cube
    assert tok("red cube", add_special_tokens=False)["input_ids"] != cube  # without the space: other tokens
    got = parse_named_places(text + "<motion_id_0>", mt.layout)
    assert [n for n, _ in got] == ["red cube", "blue ball"]
    np.testing.assert_array_equal(np.stack([b for _, b in got]), np.stack(parse_places(text, mt.layout)))
    assert [n for n, _ in parse_named_places(stated_places_text(list(ids)), mt.layout)] == ["", ""]
    with pytest.raises(InputError, match="names"):
        stated_places_text(list(ids), ["red cube"])


@pytest.mark.parametrize("prefix", ["target_places", "hand_places"], indirect=True)
def test_named_answers_say_each_targets_name_then_its_place(world, bundle, prefix, named):
    """With place_names a generation answer is, per acting hand, its target's name then the same place ids as
    without names; grounding answers stay three ids."""
    from handvla.data.store import EpisodeStore
    from handvla.vla.data import VLADataConfig, VLAInstructionDataset, collect_samples
    from handvla.vla.grounding import object_name
    from handvla.vla.places import parse_named_places
    from handvla.vla.processing import MOTION_PLACEHOLDER, hands_for_mode

    specs, dirs, _ = collect_samples(VLADataConfig(stores=[str(world)], seconds=[1], align=False, grounding=1.0))
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, bundle.motion_tokenizer, align=False)
    store, mt = EpisodeStore(world), bundle.motion_tokenizer
    n = 0
    for i, s in enumerate(ds.specs):
        if s.task_type == "grounding":
            assert ds.answer_text(s).count("<motion_id_") == 3 and "<motion_id_" == ds.answer_text(s)[:11]
            continue
        if s.task_type != "generation" or s.image_s is None:
            continue
        text = ds.answer_text(s)
        assert text.endswith(MOTION_PLACEHOLDER)
        gt = json.loads(store.meta(s.episode)["ground_truth"])
        names = {o["object_id"]: object_name(o) for o in gt["scene"]["objects"]}
        want = []
        for h in hands_for_mode(s.hand_mode):
            tids = [t["object_id"] for t in gt.get("targets") or [] if t["hand"] == h]
            if tids:
                c = _centre(store, s.episode, tids[0])
                if prefix == "hand_places" and h == "left":
                    c = c * np.array([-1.0, 1.0, 1.0])
                want.append((names[tids[0]], end_point_bins(c, mt.config)))
        got = parse_named_places(text, mt.layout)
        assert [g[0] for g in got] == [w[0] for w in want]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g[1], w[1])
        n += bool(want)
        # the encoded answer: the name's tokens are labels too (the model learns to say it)
        enc = ds.encode(i)
        ans = np.asarray(enc.input_ids)[np.asarray(enc.labels) != IGNORE_INDEX]
        if want:
            assert ans[0] < bundle.processor.vocab.motion_offset  # a text token first
    assert n >= 3


def test_named_place_decoding_automaton(bundle):
    """Before the blocks: a name (1 to PLACE_NAME_MAX_TOKENS text tokens), then its place in axis order, per
    place up to the row's cap; <mot> only after a whole place, forced after the last."""
    from handvla.vla.generation import PLACE_NAME_MAX_TOKENS, MotionBlockConstraint

    v, lay = bundle.processor.vocab, bundle.processor.vocab.layout
    V = v.motion_token_range[1] + 4
    ep_lo = v.motion_offset + lay.end_point_id_range[0]
    place = [ep_lo + a * lay.end_point_bins for a in range(3)]
    text = 100  # some text token (byte-level BPE: below the added tokens)
    c = MotionBlockConstraint(v, 0, [1, 2], place_prefix=[1, 2], place_names=True)

    def allowed(seq):
        return torch.isfinite(c(torch.tensor(seq, dtype=torch.long).reshape(len(seq), -1), torch.zeros(len(seq), V)))

    a = allowed([[], []])  # a name must come first: text only
    assert a[:, text].all() and not a[:, ep_lo].any() and not a[:, v.mot_start_id].any()
    assert not a[:, v.motion_offset].any() and not a[:, v.eos_id].any()
    a = allowed([[text], [text]])  # within a name: more text or the place's first id, no <mot>
    assert a[:, text].all() and a[:, ep_lo].all() and not a[:, ep_lo + lay.end_point_bins].any()
    assert not a[:, v.mot_start_id].any()
    a = allowed([[text, place[0]], [text, place[0]]])  # within a place: its next axis only
    assert set(torch.nonzero(a[0]).flatten().tolist()) == set(range(place[1], place[1] + lay.end_point_bins))
    a = allowed([[text] + place, [text] + place])  # after a whole place: row 0 is at its cap, row 1 may go on
    assert torch.nonzero(a[0]).flatten().tolist() == [v.mot_start_id]
    assert a[1, v.mot_start_id] and a[1, text] and not a[1, ep_lo]
    long_name = [[text] * PLACE_NAME_MAX_TOKENS] * 2  # a name at the cap: its place must start
    a = allowed(long_name)
    assert not a[:, text].any() and a[:, ep_lo].all() and not a[:, v.mot_start_id].any()
    assert c.max_new_tokens == 2 * (3 + PLACE_NAME_MAX_TOKENS) + 2 * v.block_length + 1


def test_named_place_generation_and_evaluation(world, bundle, named):
    """A model that names its places: sampled answers parse into at most one named place per hand; the
    evaluation scores the names (stated_name_accuracy); the counterfactual's forced other place comes with
    that object's name; ground, then act states the instruction's names before the grounded places."""
    from handvla.data.store import EpisodeStore
    from handvla.vla import generate_motion
    from handvla.vla.data import prepare_image
    from handvla.vla.evaluate import evaluate_counterfactual, evaluate_handworld
    from handvla.vla.places import grounded_place_prefixes, parse_named_places

    mt, lay = bundle.motion_tokenizer, bundle.motion_tokenizer.layout
    ep = EpisodeStore(world).load_episode(0, with_video=True)
    image = prepare_image(ep.video[0], ep.camera.K, False, (56, 56))
    for seed in range(3):
        g = generate_motion(bundle.model, bundle.processor, [image] * 2, ["reach for the red cube"] * 2, 1,
                            ["right", "both"], do_sample=True, seed=seed)  # fmt: skip
        for i, hands in enumerate((1, 2)):
            assert g.motion[i].shape == (1, hands, lay.tokens_per_block)
            got = parse_named_places(g.prefix_texts[i], lay)
            assert 1 <= len(got) <= hands and all(name for name, _ in got)
    res = evaluate_handworld(bundle, world, max_seconds=1)
    scored = [r for r in res["episodes"] if r.get("prefix_hits")]
    assert scored and all(len(r["stated_name_hits"]) == len(r["prefix_hits"]) for r in scored)
    hits = [h for r in scored for h in r["stated_name_hits"]]
    assert res["summary"]["stated_name_accuracy"] == pytest.approx(sum(hits) / len(hits))
    cf = evaluate_counterfactual(bundle, world, seconds=1)
    assert cf["summary"]["stated_other_requests"] > 0
    starts, _ = grounded_place_prefixes(bundle.model, bundle.processor, mt, [image] * 2,
                                        [{"left": "red cube", "right": "blue ball"}, {"right": "red cube"}],
                                        ["both", "right"])  # fmt: skip
    assert [n for n, _ in parse_named_places(starts[0], lay)] == ["red cube", "blue ball"]
    assert [n for n, _ in parse_named_places(starts[1], lay)] == ["red cube"]
    res = evaluate_handworld(bundle, world, max_seconds=1, places_from="grounding")
    hits = [h for r in res["episodes"] for h in r.get("stated_name_hits", [])]
    assert hits and all(hits)  # the grammar's names are the targets' names


def test_generate_prints_the_named_places(world, bundle, named, tmp_path, capsys):
    from PIL import Image

    from handvla.cli import main
    from handvla.data.store import EpisodeStore
    from handvla.vla import save_vla

    ckpt = save_vla(tmp_path / "ckpt", bundle)
    ep = EpisodeStore(world).load_episode(0, with_video=True)
    Image.fromarray(ep.video[0]).save(tmp_path / "frame.png")
    base = ["generate", "--ckpt", str(ckpt), "--image", str(tmp_path / "frame.png"), "--instruction",
            "pick up the red cube with your left hand and the blue ball with your right hand", "--hands", "both",
            "--seconds", "1", "--no-video"]  # fmt: skip
    assert main(base + ["--ground-then-act", "--out", str(tmp_path / "gta")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stated_place_names"] == ["red cube", "blue ball"] and len(info["stated_places_m"]) == 2
    assert main(base + ["--sample", "--seed", "0", "--out", str(tmp_path / "own")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert 1 <= len(info["stated_place_names"]) == len(info["stated_places_m"]) <= 2


def test_place_names_need_stated_places(tmp_path):
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.layout import token_layout
    from handvla.vla.configuration import HandVLAConfig
    from handvla.vla.pretrain import ModelConfig

    layout = token_layout(TokenizerConfig(**PRESETS["tiny"])).to_dict()
    with pytest.raises(ConfigError, match="place_names"):
        HandVLAConfig(motion_token_layout=layout, place_names=True)
    with pytest.raises(ConfigError, match="place_names"):
        ModelConfig(place_names=True, motion_answer_prefix="target_boxes")
    assert ModelConfig(place_names=True, motion_answer_prefix="hand_places").place_names
    # built: the names reach the model's config; a checkpoint that names its places continued without places is
    # refused, naming both fields
    from handvla.tokenizer.modeling import MotionTokenizer, with_end_points
    from handvla.vla import save_vla
    from handvla.vla.pretrain import PretrainConfig, build_model

    with_end_points(MotionTokenizer(TokenizerConfig(**PRESETS["tiny"])), "ray", 8).save_pretrained(tmp_path / "tok")
    model = {"preset": "tiny", "motion_tokenizer": str(tmp_path / "tok"), "text_vocab_size": 300}
    cfg = PretrainConfig(data={"stores": [str(tmp_path)]}, train={"output_dir": str(tmp_path / "x")},
                         model={**model, "motion_answer_prefix": "target_places", "place_names": True})  # fmt: skip
    b = build_model(cfg, ["a b c"] * 50, tmp_path / "x", True, lambda: None)
    assert b.model.config.place_names
    save_vla(tmp_path / "named", b)
    cfg = PretrainConfig(data={"stores": [str(tmp_path)]}, train={"output_dir": str(tmp_path / "y")},
                         model={"init_checkpoint": str(tmp_path / "named"), "motion_answer_prefix": "none"})  # fmt: skip
    with pytest.raises(ConfigError, match="place_names"):
        build_model(cfg, ["a b c"] * 50, tmp_path / "y", True, lambda: None)
