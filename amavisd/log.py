# tests: t/test_log.py t/test_log_writer.py
"""Logging as amavis writes it: to syslog, to ``$LOGFILE`` or to stderr.

spec/monitoring.md section 5.2.  Our modules log with the standard ``logging``
package; amavis levels map onto Python levels so ``$log_level`` (-d) filters the
same lines amavis would: level 0 is NOTICE, 1-2 INFO, 3+ DEBUG, -1 WARNING,
-2 ERROR, -3 CRITICAL.  Every line carries ``(<am_id>) `` while a task is open and
``(!)``/``(!!)`` for warnings/errors; control characters are escaped.

Syslog is written by our own client on ``$syslog_socket`` (``/dev/log``), in the
C library's format (``<PRI>Mmm dd hh:mm:ss ident[pid]: text``), so the ident
and facility of the policy bank in force go with each entry (amavis reopens
the log for that) and a test can read what the daemon sends.

Why a writer thread: a write to a stalled syslog socket (a full datagram
queue), a full pipe or a locked log file blocks.  In a child, whose reactor
thread runs the SMTP session, an entry is written at once when that cannot
block (a non-blocking send, a free lock, a writable pipe), so normally every
line is out before the reply, as in amavis.  When it would block, the entry
(and every later one, to keep the order) goes to one writer thread through a
bounded queue; when the queue is full new entries are dropped and counted
(``LogEntriesDropped``), and the writer says how many were lost once it catches
up.  The master writes directly (it forks, and a forked copy of a busy queue
could hang the child).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import queue
import select
import socket
import sys
import syslog
import threading
import time
from dataclasses import dataclass

NOTICE = 25
PIPE_BUF = 4096            # a write of at most this many bytes to a writable pipe fits
#: Entries waiting for the writer thread at most; then new ones are dropped.
QUEUE_SIZE = 2000


def py_level(amavis_level: int) -> int:
    """Python logging level for an amavis log level (0 -> NOTICE, 5 -> 15, -2 -> ERROR)."""
    if amavis_level <= -3:
        return logging.CRITICAL
    if amavis_level == -2:
        return logging.ERROR
    if amavis_level == -1:
        return logging.WARNING
    return NOTICE - 2 * amavis_level


def amavis_level(levelno: int) -> int:
    """Inverse of ``py_level`` (rounded towards the more verbose level)."""
    if levelno >= logging.CRITICAL:
        return -3
    if levelno >= logging.ERROR:
        return -2
    if levelno >= logging.WARNING:
        return -1
    return max(0, (NOTICE - levelno + 1) // 2)


logging.addLevelName(NOTICE, "NOTICE")

#: The task id (am_id) of the work in progress; one task at a time per process.
_current_task: str | None = None


def set_task_id(task_id: str | None) -> None:
    """The am_id of the task now in progress (None between tasks).

    The first task of a forked process (a child: the master has none) starts the
    writer thread (module doc).
    """
    global _current_task
    _current_task = task_id
    if task_id is not None and _forked and _writer is None and _async_allowed:
        start_writer()


def task_id() -> str | None:
    return _current_task


def do_log(level: int, msg: str, *args: object, raw_backslash: bool = False) -> None:
    """Log at an amavis level, for lines whose level the spec names (e.g. 'level 0').

    ``raw_backslash``: the text holds JSON (``[:report_json]``), whose backslashes
    are escapes already; they are not doubled (docs/differences.md).
    """
    extra = {"raw_backslash": True} if raw_backslash else None
    logging.getLogger("amavis").log(py_level(level), msg, *args, extra=extra)


# Log statistics (monitoring.md 1.3 "Logging statistics"): counted here, per process,
# for every entry a handler took, and handed to the stats writer once per message
# by the pipeline (``drain_log_counts``).  A lock because worker threads log too.

_log_lock = threading.Lock()
_LEVEL_NAMES = tuple(f"LogEntriesLevel{i}" for i in range(6))
_log_counts: dict[str, int] = {}


def count_entry(levelno: int, lines: int = 1) -> None:
    """Count one entry of Python level ``levelno`` that took ``lines`` lines."""
    level = amavis_level(levelno)
    names = ["LogEntries", "LogEntriesDebug", _LEVEL_NAMES[min(max(level, 0), 5)]]
    if level <= 1:
        names.append("LogEntriesInfo")
        if level <= 0:
            names.append("LogEntriesNotice")
            if level <= -1:
                names.append("LogEntriesWarning")
                if level <= -2:
                    names.append("LogEntriesErr")
                    if level <= -3:
                        names.append("LogEntriesCrit")
    with _log_lock:
        counts = _log_counts
        counts["LogLines"] = counts.get("LogLines", 0) + lines
        for name in names:
            counts[name] = counts.get(name, 0) + 1


def count_other(name: str, n: int = 1) -> None:
    """Count a logging event that is not an entry (LogRetries, LogEntriesDropped, ...)."""
    with _log_lock:
        _log_counts[name] = _log_counts.get(name, 0) + n


def drain_log_counts() -> dict[str, int]:
    """The Log* counts since the previous call (the per-message flush), then zero."""
    global _log_counts
    with _log_lock:
        out, _log_counts = _log_counts, {}
    return out


_ESCAPES = {0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t", 0x5C: "\\\\"}


def sanitize(text: str, backslash: bool = True) -> str:
    """Escape control characters and backslash as amavis does before writing a line.

    ``backslash=False`` leaves backslashes alone (lines that carry JSON).
    """
    if text.isprintable() and ("\\" not in text or not backslash):
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if code == 0x5C and not backslash:
            out.append(ch)
        elif code in _ESCAPES:
            out.append(_ESCAPES[code])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02X}")
        else:
            out.append(ch)
    return "".join(out)


class AmavisFormatter(logging.Formatter):
    """Formats the message body: ``(<am_id>) (!)text``, escaped."""

    def parts(self, record: logging.LogRecord) -> tuple[str, str, str]:
        """``("(<am_id>) ", alert, escaped text)``: syslog splits the text, not the rest."""
        text = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            exc = record.exc_info[1]
            if exc is not None:
                text = f"{text}: {type(exc).__name__}: {exc}" if str(exc) not in text else text
        alert = ""
        if record.levelno >= logging.ERROR:
            alert = "(!!)"
        elif record.levelno >= logging.WARNING:
            alert = "(!)"
        task = getattr(record, "task_id", _current_task)
        prefix = f"({task}) " if task else ""
        return prefix, alert, sanitize(text, not getattr(record, "raw_backslash", False))

    def format(self, record: logging.LogRecord) -> str:
        return "".join(self.parts(record))


def _syslog_priority(levelno: int) -> int:
    level = amavis_level(levelno)
    if level >= 3:
        return syslog.LOG_DEBUG
    if level >= 1:
        return syslog.LOG_INFO
    if level == 0:
        return syslog.LOG_NOTICE
    if level == -1:
        return syslog.LOG_WARNING
    if level == -2:
        return syslog.LOG_ERR
    return syslog.LOG_CRIT


def split_line(text: str, maxlen: int, prefix: str = "", alert: str = "") -> list[str]:
    """A syslog entry as lines of at most ``maxlen`` characters (monitoring.md 5.2).

    Each line has the ``(am_id) `` prefix; every line but the last ends in
    ``...``, and each continuation starts with the alert mark and ``...``.
    """
    size = max(50, maxlen)
    pre = alert
    chunks = []
    while len(prefix) + len(pre) + len(text) > size:
        avail = max(1, size - len(prefix) - len(pre) - 3)
        chunks.append(prefix + pre + text[:avail] + "...")
        pre, text = alert + "...", text[avail:]
    chunks.append(prefix + pre + text)
    return chunks


# ------------------------------------------------------------------ the writer thread
class LogWriter:
    """Writes what cannot be written at once, in order, from a thread of its own."""

    def __init__(self, size: int = QUEUE_SIZE) -> None:
        self.size = size
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.pending = 0                    # entries queued and not yet written
        self.dropped = 0
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self.thread.start()

    def submit(self, handler: AmavisHandler, entry: object) -> None:
        """Write ``entry`` now if that cannot block and nothing waits, else queue it."""
        with self._lock:
            if self.pending == 0:
                try:
                    rest = handler.try_write(entry)
                except Exception:  # noqa: BLE001 - logging must never kill the process
                    rest = None
                if rest is None:
                    return
                entry = rest
            if self.pending >= self.size:
                self.dropped += 1
                count_other("LogEntriesDropped")
                return
            self.pending += 1
        self.queue.put((handler, entry))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until what was queued before this call is written (False: timed out)."""
        done = threading.Event()
        self.queue.put(done)
        return done.wait(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is queued (for at most ``timeout`` s), then end the thread."""
        self.queue.put(None)
        self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            handler, entry = item
            handler.write_safely(entry)
            with self._lock:
                self.pending -= 1
                lost = self.dropped if self.pending == 0 else 0
                self.dropped -= lost
            if lost:
                record = logging.LogRecord(
                    "amavis", logging.WARNING, __file__, 0,
                    "log writer: %d log entries dropped, the log destination was too slow",
                    (lost,), None)
                record.task_id = None
                handler.write_safely(handler.prepare(record)[0])


_writer: LogWriter | None = None


def start_writer(size: int = QUEUE_SIZE) -> LogWriter:
    """Write through a writer thread from now on (a child, after the fork)."""
    global _writer
    if _writer is None:
        _writer = LogWriter(size)
    return _writer


def stop_writer(timeout: float = 2.0) -> None:
    """Write what is queued, then write directly again (process exit, tests)."""
    global _writer
    writer, _writer = _writer, None
    if writer is not None:
        writer.stop(timeout)


def flush_writer(timeout: float = 5.0) -> bool:
    return _writer.flush(timeout) if _writer is not None else True


# ------------------------------------------------------------------ handlers
class AmavisHandler(logging.Handler):
    """Formats an entry where it happens; writes it now or through the writer thread."""

    def prepare(self, record: logging.LogRecord) -> tuple[object, int]:
        """The entry ready to write (on the caller's thread: task id, time, pid) and
        its number of physical lines."""
        raise NotImplementedError

    def write(self, entry: object) -> None:
        raise NotImplementedError

    def try_write(self, entry: object) -> object | None:
        """Write without blocking; return what is still to be written (None: done)."""
        return entry

    def write_safely(self, entry: object) -> None:
        try:
            self.write(entry)
        except Exception:  # noqa: BLE001 - logging must never kill the process
            pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry, lines = self.prepare(record)
            count_entry(record.levelno, lines)
            writer = _writer
            if writer is None:
                self.write(entry)
            else:
                writer.submit(self, entry)
        except Exception:  # noqa: BLE001 - logging must never kill the process
            self.handleError(record)

    def flush(self) -> None:
        flush_writer(2.0)

    def close(self) -> None:
        stop_writer()
        super().close()


def _formatter_parts(handler: logging.Handler, record: logging.LogRecord) -> tuple[str, str, str]:
    fmt = handler.formatter
    if isinstance(fmt, AmavisFormatter):
        return fmt.parts(record)
    return "", "", handler.format(record)


@dataclass
class SyslogEntry:
    priority: int            # facility | severity
    stamp: str
    ident: str
    pid: int
    lines: list[str]


#: The ident and facility in force ($syslog_ident, $syslog_facility of the bank).
_syslog_identity: tuple[str, str] | None = None


def set_syslog_identity(ident: str | None, facility: str | None) -> None:
    """Use the policy bank's ``$syslog_ident``/``$syslog_facility`` (None: the global ones)."""
    global _syslog_identity
    _syslog_identity = (ident, facility) if ident or facility else None


def facility_code(name: str | None) -> int:
    """``mail`` -> LOG_MAIL; an unknown name is LOG_MAIL, as a bad one is in amavis."""
    code = getattr(syslog, f"LOG_{str(name or 'mail').upper()}", None)
    return code if isinstance(code, int) and code >= 8 else syslog.LOG_MAIL


class SyslogHandler(AmavisHandler):
    """Datagrams to the local syslog socket, split at ``$logline_maxlen``."""

    def __init__(self, ident: str, facility: str, maxlen: int, path: str = "/dev/log"):
        super().__init__()
        self.ident = ident
        self.facility = facility
        self.maxlen = max(50, maxlen)
        self.path = path
        self.sock: socket.socket | None = None
        self.stream = False
        self.next_try = 0.0
        self._connect()

    def _connect(self) -> bool:
        """Connect to the socket (datagram, else stream); at most one try a second."""
        now = time.monotonic()
        if now < self.next_try:
            return False
        self.close_socket()
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EPROTOTYPE:
                    continue
                self.next_try = now + 1.0
                return False
            self.sock, self.stream = sock, kind == socket.SOCK_STREAM
            return True
        self.next_try = now + 1.0
        return False

    def close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def reopen(self) -> None:
        """A child's own socket (monitoring.md 5.2: each child reopens after the fork)."""
        self.next_try = 0.0
        self._connect()

    def prepare(self, record: logging.LogRecord) -> tuple[object, int]:
        prefix, alert, text = _formatter_parts(self, record)
        ident, facility = _syslog_identity or (None, None)
        lines = split_line(text, self.maxlen, prefix, alert)
        entry = SyslogEntry(facility_code(facility or self.facility)
                            | _syslog_priority(record.levelno),
                            time.strftime("%b %e %H:%M:%S"), ident or self.ident,
                            os.getpid(), lines)
        return entry, len(lines)

    def _datagram(self, entry: SyslogEntry, line: str) -> bytes:
        head = f"<{entry.priority}>{entry.stamp} {entry.ident}[{entry.pid}]: "
        data = (head + line).encode("utf-8", "surrogateescape")
        return data + b"\0" if self.stream else data

    def try_write(self, entry: object) -> object | None:
        assert isinstance(entry, SyslogEntry)
        if self.sock is None and not self._connect():
            return None                     # no syslogd: lost, as with syslog(3)
        if self.stream:
            return entry                    # a partial send would need the writer anyway
        for i, line in enumerate(entry.lines):
            try:
                assert self.sock is not None
                self.sock.send(self._datagram(entry, line), socket.MSG_DONTWAIT)
            except BlockingIOError:
                return SyslogEntry(entry.priority, entry.stamp, entry.ident, entry.pid,
                                   entry.lines[i:])
            except OSError:
                count_other("LogRetries")
                self.close_socket()
                self.next_try = 0.0
                return SyslogEntry(entry.priority, entry.stamp, entry.ident, entry.pid,
                                   entry.lines[i:])
        return None

    def write(self, entry: object) -> None:
        assert isinstance(entry, SyslogEntry)
        for line in entry.lines:
            data = self._datagram(entry, line)
            for attempt in (1, 2):
                if self.sock is None and not self._connect():
                    break
                try:
                    assert self.sock is not None
                    self.sock.sendall(data) if self.stream else self.sock.send(data)
                    break
                except OSError:
                    count_other("LogRetries")
                    self.close_socket()
                    if attempt == 1:
                        self.next_try = 0.0

    def close(self) -> None:
        super().close()
        self.close_socket()


class LogFileHandler(AmavisHandler):
    """Appends ``%b %e %H:%M:%S host prog[pid]: text`` lines under an exclusive flock."""

    def __init__(self, path: str, hostname: str, program: str, debug_stamps: bool = False):
        super().__init__()
        self.path = path
        self.hostname = hostname
        self.program = program
        self.debug_stamps = debug_stamps
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        """Called in a child after fork so each process has its own descriptor."""
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                          0o640)

    def prepare(self, record: logging.LogRecord) -> tuple[object, int]:
        line = stamp_prefix(self.hostname, self.program, self.debug_stamps) \
            + self.format(record) + "\n"
        return line.encode("utf-8", "surrogateescape"), 1

    def try_write(self, entry: object) -> object | None:
        assert isinstance(entry, bytes)
        for attempt in range(20):           # another writer holds it for microseconds
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 19:
                    return entry            # held longer: the writer thread waits for it
                time.sleep(0.0005)
        try:
            os.write(self.fd, entry)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return None

    def write(self, entry: object) -> None:
        assert isinstance(entry, bytes)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            os.write(self.fd, entry)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


def stamp_prefix(hostname: str, program: str, millis: bool = False) -> str:
    now = time.time()
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(now))
    if millis:
        stamp += f".{int(now * 1000) % 1000:03d}"
    return f"{stamp} {hostname} {program}[{os.getpid()}]: "


