"""Policy latency: time per action chunk in process, and the policy server's round-trip overhead.

    python benchmarks/policy_latency.py [--preset tiny] [--heads regression,flow] [--ckpt DIR] [--iters 100]
                                        [--threads 1] [--clients 20]

Without ``--ckpt`` a policy is built from the preset with Adroit Relocate's sizes (state 39, action 30,
chunk 16, one 128x128 camera, one tile per camera) and random weights: latency does not depend on the
weights. Measured on CPU unless ``--device cuda``:

- ``infer_ms``: ``HandVLAPolicy.infer`` (normalise, tokenise/tile, forward, unnormalise), split into
  ``preprocess_ms`` and ``forward_ms`` (forward + unnormalise);
- ``server``: a ``PolicyServer`` on loopback answering a ``PolicyClient``: ``round_trip_ms`` seen by the
  client, ``server_ms`` (the policy call as timed by the server), ``overhead_ms`` = their difference
  (msgpack + websocket + thread hop), ``ping_ms``;
- ``concurrent``: ``--clients`` clients at once, each sending ``--concurrent-iters`` requests: round trip
  per request with the server's batching (``max_batch`` 32) and without (1), side by side, and the batch
  sizes the server formed.

Each head of ``--heads`` (``regression``: Being-H0's; ``flow``: the flow-matching expert, its default
integration steps) gets its own entry, measured in the same run. Prints one JSON document (medians, p90
and means over ``--iters`` calls after ``--warmup`` calls).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handvla.commands._util import print_json  # noqa: E402
from handvla.policy import HandVLAPolicy, HandVLAPolicyModel, Normalizer, PolicyConfig  # noqa: E402
from handvla.robot.client import PolicyClient  # noqa: E402
from handvla.robot.protocol import pack  # noqa: E402
from handvla.robot.server import PolicyServer  # noqa: E402
from handvla.vla import build_vla  # noqa: E402


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean())}


def build_policy(preset: str, image_size: int, chunk: int, device: str, head: str = "regression"):
    cfg = PolicyConfig(
        head=head,
        state_dim=39,
        action_dim=30,
        chunk_size=chunk,
        image_keys=["observation.images.front"],
        image_shapes=[[image_size, image_size, 3]],
        default_task="relocate the ball to the target",
    )
    model = HandVLAPolicyModel.from_vla(build_vla(preset), cfg)  # config.max_tiles: one tile per camera
    rng = np.random.default_rng(0)
    model.normalizer = Normalizer.from_arrays(
        {"observation.state": rng.normal(size=(100, 39)), "action": rng.uniform(-1, 1, (100, 30))},
        {"observation.state": "mean_std", "action": "min_max"},
    )
    # through a checkpoint, as deployed
    tmp = Path(tempfile.mkdtemp(prefix="policy_latency_"))
    model.save_pretrained(tmp / "ckpt")
    return HandVLAPolicy.load(tmp / "ckpt", device=device)


def concurrent_round_trips(policy, obs, clients: int, iters: int, max_batch: int) -> dict:
    """``clients`` connections at once, ``iters`` requests each: per-request round trips (ms)."""
    server = PolicyServer(policy, port=0, max_batch=max_batch)
    port = server.start_in_thread()
    rtt: list[float] = []
    lock = threading.Lock()

    def run():
        with PolicyClient(f"ws://127.0.0.1:{port}", timeout_s=300) as c:
            c.infer(obs())  # warm-up, not counted
            for _ in range(iters):
                o = obs()
                t = time.perf_counter()
                c.infer(o)
                with lock:
                    rtt.append((time.perf_counter() - t) * 1e3)

    try:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=run) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        server.stop()
    sizes = server.batch_sizes
    return {
        "max_batch": max_batch,
        "round_trip_ms": _stats(rtt),
        "requests": len(rtt),
        "wall_s": wall,
        "mean_batch": float(np.mean(sizes)) if sizes else 1.0,
    }


def measure(policy, args) -> dict:
    meta = policy.metadata()
    rng = np.random.default_rng(0)

    def obs():
        o = {"state": rng.normal(size=meta["state_dim"]).astype(np.float32)}
        for name, spec in meta["observation"].items():
            if name != "state":
                o[name] = rng.integers(0, 255, spec["shape"], dtype=np.uint8)
        return o

    def sync():
        if policy.device.type == "cuda":
            torch.cuda.synchronize()

    infer, pre, fwd = [], [], []
    for i in range(args.warmup + args.iters):
        o = obs()
        t = time.perf_counter()
        batch = {k: v.to(policy.device) for k, v in policy.preprocess(o).items()}
        t1 = time.perf_counter()
        with torch.no_grad():
            pred = policy.model(**batch).actions[0].float().cpu().numpy()
        policy.processor.postprocess(pred, policy.normalizer)
        sync()
        t2 = time.perf_counter()
        policy.infer(o)
        sync()
        t3 = time.perf_counter()
        if i >= args.warmup:
            pre.append((t1 - t) * 1e3)
            fwd.append((t2 - t1) * 1e3)
            infer.append((t3 - t2) * 1e3)

    server = PolicyServer(policy, port=0)
    port = server.start_in_thread()
    rtt, server_ms, ping = [], [], []
    try:
        with PolicyClient(f"ws://127.0.0.1:{port}") as client:
            for i in range(args.warmup + args.iters):
                msg = pack({"type": "infer", "id": i, "observation": obs()})
                t = time.perf_counter()
                reply = client.send_raw(msg)
                dt = (time.perf_counter() - t) * 1e3
                if reply.get("type") != "action":
                    raise RuntimeError(f"server answered {reply}")
                if i >= args.warmup:
                    rtt.append(dt)
                    server_ms.append(float(reply["server_ms"]))
                    ping.append(client.ping())
    finally:
        server.stop()

    overhead = [a - b for a, b in zip(rtt, server_ms)]
    out = {
        "head": meta["head"],
        "flow_steps": meta.get("flow_steps"),
        "parameters": sum(p.numel() for p in policy.model.parameters()),
        "sequence_tokens": int(policy.preprocess(obs())["input_ids"].shape[1]),
        "infer_ms": _stats(infer),
        "preprocess_ms": _stats(pre),
        "forward_ms": _stats(fwd),
        "chunks_per_s": 1e3 / float(np.median(infer)),
        "server": {
            "round_trip_ms": _stats(rtt),
            "server_ms": _stats(server_ms),
            "overhead_ms": _stats(overhead),
            "ping_ms": _stats(ping),
        },
    }
    if args.clients > 1:
        runs = [concurrent_round_trips(policy, obs, args.clients, args.concurrent_iters, mb) for mb in (32, 1)]
        out["concurrent"] = {
            "clients": args.clients,
            "batched": runs[0],
            "one_at_a_time": runs[1],
            "p50_ratio_one_at_a_time_over_batched": runs[1]["round_trip_ms"]["median"]
            / runs[0]["round_trip_ms"]["median"],
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--heads", default="regression,flow", help="comma-separated: regression, flow")
    ap.add_argument("--ckpt", default=None, help="a policy checkpoint instead of a random preset (its head)")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clients", type=int, default=20, help="concurrent clients (1: skip that part)")
    ap.add_argument("--concurrent-iters", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    heads = [None] if args.ckpt else [h.strip() for h in args.heads.split(",") if h.strip()]
    for head in heads:
        t0 = time.perf_counter()
        policy = (
            HandVLAPolicy.load(args.ckpt, device=args.device)
            if args.ckpt
            else build_policy(args.preset, args.image_size, args.chunk, args.device, head)
        )
        res = {"load_s": time.perf_counter() - t0} | measure(policy, args)
        results.append(res)
    meta = policy.metadata()
    print_json(
        {
            "policy": args.ckpt or f"{args.preset} (random weights)",
            "device": str(policy.device),
            "threads": args.threads,
            "cpu": platform.processor() or platform.machine(),
            "chunk_size": meta["chunk_size"],
            "action_dim": meta["action_dim"],
            "observation": meta["observation"],
            "iters": args.iters,
            "heads": results,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
