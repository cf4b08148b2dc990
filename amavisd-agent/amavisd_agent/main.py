"""amavisd-agent: print amavisd's counters every few seconds, or serve them.

Text mode follows spec/monitoring.md section 2: options and loop (2.1), the layout
and order of one poll (2.2), the per-hour rates over a sliding window (2.3) and the
sample in 2.4.  It reads our stats segment (amavisd/stats.py, docs/stats-segment.md)
instead of snmp.db, so a few things differ, as docs/monitoring.md explains:

* snmp.db holds a key only once something was written to it; the segment holds
  every fixed counter, zero or not.  We print the counters that are non-zero,
  which is what the Perl tool shows except for a key that was only ever
  incremented by 0.
* The ``sys*`` entries are not in the segment.  ``sysUpTime`` is the segment's
  creation time (the cold start); ``sysDescr``, ``sysObjectID`` and
  ``sysServices`` are constants; ``sysName`` is this host's FQDN (the default
  of ``$myhostname``); ``sysContact`` and ``sysLocation`` are empty (their
  defaults).  The Perl ``entropy`` key (a PRNG seed, spec 1.2) has no
  counterpart and is not printed.
* On a reopen (cold restart) the rate history is dropped, so no negative rates.

``--prometheus HOST:PORT`` serves ``/metrics`` instead (amavisd_agent/prometheus.py);
``--snmp HOST:PORT [--community NAME]`` answers SNMPv2c for AMAVIS-MIB instead
(amavisd_agent/snmp.py, spec/monitoring.md 4).
"""

from __future__ import annotations

import getopt
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, TextIO

from amavisd.constants import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, VERSION
from amavisd.stats import DEFAULT_FILENAME, Snapshot, StatsSegment, poll_segment

PROG = "amavisd-agent"
USAGE = f"Usage: {PROG} [-c <count>] [-w <wait-interval>]"
DEFAULT_DB_HOME = "/var/lib/amavis/db"      # Debian's $db_home (monitoring.md, Paths)
DEFAULT_WAIT = 10.0                         # seconds between polls (2.1)

#: Samples older than this many seconds are dropped; a window shorter than half
#: of it falls back to the average since the cold start (2.3).
HOLD_TIME = 300.0

#: Fixed values of the initial ``sys*`` entries (monitoring.md 1.2).
SYS_OBJECT_ID = "1.3.6.1.4.1.15312.2"
SYS_SERVICES = 64

MIB = 1024 * 1024                           # p1_size shows MiB, labelled "MB" (2.2)

#: Option values the Perl tool accepts (2.1): -c a signed integer, -w a plain
#: unsigned decimal ("5", "0.5", "5.").
_COUNT_RE = re.compile(r"[+-]?\d+\Z")
_WAIT_RE = re.compile(r"\+?\d+(?:\.\d*)?\Z")


# ---- rates (2.3) ------------------------------------------------------------------


class Window(NamedTuple):
    """What one key's history says at this poll.

    ``rate`` is per second (None when the window has no length); ``dv`` and
    ``dcnt`` are the changes of the value and of ``InMsgs`` over the same window,
    used by the s/msg column of the TimeElapsed lines.
    """

    rate: float | None
    dv: float
    dcnt: float


class RateHistory:
    """Per-key samples ``(time, value, InMsgs)`` kept across polls (2.3).

    Each update drops the samples older than ``now - hold`` (none if every one
    is older), appends the new one and measures from the oldest to the newest.
    With fewer than two samples, or less than ``hold / 2`` between them, it
    falls back to the average since the cold start: value / uptime.
    """

    def __init__(self, hold: float = HOLD_TIME) -> None:
        self.hold = hold
        self._samples: dict[str, list[tuple[float, float, float]]] = {}

    def clear(self) -> None:
        self._samples.clear()

    def update(self, name: str, now: float, value: float, msgcnt: float,
               uptime: float) -> Window:
        samples = self._samples.setdefault(name, [])
        for j, (t, _, _) in enumerate(samples):
            if t + self.hold >= now:
                del samples[:j]
                break
        samples.append((now, value, msgcnt))
        t0, v0, c0 = samples[0]
        dt, dv, dcnt = now - t0, value - v0, msgcnt - c0
        if len(samples) < 2 or dt < self.hold / 2:
            dt, dv, dcnt = uptime, value, msgcnt
        return Window(dv / dt if dt > 0 else None, dv, dcnt)


