"""Hot reload: ``PolicyHolder`` serves one policy root and follows its ``CURRENT`` pointer, swapping a new version in
only once it loads and validates."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.routing.encoders import Encoder
from gateway.routing.policy import POINTER, POLICY_JSON, RouterPolicy, load_policy

log = logging.getLogger(__name__)


def pointer_signature(path: str | Path) -> tuple[Any, ...]:
    """Cheap identity of what ``path`` currently points at (stat only): changes when a new version is published."""
    p = Path(path)
    candidates = [p] if p.is_file() else [p / POINTER, p / POLICY_JSON]
    for c in candidates:
        try:
            st = c.stat()
        except FileNotFoundError:
            continue
        return (str(c), st.st_mtime_ns, st.st_size, st.st_ino)
    return (str(p), None)


class PolicyHolder:
    """The serving policy of one chain, following a policy root's ``CURRENT`` pointer.

    ``current()`` is what a request uses from start to end (it keeps its snapshot even if a reload lands mid-request).
    ``maybe_reload()`` stats the pointer at most every ``interval_s``; a changed pointer is loaded and validated off the
    event loop's hot path, and swapped in only when it loads; a failing version is logged and the old one keeps
    serving (it is retried only when the pointer changes again).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        validate: Callable[[RouterPolicy], None] | None = None,
        interval_s: float = 1.0,
    ):
        self.path = Path(path)
        self.validate = validate
        self.interval_s = interval_s
        self._encoders: dict[str, Encoder] = {}
        self._lock = threading.Lock()
        self._signature = pointer_signature(self.path)
        self._policy = self._load()
        self._checked = time.monotonic()
        self._failed: tuple[Any, ...] | None = None
        self.reloads = 0
        self.last_error: str | None = None

    def _load(self) -> RouterPolicy:
        policy = load_policy(self.path, encoders=self._encoders)
        if self.validate is not None:
            self.validate(policy)
        return policy

    def current(self) -> RouterPolicy:
        return self._policy

    def due(self) -> bool:
        return time.monotonic() - self._checked >= self.interval_s

    def maybe_reload(self, *, force: bool = False) -> bool:
        """Reload when the pointer changed. Returns True when a new policy was swapped in. Thread-safe."""
        if not force and not self.due():
            return False
        if not self._lock.acquire(blocking=False):
            return False  # another thread is reloading
        try:
            self._checked = time.monotonic()
            sig = pointer_signature(self.path)
            if sig == self._signature or sig == self._failed:
                return False
            try:
                policy = self._load()
            except Exception as exc:
                self._failed = sig
                self.last_error = str(exc)
                log.error(
                    "router policy %s: new version refused, still serving %s: %s", self.path, self._policy.version, exc
                )
                return False
            old = self._policy.version
            self._policy, self._signature, self._failed, self.last_error = policy, sig, None, None
            self.reloads += 1
            log.info("router policy %s: reloaded %s -> %s", self.path, old, policy.version)
            return True
        finally:
            self._lock.release()