class StderrHandler(AmavisHandler):
    """stderr: sd-daemon ``<N>`` prefixes, or syslog-like stamps in debug mode."""

    def __init__(self, hostname: str, program: str, debug: bool):
        super().__init__()
        self.hostname = hostname
        self.program = program
        self.debug = debug

    def prepare(self, record: logging.LogRecord) -> tuple[object, int]:
        if self.debug:
            prefix = stamp_prefix(self.hostname, self.program, millis=True)
        else:
            prefix = f"<{_syslog_priority(record.levelno)}>"
        return prefix + self.format(record) + "\n", 1

    def try_write(self, entry: object) -> object | None:
        assert isinstance(entry, str)
        try:
            fd = sys.stderr.fileno()
            ready = select.select([], [fd], [], 0)[1]
        except (OSError, ValueError):
            ready = [True]                  # not a real descriptor (tests): just write
        if not ready or len(entry) > PIPE_BUF // 4:
            return entry                    # a full pipe, or too long to be sure
        self.write(entry)
        return None

    def write(self, entry: object) -> None:
        assert isinstance(entry, str)
        sys.stderr.write(entry)
        sys.stderr.flush()


#: The level of ``$log_level`` from the config (or -d); a policy bank may change it.
_base_level: int | None = None


def setup_logging(settings, program: str, debug: bool = False) -> logging.Handler:
    """Route every logger to the configured destination at ``$log_level``."""
    global _base_level
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    level = int(settings.log_level or 0)
    if debug:
        handler: logging.Handler = StderrHandler(settings.myhostname, program, debug=True)
        level = max(level, 5)
    elif settings.DO_SYSLOG:
        handler = SyslogHandler(settings.syslog_ident or "amavis",
                                settings.syslog_facility or "mail", settings.logline_maxlen,
                                getattr(settings, "syslog_socket", None) or "/dev/log")
    elif settings.LOGFILE:
        handler = LogFileHandler(settings.LOGFILE, settings.myhostname, program)
    else:
        handler = StderrHandler(settings.myhostname, program, debug=False)
    handler.setFormatter(AmavisFormatter())
    root.addHandler(handler)
    root.setLevel(py_level(level))
    _base_level = None if debug else level
    logging.getLogger("twisted").setLevel(logging.WARNING)
    return handler


