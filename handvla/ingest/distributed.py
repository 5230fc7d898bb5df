"""Ray as the engine of a distributed build (``handvla data build --ray ADDRESS``; extra ``handvla[cluster]``).

``RayRunner`` connects to (or starts) a Ray instance and maps a module-level function over items as Ray
tasks, yielding the results in item order. Each task asks for one CPU; at most ``workers`` tasks run at
once and a bounded window of finished ones waits to be consumed (the driver's memory stays bounded on
millions of episodes). Ray re-runs a task whose worker process or node died (``max_retries``, Ray's own
retry of system failures); errors raised by the function itself are not retried here: the build's
function catches them and returns them as a per-episode failure. A task still lost after its retries is
yielded as a ``Lost`` with Ray's reason, and the caller reports it.

Why the driver writes the store (and not the workers): the store is written by ONE ``EpisodeWriter`` in
the build's job order, the same code path as a single-machine build, so the result is the same store by
construction (same episodes in the same order, same parquet rows, stats and metadata); workers need no
shared output filesystem, only read access to the sources (the same paths on every node). What travels
back is one episode's arrays plus its encoded mp4 bytes, small next to the fitting and encoding work a
task does. Shard stores + ``merge`` remain for machines without Ray.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from handvla.errors import ConfigError

INSTALL_HINT = "pip install -c constraints.txt 'handvla[cluster]'"


def import_ray():
    """The ``ray`` module, or a ConfigError saying how to install it. Imported here, not at module top:
    Ray is an optional extra (and a heavy import), needed only by ``--ray`` builds."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray: Ray is not installed; install the cluster extra: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class Lost:
    """A task Ray gave up on after its retries (its worker or node died each time)."""

    reason: str


class RayRunner:
    """A connection to a Ray instance: ``address`` 'local' starts a private local instance (``workers``
    CPUs, default all of this machine's), 'auto' uses the cluster Ray finds (``RAY_ADDRESS``, or one
    started with ``ray start`` on this machine) or else starts a local one, anything else is a cluster
    address (``host:6379`` or ``ray://host:10001``). An instance already initialised in this process is
    used as it is (and left running). ``workers``: tasks in flight (default: the cluster's CPUs)."""

    def __init__(self, address: str, workers: int | None = None, max_retries: int = 3):
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers: expected a whole number >= 1, got {workers!r}")
        if max_retries < 0:
            raise ConfigError(f"--max-retries: expected a whole number >= 0, got {max_retries!r}")
        self.ray = ray = import_ray()
        self.address, self.max_retries = str(address), int(max_retries)
        self.owned = not ray.is_initialized()
        if self.owned:
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "logging_level": logging.WARNING,
                "configure_logging": True,
            }
            if self.address == "local":
                kwargs["address"] = "local"
                if workers is not None:
                    kwargs["num_cpus"] = int(workers)
            elif self.address != "auto":
                kwargs["address"] = self.address
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"--ray {self.address}: could not start or reach Ray: {first}") from None
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < 1:
            raise ConfigError(f"--ray {self.address}: the cluster has no CPU to run tasks on")
        self.workers = int(workers) if workers is not None else cpus
        self.cluster_cpus = cpus

    def describe(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "workers": self.workers,
            "cluster_cpus": self.cluster_cpus,
            "nodes": sum(1 for n in self.ray.nodes() if n.get("Alive")),
            "max_retries": self.max_retries,
        }

    def map_ordered(
        self, fn: Callable, items: Iterable[Any], *shared: Any, window: int | None = None
    ) -> Iterator[tuple[Any, Any]]:
        """``(item, fn(*shared, item))`` for every item, in item order (or ``(item, Lost(reason))``).
        ``shared`` arguments are put in Ray's object store once. At most ``workers`` tasks run at once
        and at most ``window`` (default 4 x workers) are submitted ahead of the next one to yield."""
        ray = self.ray
        task = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)(fn)
        refs = [ray.put(s) for s in shared]
        window = max(self.workers, int(window or 4 * self.workers))
        pending: deque[tuple[Any, Any]] = deque()
        items = iter(items)
        running: set = set()
        try:
            while True:
                running = _unfinished(ray, running)
                while len(pending) < window and len(running) < self.workers:
                    item = next(items, _END)
                    if item is _END:
                        break
                    ref = task.remote(*refs, item)
                    pending.append((item, ref))
                    running.add(ref)
                if not pending:
                    return
                item, ref = pending[0]
                ready, _ = ray.wait([ref], timeout=0)
                if not ready:  # the head is still running: wait until any task ends, then top up
                    ray.wait(list(running), num_returns=1, timeout=1.0)
                    continue
                pending.popleft()
                running.discard(ref)
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayTaskError:
                    raise  # the function itself raised: a bug in the caller, not a lost worker
                except ray.exceptions.RayError as e:
                    value = Lost(f"{type(e).__name__} after {self.max_retries} retries: {_first_line(e)}")
                yield item, value
        finally:
            for _, ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()


_END = object()


def _unfinished(ray, refs: set) -> set:
    if not refs:
        return set()
    _, not_ready = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    return set(not_ready)


def _first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return lines[0] if lines else type(e).__name__
