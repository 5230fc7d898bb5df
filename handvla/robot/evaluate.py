"""Evaluating a policy: closed loop in a simulator (Adroit, Meta-World MT10; one task or a whole suite),
open loop on a recorded LeRobot dataset.

A policy is anything with the ``handvla.robot.server.Policy`` protocol (``metadata()`` with
``chunk_size``, ``action_dim``, ``observation``; ``infer(obs) -> (chunk_size, action_dim)``), used
in-process, or a ``handvla.robot.client.PolicyClient`` talking to a policy server. Either way the same
``ActionChunkBroker`` executes the first ``replan_every`` actions of each chunk (default: the whole chunk)
and the observation is checked against the policy's spec exactly as the server checks it. Optional
hooks: ``policy.reset()`` is called at the start of each episode and ``policy.set_task(text)`` with the
task's instruction, when the policy has them.

Closed loop (``evaluate_closed_loop``): N episodes on seeds ``seed .. seed+N-1`` (default 10000 on, so
they are not the demonstration seeds 0 ..), each ``max_steps`` long. Success per episode follows the
task's rule (Adroit: the DAPG / D4RL rule, goal achieved on more than 25 steps, see
``handvla.robot.sim.adroit``; Meta-World: success at any step); the success rate comes with its 95 % Wilson
score interval. ``evaluate_suite`` runs every task of a suite (``handvla.robot.sim.suites``) on the same
seeds and adds the mean over tasks, with the Wilson interval of all the suite's episodes pooled. The
instruction also travels in each observation (``task``), so a remote multi-task policy gets it too. Returns are sums of the environment's dense reward as defined
by the installed gymnasium-robotics (its v1 reward changed across versions: compare success, not return,
across installations).

Open loop (``evaluate_open_loop``): for frames of a dataset, the policy's chunk from the recorded
observation against the recorded future actions (the same chunks ``ActionChunkDataset`` gives, padded
steps excluded): L1 = mean absolute error over action dimensions, L2 = Euclidean norm of the error
vector, both per horizon step, with a PNG plot of error against horizon step.

``handvla eval sim --ckpt DIR --task relocate --episodes N`` is meant to be: load the checkpoint's policy,
then ``run_sim_eval(policy, task, episodes, seed, out_dir)``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from handvla.atomic import atomic_open, atomic_write_json
from handvla.errors import ConfigError, InputError
from handvla.robot.client import ActionChunkBroker, PolicyClient
from handvla.robot.lerobot_format import ACTION_KEY, STATE_KEY, RobotDataset, chunk_indices
from handvla.robot.server import REQUIRED_METADATA, validate_observation
from handvla.stats import wilson_interval
from handvla.video import write_video

# first evaluation seed: far from the demonstration seeds (0, 1, ...); Meta-World maps seeds from here on to
# the variations its demonstrations never use (handvla.robot.sim.metaworld.EVAL_SEEDS_FROM, the same value)
EVAL_SEED = 10_000


# ---------------------------------------------------------------------------------------------------------
# policy adapters
# ---------------------------------------------------------------------------------------------------------


class _LocalClient:
    """A local Policy seen through the client interface (``metadata`` attribute, ``infer``), with the
    server's checks on both sides, so in-process and remote evaluation see the same thing."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.metadata = dict(policy.metadata())
        for key in REQUIRED_METADATA:
            if key not in self.metadata:
                raise ConfigError(f"policy metadata lacks '{key}' (see handvla.robot.server.Policy)")

    def infer(
        self, observation: dict[str, np.ndarray], prev_actions: np.ndarray | None = None, inference_delay: int = 0
    ) -> np.ndarray:
        if prev_actions is not None:  # real-time chunking, as `PolicyClient.infer` sends it
            observation = {**observation, "prev_actions": prev_actions, "inference_delay": int(inference_delay)}
        m = self.metadata
        obs = validate_observation(observation, m["observation"], m["chunk_size"], m["action_dim"])
        actions = np.asarray(self.policy.infer(obs), np.float32)
        want = (int(self.metadata["chunk_size"]), int(self.metadata["action_dim"]))
        if actions.shape != want:
            raise InputError("policy.infer", "actions", f"shape {want}", str(actions.shape))
        return actions


