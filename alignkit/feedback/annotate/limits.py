"""Request-rate limits for the annotation app: token buckets in a bounded, least-recently-used table.

Two tables guard the app (see `create_app`): one keyed by bearer token (a SHA-256 of it), one keyed
by client address. A token is charged to the address table until it has once authenticated; after
that only its own bucket counts, so many annotators behind one address (a NAT, a proxy) never slow
each other, while floods without a token or with made-up tokens are limited per address.

Each table holds at most `max_keys` buckets; adding one more drops the least recently used. A
dropped bucket comes back full, which only a key idle through `max_keys` newer ones can notice.
Tokens that authenticated are remembered in a separate set of at most `max_keys`, which only holders
of real tokens can add to, so a flood of made-up tokens cannot push an annotator back under its
address's limit. Memory is bounded whatever clients send: per table, at most `max_keys` buckets
(a short string and two numbers) and `max_keys` trusted keys.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable


class RateLimiter:
    """Token buckets keyed by a string: `rate` requests a second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic):
        if not (rate > 0 and burst >= 1 and max_keys >= 1):
            raise ValueError(f"rate must be > 0, burst and max_keys >= 1 (got {rate}, {burst}, {max_keys})")
        self.rate, self.burst, self.max_keys, self.clock = float(rate), int(burst), int(max_keys), clock
        self.buckets: OrderedDict[str, list] = OrderedDict()  # key -> [requests left, last refill], stalest first
        self.trusted_keys: OrderedDict[str, None] = OrderedDict()  # keys that authenticated, stalest first

    def __len__(self) -> int:
        return len(self.buckets)

    def retry_after(self, key: str) -> float:
        """0 if the request may go now (and is counted), else the seconds to wait."""
        now = self.clock()
        bucket = _touch(self.buckets, key, lambda: [float(self.burst), now], self.max_keys)
        left = min(float(self.burst), bucket[0] + max(0.0, now - bucket[1]) * self.rate)
        bucket[1] = now
        if left < 1:
            bucket[0] = left
            return (1 - left) / self.rate
        bucket[0] = left - 1
        return 0.0

    def trusted(self, key: str) -> bool:
        return key in self.trusted_keys

    def trust(self, key: str) -> None:
        """Remembers `key` (a token that authenticated), so that its address is no longer charged for it."""
        _touch(self.trusted_keys, key, lambda: None, self.max_keys)


def _touch(table: OrderedDict, key: str, new: Callable, max_keys: int):
    """table[key], made the most recent (created with `new()` if absent, dropping the stalest beyond `max_keys`)."""
    if key in table:
        table.move_to_end(key)
        return table[key]
    value = table[key] = new()
    while len(table) > max_keys:
        table.popitem(last=False)
    return value
