"""One worker child: its own reactor, the inherited sockets, one session at a time.

Runs in the child, after the fork (the master built nothing here but this
object).  ``run()`` sets the title, installs the epoll reactor, adopts the
listening sockets and serves one connection at a time: while a session is open
the child stops reading every listening socket, so other connections wait in
the kernel backlog for an idle sibling (spec/prototype.md, accept-loop pitfall).

Signals: TERM/INT stop now (an open SMTP session gets 421), HUP/QUIT finish
the open session first.  The handlers only schedule work on the reactor.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import time

from amavisd import log as amavis_log
from amavisd import sockets
from amavisd.config.model import BankView
from amavisd.constants import (
    EXIT_OK,
    ST_ACCEPTED,
    ST_IDLE,
)
from amavisd.lookups import ip_acl_match

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0
#: After TERM, seconds an open session gets to flush its 421 before the child exits.
STOP_GRACE = 2.0


def make_tempdir(tempbase: str, pid: int) -> str:
    """``$TEMPBASE/amavis-YYYYMMDDTHHMMSS-PPPPP-XXXXXXXX``, mode 0750 (protocols.md 3.7)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime())
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    for _ in range(100):
        suffix = "".join(random.choice(alphabet) for _ in range(8))
        path = os.path.join(tempbase, f"amavis-{stamp}-{pid:05d}-{suffix}")
        try:
            os.mkdir(path, 0o750)
        except FileExistsError:
            continue
        return path
    raise OSError(f"cannot create a temporary directory in {tempbase}")