def as_client(policy: Any):
    """A PolicyClient stays as it is; a local Policy gets the client interface."""
    if isinstance(policy, (PolicyClient, _LocalClient)):
        return policy
    if not callable(getattr(policy, "metadata", None)) or not callable(getattr(policy, "infer", None)):
        raise ConfigError(f"{type(policy).__name__} is not a policy: it needs metadata() and infer(obs)")
    return _LocalClient(policy)


def _image_spec(meta: dict[str, Any]) -> tuple[str | None, tuple[int, int] | None]:
    """(observation key of the image, its fixed (H, W) or None if any size)."""
    spec = meta["observation"]
    unknown = [k for k in spec if k not in ("state", "image")]
    if unknown:
        raise ConfigError(
            f"the policy asks for observation key(s) {unknown}; the simulator provides 'state' and 'image'"
        )
    if "image" not in spec:
        return None, None
    shape = list(spec["image"].get("shape", [-1, -1, 3]))
    if len(shape) != 3 or shape[2] not in (3, -1):
        raise ConfigError(f"the policy's image spec must be (H, W, 3), got {shape}")
    if shape[0] > 0 and shape[1] > 0:
        return "image", (int(shape[0]), int(shape[1]))
    return "image", None


class MeanActionPolicy:
    """The input-blind baseline of the benchmarks: one action (e.g. the training set's mean) at every step,
    whatever the observation (``Policy`` protocol, state-only)."""

    def __init__(self, mean: np.ndarray, state_dim: int):
        self.mean, self.state_dim = np.asarray(mean, np.float32), int(state_dim)

    def metadata(self) -> dict[str, Any]:
        return {
            "chunk_size": 1,
            "action_dim": len(self.mean),
            "observation": {"state": {"shape": [self.state_dim], "dtype": "float32"}},
        }

    def infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.mean[None]


class PolicyController:
    """A policy driving the simulator (the ``Controller`` of ``handvla.robot.sim.adroit.rollout``)."""

    def __init__(self, policy: Any, replan_every: int | None = None):
        self.client = as_client(policy)
        self.broker = ActionChunkBroker(self.client, replan_every)
        self.policy = policy
        self.keys = list(self.client.metadata["observation"])
        self.calls = 0
        self.task: str | None = None

    def reset(self, sim) -> None:
        self.broker.reset()
        if int(self.client.metadata["action_dim"]) != sim.action_dim:
            raise ConfigError(
                f"the policy's action_dim is {self.client.metadata['action_dim']}, the {sim.spec.name} task's is {sim.action_dim}"
            )
        self.task = sim.instruction
        target = self.policy.policy if isinstance(self.policy, _LocalClient) else self.policy
        if callable(getattr(target, "set_task", None)):
            target.set_task(sim.instruction)
        if callable(getattr(target, "reset", None)):
            target.reset()

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self.calls += 1
        return self.broker.act({k: obs[k] for k in self.keys} | {"task": self.task})


# ---------------------------------------------------------------------------------------------------------
# closed loop
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ClosedLoopResult:
    task: str
    episodes: int
    seeds: list[int]
    success_rate: float
    success_ci95: tuple[float, float]
    success_at_end_rate: float
    mean_return: float
    mean_length: float
    mean_success_steps: float
    replan_every: int
    chunk_size: int
    seconds: float
    steps_per_s: float
    per_seed: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["success_ci95"] = list(self.success_ci95)
        return d


