"""``amavisd-agent --snmp HOST:PORT``: serve AMAVIS-MIB over SNMPv2c from the stats segment.

This replaces amavisd-new's ``amavisd-snmp-subagent`` (spec/monitoring.md section 4).
The object tree is the one of 4.1: 331 read-only scalars under
``1.3.6.1.4.1.15312.2.1`` (``amavis``), each served at ``<object OID>.0`` (4.3
"Instances").  :data:`OBJECTS` lists them in OID order with the MIB syntax and the
internal name they are read from (4.2); ``mibs/AMAVIS-MIB.txt`` declares the same
objects, and t/test_snmp.py checks that the two agree.

Values, read afresh from the segment on every request (4.2, 4.3 "Type conversion"):

* counters are the segment's totals; an object whose counter we do not keep yet
  (``UserGauge*``, for one) reads 0, as a key never written to snmp.db does in Perl;
  Counter32 values wrap modulo 2^32 and Counter64 modulo 2^64, as SNMP counters do;
* ``timeElapsed*``: the segment holds milliseconds; served divided by 10 (0.01 s
  units) as an INTEGER, which is what TimeInterval is on the wire, wrapped into
  the TimeInterval range 0..2^31-1 (the Perl value grows past it after ~248 days);
* ``inMsgsStatus<S>All`` (1.19.1, 1.22.1-1.26.1) read the same key as
  ``inMsgsStatus<S>`` (1.2.7, 1.2.9-13): served twice, as in Perl;
* ``sysUpTime`` is TimeTicks since the segment's creation (the cold start); the
  other ``sys*`` values are those text mode prints (amavisd_agent/main.py);
* ``proc*`` are computed from the children in the segment (4.3 "Process gauges"):
  idle/busy by the reader rule of 1.5, activity by state letter, busy-age slots
  from the nanny timestamp; ``procGone`` counts children this agent saw dead
  before the master folded their slot, since the agent started;
* ``mtaQueueEntries*`` count Postfix queue files (4.3 "Postfix queue counts") when
  ``postconf -h queue_directory`` works at startup, else they read 0.

The SNMP side uses pysnmp's protocol layer (message codec and SNMP types,
spec/libraries.md 4.4) under a plain asyncio UDP endpoint, rather than pysnmp's
command-responder engine: one request is answered from one snapshot, so a
GETBULK is consistent, and every decoding or encoding failure is caught here
and the datagram dropped, so no packet can stop the agent.  Only SNMPv2c is
answered; SNMPv1 and SNMPv3 messages and wrong communities are dropped without
a reply, as snmpd does for a bad community.
"""

from __future__ import annotations

import asyncio
import bisect
import hmac
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from pyasn1.codec.ber import decoder, encoder
from pyasn1.error import PyAsn1Error
from pysnmp.proto import rfc1905
from pysnmp.proto.api import v2c

from amavisd.constants import EXIT_FAILURE, EXIT_OK, VERSION
from amavisd.stats import SegmentError, SlotInfo, Snapshot, StatsSegment

OID = tuple[int, ...]

#: The enterprise subtree (4.1): ``sysObjectID`` is this; the MODULE-IDENTITY
#: ``amavis`` is one below it.
AMAVIS_PRODUCT_OID: OID = (1, 3, 6, 1, 4, 1, 15312, 2)
MIB_ROOT: OID = (*AMAVIS_PRODUCT_OID, 1)
DEFAULT_COMMUNITY = "public"
SYS_SERVICES = 64

#: MIB syntaxes, as written in mibs/AMAVIS-MIB.txt (4.1 "Syntax counts").
C32, C64, G32 = "Counter32", "Counter64", "Gauge32"
TIME_INTERVAL, TIME_TICKS = "TimeInterval", "TimeTicks"
DISPLAY_STRING, OBJECT_IDENTIFIER, INTEGER32 = "DisplayString", "OBJECT IDENTIFIER", "Integer32"

#: A response larger than this is cut (GETBULK) or answered tooBig (RFC 3416 4.2).
MAX_RESPONSE_SIZE = 65000
#: At most this many variable bindings in one GETBULK response.
MAX_BULK_VARBINDS = 1024


