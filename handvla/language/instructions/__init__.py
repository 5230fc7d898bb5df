"""Instruction data for the three task types (generation, translation, prediction) and balanced subsets.

- ``templates``: about 20 base templates per task type, each stating the target duration, with hand-mode
  wording (left / right / both) filled by rules.
- ``build``: candidates from annotated stores, samples that refer to motion by (dataset, episode, time
  window, hands), the JSONL / parquet manifest.
- ``sampling``: subsets balanced over sources and task types (UniHand-2.5M proportions by default).
"""

from handvla.language.instructions.build import (
    InstructionBuildConfig,
    build_instructions,
    collect_candidates,
    read_manifest,
    write_manifest,
)
from handvla.language.instructions.sampling import (
    DEFAULT_TASK_WEIGHTS,
    InstructionBalanceConfig,
    balanced_sample,
)
from handvla.language.instructions.templates import (
    MOTION_ONLY_TEMPLATES,
    TASK_TYPES,
    TEMPLATES,
    Template,
    fill,
)

__all__ = [
    "DEFAULT_TASK_WEIGHTS",
    "MOTION_ONLY_TEMPLATES",
    "TASK_TYPES",
    "TEMPLATES",
    "InstructionBalanceConfig",
    "InstructionBuildConfig",
    "Template",
    "balanced_sample",
    "build_instructions",
    "collect_candidates",
    "fill",
    "read_manifest",
    "write_manifest",
]