def evaluate_closed_loop(
    policy: Any,
    task: str = "relocate",
    episodes: int = 50,
    seed: int = EVAL_SEED,
    replan_every: int | None = None,
    max_steps: int | None = None,
    camera: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    sim=None,
    video_dir: str | Path | None = None,
    video_episodes: int = 0,
    progress: bool = False,
) -> ClosedLoopResult:
    """Run ``policy`` (local Policy or PolicyClient) for ``episodes`` seeded episodes; see the module doc.

    The image is rendered only when the policy's observation spec has one, at the spec's fixed size (else
    ``image_size``, default 128). ``sim``: an ``AdroitSim`` to use (else one is made and closed here).
    ``video_dir`` + ``video_episodes``: save the first episodes as mp4 (``<task>_seed<k>.mp4``).
    """
    # why here: importing the simulator chooses MuJoCo's GL backend; only closed-loop evaluation needs it
    from handvla.robot.sim.adroit import DEFAULT_IMAGE_SIZE, rollout
    from handvla.robot.sim.suites import make_sim

    if int(episodes) < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    controller = PolicyController(policy, replan_every)
    img_key, spec_hw = _image_spec(controller.client.metadata)
    img_hw = spec_hw or image_size or DEFAULT_IMAGE_SIZE  # the spec's fixed size wins
    own = sim is None
    if own:
        sim = make_sim(task, image_size=img_hw if img_key else None, camera=camera, max_steps=max_steps)
    elif sim.spec.name != task:
        raise ConfigError(f"evaluate_closed_loop(task={task!r}) was given a {sim.spec.name!r} sim")
    elif img_key is not None and sim.image_hw is None:
        raise ConfigError("the policy needs images but the given sim renders none (set its image_size)")
    elif img_key is not None and spec_hw is not None and tuple(sim.image_hw) != tuple(spec_hw):
        raise ConfigError(
            f"the policy wants {spec_hw[0]}x{spec_hw[1]} images, the given sim renders {sim.image_hw}"
        )
    seeds = [int(seed) + i for i in range(int(episodes))]
    per_seed = []
    t0 = time.perf_counter()
    it = seeds
    if progress:
        it = tqdm(seeds, desc=f"eval {task}", unit="ep")
    steps = 0
    try:
        for i, s in enumerate(it):
            record = video_dir is not None and i < video_episodes
            ro = rollout(sim, controller, s, record_images=record)
            steps += ro.length
            per_seed.append(ro.summary())
            if record:
                Path(video_dir).mkdir(parents=True, exist_ok=True)
                write_video(Path(video_dir) / f"{task}_seed{s}.mp4", ro.images, fps=sim.fps)
    finally:
        if own:
            sim.close()
    secs = time.perf_counter() - t0
    n_ok = sum(r["success"] for r in per_seed)
    return ClosedLoopResult(
        task=task,
        episodes=len(seeds),
        seeds=seeds,
        success_rate=n_ok / len(seeds),
        success_ci95=wilson_interval(n_ok, len(seeds)),
        success_at_end_rate=float(np.mean([r["success_at_end"] for r in per_seed])),
        mean_return=float(np.mean([r["return"] for r in per_seed])),
        mean_length=float(np.mean([r["length"] for r in per_seed])),
        mean_success_steps=float(np.mean([r["success_steps"] for r in per_seed])),
        replan_every=controller.broker.replan_every,
        chunk_size=int(controller.client.metadata["chunk_size"]),
        seconds=secs,
        steps_per_s=steps / secs if secs > 0 else 0.0,
        per_seed=per_seed,
    )


def evaluate_suite(
    policy: Any, suite: str | Sequence[str], episodes: int = 50, seed: int = EVAL_SEED, **kwargs
) -> dict[str, Any]:
    """`evaluate_closed_loop` on every task of ``suite`` (a suite name or a list of tasks), same seeds for
    each: {suite, tasks: {task: result}, mean_success (over tasks), pooled_success_ci95 (Wilson interval of
    all episodes pooled), episodes_per_task, seed}."""
    # the simulators import mujoco: only closed loop needs them
    from handvla.robot.sim.suites import suite_tasks

    tasks = suite_tasks(suite) if isinstance(suite, str) else list(suite)
    results = {t: evaluate_closed_loop(policy, task=t, episodes=episodes, seed=seed, **kwargs).to_dict() for t in tasks}
    n_ok = sum(round(r["success_rate"] * r["episodes"]) for r in results.values())
    n = sum(r["episodes"] for r in results.values())
    return {
        "suite": suite if isinstance(suite, str) else list(tasks),
        "seed": int(seed),
        "episodes_per_task": int(episodes),
        "mean_success": float(np.mean([r["success_rate"] for r in results.values()])),
        "pooled_success_ci95": list(wilson_interval(n_ok, n)),
        "tasks": results,
    }


