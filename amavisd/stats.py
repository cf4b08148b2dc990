"""The shared-memory stats segment: nanny states and counters of every child.

Replaces amavisd-new's BerkeleyDB ``nanny.db`` and ``snmp.db`` (spec/monitoring.md
section 1; project decision in section 7 and DESIGN.md "Stats segment").  One file,
``<db_home>/amavisd-stats.mmap``, is created by the master before it forks
(:meth:`StatsSegment.create`, mode 0640), is written by the children
(:meth:`StatsSegment.attach`, then :meth:`StatsSegment.writer`) and is read by the
tools (:meth:`StatsSegment.open_readonly`, then :meth:`StatsSegment.snapshot`).

Why no lock: every child owns one slot and is its only writer, so an increment is a
plain load and store of a native uint64 in its own counter shard.  A reader copies a
slot under a per-slot sequence counter (a seqlock): the writer makes it odd before an
update and even after, and a reader that saw an odd value, or a different value after
its copy, copies again.  Writers never wait; readers retry for a bounded time.  The
master is the only writer of the folded totals and only folds a slot once its child
has died, so the master and a child never write the same slot at the same time.

Layout (all integers native-endian uint64, floats native double, 8-byte aligned; see
``SEGMENT_LAYOUT_DOC`` for the prose version that goes to docs/)::

    header      256 bytes   magic, version, geometry, master pid, creation time,
                            generation, offsets, totals seqlock
    directory   ncounters x 64 bytes   counter name (60 bytes, NUL padded) + type (4)
    totals      ncounters x 8          folded counters, written by the master only
    dyn totals  ndyn_total x 72        dynamic name (64) + value (8), master only
    slots       nslots x slot_size     one per child index, see ``_S_*`` offsets
                            (mail_id and state_since live in what was padding)

The directory is stored in the file so a reader built from another revision maps
names correctly and so :meth:`StatsSegment.open_or_create` can carry totals over by
name when a later revision appends counters (monitoring.md 7 item 2: counters
survive a HUP).
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple, Self

from amavisd.constants import CCAT_DISPLAY_NAMES_MAJOR, NANNY_STATES

__all__ = [
    "COUNTER_NAMES",
    "COUNTER_TYPES",
    "DEFAULT_FILENAME",
    "SegmentError",
    "SlotInfo",
    "SlotWriter",
    "Snapshot",
    "StatsSegment",
    "count",
    "count_many",
    "drain_pending",
    "is_idle",
    "state_level",
]

DEFAULT_FILENAME = "amavisd-stats.mmap"

MAGIC = b"AMVSTAT\x00"
VERSION = 1
_BOM = 0x0102030405060708            # native-endian check: a foreign-endian file fails
HEADER_SIZE = 256
DIR_ENTRY = 64                       # 60 bytes of name, 4 bytes of type ("C32"/"C64")
DIR_NAME_LEN = 60
DYN_NAME_LEN = 64
DYN_ENTRY = DYN_NAME_LEN + 8
TASK_ID_LEN = 32
DEFAULT_DYN_PER_SLOT = 32
DEFAULT_DYN_TOTAL = 256

# Header fields, as uint64 indexes (byte offset / 8).  Index 0 holds the magic.
_H_VERSION, _H_BOM, _H_HEADER_SIZE, _H_NSLOTS, _H_NCOUNTERS = 1, 2, 3, 4, 5
_H_SLOT_SIZE, _H_NDYN_SLOT, _H_NDYN_TOTAL, _H_MASTER_PID = 6, 7, 8, 9
_H_CREATED = 10                      # double: Unix time of the cold start (sysUpTime)
_H_GENERATION = 11                   # +1 on every open_or_create (HUP re-exec)
_H_DIR_OFF, _H_TOTALS_OFF, _H_DYN_TOTALS_OFF, _H_SLOTS_OFF = 12, 13, 14, 15
_H_TOTALS_SEQ = 16                   # seqlock of totals + dyn totals (master writes)
_H_TOTALS_NDYN = 17                  # used entries of the dyn totals table
_H_DYN_DROPPED = 18                  # increments lost because a dyn table was full
_H_FILE_SIZE = 19

# Slot fields, as byte offsets inside a slot.
_S_SEQ = 0                           # seqlock; odd while the child is mid-update
_S_PID = 8                           # 0 = free
_S_TIMESTAMP = 16                    # double: the nanny "age" base (monitoring.md 1.5)
_S_HEARTBEAT = 24                    # double: time.time() of the last sign of life
_S_CONNECTIONS = 32                  # connections accepted by this child
_S_NDYN = 40                         # used entries of this slot's dyn table
_S_DYN_DROPPED = 48                  # increments lost because this table was full
_S_EXITING = 56                      # 1 after child_exiting(): hidden from the nanny
_S_STARTED = 64                      # double: child start time
_S_STATE = 72                        # 8 bytes: state letter, NUL padded ("" = idle)
_S_TASK_ID = 80                      # 32 bytes: am_id, NUL padded
# Added inside the former padding (112..127), so VERSION and slot size are unchanged;
# a reader that predates them ignores them and a writer that predates them leaves zeros.
_S_MAIL_ID = 112                     # 12 bytes: mail_id of the message being checked
_S_STATE_SINCE = 124                 # uint32: 1 + tenths of a second from `started` to
                                     # the change into the current state; 0 = unknown
MAIL_ID_LEN = 12
_S_COUNTERS = 128                    # ncounters x uint64, then the dyn table


class SegmentError(Exception):
    """The file is missing a segment, has another version, or a slot is misused."""


# --------------------------------------------------------------------------------
# The counter table (monitoring.md section 1.3).  Built from the naming rules so a
# later issue appends names at the end; indexes of existing names never move.

DIRECTIONS = ("", "Inbound", "Internal", "Outbound", "OpenRelay", "Originating")
STATUSES = ("Accepted", "RelayedTagged", "RelayedUntagged", "Discarded", "NoBounce",
            "Bounced", "Rejected", "TempFailed", "Unknown")
OUT_PROTOCOLS = ("SMTP", "LMTP", "Local", "BSMTP", "Pipe", "SQL")
SUBMIT_TYPES = ("Quar", "Dsn", "Notif", "AV", "Arf")
TIME_SECTIONS = ("Receiving", "Decoding", "VirusCheck", "SpamCheck", "PenPals",
                 "Sending", "Total")


def _build_counter_table() -> list[tuple[str, str]]:
    """Return ``[(name, type)]`` in index order; type is ``C32`` or ``C64``.

    C64 are the byte sums (``*Size*``), the log statistics and ``UserCounter*``
    (monitoring.md 1.3 and the MIB groups 1.3, 1.7, 1.9, 1.15, 1.17 in section 4.1).
    """
    names: list[str] = []
    cats = list(CCAT_DISPLAY_NAMES_MAJOR.values())
    # Message intake.
    names += [f"InMsgs{d}" for d in DIRECTIONS]
    names += ["InMsgsBounceNullRPath"]
    names += [f"InMsgsRecips{d}" for d in DIRECTIONS] + ["InMsgsRecipsLocal"]
    names += [f"InMsgsSize{d}" for d in DIRECTIONS]
    # Bounce handling.
    names += ["InMsgsBounce", "InMsgsBounceRescuedByPenPals",
              "InMsgsBounceRescuedByOriginating", "InMsgsBounceRescuedByDomain",
              "InMsgsBounceKilled", "InMsgsBounceUnverifiable"]
    # Final status: every status with every direction, plus the undirected Relayed.
    names += [f"InMsgsStatus{s}{d}" for s in STATUSES for d in DIRECTIONS]
    names += ["InMsgsStatusRelayed"]
    # Content category, once per message.
    names += [f"Content{c}Msgs{d}" for c in cats for d in DIRECTIONS]
    # Operations (the fixed ones; OpsDecType-* and external OpsDecBy* are dynamic).
    names += ["OpsDec", "OpsVirusCheck", "OpsSpamCheck", "OpsSqlSelect", "OpsLDAPSearch"]
    names += [f"OpsDecBy{x}" for x in ("MimeParser", "UUlibAttempt", "UUlib",
                                       "ArZipAttempt", "ArZip", "Zlib", "Tnef")]
    # Outgoing mail: forwarded, then originated by amavis.
    variants = ["", "Relay"]
    variants += [f"Proto{p}" for p in OUT_PROTOCOLS]
    variants += [f"Proto{p}Relay" for p in OUT_PROTOCOLS]
    variants += ["Submit"] + [f"Proto{p}Submit" for p in OUT_PROTOCOLS]
    variants += [f"Submit{t}" for t in SUBMIT_TYPES]
    names += [f"OutMsgs{v}" for v in variants]
    names += [f"OutMsgsSize{v}" for v in variants]
    names += ["OutMsgsDelivers", "OutMsgsAttemptFails", "OutMsgsRejects"]
    names += ["OutConnNew", "OutConnQuit", "OutConnTransact", "OutConnReuseRecent",
              "OutConnReuseRefreshed", "OutConnReuseFail"]
    # Quarantine.
    quar = ["Arch", "Other", *cats]
    names += ["QuarMsgs", "QuarMsgsSize"]
    names += [f"QuarMsgs{x}" for x in quar] + [f"QuarMsgsSize{x}" for x in quar]
    names += ["QuarAttemptTempFails", "QuarAttemptFails"]
    # Pen pals, SQL logging.
    names += [f"PenPalsSavedFrom{x}" for x in ("Tag2", "Tag3", "Kill")]
    names += ["PenPalsAttempts", "PenPalsAttemptsMid", "PenPalsAttemptsRid",
              "PenPalsMisses", "PenPalsHits", "PenPalsHitsMidRid", "PenPalsHitsMid",
              "PenPalsHitsRid", "PenPalsHitsnone"]
    names += ["SqlAddrSenderAttempts", "SqlAddrSenderHits", "SqlAddrSenderMisses",
              "SqlAddrRecipAttempts", "SqlAddrRecipHits", "SqlAddrRecipMisses",
              "GenMailIdRetries"]
    # Logging statistics.
    names += ["LogLines", "LogEntries"]
    names += [f"LogEntries{x}" for x in ("Emerg", "Alert", "Crit", "Err", "Warning",
                                         "Notice", "Info", "Debug")]
    names += [f"LogEntriesLevel{i}" for i in range(6)] + ["LogRetries"]
    # Elapsed time, cumulative milliseconds.
    names += [f"TimeElapsed{s}" for s in TIME_SECTIONS]
    # MIB-only names that stock amavisd never writes (monitoring.md 1.3, 7 item 8).
    names += ["CacheAttempts", "CacheMisses", "CacheHits", "CacheHitsVirusCheck",
              "CacheHitsVirusMsgs"]
    names += [f"UserCounter{i}" for i in range(1, 11)]
    # Append new names below this line only.

    table = []
    for name in names:
        wide = "Size" in name or name.startswith(("Log", "UserCounter"))
        table.append((name, "C64" if wide else "C32"))
    return table


_COUNTER_TABLE = _build_counter_table()
COUNTER_NAMES: tuple[str, ...] = tuple(n for n, _ in _COUNTER_TABLE)
COUNTER_TYPES: dict[str, str] = dict(_COUNTER_TABLE)
assert len(COUNTER_NAMES) == len(COUNTER_TYPES), "duplicate counter name"

# --------------------------------------------------------------------------------
# Nanny states (monitoring.md 1.5).

#: The details level of each state letter: it is written only when its level is at
#: most ``nanny_details_level``.  "" here is "request done" (level 1); the level-0
#: idle entry at child start goes through ``child_started()``.
_STATE_LEVELS: dict[str, int] = {letter: 2 for letter in NANNY_STATES}
_STATE_LEVELS.update({"": 1, "A": 1, "m": 1, "=": 1, ".": 1})
#: States that restart the nanny's age (monitoring.md 1.5 "Timestamp rule").
_RESETTING = frozenset("Am")
#: States written without a task id, so readers see them as idle or as 'A'.
_NO_TASK_ID = frozenset(["", ".", "A"])
#: States that end (or come before) a message, so the slot's mail_id is cleared.
_CLEARS_MAIL_ID = frozenset(["", ".", "A", "m"])
#: States for which set_state(letter, None) writes an empty task id (not "keep").
_KEEPS_NO_TASK_ID = _CLEARS_MAIL_ID


def state_level(letter: str) -> int:
    """Return the details level of a state letter (monitoring.md 1.5 table)."""
    try:
        return _STATE_LEVELS[letter]
    except KeyError:
        raise ValueError(f"unknown nanny state {letter!r}") from None


def is_idle(state: str, task_id: str) -> bool:
    """The reader rule shared by nanny and subagent (monitoring.md 1.5, last line)."""
    return not task_id and state in ("", " ", ".")


class SlotInfo(NamedTuple):
    """One child's slot as a reader sees it; ``pid == 0`` means a free slot."""

    pid: int
    state: str
    timestamp: float
    task_id: str
    heartbeat: float
    busy: bool
    index: int = -1
    connections: int = 0
    exiting: bool = False
    started: float = 0.0
    mail_id: str = ""                # "" = none recorded (no message, or older writer)
    state_since: float = 0.0         # Unix time the current state began; 0.0 = unknown


