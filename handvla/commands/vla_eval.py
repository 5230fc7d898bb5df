"""``handvla vla-eval``: a VLA checkpoint measured on HandWorld ground truth (``handvla.vla.evaluate``).

Examples::

    handvla vla-eval --ckpt runs/tiny/final --store seen=data/hw_val --store unseen=data/hw_phone
    handvla vla-eval --ckpt runs/tiny/final --store seen=data/hw_val --train-store data/hw_train
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from handvla.atomic import atomic_write_json
from handvla.commands._util import add_command, add_threads_option, print_json, set_threads
from handvla.errors import CheckpointError, ConfigError


def _parse_stores(items: list[str]) -> dict[str, str]:
    out = {}
    for i, item in enumerate(items):
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name or f"store{i}", item
        if not path:
            raise ConfigError(f"--store {item!r}: expected NAME=DIR or DIR")
        if name in out:
            raise ConfigError(f"--store {item!r}: the name {name!r} is given twice")
        out[name] = path
    return out


def run_vla_eval(args: argparse.Namespace) -> int:
    from handvla.vla.baselines import checkpoint_training_stores, load_training_reference
    from handvla.vla.evaluate import (
        evaluate_counterfactual,
        evaluate_handworld,
        format_summary_table,
        paired_target_hits,
    )
    from handvla.vla.grounding import evaluate_grounding
    from handvla.vla.modeling import load_vla

    set_threads(args)
    stores = _parse_stores(args.store)
    if args.episodes is not None and args.episodes < 1:
        raise ConfigError(f"--episodes: expected a whole number >= 1, got {args.episodes}")
    for flag, v in (
        ("--translation-episodes", args.translation_episodes),
        ("--prediction-episodes", args.prediction_episodes),
        ("--rerank-samples", args.rerank_samples),
    ):
        if v < 0:
            raise ConfigError(f"{flag}: expected a whole number >= 0, got {v}")
    bundle = load_vla(args.ckpt)
    if bundle.motion_tokenizer is None:
        raise CheckpointError(f"{args.ckpt}: no motion_tokenizer/ (needed to decode generated motion)")
    # the training stores the input-free baselines are fitted on: given, or the checkpoint's own
    if args.train_store:
        train, val_fraction, note = list(args.train_store), 0.0, None
    else:
        train, val_fraction, note = checkpoint_training_stores(args.ckpt)
    ref = load_training_reference(train, val_fraction, progress=not args.quiet) if train else None
    align = None if args.align == "auto" else args.align == "on"
    results = {}
    for name, path in stores.items():
        res = evaluate_handworld(
            bundle,
            path,
            max_episodes=args.episodes,
            max_seconds=args.max_seconds,
            align=align,
            constrained=not args.no_constraint,
            do_sample=args.sample,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=not args.quiet,
            train_stores=ref,
            translation_episodes=args.translation_episodes,
            prediction_episodes=args.prediction_episodes,
        )
        if args.shuffle_images:  # input sensitivity: each episode scored with another episode's image
            sh = evaluate_handworld(
                bundle, path, max_episodes=args.episodes, max_seconds=args.max_seconds, align=align,
                constrained=not args.no_constraint, seed=args.seed, batch_size=args.batch_size, shuffle_images=True,
            )["summary"]  # fmt: skip
            res["summary"]["images_shuffled"] = {
                k: sh.get(k) for k in ("target_pairs", "target_accuracy", "target_accuracy_ci95", "final_wrist_error_m")
            }
        if args.rerank_samples:  # best of k by the model's own grounding answers, beside the greedy answer
            rr_all = evaluate_handworld(
                bundle, path, max_episodes=args.episodes, max_seconds=args.max_seconds, align=align,
                seed=args.seed, batch_size=args.batch_size, rerank_samples=args.rerank_samples,
                rerank_temperature=args.rerank_temperature, rerank_space=args.rerank_space,
                motion_from=args.motion_from,
            )  # fmt: skip
            rr = rr_all["summary"]
            res["reranked_episodes"] = rr_all["episodes"]  # --out: per episode, beside the greedy rows
            res["summary"]["reranked"] = {
                k: rr.get(k)
                for k in ("target_pairs", "target_accuracy", "target_accuracy_ci95", "final_wrist_error_m", "rerank")
            } | {"temperature": args.rerank_temperature, "space": args.rerank_space, "motion_from": args.motion_from,
                 # the same pairs decoded both ways: won / lost against the greedy answer, exact McNemar p
                 "paired_vs_greedy": paired_target_hits(res["episodes"], rr_all["episodes"])}
        if args.ground_then_act:  # the places the model grounds for the named objects, stated for its motion
            ga_all = evaluate_handworld(
                bundle, path, max_episodes=args.episodes, max_seconds=args.max_seconds, align=align,
                seed=args.seed, batch_size=args.batch_size, places_from="grounding",
            )  # fmt: skip
            ga = ga_all["summary"]
            res["ground_then_act_episodes"] = ga_all["episodes"]
            res["summary"]["ground_then_act"] = {
                k: ga.get(k) for k in ("target_pairs", "target_accuracy", "target_accuracy_ci95", "final_wrist_error_m",
                                       "prefix_target_accuracy", "motion_follows_prefix_rate", "end_place_accuracy",
                                       "motion_follows_end_place_rate", "per_task")
            } | {"paired_vs_greedy": paired_target_hits(res["episodes"], ga_all["episodes"])}  # fmt: skip
        if args.counterfactual:  # instruction following: the same image, another object named
            res["summary"]["counterfactual"] = evaluate_counterfactual(
                bundle, path, max_episodes=args.episodes, seconds=args.max_seconds or 2, batch_size=args.batch_size,
                align=align,
            )["summary"]
            if args.rerank_samples:  # the same requests, best of K by the model's box for the asked object
                res["summary"]["counterfactual_reranked"] = evaluate_counterfactual(
                    bundle, path, max_episodes=args.episodes, seconds=args.max_seconds or 2,
                    batch_size=args.batch_size, align=align, rerank_samples=args.rerank_samples,
                    rerank_temperature=args.rerank_temperature, rerank_space=args.rerank_space, seed=args.seed,
                    motion_from=args.motion_from,
                )["summary"]  # fmt: skip
            if args.ground_then_act:
                res["summary"]["counterfactual_ground_then_act"] = evaluate_counterfactual(
                    bundle, path, max_episodes=args.episodes, seconds=args.max_seconds or 2,
                    batch_size=args.batch_size, align=align, places_from="grounding",
                )["summary"]  # fmt: skip
        if args.grounding:  # "where is the red cube?": object grounding in the model's view
            res["summary"]["grounding"] = evaluate_grounding(
                bundle, path, max_episodes=args.episodes, batch_size=args.batch_size, align=align
            )
            res["summary"]["grounding"].pop("examples")
        if ref is None and note:
            res["summary"]["baselines_skipped"] = f"constant / template / retrieval: {note}"
        results[name] = res
    if args.out:
        atomic_write_json(Path(args.out), results, default=float)
    if not args.quiet:  # the table goes to stderr: stdout stays one JSON document
        for name, r in results.items():
            print(format_summary_table(name, r["summary"]), file=sys.stderr)
    print_json({"ckpt": args.ckpt, **{name: r["summary"] for name, r in results.items()}})
    return 0


def register(subparsers) -> None:
    e = add_command(
        subparsers,
        "vla-eval",
        run_vla_eval,
        help="measure a VLA checkpoint on HandWorld ground truth (target accuracy, MPJPE, MWTE, tokens/s)",
        description="Generate motion for each HandWorld episode's instruction and first frame and score it "
        "against the episode's ground truth (handvla.vla.evaluate): rates with Wilson 95% intervals, next to "
        "input-free baselines fitted on the training stores (constant / per-template mean final wrist, "
        "nearest-instruction retrieval) and the tokenizer floor; also motion translation and contextual "
        "prediction (against a constant-velocity continuation). JSON on stdout, a table on stderr.",
    )
    e.add_argument(
        "--ckpt", required=True, help="VLA checkpoint folder (save_vla layout, with motion_tokenizer/)"
    )
    e.add_argument(
        "--store", action="append", required=True, metavar="NAME=DIR", help="HandWorld store (repeatable)"
    )
    e.add_argument("--episodes", type=int, default=None, help="first N episodes per store (default all)")
    e.add_argument("--max-seconds", type=int, default=None, help="cap on generated seconds per episode")
    e.add_argument(
        "--align",
        choices=["auto", "on", "off"],
        default="auto",
        help="canonical-camera warp (auto: as trained)",
    )
    e.add_argument("--no-constraint", action="store_true", help="decode without the block constraint")
    e.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=4)
    add_threads_option(e, help=None)
    e.add_argument(
        "--train-store",
        action="append",
        default=None,
        metavar="DIR",
        help="TRAINING store the input-free baselines (constant, template, retrieval) are fitted on "
        "(repeatable; default: data.stores of the checkpoint's pretrain_config.json, one folder above final/)",
    )
    e.add_argument(
        "--translation-episodes",
        type=int,
        default=64,
        metavar="N",
        help="score motion -> text translation on the first N evaluated episodes with a target (0: off)",
    )
    e.add_argument(
        "--prediction-episodes",
        type=int,
        default=64,
        metavar="N",
        help="score 1 s contextual prediction after 1 s of true history on the first N episodes (0: off)",
    )
    e.add_argument(
        "--shuffle-images",
        action="store_true",
        help="also score every episode with the NEXT episode's image (input sensitivity: a model that reads "
        "the image drops towards the baselines)",
    )
    e.add_argument(
        "--rerank-samples",
        type=int,
        default=0,
        metavar="K",
        help="also decode best of K (handvla.vla.rerank): K sampled motions per episode, the one kept whose final "
        "wrists lie nearest the boxes the model itself answers for the objects its instruction names; scored "
        "beside the greedy answer (summary.reranked), with the first sample and 'any of the K' rates (0: off)",
    )
    e.add_argument("--rerank-temperature", type=float, default=1.0, help="sampling temperature of --rerank-samples")
    e.add_argument(
        "--rerank-space",
        choices=("table", "view"),
        default="table",
        help="where --rerank-samples compares final wrists with the boxes: 'table' along the table (each box "
        "centre's ray met with it, HandWorld's world z = 0 from the episode's extrinsics) or 'view' in the image",
    )
    e.add_argument(
        "--motion-from",
        choices=("image", "places"),
        default="image",
        help="what the --rerank-samples answers are made from: 'image' (the reference), or 'places': the model is "
        "asked where the named objects are and the motion is made from its boxes instead of the image (models "
        "trained with data.place_motion; --rerank-samples 1 gives the greedy answer from the places)",
    )
    e.add_argument(
        "--ground-then-act",
        action="store_true",
        help="also decode with each acting hand's place stated as the model's own answer to the grounding question "
        "about the object the instruction names for it (models whose motion answers state places, "
        "motion_answer_prefix target_places / hand_places; handvla.vla.places.grounded_place_prefixes); scored "
        "beside the greedy answer (summary.ground_then_act, and summary.counterfactual_ground_then_act with "
        "--counterfactual)",
    )
    e.add_argument(
        "--counterfactual",
        action="store_true",
        help="also ask, with each scene's image, for the episode's object and for another object of the scene "
        "(instruction following: a model that ignores the object's name ends at the same place twice)",
    )
    e.add_argument(
        "--grounding",
        action="store_true",
        help="also ask where each object of the scene is (the data.grounding task: answered box vs the true one, "
        "beside a constant box)",
    )
    e.add_argument("--out", default=None, help="write per-episode results to this JSON file")
    e.add_argument("--quiet", action="store_true", help="no progress bars and no summary table on stderr")
