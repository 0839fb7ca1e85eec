"""The toy world: synthetic tasks and tiny real checkpoints (a Llama base, LoRA specialists and generalists, a bigger
generalist), built locally in minutes, cached by content hash. The gateway's embedded default and every test's fixture.

Heavy imports (torch, transformers) happen only when building or evaluating.
"""

from toyworld.build import ToyWorld, build_toy_world, default_toy_dir
from toyworld.format import KTP_TEMPLATE, PREDECESSOR_TEMPLATE, render
from toyworld.tasks import COMPOSED, SKILLS, TASKS, Task

__all__ = [
    "COMPOSED",
    "KTP_TEMPLATE",
    "PREDECESSOR_TEMPLATE",
    "SKILLS",
    "TASKS",
    "Task",
    "ToyWorld",
    "build_toy_world",
    "default_toy_dir",
    "render",
]
