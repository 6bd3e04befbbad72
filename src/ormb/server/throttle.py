"""Failed logins, counted per user name and per client address: password guessing gets a clear 429.

A key (a user name, or a client address: an IPv4 address or an IPv6 /64) is *limited* once it
has ``limit`` failures within the last ``window`` seconds; it is free again when the oldest of
them is older than that.  A limited key is refused before its password is checked (no bcrypt,
no answer about the password), so guessing stops, and the refusal says when to try again.

>>> throttle = LoginThrottle()
>>> throttle.check("alice", "192.0.2.7")     # raises LoginRefused(retry_after) when limited
>>> throttle.failed("alice", "192.0.2.7")    # after a wrong password (or an unknown user)

The counts live in the worker process (with ``--workers N`` a guesser gets N times the
attempts) and are bounded in memory: at most ``max_keys`` keys, the stalest dropped first.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

FAILURES_PER_USER = 10
FAILURES_PER_ADDRESS = 30
WINDOW = 300.0  # seconds


class LoginRefused(Exception):
    """Too many failed logins for this user or from this address."""

    def __init__(self, retry_after: int, reason: str) -> None:
        super().__init__(f"too many failed logins {reason}; try again in {retry_after} s")
        self.retry_after = retry_after


def address_key(address: str) -> str:
    """The unit an address is counted by: the address itself (IPv4), its /64 (IPv6: one host has many)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class LoginThrottle:
    per_user: int = FAILURES_PER_USER
    per_address: int = FAILURES_PER_ADDRESS
    window: float = WINDOW
    max_keys: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _failures: dict[tuple[str, str], deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, user: str, address: str) -> None:
        """Raise :class:`LoginRefused` when ``user`` or ``address`` is limited."""
        now = self.clock()
        with self._lock:
            for key, limit, reason in ((("user", user), self.per_user, "for this user"),
                                       (("address", address_key(address)), self.per_address, "from this address")):
                times = self._failures.get(key)
                if times is not None and len(times) >= limit and times[0] > now - self.window:
                    raise LoginRefused(max(1, math.ceil(times[0] + self.window - now)), reason)

    def failed(self, user: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            for key, limit in ((("user", user), self.per_user), (("address", address_key(address)), self.per_address)):
                times = self._failures.pop(key, None) or deque(maxlen=limit)
                times.append(now)
                self._failures[key] = times  # re-inserted: the dict's order is the order of last failure
            if len(self._failures) > self.max_keys:
                self._prune(now)

    def succeeded(self, user: str) -> None:
        """The user's own login clears the user's count (not the address's)."""
        with self._lock:
            self._failures.pop(("user", user), None)

    def _prune(self, now: float) -> None:
        for key in [k for k, times in self._failures.items() if times[-1] <= now - self.window]:
            del self._failures[key]
        while len(self._failures) > self.max_keys * 3 // 4:  # still full: forget the stalest
            del self._failures[next(iter(self._failures))]
