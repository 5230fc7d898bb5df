"""Can the random-init VLA learn "In <image>, where is the red cube?" (``handvla.vla.grounding``) on rendered
HandWorld scenes (tables with 1-4 coloured objects, no hands)? Trains by next-token loss on the questions
only and prints one JSON line per evaluation, then one JSON object with all of them.

Scored on held-out scenes (greedy answers): ``centre_in_box`` (the answered box's centre inside the true
box) and ``right_object`` (for scenes of two or more objects: the answered centre nearer the named object
than any other; ``chance`` = mean 1 / objects), beside one constant box (the mean true box). Options:

- ``--one-object 1``: only scenes with exactly one object in view (localisation without a name to bind);
  ``--one-object-steps K``: the first K steps on those scenes, then all (a curriculum);
- ``--position-init zero``: transformers' zero start for the vision tower's position embeddings
  (default: the 2-D sin-cos table of ``build_vla``);
- ``--warm-steps N``: first train the vision tower and projector with a linear head that says, per visual
  token, which colours' boxes it overlaps (weighted binary cross-entropy), then the questions;
  ``--warm-head embeddings``: the head's weights are the LLM's input embeddings of the colour words (" red",
  ...), so red visual tokens come to look like the word " red" to the LLM;
- ``--overrides``: preset overrides as JSON (a larger model, a larger tile);
- ``--film 1``: ``vision_film`` (the tower's output modulated by the question, which then precedes the
  image: ``image_position: after_text``); ``--binding W``: that plus ``binding_loss_weight: W`` (the
  model's binding loss: a linear head on the visual tokens says whether each overlaps the NAMED object's
  box), scored on held-out questions by where the head's highest token falls (``binding``);
- ``--motion-tokenizer TOK --save DIR``: the model gets TOK's motion ids in its vocabulary and is saved
  (``save_vla``) after training, so that motion pretraining can continue it (``model.init_checkpoint``).

    python benchmarks/vla_grounding_probe.py --scenes 8000 --steps 2250
    python benchmarks/vla_grounding_probe.py --scenes 24000 --one-object 1 --steps 1000 --eval-every 500
    python benchmarks/vla_grounding_probe.py --scenes 24000 --one-object-steps 1000 --steps 2000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def render_scenes(n: int, seed: int, size: tuple[int, int], align: bool, tile: int) -> list[tuple]:
    """``n`` scenes (``render_table_scenes``) as (the model's view, [(object name, box 0..1000)])."""
    from handvla.synth.handworld.raster import render_table_scenes
    from handvla.vla.data import prepare_image
    from handvla.vla.grounding import object_name, objects_in_view

    out = []
    for scene, cam, res in render_table_scenes(n, seed, size):
        view = prepare_image(res.rgb, cam.K, align, (tile, tile))
        in_view = objects_in_view([o.to_dict() for o in scene.objects], cam, align)
        out.append((view, [(object_name(o), box) for o, box in in_view]))
    return out


def _colour_map(scenes, grid: int, colours: list[str]) -> torch.Tensor:
    """(scenes, grid * grid, colours): 1 where a visual token's cell overlaps a box of that colour."""
    from handvla.vla.grounding import box_token_map

    y = np.zeros((len(scenes), grid * grid, len(colours)), np.float32)
    for i, (_, objs) in enumerate(scenes):
        for c, colour in enumerate(colours):
            y[i, :, c] = box_token_map([b for name, b in objs if name.split()[0] == colour], grid)
    return torch.from_numpy(y)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=8000)
    p.add_argument("--val-scenes", type=int, default=1000)
    p.add_argument("--render-size", default="112x84", help="WxH")
    p.add_argument("--align", type=int, default=0, help="1: warp to the canonical camera")
    p.add_argument("--tile", type=int, default=112)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--one-object", type=int, default=0)
    p.add_argument("--one-object-steps", type=int, default=0)
    p.add_argument("--position-init", choices=("sincos", "zero"), default="sincos")
    p.add_argument("--warm-steps", type=int, default=0)
    p.add_argument("--warm-head", choices=("linear", "embeddings"), default="linear")
    p.add_argument("--overrides", default="{}", help="preset overrides, JSON")
    p.add_argument("--question-first", type=int, default=0,
                   help="1: 'Where is the red cube? <image>' (the image's tokens can attend to the name)")
    p.add_argument("--film", type=int, default=0, help="1: vision_film (implies image_position after_text)")
    p.add_argument("--binding", type=float, default=0.0, help="binding_loss_weight (implies --film 1)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--motion-tokenizer", default=None,
                   help="a MotionTokenizer folder: the model's vocabulary gains its ids (for --save)")
    p.add_argument("--save", default=None,
                   help="write the trained model here (save_vla), e.g. as pretraining's model.init_checkpoint")
    p.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "1")))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from handvla.synth.handworld.scene import PALETTE
    from handvla.vla.generation import answer_questions
    from handvla.vla.grounding import grounding_answer, parse_grounding_answer, score_boxes
    from handvla.vla.grounding import grounding_prompt as image_first
    from handvla.vla.processing import IMAGE_PLACEHOLDER

    def grounding_prompt(name: str) -> str:
        return f"Where is the {name}? {IMAGE_PLACEHOLDER}" if a.question_first else image_first(name)
    from handvla.vla.loading import load_initial_vla
    from handvla.vla.pretrain import ModelConfig, vla_loss

    t0 = time.time()
    size = tuple(int(v) for v in a.render_size.lower().split("x"))
    train = render_scenes(a.scenes, 0, size, bool(a.align), a.tile)
    val = render_scenes(a.val_scenes, 1, size, bool(a.align), a.tile)
    if a.one_object:
        train = [s for s in train if len(s[1]) == 1]
        val = [s for s in val if len(s[1]) == 1]
    render_s = time.time() - t0
    qa = [
        (i, grounding_prompt(nm), grounding_answer(nm, bx))
        for i, (_, objs) in enumerate(train)
        for nm, bx in objs
    ]
    one = np.array([j for j, (i, _, _) in enumerate(qa) if len(train[i][1]) == 1], np.int64)
    overrides = json.loads(a.overrides)
    overrides["vision_config"] = {"image_size": a.tile, **overrides.get("vision_config", {})}
    overrides["vision_position_init"] = a.position_init
    if a.film or a.binding:
        overrides.update(vision_film=True, image_position="after_text", binding_loss_weight=a.binding)
    bundle = load_initial_vla(ModelConfig(preset="tiny", preset_overrides=overrides),
                              [t for _, q, x in qa[:4000] for t in (q, x)], Path(tempfile.mkdtemp()), True,
                              lambda: None, motion_tokenizer=a.motion_tokenizer,
                              need_motion_tokenizer=bool(a.motion_tokenizer),
                              preset_overrides=overrides)  # fmt: skip
    model, proc = bundle.model, bundle.processor
    px = torch.cat([proc.tile_image(view) for view, _ in train])
    blank = np.zeros((8, 8, 3), np.uint8)  # the text's placeholder; each batch gets its scenes' own tiles
    enc = []
    for _, q, x in qa:  # one placeholder tensor for all (a tile per question would hold 12 GB at 32k scenes)
        enc.append(proc.encode(q, x, images=[blank]))
        enc[-1].pixel_values = enc[0].pixel_values
    questions = [(view, nm, bx, [b for n2, b in objs if n2 != nm]) for view, objs in val for nm, bx in objs]
    const = np.mean([q[2] for q in questions], axis=0)

    truth, others = [q[2] for q in questions], [q[3] for q in questions]

    def score(answers) -> dict:
        r = score_boxes(answers, truth, others)
        return {k: r[k] for k in ("centre_in_box", "right_object", "centre_error")}

    def evaluate() -> dict:
        model.eval()
        answers = []
        with torch.no_grad():
            for i in range(0, len(questions), 64):
                part = questions[i : i + 64]
                texts = answer_questions(
                    model, proc, [q[0] for q in part], [grounding_prompt(q[1]) for q in part]
                )
                answers += [parse_grounding_answer(t) for t in texts]
        out = {"model": score(answers), "constant_box": score([tuple(const)] * len(questions))}
        if a.binding:
            out["binding"] = _binding_scores(model, proc, questions, grounding_prompt)
        model.train()
        return out

    res: dict = {"args": vars(a), "train_scenes": len(train), "heldout_scenes": len(val), "questions": len(qa),
                 "one_object_questions": int(len(one)), "heldout_questions": len(questions),
                 "right_object_chance": float(np.mean([1 / (1 + len(q[3])) for q in questions if q[3]]))
                 if any(q[3] for q in questions) else None, "render_seconds": round(render_s, 1)}  # fmt: skip
    if a.warm_steps:
        res["warm_up"] = _warm_up(model, proc, train, val, a, list(PALETTE))
    if a.binding:  # per question: the visual tokens that overlap the named object (one tile per view)
        grid = int(round(math.sqrt(model.config.image_seq_length)))
        named = _named_map([bx for _, objs in train for _, bx in objs], grid)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    rng = np.random.default_rng(0)
    model.train()
    res["curve"] = []
    loss = torch.zeros(())
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = a.lr * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        pool = one if step < a.one_object_steps and len(one) >= a.batch_size else np.arange(len(enc))
        idx = rng.choice(pool, a.batch_size, replace=False)
        batch = proc.collate([enc[i] for i in idx])
        batch["pixel_values"] = px[[qa[i][0] for i in idx]]
        if a.binding:
            batch["image_token_targets"] = named[torch.from_numpy(idx)]
        loss, _ = vla_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            row = {"step": step + 1, "loss": round(float(loss.detach()), 4),
                   "minutes": round((time.time() - t0) / 60, 1), **evaluate()}  # fmt: skip
            print(json.dumps(row), flush=True)
            res["curve"].append(row)
    res["steps_done"], res["final_loss"] = a.steps, float(loss.detach())
    res["minutes"] = round((time.time() - t0) / 60, 1)
    if a.save:
        from handvla.vla.modeling import save_vla

        res["saved"] = str(save_vla(a.save, bundle))
    print(json.dumps(res))
    return res


