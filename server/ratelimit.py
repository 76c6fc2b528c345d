"""Token-bucket rate limits for what one client may send."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Allows ``rate`` units per second on average and bursts up to ``capacity``.

    Not thread-safe on purpose: each bucket belongs to one session and is used on that connection's
    reader thread only (Socket.IO handlers run in order there).
    """

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate, self.capacity, self._clock = rate, capacity, clock
        self._tokens = capacity
        self._last = clock()

    def take(self, amount: float = 1.0) -> bool:
        """Spend ``amount`` if available; False means the caller must drop the input."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True
