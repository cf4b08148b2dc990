"""Outgoing SMTP/LMTP connection cache of one child (spec/protocols.md 5.6).

Why: every forwarded message (and every notification or DSN) used to pay for a
TCP connect, the greeting and EHLO.  A child serves one inbound session at a
time, so one idle session per destination is all it can use.

* Sessions are keyed by ``proto:[host]:port`` (``lmtp:/path`` for Unix sockets);
  at most one idle session per key.  A session in use is not in the cache: a
  second transaction to the same destination at the same time opens its own
  connection, and whichever comes back second is QUIT.
* On-demand switch (``$smtp_connection_cache_on_demand``): at each new task the
  time since the previous task's last transaction is compared: under 5 s caching
  turns on, 15 s or more turns it off, in between it stays as it was.  It starts
  as ``$smtp_connection_cache_enable``; without on-demand that value is fixed.
* A session idle for 18 s or less is used as is; an older one is probed with
  NOOP (15 s) and replaced by a new connection when the probe fails.
* ``rundown`` runs after each inbound session: sessions idle 30 s or more, older
  than 60 s, or all of them when caching is off, get QUIT.  In addition (not in
  the Perl daemon) an idle session is QUIT once it has been idle 30 s, so a child
  waiting for work does not hold the back end's smtpd processes.

The cache lives in the child only: ``activate`` is called after the fork, and
``forward`` asks ``current()``; without activation (tests, tools) every
transaction has its own connection, as before.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer

from amavisd import stats
from amavisd.protocols.smtp_client import ForwardClient

log = logging.getLogger(__name__)

#: Spec 5.6: reuse as is up to this idle time, else probe with NOOP.
REUSE_AS_IS = 18.0
#: Spec 5.6: rundown QUITs sessions idle this long ...
IDLE_LIMIT = 30.0
#: ... or older than this.
AGE_LIMIT = 60.0
#: On-demand switch: a task within this many seconds of the previous one turns caching on,
ON_DEMAND_ON = 5.0
#: and one this many seconds or more after it turns caching off.
ON_DEMAND_OFF = 15.0


class SessionCache:
    """Idle sessions by destination, the on-demand switch and the rundown rules."""

    def __init__(self, clock: Any, *, enable: bool = True, on_demand: bool = True):
        self.clock = clock
        self.on_demand = on_demand
        self.caching = enable
        self._sessions: dict[str, ForwardClient] = {}
        self._timers: dict[str, Any] = {}
        self._task: str | None = None
        self._last_end: float | None = None

    # -- the switch --------------------------------------------------------

    def begin_task(self, task_id: str) -> bool:
        """Called by every dispatch; the first one of a task applies the switch.

        Returns whether this task's sessions are kept.  "The previous task ended"
        is taken as the end of its last transaction: the few milliseconds of
        logging after it do not matter against 5 and 15 s.
        """
        if task_id != self._task:
            self._task = task_id
            if self.on_demand and self._last_end is not None:
                idle = self._now() - self._last_end
                if idle < ON_DEMAND_ON:
                    self.caching = True
                elif idle >= ON_DEMAND_OFF:
                    self.caching = False
        return self.caching

    def transaction_ended(self) -> None:
        self._last_end = self._now()

    # -- taking and giving back ------------------------------------------------

    def checkout(self, key: str, session_key: tuple[str, str, str]
                 ) -> defer.Deferred[ForwardClient | None]:
        """An idle session for ``key`` that answers, or None (connect a new one)."""
        session = self._sessions.pop(key, None)
        self._cancel_timer(key)
        if session is None:
            return defer.succeed(None)
        if not session.reusable:
            return defer.succeed(None)
        if session.session_key != session_key:      # other EHLO name or TLS settings
            self._quit(session)
            return defer.succeed(None)
        if session.idle_since is not None and self._now() - session.idle_since <= REUSE_AS_IS:
            stats.count("OutConnReuseRecent")
            return defer.succeed(session)

        def probed(ok: bool) -> ForwardClient | None:
            if ok and session.reusable:
                stats.count("OutConnReuseRefreshed")
                return session
            stats.count("OutConnReuseFail")
            return None

        return session.probe().addCallback(probed)

    def checkin(self, key: str, session: ForwardClient) -> None:
        """After a kept transaction: cache the session once it is IDLE.

        When an RSET reply is still due, the session calls ``session_idle`` itself.
        """
        session.cache_key = key
        if session.reusable:
            self.session_idle(session)
        elif session.state != "QUIT" and not session.closed.called:
            session.owner = self

    def session_idle(self, session: ForwardClient) -> None:
        """The session finished its transaction cleanly: keep it, or QUIT it."""
        key = session.cache_key or session.mta_id
        session.owner = self
        current = self._sessions.get(key)
        if current is session:
            return
        if not self.caching or current is not None:
            self._quit(session)
            return
        self._sessions[key] = session
        self._cancel_timer(key)
        self._timers[key] = self.clock.callLater(IDLE_LIMIT, self._expire, key, session)

    def session_lost(self, session: ForwardClient) -> None:
        """The server closed an idle session (or it broke): forget it."""
        for key, cached in list(self._sessions.items()):
            if cached is session:
                del self._sessions[key]
                self._cancel_timer(key)
                log.debug("cached session to %s went away", key)

    # -- rundown ---------------------------------------------------------------

    def rundown(self, everything: bool = False) -> int:
        """After an inbound session: QUIT stale sessions (spec 5.6); returns how many."""
        now = self._now()
        closed = 0
        for key, session in list(self._sessions.items()):
            idle = now - (now if session.idle_since is None else session.idle_since)
            age = now - (now if session.created is None else session.created)
            if everything or not self.caching or idle >= IDLE_LIMIT or age >= AGE_LIMIT:
                del self._sessions[key]
                self._cancel_timer(key)
                self._quit(session)
                closed += 1
        return closed

    def close_all(self, timeout: float = 1.0) -> defer.Deferred[None]:
        """The child is exiting: QUIT every session; fires once they are closed (or after
        ``timeout``), so the reactor stops only after the QUITs went out."""
        sessions = list(self._sessions.values())
        for key in list(self._sessions):
            self._cancel_timer(key)
        self._sessions.clear()
        for session in sessions:
            self._quit(session, wait_reply=False)
        waiting = [s.closed for s in sessions if not s.closed.called]
        if not waiting:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        timer = self.clock.callLater(timeout, lambda: done.called or done.callback(None))

        def all_closed(_: Any) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        defer.DeferredList(waiting).addCallback(all_closed)
        return done

    def _expire(self, key: str, session: ForwardClient) -> None:
        self._timers.pop(key, None)
        if self._sessions.get(key) is session:
            del self._sessions[key]
            self._quit(session)

    def sessions(self) -> dict[str, ForwardClient]:
        """The idle sessions by key (for tests and debugging)."""
        return dict(self._sessions)

    # -- helpers ---------------------------------------------------------------

    def _quit(self, session: ForwardClient, wait_reply: bool = True) -> None:
        if session.reusable:
            stats.count("OutConnQuit")
        session.owner = None
        session.close(wait_reply)

    def _cancel_timer(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _now(self) -> float:
        return float(self.clock.seconds())


# --------------------------------------------------------------------------- per process

_cache: SessionCache | None = None


def activate(config: Any, clock: Any) -> SessionCache:
    """In the child after the fork: the cache ``forward`` will use (global settings)."""
    global _cache
    _cache = SessionCache(clock, enable=bool(getattr(config, "smtp_connection_cache_enable", 1)),
                          on_demand=bool(getattr(config, "smtp_connection_cache_on_demand", 1)))
    return _cache


def current() -> SessionCache | None:
    return _cache


def deactivate() -> None:
    """QUIT every cached session and stop caching (tests)."""
    global _cache
    if _cache is not None:
        _cache.rundown(everything=True)
    _cache = None


def end_of_session(final: bool = False) -> defer.Deferred[None]:
    """After each inbound session (``rundown_stale_sessions``).

    ``final``: the child exits next; every session gets QUIT (the Perl daemon just
    drops them) and the Deferred fires once they are closed, at most 1 s later.
    """
    if _cache is None:
        return defer.succeed(None)
    if final:
        return _cache.close_all()
    _cache.rundown()
    return defer.succeed(None)