def apply_bank(view) -> None:
    """``$log_level``, ``$syslog_ident`` and ``$syslog_facility`` of the policy banks in
    force for this message (monitoring.md 5.1: all three may be set per bank)."""
    if _base_level is None:
        return
    level = getattr(view, "log_level", None)
    logging.getLogger().setLevel(py_level(int(level if level is not None else _base_level)))
    set_syslog_identity(getattr(view, "syslog_ident", None),
                        getattr(view, "syslog_facility", None))


def restore_base() -> None:
    """Back to the global level and syslog identity once the message is done."""
    if _base_level is None:
        return
    logging.getLogger().setLevel(py_level(_base_level))
    set_syslog_identity(None, None)


def after_fork() -> None:
    """Give the child its own log descriptor (monitoring.md 5.2: each child reopens).

    The Log* counts inherited from the parent are the parent's: dropped here.
    """
    drain_log_counts()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, (LogFileHandler, SyslogHandler)):
            handler.reopen()


#: Set in every forked process: only there may a task start the writer thread.
_forked = False
#: Tests turn the writer thread off (or on) for a process.
_async_allowed = True


def _in_forked_child() -> None:
    global _forked, _writer
    _forked = True
    _writer = None                  # a parent's writer thread does not exist here


os.register_at_fork(after_in_child=_in_forked_child)
