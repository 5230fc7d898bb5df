"""Motion answers that first state the target's box (``HandVLAConfig.motion_answer_prefix: target_boxes``).

Checked: the decoding constraint lets each row of a batch say its own amount of text and then exactly the
motion blocks (random-score rollouts, no model); a tiny VLA's cached, batched generation equals a no-cache
greedy loop under the same constraint; a forced answer start is followed at once by the motion; the
training answers name each hand's own targets at boxes that hold the object's pixel from HandWorld's record;
the evaluation's prefix scores follow their definition on hand-made answers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from handvla.errors import ConfigError
from handvla.tokenizer.layout import TokenLayout
from handvla.vla import MotionBlockConstraint, build_vla, generate_motion, parse_motion_output
from handvla.vla.generation import TEXT_PREFIX_MAX_TOKENS, split_text_prefix
from handvla.vla.grounding import (
    grounding_answer,
    grounding_prefix,
    parse_grounding_prefix,
    pointed_object,
)
from handvla.vla.processing import IGNORE_INDEX, generation_prompt

SMALL = TokenLayout(("wrist", "finger"), groups=1, latent_steps=4, layers=1, codebook_size=16)


def _vocab():
    from handvla.vla.text_tokenizer import MotionVocab

    return MotionVocab(SMALL, motion_offset=60, mot_start_id=50, mot_end_id=51, mot_noop_id=52, img_start_id=53,
                       img_end_id=54, img_context_id=55, eos_id=3, pad_id=2)  # fmt: skip


def test_text_then_blocks_on_random_scores():
    """Rows of one batch say different amounts of text (none, some, the cap), then exactly their blocks."""
    vocab = _vocab()
    V, cap, P = 120, 6, 5
    forbidden = [51, 52, 53, 54, 55, 3, 2, *range(60, 92)]
    gen = torch.Generator().manual_seed(0)
    lengths = set()
    for trial in range(60):
        B = 1 + trial % 4
        blocks = [1 + (trial + b) % 3 for b in range(B)]
        cons = MotionBlockConstraint(vocab, P, blocks, text_prefix_tokens=cap)
        ids = torch.randint(0, 50, (B, P), generator=gen)
        bias = torch.zeros(B, V)
        bias[:, vocab.mot_start_id] = torch.linspace(-6, 6, B) if B > 1 else 0.0  # rows leave the text early/late
        for _ in range(cons.max_new_tokens):
            scores = cons(ids, torch.randn(B, V, generator=gen) * 3 + bias)
            ids = torch.cat([ids, torch.multinomial(torch.softmax(scores, -1), 1, generator=gen)], 1)
        for b in range(B):
            text, rest = split_text_prefix(ids[b, P:], vocab)
            lengths.add(len(text))
            assert len(text) <= cap and not np.isin(text, forbidden).any()
            motion = parse_motion_output(rest, vocab, blocks[b], 1)
            assert motion.shape == (blocks[b], 1, 8)
            assert rest[blocks[b] * vocab.block_length] == vocab.eos_id
    assert 0 in lengths and cap in lengths and len(lengths) >= 4  # the rows did differ
    # the cap forces <mot>; without a text prefix <mot> comes first
    at_cap = MotionBlockConstraint(vocab, 0, 1, text_prefix_tokens=2)(torch.full((1, 2), 7), torch.zeros(1, V))
    assert torch.isfinite(at_cap).nonzero()[:, 1].tolist() == [vocab.mot_start_id]
    plain = MotionBlockConstraint(vocab, 0, 1)(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, V))
    assert torch.isfinite(plain).nonzero()[:, 1].tolist() == [vocab.mot_start_id]
    with pytest.raises(Exception, match="text_prefix_tokens"):
        MotionBlockConstraint(vocab, 0, 1, text_prefix_tokens=-1)


def test_prefix_round_trip_and_pointed_object():
    pairs = [("red cube", (100, 200, 300, 400)), ("blue ball", (600, 100, 700, 300))]
    text = grounding_prefix(pairs)
    assert text == grounding_answer(*pairs[0]) + grounding_answer(*pairs[1])
    assert parse_grounding_prefix(text) == pairs and grounding_prefix([]) == ""
    boxes = {1: (110, 210, 290, 390), 2: (620, 110, 690, 290), 3: (0, 0, 50, 50)}
    assert pointed_object(text, "red cube", boxes) == 1 and pointed_object(text, "blue ball", boxes) == 2
    assert pointed_object(text, "green cup", boxes) is None and pointed_object(text, "red cube", {}) is None
    # a statement under the asked name that sits on another object points at that object; the first counts
    swapped = grounding_answer("red cube", (0, 0, 40, 40)) + grounding_answer("red cube", (100, 200, 300, 400))
    assert pointed_object(swapped, "red cube", boxes) == 3


@pytest.fixture(scope="module")
def small():
    b = build_vla("tiny", layout=SMALL, seed=0)
    b.model.config.motion_answer_prefix = "target_boxes"
    return b


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in [(56, 56), (112, 56)]]


def test_prefix_generation_matches_a_no_cache_loop(small, images):
    """A batch of two prompts (left padding, KV cache) against a full forward pass per step per prompt."""
    proc, model, vocab = small.processor, small.model, small.processor.vocab
    tasks, modes = ["wave", "pick up the red cube"], ["both", "left"]
    got = generate_motion(model, proc, images, tasks, seconds=1, hand_mode=modes)
    for i in range(2):
        s = proc.encode(generation_prompt(tasks[i], 1, modes[i]), images=[images[i]])
        ids = s.input_ids[None]
        blocks = 2 if modes[i] == "both" else 1
        cons = MotionBlockConstraint(vocab, ids.shape[1], blocks, text_prefix_tokens=TEXT_PREFIX_MAX_TOKENS)
        with torch.no_grad():
            for _ in range(cons.max_new_tokens):
                logits = model(input_ids=ids, pixel_values=s.pixel_values, use_cache=False).logits[:, -1]
                nxt = cons(ids, logits).argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], 1)
                if nxt.item() == vocab.eos_id:
                    break
        new = ids[0, s.input_ids.shape[0] :]
        text, rest = split_text_prefix(new, vocab)
        assert np.array_equal(got.motion[i], parse_motion_output(rest, vocab, 1, blocks))
        assert got.prefix_texts[i] == proc.decode(text.tolist(), skip_special_tokens=False)
    assert any(got.prefix_texts)  # an untrained model says some text before its motion


def test_a_forced_answer_start_is_followed_by_motion(small, images):
    proc, vocab = small.processor, small.processor.vocab
    said = grounding_answer("red cube", (10, 20, 30, 40))
    got = generate_motion(small.model, proc, images[0], ["wave", "wave"], 1, "right", prefixes=[said, ""])
    assert got.prefix_texts == [said, ""]
    prompt = proc.encode(generation_prompt("wave", 1, "right"), images=[images[0]]).input_ids
    forced = proc.start_answer(proc.encode(generation_prompt("wave", 1, "right"), images=[images[0]]), said)
    n = len(forced.input_ids) - len(prompt)
    assert n > 0 and (forced.labels == IGNORE_INDEX).all()
    assert torch.equal(got.sequences[0, got.prompt_length - n : got.prompt_length], forced.input_ids[-n:])
    assert (got.sequences[:, got.prompt_length] == vocab.mot_start_id).all()  # the blocks start at once
    with pytest.raises(Exception, match="prefixes"):
        generate_motion(small.model, proc, images[0], ["wave", "wave"], 1, "right", prefixes=["a", "b", "c"])


def test_config_refuses_an_unknown_prefix():
    from handvla.vla.configuration import HandVLAConfig

    with pytest.raises(ConfigError, match="motion_answer_prefix"):
        HandVLAConfig(motion_answer_prefix="boxes")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    root = tmp_path_factory.mktemp("answer_prefix")
    cfg = HandWorldConfig(width=64, height=48, seconds=2.0, shadows=False, tasks=("reach", "both_pick_up", "move"))
    generate_episodes(6, root / "hw", seed=7, config=cfg, progress=False)
    return root / "hw"


def _answer_text(ds, i) -> str:
    enc = ds.encode(i)
    answer = enc.input_ids[enc.labels != IGNORE_INDEX]
    text, rest = split_text_prefix(answer, ds.processor.vocab)
    assert len(rest) and rest[0] == ds.processor.vocab.mot_start_id
    assert len(enc.input_ids) == ds.lengths[i]  # the lengths counted at build time include the prefix
    return ds.processor.decode(text.tolist(), skip_special_tokens=False)


def test_training_answers_state_each_hands_targets(world):
    from handvla.data.store import EpisodeStore
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer
    from handvla.vla.data import VLADataConfig, VLAInstructionDataset, collect_samples

    mt = MotionTokenizer(TokenizerConfig(**PRESETS["tiny"]))
    bundle = build_vla("tiny", motion_tokenizer=mt, seed=0)
    cfg = VLADataConfig(stores=[str(world)], seconds=[1], align=False, image_size=(64, 48))
    specs, dirs, _ = collect_samples(cfg)
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, mt, align=False, image_size=(64, 48))
    motion = [i for i, s in enumerate(ds.specs) if s.task_type in ("generation", "prediction")]
    assert all(_answer_text(ds, i) == "" for i in motion)  # the reference: motion only
    bundle.model.config.motion_answer_prefix = "target_boxes"
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, mt, align=False, image_size=(64, 48))
    store = EpisodeStore(world)
    stated, two_hands = 0, 0
    for i, s in enumerate(ds.specs):
        text = _answer_text(ds, i) if s.task_type in ("generation", "prediction") else None
        if text is None:
            continue
        gt = json.loads(store.meta(s.episode)["ground_truth"])
        hands = ("left", "right") if s.hand_mode == "both" else (s.hand_mode,)
        said = dict(parse_grounding_prefix(text))
        want = [t for t in gt["targets"] if t["hand"] in hands]
        two_hands += len(want) == 2
        # every target of the sample's hands, none of another hand's; at the box of its own pixel
        assert sorted(said) == sorted(f"{t['colour']} {t['noun']}" for t in want), (s, text)
        for t in want:
            x1, y1, x2, y2 = np.asarray(said[f"{t['colour']} {t['noun']}"]) / 1000 * [64, 48, 64, 48]
            u, v = t["initial_pixel"]
            assert x1 - 1 <= u <= x2 + 1 and y1 - 1 <= v <= y2 + 1, (t, said)
            stated += 1
    assert stated >= 6 and two_hands >= 1


def test_prefix_scores_follow_their_definition(world):
    """`_score_prefix` on hand-made answers: right box -> hit; another object's box under the target's name
    -> miss, and the motion 'follows' when it ends at that other object."""
    from handvla.data.store import EpisodeStore
    from handvla.vla.evaluate import _score_prefix, object_positions_camera
    from handvla.vla.grounding import object_name, objects_in_view, scene_objects

    store = EpisodeStore(world)
    for k in range(len(store)):
        ep = store.load_episode(k, with_video=False)
        gt = ep.ground_truth
        in_view = {int(o["object_id"]): (o, b) for o, b in objects_in_view(scene_objects(gt, "t"), ep.camera, False)}
        tg = [t for t in gt["targets"] if int(t["object_id"]) in in_view]
        if tg and len(in_view) >= 2:
            break
    else:
        pytest.skip("no episode with a target and another object in view")
    h, oid = tg[0]["hand"], int(tg[0]["object_id"])
    other = next(i for i in in_view if i != oid)
    objects = object_positions_camera(ep, ep.num_frames - 1)
    name = object_name(in_view[oid][0])
    cases = [
        (grounding_answer(name, in_view[oid][1]), objects[oid], True, True),
        (grounding_answer(name, in_view[oid][1]), objects[other], True, False),
        (grounding_answer(name, in_view[other][1]), objects[other], False, True),
        ("no box at all", objects[oid], False, False),
    ]
    for said, wrist, hit, follows in cases:
        row: dict = {}
        ctx = {"ground_truth": gt, "pairs": [(h, oid)], "objects": objects, "final_wrist": {h: np.asarray(wrist)}}
        _score_prefix(row, ctx, said, ep, False, "t")
        assert row["prefix_hits"] == [hit] and row["motion_follows_prefix"] == [follows], said
        assert row["answer_prefix"] == said


def test_evaluation_reports_prefix_scores(world):
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer
    from handvla.vla.evaluate import evaluate_counterfactual, evaluate_handworld

    mt = MotionTokenizer(TokenizerConfig(**PRESETS["tiny"]))
    bundle = build_vla("tiny", motion_tokenizer=mt, seed=0)
    plain = evaluate_handworld(bundle, world, max_episodes=2, max_seconds=1)["summary"]
    assert "prefix_target_accuracy" not in plain
    bundle.model.config.motion_answer_prefix = "target_boxes"
    r = evaluate_handworld(bundle, world, max_episodes=3, max_seconds=1)
    s = r["summary"]
    assert s["valid_output_rate"] == 1.0
    pairs = sum(len(row["target_hits"]) for row in r["episodes"])
    assert pairs and len([h for row in r["episodes"] for h in row["prefix_hits"]]) == pairs
    for key in ("prefix_target_accuracy", "motion_follows_prefix_rate"):
        lo, hi = s[f"{key}_ci95"]
        assert lo <= s[key] <= hi
    from handvla.vla.evaluate import format_summary_table

    table = format_summary_table("eval", s)  # handvla vla-eval's text output shows the rates
    row = next(line for line in table.splitlines() if line.strip().startswith("stated box right"))
    assert f"{s['prefix_target_accuracy']:.3f}" in row and f"{s['prefix_target_accuracy_ci95'][0]:.3f}" in row
    assert "motion at the box" in table and "stated box" not in format_summary_table("eval", plain)
    cf = evaluate_counterfactual(bundle, world, seconds=1)["summary"]
    assert cf["episodes"] >= 1 and cf["factual_prefix_accuracy_n"] == cf["episodes"]
    assert cf["stated_object_accuracy_n"] == cf["stated_other_requests"] >= 1
    # the split by whether the stated box was right covers every factual request and its hits
    split = [cf[f"factual_accuracy_when_prefix_{g}_{k}"] for g in ("right", "wrong") for k in ("n", "successes")]
    assert split[0] + split[2] == cf["episodes"] and split[0] == cf["factual_prefix_accuracy_successes"]
    assert split[1] + split[3] == cf["named_target_accuracy_successes"]
