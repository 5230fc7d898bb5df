"""``handvla data annotate`` and ``handvla data instructions`` (registered by ``handvla.commands.data``).

    handvla data annotate DIR [--backend rules|openai] [--url URL --model NAME] [--workers N]
    handvla data instructions DIR [DIR ...] --out MANIFEST [--size N] [--seed S]

Both print one JSON report on stdout (progress bars go to stderr) and can be rerun: annotate skips clips
already annotated by that backend (and, with the openai backend, answers repeated requests from its reply
cache); instructions rewrites its manifest atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from handvla.commands._util import print_json


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v


# -- annotate ------------------------------------------------------------------------------------------------


def run_annotate(args: argparse.Namespace) -> int:
    import torch

    from handvla.language.annotate.run import annotate_store
    from handvla.language.annotate.segments import SegmentConfig
    from handvla.language.annotate.table import ANNOTATIONS_DIR
    from handvla.errors import InputError

    # clips run in parallel threads; torch's own threads would only fight them for the cores
    torch.set_num_threads(1)
    if not Path(args.dir).is_dir():
        raise InputError(args.dir, None, "an episode store folder", "missing")
    seg = SegmentConfig(
        max_clip_s=args.max_clip_s,
        window_s=args.window_s,
        stride_s=args.stride_s,
        frame_rate_hz=args.frame_rate,
    )
    if args.backend == "rules":
        from handvla.language.annotate.rules import RuleAnnotator

        annotator = RuleAnnotator(mano_dir=args.mano_dir)
    else:
        from handvla.language.annotate.openai_backend import OpenAIAnnotator, OpenAIConfig

        cfg = OpenAIConfig.from_env(
            url=args.url,
            model=args.model,
            api_key=None,  # keys come from the environment only, never from the command line (shell history)
            timeout_s=args.timeout,
            max_retries=args.retries,
            rate_per_s=args.rate,
            max_image_side=args.image_side,
            json_mode=not args.no_json_mode,
            include_kinematics=not args.no_hints,
        )
        cache = (
            Path(args.cache_dir) if args.cache_dir else Path(args.dir) / ANNOTATIONS_DIR / "cache" / "openai"
        )
        annotator = OpenAIAnnotator(cfg, cache_dir=cache)
    report = annotate_store(
        args.dir,
        annotator,
        config=seg,
        workers=args.workers,
        limit=args.limit,
        retry_failed=not args.skip_failed,
        progress=not args.quiet,
    )
    print_json(report)
    return 0 if report["failed"] == 0 else 3


def add_annotate_parser(sub) -> None:
    p = sub.add_parser(
        "annotate",
        help="write clip-level and per-second text for every clip of a store (rule-based or a VLM endpoint)",
        description="Cut episodes into clips of at most 10 s, annotate each (clip instruction and summary, "
        "per-second instruction and description, for both hands and each hand) and append the result to "
        "DIR/meta/annotations/<backend>.jsonl. Reruns skip clips already annotated by that backend. Exit "
        "status 3 when some clips failed (they are listed in <backend>.failures.jsonl and retried next time).",
    )
    p.add_argument("dir", help="the episode store folder")
    p.add_argument(
        "--backend",
        choices=("rules", "openai"),
        default="rules",
        help="rules (default, no model) or openai (a VLM endpoint)",
    )
    p.add_argument(
        "--url",
        default=None,
        help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 (default $HANDVLA_VLM_URL)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model name at the endpoint (default $HANDVLA_VLM_MODEL); the key is read from $HANDVLA_VLM_API_KEY",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="clips annotated at the same time (concurrent requests for openai)",
    )
    p.add_argument(
        "--rate", type=_positive_float, default=None, help="openai: at most this many requests per second"
    )
    p.add_argument(
        "--timeout", type=_positive_float, default=120.0, help="openai: seconds to wait for one reply"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=4,
        help="openai: retries per clip (timeouts, 429/5xx, replies that are not the JSON asked for)",
    )
    p.add_argument(
        "--image-side",
        type=_positive_int,
        default=448,
        help="openai: frames are downscaled to this longer side (pixels)",
    )
    p.add_argument(
        "--no-json-mode",
        action="store_true",
        help="openai: do not send response_format=json_object (for servers without it)",
    )
    p.add_argument(
        "--no-hints",
        action="store_true",
        help="openai: do not add the rule-based motion measurements to the prompt",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="openai: reply cache folder (default DIR/meta/annotations/cache/openai)",
    )
    p.add_argument(
        "--skip-failed", action="store_true", help="do not retry clips that failed in an earlier run"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="annotate at most this many clips (for a trial run)"
    )
    p.add_argument(
        "--max-clip-s", type=_positive_float, default=10.0, help="longest clip, seconds (default 10)"
    )
    p.add_argument(
        "--window-s", type=_positive_float, default=1.0, help="per-second window length, seconds (default 1)"
    )
    p.add_argument(
        "--stride-s",
        type=_positive_float,
        default=0.5,
        help="per-second window stride, seconds (default 0.5)",
    )
    p.add_argument(
        "--frame-rate", type=_positive_float, default=2.0, help="frames per second shown to a VLM (default 2)"
    )
    p.add_argument(
        "--mano-dir", default=None, help="rules: MANO folder, for stores with hand_model 'mano' and no joints"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_annotate)


# -- instructions --------------------------------------------------------------------------------------------


def run_instructions(args: argparse.Namespace) -> int:
    from handvla.language.instructions.build import BuildConfig, build_instructions
    from handvla.language.instructions.sampling import DEFAULT_TASK_WEIGHTS, BalanceConfig, parse_task_weights
    from handvla.errors import ConfigError

    weights = parse_task_weights(args.proportions) if args.proportions else dict(DEFAULT_TASK_WEIGHTS)
    source_weights = None
    if args.source_weights:
        try:
            source_weights = {
                k.strip(): float(v) for k, v in (p.split("=", 1) for p in args.source_weights.split(","))
            }
        except ValueError:
            raise ConfigError(
                f"--source-weights: expected name=weight pairs separated by commas, got {args.source_weights!r}"
            ) from None
    balance = None
    if args.size is not None:
        balance = BalanceConfig(args.size, args.seed, weights, args.source_balance, source_weights)
    backends = tuple(args.backend.split(",")) if args.backend != "auto" else None
    cfg = BuildConfig(backends=backends)
    report = build_instructions(
        args.dirs,
        args.out,
        size=args.size,
        seed=args.seed,
        balance=balance,
        config=cfg,
        progress=not args.quiet,
    )
    print_json(report)
    return 0


def add_instructions_parser(sub) -> None:
    p = sub.add_parser(
        "instructions",
        help="instruction samples (generation, translation, prediction) from annotated stores, balanced",
        description="Make samples of the three task types from the annotations of one or more stores, fill "
        "~20 templates per type (each stating the duration and the hands), pick a subset of --size balanced "
        "over sources and task types (default proportions 1.6/0.4/0.5 like UniHand-2.5M) and write the "
        "manifest (.jsonl or .parquet) atomically. Without --size every candidate is written once.",
    )
    p.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="episode store folder(s), annotated with `handvla data annotate`",
    )
    p.add_argument("--out", required=True, help="manifest file (.jsonl or .parquet)")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="number of samples in the balanced subset (default: every candidate once)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of the template choice")
    p.add_argument(
        "--proportions",
        default=None,
        help="task-type weights generation,translation,prediction (default 1.6,0.4,0.5)",
    )
    p.add_argument(
        "--source-balance",
        choices=("uniform", "sqrt", "proportional"),
        default="uniform",
        help="how sources share each task type (default uniform)",
    )
    p.add_argument(
        "--source-weights",
        default=None,
        help="explicit source shares, e.g. handworld=1,egodex=3 (overrides --source-balance)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        help="annotation tables to use, in order of preference, e.g. openai,rules (default: all present, openai first)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_instructions)


def register(data_subparsers) -> None:
    """Both subcommands, for ``handvla data``."""
    add_annotate_parser(data_subparsers)
    add_instructions_parser(data_subparsers)
