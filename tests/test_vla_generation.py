"""Constrained decoding on a random-init tiny VLA: the block structure holds for every seed, batch size,
hand mode and sampling setting; batching (left padding) and the KV cache do not change the result (checked
against unbatched runs and a hand-written no-cache greedy loop); parsing rejects malformed output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from handvla.errors import InputError
from handvla.tokenizer.layout import TokenLayout
from handvla.vla import (
    MotionBlockConstraint,
    build_vla,
    generate_motion,
    is_valid_motion_output,
    parse_motion_output,
    predict_motion,
    translate_motion,
)
from handvla.vla.processing import generation_prompt

# A small layout keeps each block short (8 ids) so many decodes fit in a few seconds; the default 128-id
# layout is exercised once below.
# 32 motion ids: 4 wrist ids in [0, 16) then 4 finger ids in [16, 32) per block
SMALL = TokenLayout(("wrist", "finger"), groups=1, latent_steps=4, layers=1, codebook_size=16)


@pytest.fixture(scope="module")
def small():
    return build_vla("tiny", layout=SMALL, seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for w, h in [(56, 56), (112, 56), (90, 120)]
    ]


def _check_blocks(motion: np.ndarray, layout: TokenLayout, seconds: int, hands: int) -> None:
    assert motion.shape == (seconds, hands, layout.tokens_per_block) and motion.dtype == np.int64
    w, f = motion[..., layout.part_positions("wrist")], motion[..., layout.part_positions("finger")]
    assert ((w >= 0) & (w < layout.id_range("wrist")[1])).all()
    assert ((f >= layout.id_range("finger")[0]) & (f < layout.vocab_size)).all()


def test_constrained_decoding_always_valid(small, images):
    """Valid-output rate over seeds x batch sizes x hand modes x greedy / sampled (incl. extreme settings)."""
    vocab = small.processor.vocab
    tasks = ["pick up the red cube", "wave", "open the drawer slowly and carefully"]
    settings = [
        dict(do_sample=False),
        dict(do_sample=True),
        dict(do_sample=True, temperature=5.0, top_k=1),
        dict(do_sample=True, temperature=0.3, top_p=0.05, top_k=None),
    ]
    n_ok = n_total = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        for bs in (1, 3):
            kw = settings[(seed + bs) % len(settings)]
            secs = [int(rng.integers(1, 4)) for _ in range(bs)]
            modes = [str(rng.choice(["both", "left", "right"])) for _ in range(bs)]
            out = generate_motion(
                small.model, small.processor, images[:bs], tasks[:bs], secs, modes, seed=seed, **kw
            )
            for i in range(bs):
                hands = 2 if modes[i] == "both" else 1
                new = out.sequences[i, out.prompt_length :]
                n_total += 1
                n_ok += is_valid_motion_output(new, vocab, secs[i], hands)
                _check_blocks(out.motion[i], SMALL, secs[i], hands)
                assert (
                    out.hands[i]
                    == {"both": ("left", "right"), "left": ("left",), "right": ("right",)}[modes[i]]
                )
                # after the end-of-turn token only padding follows
                L = vocab.block_length * secs[i] * hands
                assert new[L] == vocab.eos_id and (new[L + 1 :] == vocab.pad_id).all()
    assert n_ok == n_total == 6 * (1 + 3)  # valid-output rate 100%


def test_sampling_differs_between_seeds_greedy_does_not(small, images):
    a = generate_motion(
        small.model, small.processor, images[0], "wave", 1, "left", do_sample=True, seed=1
    ).motion[0]
    b = generate_motion(
        small.model, small.processor, images[0], "wave", 1, "left", do_sample=True, seed=2
    ).motion[0]
    c = generate_motion(
        small.model, small.processor, images[0], "wave", 1, "left", do_sample=True, seed=1
    ).motion[0]
    assert not np.array_equal(a, b) and np.array_equal(a, c)
    g1 = generate_motion(small.model, small.processor, images[0], "wave", 1, "left", seed=1).motion[0]
    g2 = generate_motion(small.model, small.processor, images[0], "wave", 1, "left", seed=2).motion[0]
    assert np.array_equal(g1, g2)


def test_default_layout_full_blocks(images):
    big = build_vla("tiny", seed=1)  # 8192 motion ids, 128 per block (64 wrist + 64 finger)
    layout = big.model.config.motion_layout
    out = generate_motion(
        big.model,
        big.processor,
        images[:2],
        ["grasp the cup", "wave"],
        seconds=1,
        hand_mode=["both", "right"],
        do_sample=True,
        seed=0,
    )
    _check_blocks(out.motion[0], layout, 1, 2)
    _check_blocks(out.motion[1], layout, 1, 1)
    # without part restriction any motion id may appear anywhere in the block
    free = generate_motion(
        big.model,
        big.processor,
        images[0],
        "grasp the cup",
        1,
        "left",
        do_sample=True,
        seed=0,
        restrict_parts=False,
        top_k=None,
    )
    m = free.motion[0]
    assert ((m >= 0) & (m < 8192)).all()
    assert (m[..., :64] >= 4096).any() or (m[..., 64:] < 4096).any()  # sampled over all 8192 ids


def test_batched_left_padding_matches_single(small, images):
    tasks = ["wave", "pick up the red cube and put it in the bowl"]
    batched = generate_motion(
        small.model, small.processor, images[:2], tasks, seconds=[2, 1], hand_mode=["left", "both"]
    )
    # prompts of different lengths -> the shorter one is left-padded
    lens = [
        len(small.processor.encode(generation_prompt(t, 1, "left"), images=[im]).input_ids)
        for t, im in zip(tasks, images)
    ]
    assert lens[0] != lens[1]
    assert (batched.sequences[0, : batched.prompt_length] == small.processor.vocab.pad_id).any()
    for i, (t, s, m) in enumerate(zip(tasks, [2, 1], ["left", "both"])):
        single = generate_motion(small.model, small.processor, images[i], t, s, m)
        assert np.array_equal(single.motion[0], batched.motion[i])


def test_kv_cache_generation_matches_no_cache_loop(small, images):
    """An independent decoder: full forward pass per step (no cache), constraint applied by hand."""
    proc, model = small.processor, small.model
    s = proc.encode(generation_prompt("wave", 1, "both"), images=[images[1]])
    ids = s.input_ids[None]
    cons = MotionBlockConstraint(proc.vocab, ids.shape[1], blocks=2)
    with torch.no_grad():
        for _ in range(cons.max_new_tokens):
            logits = model(input_ids=ids, pixel_values=s.pixel_values, use_cache=False).logits[:, -1]
            nxt = cons(ids, logits).argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    ref = parse_motion_output(ids[0, s.input_ids.shape[0] :], proc.vocab, 1, 2)
    got = generate_motion(model, proc, images[1], "wave", 1, "both").motion[0]
    assert np.array_equal(got, ref)


def test_constraint_alone_on_random_scores():
    """Many rollouts of the processor against random logits (no model): always the exact structure."""
    from handvla.vla.text_tokenizer import MotionVocab

    V = 120
    vocab = MotionVocab(
        SMALL,
        motion_offset=60,
        mot_start_id=50,
        mot_end_id=51,
        mot_noop_id=52,
        img_start_id=53,
        img_end_id=54,
        img_context_id=55,
        eos_id=3,
        pad_id=2,
    )
    gen = torch.Generator().manual_seed(0)
    for trial in range(50):
        B = 1 + trial % 4
        blocks = [1 + (trial + b) % 3 for b in range(B)]
        prompt = torch.randint(0, 50, (B, 7), generator=gen)
        cons = MotionBlockConstraint(vocab, 7, blocks, allow_noop=bool(trial % 2))
        ids = prompt
        for _ in range(cons.max_new_tokens):
            scores = cons(ids, torch.randn(B, V, generator=gen) * 10)
            probs = torch.softmax(scores, -1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], 1)
        for b in range(B):
            new = ids[b, 7:]
            motion = parse_motion_output(new, vocab, blocks[b], 1, allow_noop=True)
            assert motion.shape == (blocks[b], 1, 8)
    # num_return_sequences-style expansion: 2 prompts x 3 rows each
    cons = MotionBlockConstraint(vocab, 0, [1, 2])
    scores = cons(torch.zeros(6, 10, dtype=torch.long), torch.zeros(6, V))  # 10 generated: first block ended
    allowed = torch.isfinite(scores)
    assert (allowed[:3].nonzero()[:, 1] == vocab.eos_id).all()
    assert (allowed[3:].nonzero()[:, 1] == vocab.mot_start_id).all()


def test_parse_rejects_malformed(small):
    proc, vocab = small.processor, small.processor.vocab
    rng = np.random.default_rng(0)
    motion = np.concatenate([rng.integers(0, 16, (2, 2, 4)), rng.integers(16, 32, (2, 2, 4))], -1)
    good = proc.motion_token_ids(motion) + [vocab.eos_id]
    assert np.array_equal(parse_motion_output(good, vocab, 2, 2), motion)
    L = vocab.block_length
    cases = {
        "missing <mot>": lambda t: t.__setitem__(0, vocab.motion_offset),
        "missing </mot>": lambda t: t.__setitem__(L - 1, vocab.motion_offset),
        "text inside a block": lambda t: t.__setitem__(3, 5),
        "finger id in a wrist slot": lambda t: t.__setitem__(1, vocab.motion_offset + 20),
        "wrist id in a finger slot": lambda t: t.__setitem__(L - 2, vocab.motion_offset + 1),
        "extra block": lambda t: t.__setitem__(4 * L, vocab.mot_start_id),
    }
    for name, corrupt in cases.items():
        toks = list(good)
        corrupt(toks)
        assert not is_valid_motion_output(toks, vocab, 2, 2), name
        with pytest.raises(InputError):
            parse_motion_output(toks, vocab, 2, 2)
    with pytest.raises(InputError, match="only"):
        parse_motion_output(good[: 3 * L], vocab, 2, 2)
    # a parts-free check accepts the swapped ids
    toks = list(good)
    toks[1] = vocab.motion_offset + 20
    assert is_valid_motion_output(toks, vocab, 2, 2, check_parts=False)


def test_translation_never_emits_motion_or_image_tokens(images):
    # a model that strongly prefers motion / image tokens: their LM-head rows (untied) scaled up 50x
    bundle = build_vla("tiny", layout=SMALL, seed=3, tie_word_embeddings=False)
    vocab = bundle.processor.vocab
    banned = sorted(
        set(vocab.special_motion_ids()) | {vocab.img_start_id, vocab.img_end_id, vocab.img_context_id}
    )
    with torch.no_grad():
        bundle.model.lm_head.weight[banned] *= 50
    rng = np.random.default_rng(1)
    motions = [
        np.concatenate([rng.integers(0, 16, (s, h, 4)), rng.integers(16, 32, (s, h, 4))], -1)
        for s, h in [(1, 2), (2, 1)]
    ]
    s = bundle.processor.encode(
        "In <image>, <motion>. What?", images=[images[0]], prompt_motions=[motions[0]]
    )
    with torch.no_grad():
        first = bundle.model(input_ids=s.input_ids[None], pixel_values=s.pixel_values).logits[0, -1]
    assert first.argmax().item() in banned  # unconstrained, the answer would start with a banned token
    for seed in range(3):
        texts, ids = translate_motion(
            bundle.model,
            bundle.processor,
            images[:2],
            motions,
            ["both", "left"],
            max_new_tokens=12,
            do_sample=seed > 0,
            seed=seed,
            return_token_ids=True,
        )
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
        for t, row in zip(texts, ids):
            assert row and not set(row) & set(banned)  # the raw generated ids, not the decoded text
            assert t == bundle.tokenizer.decode(row)


def test_contextual_prediction(small, images):
    rng = np.random.default_rng(2)
    hist = np.concatenate([rng.integers(0, 16, (2, 1, 4)), rng.integers(16, 32, (2, 1, 4))], -1)
    out = predict_motion(
        small.model, small.processor, images[0], "wave", [hist], seconds=3, hand_mode="right"
    )
    _check_blocks(out.motion[0], SMALL, 3, 1)
    prompt = out.sequences[0, : out.prompt_length]
    vocab = small.processor.vocab
    assert (prompt == vocab.mot_start_id).sum() == 2  # the two history blocks are in the prompt
    hist_tokens = torch.tensor(small.processor.motion_token_ids(hist))
    joined = prompt.tolist()
    k = joined.index(vocab.mot_start_id)
    assert joined[k : k + len(hist_tokens)] == hist_tokens.tolist()
    with pytest.raises(InputError, match="history"):
        predict_motion(small.model, small.processor, images[0], "wave", [hist], seconds=1, hand_mode="both")


def test_request_validation(small, images):
    m, p = small.model, small.processor
    with pytest.raises(InputError, match="hand_mode"):
        generate_motion(m, p, images[0], "wave", 1, "middle")
    for bad in (0, -2, 1.5, None):
        with pytest.raises(InputError, match="seconds"):
            generate_motion(m, p, images[0], "wave", bad, "both")
    with pytest.raises(InputError, match="seconds"):
        generate_motion(m, p, images[:2], ["a", "b"], [1, 2, 3], "both")
    with pytest.raises(InputError, match="tasks"):
        generate_motion(m, p, images[0], "", 1, "both")
    with pytest.raises(InputError, match="blocks"):
        MotionBlockConstraint(p.vocab, 0, 0)
