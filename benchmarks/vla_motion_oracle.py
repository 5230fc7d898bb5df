"""Can next-token training over motion ids learn to end a wrist path at a place it is TOLD? A text-only probe.

The VLA's motion answers reach about half of the held-out targets and do not follow the named object, even
when the answer itself states the target's box first (docs/vla-learning.md (11)). This benchmark
takes the image, the instruction and the vision path out of the question: a small causal LM of the tiny
preset's LLM shape (Qwen2 from transformers, random init) is given the place directly as its prompt and is
trained, with the same next-token loss and per-layer weights as pretraining, to produce the true motion ids
of the hand that goes there. Prompts (``--condition``):

- ``none``: the hand's side only (an input-free LM: its accuracy is what the marginal of ids gives);
- ``start``: where the wrist starts (location tokens), no target;
- ``target``: the start and the target object's centre (location tokens);
- ``final``: the start and where the true wrist path ends (location tokens): the purest "place -> ids" step;
- ``target_digits``: the start and the target as signed millimetre digit strings (as a box in text would be);
- ``target_only``: the target object's centre alone (3-D, no start);
- ``target_uv``: where the target's centre is in the image alone (x / z, y / z: the place a stated box gives,
  without depth or start);
- ``start_target_uv``: the start (3-D) and the target's place in the image;
- ``target_place_ids``: the target's centre as the tokenizer's own three end-point ids, camera frame (the
  place a VLA with ``motion_answer_prefix: target_places`` states; needs ``--end-points``);
- ``target_place_ids_hand``: the same ids in the hand's own frame (left hands mirrored, ``hand_places``).

Location tokens: one token per (role, axis, bin), ``--bins`` uniform bins between the 1st and 99th
percentile of the training values. Positions are in the camera frame, mirrored for left hands (x -> -x), as
the tokenizer mirrors left hands before encoding them, so one place is one prompt in the ids' own frame.

Scored on the (hand, target) pairs of held-out episodes as ``handvla vla-eval`` scores generated motion:
greedy decoding constrained to each block position's id range, decoded by the tokenizer, a hit when the
final wrist lies nearer the target than any other object in view (Wilson 95 % intervals), the final wrist's
distance to the true one, and teacher-forced token accuracy per residual layer. Beside it: the tokenizer
floor (true ids decoded; and with only the wrist's first k residual layers true, the rest the training
pairs' most frequent id: how much of the end point the coarse layers decide), a constant end point (the
training pairs' mean final wrist per side) and the told place itself as the end point (the ceiling of the
``target`` condition).

Conditions that tell a target are also scored told ANOTHER object of the scene (``counterfactual``: the next
object id after the target's, the told place moved there): the rate at which the motion ends at the told
object (it reads the place) and at the true target (it follows a prior, e.g. the acting hand's side).

Answer orders (``--answer-order``): ``block`` (pretraining's: block after block, each in the tokenizer's
order), ``layer`` (the whole answer coarse to fine: every block's residual-layer-0 ids first, wrist before
finger) and ``part`` (every block's wrist ids, then every block's finger ids). Training progress goes to
stderr.

``--end-points ray|xyz``: the tokenizer's blocks also say where they end (three end-point ids first in each
block, `handvla.tokenizer.with_end_points`), and decoding moves the path to end in the stated cell, so an
answer's end is a few ids the LM can read off the place rather than the sum of residual codes.

``--rerank-samples 1,4,8,16``: also sample that many answers per prompt (``--temperature``) and keep the one
whose decoded end lies nearest the place (``--rerank-place``): best of k as ``handvla.vla.rerank`` decodes
the VLA, here with the told place in 3-D instead of the model's own box in the image; beside it one sample
alone and the rate at which any of the k ends at the target.

    python benchmarks/vla_motion_oracle.py --tokenizer TOK --train STORE [STORE ...] --eval HELDOUT \\
        --condition target [--steps 2000] [--answer-order block|layer|part]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

ROLES = ("start", "target", "final", "target_uv")
#: values per role: camera-frame positions (3) or image-plane coordinates (2)
ROLE_DIMS = {"start": 3, "target": 3, "final": 3, "target_uv": 2}
#: the roles each --condition tells, in prompt order
CONDITION_ROLES = {
    "none": (),
    "start": ("start",),
    "target": ("start", "target"),
    "final": ("start", "final"),
    "target_digits": ("start", "target"),
    "target_only": ("target",),
    "target_uv": ("target_uv",),
    "start_target_uv": ("start", "target_uv"),
    # the target's centre as the tokenizer's own three end-point ids, camera frame, not mirrored: the place a
    # VLA with motion_answer_prefix target_places states (needs --end-points)
    "target_place_ids": ("target",),
    # the same ids in the hand's own frame (left hands mirrored, x -> -x), as the blocks' end-point ids say
    # where a block ends
    "target_place_ids_hand": ("target",),
}


def collect_pairs(paths, mt, seconds: int, limit: int | None = None) -> list[dict]:
    """One row per (episode, hand with a target) of HandWorld stores: the hand's true ids over the first
    ``seconds`` seconds, its start and final wrist, the target's centre and every object in view (camera
    frame, metres, at the window's last frame)."""
    from handvla.data.store import EpisodeStore
    from handvla.vla.evaluate import object_positions_camera
    from handvla.vla.places import in_place_frame

    F = int(mt.config.frames_per_block)
    n = seconds * F
    rows: list[dict] = []
    for path in paths:
        st = EpisodeStore(path)
        for k in range(len(st)):
            if limit is not None and len(rows) >= limit:
                return rows
            ep = st.load_episode(k, with_video=False)
            gt = ep.ground_truth or {}
            if ep.num_frames < n or not gt.get("targets"):
                continue
            objects = object_positions_camera(ep, n - 1)
            if len(objects) < 2:
                continue
            for h in ("left", "right"):
                tgs = [int(t["object_id"]) for t in gt["targets"] if t.get("hand") == h and int(t["object_id"]) in objects]
                if not tgs:
                    continue
                m = ep.hands[h].slice(0, n)
                valid = np.flatnonzero(m.valid)
                if len(valid) == 0:
                    continue
                rows.append(
                    {
                        "store": str(path),
                        "episode": k,
                        "side": h,
                        "ids": np.asarray(mt.encode_motion(m).ids, np.int64),
                        "betas": np.asarray(m.betas, np.float32),
                        "n": n,
                        "targets": tgs,
                        "objects": objects,
                        "final_cam": np.asarray(m.wrist_pos[valid[-1]], np.float64),
                        # the prompt's places, in the ids' (mirrored) frame
                        "start": in_place_frame(m.wrist_pos[valid[0]], h, "hand"),
                        "final": in_place_frame(m.wrist_pos[valid[-1]], h, "hand"),
                        **told_target(objects[tgs[0]], h),
                    }
                )
    return rows


