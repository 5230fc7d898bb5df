"""``handvla data build`` and ``handvla data merge`` (found by ``handvla.commands.data``).

    handvla data build --config unihand.yaml --out stores/unihand [--workers 4] [--shard i/n] [--limit N]
    handvla data merge stores/unihand stores/shard_0 stores/shard_1 ...

See ``handvla.ingest.build`` for the config and what a build does.
"""

from __future__ import annotations

import argparse

from handvla.commands._util import print_json


def run_build(args: argparse.Namespace) -> int:
    from handvla.ingest.build import build, load_build_config, parse_shard

    cfg = load_build_config(args.config)
    summary = build(
        cfg,
        args.out,
        workers=args.workers,
        shard=parse_shard(args.shard),
        limit=args.limit,
        progress=not args.no_progress,
    )
    print_json(summary)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from handvla.ingest.build import merge_stores

    print_json(merge_stores(args.out, args.inputs, progress=not args.no_progress))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "build",
        help="source datasets -> one standardised, aligned, balanced episode store (resumable, parallel)",
        description="Read every enabled source of the config, standardise (fit joints, clean pseudo-labels, "
        "15 fps), align to the canonical camera, add balancing copies and write the store. Episodes "
        "already in the store are skipped; failures are reported in OUT/build_report.jsonl and skipped.",
    )
    p.add_argument("--config", required=True, help="build config (YAML): see handvla.ingest.build")
    p.add_argument("--out", required=True, help="the store folder (created or resumed)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: the config's)")
    p.add_argument("--shard", default=None, help="i/n: build only shard i of n (by a stable key hash)")
    p.add_argument("--limit", type=int, default=None, help="at most N episodes per source (a quick trial)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_build)

    m = sub.add_parser(
        "merge",
        help="merge shard stores into one (single-build order, mp4 files copied)",
        description="Merge stores built with --shard into OUT, in the order a single build writes.",
    )
    m.add_argument("out", help="the merged store (created or resumed)")
    m.add_argument("inputs", nargs="+", help="shard stores")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=run_merge)