def suite_table(res: dict[str, Any]) -> str:
    """A plain-text table of `evaluate_suite`'s result: task, success, 95 % interval, episodes."""
    rows = [f"{'task':28s} {'success':>8s}  {'95% CI':>13s}  {'episodes':>8s}"]
    for task, r in res["tasks"].items():
        lo, hi = r["success_ci95"]
        rows.append(f"{task:28s} {r['success_rate']:8.3f}  [{lo:5.3f}, {hi:5.3f}]  {r['episodes']:8d}")
    lo, hi = res["pooled_success_ci95"]
    rows.append(f"{'mean over tasks':28s} {res['mean_success']:8.3f}  [{lo:5.3f}, {hi:5.3f}]  (pooled)")
    return "\n".join(rows)


def evaluate_remote(url: str, **kwargs) -> ClosedLoopResult:
    """``evaluate_closed_loop`` against a policy server at ``url`` (ws://host:port)."""
    with PolicyClient(url) as client:
        return evaluate_closed_loop(client, **kwargs)


def run_sim_eval(
    policy: Any,
    task: str = "relocate",
    episodes: int = 50,
    seed: int = EVAL_SEED,
    out_dir: str | Path | None = None,
    **kwargs,
) -> dict[str, Any]:
    """What ``handvla eval sim`` does once it has a policy: evaluate, write ``sim_eval_<task>.json`` into
    ``out_dir`` (atomically) if given, return the result as a dict."""
    res = evaluate_closed_loop(policy, task=task, episodes=episodes, seed=seed, **kwargs).to_dict()
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / f"sim_eval_{task}.json", res)
    return res


# ---------------------------------------------------------------------------------------------------------
# open loop
# ---------------------------------------------------------------------------------------------------------


@dataclass
class OpenLoopResult:
    samples: int
    chunk_size: int
    l1_by_step: list[float]  # (chunk,) mean |error| over action dims and samples, real (unpadded) steps
    l2_by_step: list[float]  # (chunk,) mean Euclidean error norm
    count_by_step: list[int]  # (chunk,) samples with a real action at that step
    l1: float  # over all real steps
    l2: float
    l1_by_dim: list[float]  # (action_dim,)
    plot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resize(img: np.ndarray, hw: tuple[int, int] | None) -> np.ndarray:
    if hw is None or img.shape[:2] == tuple(hw):
        return img
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BILINEAR))