# ---- line formats (2.2) ---------------------------------------------------------


def format_ticks(ticks: int) -> str:
    """Timeticks (1/100 s) as ``<d> days, <h>:<mm>:<ss>.<cc>`` (2.2 item 1)."""
    secs, cc = divmod(max(0, ticks), 100)
    mins, ss = divmod(secs, 60)
    hours, mm = divmod(mins, 60)
    days, hh = divmod(hours, 24)
    return f"{days} days, {hh}:{mm:02d}:{ss:02d}.{cc:02d}"


def _per_hour(window: Window) -> float:
    return 0.0 if window.rate is None else window.rate * 3600


def _ref_text(ref: str | None) -> str:
    return "" if ref is None else ref


def line_p1(name: str, values: Mapping[str, float], window: Window,
            ref: str | None) -> str:
    """``%-35s %6d %6.0f/h`` then the share of ``ref`` or ``---`` (2.2 "p1")."""
    value = values[name]
    total = values.get(ref, 0) if ref is not None else 0
    share = f" {100 * value / total:7.1f} %" if total > 0 else "     --- %"
    return f"{name:<35} {int(value):6d} {_per_hour(window):6.0f}/h{share} ({_ref_text(ref)})"


def line_p1_size(name: str, values: Mapping[str, float], window: Window,
                 ref: str) -> str:
    """Bytes shown as whole MiB, the rate as MiB/h (2.2 "p1_size")."""
    value = values[name]
    total = values.get(ref, 0)
    share = f" {100 * value / total:5.1f} %" if total > 0 else "  --- %"
    return (f"{name:<35} {value / MIB:6.0f}MB {_per_hour(window) / MIB:4.0f}MB/h"
            f"{share} ({ref})")


def line_p1_time(name: str, values: Mapping[str, float], window: Window) -> str:
    """Milliseconds shown as seconds, then seconds per message in the window."""
    per_msg = "---" if window.dcnt < 1 else f"{window.dv / 1000 / window.dcnt:7.3f}"
    return f"{name:<35} {values[name] / 1000:6.0f} s   {per_msg:>8} s/msg (InMsgs)"


def line_p2(name: str, value: float, window: Window, ref: str,
            values: Mapping[str, float]) -> str | None:
    """A virus-name or by-OS line; None when the reference is not positive."""
    total = values.get(ref, 0)
    if total <= 0:
        return None
    return (f"{name:<35} {int(value):6d} {_per_hour(window):6.0f}/h "
            f"{100 * value / total:6.1f} % ({ref})")


# ---- which printer and which reference (2.2 table, first match wins) ------------

_P1, _SIZE, _TIME, _LATER = "p1", "size", "time", "later"

_Ref = str | None | Callable[[re.Match[str]], str]

_RULES: list[tuple[re.Pattern[str], str, _Ref]] = [(re.compile(p), kind, ref) for p, kind, ref in [
    (r"OpsDecTyp", _LATER, None),
    (r"CacheHitsVirusMsgs\Z", _P1, "ContentVirusMsgs"),
    (r"CacheHitsBannedMsgs\Z", _P1, "ContentBannedMsgs"),
    (r"CacheHitsSpamMsgs\Z", _P1, "ContentSpamMsgs"),
    (r"Cache", _P1, "CacheAttempts"),
    (r"Content.*?Msgs(.*)\Z", _P1, lambda m: "InMsgs" + m.group(1)),
    (r"Content", _P1, "InMsgs"),
    (r"OpsSql", _P1, "InMsgsRecips"),
    (r"InMsgsSize", _SIZE, "InMsgsSize"),
    (r"InMsgsRecipsLocal\Z", _P1, "InMsgsRecips"),
    (r"InMsgsRecips(.*)\Z", _P1, lambda m: "InMsgs" + m.group(1)),
    (r"InMsgsBounce.", _P1, "InMsgsBounce"),
    (r"(?:InMsgs|Ops)", _P1, "InMsgs"),
    (r"OutMsgsSize\Z", _SIZE, "InMsgsSize"),
    (r"OutMsgsSize", _SIZE, "OutMsgsSize"),
    (r"OutMsgs\Z", _P1, "InMsgs"),
    (r"Out", _P1, "OutMsgs"),
    (r"QuarMsgsSize\Z", _SIZE, "InMsgsSize"),
    (r"QuarMsgsSize", _SIZE, "QuarMsgsSize"),
    (r"Quar", _P1, "QuarMsgs"),
    (r"LogEntries\Z", _P1, "InMsgs"),
    (r"Log", _P1, "LogEntries"),
    (r"GenMailIdRetries", _P1, "InMsgs"),
    (r"PenPalsAttempts\Z", _P1, "InMsgsRecipsLocal"),
    (r"PenPalsHits\Z", _P1, "PenPalsAttempts"),
    (r"PenPalsHits.", _P1, "PenPalsHits"),
    (r"PenPals", _P1, "PenPalsAttempts"),
    (r"SqlAddrSenderAttempts\Z", _P1, "InMsgs"),
    (r"SqlAddrSender", _P1, "SqlAddrSenderAttempts"),
    (r"SqlAddrRecipAttempts\Z", _P1, "InMsgsRecips"),
    (r"SqlAddrRecip", _P1, "SqlAddrRecipAttempts"),
    (r"banned\.byOS", _P1, "InMsgs"),
    (r"(?i:TimeElapsed)", _TIME, "InMsgs"),
]]


