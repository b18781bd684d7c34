"""Failed key attempts, counted per client address: past the limit within a sliding minute,
that address is refused (429 with `Retry-After`) until its oldest failure has aged out, even
with a right key, so guessing cannot continue at full speed."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 60.0


class FailureLimiter:
    def __init__(
        self,
        max_failures: int,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> int | None:
        """Seconds until `client` may try again; None if it is not blocked."""
        failures = self._prune(client)
        if len(failures) < self.max_failures:
            return None
        wait = failures[0] + self.window_s - self._clock()
        return max(1, math.ceil(wait))

    def failed(self, client: str) -> None:
        self._prune(client)
        self._failures.setdefault(client, deque()).append(self._clock())

    def _prune(self, client: str) -> deque[float]:
        """`client`'s failures within the window; an address with none is dropped from the
        table, which so holds only the addresses that failed within the last minute."""
        failures = self._failures.get(client, deque())
        horizon = self._clock() - self.window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            self._failures.pop(client, None)
        return failures
