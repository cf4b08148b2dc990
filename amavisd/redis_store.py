# tests: t/test_json_event.py
"""The JSON event log on Redis (spec/pipeline.md 25, monitoring.md 5.6).

With ``@storage_redis_dsn``, ``$redis_logging_key`` and
``$redis_logging_queue_size_limit`` set, each message's structured report is
appended to the list ``<key>`` (``RPUSH``) and the list is cut to its newest
``<limit>`` entries (``LTRIM <key> -<limit> -1``), as amavis does.

Why our own client: we send four commands (AUTH, SELECT, RPUSH, LTRIM), so a
small RESP encoder and reply reader over a socket is all it takes, and the
daemon keeps no extra dependency for it.

Why a thread: the push must not hold up the SMTP reply, and Redis may be slow
or down.  Each child has one pusher thread that owns the connection (kept open
between messages, reconnected after an error, the DSN list tried in order); the
pipeline only queues the event.  The queue is bounded: when Redis cannot keep
up, new events are dropped and counted (``RedisEventsDropped``) instead of
growing the child's memory.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from amavisd import log as amavis_log

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
TIMEOUT = 10.0           # seconds for connect and each reply


class RedisError(Exception):
    """A Redis error reply, or a broken connection."""


@dataclass(frozen=True)
class RedisServer:
    """One ``@storage_redis_dsn`` entry: where, which database, which password."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db_id: int | None = None
    password: str | None = None

    def describe(self) -> str:
        where = self.path or (f"[{self.host}]:{self.port}" if ":" in self.host
                              else f"{self.host}:{self.port}")
        return where + (f"/{self.db_id}" if self.db_id is not None else "")


def parse_dsn(entry: Any) -> RedisServer:
    """``{server => 'host:port' | '[v6]:port' | '/path', sock => '/path', db_id, password}``;
    a plain string is the server.  No server: 127.0.0.1:6379 (amavis's default)."""
    if isinstance(entry, str):
        entry = {"server": entry}
    if not isinstance(entry, dict):
        raise ValueError(f"@storage_redis_dsn: expected a hash, got {entry!r}")
    db_id = entry.get("db_id")
    password = entry.get("password")
    common = {"db_id": int(db_id) if db_id not in (None, "") else None,
              "password": str(password) if password is not None else None}
    if entry.get("sock"):
        return RedisServer(path=str(entry["sock"]), **common)
    server = str(entry.get("server") or "127.0.0.1:6379")
    if server.startswith("/"):
        return RedisServer(path=server, **common)
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port = rest.lstrip(":") or "6379"
    elif server.count(":") == 1:
        host, _, port = server.partition(":")
    else:
        host, port = server, "6379"
    return RedisServer(host=host, port=int(port), **common)


def encode_command(*args: str | bytes | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Connection:
    """A blocking RESP connection: send commands, read their replies in order."""

    def __init__(self, server: RedisServer, timeout: float = TIMEOUT) -> None:
        if server.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(server.path)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.sock = sock
        self.file = sock.makefile("rb")
        self.server = server
        if server.password is not None:
            self.call("AUTH", server.password)
        if server.db_id is not None:
            self.call("SELECT", server.db_id)

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()

    def pipeline(self, *commands: Sequence[str | bytes | int]) -> list[Any]:
        """Send the commands in one write, then read one reply each (errors raise)."""
        self.sock.sendall(b"".join(encode_command(*c) for c in commands))
        replies = [self._reply() for _ in commands]
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
        return replies

    def call(self, *args: str | bytes | int) -> Any:
        return self.pipeline(args)[0]

    def _line(self) -> bytes:
        line = self.file.readline(1024 * 1024)
        if not line.endswith(b"\r\n"):
            raise RedisError("connection closed by the server")
        return line[:-2]

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            return RedisError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)
            if len(data) != size + 2:
                raise RedisError("connection closed by the server")
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise RedisError(f"unexpected reply {line[:40]!r}")


class EventPusher:
    """This child's pusher thread: queued events go to Redis in order (see module doc)."""

    def __init__(self, servers: list[RedisServer], size: int = QUEUE_SIZE) -> None:
        self.servers = servers
        self.queue: queue.Queue[tuple[str, str, bytes, int] | threading.Event] = \
            queue.Queue(size)
        self.conn: Connection | None = None
        self.thread = threading.Thread(target=self._run, name="redis-events", daemon=True)
        self.thread.start()

    def push(self, log_id: str, key: str, payload: bytes, limit: int) -> bool:
        """Queue one event; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait((log_id, key, payload, limit))
            return True
        except queue.Full:
            amavis_log.count_other("RedisEventsDropped")
            return False

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event queued so far was sent or given up (tests, shutdown)."""
        done = threading.Event()
        try:
            self.queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            log_id, key, payload, limit = item
            try:
                self._send(key, payload, limit)
            except Exception as exc:  # noqa: BLE001 - an event is never worth a crash
                log.warning("save_structured_report failed: %s", exc,
                            extra={"task_id": log_id})

    def _send(self, key: str, payload: bytes, limit: int) -> None:
        for attempt in (1, 2):          # a kept connection may have gone stale: once more
            conn = self.conn or self._connect()
            try:
                conn.pipeline(("RPUSH", key, payload), ("LTRIM", key, -limit, -1))
                return
            except (OSError, RedisError) as exc:
                self.conn = None
                conn.close()
                if attempt == 2 or isinstance(exc, RedisError) and \
                        "connection closed" not in str(exc):
                    raise

    def _connect(self) -> Connection:
        errors = []
        for server in self.servers:
            try:
                self.conn = Connection(server)
                return self.conn
            except (OSError, RedisError) as exc:
                errors.append(f"{server.describe()}: {exc}")
        raise RedisError("Can't connect to a redis server: " + "; ".join(errors))


_pusher: EventPusher | None = None
_pusher_dsn: Any = None
_lock = threading.Lock()


def logging_enabled(config: Any, view: Any) -> tuple[str, int] | None:
    """``(key, limit)`` when events go to Redis for this message, else None."""
    dsn = getattr(config, "storage_redis_dsn", None)
    limit = getattr(config, "redis_logging_queue_size_limit", None)
    key = getattr(view, "redis_logging_key", None)
    if not dsn or not limit or key in (None, "", "0", 0):
        return None
    return str(key), int(limit)


def pusher(config: Any) -> EventPusher:
    """This process's pusher for ``@storage_redis_dsn`` (made on first use)."""
    global _pusher, _pusher_dsn
    with _lock:
        dsn = config.storage_redis_dsn
        if _pusher is None or _pusher_dsn != dsn:
            _pusher = EventPusher([parse_dsn(e) for e in dsn])
            _pusher_dsn = dsn
        return _pusher


def push_event(config: Any, view: Any, log_id: str, payload: bytes) -> bool:
    """Queue the event of one message for Redis, when Redis logging is on."""
    target = logging_enabled(config, view)
    if target is None:
        return False
    key, limit = target
    return pusher(config).push(log_id, key, payload, limit)