def told_target(centre: np.ndarray, side: str) -> dict[str, np.ndarray]:
    """A target's camera-frame ``centre`` as the prompt roles tell it, in the ids' frame (``side``'s own,
    `handvla.vla.places.in_place_frame`): ``target`` (3-D) and ``target_uv`` (x / z, y / z)."""
    from handvla.vla.places import in_place_frame

    p = in_place_frame(centre, side, "hand")
    return {"target": p, "target_uv": p[:2] / p[2]}


def training_motions(paths, limit: int, fps: float) -> list:
    """The hand motions of the first ``limit`` episodes of the stores, in order (the span of end-point bins)."""
    from handvla.data.store import EpisodeStore
    from handvla.tokenizer.data import load_store_motions

    out = []
    for path in paths:
        n = min(len(EpisodeStore(path)), limit)
        if n == 0:
            break
        out += [lm.motion for lm in load_store_motions(path, fps, max_episodes=n)]
        limit -= n
    return out


class PromptCoder:
    """Prompt tokens for one ``condition``; the motion ids take the vocabulary's first ``motion_vocab`` ids."""

    def __init__(self, condition: str, motion_vocab: int, train_rows: list[dict], bins: int, mt=None):
        self.condition, self.bins, self.base, self.mt = condition, bins, motion_vocab, mt
        self.roles = CONDITION_ROLES[condition]
        pos3 = np.stack([r[role] for r in train_rows for role in ROLES if ROLE_DIMS[role] == 3])
        uv = np.stack([r["target_uv"] for r in train_rows])
        # one shared range for the camera-frame roles, its own for the image-plane one
        self.lo = {role: np.percentile(uv if ROLE_DIMS[role] == 2 else pos3, 1, axis=0) for role in ROLES}
        self.hi = {role: np.percentile(uv if ROLE_DIMS[role] == 2 else pos3, 99, axis=0) for role in ROLES}
        nxt = motion_vocab
        self.side_tok = {"left": nxt, "right": nxt + 1}
        nxt += 2
        self.mot_tok = nxt
        nxt += 1
        if condition == "target_digits":
            self.digit0, nxt = nxt, nxt + 10  # 0-9
            self.sign_tok, nxt = {1: nxt, -1: nxt + 1}, nxt + 2
            self.role_tok = {role: nxt + i for i, role in enumerate(ROLES)}
            nxt += len(ROLES)
        else:
            self.loc0 = {}  # (role, axis, bin)
            for role in ROLES:
                self.loc0[role] = nxt
                nxt += ROLE_DIMS[role] * bins
        self.vocab = nxt

    def bin_of(self, v: np.ndarray, role: str) -> np.ndarray:
        lo, hi = self.lo[role], self.hi[role]
        b = np.floor((v - lo) / (hi - lo) * self.bins).astype(np.int64)
        return np.clip(b, 0, self.bins - 1)

    def prompt(self, row: dict) -> list[int]:
        out = [self.side_tok[row["side"]]]
        if self.condition in ("target_place_ids", "target_place_ids_hand"):
            from handvla.vla.places import place_ids

            # camera frame, as the VLA states it; or the hand's mirrored frame (row["target"])
            centre = row["target"] if self.condition.endswith("_hand") else row["objects"][row["targets"][0]]
            return out + place_ids(np.asarray(centre), self.mt).tolist() + [self.mot_tok]
        for role in self.roles:
            if self.condition == "target_digits":
                out.append(self.role_tok[role])
                for v in row[role]:
                    mm = int(round(float(v) * 1000))
                    out.append(self.sign_tok[1 if mm >= 0 else -1])
                    out += [self.digit0 + int(c) for c in f"{min(abs(mm), 9999):04d}"]
            else:
                out += [self.loc0[role] + a * self.bins + int(b) for a, b in enumerate(self.bin_of(row[role], role))]
        return out + [self.mot_tok]


