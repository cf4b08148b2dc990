"""amavisd-nanny: poll the stats segment, draw each child's age bar, kill stuck ones.

Options, streams and line formats follow spec/monitoring.md section 3: the header and
one blank line per poll go to stdout, every per-process line and kill message to
stderr (3.1).  It reads our stats segment (amavisd/stats.py) instead of nanny.db, so
it needs only read access: a dead child's slot is freed by the master's fold, not by
the nanny, and a "went away" slot is just not shown again.

Beyond the Perl tool (docs/monitoring.md, "amavisd-nanny"): ``--busy-ttl`` and
``--idle-ttl`` replace the hard-coded TTLs, ``--no-kill`` only reports children over
their TTL, every kill is announced before the signal is sent, and ``-v`` appends each
busy child's mail_id, state letter and time in that state to its line.  A SIGTERM is
followed by a SIGCONT, as systemd does, so a stopped (SIGSTOPped, traced) child gets
it at once instead of when someone continues it; the SIGKILL follow-up stays as in
the Perl tool.
"""

from __future__ import annotations

import getopt
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, TextIO

from amavisd.constants import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, NANNY_LEGEND
from amavisd.stats import DEFAULT_FILENAME, SlotInfo, StatsSegment, poll_segment

PROG = "amavisd-nanny"
USAGE = f"Usage: {PROG} [-c <count>] [-w <wait-interval>]"
DEFAULT_DB_HOME = "/var/lib/amavis/db"      # Debian's $db_home (monitoring.md, Paths)
DEFAULT_WAIT = 2.0                          # seconds between polls (3.1)

HEADER = ("process-id task-id     elapsed in    elapsed-bar (dots indicate idle)\n"
          "           or state   idle or busy\n")

#: 35-character bar templates, a ':' every 10 s (3.2).
IDLE_TEMPLATE = ".........:.........:.........:....."
BUSY_TEMPLATE = "=========:=========:=========:====="
BAR_WIDTH = len(BUSY_TEMPLATE)

#: Default time-to-live of an entry, measured from its nanny timestamp (3.3);
#: the Perl tool hard-codes them, we take --idle-ttl / --busy-ttl.
TTL_IDLE = 3 * 3600
TTL_BUSY = 10 * 60

#: Kill loop (3.3): first pause, later pauses, and iterations before SIGKILL.
KILL_FIRST_PAUSE = 1.0
KILL_PAUSE = 2.0
KILL_GRACE_ROUNDS = 30


def format_age(age: float) -> str:
    """Whole seconds as ``  h:mm:ss`` under a day, else ``<N>dh:mm:ss`` (3.2)."""
    secs = max(0, int(age))
    days, secs = divmod(secs, 86400)
    hours, secs = divmod(secs, 3600)
    mins, secs = divmod(secs, 60)
    prefix = f"{days}d" if days else "  "
    return f"{prefix}{hours}:{mins:02d}:{secs:02d}"


def idle_bar(age: float) -> str:
    """The first ``int(age)`` characters of the idle template, at most 35 (3.2)."""
    return IDLE_TEMPLATE[:max(0, min(BAR_WIDTH, int(age)))]


def advance_history(history: str, age: float, letter: str) -> str:
    """Extend a busy child's state history for one poll (3.2 steps 2 and 3)."""
    length = max(1, int(age + 0.5))
    if len(history) < length:
        history += (history[-1] if history else "=") * (length - len(history))
    return history[:length - 1] + letter + history[length:]


def busy_bar(history: str) -> str:
    """Overlay the history on the busy template, keeping the ':' ticks (3.2 4-5)."""
    if len(history) > BAR_WIDTH:
        history = history[:BAR_WIDTH - 2] + history[-1] + ">"
    return "".join(h if t == "=" and h != " " else t
                   for t, h in zip(BUSY_TEMPLATE[:len(history)], history, strict=True))