def evaluate_open_loop(
    policy: Any,
    dataset,
    episodes: Sequence[int] | None = None,
    stride: int = 1,
    max_samples: int | None = None,
    image_key: str | None = None,
    state_key: str = STATE_KEY,
    action_key: str = ACTION_KEY,
    plot_path: str | Path | None = None,
    progress: bool = False,
    instruction: str | None = None,
) -> OpenLoopResult:
    """Compare the policy's chunks with the recorded ones on frames ``0, stride, 2 stride, ...`` of each
    episode (at most ``max_samples`` frames, evenly spread). The observation is the recorded raw state
    (and the frame of ``image_key``, default the first video feature, resized to the policy's image size
    if it asks for a fixed one) and, as ``task``, the frame's own task text from the dataset (multi-task
    datasets get each episode's instruction) unless ``instruction`` replaces it for every frame; errors
    are in the dataset's action units."""
    ds = dataset if isinstance(dataset, RobotDataset) else RobotDataset(dataset)
    client = as_client(policy)
    meta = client.metadata
    chunk, adim = int(meta["chunk_size"]), int(meta["action_dim"])
    img_name, img_hw = _image_spec(meta)
    if img_name is not None:
        keys = ds.video_keys + ds.image_keys
        image_key = image_key or (keys[0] if keys else None)
        if image_key is None or image_key not in keys:
            raise ConfigError(
                f"the policy needs images; dataset {ds.root} has video/image features {keys}, asked for {image_key!r}"
            )
    states = ds.column(state_key).reshape(len(ds), -1).astype(np.float32)
    actions = ds.column(action_key).reshape(len(ds), -1).astype(np.float32)
    if actions.shape[1] != adim:
        raise ConfigError(
            f"the policy's action_dim is {adim}, the dataset's '{action_key}' has {actions.shape[1]}"
        )
    if int(stride) < 1:
        raise ConfigError(f"stride must be >= 1, got {stride}")
    rows, bounds = [], []
    for k in episodes if episodes is not None else range(ds.num_episodes):
        s = ds.episode_slice(k)
        for r in range(s.start, s.stop, int(stride)):
            rows.append(r)
            bounds.append((s.start, s.stop))
    if max_samples is not None and len(rows) > max_samples:
        pick = np.linspace(0, len(rows) - 1, int(max_samples)).round().astype(int)
        rows, bounds = [rows[i] for i in pick], [bounds[i] for i in pick]
    if not rows:
        raise ConfigError(f"no frames to evaluate in {ds.root}")
    abs_sum = np.zeros((chunk, adim))
    l2_sum = np.zeros(chunk)
    count = np.zeros(chunk, np.int64)
    it = range(len(rows))
    if progress:
        it = tqdm(it, desc="open loop", unit="frame")
    for i in it:
        r, (a, b) = rows[i], bounds[i]
        obs: dict[str, Any] = {"state": states[r], "task": instruction if instruction is not None else ds.task(r)}
        if img_name is not None:
            obs["image"] = _resize(ds.frame(image_key, r), img_hw)
        pred = np.asarray(client.infer(obs), np.float64)  # (chunk, adim)
        idx, mask = chunk_indices(r, a, b, chunk)
        err = pred - actions[idx]
        abs_sum += np.abs(err) * mask[:, None]
        l2_sum += np.linalg.norm(err, axis=1) * mask
        count += mask
    safe = np.maximum(count, 1)
    l1_step = abs_sum.sum(1) / (safe * adim)
    l2_step = l2_sum / safe
    total = count.sum()
    res = OpenLoopResult(
        samples=len(rows),
        chunk_size=chunk,
        l1_by_step=[float(v) if c else math.nan for v, c in zip(l1_step, count)],
        l2_by_step=[float(v) if c else math.nan for v, c in zip(l2_step, count)],
        count_by_step=count.tolist(),
        l1=float(abs_sum.sum() / (total * adim)),
        l2=float(l2_sum.sum() / total),
        l1_by_dim=(abs_sum.sum(0) / total).tolist(),
    )
    if plot_path is not None:
        res.plot = str(plot_open_loop(res, plot_path))
    return res


def plot_open_loop(res: OpenLoopResult, path: str | Path) -> Path:
    """Error against horizon step (L1 and L2) as a PNG, written atomically."""
    import matplotlib  # optional (the robot extra); only plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = np.arange(res.chunk_size)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, res.l1_by_step, marker="o", label="L1 (mean |error| per dim)")
    ax.plot(steps, res.l2_by_step, marker="s", label="L2 (error norm)")
    ax.set_xlabel("horizon step in the action chunk")
    ax.set_ylabel("error (action units)")
    ax.set_title(f"open-loop error, {res.samples} frames")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)
    return path


def save_result(result: ClosedLoopResult | OpenLoopResult, path: str | Path) -> Path:
    """Write a result as JSON (atomically)."""
    path = Path(path)
    atomic_write_json(path, json.loads(json.dumps(result.to_dict(), default=float)))
    return path
