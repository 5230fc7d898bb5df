"""``handvla serve``: a post-trained policy behind the websocket + msgpack policy server.

    handvla serve --ckpt runs/relocate/final --host 127.0.0.1 --port 8765

Prints one JSON line ({"url", "host", "port", ...}) on stdout once the server accepts connections (with
``--port 0`` the system picks a free port and this line says which), then serves until interrupted
(Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from handvla.commands._util import add_command, add_threads_option, set_threads
from handvla.errors import ConfigError


def run_serve(args: argparse.Namespace) -> int:
    from handvla.policy import HandVLAPolicy
    from handvla.robot.server import PolicyServer

    if not 0 <= args.port <= 65535:  # before the (slow) model load; the server checks it too
        raise ConfigError(f"--port: expected a TCP port from 0 to 65535 (0: any free port), got {args.port}")
    set_threads(args)
    policy = HandVLAPolicy.load(args.ckpt, device=args.device, dtype=args.dtype, task=args.task)
    server = PolicyServer(
        policy, host=args.host, port=args.port, max_batch=args.max_batch, batch_window_ms=args.batch_window_ms
    )
    port = server.start_in_thread()
    meta = policy.metadata()
    line = {
        "url": f"ws://{args.host}:{port}",
        "host": args.host,
        "port": port,
        "ckpt": str(args.ckpt),
        "device": str(policy.device),
        "chunk_size": meta["chunk_size"],
        "action_dim": meta["action_dim"],
        "observation": meta["observation"],
        "task": meta["task"],
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    stop = threading.Event()

    def _stop(signum, frame):
        stop.set()

    old = signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        server.stop()
        print(f"handvla serve: stopped after {server.requests_served} requests", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "serve",
        run_serve,
        help="serve a post-trained policy over websocket + msgpack (handvla.robot.client.PolicyClient)",
        description="Load a policy checkpoint (handvla posttrain's final/) and answer action-chunk requests. "
        "Metadata (chunk_size, action_dim, observation spec) is sent on connect; GET /healthz answers ok.",
    )
    p.add_argument("--ckpt", required=True, help="policy checkpoint folder")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (0: any free port, printed on stdout)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="backbone dtype")
    p.add_argument("--task", default=None, help="instruction (default: the checkpoint's training task)")
    p.add_argument(
        "--max-batch", type=int, default=32, help="most concurrent requests answered by one forward pass (1: none)"
    )
    p.add_argument(
        "--batch-window-ms", type=float, default=0.0, help="an idle server waits this long for more requests"
    )
    add_threads_option(p)
