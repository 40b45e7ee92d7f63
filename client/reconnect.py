"""When and how long to retry: exponential backoff with jitter inside a bounded outage."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

INITIAL_DELAY = 0.25
MAX_DELAY = 5.0


@dataclass
class Outage:
    """Tracks one period without a working session; ``budget`` seconds at most."""

    budget: float
    started: float = field(default_factory=time.monotonic)
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float | None:
        """Return how long to wait before the next attempt, or None once the budget is spent."""
        elapsed = time.monotonic() - self.started
        if elapsed >= self.budget:
            return None
        ceiling = min(MAX_DELAY, INITIAL_DELAY * (2**self.attempts))
        self.attempts += 1
        # "Full jitter" over the upper half, so clients cut off together don't return together.
        delay = self.rng.uniform(ceiling / 2, ceiling)
        return min(delay, self.budget - elapsed)

    @property
    def remaining(self) -> float:
        """Seconds left in the budget."""
        return max(0.0, self.budget - (time.monotonic() - self.started))