def pid_alive(pid: int) -> bool:
    """``kill 0``: only ESRCH means the process is gone (3.2 "went away")."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def legend() -> str:
    """The states legend printed to stdout before a usage error (3.1)."""
    lines = ["States legend:"]
    lines += [f"  {letter:<2} {text}" for letter, text in NANNY_LEGEND]
    return "\n".join(lines) + "\n\n"


class Nanny:
    """One nanny run: the per-PID state history lives here, across polls (3.2).

    Clock, sleep, liveness check and kill are parameters so tests can run it
    without real time or real processes.
    """

    def __init__(self, path: str, out: TextIO, err: TextIO, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 alive: Callable[[int], bool] = pid_alive,
                 kill: Callable[[int, int], None] = os.kill,
                 do_kill: bool = True, busy_ttl: float = TTL_BUSY,
                 idle_ttl: float = TTL_IDLE, verbose: bool = False) -> None:
        self.path = path
        self.do_kill = do_kill
        self.busy_ttl = busy_ttl
        self.idle_ttl = idle_ttl
        self.verbose = verbose
        self.out = out
        self.err = err
        self.clock = clock
        self.sleep = sleep
        self.alive = alive
        self.kill = kill
        #: pid -> (timestamp the history belongs to, history string)
        self._history: dict[int, tuple[float, str]] = {}
        #: (slot index, pid, timestamp) already reported as "went away"
        self._gone: set[tuple[int, int, float]] = set()

    def _say(self, line: str) -> None:
        self.err.write(line + "\n")
        self.err.flush()

    def report(self, children: Sequence[SlotInfo]) -> dict[int, str]:
        """Print one poll's process lines; return {pid: label} of those SIGTERMed."""
        now = self.clock()
        seen_gone = set()
        terminated: dict[int, str] = {}
        for info in sorted(children, key=lambda c: c.pid):
            ident = (info.index, info.pid, info.timestamp)
            if ident in self._gone:
                seen_gone.add(ident)
                continue
            key = f"{info.pid:05d}"
            label = info.task_id or info.state
            age = now - info.timestamp
            if info.busy:
                prev = self._history.get(info.pid)
                history = prev[1] if prev and prev[0] == info.timestamp else ""
                history = advance_history(history, age, info.state or " ")
                self._history[info.pid] = (info.timestamp, history)
                bar = busy_bar(history)
            else:                                  # idle resets the history (3.2 step 1)
                self._history.pop(info.pid, None)
                bar = idle_bar(age)
            shown = f"{format_age(age)} {bar}"
            if self.verbose and info.busy:
                shown += self.details(info, now)
            kind, ttl = ("busy", self.busy_ttl) if info.busy else ("idle", self.idle_ttl)
            if not self.alive(info.pid):
                self._say(f"PID {key}: {label:<11} went away {shown}")
                self._gone.add(ident)
                seen_gone.add(ident)
                self._history.pop(info.pid, None)
            elif age > ttl and self.do_kill:
                self._say(f"PID {key}: {label:<11} terminated {shown}")
                self._say(f"PID {key}: {label:<11} over its {kind} TTL ({ttl:g} s), "
                          "sending SIGTERM")
                try:
                    self.kill(info.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass                           # gone meanwhile: the loop says so
                except OSError as exc:
                    self._say(f"PID {key}: {label:<11} cannot be killed: {exc.strerror}")
                    continue
                else:
                    try:                           # a stopped child gets SIGTERM only now
                        self.kill(info.pid, signal.SIGCONT)
                    except OSError:
                        pass
                terminated[info.pid] = label
            else:
                self._say(f"PID {key}: {label:<11} {shown}")
                if age > ttl:
                    self._say(f"PID {key}: {label:<11} over its {kind} TTL ({ttl:g} s), "
                              "not killed (--no-kill)")
        self._gone &= seen_gone                    # forget slots the master has folded
        live = {c.pid for c in children}
        for pid in [p for p in self._history if p not in live]:
            del self._history[pid]
        return terminated

    @staticmethod
    def details(info: SlotInfo, now: float) -> str:
        """The ``-v`` suffix of a busy child: `` mail_id=<id> state=<letter> for <s>s``.

        An unknown mail_id (none generated yet, or a writer without the field) or
        state start shows as ``-``.
        """
        since = f"{max(0, int(now - info.state_since))}s" if info.state_since else "-"
        return f" mail_id={info.mail_id or '-'} state={info.state or '-'} for {since}"

    def wait_for_kills(self, pending: dict[int, str]) -> None:
        """Wait for SIGTERMed children, SIGKILL after about 30 rounds (3.3).

        Unlike the Perl tool, "successfully killed" shows the child's label.
        """
        if not pending:
            return
        pending = dict(pending)
        rounds = dict.fromkeys(pending, 0)
        self.sleep(KILL_FIRST_PAUSE)
        while pending:
            for pid in sorted(pending):
                key = f"{pid:05d}"
                if not self.alive(pid):
                    self._say(f"PID {key}: {pending.pop(pid):<11} successfully killed")
                    continue
                rounds[pid] += 1
                if rounds[pid] > KILL_GRACE_ROUNDS:
                    rounds[pid] = 0
                    try:
                        self.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                else:
                    self._say(f"PID {key}: sending SIGKILL in "
                              f"{KILL_GRACE_ROUNDS - rounds[pid]} s")
            if pending:
                keys = " ".join(f"{pid:05d}" for pid in sorted(pending))
                self._say(f"Waiting for the process to terminate: {keys}")
                self.sleep(KILL_PAUSE)

    def poll(self, seg: StatsSegment) -> None:
        """One poll: the process lines, the kill loop, then a blank line on stdout."""
        self.wait_for_kills(self.report(seg.snapshot().children))
        self.out.write("\n")
        self.out.flush()

    def run(self, count: int | None, wait: float) -> None:
        """Print the header, then poll ``count`` times (forever if None) (3.1).

        A missing or unusable segment is reported and retried at every interval
        without using up the count, as the Perl tool does for a missing nanny.db.
        """
        self.out.write(HEADER)
        self.out.flush()
        poll_segment(self.path, count, wait, self.poll, self._say, self.sleep)


class Options(NamedTuple):
    count: int | None = None
    wait: float = DEFAULT_WAIT
    db_home: str = DEFAULT_DB_HOME
    kill: bool = True
    busy_ttl: float = TTL_BUSY
    idle_ttl: float = TTL_IDLE
    verbose: bool = False


def _parse_args(argv: Sequence[str]) -> Options:
    """-c and -w as in the Perl tool; the rest are our extensions."""
    opts, rest = getopt.getopt(list(argv), "c:w:d:v", [
        "db-home=", "kill", "no-kill", "busy-ttl=", "idle-ttl=", "verbose"])
    if rest:
        raise getopt.GetoptError(f"unexpected argument {rest[0]!r}")
    o = Options(db_home=os.environ.get("AMAVISD_DB_HOME") or DEFAULT_DB_HOME)
    for opt, value in opts:
        try:
            if opt == "-c":
                count = int(value)
                if count < 0:
                    raise ValueError(value)
                o = o._replace(count=count)
            elif opt == "-w":
                wait = float(value)
                if not wait >= 0:
                    raise ValueError(value)
                o = o._replace(wait=wait)
            elif opt in ("--busy-ttl", "--idle-ttl"):
                ttl = float(value)
                if not 0 <= ttl < float("inf"):
                    raise ValueError(value)
                o = o._replace(**{opt[2:].replace("-", "_"): ttl})
            elif opt in ("--kill", "--no-kill"):
                o = o._replace(kill=opt == "--kill")
            elif opt in ("-v", "--verbose"):
                o = o._replace(verbose=True)
            else:                                   # -d / --db-home
                o = o._replace(db_home=value)
        except ValueError:
            raise getopt.GetoptError(f"bad value for {opt}: {value!r}") from None
    return o


def main(argv: Sequence[str] | None = None) -> int:
    """Run amavisd-nanny; returns the exit code (monitoring.md 3.1)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        o = _parse_args(args)
    except getopt.GetoptError:
        sys.stdout.write(legend())
        sys.stdout.flush()
        sys.stderr.write(USAGE + "\nexited\n")
        return EXIT_USAGE
    nanny = Nanny(os.path.join(o.db_home, DEFAULT_FILENAME), sys.stdout, sys.stderr,
                  do_kill=o.kill, busy_ttl=o.busy_ttl, idle_ttl=o.idle_ttl,
                  verbose=o.verbose)
    try:
        nanny.run(o.count, o.wait)
    except KeyboardInterrupt:
        sys.stderr.write("exited\n")
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
