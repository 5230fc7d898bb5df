"""End places (``HandVLAConfig.end_places``): after its targets' places, a motion answer states where each
target is when the answer's motion ends (a carried object's destination).

Checked: the answer's places are the targets' scene-pose places then their places at the span's last frame,
recomputed here from the object tracks and the camera's extrinsics (and some of them differ: the objects
were carried); decoding allows two places per hand, and one per hand after a given start (ground, then act),
whose ends the model completes; the evaluation scores a stated end against where the objects are at the end
(right and wrong ends made here), reading a short answer as its targets' places then their ends
(`split_end_places`); `handvla generate` prints the ends apart; the option is refused without
stated places or with named places, on a new config and on a checkpoint continued without places.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import end_point_bins, places_bundle

from handvla.errors import ConfigError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    root = tmp_path_factory.mktemp("ends")
    cfg = HandWorldConfig(width=64, height=48, seconds=2.0, shadows=False, tasks=("move", "place"))
    generate_episodes(6, root / "hw", seed=3, config=cfg, progress=False)
    return root / "hw"


@pytest.fixture(scope="module")
def bundle():
    return places_bundle(end_places=True)


def _in_camera(row, p_world):
    from handvla.data.schema import camera_from_row

    E = camera_from_row(row).extrinsics
    return E[:3, :3] @ np.asarray(p_world, np.float64) + E[:3, 3]


def test_answers_state_the_targets_places_then_where_they_end(world, bundle):
    from handvla.data.store import EpisodeStore
    from handvla.vla.data import VLADataConfig, VLAInstructionDataset, collect_samples
    from handvla.vla.places import parse_places
    from handvla.vla.processing import MOTION_PLACEHOLDER, hands_for_mode

    specs, dirs, _ = collect_samples(VLADataConfig(stores=[str(world)], seconds=[1, 2], align=False))
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, bundle.motion_tokenizer, align=False)
    store, cfg = EpisodeStore(world), bundle.motion_tokenizer.config
    checked = moved = 0
    for s in ds.specs:
        if s.task_type != "generation" or s.image_s is None:
            continue
        text = ds.answer_text(s)
        assert text.endswith(MOTION_PLACEHOLDER)
        row = store.meta(s.episode)
        gt = json.loads(row["ground_truth"])
        objs = {o["object_id"]: o for o in gt["scene"]["objects"]}
        last = int(round(s.end_s * float(store.fps))) - 1
        starts, ends = [], []
        for h in hands_for_mode(s.hand_mode):
            tids = [t["object_id"] for t in gt["targets"] if t["hand"] == h]
            if not tids:
                continue
            pose = np.asarray(objs[tids[0]]["pose"]).reshape(4, 4)
            starts.append(end_point_bins(_in_camera(row, pose[:3, 3]), cfg))
            track = gt["object_tracks"].get(str(tids[0]))
            p = pose[:3, 3] if track is None else np.asarray(track["position_world"])[min(last, len(track["position_world"]) - 1)]
            ends.append(end_point_bins(_in_camera(row, p), cfg))
        got = parse_places(text, bundle.motion_tokenizer.layout)
        assert len(got) == 2 * len(starts)
        np.testing.assert_array_equal(np.reshape(got, (-1, 3)), np.reshape(starts + ends, (-1, 3)))
        checked += bool(starts)
        moved += any((a != b).any() for a, b in zip(starts, ends))
    assert checked >= 4 and moved >= 2  # carried objects end elsewhere
    enc = ds.encode(next(i for i, s in enumerate(ds.specs) if s.task_type == "generation"))
    assert np.isfinite(float(bundle.model(**ds.collate([enc]), answer_logits_only=True).loss.detach()))


def test_split_end_places():
    """As many ends as targets, whatever the hands: a two-hand request acting on one target states two places."""
    from handvla.vla.places import split_end_places

    assert split_end_places(["a", "b", "c", "d"]) == (["a", "b"], ["c", "d"])
    assert split_end_places(["a", "b"]) == (["a"], ["b"])
    assert split_end_places(["a", "b", "c"]) == (["a", "b"], ["c"])  # cut short: its last end missing
    assert split_end_places(["a"]) == (["a"], []) and split_end_places([]) == ([], [])
    assert split_end_places(["a", "b"], given=2) == (["a", "b"], [])  # two given, no end said
    assert split_end_places(["a", "b", "c"], given=2) == (["a", "b"], ["c"])


def test_decoding_allows_the_ends_and_completes_a_given_start(world, bundle):
    from handvla.data.store import EpisodeStore
    from handvla.vla import generate_motion
    from handvla.vla.data import prepare_image
    from handvla.vla.generation import place_prefix_places
    from handvla.vla.places import parse_places, place_ids, place_text

    cfg = bundle.model.config
    assert place_prefix_places(cfg, 1) == 2 and place_prefix_places(cfg, 2) == 4
    assert place_prefix_places(cfg, 2, given=True) == 2
    cfg.end_places = False
    try:
        assert place_prefix_places(cfg, 2) == 2 and place_prefix_places(cfg, 2, given=True) == 0
    finally:
        cfg.end_places = True
    mt, lay = bundle.motion_tokenizer, bundle.motion_tokenizer.layout
    ep = EpisodeStore(world).load_episode(0, with_video=True)
    image = prepare_image(ep.video[0], ep.camera.K, False, (56, 56))
    counts = set()
    for seed in range(4):
        g = generate_motion(bundle.model, bundle.processor, [image] * 2, ["move the red cube to the left"] * 2, 1,
                            ["right", "both"], do_sample=True, seed=seed)  # fmt: skip
        for i, hands in enumerate((1, 2)):
            assert g.motion[i].shape == (1, hands, lay.tokens_per_block)
            n = len(parse_places(g.prefix_texts[i], lay))
            assert n <= 2 * hands
            counts.add((hands, n))
    assert any(n > h for h, n in counts)  # more places than hands: the ends
    start = place_text(place_ids(np.array([0.05, 0.02, 0.6]), mt))
    for seed in range(3):
        g = generate_motion(bundle.model, bundle.processor, [image], ["move the red cube to the left"], 1, ["right"],
                            prefixes=[start], do_sample=True, seed=seed)  # fmt: skip
        said = g.prefix_texts[0]
        assert said.startswith(start) and len(parse_places(said, lay)) in (1, 2)  # the given place, then its end


def test_evaluation_scores_the_stated_ends(world, bundle):
    from handvla.data.store import EpisodeStore
    from handvla.vla import evaluate as E
    from handvla.vla.places import place_ids, place_text

    res = E.evaluate_handworld(bundle, world, max_seconds=2)
    scored = [r for r in res["episodes"] if r.get("prefix_hits")]
    assert scored and "end_place_accuracy" in res["summary"] and "motion_follows_end_place_rate" in res["summary"]
    for r in scored:
        assert len(r["end_place_hits"]) == len(r["prefix_hits"]) == len(r["motion_follows_end_place"])
    assert "stated end right" in E.format_summary_table("held-out", res["summary"])
    # made answers: the target's place, then where it ends (right) or where another object ends (wrong)
    st, mt = EpisodeStore(world), bundle.motion_tokenizer
    k = next(i for i, r in enumerate(res["episodes"]) if r["task_type"] == "place" and r["target_hits"])
    ep = st.load_episode(k, with_video=False)
    n = min(2 * int(round(ep.fps)), ep.num_frames)
    ends = E.object_positions_camera(ep, n - 1)
    gt = ep.ground_truth
    hand, oid = next((t["hand"], int(t["object_id"])) for t in gt["targets"])
    other = next(i for i in ends if i != oid)
    start = E.object_positions_camera(ep, 0)[oid]
    ctx = {"ground_truth": gt, "objects": ends, "pairs": [(hand, oid)], "hands": (hand,),
           "final_wrist": {hand: ends[oid]}}  # fmt: skip
    for end, right in ((ends[oid], True), (ends[other], False)):
        row = {}
        said = place_text(place_ids(start, mt)) + place_text(place_ids(end, mt))
        E._score_places(row, ctx, said, ep, mt, False, "test", "camera", ends=True)
        assert row["prefix_hits"] == [True] and row["end_place_hits"] == [right]
        assert row["motion_follows_end_place"] == [right]  # the wrist is at the target's end
    # ground, then act: the grounded places given, the ends the model's own
    res = E.evaluate_handworld(bundle, world, max_seconds=2, places_from="grounding")
    rows = [r for r in res["episodes"] if r.get("prefix_hits")]
    assert rows and all(len(r["end_place_hits"]) == len(r["prefix_hits"]) for r in rows)


def test_generate_prints_the_stated_ends(world, bundle, tmp_path, capsys):
    from PIL import Image

    from handvla.cli import main
    from handvla.data.store import EpisodeStore
    from handvla.vla import save_vla
    from handvla.vla.places import parse_places, place_point

    ckpt = save_vla(tmp_path / "ckpt", bundle)
    ep = EpisodeStore(world).load_episode(0, with_video=True)
    Image.fromarray(ep.video[0]).save(tmp_path / "frame.png")
    seen = 0
    for seed in range(4):
        argv = ["generate", "--ckpt", str(ckpt), "--image", str(tmp_path / "frame.png"), "--instruction",
                "move the red cube to the left", "--hands", "right", "--seconds", "1", "--sample", "--seed",
                str(seed), "--no-video", "--out", str(tmp_path / f"g{seed}")]  # fmt: skip
        assert main(argv) == 0
        info = json.loads(capsys.readouterr().out)
        stated = [place_point(b, bundle.motion_tokenizer.config).round(4).tolist()
                  for b in parse_places(info["answer_prefix"], bundle.motion_tokenizer.layout)]  # fmt: skip
        assert info["stated_places_m"] == stated[:1] and info["stated_end_places_m"] == stated[1:]
        seen += len(stated) == 2
    assert seen


def test_end_places_need_stated_places_without_names(tmp_path):
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.layout import token_layout
    from handvla.tokenizer.modeling import MotionTokenizer, with_end_points
    from handvla.vla import save_vla
    from handvla.vla.configuration import HandVLAConfig
    from handvla.vla.pretrain import ModelConfig, PretrainConfig, build_model

    layout = token_layout(with_end_points(MotionTokenizer(TokenizerConfig(**PRESETS["tiny"])), "ray", 8).config)
    with pytest.raises(ConfigError, match="end_places"):
        HandVLAConfig(motion_token_layout=layout.to_dict(), end_places=True)
    with pytest.raises(ConfigError, match="end_places"):
        HandVLAConfig(motion_token_layout=layout.to_dict(), end_places=True, place_names=True,
                      motion_answer_prefix="target_places")  # fmt: skip
    assert HandVLAConfig(motion_token_layout=layout.to_dict(), end_places=True,
                         motion_answer_prefix="target_places").end_places  # fmt: skip
    with pytest.raises(ConfigError, match="end_places"):
        ModelConfig(end_places=True, motion_answer_prefix="target_boxes")
    with pytest.raises(ConfigError, match="end_places"):
        ModelConfig(end_places=True, place_names=True, motion_answer_prefix="target_places")
    with_end_points(MotionTokenizer(TokenizerConfig(**PRESETS["tiny"])), "ray", 8).save_pretrained(tmp_path / "tok")
    model = {"preset": "tiny", "motion_tokenizer": str(tmp_path / "tok"), "text_vocab_size": 300}
    cfg = PretrainConfig(data={"stores": [str(tmp_path)]}, train={"output_dir": str(tmp_path / "x")},
                         model={**model, "motion_answer_prefix": "target_places", "end_places": True})  # fmt: skip
    b = build_model(cfg, ["a b c"] * 50, tmp_path / "x", True, lambda: None)
    assert b.model.config.end_places
    save_vla(tmp_path / "ends", b)
    cfg = PretrainConfig(data={"stores": [str(tmp_path)]}, train={"output_dir": str(tmp_path / "y")},
                         model={"init_checkpoint": str(tmp_path / "ends"), "motion_answer_prefix": "none"})  # fmt: skip
    with pytest.raises(ConfigError, match="end_places"):
        build_model(cfg, ["a b c"] * 50, tmp_path / "y", True, lambda: None)
