"""The pre-fork master: keeps the pool of children, handles signals, never serves mail.

Runs in the master after privileges are dropped.  It has no event loop of its
own: signal handlers only enqueue the signal (STYLE.md section 3), and
``serve()`` drains that queue once a second, reaps children, kills stale ones and
tops the pool up.  The master never imports ``twisted.internet.reactor``: each
child installs its own reactor after the fork (DESIGN.md, fork safety).

Signals (spec/protocols.md section 1.5): TERM/INT stop now (open sessions get
421), QUIT lets sessions finish, HUP re-reads the config and re-execs keeping the
sockets and the pid, TTIN/TTOU grow/shrink the pool, CHLD wakes the loop.
"""

from __future__ import annotations

import enum
import glob
import logging
import os
import queue
import shutil
import signal
import sys
import time
from dataclasses import dataclass

from amavisd import sockets
from amavisd.constants import EXIT_BOOT_FAILED, EXIT_FAILURE, EXIT_OK
from amavisd.log import do_log

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)
ENV_RETIRING = "AMAVISD_RETIRING_CHILDREN"
#: After TERM, children still alive after this many seconds get SIGKILL.
TERM_GRACE = 5.0
#: A slot whose child crashed is refilled only after this pause (no hot loop).
RESPAWN_PAUSE = 1.0
#: This many boot failures in a row, with no child ever serving, halt the master.
MAX_BOOT_FAILURES = 5