class MibObject(NamedTuple):
    """One scalar of AMAVIS-MIB (spec/mib-objects.tsv): served at ``oid + (0,)``.

    ``key`` is the internal name the value comes from (4.2): a segment counter,
    or ``sys*``, ``Proc*`` and ``MtaQueueEntries*`` computed by the agent.
    """

    oid: OID
    name: str
    syntax: str
    key: str


# ---- the object tree (4.1, 4.2) ---------------------------------------------------------

#: Direction suffixes in MIB order: "" is the total ("All" in groups 1.19-1.26).
MIB_DIRECTIONS = ("", "Inbound", "Outbound", "Internal", "Originating", "OpenRelay")
#: Content categories in MIB order (groups 1.8-1.10).
MIB_CATEGORIES = ("Clean", "MtaFailed", "Oversized", "BadHdr", "Spammy", "Spam", "Unchecked",
                  "Banned", "Virus")
_OUT_VARIANTS = (["", "Relay", "Submit"]
                 + [f"Submit{t}" for t in ("Quar", "Dsn", "Notif", "AV", "Arf")]
                 + [f"Proto{p}{v}" for p in ("Local", "SMTP", "LMTP", "BSMTP", "Pipe", "SQL")
                    for v in ("", "Relay", "Submit")])
#: Statuses of groups 1.19-1.26, one group each, in MIB order.
MIB_STATUSES = ("Accepted", "RelayedUntagged", "RelayedTagged", "Discarded", "NoBounce",
                "Bounced", "Rejected", "TempFailed")
#: Busy-age slots of group 2.2: (MIB name suffix, minimum age in seconds); j = index.
BUSY_AGE_SLOTS: tuple[tuple[str, float], ...] = (
    ("0", 0.0), ("01s", 0.1), ("02s", 0.2), ("05s", 0.5), ("1s", 1), ("2s", 2), ("4s", 4),
    ("8s", 8), ("15s", 15), ("30s", 30), ("1m", 60), ("2m", 120), ("4m", 240), ("8m", 480),
    ("15m", 900), ("30m", 1800), ("1h", 3600), ("2h", 7200), ("4h", 14400), ("8h", 28800),
    ("15h", 54000), ("30h", 108000))
MTA_QUEUES = ("Maildrop", "Incoming", "Active", "Deferred")


def _ucfirst(name: str) -> str:
    return name[:1].upper() + name[1:]