def classify(name: str) -> tuple[str, str | None]:
    """Return (printer, reference counter) for a numeric key (2.2 table).

    Anything that matches no rule (``sysServices``, ``UserCounter*``) gets p1 with
    no reference, which prints ``     --- % ()``.
    """
    for pattern, kind, ref in _RULES:
        m = pattern.match(name)
        if m:
            return kind, (ref(m) if callable(ref) else ref)
    return _P1, None


#: The groups printed last, after one empty line, each against its reference
#: (2.2 item 4).  ``spammy.byOS.X`` is shown as ``spam.byOS.X``.
_BY_NAME_GROUPS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"virus\.byname\."), "ContentVirusMsgs"),
    (re.compile(r"virus\.byOS\."), "ContentVirusMsgs"),
    (re.compile(r"(?:spam|spammy)\.byOS\."), "ContentSpamMsgs"),
    (re.compile(r"ham\.byOS\."), "ContentCleanMsgs"),
]


def _by_value_desc(items: Mapping[str, float]) -> list[str]:
    # The Perl tool leaves ties in hash order; we break them by name.
    return sorted(items, key=lambda k: (-items[k], k))


# ---- one poll -------------------------------------------------------------------


class Agent:
    """One text-mode run: the rate history lives here, across polls (2.3).

    Clock and sleep are parameters so tests can run it without real time.
    """

    def __init__(self, path: str, out: TextIO, err: TextIO, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 sys_name: str | None = None) -> None:
        self.path = path
        self.out = out
        self.err = err
        self.clock = clock
        self.sleep = sleep
        if sys_name is None:
            import socket
            sys_name = socket.getfqdn() or "localhost"
        self.strings = {                     # the non-numeric entries (1.2, 2.2 item 1)
            "sysContact": "STR ",
            "sysDescr": f"STR {VERSION}",
            "sysLocation": "STR ",
            "sysName": f"STR {sys_name}",
            "sysObjectID": f"OID {SYS_OBJECT_ID}",
        }
        self.history = RateHistory()

    def _say(self, line: str) -> None:
        self.err.write(line + "\n")
        self.err.flush()

    def render(self, snap: Snapshot) -> str:
        """Return one poll's output, beginning with two newlines (2.1, 2.2)."""
        now = self.clock()
        uptime = now - snap.created
        lines = ["", ""]
        for key in sorted([*self.strings, "sysUpTime"]):
            if key == "sysUpTime":
                ticks = int(uptime * 100)
                lines.append(f"{key:<15} TimeTicks {ticks} ({format_ticks(ticks)})")
            else:
                lines.append(f"{key:<15} {self.strings[key]}")

        values: dict[str, float] = {}
        groups: list[dict[str, float]] = [{} for _ in _BY_NAME_GROUPS]
        for name in sorted(snap.counters):
            value = snap.counters[name]
            if not value:
                continue                      # never written, as far as we can tell
            for (pattern, _), group in zip(_BY_NAME_GROUPS, groups, strict=True):
                if pattern.match(name):
                    group[re.sub(r"\Aspammy\.", "spam.", name)] = value
                    break
            else:
                values[name] = value
        values["sysServices"] = SYS_SERVICES
        msgcnt = values.get("InMsgs", 0)

        def window(name: str, value: float) -> Window:
            return self.history.update(name, now, value, msgcnt, uptime)

        dec_types: dict[str, float] = {}
        for name in sorted(values):
            w = window(name, values[name])
            kind, ref = classify(name)
            if kind == _LATER:
                dec_types[name] = values[name]
            elif kind == _SIZE:
                assert ref is not None
                lines.append(line_p1_size(name, values, w, ref))
            elif kind == _TIME:
                lines.append(line_p1_time(name, values, w))
            else:
                lines.append(line_p1(name, values, w, ref))
        for name in _by_value_desc(dec_types):
            lines.append(line_p1(name, values, window(name, values[name]), "InMsgs"))

        if any(groups):
            lines.append("")
        for (_, ref), group in zip(_BY_NAME_GROUPS, groups, strict=True):
            for name in _by_value_desc(group):
                line = line_p2(name, group[name], window(name, group[name]), ref, values)
                if line is not None:
                    lines.append(line)
        return "\n".join(lines) + "\n"

    def poll(self, seg: StatsSegment) -> None:
        self.out.write(self.render(seg.snapshot()))
        self.out.flush()

    def run(self, count: int | None, wait: float) -> None:
        """Poll ``count`` times (forever if None), ``wait`` seconds apart (2.1).

        A missing or unusable segment is reported on stderr and retried at every
        interval without using up the count; a segment replaced by a cold
        restart is reopened.  The messages are the nanny's (3.1).
        """
        poll_segment(self.path, count, wait, self.poll, self._say, self.sleep,
                     on_reopen=self.history.clear)


