"""Logging as amavis writes it: to syslog, to ``$LOGFILE`` or to stderr.

spec/monitoring.md section 5.2.  Our modules log with the standard ``logging``
package; amavis levels map onto Python levels so ``$log_level`` (-d) filters the
same lines amavis would: level 0 is NOTICE, 1-2 INFO, 3+ DEBUG, -1 WARNING,
-2 ERROR, -3 CRITICAL.  Every line carries ``(<am_id>) `` while a task is open and
``(!)``/``(!!)`` for warnings/errors; control characters are escaped.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import syslog
import threading
import time

NOTICE = 25


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
    global _current_task
    _current_task = task_id


def task_id() -> str | None:
    return _current_task


def do_log(level: int, msg: str, *args: object) -> None:
    """Log at an amavis level, for lines whose level the spec names (e.g. 'level 0')."""
    logging.getLogger("amavis").log(py_level(level), msg, *args)


# Log statistics (monitoring.md 1.3 "Logging statistics"): counted here, per process,
# for every entry a handler wrote, and handed to the stats writer once per message
# by the pipeline (``drain_log_counts``).  A lock because the spam check's worker
# thread logs too.

_log_lock = threading.Lock()
_LEVEL_NAMES = tuple(f"LogEntriesLevel{i}" for i in range(6))
_log_counts: dict[str, int] = {}


def count_entry(levelno: int, lines: int = 1) -> None:
    """Count one written entry of Python level ``levelno`` that took ``lines`` lines."""
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


def drain_log_counts() -> dict[str, int]:
    """The Log* counts since the previous call (the per-message flush), then zero."""
    global _log_counts
    with _log_lock:
        out, _log_counts = _log_counts, {}
    return out


_ESCAPES = {0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t", 0x5C: "\\\\"}


def sanitize(text: str) -> str:
    """Escape control characters and backslash as amavis does before writing a line."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02X}")
        else:
            out.append(ch)
    return "".join(out)


class AmavisFormatter(logging.Formatter):
    """Formats the message body: ``(<am_id>) (!)text``, escaped."""

    def format(self, record: logging.LogRecord) -> str:
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
        prefix = f"({_current_task}) " if _current_task else ""
        return prefix + alert + sanitize(text)


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


class SyslogHandler(logging.Handler):
    """Writes through the C library's syslog(3), split at ``$logline_maxlen``."""

    def __init__(self, ident: str, facility: str, maxlen: int):
        super().__init__()
        self.maxlen = max(50, maxlen)
        fac = getattr(syslog, f"LOG_{facility.upper()}", syslog.LOG_MAIL)
        syslog.openlog(ident, syslog.LOG_PID | syslog.LOG_NDELAY, fac)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            prio = _syslog_priority(record.levelno)
            chunks = split_line(text, self.maxlen)
            for chunk in chunks:
                syslog.syslog(prio, chunk)
            count_entry(record.levelno, len(chunks))
        except Exception:  # noqa: BLE001 - logging must never kill the process
            self.handleError(record)


def split_line(text: str, maxlen: int) -> list[str]:
    """Split a long line into chunks ending in '...' (monitoring.md section 5.2)."""
    if len(text) <= maxlen:
        return [text]
    chunks = []
    first = True
    while text:
        room = maxlen - (0 if first else 3) - 3
        if len(text) <= maxlen - (0 if first else 3):
            chunks.append(text if first else "..." + text)
            break
        piece, text = text[:room], text[room:]
        chunks.append((piece if first else "..." + piece) + "...")
        first = False
    return chunks


class LogFileHandler(logging.Handler):
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

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = stamp_prefix(self.hostname, self.program, self.debug_stamps) \
                + self.format(record) + "\n"
            data = line.encode("utf-8", "surrogateescape")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                os.write(self.fd, data)
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            count_entry(record.levelno)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def stamp_prefix(hostname: str, program: str, millis: bool = False) -> str:
    now = time.time()
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(now))
    if millis:
        stamp += f".{int(now * 1000) % 1000:03d}"
    return f"{stamp} {hostname} {program}[{os.getpid()}]: "


class StderrHandler(logging.Handler):
    """stderr: sd-daemon ``<N>`` prefixes, or syslog-like stamps in debug mode."""

    def __init__(self, hostname: str, program: str, debug: bool):
        super().__init__()
        self.hostname = hostname
        self.program = program
        self.debug = debug

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.debug:
                prefix = stamp_prefix(self.hostname, self.program, millis=True)
            else:
                prefix = f"<{_syslog_priority(record.levelno)}>"
            sys.stderr.write(prefix + self.format(record) + "\n")
            sys.stderr.flush()
            count_entry(record.levelno)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def setup_logging(settings, program: str, debug: bool = False) -> logging.Handler:
    """Route every logger to the configured destination at ``$log_level``."""
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
                                settings.syslog_facility or "mail", settings.logline_maxlen)
    elif settings.LOGFILE:
        handler = LogFileHandler(settings.LOGFILE, settings.myhostname, program)
    else:
        handler = StderrHandler(settings.myhostname, program, debug=False)
    handler.setFormatter(AmavisFormatter())
    root.addHandler(handler)
    root.setLevel(py_level(level))
    logging.getLogger("twisted").setLevel(logging.WARNING)
    return handler


def after_fork() -> None:
    """Give the child its own log descriptor (monitoring.md 5.2: each child reopens).

    The Log* counts inherited from the parent are the parent's: dropped here.
    """
    drain_log_counts()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LogFileHandler):
            handler.reopen()
