"""Simulated robot tasks (gymnasium-robotics Adroit): the environment wrapper, a scripted expert and its
demonstrations. Importing this package does not import gymnasium or mujoco; ``AdroitSim`` does."""

from handvla.robot.sim.adroit import TASKS, AdroitSim, Rollout, TaskSpec, rollout, task_spec
from handvla.robot.sim.expert import (
    ExpertPolicy,
    RelocateExpert,
    RelocateExpertConfig,
    collect_demos,
    make_expert,
)

__all__ = [
    "TASKS",
    "AdroitSim",
    "ExpertPolicy",
    "RelocateExpert",
    "RelocateExpertConfig",
    "Rollout",
    "TaskSpec",
    "collect_demos",
    "make_expert",
    "rollout",
    "task_spec",
]