# ---- command line -------------------------------------------------------------------


class Options(NamedTuple):
    count: int | None
    wait: float
    db_home: str
    prometheus: tuple[str, int] | None
    snmp: tuple[str, int] | None = None
    community: str = "public"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6addr]:PORT`` or ``:PORT`` (all IPv4 interfaces)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def parse_args(argv: Sequence[str]) -> Options:
    """Parse the Perl tool's -c and -w (2.1) plus our ``--db-home``/``-d``,
    ``--prometheus``, ``--snmp`` and ``--community``; raises getopt.GetoptError
    on anything else."""
    opts, rest = getopt.getopt(list(argv), "c:w:d:",
                               ["db-home=", "prometheus=", "snmp=", "community="])
    if rest:
        raise getopt.GetoptError(f"unexpected argument {rest[0]!r}")
    count: int | None = None
    wait = DEFAULT_WAIT
    db_home = os.environ.get("AMAVISD_DB_HOME") or DEFAULT_DB_HOME
    listen = None
    snmp = None
    community = "public"
    for opt, value in opts:
        try:
            if opt == "-c":
                if not _COUNT_RE.match(value):
                    raise ValueError(value)
                count = max(0, int(value))        # a count <= 0 polls not at all
            elif opt == "-w":
                if not _WAIT_RE.match(value):
                    raise ValueError(value)
                wait = float(value)
            elif opt == "--prometheus":
                listen = parse_listen(value)
            elif opt == "--snmp":
                snmp = parse_listen(value)
            elif opt == "--community":
                if not value or not value.isprintable():
                    raise ValueError(value)
                community = value
            else:                                 # -d / --db-home: our extension
                db_home = value
        except ValueError:
            raise getopt.GetoptError(f"bad value for {opt}: {value!r}") from None
    if listen is not None and snmp is not None:
        raise getopt.GetoptError("--prometheus and --snmp exclude each other")
    return Options(count, wait, db_home, listen, snmp, community)


def main(argv: Sequence[str] | None = None) -> int:
    """Run amavisd-agent; returns the exit code (monitoring.md 2.1)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(args)
    except getopt.GetoptError:
        sys.stderr.write(USAGE + " [--db-home <dir>] [--prometheus <host>:<port>]"
                         " [--snmp <host>:<port> [--community <name>]]\nexited\n")
        return EXIT_USAGE
    path = os.path.join(opts.db_home, DEFAULT_FILENAME)
    if opts.prometheus is not None:
        from amavisd_agent.prometheus import serve_forever
        return serve_forever(path, *opts.prometheus)
    if opts.snmp is not None:
        from amavisd_agent.snmp import serve_forever as serve_snmp
        return serve_snmp(path, *opts.snmp, community=opts.community)
    agent = Agent(path, sys.stdout, sys.stderr)
    try:
        agent.run(opts.count, opts.wait)
    except KeyboardInterrupt:
        sys.stderr.write("exited\n")
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
