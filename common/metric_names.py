"""The rule for the names of an evaluation's extra metrics, shared by tasks, client and server.

``Evaluation.metrics`` (``tasks/interface.py``, and ``map<string, double> metrics`` on the wire)
holds at most ``MAX_METRICS`` named numbers; a name is 1 to 64 characters of a-z, 0-9, ``_``,
``.`` and ``-``, starting with a letter: safe as a JSON key, a TensorBoard tag and a file name
(fl-report writes ``metric-NAME.png``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

MAX_METRICS = 32
MAX_NAME = 64
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


def metrics_problem(metrics: Mapping[str, float]) -> str | None:
    """Return why ``metrics`` break the rule (count, names, finite values), or None."""
    if len(metrics) > MAX_METRICS:
        return f"{len(metrics)} named metrics, at most {MAX_METRICS}"
    for name, value in metrics.items():
        if not NAME_PATTERN.fullmatch(name):
            shown = name if len(name) <= MAX_NAME else name[:MAX_NAME] + "..."
            return (
                f"metric name {shown!r} is not 1-{MAX_NAME} characters of a-z 0-9 _ . - "
                "starting with a letter"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"metric {name!r} is {value!r}, not a number"
        if not math.isfinite(value):
            return f"metric {name!r} is {value!r}, not a finite number"
    return None
