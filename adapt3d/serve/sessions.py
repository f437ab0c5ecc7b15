"""Leases: one isolated session per client, a capacity limit, and the reaper of idle and dead ones.

A client claims a lease (``/claim``) and sends its token in ``X-Lease-Token`` with every request;
a session is found only by its own token (random, 256 bits), so no client can reach another's.
Two clocks per lease, as the nnInteractive client expects: *seen* (any request, heartbeats
included) and *active* (a real action). A lease is reaped when it was not seen for
``liveness_timeout`` seconds (a crashed client) or not active for ``idle_timeout``. Unknown,
released or reaped tokens are answered 410 (the client's ``SessionExpiredError``), a claim beyond
``max_sessions`` 503 (``ServerAtCapacityError``).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from adapt3d.serve.interactive import InteractiveState
from adapt3d.serve.protocol import ProtocolError

log = logging.getLogger(__name__)


@dataclass
class Lease:
    """A claimed session: its state, the lock that serialises its requests, and its clocks."""

    token: str
    created: float
    seen: float
    active: float
    state: InteractiveState = field(default_factory=InteractiveState)
    lock: threading.Lock = field(default_factory=threading.Lock)


class LeaseRegistry:
    """Thread-safe map of lease tokens to sessions."""

    def __init__(
        self,
        max_sessions: int = 4,
        idle_timeout: float = 600.0,
        liveness_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = int(max_sessions)
        self.idle_timeout = float(idle_timeout)
        self.liveness_timeout = float(liveness_timeout)
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._mu = threading.Lock()

    def __len__(self) -> int:
        with self._mu:
            return len(self._leases)

    def claim(self) -> Lease:
        """A new lease; 503 when ``max_sessions`` are held."""
        with self._mu:
            if len(self._leases) >= self.max_sessions:
                raise ProtocolError(503, f"server is at capacity ({self.max_sessions} sessions)")
            now = self._clock()
            lease = Lease(secrets.token_urlsafe(32), now, now, now)
            self._leases[lease.token] = lease
        log.info("claimed a session (%d/%d)", len(self), self.max_sessions)
        return lease

    def _find(self, token: str | None) -> Lease:
        if not token:
            raise ProtocolError(410, "lease token missing (claim a session first)")
        with self._mu:
            lease = self._leases.get(token)
        if lease is None:
            raise ProtocolError(410, "lease expired or unknown")
        return lease

    def get(self, token: str | None, *, active: bool) -> Lease:
        """The lease of ``token``, marked seen (and active when the request is a real action)."""
        lease = self._find(token)
        now = self._clock()
        lease.seen = now
        if active:
            lease.active = now
        return lease

    def peek(self, token: str | None) -> Lease:
        """The lease of ``token`` without touching its clocks."""
        return self._find(token)

    def release(self, token: str | None) -> bool:
        """Drop a lease (idempotent); whether one was dropped."""
        with self._mu:
            lease = self._leases.pop(token or "", None)
        if lease is not None:
            log.info("released a session (%d/%d)", len(self), self.max_sessions)
        return lease is not None

    def remaining(self, lease: Lease) -> float:
        """Seconds until ``lease`` is reaped as idle."""
        return max(0.0, self.idle_timeout - (self._clock() - lease.active))

    def sweep(self) -> list[str]:
        """Reap dead and idle leases; the reasons, one per reaped lease."""
        now, reaped = self._clock(), []
        with self._mu:
            for token, lease in list(self._leases.items()):
                if now - lease.seen > self.liveness_timeout:
                    reaped.append("dead")
                elif now - lease.active > self.idle_timeout:
                    reaped.append("idle")
                else:
                    continue
                del self._leases[token]
        for reason in reaped:
            log.info("reaped a %s session", reason)
        return reaped

    def clear(self) -> None:
        with self._mu:
            self._leases.clear()


class Reaper:
    """A daemon thread that sweeps a registry every ``interval`` seconds until stopped."""

    def __init__(self, registry: LeaseRegistry, interval: float) -> None:
        self.registry, self.interval = registry, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="adapt3d-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.registry.sweep()
            except Exception:  # never let the reaper die
                log.exception("lease sweep failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
