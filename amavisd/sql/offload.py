# tests: t/sql/test_storage.py
"""Database calls off the reactor thread, bounded by the message's deadline.

Runs in the child.  A psycopg call blocks: in the reactor thread a slow or hung
database would also stop the heartbeat (the master would kill the child as
hung), the TERM handler's 421 and every timer, and nothing could cut the wait
short.  In a worker thread of the reactor's pool the reactor stays live and the
Deferred gives up at the deadline (``$child_timeout`` from the start of the
message), so the session is never held past it.  The thread itself cannot be
interrupted: a call that gave up finishes (or fails) on its own later, and the
``Database`` lock keeps the next call from sharing its connection meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads


def run_blocking(reactor: Any, deadline: float, fn: Callable[..., Any],
                 *args: Any) -> defer.Deferred:
    """``fn(*args)`` in the reactor's thread pool; fails with ``defer.TimeoutError``
    (or ``CancelledError``) once ``deadline`` (a ``time.time()`` value) has passed.

    Without a reactor that has a thread pool (unit tests) it runs here and now.
    """
    if reactor is None or not hasattr(reactor, "getThreadPool"):
        return defer.maybeDeferred(fn, *args)
    d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)
    d.addTimeout(max(0.5, deadline - time.time()), reactor)
    return d