class Child:
    """A worker's whole life: boot, serve sessions one by one, retire."""

    def __init__(self, config, specs, segment, slot: int, program: str, master_pid: int):
        self.config = config
        self.specs = specs
        self.segment = segment
        self.slot = slot
        self.program = program
        self.master_pid = master_pid
        self.connections = 0
        self.tasks = 0
        self.ports: list = []
        self.session = None            # the protocol of the open session, if any
        self.retire = False            # finish the open session, then exit
        self.stopping = False
        self.tempdir = ""
        self.stats = None
        self.reactor = None
        self.pipeline = None

    # ---------------------------------------------------------------- boot
    def run(self) -> int:
        from setproctitle import setproctitle

        self.title = setproctitle
        setproctitle(f"{self.program} (virgin child)")
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a terminal Ctrl-C hits the group
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        amavis_log.after_fork()
        random.seed()
        from twisted.internet import epollreactor

        epollreactor.install()
        from twisted.internet import reactor

        self.reactor = reactor
        self.stats = self.segment.writer(self.slot, os.getpid(),
                                         nanny_details_level=self.config.nanny_details_level)
        self.stats.child_started()
        self.tempdir = make_tempdir(self.config.TEMPBASE, os.getpid())
        from amavisd.pipeline import Pipeline

        self.pipeline = Pipeline(self.config, self.stats, reactor, self.tempdir)
        from amavisd.sql.lookup import activate

        activate(self.config)      # SQL fields answer from this child's config (not a reload's)
        from amavisd.protocols import smtp_cache

        smtp_cache.activate(self.config, reactor)   # outgoing sessions: one cache per child
        self._adopt_ports()
        from twisted.internet.task import LoopingCall

        beat = LoopingCall(self._heartbeat)
        beat.clock = reactor
        beat.start(HEARTBEAT_INTERVAL, now=True)
        reactor.callWhenRunning(self._install_signals)
        self._set_title(f"ch{self.connections}-avail")
        reactor.run(installSignalHandlers=True)
        self._finish()
        return EXIT_OK

    def _install_signals(self) -> None:
        """Replace Twisted's SIGTERM handler, which would abort the open session."""
        reactor = self.reactor
        signal.signal(signal.SIGTERM, lambda s, f: reactor.callFromThread(self.stop_now))
        signal.signal(signal.SIGHUP, lambda s, f: reactor.callFromThread(self.stop_when_idle))
        signal.signal(signal.SIGQUIT, lambda s, f: reactor.callFromThread(self.stop_when_idle))
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _adopt_ports(self) -> None:
        from amavisd.child_session import SessionFactory

        for spec in self.specs:
            factory = SessionFactory(self, spec)
            port = sockets.adopt_port(self.reactor, spec, factory)   # keeps the mode
            port.numberAccepts = 1      # one accept per wake-up: one session per child
            factory.port = port
            self.ports.append(port)
        for spec in self.specs:
            spec.sock.close()           # adoptStreamPort dup()ed the descriptor

    def _heartbeat(self) -> None:
        self.stats.heartbeat()
        if os.getppid() != self.master_pid:
            log.warning("master [%d] went away, exiting", self.master_pid)
            self.stop_now()

    def _set_title(self, what: str) -> None:
        self.title(f"{self.program} ({what})")

    # ---------------------------------------------------------------- sessions
    def accepting(self, on: bool) -> None:
        """Stop or resume reading every listening socket (one session at a time)."""
        for port in self.ports:
            if on:
                port.numberAccepts = 1   # Twisted raises it after each full accept loop
                port.startReading()
            else:
                port.stopReading()

    def session_opened(self, protocol) -> None:
        self.session = protocol
        self.connections += 1
        self.accepting(False)
        self.stats.begin_connection()
        self.stats.set_state(ST_ACCEPTED, None, reset_timestamp=True)
        self._set_title(f"ch{self.connections}-accept")

    def session_closed(self) -> None:
        self.session = None
        amavis_log.set_task_id(None)
        from amavisd.sql.connection import end_of_task

        end_of_task()        # $database_sessions_persistent = 0: close SQL between sessions
        self.stats.set_state(ST_IDLE, None)
        self._set_title(f"ch{self.connections}-avail")
        limit = self.config.max_requests
        if limit and (self.tasks >= limit or self.connections >= limit):
            amavis_log.do_log(2, "Requesting process rundown after %d tasks (and %d sessions)",
                              self.tasks, self.connections)
            self.retire = True
        from amavisd.protocols import smtp_cache

        rundown = smtp_cache.end_of_session(final=self.retire or self.stopping)   # spec 5.6
        if self.retire or self.stopping:        # after the cached sessions' QUIT went out
            rundown.addBoth(lambda _: self.reactor.callLater(0, self._stop_reactor))
        else:
            self.reactor.callLater(0, self.accepting, True)

    def connection_refused(self, port) -> None:
        """After a denied connection Twisted raised numberAccepts; pin it back."""
        self.reactor.callLater(0, setattr, port, "numberAccepts", 1)

    def base_view(self, spec) -> BankView:
        """Base bank plus the interface banks of the socket (protocols.md section 2.2)."""
        view = self.config.view()
        policy = self.config.interface_policy
        if spec.kind == "unix":
            keys = ["SOCK", spec.path]
        else:
            host = f"[{spec.host.lower()}]" if ":" in spec.host else spec.host
            keys = [str(spec.port), f"{host}:{spec.port}"]
        for key in keys:
            bank = policy.get(key)
            if bank:
                for name in str(bank).split(","):
                    view.load(name.strip())
        return view

    def allowed(self, view: BankView, peer_ip: str) -> tuple[bool, str | None]:
        """``@inet_acl`` check of a TCP peer (section 2.3)."""
        result, rule = ip_acl_match(peer_ip, view.inet_acl or [])
        return bool(result), rule

    # ---------------------------------------------------------------- stopping
    def stop_now(self) -> None:
        """TERM: an open SMTP session gets 421, then the child exits."""
        self.stopping = True
        self.accepting(False)
        if self.session is not None and hasattr(self.session, "graceful_shutdown"):
            self.session.graceful_shutdown()
            # session_closed() stops the reactor once the 421 is out; this is the backstop
            self.reactor.callLater(STOP_GRACE, self._stop_reactor)
        else:
            self.reactor.callLater(0, self._stop_reactor)

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def stop_when_idle(self) -> None:
        """HUP/QUIT: exit now if idle, otherwise after the open session."""
        self.retire = True
        self.accepting(False)
        if self.session is None:
            self.reactor.callLater(0, self._stop_reactor)

    def _finish(self) -> None:
        self._set_title(f"ch{self.connections}-finish")
        try:
            self.stats.child_exiting()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
        if self.tempdir and not getattr(self, "preserve_tempdir", False):
            shutil.rmtree(self.tempdir, ignore_errors=True)
