"""fedsilo's task SDK: what a user's code imports to define what a federation trains.

    from fedsilo.tasks import Evaluation, LocalData, TrainConfig, TrainResult
    from fedsilo.tasks.training import evaluate_classifier, train_classifier

The Task interface (``fedsilo.tasks.interface``), loading a task (``fedsilo.tasks.loading``),
ready-made training loops, models, partitioners, the built-in tasks and their datasets. Neither
daemon's code lives here: both import it.
"""

from fedsilo.tasks.interface import Evaluation, LocalData, Task, TrainConfig, TrainResult
from fedsilo.tasks.loading import BUILTIN_TASKS, load_task, resolve_task_class

__all__ = [
    "BUILTIN_TASKS",
    "Evaluation",
    "LocalData",
    "Task",
    "TrainConfig",
    "TrainResult",
    "load_task",
    "resolve_task_class",
]