def build_objects() -> tuple[MibObject, ...]:
    """Return the 331 objects in OID order (4.1 groups table, 4.2 mapping rules)."""
    objs: list[MibObject] = []

    def group(prefix: OID, names: Iterable[str], syntax: str,
              key: Callable[[str], str] = _ucfirst) -> None:
        for i, name in enumerate(names, start=1):
            objs.append(MibObject((*MIB_ROOT, *prefix, i), name, syntax, key(name)))

    sys_group = [("sysDescr", DISPLAY_STRING), ("sysObjectID", OBJECT_IDENTIFIER),
                 ("sysUpTime", TIME_TICKS), ("sysContact", DISPLAY_STRING),
                 ("sysName", DISPLAY_STRING), ("sysLocation", DISPLAY_STRING),
                 ("sysServices", INTEGER32)]
    for i, (name, syntax) in enumerate(sys_group, start=1):
        objs.append(MibObject((*MIB_ROOT, 1, 1, i), name, syntax, name))
    group((1, 2), [f"inMsgs{d}" for d in MIB_DIRECTIONS]
          + [f"inMsgsStatus{s}" for s in ("Accepted", "Relayed", "Discarded", "NoBounce",
                                          "Bounced", "Rejected", "TempFailed")], C32)
    group((1, 3), [f"inMsgsSize{d}" for d in MIB_DIRECTIONS], C64)
    group((1, 4), [f"inMsgsRecips{d}" for d in MIB_DIRECTIONS] + ["inMsgsRecipsLocal"], C32)
    group((1, 5), ["inMsgsBounce"] + [f"inMsgsBounce{x}" for x in (
        "NullRPath", "Killed", "Unverifiable", "RescuedByDomain", "RescuedByOriginating",
        "RescuedByPenPals")], C32)
    group((1, 6), [f"outMsgs{v}" for v in _OUT_VARIANTS]
          + ["outMsgsDelivers", "outMsgsAttemptFails", "outMsgsRejects"], C32)
    group((1, 7), [f"outMsgsSize{v}" for v in _OUT_VARIANTS], C64)

    def quar_key(name: str) -> str:         # quar<X>Msgs[Size] <-> QuarMsgs[Size]<X> (4.2)
        for cat in ("Arch", *MIB_CATEGORIES):
            for size in ("Size", ""):
                if name == f"quar{cat}Msgs{size}":
                    return f"QuarMsgs{size}{cat}"
        return _ucfirst(name)

    group((1, 8), ["quarMsgs"] + [f"quar{c}Msgs" for c in ("Arch", *MIB_CATEGORIES)]
          + ["quarAttemptTempFails", "quarAttemptFails"], C32, quar_key)
    group((1, 9), ["quarMsgsSize"] + [f"quar{c}MsgsSize" for c in ("Arch", *MIB_CATEGORIES)],
          C64, quar_key)
    for i, cat in enumerate(MIB_CATEGORIES, start=1):
        group((1, 10, i), [f"content{cat}Msgs{d}" for d in MIB_DIRECTIONS], C32)
    group((1, 11), ["cacheAttempts", "cacheMisses", "cacheHits", "cacheHitsVirusCheck",
                    "cacheHitsVirusMsgs"]
          + [f"outConn{x}" for x in ("New", "Quit", "Transact", "ReuseFail", "ReuseRecent",
                                     "ReuseRefreshed")], C32)
    group((1, 12), ["opsDec", "opsSpamCheck", "opsVirusCheck"], C32)
    group((1, 13), [f"penPals{x}" for x in (
        "Attempts", "AttemptsRid", "AttemptsMid", "Misses", "Hits", "HitsRid", "HitsMid",
        "HitsMidRid", "SavedFromTag2", "SavedFromTag3", "SavedFromKill")], C32)
    group((1, 14), [f"sqlAddr{who}{x}" for who in ("Sender", "Recip")
                    for x in ("Attempts", "Misses", "Hits")], C32)
    group((1, 15), ["logEntries"]
          + [f"logEntries{x}" for x in ("Emerg", "Alert", "Crit", "Err", "Warning", "Notice",
                                        "Info", "Debug")]
          + [f"logEntriesLevel{i}" for i in range(6)] + ["logLines", "logRetries"], C64)
    group((1, 16), [f"timeElapsed{x}" for x in ("Total", "Receiving", "Sending", "Decoding",
                                                "PenPals", "VirusCheck", "SpamCheck")],
          TIME_INTERVAL)
    group((1, 17), [f"userCounter{i}" for i in range(1, 11)], C64)
    group((1, 18), [f"userGauge{i}" for i in range(1, 11)], G32)
    for i, status in enumerate(MIB_STATUSES, start=19):
        group((1, i), [f"inMsgsStatus{status}{d or 'All'}" for d in MIB_DIRECTIONS], C32,
              lambda n: _ucfirst(n.removesuffix("All")))
    group((2, 1), ["procGone"], C32)
    objs += [MibObject((*MIB_ROOT, 2, 1, i), name, G32, _ucfirst(name)) for i, name in
             enumerate(["procAll", "procIdle", "procBusy", "procBusyTransfer", "procBusyDecode",
                        "procBusyVirus", "procBusySpam", "procBusyOther"], start=2)]
    group((2, 2), [f"procBusy{suffix}" for suffix, _ in BUSY_AGE_SLOTS], G32,
          lambda n: f"ProcBusy{[f'procBusy{s}' for s, _ in BUSY_AGE_SLOTS].index(n)}")
    group((3, 1), [f"mtaQueueEntries{q}" for q in MTA_QUEUES], G32)
    return tuple(objs)