@torch.no_grad()
def _binding_scores(model, proc, questions, prompt) -> dict:
    """On held-out questions of scenes with two or more objects: how often the binding head's highest-scoring
    visual token overlaps the named object's box, beside the same for another object of the scene."""
    from handvla.vla.modeling import image_features

    grid = int(round(math.sqrt(model.config.image_seq_length)))
    multi = [q for q in questions if q[3]]
    named, other = _named_map([q[2] for q in multi], grid), _named_map([q[3][0] for q in multi], grid)
    hit_named = hit_other = 0
    for i in range(0, len(multi), 64):
        part = multi[i : i + 64]
        batch = proc.collate([proc.encode(prompt(q[1]), "x", images=[q[0]]) for q in part])
        feats = image_features(model.model, batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        top = model.binding_head(feats)[..., 0].argmax(-1)
        rows = torch.arange(len(part))
        hit_named += int(named[i + rows, top].sum())
        hit_other += int(other[i + rows, top].sum())
    return {"questions": len(multi), "top_token_on_named": hit_named / max(1, len(multi)),
            "top_token_on_another": hit_other / max(1, len(multi))}  # fmt: skip


def _named_map(boxes, grid: int) -> torch.Tensor:
    """(len(boxes), grid * grid): per box, the visual tokens it overlaps (`box_token_map`)."""
    from handvla.vla.grounding import box_token_map

    return torch.from_numpy(np.stack([box_token_map([b], grid) for b in boxes]))


def _warm_up(model, proc, train, val, a, colours: list[str]) -> dict:
    """Tower + projector + a linear head: which colours' boxes each visual token overlaps."""

    def tokens(pixels):
        f = model.model.get_image_features(pixel_values=pixels)
        return f if torch.is_tensor(f) else f.pooler_output

    px_tr = torch.cat([proc.tile_image(view) for view, _ in train])
    px_va = torch.cat([proc.tile_image(view) for view, _ in val])
    grid = int(round(math.sqrt(tokens(px_tr[:1]).shape[1])))
    y_tr, y_va = _colour_map(train, grid, colours), _colour_map(val, grid, colours)
    if a.warm_head == "embeddings":  # the colour words' own embedding rows score the visual tokens
        ids = [proc.tokenizer(f" {c}", add_special_tokens=False)["input_ids"][0] for c in colours]
        table = model.get_input_embeddings().weight
        bias = torch.nn.Parameter(torch.zeros(len(colours)))

        def head(x):
            return x @ table[ids].T + bias

        extra = [table, bias]
    else:
        head = torch.nn.Linear(int(model.config.text_config.hidden_size), len(colours))
        extra = list(head.parameters())
    parts = (model.model.vision_tower, model.model.multi_modal_projector)
    params = [q for m in parts for q in m.parameters()] + extra
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    pos = torch.tensor(float((1 - y_tr.mean()) / y_tr.mean().clamp_min(1e-6)))
    rng = np.random.default_rng(1)
    loss = torch.zeros(())
    for step in range(a.warm_steps):
        for g in opt.param_groups:
            g["lr"] = a.lr * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / a.warm_steps))
        idx = torch.from_numpy(rng.choice(len(train), min(a.batch_size, len(train)), replace=False))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            head(tokens(px_tr[idx])), y_tr[idx], pos_weight=pos
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    with torch.no_grad():
        pred, truth = head(tokens(px_va)) > 0, y_va > 0.5
    tp = float((pred & truth).sum())
    return {"steps_done": a.warm_steps, "final_loss": float(loss.detach()),
            "token_f1": 2 * tp / max(1.0, float(pred.sum() + truth.sum())),
            "all_positive_f1": 2 * float(truth.sum()) / max(1.0, float(truth.numel() + truth.sum()))}  # fmt: skip


if __name__ == "__main__":
    main()