class Snapshot(NamedTuple):
    """A consistent read of the whole segment (what a tool works from)."""

    children: list[SlotInfo]         # occupied slots whose child is not exiting
    counters: dict[str, int]         # totals + every shard, fixed and dynamic names
    created: float = 0.0             # cold-start time, the agent's sysUpTime
    generation: int = 0
    master_pid: int = 0
    dyn_dropped: int = 0


# --------------------------------------------------------------------------------


def _pad(text: str, size: int) -> bytes:
    """Encode ``text`` into exactly ``size`` bytes, NUL padded and truncated."""
    raw = text.encode("utf-8", "replace")[:size]
    return raw + b"\x00" * (size - len(raw))


def _unpad(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class _Geometry(NamedTuple):
    nslots: int
    ncounters: int
    ndyn_slot: int
    ndyn_total: int
    slot_size: int
    dir_off: int
    totals_off: int
    dyn_totals_off: int
    slots_off: int
    file_size: int


def _geometry(nslots: int, ncounters: int, ndyn_slot: int, ndyn_total: int) -> _Geometry:
    slot_size = _round_up(_S_COUNTERS + 8 * ncounters + DYN_ENTRY * ndyn_slot, 64)
    dir_off = HEADER_SIZE
    totals_off = _round_up(dir_off + DIR_ENTRY * ncounters, 64)
    dyn_totals_off = _round_up(totals_off + 8 * ncounters, 64)
    slots_off = _round_up(dyn_totals_off + DYN_ENTRY * ndyn_total, 4096)
    file_size = _round_up(slots_off + slot_size * nslots, 4096)
    return _Geometry(nslots, ncounters, ndyn_slot, ndyn_total, slot_size, dir_off,
                     totals_off, dyn_totals_off, slots_off, file_size)


def _pid_alive(pid: int) -> bool:
    """``kill 0``: only ESRCH means gone (EPERM is someone else's live process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StatsSegment:
    """A mapped stats segment file; see the module docstring for the layout."""

    #: How long a reader retries a slot whose writer is mid-update before it takes
    #: the copy as is (the writer was killed mid-update, or is badly descheduled).
    READ_RETRY_SECONDS = 0.5

    def __init__(self, path: str, fd: int, mm: mmap.mmap, writable: bool) -> None:
        self.path = path
        self._fd = fd
        self._mm = mm
        self.writable = writable
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        self._b = memoryview(mm)
        self._q = self._b.cast("Q")
        self._d = self._b.cast("d")
        try:
            self._check_header()
        except SegmentError:
            self._release()
            raise
        q = self._q
        self.geometry = _Geometry(
            q[_H_NSLOTS], q[_H_NCOUNTERS], q[_H_NDYN_SLOT], q[_H_NDYN_TOTAL],
            q[_H_SLOT_SIZE], q[_H_DIR_OFF], q[_H_TOTALS_OFF], q[_H_DYN_TOTALS_OFF],
            q[_H_SLOTS_OFF], q[_H_FILE_SIZE])
        g = self.geometry
        self.counter_names: tuple[str, ...] = tuple(
            _unpad(bytes(mm[g.dir_off + i * DIR_ENTRY:g.dir_off + i * DIR_ENTRY
                             + DIR_NAME_LEN]))
            for i in range(g.ncounters))
        self.counter_index: dict[str, int] = {n: i for i, n in enumerate(self.counter_names)}

    # ---- opening ----------------------------------------------------------------

    @classmethod
    def create(cls, path: str, nslots: int, master_pid: int, *,
               ndyn_slot: int = DEFAULT_DYN_PER_SLOT, ndyn_total: int = DEFAULT_DYN_TOTAL,
               created: float | None = None, generation: int = 0) -> StatsSegment:
        """Create a fresh segment (cold start).  Runs in the master, before forking.

        The file is written under a temporary name and renamed over ``path`` so a
        reader never maps a half-written header, and so the inode changes: a tool
        that notices it reopens (monitoring.md 2.1 "Reopening", 7 item 2).
        """
        g = _geometry(nslots, len(COUNTER_NAMES), ndyn_slot, ndyn_total)
        tmp = f"{path}.tmp.{os.getpid()}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            os.fchmod(fd, 0o640)             # regardless of the umask (monitoring.md 1.1)
            os.ftruncate(fd, g.file_size)
            mm = mmap.mmap(fd, g.file_size, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE)
            mm[0:8] = MAGIC
            q = memoryview(mm).cast("Q")
            d = memoryview(mm).cast("d")
            for idx, value in ((_H_BOM, _BOM), (_H_HEADER_SIZE, HEADER_SIZE),
                               (_H_NSLOTS, nslots), (_H_NCOUNTERS, g.ncounters),
                               (_H_SLOT_SIZE, g.slot_size), (_H_NDYN_SLOT, ndyn_slot),
                               (_H_NDYN_TOTAL, ndyn_total), (_H_MASTER_PID, master_pid),
                               (_H_GENERATION, generation), (_H_DIR_OFF, g.dir_off),
                               (_H_TOTALS_OFF, g.totals_off),
                               (_H_DYN_TOTALS_OFF, g.dyn_totals_off),
                               (_H_SLOTS_OFF, g.slots_off), (_H_FILE_SIZE, g.file_size)):
                q[idx] = value
            d[_H_CREATED] = time.time() if created is None else created
            for i, (name, ctype) in enumerate(_COUNTER_TABLE):
                off = g.dir_off + i * DIR_ENTRY
                mm[off:off + DIR_ENTRY] = _pad(name, DIR_NAME_LEN) + _pad(ctype, 4)
            q[_H_VERSION] = VERSION              # last: a complete header has a version
            q.release()
            d.release()
            mm.flush()
            mm.close()
            os.replace(tmp, path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        os.close(fd)
        return cls._open(path, writable=True)

    @classmethod
    def open_or_create(cls, path: str, nslots: int, master_pid: int, *,
                       ndyn_slot: int = DEFAULT_DYN_PER_SLOT,
                       ndyn_total: int = DEFAULT_DYN_TOTAL) -> StatsSegment:
        """Reopen the segment after a HUP re-exec, keeping totals; else create it.

        Counters and the creation time survive a reload (monitoring.md 1.1 "warm
        restart", 7 item 2).  Every slot is folded: the previous master's children
        are gone by the time the new master starts its own.  If the geometry or the
        counter directory differ (another ``nslots``, counters appended by a newer
        revision), a new file is made and the old values are carried over by name.
        A file that is not a segment of this version is replaced by a fresh one.
        """
        try:
            old = cls._open(path, writable=True)
        except (FileNotFoundError, SegmentError):
            return cls.create(path, nslots, master_pid, ndyn_slot=ndyn_slot,
                              ndyn_total=ndyn_total)
        g = old.geometry
        same = (g.nslots == nslots and g.ndyn_slot == ndyn_slot
                and g.ndyn_total == ndyn_total and old.counter_names == COUNTER_NAMES)
        if same:
            if old._q[_H_TOTALS_SEQ] & 1:     # the old master died mid-fold
                old._q[_H_TOTALS_SEQ] += 1
            for i in range(g.nslots):
                old.fold(i)
            old._q[_H_MASTER_PID] = master_pid
            old._q[_H_GENERATION] += 1
            return old
        snap = old.snapshot()
        generation = snap.generation + 1
        old.close()
        new = cls.create(path, nslots, master_pid, ndyn_slot=ndyn_slot,
                         ndyn_total=ndyn_total, created=snap.created, generation=generation)
        new._load_totals(snap.counters, snap.dyn_dropped)
        return new

    @classmethod
    def attach(cls, path: str) -> StatsSegment:
        """Map an existing segment read-write.  Runs in a child, after the fork."""
        return cls._open(path, writable=True)

    @classmethod
    def open_readonly(cls, path: str) -> StatsSegment:
        """Map an existing segment read-only (tools need only read permission)."""
        return cls._open(path, writable=False)

    @classmethod
    def _open(cls, path: str, writable: bool) -> StatsSegment:
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        fd = os.open(path, flags)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE or size % 4096:
                raise SegmentError(f"{path}: not a stats segment (size {size})")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
            return cls(path, fd, mm, writable)
        except BaseException:
            os.close(fd)
            raise

    def _check_header(self) -> None:
        if bytes(self._mm[0:8]) != MAGIC:
            raise SegmentError(f"{self.path}: not a stats segment (bad magic)")
        q = self._q
        if q[_H_BOM] != _BOM:
            raise SegmentError(f"{self.path}: written on a machine of another byte order")
        if q[_H_VERSION] != VERSION:
            raise SegmentError(f"{self.path}: segment version {q[_H_VERSION]}, "
                               f"expected {VERSION}")
        if q[_H_FILE_SIZE] > len(self._mm):
            raise SegmentError(f"{self.path}: truncated stats segment")

    def close(self) -> None:
        """Unmap and close; any writer made from this segment is unusable after it."""
        self._release()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _release(self) -> None:
        for view in ("_q", "_d", "_b"):
            mv = getattr(self, view, None)
            if mv is not None:
                mv.release()
                setattr(self, view, None)
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def replaced(self) -> bool:
        """True when ``path`` now names another file (a cold restart made a new one).

        The tools then reopen, as the Perl ones do when the inode changes
        (monitoring.md 2.1, 3.1).  A vanished file counts as replaced.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._ident

    # ---- header -------------------------------------------------------------------

    @property
    def nslots(self) -> int:
        return self.geometry.nslots

    @property
    def master_pid(self) -> int:
        return self._q[_H_MASTER_PID]

    @property
    def created(self) -> float:
        return self._d[_H_CREATED]

    @property
    def generation(self) -> int:
        return self._q[_H_GENERATION]

    def _slot_off(self, i: int) -> int:
        if not 0 <= i < self.geometry.nslots:
            raise IndexError(f"slot {i} out of range 0..{self.geometry.nslots - 1}")
        return self.geometry.slots_off + i * self.geometry.slot_size

    # ---- writer side (child) ------------------------------------------------------

    def writer(self, slot_index: int, pid: int | None = None,
               nanny_details_level: int = 1) -> SlotWriter:
        """Return the writer of slot ``slot_index``.  Runs in the child, after the fork."""
        if not self.writable:
            raise SegmentError("writer() needs a segment opened with attach()")
        return SlotWriter(self, slot_index, os.getpid() if pid is None else pid,
                          nanny_details_level)

    # ---- master side --------------------------------------------------------------

    def claim(self, i: int, pid: int) -> None:
        """Record that child ``pid`` owns slot ``i``.  Runs in the master after fork.

        Only the pid is written (one aligned 8-byte store), because the child may
        already be writing the rest of its slot: the child is the slot's only
        seqlock writer.  A slot must be free (folded) or already carry ``pid``.
        """
        off = self._slot_off(i)
        cur = self._q[(off + _S_PID) // 8]
        if cur not in (0, pid):
            raise SegmentError(f"slot {i} is still owned by pid {cur}; fold it first")
        self._q[(off + _S_PID) // 8] = pid

    def slot_info(self, i: int) -> SlotInfo:
        """Read slot ``i`` consistently (seqlock); used by the master's stale check."""
        return self._parse_slot(i, self._read_slot(i))[0]

    def fold(self, i: int) -> None:
        """Add slot ``i``'s shard into the totals, zero it and free the slot.

        Runs in the master once child ``i`` has died (reaped), so nothing else
        writes the slot.  Both seqlocks are held odd meanwhile, so a reader's
        snapshot sees the counts either in the shard or in the totals, never twice.
        """
        g = self.geometry
        off = self._slot_off(i)
        q, b = self._q, self._b
        seq = (off + _S_SEQ) // 8
        base = (off + _S_COUNTERS) // 8
        tbase = g.totals_off // 8
        q[_H_TOTALS_SEQ] += 1                                        # totals: even -> odd
        if q[seq] % 2 == 0:                                          # slot: -> odd
            q[seq] += 1
        for k in range(g.ncounters):
            v = q[base + k]
            if v:
                q[tbase + k] = (q[tbase + k] + v) & 0xFFFFFFFFFFFFFFFF
                q[base + k] = 0
        ndyn = min(q[(off + _S_NDYN) // 8], g.ndyn_slot)
        dyn_off = off + _S_COUNTERS + 8 * g.ncounters
        if ndyn:
            index = self._dyn_totals_index()
            for k in range(ndyn):
                eoff = dyn_off + k * DYN_ENTRY
                name = _unpad(bytes(b[eoff:eoff + DYN_NAME_LEN]))
                v = q[(eoff + DYN_NAME_LEN) // 8]
                self._add_dyn_total(index, name, v)
            b[dyn_off:dyn_off + DYN_ENTRY * ndyn] = bytes(DYN_ENTRY * ndyn)
        q[_H_DYN_DROPPED] += q[(off + _S_DYN_DROPPED) // 8]
        b[off + _S_PID:off + _S_COUNTERS] = bytes(_S_COUNTERS - _S_PID)    # pid 0: free
        q[seq] += 1                                                  # slot: -> even
        q[_H_TOTALS_SEQ] += 1                                        # totals: -> even

    def _dyn_totals_index(self) -> dict[str, int]:
        g = self.geometry
        index = {}
        for k in range(min(self._q[_H_TOTALS_NDYN], g.ndyn_total)):
            eoff = g.dyn_totals_off + k * DYN_ENTRY
            index[_unpad(bytes(self._b[eoff:eoff + DYN_NAME_LEN]))] = k
        return index

    def _add_dyn_total(self, index: dict[str, int], name: str, v: int) -> None:
        """Add to a dynamic total; the caller holds the totals seqlock odd."""
        g, q = self.geometry, self._q
        k = index.get(name)
        if k is None:
            k = q[_H_TOTALS_NDYN]
            if k >= g.ndyn_total:
                q[_H_DYN_DROPPED] += v
                return
            eoff = g.dyn_totals_off + k * DYN_ENTRY
            self._b[eoff:eoff + DYN_NAME_LEN] = _pad(name, DYN_NAME_LEN)
            q[_H_TOTALS_NDYN] = k + 1
            index[name] = k
        vidx = (g.dyn_totals_off + k * DYN_ENTRY + DYN_NAME_LEN) // 8
        q[vidx] = (q[vidx] + v) & 0xFFFFFFFFFFFFFFFF

    def _load_totals(self, counters: Mapping[str, int], dropped: int) -> None:
        """Write carried-over values into fresh totals (open_or_create migration)."""
        q = self._q
        tbase = self.geometry.totals_off // 8
        q[_H_TOTALS_SEQ] += 1
        index = self._dyn_totals_index()
        for name, v in counters.items():
            if not v:
                continue
            k = self.counter_index.get(name)
            if k is not None:
                q[tbase + k] += v
            else:                          # a name this revision no longer has fixed
                self._add_dyn_total(index, name, v)
        q[_H_DYN_DROPPED] += dropped
        q[_H_TOTALS_SEQ] += 1

    # ---- reader side --------------------------------------------------------------

    def _read_slot(self, i: int) -> bytes:
        """Copy slot ``i`` under its seqlock.  Never blocks the writer."""
        off = self._slot_off(i)
        size = self.geometry.slot_size
        q, mm = self._q, self._mm
        seq = (off + _S_SEQ) // 8
        deadline = None
        spins = 0
        while True:
            s1 = q[seq]
            if not s1 & 1:
                data = mm[off:off + size]
                if q[seq] == s1:
                    return data
            spins += 1
            if spins < 100:
                continue
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.READ_RETRY_SECONDS
            pid = q[(off + _S_PID) // 8]
            if now > deadline or (s1 & 1 and pid and not _pid_alive(pid)):
                return mm[off:off + size]    # writer died or stalled mid-update
            time.sleep(0)

    def _parse_slot(self, i: int, data: bytes) -> tuple[SlotInfo, memoryview, int]:
        """Return (info, counter view, dyn count) of one copied slot."""
        mv = memoryview(data)
        sq = mv.cast("Q")
        sd = mv.cast("d")
        state = _unpad(data[_S_STATE:_S_STATE + 8])
        task_id = _unpad(data[_S_TASK_ID:_S_TASK_ID + TASK_ID_LEN])
        pid = sq[_S_PID // 8]
        started = sd[_S_STARTED // 8]
        (since,) = struct.unpack_from("=I", data, _S_STATE_SINCE)
        info = SlotInfo(
            pid=pid, state=state, timestamp=sd[_S_TIMESTAMP // 8], task_id=task_id,
            heartbeat=sd[_S_HEARTBEAT // 8], busy=bool(pid) and not is_idle(state, task_id),
            index=i, connections=sq[_S_CONNECTIONS // 8], exiting=bool(sq[_S_EXITING // 8]),
            started=started, mail_id=_unpad(data[_S_MAIL_ID:_S_MAIL_ID + MAIL_ID_LEN]),
            state_since=started + (since - 1) / 10 if since else 0.0)
        n = self.geometry.ncounters
        counters = sq[_S_COUNTERS // 8:_S_COUNTERS // 8 + n]
        return info, counters, min(sq[_S_NDYN // 8], self.geometry.ndyn_slot)

    def snapshot(self) -> Snapshot:
        """Read every slot and the totals into one consistent picture.

        ``counters`` holds totals plus every shard (a dead child's shard counts
        until the master folds it), fixed names always present, dynamic names
        when non-zero.  The totals seqlock is read around the whole pass, so a
        fold in between makes the pass start again.
        """
        g = self.geometry
        q, mm = self._q, self._mm
        deadline = time.monotonic() + self.READ_RETRY_SECONDS
        while True:
            t1 = q[_H_TOTALS_SEQ]
            if t1 & 1 and time.monotonic() < deadline:
                time.sleep(0)
                continue
            totals = list(memoryview(mm[g.totals_off:g.totals_off + 8 * g.ncounters])
                          .cast("Q"))
            dyn_raw = mm[g.dyn_totals_off:g.dyn_totals_off + DYN_ENTRY * g.ndyn_total]
            tndyn = min(q[_H_TOTALS_NDYN], g.ndyn_total)
            dropped = q[_H_DYN_DROPPED]
            slots = [self._read_slot(i) for i in range(g.nslots)]
            if q[_H_TOTALS_SEQ] == t1 or time.monotonic() >= deadline:
                break
        dyn: dict[str, int] = {}
        _sum_dyn(dyn, dyn_raw, tndyn)
        children = []
        for i, data in enumerate(slots):
            info, shard, ndyn = self._parse_slot(i, data)
            for k, v in enumerate(shard):
                if v:
                    totals[k] += v
            if ndyn:
                start = _S_COUNTERS + 8 * g.ncounters
                _sum_dyn(dyn, data[start:start + DYN_ENTRY * ndyn], ndyn)
            dropped += memoryview(data).cast("Q")[_S_DYN_DROPPED // 8]
            if info.pid and not info.exiting:
                children.append(info)
        counters = dict(zip(self.counter_names, totals, strict=True))
        for name, v in dyn.items():
            counters[name] = counters.get(name, 0) + v
        return Snapshot(children=children, counters=counters, created=self.created,
                        generation=self.generation, master_pid=self.master_pid,
                        dyn_dropped=dropped)


def _sum_dyn(into: dict[str, int], raw: bytes, n: int) -> None:
    for k in range(n):
        eoff = k * DYN_ENTRY
        name = _unpad(raw[eoff:eoff + DYN_NAME_LEN])
        (v,) = struct.unpack_from("=Q", raw, eoff + DYN_NAME_LEN)
        if name and v:
            into[name] = into.get(name, 0) + v


class SlotWriter:
    """The single writer of one slot.  Runs in the child that owns the slot.

    Offsets are computed once here so that ``add()`` is a dict lookup and three
    stores into a native uint64 view.  Not thread-safe: one writer, one thread.
    """

    def __init__(self, seg: StatsSegment, slot_index: int, pid: int,
                 nanny_details_level: int = 1) -> None:
        g = seg.geometry
        off = seg._slot_off(slot_index)
        self.segment = seg
        self.slot_index = slot_index
        self.pid = pid
        self.nanny_details_level = nanny_details_level
        self._q = seg._q
        self._d = seg._d
        self._b = seg._b
        self._off = off
        self._seq = (off + _S_SEQ) // 8
        self._pid_i = (off + _S_PID) // 8
        self._ts_i = (off + _S_TIMESTAMP) // 8
        self._hb_i = (off + _S_HEARTBEAT) // 8
        self._conn_i = (off + _S_CONNECTIONS) // 8
        self._ndyn_i = (off + _S_NDYN) // 8
        self._dropped_i = (off + _S_DYN_DROPPED) // 8
        self._exiting_i = (off + _S_EXITING) // 8
        self._started_i = (off + _S_STARTED) // 8
        self._state_off = off + _S_STATE
        self._task_off = off + _S_TASK_ID
        self._mail_off = off + _S_MAIL_ID
        self._since_off = off + _S_STATE_SINCE
        base = (off + _S_COUNTERS) // 8
        #: name -> uint64 index of this slot's shard cell.
        self._cell = {name: base + k for k, name in enumerate(seg.counter_names)}
        self._dyn_off = off + _S_COUNTERS + 8 * g.ncounters
        self._ndyn_max = g.ndyn_slot
        self._dyn_cell: dict[str, int] = {}
        for k in range(min(self._q[self._ndyn_i], g.ndyn_slot)):     # re-attach
            eoff = self._dyn_off + k * DYN_ENTRY
            name = _unpad(bytes(self._b[eoff:eoff + DYN_NAME_LEN]))
            self._dyn_cell[name] = (eoff + DYN_NAME_LEN) // 8
        self._task_cache: tuple[str, bytes] = ("", bytes(TASK_ID_LEN))

    # ---- counters ---------------------------------------------------------------

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the fixed counter ``name``; an unknown name is a KeyError.

        A negative increment adds nothing (monitoring.md 1.2, C32 rule).
        """
        cell = self._cell[name]
        if n > 0:
            q = self._q
            s = self._seq
            q[s] += 1
            q[cell] += n
            q[s] += 1

    def add_many(self, counts: Mapping[str, int] | Iterable[tuple[str, int]]) -> None:
        """Add several counters as one update: a reader sees all of them or none.

        This is the per-message flush of monitoring.md 1.2 ("flushed once per
        message").  Names are checked before anything is written; a name not in
        the fixed table goes to the dynamic table.
        """
        items = list(counts.items() if isinstance(counts, Mapping) else counts)
        cells = self._cell
        q = self._q
        s = self._seq
        q[s] += 1
        try:
            for name, n in items:
                if n <= 0:
                    continue
                cell = cells.get(name)
                if cell is None:
                    self._add_dyn_locked(name, n)
                else:
                    q[cell] += n
        finally:
            q[s] += 1

    def add_dynamic(self, name: str, n: int = 1) -> None:
        """Add to a dynamic name (``virus.byname.*``, ``OpsDecType-*``).

        A fixed name is routed to its fixed cell.  A new name takes the next entry
        of this slot's bounded table; when the table is full the increment is
        counted in the slot's ``dyn_dropped`` instead (reported by the snapshot).
        Names are stored in at most 64 bytes of UTF-8.
        """
        if n <= 0:
            return
        q = self._q
        s = self._seq
        q[s] += 1
        try:
            cell = self._cell.get(name)
            if cell is None:
                self._add_dyn_locked(name, n)
            else:
                q[cell] += n
        finally:
            q[s] += 1

    def _add_dyn_locked(self, name: str, n: int) -> None:
        q = self._q
        cell = self._dyn_cell.get(name)
        if cell is None:
            key = _pad(name, DYN_NAME_LEN)
            short = _unpad(key)                  # the name as a reader will see it
            cell = self._dyn_cell.get(short)
            if cell is None:
                k = q[self._ndyn_i]
                if k >= self._ndyn_max:
                    q[self._dropped_i] += n
                    return
                eoff = self._dyn_off + k * DYN_ENTRY
                self._b[eoff:eoff + DYN_NAME_LEN] = key
                cell = (eoff + DYN_NAME_LEN) // 8
                q[cell] = 0
                q[self._ndyn_i] = k + 1
            self._dyn_cell[name] = cell
        q[cell] += n

    # ---- nanny state --------------------------------------------------------------

    def set_state(self, letter: str, task_id: str | None = None,
                  reset_timestamp: bool = False) -> bool:
        """Record the nanny state (monitoring.md 1.5); return False if skipped.

        A state whose level is above ``nanny_details_level`` is not written.  'A'
        and 'm' always restart the age; ``reset_timestamp`` forces it for others.
        The task id is written as given, except that '', '.' and 'A' never carry
        one, so readers see them as idle or 'A', and that None keeps the task id
        already in the slot for the in-message states (all but those and 'm'):
        amavisd passes the am_id with every check_mail state, our pipeline passes
        nothing, and an empty id would make the nanny show a bare letter.
        """
        level = _STATE_LEVELS.get(letter)
        if level is None:
            raise ValueError(f"unknown nanny state {letter!r}")
        if level > self.nanny_details_level:
            return False
        keep = task_id is None and letter not in _KEEPS_NO_TASK_ID
        if task_id is None or letter in _NO_TASK_ID:
            task_id = ""
        cached = self._task_cache
        if cached[0] == task_id:
            raw = cached[1]
        else:
            raw = _pad(task_id, TASK_ID_LEN)
            self._task_cache = (task_id, raw)
        now = time.time()
        q, b = self._q, self._b
        s = self._seq
        code = ord(letter) if letter else 0
        q[s] += 1
        if b[self._state_off] != code or letter in _RESETTING:
            self._write_since(now)
        if letter in _CLEARS_MAIL_ID and b[self._mail_off]:
            b[self._mail_off:self._mail_off + MAIL_ID_LEN] = bytes(MAIL_ID_LEN)
        b[self._state_off] = code
        if not keep:
            b[self._task_off:self._task_off + TASK_ID_LEN] = raw
        if reset_timestamp or letter in _RESETTING:
            self._d[self._ts_i] = now
        self._d[self._hb_i] = now
        q[s] += 1
        return True

    def _write_since(self, now: float) -> None:
        """Record ``now`` as the start of the current state (caller holds the seqlock)."""
        tenths = int((now - self._d[self._started_i]) * 10) + 1
        struct.pack_into("=I", self._b, self._since_off, min(max(tenths, 1), 0xFFFFFFFF))

    def set_mail_id(self, mail_id: str) -> None:
        """Record the mail_id of the message being checked (nanny ``-v``).

        The pipeline calls it once the id is generated; only the first 12 bytes are
        kept (the default 72-bit id is 12 characters).  It is cleared when the child
        goes idle or a new transaction starts ('', '.', 'A', 'm').
        """
        raw = _pad(mail_id, MAIL_ID_LEN)
        q = self._q
        s = self._seq
        q[s] += 1
        self._b[self._mail_off:self._mail_off + MAIL_ID_LEN] = raw
        q[s] += 1

    def heartbeat(self) -> None:
        """Record a sign of life for the master's stale-child check (DESIGN.md)."""
        self._d[self._hb_i] = time.time()

    def begin_connection(self) -> None:
        """Count an accepted connection and enter state 'A' (post-accept, 1.5)."""
        q = self._q
        s = self._seq
        q[s] += 1
        q[self._conn_i] += 1
        q[s] += 1
        self.set_state("A")

    def child_started(self) -> None:
        """Mark the slot alive and idle, age restarted (child start, level 0, 1.5)."""
        now = time.time()
        q, d, b = self._q, self._d, self._b
        s = self._seq
        if q[s] & 1:                     # a predecessor died mid-update: re-even it
            q[s] += 1
        q[s] += 1
        q[self._pid_i] = self.pid
        q[self._exiting_i] = 0
        b[self._state_off:self._state_off + 8] = bytes(8)
        b[self._task_off:self._task_off + TASK_ID_LEN] = bytes(TASK_ID_LEN)
        b[self._mail_off:self._mail_off + MAIL_ID_LEN] = bytes(MAIL_ID_LEN)
        d[self._ts_i] = now
        d[self._hb_i] = now
        d[self._started_i] = now
        self._write_since(now)
        q[s] += 1

    def child_exiting(self) -> None:
        """Hide the slot from the nanny (amavisd deletes its nanny entry, 1.5).

        The pid and the counters stay until the master folds the slot.
        """
        q, b = self._q, self._b
        s = self._seq
        q[s] += 1
        q[self._exiting_i] = 1
        b[self._state_off:self._state_off + 8] = bytes(8)
        b[self._task_off:self._task_off + TASK_ID_LEN] = bytes(TASK_ID_LEN)
        b[self._mail_off:self._mail_off + MAIL_ID_LEN] = bytes(MAIL_ID_LEN)
        q[s] += 1


SEGMENT_LAYOUT_DOC = __doc__


def poll_segment(path: str, count: int | None, wait: float, poll: Callable[[StatsSegment], None],
                 say: Callable[[str], None], sleep: Callable[[float], None],
                 on_reopen: Callable[[], None] | None = None) -> None:
    """The readers' loop (amavisd-nanny, amavisd-agent): poll ``count`` times (forever
    if None), ``wait`` seconds apart.

    A missing or unusable segment is reported through ``say`` and retried at every
    interval without using up the count, as the Perl tools do for a missing
    database (monitoring.md 2.1, 3.1); a segment replaced by a cold restart is
    reopened (``on_reopen`` lets the caller drop what it kept of the old one).
    """
    seg: StatsSegment | None = None
    done = 0
    try:
        while count is None or done < count:
            if seg is not None and seg.replaced():
                seg.close()
                seg = None
                if on_reopen is not None:
                    on_reopen()
                if os.path.exists(path):
                    say(f"Reopening stats segment {path}")
            if seg is None:
                try:
                    seg = StatsSegment.open_readonly(path)
                except FileNotFoundError:
                    say(f"No stats segment {path}; waiting...")
                except (SegmentError, OSError) as exc:
                    say(f"Unusable stats segment {path}: {exc}; waiting...")
                if seg is None:
                    sleep(wait)
                    continue
            poll(seg)
            done += 1
            if count is None or done < count:
                sleep(wait)
    finally:
        if seg is not None:
            seg.close()


# --------------------------------------------------------------------------------
# Counters moved away from the pipeline (forwarding, quarantine, decoders): they
# wait here, per process, until the pipeline's once-per-message flush
# (``drain_pending`` into ``SlotWriter.add_many``).  A child works on one message
# at a time, so "since the previous flush" is "for this message" (plus whatever a
# message that tempfailed before its flush left behind).

_pending: dict[str, int] = {}


def count(name: str, n: int = 1) -> None:
    """Note ``n`` for ``name`` (fixed or dynamic) until the next per-message flush."""
    if n > 0:
        _pending[name] = _pending.get(name, 0) + n


def count_many(names: Iterable[str], n: int = 1) -> None:
    """``count`` for each of ``names``."""
    if n > 0:
        pending = _pending
        for name in names:
            pending[name] = pending.get(name, 0) + n


def drain_pending() -> dict[str, int]:
    """The counts noted since the last call, and forget them."""
    global _pending
    out, _pending = _pending, {}
    return out
