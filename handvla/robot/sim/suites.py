"""Every simulated task by name, and the benchmark suites: which simulator runs a task, and which tasks a
suite holds.

    adroit           relocate, door, hammer, pen (gymnasium-robotics; scripted expert: relocate only)
    metaworld-mt10   Meta-World's MT10 tasks (scripted experts: all ten, from the metaworld package)
"""

from __future__ import annotations

from handvla.errors import ConfigError
from handvla.robot.sim import adroit, metaworld
from handvla.robot.sim.adroit import AdroitSim, TaskSpec
from handvla.robot.sim.metaworld import MetaWorldSim

SUITES: dict[str, list[str]] = {
    "adroit": list(adroit.TASKS),
    "metaworld-mt10": list(metaworld.TASKS),
}
ALL_TASKS: dict[str, TaskSpec] = {**adroit.TASKS, **metaworld.TASKS}


def task_spec(task: str) -> TaskSpec:
    if task not in ALL_TASKS:
        raise ConfigError(
            f"unknown sim task {task!r}; choose one of {sorted(ALL_TASKS)} (suites: {sorted(SUITES)})"
        )
    return ALL_TASKS[task]


def suite_tasks(suite: str) -> list[str]:
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; choose one of {sorted(SUITES)}")
    return list(SUITES[suite])


def make_sim(task: str, image_size=None, camera: str | None = None, max_steps: int | None = None, **kw):
    """The simulator of ``task`` (an `AdroitSim` or a `MetaWorldSim`; ``camera`` None: the simulator's
    default)."""
    task_spec(task)
    if task in adroit.TASKS:
        return AdroitSim(
            task, image_size=image_size, camera=camera or adroit.DEFAULT_CAMERA, max_steps=max_steps, **kw
        )
    return MetaWorldSim(task, image_size=image_size, camera=camera, max_steps=max_steps, **kw)


def select_tasks(suite: str, tasks: str | None = None) -> list[str]:
    """The tasks of ``suite``, or of them the comma-separated ``tasks`` (ConfigError naming a stranger)."""
    all_tasks = suite_tasks(suite)
    if not tasks:
        return all_tasks
    chosen = [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = sorted(set(chosen) - set(all_tasks))
    if unknown:
        raise ConfigError(f"--tasks: {unknown} are not in suite {suite!r} ({all_tasks})")
    return chosen
