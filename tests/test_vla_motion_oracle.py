"""benchmarks/vla_motion_oracle.py (docs/vla-learning.md (12)): the told place reaches the prompt in
the ids' own frame, every answer order is a permutation that decoding undoes, generation keeps each position
in its residual layer's id range, and the benchmark runs end to end on a tiny HandWorld store with scores that
follow their definitions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def oracle(benchmark_script):
    return benchmark_script("vla_motion_oracle")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer

    root = tmp_path_factory.mktemp("oracle")
    cfg = HandWorldConfig(width=64, height=48, seconds=2.0, shadows=False, tasks=("reach", "grasp", "both_pick_up"))
    generate_episodes(8, root / "train", seed=3, config=cfg, progress=False)
    generate_episodes(4, root / "heldout", seed=4, config=cfg, progress=False)
    tok = dict(PRESETS["tiny"], id_layout="per_layer", token_order="layer_group_time")
    MotionTokenizer(TokenizerConfig(**tok)).save_pretrained(root / "tok")
    return root


def test_pairs_carry_the_place_in_the_ids_frame(world, oracle):
    from handvla.data.store import EpisodeStore
    from handvla.tokenizer import MotionTokenizer
    from handvla.vla.evaluate import object_positions_camera

    mod = oracle
    mt = MotionTokenizer.from_pretrained(world / "tok")
    rows = mod.collect_pairs([world / "train"], mt, seconds=1)
    store = EpisodeStore(world / "train")
    assert {r["side"] for r in rows} == {"left", "right"}
    for r in rows:
        ep = store.load_episode(r["episode"], with_video=False)
        objects = object_positions_camera(ep, r["n"] - 1)
        true = ep.hands[r["side"]].slice(0, r["n"])
        assert r["ids"].shape == (1, mt.layout.tokens_per_block)
        np.testing.assert_array_equal(r["ids"], mt.encode_motion(true).ids)
        sign = np.array([-1.0, 1, 1]) if r["side"] == "left" else np.ones(3)  # the tokenizer mirrors left hands
        np.testing.assert_allclose(r["target"], objects[r["targets"][0]] * sign)
        np.testing.assert_allclose(r["final"] * sign, r["final_cam"])
        c = objects[r["targets"][0]]  # the image-plane place: the mirrored centre over its depth
        np.testing.assert_allclose(r["target_uv"], [sign[0] * c[0] / c[2], c[1] / c[2]])
        gt = ep.ground_truth["targets"]
        assert r["targets"] == [int(t["object_id"]) for t in gt if t["hand"] == r["side"]]

    coder = mod.PromptCoder("target", mt.layout.vocab_size, rows, bins=8)
    p = coder.prompt(rows[0])
    assert p[0] == coder.side_tok[rows[0]["side"]] and p[-1] == coder.mot_tok and len(p) == 1 + 6 + 1
    assert min(p) >= mt.layout.vocab_size and max(p) < coder.vocab  # never a motion id
    # a bin per axis that grows with the coordinate
    for role in ("target", "target_uv"):
        lo, hi = coder.lo[role], coder.hi[role]
        assert (coder.bin_of(lo - 1, role) == 0).all() and (coder.bin_of(hi + 1, role) == 7).all()
        assert (np.diff(coder.bin_of(np.linspace(lo, hi, 50), role), axis=0) >= 0).all()
    # the image-plane conditions: 2 tokens for the place, 3 for the start; no two roles share a token
    for cond, n in (("target_only", 3), ("target_uv", 2), ("start_target_uv", 5)):
        c = mod.PromptCoder(cond, mt.layout.vocab_size, rows, bins=8)
        assert len(c.prompt(rows[0])) == 1 + n + 1
    uv = mod.PromptCoder("start_target_uv", mt.layout.vocab_size, rows, bins=8)
    tokens = [set(range(uv.loc0[r], uv.loc0[r] + mod.ROLE_DIMS[r] * 8)) for r in mod.ROLES]
    assert sum(map(len, tokens)) == len(set().union(*tokens))
    digits = mod.PromptCoder("target_digits", mt.layout.vocab_size, rows, bins=8)
    row = dict(rows[0], start=np.array([0.1234, -0.05, 0.7]), target=np.array([0.0, 0.2, 1.0]))
    text = digits.prompt(row)[1:-1]
    inv = {digits.digit0 + d: str(d) for d in range(10)} | {digits.sign_tok[1]: "+", digits.sign_tok[-1]: "-"}
    inv |= {t: f"<{r}>" for r, t in digits.role_tok.items()}
    assert "".join(inv[t] for t in text) == "<start>+0123-0050+0700<target>+0000+0200+1000"
    none = mod.PromptCoder("none", mt.layout.vocab_size, rows, bins=8)
    assert len(none.prompt(rows[0])) == 2


@pytest.mark.parametrize("order", ["block", "layer", "part"])
def test_answer_orders_are_undone_and_keep_layer_ranges(world, oracle, order):
    from handvla.tokenizer import MotionTokenizer

    mod = oracle
    mt = MotionTokenizer.from_pretrained(world / "tok")
    lay, blocks = mt.layout, 2
    perm, pos_layer, pos_part = mod.answer_permutation(lay, blocks, order)
    L = blocks * lay.tokens_per_block
    assert sorted(perm.tolist()) == list(range(L))
    said_layers, said_parts = pos_layer[perm], pos_part[perm]
    if order == "layer":
        assert (np.diff(said_layers) >= 0).all()  # coarse to fine over the whole answer
    if order == "part":
        assert (np.diff(said_parts) >= 0).all()  # every wrist id before any finger id
    if order == "block":
        assert (perm == np.arange(L)).all()
    # a random LM's constrained rollouts, put back in block-major order, are legal ids of each position
    ranges = mod.allowed_ranges(mt, blocks)[perm]
    torch.manual_seed(0)
    model = mod.build_lm(lay.vocab_size + 8, 16, 1, 2, L + 4)
    prompts = torch.full((3, 2), lay.vocab_size + 1, dtype=torch.long)
    ids = mod.generate(model, prompts, ranges)[:, np.argsort(perm)]
    # the cached loop says what a full forward pass per step says
    x = prompts[:1]
    with torch.no_grad():
        for lo, hi in ranges:
            logits = model(input_ids=x).logits[:, -1]
            logits[:, :lo], logits[:, hi:] = -torch.inf, -torch.inf
            x = torch.cat([x, logits.argmax(-1, keepdim=True)], 1)
    np.testing.assert_array_equal(x[0, 2:].numpy()[np.argsort(perm)], ids[0])
    legal = np.tile(lay.position_id_ranges(), (blocks, 1))
    assert ((ids >= legal[:, 0]) & (ids < legal[:, 1])).all()
    mt.decode_sequence(torch.as_tensor(ids[0].reshape(blocks, -1)))  # the tokenizer takes them
    with pytest.raises(ValueError, match="answer order"):
        mod.answer_permutation(lay, blocks, "time")


def test_benchmark_runs_and_scores_follow_their_definitions(world, oracle, capsys):
    from handvla.tokenizer import MotionTokenizer
    from handvla.vla.evaluate import target_hit

    mod = oracle
    args = ["--tokenizer", str(world / "tok"), "--train", str(world / "train"), "--eval", str(world / "heldout"),
            "--seconds", "1", "--steps", "3", "--batch-size", "4", "--hidden", "16", "--layers", "1", "--heads", "2",
            "--bins", "8", "--answer-order", "layer", "--eval-every", "2"]  # fmt: skip
    res = mod.main(args)
    assert json.loads(capsys.readouterr().out) == res
    assert res["steps"] == 3 and np.isfinite(res["final_loss"]) and [c["step"] for c in res["curve"]] == [2, 3]
    assert "eval" in res["curve"][0] and "eval" not in res["curve"][1]
    assert res["answer_order"] == "layer" and res["prompt_tokens"] == 8
    base = res["baselines"]
    # the told place as the end point: the target's own centre is nearest the target by construction
    assert base["told_place_as_end_point"]["target_accuracy"] == 1.0
    # the tokenizer floor, recomputed here: the true ids decoded, scored against every target of the hand
    mt = MotionTokenizer.from_pretrained(world / "tok")
    held = mod.collect_pairs([world / "heldout"], mt, 1)
    hits = []
    for r in held:
        m = mt.decode_motion(r["ids"], side=r["side"], betas=r["betas"], num_frames=r["n"])
        hits += [target_hit(np.asarray(m.wrist_pos[-1], np.float64), o, r["objects"]) for o in r["targets"]]
    assert base["tokenizer_floor"]["pairs"] == len(hits) == res["generated"]["pairs"]
    assert base["tokenizer_floor"]["target_accuracy"] == pytest.approx(np.mean(hits))
    coarse = base["tokenizer_floor_coarse_wrist_only"]
    assert len(coarse) == mt.layout.layers and set(res["generated"]["teacher_forced_token_accuracy"]) == {
        f"wrist_l{k}" for k in range(mt.layout.layers)
    }
    lo, hi = res["generated"]["ci95"]
    assert lo <= res["generated"]["target_accuracy"] <= hi


def test_bad_arguments_are_named(world, oracle, capsys):
    mod = oracle
    base = ["--tokenizer", str(world / "tok"), "--train", str(world / "train"), "--eval", str(world / "heldout"),
            "--steps", "1"]  # fmt: skip
    with pytest.raises(SystemExit):
        mod.main(base + ["--seconds", "1", "--layer-weights", "1,2"])
    assert "--layer-weights: expected 1 or" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main(base + ["--seconds", "5"])  # longer than the 2-second episodes
    assert "--train: no (hand, target) pairs of 5 s" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main(base + ["--seconds", "1", "--rerank-samples", "0,4"])
    assert "--rerank-samples: expected comma-separated counts >= 1" in capsys.readouterr().err


def test_sampled_answers_stay_legal_and_the_nearest_one_is_kept(world, oracle):
    """Best-of-k by the told place: sampled ids keep each position's range, the kept answer is the one of
    the first k whose decoded end is nearest the place (so its distance never grows with k), one sample is
    the first candidate, and "any of k reaches the target" bounds the choice from above."""
    from handvla.tokenizer import MotionTokenizer

    mod = oracle
    mt = MotionTokenizer.from_pretrained(world / "tok")
    rows = mod.collect_pairs([world / "heldout"], mt, seconds=1)
    lay, blocks = mt.layout, 1
    perm, _, _ = mod.answer_permutation(lay, blocks, "layer")
    inv = np.argsort(perm)
    ranges = mod.allowed_ranges(mt, blocks)[perm]
    torch.manual_seed(0)
    model = mod.build_lm(lay.vocab_size + 8, 16, 1, 2, lay.tokens_per_block + 4)
    prompts = torch.full((len(rows), 2), lay.vocab_size + 1, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    ids = mod.generate(model, prompts.repeat_interleave(5, 0), ranges, temperature=1.0, generator=g)
    legal = ranges
    assert ((ids >= legal[:, 0]) & (ids < legal[:, 1])).all()
    assert len({tuple(r) for r in ids}) > 1  # sampling, not greedy: the same prompt gives different answers

    places = mod.told_places(rows, "target")
    res = mod.rerank_by_place(mt, model, prompts, ranges, inv, rows, blocks, places, [1, 2, 6], 1.0, seed=3)
    assert res["nearest_of_1"]["target_accuracy"] == res["one_sample"]["target_accuracy"]
    d = [res[f"nearest_of_{k}"]["distance_to_place_cm"] for k in (1, 2, 6)]
    assert d[0] >= d[1] >= d[2]
    for k in (1, 2, 6):
        assert res[f"nearest_of_{k}"]["any_of_k_reaches_target"] >= res[f"nearest_of_{k}"]["target_accuracy"]
    # recomputed by hand: the same seed gives the same candidates
    g = torch.Generator().manual_seed(3)
    cand = mod.generate(model, prompts.repeat_interleave(6, 0), ranges, temperature=1.0, generator=g)[:, inv]
    finals = np.stack(mod.decode_finals(mt, cand, [r for r in rows for _ in range(6)], blocks)).reshape(len(rows), 6, 3)
    best = np.linalg.norm(finals - np.stack(places)[:, None], axis=-1).min(1)
    assert res["nearest_of_6"]["distance_to_place_cm"] == pytest.approx(100 * best.mean())
    assert mod.told_places(rows, "none") is None


def test_end_point_ids_are_said_first_and_decide_the_end(world, oracle, capsys):
    """``--end-points``: each block's three end-point ids come first (in block order at each block's start, in
    the coarse-to-fine order before every other id), and the benchmark scores the end they state."""
    from handvla.tokenizer import MotionTokenizer, with_end_points

    mod = oracle
    mt = MotionTokenizer.from_pretrained(world / "tok")
    ep = with_end_points(mt, "ray", 8, motions=mod.training_motions([world / "train"], 10, mt.config.fps))
    lay, blocks = ep.layout, 2
    T = lay.tokens_per_block
    perm, pos_layer, pos_part = mod.answer_permutation(lay, blocks, "block")
    assert list(pos_part[:4]) == [-1, -1, -1, 0] and list(pos_part[T : T + 4]) == [-1, -1, -1, 0]
    perm, pos_layer, pos_part = mod.answer_permutation(lay, blocks, "layer")
    assert sorted(perm[:6].tolist()) == [0, 1, 2, T, T + 1, T + 2]
    res = mod.main(["--tokenizer", str(world / "tok"), "--train", str(world / "train"), "--eval", str(world / "heldout"),
                    "--seconds", "1", "--steps", "2", "--batch-size", "4", "--hidden", "16", "--layers", "1",
                    "--heads", "2", "--bins", "8", "--end-points", "ray", "--end-point-bins", "8"])  # fmt: skip
    capsys.readouterr()
    assert res["end_points"]["space"] == "ray" and res["answer_tokens"] == mt.layout.tokens_per_block + 3
    # the floor with the true ids: the true end's cell; with only the end-point ids true, the same end cells
    floor = res["baselines"]["tokenizer_floor"]
    coarse = res["baselines"]["tokenizer_floor_coarse_wrist_only"]["wrist_layers_below_1"]
    assert floor["pairs"] == res["generated"]["pairs"] and 0 <= coarse["target_accuracy"] <= 1


def test_target_place_ids_prompt_is_the_vla_place(world, oracle, capsys):
    """``--condition target_place_ids``: the prompt is the side, the target centre's three end-point ids
    (`handvla.vla.places.place_ids`, camera frame, not mirrored) and the motion start; it needs end points."""
    from handvla.tokenizer import MotionTokenizer, with_end_points
    from handvla.vla.places import place_ids

    mod = oracle
    base = ["--tokenizer", str(world / "tok"), "--train", str(world / "train"), "--eval", str(world / "heldout"),
            "--seconds", "1", "--steps", "2", "--batch-size", "4", "--hidden", "16", "--layers", "1", "--heads", "2",
            "--condition", "target_place_ids"]  # fmt: skip
    with pytest.raises(SystemExit):
        mod.main(base)
    assert "target_place_ids states places in end-point ids" in capsys.readouterr().err
    mt = MotionTokenizer.from_pretrained(world / "tok")
    ep = with_end_points(mt, "ray", 8, motions=mod.training_motions([world / "train"], 10, mt.config.fps))
    rows = mod.collect_pairs([world / "train"], ep, 1)
    coder = mod.PromptCoder("target_place_ids", ep.layout.vocab_size, rows, 8, ep)
    r = rows[0]
    want = place_ids(np.asarray(r["objects"][r["targets"][0]]), ep).tolist()
    assert coder.prompt(r) == [coder.side_tok[r["side"]], *want, coder.mot_tok]
    # target_place_ids_hand: the same ids of the centre in the hand's own frame (left hands mirrored)
    hand = mod.PromptCoder("target_place_ids_hand", ep.layout.vocab_size, rows, 8, ep)
    for r in rows:
        c = np.asarray(r["objects"][r["targets"][0]]) * (np.array([-1.0, 1.0, 1.0]) if r["side"] == "left" else 1.0)
        assert hand.prompt(r) == [hand.side_tok[r["side"]], *place_ids(c, ep).tolist(), hand.mot_tok]
    # told another object: the counterfactual rows move the told place and keep the true target as "asked"
    for r, cf in zip(rows, mod.counterfactual_rows(rows)):
        if len(r["objects"]) > 1:
            assert cf["targets"][0] != r["targets"][0] and cf["asked"] == r["targets"][0]
            assert hand.prompt(cf) != hand.prompt(r)
    res = mod.main(base + ["--end-points", "ray", "--end-point-bins", "8", "--end-point-frame", "camera"])
    capsys.readouterr()
    assert res["generated"]["pairs"] > 0 and res["end_points"]["frame"] == "camera"
    cf = res["generated"]["counterfactual"]
    assert cf["pairs"] > 0 and 0 <= cf["at_told_object"] <= 1 and 0 <= cf["at_true_target"] <= 1