OBJECTS: tuple[MibObject, ...] = build_objects()
assert len(OBJECTS) == 331 and list(OBJECTS) == sorted(OBJECTS), "AMAVIS-MIB table"

#: Marks a :meth:`SnmpAgent.values` result read from a segment (not an internal name).
_HAVE_SEGMENT = " segment"


# ---- values (4.2, 4.3) --------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """``kill 0``: only ESRCH means gone (EPERM is a live process of someone else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def process_gauges(children: Sequence[SlotInfo], now: float) -> dict[str, int]:
    """``Proc*`` from the live children (4.3 "Process gauges"), ``ProcGone`` excluded.

    Idle is the reader rule of 1.5 (``SlotInfo.busy``).  Activity: m, d, F are
    Transfer; D Decode; V Virus; S Spam; any other busy state Other.
    ``ProcBusy<j>`` counts busy children whose age (time since the nanny
    timestamp) is at least slot j; ``ProcBusy0`` is every busy child.
    """
    g = dict.fromkeys(["ProcAll", "ProcIdle", "ProcBusy", "ProcBusyTransfer",
                       "ProcBusyDecode", "ProcBusyVirus", "ProcBusySpam", "ProcBusyOther"], 0)
    ages = [0] * len(BUSY_AGE_SLOTS)
    for child in children:
        g["ProcAll"] += 1
        if not child.busy:
            g["ProcIdle"] += 1
            continue
        g["ProcBusy"] += 1
        state = child.state
        activity = ("Transfer" if state in ("m", "d", "F") else "Decode" if state == "D"
                    else "Virus" if state == "V" else "Spam" if state == "S" else "Other")
        g[f"ProcBusy{activity}"] += 1
        age = now - child.timestamp
        for j, (_, limit) in enumerate(BUSY_AGE_SLOTS):
            if j == 0 or age >= limit:
                ages[j] += 1
    g.update({f"ProcBusy{j}": n for j, n in enumerate(ages)})
    return g


class QueueCounter:
    """Postfix queue sizes for ``mtaQueueEntries*`` (4.3 "Postfix queue counts").

    Files in ``maildrop``, ``incoming``, ``active`` and ``deferred`` are counted,
    descending into one-character (hash) subdirectories, giving up after
    ``limit`` seconds.  A count is kept ``ttl`` seconds; a stale one is served
    while a background thread recounts, so a request never waits for a sweep.
    """

    def __init__(self, queue_dir: str | None, ttl: float = 18.0, limit: float = 5.0) -> None:
        self.queue_dir = queue_dir
        self.ttl = ttl
        self.limit = limit
        self._counts = dict.fromkeys(MTA_QUEUES, 0)
        self._stamp = -ttl
        self._lock = threading.Lock()
        self._running = False
        if queue_dir is not None:
            self._refresh()

    @staticmethod
    def from_postconf() -> QueueCounter:
        """Ask ``postconf -h queue_directory``; without Postfix every count is 0."""
        postconf = shutil.which("postconf") or next(
            (p for p in ("/usr/sbin/postconf", "/sbin/postconf") if os.access(p, os.X_OK)),
            None)
        queue_dir = None
        if postconf is not None:
            try:
                out = subprocess.run([postconf, "-h", "queue_directory"], capture_output=True,
                                     text=True, timeout=10, check=False)
            except (OSError, subprocess.SubprocessError):
                out = None
            if out is not None and out.returncode == 0 and out.stdout.strip():
                queue_dir = out.stdout.strip()
        if queue_dir is not None and not os.access(os.path.join(queue_dir, "active"), os.R_OK):
            queue_dir = None
        return QueueCounter(queue_dir)

    def _count_dir(self, path: str, deadline: float) -> int:
        n = 0
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if time.monotonic() > deadline:
                        sys.stderr.write(f"amavisd-agent: exceeded time limit on dir {path}\n")
                        return n
                    if entry.is_dir(follow_symlinks=False):
                        if len(entry.name) == 1:
                            n += self._count_dir(entry.path, deadline)
                    else:
                        n += 1
        except OSError:
            pass
        return n

    def _refresh(self) -> None:
        assert self.queue_dir is not None
        counts = {}
        for q in MTA_QUEUES:
            deadline = time.monotonic() + self.limit
            counts[q] = self._count_dir(os.path.join(self.queue_dir, q.lower()), deadline)
        with self._lock:
            self._counts = counts
            self._stamp = time.monotonic()
            self._running = False

    def counts(self) -> dict[str, int]:
        """The latest counts by queue name; starts a recount when they are stale."""
        with self._lock:
            stale = time.monotonic() - self._stamp > self.ttl
            if self.queue_dir is not None and stale and not self._running:
                self._running = True
                threading.Thread(target=self._refresh, daemon=True).start()
            return dict(self._counts)


