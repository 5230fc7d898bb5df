"""Does a places model's motion read a stated place when nothing else says where to go? (docs/vla-learning.md
(19).) For each counterfactual scene of a HandWorld store (`counterfactual_scene`: the episode's hand
and target, another object of the scene), a checkpoint trained with ``motion_answer_prefix: target_places``
(or ``hand_places``) is asked "move your <hand> hand to <target>" with NO image (the prompt's ``<image>``
replaced by "the scene", as ``data.places_without_image`` trains it) and its answer made to start with a TRUE
place (the target's centre, then the other object's; in the model's place frame). Scored as every motion is:
the decoded final wrist nearest the object.
Prints one JSON object: ``own_place_at_own`` (told the asked object's place), ``other_place_at_other`` and
``other_place_at_asked`` (told the other object's place), each with its Wilson 95 % interval, and ``chance``.

    python benchmarks/vla_places_probe.py --ckpt RUN/final --store H400 --episodes 240
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--store", required=True, help="HandWorld episode store")
    p.add_argument("--episodes", type=int, default=None, help="at most this many episodes (default all)")
    p.add_argument("--seconds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "1")))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from handvla.data.store import EpisodeStore
    from handvla.errors import ConfigError
    from handvla.stats import rate_summary
    from handvla.vla.evaluate import (
        counterfactual_other,
        counterfactual_scene,
        counterfactual_task,
        object_positions_camera,
        target_hit,
    )
    from handvla.vla.generation import MotionBlockConstraint, _generate, parse_motion_output
    from handvla.vla.modeling import load_vla
    from handvla.vla.places import in_place_frame, place_frame, place_ids, place_text
    from handvla.vla.processing import IMAGE_PLACEHOLDER, generation_prompt

    bundle = load_vla(a.ckpt)
    model, proc, mt = bundle.model, bundle.processor, bundle.motion_tokenizer
    frame = place_frame(model.config)
    if frame is None or mt is None:
        raise ConfigError(f"{a.ckpt}: expected a checkpoint that states places (motion_answer_prefix 'target_places' "
                          "or 'hand_places') and its tokenizer")
    model.eval()
    st = EpisodeStore(a.store)
    reqs = []  # (hand, task, object positions, stated object, asked object)
    for k in range(len(st) if a.episodes is None else min(len(st), a.episodes)):
        ep = st.load_episode(k, with_video=False)
        scene = counterfactual_scene(ep.ground_truth)
        if scene is None:
            continue
        objs, tg, hand = scene
        pos = object_positions_camera(ep, 0)
        task = counterfactual_task(hand, objs[tg])
        reqs += [(hand, task, pos, tg, tg), (hand, task, pos, counterfactual_other(objs, tg), tg)]
    own, at_other, at_asked, chance = [], [], [], []
    for i in range(0, len(reqs), a.batch_size):
        part = reqs[i : i + a.batch_size]
        samples = []
        for hand, task, pos, stated, _asked in part:
            prompt = generation_prompt(task, a.seconds, hand, int(mt.config.fps)).replace(IMAGE_PLACEHOLDER, "the scene")
            place = place_ids(in_place_frame(pos[stated], hand, frame), mt)
            samples.append(proc.start_answer(proc.encode(prompt), place_text(place)))
        blocks = [a.seconds] * len(part)

        def head(prompt_length: int, blocks=blocks) -> MotionBlockConstraint:
            return MotionBlockConstraint(proc.vocab, prompt_length, blocks)

        seqs, plen = _generate(model, proc, samples, head, head(0).max_new_tokens, False, 1.0, None, 1.0, 0)
        for j, (hand, _task, pos, stated, asked) in enumerate(part):
            ids_ = parse_motion_output(seqs[j, plen:], proc.vocab, a.seconds, 1)
            wrist = mt.decode_motion(ids_[:, 0], side=hand).wrist_pos[-1]
            if stated == asked:
                own.append(target_hit(wrist, asked, pos))
                chance.append(1.0 / len(pos))
            else:
                at_other.append(target_hit(wrist, stated, pos))
                at_asked.append(target_hit(wrist, asked, pos))
    out = {"ckpt": a.ckpt, "store": a.store, "scenes": len(own), "chance": float(np.mean(chance)) if chance else None}
    out.update(rate_summary(own, "own_place_at_own"))
    out.update(rate_summary(at_other, "other_place_at_other"))
    out.update(rate_summary(at_asked, "other_place_at_asked"))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
