"""Where does a trained VLA lose the named object? Linear and small-MLP read-outs of a checkpoint's states.

The motion answer of a HandWorld-pretrained VLA can go to the same place whichever object the instruction
names (docs/vla-learning.md). This benchmark asks, for one checkpoint, which of its states still
say where the NAMED object is:

- ``visual_tokens``: the visual tokens as the LLM receives them (after the projector and, with
  ``vision_film``, the instruction's modulation), flattened;
- ``llm_layer_L``: the LLM's hidden state after layer L at the answer's start (the last prompt position,
  from which the first motion id is generated); layer 0 is the input embedding of that position, the same
  token in every prompt, so its read-out is an input-free baseline;
- ``visual_token_cell``: whether a single visual token's content says which cell of the tile it covers
  (the LLM's attention mixes token contents, so a position it cannot read from the content is lost);
- ``binding_head`` (checkpoints with one): where the head's highest visual token falls;
- ``endpoint_head`` (checkpoints trained with the end-point loss): that head's own prediction at the
  answer's start, scored as the read-outs (it regresses where the wrist ends, not the object's centre).

Prompts are the counterfactual evaluation's ("move your {hand} hand to {object}", `evaluate_counterfactual`)
on the episode's first image. Read-outs regress the named object's centre (camera frame, metres, frame 0)
and are fitted on scenes of the ``--train`` stores with every object of the scene named in turn (so a
read-out that ignores the name cannot fit them all); they are scored on held-out scenes of ``--eval`` as the
counterfactual evaluation scores generated motion (`counterfactual_scores`): the prediction nearest the
named object (``named_target_accuracy``, with the episode's own target named; ``other_object_accuracy``, with
another object of the scene named; ``same_end_point_rate``: both nearest the same object), with Wilson 95 %
intervals and ``chance`` = mean 1 / objects. ``--generate``
adds the model's own generated motion on the same scenes (`evaluate_counterfactual`).

    python benchmarks/vla_readout_probe.py --ckpt RUN/final --train STORE [STORE ...] --eval HELDOUT
        [--train-scenes 1500] [--eval-scenes 400] [--generate]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def scene_requests(store, limit: int | None, every_object: bool, align: bool, size) -> list[dict]:
    """Prompts over the first images of ``store``'s episodes with one one-hand target among two or more
    uniquely named objects: every object named in turn (``every_object``) or the episode's own target then
    the next other object (the counterfactual evaluation's pair)."""
    from handvla.vla.data import prepare_image
    from handvla.vla.evaluate import (
        counterfactual_other,
        counterfactual_scene,
        counterfactual_task,
        object_positions_camera,
    )
    from handvla.vla.grounding import objects_in_view

    reqs, scenes = [], 0
    for k in range(len(store)):
        if limit is not None and scenes >= limit:
            break
        ep = store.load_episode(k, 0, 1.0 / store.fps, with_video=True)
        scene = counterfactual_scene(ep.ground_truth)
        if scene is None:
            continue
        objs, tg, hand = scene
        named = sorted(objs) if every_object else [tg, counterfactual_other(objs, tg)]
        positions = object_positions_camera(ep, 0)
        boxes = {int(o["object_id"]): box for o, box in objects_in_view(list(objs.values()), ep.camera, align)}
        image = prepare_image(ep.video[0], ep.camera.K, align, size)
        for oid in named:
            reqs.append(
                {
                    "scene": scenes,
                    "which": "factual" if oid == tg else "counterfactual",
                    "object_id": oid,
                    "task": counterfactual_task(hand, objs[oid]),
                    "hand": hand,
                    "image": image,
                    "objects": positions,
                    "boxes": boxes,
                }
            )
        scenes += 1
    return reqs


@torch.no_grad()
def model_states(bundle, reqs: list[dict], seconds: int, batch_size: int) -> dict[str, np.ndarray]:
    """{feature name: (requests, dims)} and ``binding_top`` (requests,) where the model has a binding head."""
    from handvla.vla.modeling import image_features
    from handvla.vla.processing import generation_prompt

    model, proc = bundle.model.eval(), bundle.processor
    fps = int(round(float(proc.config.motion_fps)))
    image_id = int(model.config.image_token_id)
    tpt = int(proc.tokens_per_tile)
    out: dict[str, list] = {}
    for b0 in range(0, len(reqs), batch_size):
        batch_reqs = reqs[b0 : b0 + batch_size]
        samples = [
            proc.encode(generation_prompt(r["task"], seconds, r["hand"], fps), images=[r["image"]]) for r in batch_reqs
        ]
        batch = proc.collate(samples)  # right padding: the states before a row's end are its own
        ends_at = batch["attention_mask"].sum(1) - 1
        res = model(
            input_ids=batch["input_ids"],
            pixel_values=batch["pixel_values"].to(model.dtype),
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
        )
        hs = res.hidden_states
        rows = torch.arange(len(samples))
        for layer, h in enumerate(hs):
            out.setdefault(f"llm_layer_{layer}", []).append(h[rows, ends_at].float().numpy())
        # the last tile's visual tokens (the whole view: the thumbnail, or the only tile) as the LLM gets them
        vis = []
        for i in range(len(samples)):
            pos = (batch["input_ids"][i] == image_id).nonzero()[:, 0][-tpt:]
            vis.append(hs[0][i, pos].reshape(-1).float().numpy())
        out.setdefault("visual_tokens", []).append(np.stack(vis))
        ends = getattr(model, "endpoint_head", None)
        if ends is not None:  # the end-point loss's own head, at the answer's start, the request's hand
            pred = ends(hs[-1][rows, ends_at]).float().numpy().reshape(-1, 2, 3)
            side = np.asarray([0 if r["hand"] == "left" else 1 for r in batch_reqs])
            out.setdefault("endpoint_head", []).append(pred[np.arange(len(side)), side])
        head = getattr(model, "binding_head", None)  # with binding_mark, the mark's score is the head
        if head is not None or getattr(model.model, "binding_mark", None) is not None:
            feats, logits = image_features(
                model.model, batch["pixel_values"], batch["input_ids"], batch["attention_mask"], return_binding_logits=True
            )
            if logits is None:
                logits = head(feats)[..., 0]
            last = torch.cumsum(torch.tensor([int((s.input_ids == image_id).sum()) // tpt for s in samples]), 0) - 1
            out.setdefault("binding_top", []).append(logits[last].argmax(-1).numpy())
    return {k: np.concatenate(v, 0) for k, v in out.items()}


def fit_ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int):
    """Standardised ridge regression, its strength picked by 5-fold cross-validation over scenes."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    ym = y.mean(0)
    folds = np.random.default_rng(seed).permutation(int(groups.max()) + 1) % 5

    def solve(zz, yy, lam):
        a = zz.T @ zz + lam * np.eye(zz.shape[1])
        return np.linalg.solve(a, zz.T @ (yy - ym))

    best = None
    for lam in (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4):
        err = 0.0
        for f in range(5):
            te = folds[groups] == f
            w = solve(z[~te], y[~te], lam)
            err += float(((z[te] @ w + ym - y[te]) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, lam)
    w = solve(z, y, best[1])
    return (lambda q: ((q - mu) / sd) @ w + ym), {"lambda": best[1]}


def fit_mlp(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, epochs: int = 400):
    """One hidden layer of 256 (ReLU), Adam, the epoch count of the best loss on 15 % of the scenes held out."""
    g = torch.Generator().manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    ym, ys = y.mean(0), y.std(0) + 1e-6
    z = torch.as_tensor((x - mu) / sd, dtype=torch.float32)
    t = torch.as_tensor((y - ym) / ys, dtype=torch.float32)
    val = torch.as_tensor(np.random.default_rng(seed).random(int(groups.max()) + 1)[groups] < 0.15)

    def train(mask, n_epochs):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(z.shape[1], 256), torch.nn.ReLU(), torch.nn.Linear(256, 3))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
        curve = []
        for _ in range(n_epochs):
            perm = torch.randperm(int(mask.sum()), generator=g)
            zi, ti = z[mask][perm], t[mask][perm]
            for b in range(0, len(zi), 256):
                opt.zero_grad()
                torch.nn.functional.mse_loss(net(zi[b : b + 256]), ti[b : b + 256]).backward()
                opt.step()
            with torch.no_grad():
                curve.append(float(torch.nn.functional.mse_loss(net(z[~mask]), t[~mask])) if (~mask).any() else 0.0)
        return net, curve

    _, curve = train(~val, epochs)
    best_epochs = int(np.argmin(curve)) + 1
    net, _ = train(torch.ones(len(z), dtype=torch.bool), best_epochs)

    def predict(q):
        with torch.no_grad():
            return net(torch.as_tensor((q - mu) / sd, dtype=torch.float32)).numpy() * ys + ym

    return predict, {"epochs": best_epochs, "val_mse_standardised": float(min(curve))}


def token_cell_readout(train_vis: np.ndarray, eval_vis: np.ndarray, tokens: int) -> dict:
    """Does each visual token's content say where in the view it lies? A linear classifier (least squares on
    one-hot cells, standardised, ridge 1) of a single token's vector -> its cell of the tile's grid, fitted
    on the training requests' tokens, scored on the held-out ones: the cell, its row and its column."""
    grid = int(round(tokens**0.5))
    xs = [v.reshape(len(v) * tokens, -1) for v in (train_vis, eval_vis)]
    cells = [np.tile(np.arange(tokens), len(v)) for v in (train_vis, eval_vis)]
    mu, sd = xs[0].mean(0), xs[0].std(0) + 1e-6
    a_tr, a_ev = (np.c_[(x - mu) / sd, np.ones(len(x))] for x in xs)
    w = np.linalg.solve(a_tr.T @ a_tr + np.eye(a_tr.shape[1]), a_tr.T @ np.eye(tokens)[cells[0]])
    pred, true = (a_ev @ w).argmax(1), cells[1]
    return {
        "cell": float((pred == true).mean()),
        "row": float((pred // grid == true // grid).mean()),
        "column": float((pred % grid == true % grid).mean()),
        "chance_cell": 1.0 / tokens,
        "tokens_scored": int(len(true)),
    }


def score(pred: np.ndarray, reqs: list[dict]) -> dict:
    """The counterfactual evaluation's summary of predicted end points (one per request, pairs in order)."""
    from handvla.vla.evaluate import counterfactual_scores

    return counterfactual_scores(pred, reqs)[1]


def binding_scores(top: np.ndarray, reqs: list[dict], grid: int) -> dict:
    """Where the binding head's highest visual token falls: on the named object's box / another object's."""
    from handvla.stats import rate_summary
    from handvla.vla.grounding import box_token_map

    out = {}
    for which in ("factual", "counterfactual"):
        sel = [i for i, r in enumerate(reqs) if r["which"] == which and r["object_id"] in r["boxes"] and len(r["boxes"]) >= 2]
        out[which] = {
            **rate_summary([bool(box_token_map([reqs[i]["boxes"][reqs[i]["object_id"]]], grid)[top[i]]) for i in sel], "on_named"),
            **rate_summary(
                [bool(box_token_map([b for o, b in reqs[i]["boxes"].items() if o != reqs[i]["object_id"]], grid)[top[i]]) for i in sel],
                "on_another",
            ),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--train", nargs="+", required=True, help="stores the read-outs are fitted on")
    ap.add_argument("--eval", required=True, help="the held-out store they are scored on")
    ap.add_argument("--train-scenes", type=int, default=1500)
    ap.add_argument("--eval-scenes", type=int, default=None)
    ap.add_argument("--seconds", type=int, default=2, help="the motion length the prompt asks for")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--layers", default="all", help="LLM layers to read out: all, or comma-separated")
    ap.add_argument("--generate", action="store_true", help="also the model's generated motion on the same scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from handvla.data.store import EpisodeStore
    from handvla.vla.evaluate import evaluate_counterfactual, model_alignment, model_image_size
    from handvla.vla.modeling import load_vla

    t0 = time.perf_counter()
    bundle = load_vla(args.ckpt)
    align = model_alignment(bundle.model.config)
    size = model_image_size(bundle.model.config, bundle.processor)
    train_reqs = []
    per_store = -(-args.train_scenes // len(args.train))
    for path in args.train:
        reqs = scene_requests(EpisodeStore(path), per_store, True, align, size)
        off = (max(r["scene"] for r in train_reqs) + 1) if train_reqs else 0
        for r in reqs:
            r["scene"] += off
        train_reqs += reqs
    eval_store = EpisodeStore(args.eval)
    eval_reqs = scene_requests(eval_store, args.eval_scenes, False, align, size)
    tr = model_states(bundle, train_reqs, args.seconds, args.batch_size)
    ev = model_states(bundle, eval_reqs, args.seconds, args.batch_size)
    y = np.stack([r["objects"][r["object_id"]] for r in train_reqs])
    groups = np.asarray([r["scene"] for r in train_reqs])
    names = ["visual_tokens"] + sorted((k for k in tr if k.startswith("llm_layer_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if args.layers != "all":
        keep = {f"llm_layer_{int(x)}" for x in args.layers.split(",")}
        names = [n for n in names if n == "visual_tokens" or n in keep]
    readouts = {}
    for name in names:
        readouts[name] = {}
        for kind, fit in (("ridge", fit_ridge), ("mlp", fit_mlp)):
            predict, info = fit(tr[name], y, groups, args.seed)
            readouts[name][kind] = {**score(predict(ev[name]), eval_reqs), **info, "dims": int(tr[name].shape[1])}
    # the ceiling: the named object's own centre (its summary carries chance: mean 1 / objects)
    oracle = score(np.stack([r["objects"][r["object_id"]] for r in eval_reqs]), eval_reqs)
    result = {
        "checkpoint": str(Path(args.ckpt)),
        "train_stores": args.train,
        "eval_store": args.eval,
        "train_scenes": int(groups.max()) + 1,
        "train_prompts": len(train_reqs),
        "eval_scenes": sum(r["which"] == "factual" for r in eval_reqs),
        "chance": oracle["chance"],
        "oracle": oracle,
        "readouts": readouts,
    }
    tpt = int(bundle.processor.tokens_per_tile)
    result["visual_token_cell"] = token_cell_readout(tr["visual_tokens"], ev["visual_tokens"], tpt)
    if "endpoint_head" in ev:  # trained with the model, not fitted here
        result["endpoint_head"] = score(ev["endpoint_head"], eval_reqs)
    if "binding_top" in ev:
        grid = int(round(bundle.processor.tokens_per_tile**0.5))
        result["binding_head"] = binding_scores(ev["binding_top"], eval_reqs, grid)
    if args.generate:
        cf = evaluate_counterfactual(bundle, eval_store, max_episodes=None, seconds=args.seconds, batch_size=args.batch_size)
        result["generated"] = cf["summary"]
    result["minutes"] = (time.perf_counter() - t0) / 60
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
