"""The pieces every command module uses: adding a command or a command group, the options several commands
share (--set, --threads, the training-run options) and what they do, and the JSON result on stdout.

Nothing here imports torch at module level: ``handvla --help`` loads every command module, and torch takes
seconds to import; the helpers that need it import it when a command runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

#: what a command runs: the parsed arguments in, the exit status out
Run = Callable[[argparse.Namespace], int]


def print_json(obj: Any) -> None:
    """Print a result as one JSON document on stdout (numbers rounded for reading: 4 decimals, or 3 significant
    digits below 0.001, so that a small p-value or learning rate does not print as 0)."""

    def conv(x):
        if hasattr(x, "item"):
            x = x.item()
        if isinstance(x, float):
            if x != 0.0 and abs(x) < 1e-3 and math.isfinite(x):
                return float(f"{x:.3g}")
            return round(x, 4)
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return x

    json.dump(conv(obj), sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


def add_command(subparsers, name: str, run: Run, **kwargs) -> argparse.ArgumentParser:
    """Add the command (or subcommand) ``name``, done by ``run(args)``, and return its parser for its
    arguments. ``kwargs`` (help, description) go to the parser."""
    parser = subparsers.add_parser(name, **kwargs)
    parser.set_defaults(func=run)
    return parser


def add_group(
    subparsers,
    name: str,
    subcommands: Sequence[Callable[[Any], argparse.ArgumentParser]],
    dest: str,
    metavar: str = "SUBCOMMAND",
    required: bool = False,
    **kwargs,
) -> None:
    """Add the command ``name`` that has subcommands (``handvla data stats``, ...): each function of
    ``subcommands`` adds one (``add_<name>(sub)``, in help order). ``kwargs`` (help, description) go to
    its parser; given alone, the command prints its help and exits with status 1 (with ``required``,
    argparse asks for a subcommand instead)."""
    parser = subparsers.add_parser(name, **kwargs)

    def show_help(_args) -> int:
        parser.print_help()
        return 1

    parser.set_defaults(func=show_help)
    sub = parser.add_subparsers(dest=dest, metavar=metavar, required=required)
    for add in subcommands:
        add(sub)


def add_set_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable): a change to one field of the command's config."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_threads_option(p: argparse.ArgumentParser, help: str | None = "torch CPU threads") -> None:
    """``--threads N``: torch's CPU threads while the command runs (`set_threads`)."""
    p.add_argument("--threads", type=int, default=None, help=help)


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (`add_threads_option`) when it was given."""
    if args.threads:
        import torch  # when the command runs (see the module doc)

        torch.set_num_threads(int(args.threads))


def add_training_run_args(p: argparse.ArgumentParser, set_example: str) -> None:
    """The arguments every config-driven training command takes: --config, --set (``set_example`` shows
    a typical override), --resume, --threads, --quiet (`run_training_job` applies them)."""
    p.add_argument("--config", required=True, help="YAML (or JSON) config file")
    add_set_option(p, f"override a field, e.g. {set_example} (YAML values; repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    add_threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_training_job(
    args: argparse.Namespace, load_config: Callable[..., Any], run: Callable[..., dict[str, Any]]
) -> dict[str, Any] | None:
    """A config-driven training command (`add_training_run_args`): the config from ``load_config(--config,
    --set)``, then ``run(cfg, resume=, progress=)``, which joins the process group when launched by
    torchrun. Returns the job's summary on the main process (rank 0, or the only one) and None on the
    other ranks, which print nothing."""
    import torch.distributed as dist  # when the command runs (see the module doc)

    cfg = load_config(args.config, args.set)
    set_threads(args)
    if args.quiet:
        cfg.train.progress = False
    summary = run(cfg, resume=args.resume, progress=not args.quiet)
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return None
    return summary