def answer_permutation(layout, blocks: int, order: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The order the LM says an answer's ids in: ``perm[j]`` = block-major position of the j-th id said, and
    the residual layer and part index (0 = wrist; -1 = end-point ids, which count as layer 0) of every
    block-major position."""
    L = blocks * layout.tokens_per_block
    pos_layer = np.tile(layout.position_layers(), blocks)
    one = np.concatenate([np.full(layout.end_point_tokens, -1), np.repeat(np.arange(len(layout.parts)), layout.tokens_per_part)])
    pos_part = np.tile(one, blocks)  # -1: a block's end-point ids (said first of its layer)
    if order == "block":
        perm = np.arange(L)
    elif order == "layer":
        perm = np.lexsort((np.arange(L), pos_part, pos_layer))
    elif order == "part":
        perm = np.lexsort((np.arange(L), pos_part))
    else:
        raise ValueError(f"answer order: expected 'block', 'layer' or 'part', got {order!r}")
    return perm, pos_layer, pos_part


def build_lm(vocab: int, hidden: int, layers: int, heads: int, length: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=max(1024, length),
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(cfg)


def allowed_ranges(mt, blocks: int) -> np.ndarray:
    """(blocks x tokens_per_block, 2) legal [lo, hi) motion-id range at every answer position."""
    return np.tile(mt.layout.position_id_ranges(), (blocks, 1))


@torch.no_grad()
def generate(
    model,
    prompts: torch.Tensor,
    ranges: np.ndarray,
    batch: int = 256,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Each answer position restricted to its id range (KV cache); greedy at ``temperature`` 0, else sampled
    from the softmax of logits / temperature. prompts (N, P) -> ids (N, L)."""
    model.eval()
    out = []
    lo, hi = torch.as_tensor(ranges[:, 0]), torch.as_tensor(ranges[:, 1])
    for b0 in range(0, len(prompts), batch):
        x = prompts[b0 : b0 + batch]
        res = model(input_ids=x, use_cache=True)
        past, logits = res.cache, res.logits[:, -1]
        ids = []
        for p in range(len(ranges)):
            masked = logits.clone()
            masked[:, : int(lo[p])] = -torch.inf
            masked[:, int(hi[p]) :] = -torch.inf
            if temperature > 0:
                probs = torch.softmax(masked / temperature, -1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                nxt = masked.argmax(-1)
            ids.append(nxt)
            if p + 1 < len(ranges):
                res = model(input_ids=nxt[:, None], cache=past, use_cache=True)
                past, logits = res.cache, res.logits[:, -1]
        out.append(torch.stack(ids, 1))
    model.train()
    return torch.cat(out).numpy()


def score_end_points(finals: list[np.ndarray], rows: list[dict]) -> dict:
    from handvla.stats import rate_summary
    from handvla.vla.evaluate import target_hit

    hits = rate_summary(target_hit(f, oid, r["objects"]) for f, r in zip(finals, rows) for oid in r["targets"])
    err = [float(np.linalg.norm(f - r["final_cam"])) for f, r in zip(finals, rows)]
    return {
        "target_accuracy": hits["rate"],
        "ci95": hits["ci95"],
        "pairs": hits["n"],
        "final_wrist_error_cm": 100 * float(np.mean(err)),
    }


def decode_finals(mt, ids: np.ndarray, rows: list[dict], blocks: int) -> list[np.ndarray]:
    """Where each answer's wrist ends (camera frame): the last block decoded, one batch for all rows."""
    T = mt.layout.tokens_per_block
    last = np.asarray(ids).reshape(len(ids), blocks, T)[:, -1]
    return list(mt.final_wrist_positions(last, [r["side"] for r in rows]))


def counterfactual_rows(rows: list[dict]) -> list[dict]:
    """Each row told ANOTHER object of its scene as the target (`handvla.vla.evaluate.counterfactual_other`:
    the next object id after the true target's): ``targets`` = [that object], ``asked`` = the true one; the
    told places (``target``, ``target_uv``) move with it. Does the motion follow what it is told, or a prior
    (the acting hand's side says roughly where its true target lies)?"""
    from handvla.vla.evaluate import counterfactual_other

    out = []
    for r in rows:
        other = counterfactual_other(r["objects"], r["targets"][0])
        out.append(dict(r, targets=[other], asked=r["targets"][0], **told_target(r["objects"][other], r["side"])))
    return out


def told_places(rows: list[dict], condition: str) -> list[np.ndarray] | None:
    """The place the prompt tells, in the camera frame (None for conditions that tell no end place)."""
    if condition in ("target", "target_digits", "target_only", "target_uv", "start_target_uv"):
        return [np.asarray(r["objects"][r["targets"][0]], np.float64) for r in rows]
    if condition == "final":
        return [r["final_cam"] for r in rows]
    return None


def rerank_by_place(mt, model, prompts, ranges, inv, rows, blocks, places, samples, temperature, seed) -> dict:
    """Sample ``max(samples)`` answers per prompt, decode each, and keep the one whose final wrist lies nearest
    the told place: for every k in ``samples``, the score of that choice among the first k. Beside it the score
    of one sample (no choice) and the rate at which any of the k ends at a target (the choice's ceiling)."""
    from handvla.stats import rate_summary
    from handvla.vla.evaluate import target_hit

    K = max(samples)
    g = torch.Generator().manual_seed(seed)
    ids = generate(model, prompts.repeat_interleave(K, 0), ranges, temperature=temperature, generator=g)[:, inv]
    finals = np.stack(decode_finals(mt, ids, [r for r in rows for _ in range(K)], blocks)).reshape(len(rows), K, 3)
    dist = np.linalg.norm(finals - np.stack(places)[:, None], axis=-1)
    out = {"temperature": temperature, "one_sample": score_end_points(list(finals[:, 0]), rows)}
    for k in samples:
        pick = dist[:, :k].argmin(1)
        res = score_end_points([finals[i, j] for i, j in enumerate(pick)], rows)
        res["distance_to_place_cm"] = 100 * float(dist[np.arange(len(rows)), pick].mean())
        anyhit = rate_summary(
            any(target_hit(finals[i, j], oid, r["objects"]) for j in range(k)) for i, r in enumerate(rows) for oid in r["targets"]
        )
        res["any_of_k_reaches_target"] = anyhit["rate"]
        out[f"nearest_of_{k}"] = res
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--eval", required=True)
    p.add_argument("--condition", default="target", choices=list(CONDITION_ROLES))
    p.add_argument("--seconds", type=int, default=2)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--bins", type=int, default=64)
    p.add_argument("--layer-weights", default="4,2,1,1,0.5,0.5,0.25,0.25",
                   help="loss weight per residual layer (pretraining's recipe D); '1' for equal weights")
    p.add_argument("--answer-order", default="block", choices=["block", "layer", "part"],
                   help="'block': block after block, each in the tokenizer's order (pretraining's); 'layer': the "
                   "whole answer coarse to fine, every block's residual-layer-0 ids first (wrist before finger); "
                   "'part': every block's wrist ids (block after block), then every block's finger ids")
    p.add_argument("--end-points", default="none", choices=["none", "xyz", "ray"],
                   help="the tokenizer's blocks also state where they end (TokenizerConfig.end_point_space, "
                   "handvla.tokenizer.with_end_points: the span of the first 400 training episodes' block ends); "
                   "each block's three end-point ids come first in block order, first of layer 0 otherwise")
    p.add_argument("--end-point-bins", type=int, default=64)
    p.add_argument("--end-point-frame", default="hand", choices=["hand", "camera"],
                   help="the frame of the end-point ids (TokenizerConfig.end_point_frame): 'hand' mirrored for "
                   "left hands as the codes are, 'camera' not (the frame of target_place_ids)")  # fmt: skip
    p.add_argument("--train-pairs", type=int, default=None, help="cap on training pairs")
    p.add_argument("--eval-pairs", type=int, default=400)
    p.add_argument("--eval-every", type=int, default=0, help="also score at these step intervals (0: end only)")
    p.add_argument("--rerank-samples", default="",
                   help="comma-separated k (e.g. 4,16): also sample k answers per prompt and keep the one whose "
                   "decoded end lies nearest --rerank-place")
    p.add_argument("--rerank-place", default="target", choices=["target", "final"],
                   help="the place answers are chosen by: the target object's centre, or the true path's end "
                   "(whatever --condition tells the LM: with 'none' only the choice uses the place)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of --rerank-samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "1")))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    from handvla.tokenizer import MotionTokenizer, with_end_points

    t0 = time.time()
    mt = MotionTokenizer.from_pretrained(a.tokenizer)
    if a.end_points != "none":
        mt = with_end_points(mt, a.end_points, a.end_point_bins, motions=training_motions(a.train, 400, mt.config.fps),
                             frame=a.end_point_frame)  # fmt: skip
    train = collect_pairs(a.train, mt, a.seconds, a.train_pairs)
    held = collect_pairs([a.eval], mt, a.seconds, a.eval_pairs)
    collect_s = time.time() - t0
    for name, rows in (("--train", train), ("--eval", held)):
        if not rows:
            p.error(f"{name}: no (hand, target) pairs of {a.seconds} s with two or more objects in view")
    lw = [float(v) for v in a.layer_weights.split(",")]
    if len(lw) not in (1, mt.layout.layers):
        p.error(f"--layer-weights: expected 1 or {mt.layout.layers} values (one per residual layer), got {len(lw)}")
    samples = sorted({int(v) for v in a.rerank_samples.split(",") if v.strip()})
    if samples and min(samples) < 1:
        p.error(f"--rerank-samples: expected comma-separated counts >= 1, got {a.rerank_samples!r}")
    if a.condition.startswith("target_place_ids") and not mt.layout.end_point_bins:
        p.error("--condition target_place_ids states places in end-point ids: give --end-points ray or xyz")
    coder = PromptCoder(a.condition, mt.layout.vocab_size, train, a.bins, mt)
    blocks, T = a.seconds, mt.layout.tokens_per_block
    L = blocks * T
    P = len(coder.prompt(train[0]))

    perm, pos_layer, pos_part = answer_permutation(mt.layout, blocks, a.answer_order)
    inv = np.argsort(perm)

    def tensors(rows):
        x = torch.tensor([coder.prompt(r) + r["ids"].reshape(-1)[perm].tolist() for r in rows], dtype=torch.long)
        return x

    Xtr, Xev = tensors(train), tensors(held)
    model = build_lm(coder.vocab, a.hidden, a.layers, a.heads, P + L)
    pos_w = torch.tensor([lw[li] if len(lw) > 1 else lw[0] for li in pos_layer[perm]], dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / a.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / a.steps))),
    )
    ranges = allowed_ranges(mt, blocks)[perm]
    g = torch.Generator().manual_seed(a.seed)

    def evaluate() -> dict:
        ids = generate(model, Xev[:, :P], ranges)[:, inv]  # back to block-major
        res = score_end_points(decode_finals(mt, ids, held, blocks), held)
        with torch.no_grad():
            model.eval()
            logits = model(input_ids=Xev[:, :-1]).logits[:, P - 1 :]
            model.train()
        pred = logits.argmax(-1).numpy()[:, inv]
        true = Xev[:, P:].numpy()[:, inv]
        wr = mt.layout.part_positions(mt.layout.parts[0])  # the wrist's positions in a block
        acc = {}
        for li in range(mt.layout.layers):
            m = np.zeros(L, bool)
            for b in range(blocks):
                m[b * T : (b + 1) * T][wr] = mt.layout.position_layers()[wr] == li
            acc[f"wrist_l{li}"] = float((pred[:, m] == true[:, m]).mean())
        res["teacher_forced_token_accuracy"] = acc
        return res

    curve, t_train = [], time.time()
    for step in range(1, a.steps + 1):
        idx = torch.randint(len(Xtr), (a.batch_size,), generator=g)
        x = Xtr[idx]
        logits = model(input_ids=x[:, :-1]).logits[:, P - 1 :]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, P:].reshape(-1), reduction="none")
        w = pos_w.repeat(len(x))
        loss = (ce * w).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == a.steps:
            curve.append({"step": step, "loss": round(float(loss.detach()), 4), "s": round(time.time() - t_train, 1)})
            print(f"step {step}: loss {curve[-1]['loss']}, {curve[-1]['s']} s", file=sys.stderr, flush=True)
        if a.eval_every and step % a.eval_every == 0 and step != a.steps:
            if not (curve and curve[-1]["step"] == step):
                curve.append({"step": step, "loss": round(float(loss.detach()), 4), "s": round(time.time() - t_train, 1)})
            r = evaluate()
            curve[-1]["eval"] = {k: r[k] for k in ("target_accuracy", "final_wrist_error_cm")}
            print(f"step {step}: {curve[-1]['eval']}", file=sys.stderr, flush=True)
    train_s = time.time() - t_train
    result = evaluate()
    if any(role.startswith("target") for role in CONDITION_ROLES[a.condition]):
        # told another object of the scene: followed (at the told object) or ignored (at the true target)?
        cf = counterfactual_rows(held)
        x_cf = torch.tensor([coder.prompt(r) for r in cf], dtype=torch.long)
        finals = decode_finals(mt, generate(model, x_cf, ranges)[:, inv], cf, blocks)
        from handvla.stats import rate_summary
        from handvla.vla.evaluate import target_hit

        told = rate_summary(target_hit(f, r["targets"][0], r["objects"]) for f, r in zip(finals, cf))
        true = rate_summary(target_hit(f, r["asked"], r["objects"]) for f, r in zip(finals, cf))
        result["counterfactual"] = {
            "at_told_object": told["rate"], "at_told_object_ci95": told["ci95"],
            "at_true_target": true["rate"], "at_true_target_ci95": true["ci95"], "pairs": told["n"],
            "chance": float(np.mean([1.0 / len(r["objects"]) for r in cf])),
        }  # fmt: skip
    if samples:
        t_rr = time.time()
        result["reranked"] = rerank_by_place(mt, model, Xev[:, :P], ranges, inv, held, blocks,
                                             told_places(held, a.rerank_place), samples, a.temperature, a.seed)
        result["reranked"]["place"] = a.rerank_place
        result["reranked"]["seconds"] = round(time.time() - t_rr, 1)

    # baselines on the same pairs
    true_ids = Xev[:, P:].numpy()[:, inv]
    floor = score_end_points(decode_finals(mt, true_ids, held, blocks), held)
    # the floor when only the first k residual layers of the wrist are true (every other id: the training
    # pairs' most frequent id at its position): how much of the end point the coarse layers decide
    train_ids = Xtr[:, P:].numpy()[:, inv]
    mode = np.array([np.bincount(train_ids[:, j]).argmax() for j in range(L)])
    wrist = pos_part <= 0  # the wrist's codes and the end-point ids
    coarse_floor = {}
    for k in range(mt.layout.layers):
        x = np.where(wrist & (pos_layer < k), true_ids, mode)
        r = score_end_points(decode_finals(mt, x, held, blocks), held)
        coarse_floor[f"wrist_layers_below_{k}"] = {kk: r[kk] for kk in ("target_accuracy", "final_wrist_error_cm")}
    mean_final = {s: np.mean([r["final_cam"] for r in train if r["side"] == s], 0) for s in ("left", "right")}
    const = score_end_points([mean_final[r["side"]] for r in held], held)
    places = told_places(held, a.condition)  # the told place itself as the end point (camera frame)
    told = score_end_points(places, held) if places is not None else None
    out = {
        "condition": a.condition,
        "model": {"hidden": a.hidden, "layers": a.layers, "heads": a.heads,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "train_pairs": len(train),
        "eval_pairs": len(held),
        "prompt_tokens": P,
        "answer_tokens": L,
        "answer_order": a.answer_order,
        "end_points": {"space": a.end_points, "bins": a.end_point_bins, "frame": a.end_point_frame,
                       "span": mt.config.end_point_span if a.end_points != "none" else None},
        "steps": a.steps,
        "final_loss": curve[-1]["loss"],
        "train_seconds": round(train_s, 1),
        "collect_seconds": round(collect_s, 1),
        "generated": result,
        "baselines": {
            "tokenizer_floor": floor,
            "tokenizer_floor_coarse_wrist_only": coarse_floor,
            "constant_end_point": const,
            **({"told_place_as_end_point": told} if told else {}),
        },
        "curve": curve,
        "command": "python benchmarks/vla_motion_oracle.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