class Mood(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"        # TERM: children told to stop now
    QUITTING = "quitting"        # QUIT: children finish their session


@dataclass
class Worker:
    """A child as the master sees it."""

    pid: int
    slot: int
    started: float
    retiring: bool = False       # told to go (HUP, TTOU, reload); not refilled
    killed: bool = False


@dataclass
class SlotMemo:
    last_exit: float = 0.0
    crashed: bool = False


def preimport(config=None) -> None:
    """Import what children need before forking, so a fresh child is ready in milliseconds.

    Twisted's modules are fine to import here; only the reactor must not be
    installed in the master (spec/prototype.md, pitfalls).  Modules of features the
    config leaves off are not imported (a child's memory counts every page it
    inherits): python-dkim and dnspython (~4 MB) only when DKIM signing or
    verification is on, globally or in some policy bank.
    """
    import email.parser
    import email.policy  # noqa: F401

    import setproctitle  # noqa: F401
    import twisted.internet.epollreactor
    import twisted.internet.protocol
    import twisted.internet.ssl  # noqa: F401

    import amavisd.actions.forward
    import amavisd.child
    import amavisd.pipeline
    import amavisd.protocols.smtp_server
    if config is None or _dkim_in_use(config):
        import dkim.canonicalization
        import dkim.crypto
        import dkim.util  # noqa: F401

        import amavisd.dkim_dns  # noqa: F401
    from amavisd.checks.filetype import default_typer

    default_typer().preload()          # libmagic and magic.mgc: once, not per child
    assert "twisted.internet.reactor" not in sys.modules, "reactor imported in the master"


def _dkim_in_use(config) -> bool:
    """DKIM signing or verification on in the base settings or in any policy bank."""
    names = ("enable_dkim_verification", "enable_dkim_signing")
    if any(getattr(config, name, None) for name in names):
        return True
    banks = getattr(config, "policy_bank", None) or {}
    return any(isinstance(bank, dict) and any(bank.get(name) for name in names)
               for bank in banks.values())


class Master:
    """The pool keeper.  Built after binding and the privilege drop."""

    def __init__(self, config, specs, segment, program: str, opts, pid_file: str | None,
                 log_handler) -> None:
        self.config = config
        self.specs = specs
        self.segment = segment
        self.program = program
        self.opts = opts
        self.pid_file = pid_file
        self.log_handler = log_handler
        self.max_servers = config.max_servers
        self.workers: dict[int, Worker] = {}
        self.memos: dict[int, SlotMemo] = {}
        self.mood = Mood.RUNNING
        self.stop_deadline = 0.0
        self.boot_failures = 0
        self.ever_served = False
        self._pending: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._handlers = {
            signal.SIGTERM: self.on_term,
            signal.SIGINT: self.on_term,
            signal.SIGQUIT: self.on_quit,
            signal.SIGHUP: self.on_hup,
            signal.SIGTTIN: self.on_ttin,
            signal.SIGTTOU: self.on_ttou,
            signal.SIGCHLD: lambda: None,
        }

    # ---------------------------------------------------------------- signals
    def _on_signal(self, signum: int, frame) -> None:
        self._pending.put_nowait(signum)          # no logging, no I/O, nothing else

    def _install_signals(self) -> None:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)   # blocked in daemon.run

    def _drain(self, timeout: float) -> list[int]:
        got: list[int] = []
        try:
            got.append(self._pending.get(timeout=timeout))
            while True:
                got.append(self._pending.get_nowait())
        except queue.Empty:
            pass
        return got

    # ---------------------------------------------------------------- main loop
    def serve(self) -> int:
        """Run until TERM/QUIT and every child is gone; returns the exit code."""
        from setproctitle import setproctitle

        setproctitle(f"{self.program} (master)")
        self._install_signals()
        self._adopt_retiring()
        code = EXIT_OK
        try:
            while True:
                for signum in self._drain(timeout=1.0):
                    self._handlers[signum]()
                self._reap()
                if self.mood is Mood.RUNNING:
                    self._kill_stale()
                    if self.boot_failures >= MAX_BOOT_FAILURES and not self.ever_served:
                        log.error("children fail to start, halting (see the log above)")
                        self._begin_stop(Mood.STOPPING)
                        code = EXIT_FAILURE
                        continue
                    self._fill_pool()
                else:
                    if not self.workers:
                        break
                    if self.mood is Mood.STOPPING and time.monotonic() > self.stop_deadline:
                        self._kill_all(signal.SIGKILL)
        finally:
            self._shutdown_files()
        log.info("master exiting (%s)", self.mood.value)
        return code

    # ---------------------------------------------------------------- handlers
    def on_term(self) -> None:
        do_log(0, "Server closing! (TERM)")
        self._begin_stop(Mood.STOPPING)

    def on_quit(self) -> None:
        do_log(0, "Server closing gracefully! (QUIT)")
        self._begin_stop(Mood.QUITTING)

    def _begin_stop(self, mood: Mood) -> None:
        if self.mood is Mood.STOPPING:
            return
        self.mood = mood
        self.stop_deadline = time.monotonic() + TERM_GRACE
        self._kill_all(signal.SIGTERM if mood is Mood.STOPPING else signal.SIGHUP)

    def on_ttin(self) -> None:
        self.max_servers += 1
        log.info("TTIN: max_servers raised to %d", self.max_servers)

    def on_ttou(self) -> None:
        if self.max_servers <= 1:
            return
        self.max_servers -= 1
        log.info("TTOU: max_servers lowered to %d", self.max_servers)
        active = [w for w in self.workers.values() if not w.retiring]
        if len(active) > self.max_servers:
            self._retire(max(active, key=lambda w: w.slot))

    def on_hup(self) -> None:
        """Check the new config; if it loads, re-exec with the sockets (section 1.5)."""
        from amavisd.config.load import load_config
        from amavisd.errors import AmavisError

        try:
            new = load_config(self.opts)
        except AmavisError as exc:
            log.error("Rejecting reload, some config files unreadable or erroneous: %s", exc)
            return
        if [s.label for s in sockets.listen_specs(new)] != [s.label for s in self.specs]:
            log.error("Rejecting reload: the list of sockets changed; use restart")
            return
        for worker in self.workers.values():
            self._retire(worker)
        env = dict(os.environ)
        env[sockets.ENV_BOUND] = sockets.export_for_exec(self.specs)
        env[ENV_RETIRING] = ";".join(f"{w.pid}:{w.slot}" for w in self.workers.values())
        from amavisd.daemon import ENV_WARM

        env[ENV_WARM] = str(os.getpid())
        argv = [sys.executable, "-m", "amavisd", *self.opts.argv]
        do_log(0, "warm restart on HUP [%d]: %s, sockets: %s", os.getpid(),
               " ".join(argv[2:]), env[sockets.ENV_BOUND])
        self.segment.close()
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)    # until the new image is up
        os.execve(sys.executable, argv, env)

    # ---------------------------------------------------------------- pool
    def _adopt_retiring(self) -> None:
        """After a HUP re-exec: the old children are still ours; let them finish."""
        value = os.environ.pop(ENV_RETIRING, "")
        for item in filter(None, value.split(";")):
            pid, slot = (int(x) for x in item.split(":"))
            self.workers[pid] = Worker(pid, slot, time.monotonic(), retiring=True)

    def _free_slot(self) -> int | None:
        used = {w.slot for w in self.workers.values()}
        now = time.monotonic()
        for slot in range(self.segment.nslots):
            if slot in used:
                continue
            memo = self.memos.get(slot)
            if memo and memo.crashed and now - memo.last_exit < RESPAWN_PAUSE:
                continue
            return slot
        return None

    def _wanted(self) -> int:
        """How many serving children the pool should have now."""
        active = [w for w in self.workers.values() if not w.retiring]
        if self.config.min_servers is None:
            return self.max_servers
        idle = sum(1 for w in active if not self.segment.slot_info(w.slot).busy)
        low = max(self.config.min_servers, 1)
        spare_min = self.config.min_spare_servers
        spare_max = min(self.config.max_spare_servers, max(self.max_servers - 1, 1))
        want = len(active)
        if idle < spare_min:
            want += spare_min - idle
        elif idle > spare_max and len(active) > low:
            for worker in active:
                if not self.segment.slot_info(worker.slot).busy and len(active) > low:
                    self._retire(worker)
                    break
            want = len(active) - 1
        return max(low, min(want, self.max_servers))

    def _fill_pool(self) -> None:
        active = sum(1 for w in self.workers.values() if not w.retiring)
        for _ in range(self._wanted() - active):
            slot = self._free_slot()
            if slot is None:
                return
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        self.segment.claim(slot, 0)
        pid = os.fork()
        if pid == 0:                                   # the child
            code = EXIT_BOOT_FAILED
            try:
                code = self._child_main(slot)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
            except BaseException:
                log.exception("child in slot %d failed", slot)
            finally:
                logging.shutdown()
                os._exit(code)
        self.segment.claim(slot, pid)
        self.workers[pid] = Worker(pid, slot, time.monotonic())

    def _child_main(self, slot: int) -> int:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        from amavisd.child import Child

        child = Child(self.config, self.specs, self.segment, slot, self.program,
                      master_pid=os.getppid())
        return child.run()

    def _retire(self, worker: Worker) -> None:
        worker.retiring = True
        self._send(worker.pid, signal.SIGHUP)

    def _kill_all(self, signum: int) -> None:
        for worker in list(self.workers.values()):
            self._send(worker.pid, signum)

    @staticmethod
    def _send(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue                               # not ours (e.g. a pipe: helper)
            self._child_gone(worker, status)

    def _child_gone(self, worker: Worker, status: int) -> None:
        memo = self.memos.setdefault(worker.slot, SlotMemo())
        memo.last_exit = time.monotonic()
        info = self.segment.slot_info(worker.slot)
        if info.connections:
            self.ever_served = True
        self.segment.fold(worker.slot)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            # a signal we did not send while running is a crash: pause before refilling
            memo.crashed = self.mood is Mood.RUNNING and not worker.retiring
            hint = " Perhaps out of memory?" if sig == signal.SIGKILL and not worker.killed else ""
            log.warning("child [%d] in slot %d ended by signal %d.%s", worker.pid,
                        worker.slot, sig, hint)
            self._leftover_tempdir(worker.pid)
            return
        code = os.WEXITSTATUS(status)
        memo.crashed = code != EXIT_OK
        if code == EXIT_BOOT_FAILED:
            self.boot_failures += 1
            log.error("child [%d] could not start (exit %d)", worker.pid, code)
        elif code != EXIT_OK:
            log.warning("child [%d] exited with status %d", worker.pid, code)
            self._leftover_tempdir(worker.pid)
        else:
            self.boot_failures = 0
            log.debug("child [%d] finished", worker.pid)

    def _leftover_tempdir(self, pid: int) -> None:
        """A crashed child's temp folder is evidence (section 6.5), or removed if not wanted."""
        pattern = os.path.join(self.config.TEMPBASE, f"amavis-*-{pid:05d}-*")
        for path in glob.glob(pattern):
            if self.config.allow_preserving_evidence:
                log.warning("PRESERVING EVIDENCE in %s", path)
            else:
                shutil.rmtree(path, ignore_errors=True)

    def _kill_stale(self) -> None:
        """A child whose heartbeat is older than $child_timeout is stuck: SIGKILL it.

        The child beats every second from its reactor loop, even while a session is
        open, so a stale beat means the loop itself is stuck (a scanner call that never
        returns, a bug); a margin of up to 30 s keeps a slow disk from killing it."""
        timeout = float(self.config.child_timeout)
        limit = timeout + min(30.0, timeout)
        now = time.time()
        for worker in list(self.workers.values()):
            info = self.segment.slot_info(worker.slot)
            if info.pid != worker.pid or not info.heartbeat or worker.killed:
                continue
            if now - info.heartbeat > limit:
                log.error("child [%d] heartbeat is %.0f s old, killing it", worker.pid,
                          now - info.heartbeat)
                worker.killed = True
                self._send(worker.pid, signal.SIGKILL)

    # ---------------------------------------------------------------- exit
    def _shutdown_files(self) -> None:
        for spec in self.specs:
            sockets.remove_unix_file(spec)        # only if it is still the one we bound
        if self.pid_file:
            try:
                os.unlink(self.pid_file)
            except OSError as exc:
                log.info("could not remove pid file %s: %s", self.pid_file, exc.strerror)
        self.segment.close()