def to_snmp(syntax: str, value: Any) -> Any:
    """Turn a raw value into the pysnmp object of ``syntax`` (4.3 "Type conversion")."""
    if syntax == C32:
        return v2c.Counter32(int(value) % 2**32)
    if syntax == C64:
        return v2c.Counter64(int(value) % 2**64)
    if syntax == G32:
        return v2c.Gauge32(min(max(int(value), 0), 2**32 - 1))
    if syntax == TIME_INTERVAL:                  # milliseconds -> 0.01 s (4.2)
        return v2c.Integer32((int(value) // 10) % 2**31)
    if syntax == TIME_TICKS:
        return v2c.TimeTicks(int(value) % 2**32)
    if syntax == INTEGER32:
        return v2c.Integer32(int(value))
    if syntax == OBJECT_IDENTIFIER:
        return v2c.ObjectIdentifier(value)
    return v2c.OctetString(str(value).encode("utf-8"))


# ---- the agent --------------------------------------------------------------------------


class SnmpAgent:
    """Answers SNMPv2c datagrams about AMAVIS-MIB from the segment at ``path``.

    :meth:`handle` takes one request datagram and returns the response datagram,
    or None when nothing is to be sent (garbage, another SNMP version, a wrong
    community, a PDU an agent does not answer).  The clock is a parameter so
    tests can fix the time.
    """

    def __init__(self, path: str, community: str = DEFAULT_COMMUNITY, *,
                 clock: Callable[[], float] = time.time, sys_name: str | None = None,
                 queues: QueueCounter | None = None, log: Callable[[str], None] | None = None
                 ) -> None:
        self.path = path
        self.community = community.encode("utf-8")
        self.clock = clock
        self.queues = queues if queues is not None else QueueCounter(None)
        self.log = log if log is not None else self._stderr
        self.sys_strings = {
            "sysDescr": VERSION,
            "sysObjectID": ".".join(map(str, AMAVIS_PRODUCT_OID)),
            "sysContact": "",
            "sysName": sys_name if sys_name is not None else (socket.getfqdn() or "localhost"),
            "sysLocation": "",
            "sysServices": SYS_SERVICES,
        }
        self.proc_gone = 0
        self._dead_seen: set[tuple[int, float]] = set()
        self._seg: StatsSegment | None = None
        self._seg_problem: str | None = None
        self._instances: list[OID] = [o.oid + (0,) for o in OBJECTS]
        self._object_oids: list[OID] = [o.oid for o in OBJECTS]

    @staticmethod
    def _stderr(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._seg is not None:
            self._seg.close()
            self._seg = None

    # ---- reading -----------------------------------------------------------------

    def _snapshot(self) -> Snapshot | None:
        """The segment now; reopened after a cold restart, None while unreadable."""
        if self._seg is not None and self._seg.replaced():
            self._seg.close()
            self._seg = None
            self._dead_seen.clear()
        if self._seg is None:
            try:
                self._seg = StatsSegment.open_readonly(self.path)
            except FileNotFoundError:
                problem = f"No stats segment {self.path}; waiting..."
            except (SegmentError, OSError) as exc:
                problem = f"Unusable stats segment {self.path}: {exc}; waiting..."
            else:
                problem = None
            if problem != self._seg_problem:
                self._seg_problem = problem
                self.log(problem if problem else f"Reading stats segment {self.path}")
            if self._seg is None:
                return None
        return self._seg.snapshot()

    def values(self) -> dict[str, Any]:
        """Every object's raw value by internal key, read now.

        Without a readable segment only the ``MtaQueueEntries*`` keys are there,
        so the other objects are absent (noSuchObject, skipped by GETNEXT).
        Counters are taken as they are; the conversions of 4.3 are in :func:`to_snmp`.
        """
        vals: dict[str, Any] = {f"MtaQueueEntries{q}": n
                                for q, n in self.queues.counts().items()}
        snap = self._snapshot()
        if snap is None:
            return vals
        now = self.clock()
        vals.update(snap.counters)
        vals.update(self.sys_strings)
        vals["sysUpTime"] = max(0, int((now - snap.created) * 100))
        live, dead = [], set()
        for child in snap.children:
            if _pid_alive(child.pid):
                live.append(child)
            else:
                dead.add((child.pid, child.started))
        self.proc_gone += len(dead - self._dead_seen)
        self._dead_seen = dead
        vals.update(process_gauges(live, now))
        vals["ProcGone"] = self.proc_gone
        vals[_HAVE_SEGMENT] = True
        return vals

    # ---- lookups -----------------------------------------------------------------

    @staticmethod
    def _available(index: int, vals: Mapping[str, Any]) -> bool:
        """Whether object ``index`` is served now (all of them while the segment reads)."""
        return _HAVE_SEGMENT in vals or OBJECTS[index].key in vals

    @staticmethod
    def _value(index: int, vals: Mapping[str, Any]) -> Any:
        obj = OBJECTS[index]
        return to_snmp(obj.syntax, vals.get(obj.key, 0))    # never written: 0 (4.3)

    def get(self, oid: OID, vals: Mapping[str, Any]) -> tuple[OID, Any]:
        """GET of one OID: the value, noSuchInstance or noSuchObject (RFC 3416 4.2.1)."""
        i = bisect.bisect_left(self._instances, oid)
        if i < len(OBJECTS) and self._instances[i] == oid and self._available(i, vals):
            return oid, self._value(i, vals)
        j = bisect.bisect_right(self._object_oids, oid) - 1
        if j >= 0 and oid[:len(self._object_oids[j])] == self._object_oids[j] \
                and self._available(j, vals):
            return oid, rfc1905.noSuchInstance
        return oid, rfc1905.noSuchObject

    def get_next(self, oid: OID, vals: Mapping[str, Any]) -> tuple[OID, Any]:
        """GETNEXT of one OID: the first instance after it, or endOfMibView (4.2.2)."""
        i = bisect.bisect_right(self._instances, oid)
        while i < len(OBJECTS):
            if self._available(i, vals):
                return self._instances[i], self._value(i, vals)
            i += 1
        return oid, rfc1905.endOfMibView

    # ---- one datagram ----------------------------------------------------------

    def handle(self, data: bytes) -> bytes | None:
        """Answer one request datagram; None means send nothing (see the class)."""
        try:
            msg, rest = decoder.decode(data, asn1Spec=v2c.Message())
            if rest or int(msg["version"]) != 1:
                return None
            community = bytes(v2c.apiMessage.get_community(msg))
            pdu = v2c.apiMessage.get_pdu(msg)
            oids = [tuple(oid) for oid, _ in v2c.apiPDU.get_varbinds(pdu)]
        except (PyAsn1Error, ValueError, TypeError, KeyError, IndexError):
            return None
        if not hmac.compare_digest(community, self.community):
            return None
        error_status, error_index = 0, 0
        if isinstance(pdu, v2c.GetRequestPDU | v2c.GetNextRequestPDU | v2c.GetBulkRequestPDU):
            vals = self.values()
            if isinstance(pdu, v2c.GetRequestPDU):
                varbinds = [self.get(oid, vals) for oid in oids]
            elif isinstance(pdu, v2c.GetNextRequestPDU):
                varbinds = [self.get_next(oid, vals) for oid in oids]
            else:
                varbinds = self.get_bulk(oids, int(pdu["non-repeaters"]),
                                         int(pdu["max-repetitions"]), vals)
        elif isinstance(pdu, v2c.SetRequestPDU):
            varbinds = [(oid, v2c.null) for oid in oids]   # read-only MIB: notWritable (4.3)
            error_status, error_index = (17, 1) if oids else (0, 0)
        else:
            return None                                    # responses, traps, informs, reports
        return self._response(msg, pdu, varbinds, error_status, error_index,
                              bulk=isinstance(pdu, v2c.GetBulkRequestPDU))

    def get_bulk(self, oids: Sequence[OID], non_repeaters: int, max_repetitions: int,
                 vals: Mapping[str, Any]) -> list[tuple[OID, Any]]:
        """GETBULK (RFC 3416 4.2.3); stops early once every repeater hit the end."""
        n = min(max(non_repeaters, 0), len(oids))
        reps = max(max_repetitions, 0)
        out = [self.get_next(oid, vals) for oid in oids[:n]]
        cursors = list(oids[n:])
        for _ in range(reps if cursors else 0):
            row = [self.get_next(oid, vals) for oid in cursors]
            out += row
            if len(out) >= MAX_BULK_VARBINDS:
                del out[MAX_BULK_VARBINDS:]
                break
            if all(v is rfc1905.endOfMibView for _, v in row):
                break
            cursors = [oid for oid, _ in row]
        return out

    def _response(self, msg: Any, pdu: Any, varbinds: list[tuple[OID, Any]],
                  error_status: int, error_index: int, *, bulk: bool) -> bytes | None:
        rsp_msg = v2c.apiMessage.get_response(msg)
        rsp_pdu = v2c.apiMessage.get_pdu(rsp_msg)
        keep = len(varbinds)
        while True:
            v2c.apiPDU.set_varbinds(rsp_pdu, varbinds[:keep])
            v2c.apiPDU.set_error_status(rsp_pdu, error_status)
            v2c.apiPDU.set_error_index(rsp_pdu, error_index)
            wire = encoder.encode(rsp_msg)
            if len(wire) <= MAX_RESPONSE_SIZE:
                return bytes(wire)
            if bulk and keep > 1:                # drop bindings from the end (4.2.3)
                keep = max(1, keep * MAX_RESPONSE_SIZE // len(wire) - 1)
                continue
            if error_status == 1:
                return None
            varbinds, keep, error_status, error_index = [], 0, 1, 0   # tooBig (4.2.1)


# ---- serving ----------------------------------------------------------------------------


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, agent: SnmpAgent) -> None:
        self.agent = agent
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport                # a DatagramTransport in practice

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            reply = self.agent.handle(data)
        except Exception as exc:  # noqa: BLE001 - one bad datagram must not stop the agent
            self.agent.log(f"amavisd-agent: dropped a request from {addr[0]}: {exc!r}")
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        pass                                     # ICMP errors for earlier replies


async def serve(agent: SnmpAgent, host: str, port: int, stop: asyncio.Event,
                ready: Callable[[tuple[Any, ...]], None] | None = None) -> None:
    """Answer on UDP ``host:port`` until ``stop`` is set; ``ready`` gets the bound address."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Protocol(agent), local_addr=(host, port), family=family)
    try:
        if ready is not None:
            ready(transport.get_extra_info("sockname"))
        await stop.wait()
    finally:
        transport.close()


def serve_forever(path: str, host: str, port: int, community: str = DEFAULT_COMMUNITY) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    agent = SnmpAgent(path, community, queues=QueueCounter.from_postconf())

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(agent, host, port, stop, ready=lambda addr: agent.log(
            f"amavisd-agent: SNMP agent for AMAVIS-MIB on udp {addr[0]}:{addr[1]}"))

    try:
        asyncio.run(run())
    except OSError as exc:
        sys.stderr.write(f"amavisd-agent: cannot listen on udp {host}:{port}: {exc}\n")
        return EXIT_FAILURE
    finally:
        agent.close()
    return EXIT_OK
