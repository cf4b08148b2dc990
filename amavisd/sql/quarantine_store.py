# tests: t/sql/test_quarantine_store.py, t/integration/test_sql_logging.py
"""The ``sql:`` quarantine: a message as numbered chunks in table ``quarantine``.

Spec/pipeline.md 22.3: the quarantine copy is stored in rows of at most
``$sql_quarantine_chunksize_max`` bytes, ``chunk_ind`` 1, 2, ..., all in one
transaction, keyed by (partition_tag, mail_id); its location is ``<mail_id>``, or
``<mail_id>[<partition>]`` for a partition other than 0.  Section 22.4: a release
finds the partition with ``sel_msg`` when the request has none, then reads the
chunks back with ``sel_quar`` (``ORDER BY chunk_ind``).

Both directions stream: the writer gets the bytes from a callback writing into a
``ChunkWriter`` (only one chunk is ever buffered), the reader fetches rows in
batches from a server-side cursor.  Nothing here knows what a message is; the
quarantine action (amavisd/actions/quarantine.py) builds the copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

from amavisd.sql.connection import DEFAULT_CLAUSES, Database, clause, clauses

#: Upstream default of ``$sql_quarantine_chunksize_max`` (bytes per row).
CHUNK_SIZE = 16384
#: Rows fetched per round trip when reading a message back.
FETCH_BATCH = 64


class QuarantineLookupError(LookupError):
    """The release request names no stored message, or is ambiguous."""


class NotQuarantined(QuarantineLookupError):
    """No ``msgs`` row or no ``quarantine`` chunks for this mail_id."""


class AmbiguousMailId(QuarantineLookupError):
    """Several partitions hold this mail_id: the request must name the partition."""


def location(mail_id: str, partition_tag: Any) -> str:
    """``quar_loc``: ``<mail_id>``, with ``[<partition>]`` unless the partition is 0/empty."""
    if partition_tag in (None, "") or str(partition_tag) == "0":
        return mail_id
    return f"{mail_id}[{partition_tag}]"


def _statement(config: Any, name: str) -> str:
    return (clauses(config) if config is not None else DEFAULT_CLAUSES)[name]


class ChunkWriter:
    """A write-only file object that inserts a row each time ``size`` bytes are ready."""

    def __init__(self, cursor: Any, insert: str, partition_tag: int, mail_id: str,
                 size: int = CHUNK_SIZE):
        if size < 1:
            raise ValueError("chunk size must be positive")
        self.cursor = cursor
        self.insert = insert
        self.key = (partition_tag, mail_id.encode("ascii"))
        self.size = size
        self.buffer = bytearray()
        self.chunks = 0
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) >= self.size:
            self._emit(bytes(self.buffer[:self.size]))
            del self.buffer[:self.size]
        return len(data)

    def flush(self) -> None:
        """Rows go out as they fill; the short tail only on ``close``."""

    def close(self) -> None:
        if self.buffer:
            self._emit(bytes(self.buffer))
            self.buffer.clear()

    def _emit(self, chunk: bytes) -> None:
        self.chunks += 1
        self.bytes += len(chunk)
        self.cursor.execute(self.insert, [*self.key, self.chunks, chunk])


def store(db: Database, partition_tag: int, mail_id: str,
          write: Callable[[ChunkWriter], None], *, chunk_size: int = CHUNK_SIZE,
          config: Any = None) -> tuple[int, int]:
    """Store what ``write(out)`` writes as chunks, in one transaction: ``(chunks, bytes)``.

    Raises whatever the database or ``write`` raised (nothing is then committed).
    ``write`` may be called twice if the connection was lost before the commit
    (``Database.run`` tries once more on a fresh connection), so it must only read.
    """
    insert = clause(_statement(config, "ins_quar"))

    def work(cur: Any) -> tuple[int, int]:
        out = ChunkWriter(cur, insert, partition_tag, mail_id, chunk_size)
        write(out)
        out.close()
        return out.chunks, out.bytes

    return db.run(work)


def find_partition(db: Database, mail_id: str, *, config: Any = None) -> int:
    """The partition_tag of ``mail_id`` (``sel_msg``), for a release request without one.

    Raises ``NotQuarantined`` when no ``msgs`` row has it and ``AmbiguousMailId``
    when several do.
    """
    rows = db.query(clause(_statement(config, "sel_msg")), [mail_id.encode("ascii")])
    if not rows:
        raise NotQuarantined(f"no msgs record with mail_id={mail_id}")
    if len(rows) > 1:
        raise AmbiguousMailId(f"Multiple ({len(rows)}) records with same mail_id exist, "
                              "specify a partition_tag in the AM.PDP request")
    return int(rows[0][0] or 0)


def read_message(db: Database, partition_tag: int, mail_id: str, *, config: Any = None,
                 batch: int = FETCH_BATCH) -> Iterator[bytes]:
    """The stored message, chunk by chunk (``sel_quar`` ordered by ``chunk_ind``).

    Runs the query at once, so ``NotQuarantined`` (no chunks) and database errors
    are raised by this call; the rows then come ``batch`` at a time from a
    server-side cursor.  The returned iterator holds the connection (its lock and
    a read transaction) until it is exhausted or closed: use it from one thread and
    ``close()`` it when stopping early.
    """
    return _StoredMessage(db, clause(_statement(config, "sel_quar")),
                          [partition_tag, mail_id.encode("ascii")], mail_id, batch)


class _StoredMessage:
    """The iterator of ``read_message``: a transaction, a named cursor, one batch at a time."""

    def __init__(self, db: Database, statement: str, params: list[Any], mail_id: str,
                 batch: int):
        self._batch = batch
        self._held = ExitStack()
        try:
            self._held.enter_context(db._lock)     # one user of the connection at a time
            db.query("SELECT 1")    # reconnects once if the server went away since the last use
            conn = db.connection()
            self._held.enter_context(conn.transaction())
            self._cursor = self._held.enter_context(
                conn.cursor(name=f"amavis_quar_{mail_id}"[:60]))
            self._cursor.itersize = batch
            self._cursor.execute(statement, params)
            self._rows: list[Any] = self._cursor.fetchmany(batch)
        except BaseException:
            self._held.close()
            raise
        if not self._rows:
            self.close()
            raise NotQuarantined(f"no quarantined message with mail_id={mail_id}, "
                                 f"partition_tag={params[0]}")

    def __iter__(self) -> _StoredMessage:
        return self

    def __next__(self) -> bytes:
        if not self._rows:
            if self._held is not None:
                self._rows = self._cursor.fetchmany(self._batch)
            if not self._rows:
                self.close()
                raise StopIteration
        return bytes(self._rows.pop(0)[0])

    def close(self) -> None:
        """End the read transaction and free the connection (safe to call twice)."""
        held, self._held = self._held, None
        self._rows = []
        if held is not None:
            held.close()

    def __del__(self) -> None:
        self.close()
