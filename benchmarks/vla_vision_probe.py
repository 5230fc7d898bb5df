"""Where does a random-init VLA lose the image? One question any vision model answers, "In <image>, is there a
red object?", on rendered HandWorld scenes (tables with 1-4 coloured objects, no hands), three arms at the
same step count, scored on held-out scenes beside the always-"no" baseline. Prints one JSON object.

- ``vla``: the tiny preset learns the question by next-token loss (the pretraining path);
- ``tower_head``: the same vision tower and projector with a linear head on the visual tokens, the image's
  score the maximum over its tokens; no LLM;
- ``vla_from_tower``: the ``vla`` arm again, its vision tower and projector taken from ``tower_head``.

``--align 1`` warps each scene to the canonical camera first, as pretraining does (``data.align``); the
default resizes it to the tile.

    python benchmarks/vla_vision_probe.py --align 0
    python benchmarks/vla_vision_probe.py --align 1
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def render_scenes(n: int, seed: int, size: tuple[int, int], colour: str) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """``n`` scenes (``render_table_scenes``) as (rgb uint8, intrinsics K, whether an object of ``colour``
    covers a pixel)."""
    from handvla.synth.handworld.raster import LABEL_OBJECT0, render_table_scenes

    out = []
    for scene, cam, res in render_table_scenes(n, seed, size):
        seen = any(o.colour == colour and (res.labels == LABEL_OBJECT0 + o.object_id).any() for o in scene.objects)
        out.append((res.rgb, cam.K, bool(seen)))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--align", type=int, default=0, help="1: warp to the canonical camera (as pretraining does)")
    p.add_argument("--render-size", default="112x84", help="rendered scene size WxH")
    p.add_argument("--tile", type=int, default=112, help="vision tile size in pixels")
    p.add_argument("--colour", default="red")
    p.add_argument("--scenes", type=int, default=8000)
    p.add_argument("--val-scenes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps of every arm")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "1")))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from handvla.stats import wilson_interval
    from handvla.vla.data import prepare_image
    from handvla.vla.loading import load_initial_vla
    from handvla.vla.pretrain import ModelConfig, vla_loss

    w, h = (int(v) for v in a.render_size.lower().split("x"))
    t0 = time.time()
    train, val = render_scenes(a.scenes, 0, (w, h), a.colour), render_scenes(a.val_scenes, 1, (w, h), a.colour)
    question = f"In <image>, is there a {a.colour} object?"
    mcfg = ModelConfig(preset="tiny", preset_overrides={"vision_config": {"image_size": a.tile}})
    tmp = Path(tempfile.mkdtemp(prefix="vision_probe_"))
    bundle = load_initial_vla(mcfg, [question, "yes", "no"], tmp, True, lambda: None,
                              preset_overrides=mcfg.preset_overrides)  # fmt: skip
    init = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    proc = bundle.processor

    def views(scenes) -> torch.Tensor:
        return torch.cat([proc.tile_image(prepare_image(rgb, K, bool(a.align), (a.tile, a.tile))) for rgb, K, _ in scenes])

    px_tr, px_va = views(train), views(val)
    y_tr = torch.tensor([float(s[2]) for s in train])
    y_va = torch.tensor([float(s[2]) for s in val])
    # two distinct token sequences (the answer is the only difference); each batch gets its scenes' own tiles
    blank = np.zeros((8, 8, 3), np.uint8)
    enc = {seen: proc.encode(question, "yes" if seen else "no", images=[blank]) for seen in (False, True)}
    enc_tr, enc_va = [enc[s[2]] for s in train], [enc[s[2]] for s in val]
    yes_first = proc.tokenizer("yes", add_special_tokens=False)["input_ids"][0]

    def batch(encs, px):  # the text of each sample, the scene's own tiles
        b = proc.collate(encs)
        b["pixel_values"] = px
        return b

    def rated(hits: int, extra: dict) -> dict:
        n = len(val)
        return {"heldout_accuracy": hits / n, "heldout_accuracy_ci95": list(wilson_interval(hits, n)), **extra}

    def train_qa(model) -> dict:
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
        rng = np.random.default_rng(0)
        model.train()
        loss = torch.zeros(())
        for step in range(a.steps):
            for g in opt.param_groups:
                g["lr"] = a.lr * min(1.0, (step + 1) / 30)
            idx = rng.choice(len(enc_tr), a.batch_size, replace=False)
            loss, _ = vla_loss(model, batch([enc_tr[i] for i in idx], px_tr[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
        said_yes = []
        with torch.no_grad():
            for i in range(0, len(enc_va), 100):
                encs = enc_va[i : i + 100]
                out = model(**batch(encs, px_va[i : i + 100]), use_cache=False, answer_logits_only=True)
                lens = [int((s.labels != -100).sum()) for s in encs]
                said_yes += [bool(t[0] == yes_first) for t in torch.split(out.logits.argmax(-1), lens)]
        hits = int((torch.tensor(said_yes) == (y_va > 0.5)).sum())
        return rated(hits, {"final_loss": float(loss.detach()), "steps": a.steps})

    def tower_head(model) -> dict:
        hidden = int(model.config.text_config.hidden_size)
        head = torch.nn.Linear(hidden, 1)
        parts = [model.model.vision_tower, model.model.multi_modal_projector, head]
        opt = torch.optim.AdamW([q for m in parts for q in m.parameters()], lr=a.lr, weight_decay=0.0)
        rng = np.random.default_rng(0)

        def score(px):  # the best visual token's score
            f = model.model.get_image_features(pixel_values=px)
            f = f if torch.is_tensor(f) else f.pooler_output
            return head(f).squeeze(-1).amax(1)

        loss = torch.zeros(())
        for _ in range(a.steps):
            idx = torch.from_numpy(rng.choice(len(train), a.batch_size, replace=False))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(score(px_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            hits = int(((score(px_va) > 0) == (y_va > 0.5)).sum())
        return rated(hits, {"final_loss": float(loss.detach()), "steps": a.steps})

    res: dict = {"align": bool(a.align), "render_size": [w, h], "tile": a.tile, "question": question,
                 "train_scenes": a.scenes, "heldout_scenes": a.val_scenes,
                 "always_no_accuracy": float((y_va < 0.5).float().mean())}  # fmt: skip
    res["vla"] = train_qa(bundle.model)
    bundle.model.load_state_dict(init)
    res["tower_head"] = tower_head(bundle.model)
    tower = {k: v.clone() for k, v in bundle.model.state_dict().items() if "vision_tower" in k or "projector" in k}
    bundle.model.load_state_dict({**init, **tower})
    res["vla_from_tower"] = train_qa(bundle.model)
    res["minutes"] = round((time.time() - t0) / 60, 1)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
