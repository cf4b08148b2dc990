"""One child's SQL connection: Perl DBI data source names, lazy connect, one reconnect.

amavisd keeps one DBI handle per child for ``@lookup_sql_dsn`` and one for
``@storage_sql_dsn`` (pipeline.md section 23).  Each list holds
``[dsn, user, password]`` entries tried in order, so a second server is a
failover.  We keep that shape with psycopg 3: a plain ``Connection`` per child
(libraries.md 4.7: a pool per child would be N idle connections for nothing, and
no connection may cross ``fork``), opened on first use *after* the fork and
dropped again when the process id changes.

A statement that fails because the server went away is retried once on a fresh
connection; any other failure is the caller's to report.  The callers decide what
a failure means: a logging failure must not lose mail, a lookup failure tempfails
(pipeline.md section 23, protocols.md section 6).

Clauses are written the way amavisd's ``%sql_clause`` writes them, with ``?``
placeholders and ``%k`` for "one placeholder per lookup key"; ``clause()`` turns
them into psycopg's ``%s`` style.  Admins' overrides in ``%sql_clause`` keep
working unchanged.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from amavisd import log as amavis_log

T = TypeVar("T")

#: Statements by amavisd's clause names (README.sql-pg column meanings, spec section 23).
DEFAULT_CLAUSES: dict[str, str] = {
    "sel_policy": "SELECT users.*, policy.*, users.id FROM users"
                  " LEFT JOIN policy ON users.policy_id=policy.id"
                  " WHERE users.email IN (%k) ORDER BY users.priority DESC",
    "sel_wblist": "SELECT wb FROM wblist JOIN mailaddr ON wblist.sid=mailaddr.id"
                  " WHERE wblist.rid=? AND mailaddr.email IN (%k)"
                  " ORDER BY mailaddr.priority DESC",
    "sel_adr": "SELECT id FROM maddr WHERE partition_tag=? AND email=?",
    "ins_adr": "INSERT INTO maddr (partition_tag, email, domain) VALUES (?,?,?)",
    "ins_msg": "INSERT INTO msgs (partition_tag, mail_id, secret_id, am_id,"
               " time_num, time_iso, sid, policy, client_addr, size, host)"
               " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
    "upd_msg": "UPDATE msgs SET content=?, quar_type=?, quar_loc=?, dsn_sent=?,"
               " spam_level=?, message_id=?, from_addr=?, subject=?, client_addr=?,"
               " originating=? WHERE partition_tag=? AND mail_id=?",
    "ins_rcp": "INSERT INTO msgrcpt (partition_tag, mail_id, rseqnum, rid, is_local,"
               " content, ds, rs, bl, wl, bspam_level, smtp_resp)"
               " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
    "ins_quar": "INSERT INTO quarantine (partition_tag, mail_id, chunk_ind, mail_text)"
                " VALUES (?,?,?,?)",
    "sel_msg": "SELECT partition_tag FROM msgs WHERE mail_id=?",
    "sel_quar": "SELECT mail_text FROM quarantine"
                " WHERE partition_tag=? AND mail_id=? ORDER BY chunk_ind",
}

#: Legacy scalar settings that set one clause each.
LEGACY_CLAUSES = {"sql_select_policy": "sel_policy",
                  "sql_select_white_black_list": "sel_wblist"}


class SQLConfigError(ValueError):
    """A data source name we cannot use (another driver, a bad entry)."""


def _dbi_pairs(rest: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(";"))):
        key, sep, value = item.partition("=")
        if not sep:
            if "dbname" in pairs:
                raise SQLConfigError(f"cannot read {item!r} in the DSN")
            pairs["dbname"] = item        # DBI:Pg:mydb is short for dbname=mydb
            continue
        key = key.strip().lower()
        key = {"database": "dbname", "db": "dbname"}.get(key, key)
        pairs[key] = value.strip()
    return pairs


def conninfo(entry: Any) -> dict[str, str]:
    """psycopg connection keywords for one ``@*_sql_dsn`` entry.

    Accepts ``['DBI:Pg:dbname=mail;host=127.0.0.1;port=5432', 'user', 'pw']`` (the
    Perl form, driver names case-insensitive) and a bare DSN string.  MySQL and
    SQLite DSNs are refused with a clear error: only PostgreSQL is supported.
    """
    if isinstance(entry, str):
        entry = [entry]
    if not isinstance(entry, (list, tuple)) or not entry or not isinstance(entry[0], str):
        raise SQLConfigError(f"an SQL DSN entry is [dsn, user, password], not {entry!r}")
    dsn = entry[0]
    match = re.match(r"(?i)dbi:(\w+):(.*)\Z", dsn, re.S)
    if match is None:
        raise SQLConfigError(f"{dsn!r} is not a DBI data source name (DBI:Pg:dbname=...)")
    driver = match.group(1).lower()
    if driver not in ("pg", "pgpp"):
        raise SQLConfigError(f"{dsn!r}: the {match.group(1)} driver is not supported, "
                             "only PostgreSQL (DBI:Pg:...)")
    keywords = _dbi_pairs(match.group(2))
    if len(entry) > 1 and entry[1] not in (None, ""):
        keywords["user"] = str(entry[1])
    if len(entry) > 2 and entry[2] not in (None, ""):
        keywords["password"] = str(entry[2])
    return keywords


def describe(keywords: dict[str, str]) -> str:
    """The DSN for a log line, without the password."""
    return " ".join(f"{k}={v}" for k, v in keywords.items() if k != "password")


def clause(sql: str, nkeys: int = 0) -> str:
    """amavisd clause syntax to psycopg's: ``?`` -> ``%s``, ``%k`` -> ``nkeys`` of them.

    Text inside single quotes is left alone, and a literal ``%`` is doubled.
    """
    out = []
    for i, piece in enumerate(re.split(r"('(?:[^']|'')*')", sql)):
        if i % 2:                                  # a quoted literal
            out.append(piece.replace("%", "%%"))
            continue
        piece = piece.replace("%", "%%").replace("%%k", ", ".join(["%s"] * nkeys) or "NULL")
        out.append(piece.replace("?", "%s"))
    return "".join(out)


def clauses(config: Any) -> dict[str, str]:
    """The clauses in force: ours, then the legacy scalars, then ``%sql_clause``."""
    result = dict(DEFAULT_CLAUSES)
    for setting_name, name in LEGACY_CLAUSES.items():
        value = getattr(config, setting_name, None)
        if value:
            result[name] = str(value)
    for name, value in (getattr(config, "sql_clause", None) or {}).items():
        if value:
            result[str(name)] = str(value)
    return result


def _server_gone(exc: BaseException) -> bool:
    import psycopg

    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


class Database:
    """The connection for one DSN list, opened lazily in the process that uses it.

    Safe to keep in a module global: after a fork the child sees a different pid
    and opens its own connection instead of touching the parent's socket.  A lock
    serialises the spam thread and the reactor thread, which may both ask.
    """

    def __init__(self, entries: Sequence[Any], purpose: str, *, connect_timeout: int = 10,
                 persistent: bool = True):
        self.targets = [conninfo(e) for e in entries]
        if not self.targets:
            raise SQLConfigError(f"no data source for SQL {purpose}")
        self.purpose = purpose
        self.connect_timeout = connect_timeout
        self.persistent = persistent
        self._conn: Any = None
        self._pid = 0
        self._lock = threading.RLock()

    def _connect(self) -> Any:
        import psycopg

        errors = []
        for keywords in self.targets:
            try:
                conn = psycopg.connect(connect_timeout=self.connect_timeout, autocommit=True,
                                       **keywords)
            except psycopg.Error as exc:
                errors.append(f"{describe(keywords)}: {str(exc).strip()}")
                continue
            amavis_log.do_log(3, "SQL %s: connected to %s", self.purpose, describe(keywords))
            return conn
        raise ConnectionError(f"SQL {self.purpose}: no server answered: " + "; ".join(errors))

    def connection(self) -> Any:
        """The open connection, made now if this process has none."""
        if self._conn is not None and self._pid == os.getpid() and not self._conn.closed:
            return self._conn
        if self._pid != os.getpid() and self._conn is not None:
            # the parent's: finalising it would send the server a Terminate message
            # on the parent's socket, so it is parked for the life of this process
            _inherited.append(self._conn)
            self._conn = None
        self._conn = self._connect()
        self._pid = os.getpid()
        return self._conn

    def drop(self) -> None:
        """Close this process's connection (the next use reconnects)."""
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            try:
                conn.close()
            except Exception:              # noqa: BLE001 - already broken; nothing to save
                pass

    def close(self) -> None:
        """Close for good (tests, shutdown); a later use would reconnect."""
        self.drop()

    def end_of_task(self) -> None:
        """Between messages: keep the connection unless ``$database_sessions_persistent`` is 0."""
        if not self.persistent:
            self.drop()

    def run(self, work: Callable[[Any], T]) -> T:
        """Call ``work(cursor)`` inside one transaction; commit, or roll back on error.

        If the server had gone away (the connection turned out broken), the
        transaction never committed, so ``work`` is retried once on a fresh
        connection: it must therefore not have effects outside the database.
        """
        def in_transaction(conn: Any) -> T:
            with conn.transaction(), conn.cursor() as cur:
                return work(cur)

        return self._retrying(in_transaction)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows (with column names in ``last_columns``)."""
        def one_statement(conn: Any) -> list[tuple[Any, ...]]:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                rows = cur.fetchall() if cur.description else []
                self.last_columns = [d.name for d in cur.description or ()]
                return rows

        return self._retrying(one_statement)

    def _retrying(self, call: Callable[[Any], T]) -> T:
        """``call(connection)``, once more on a new connection if the server had gone."""
        with self._lock:
            for attempt in (1, 2):
                conn = self.connection()
                try:
                    return call(conn)
                except Exception as exc:
                    if attempt == 1 and _server_gone(exc) and (conn.closed or conn.broken):
                        amavis_log.do_log(1, "SQL %s: connection lost (%s), reconnecting",
                                          self.purpose, str(exc).strip())
                        self.drop()
                        continue
                    raise
        raise AssertionError("unreachable")

    last_columns: list[str] = []


_databases: dict[str, Database] = {}
_inherited: list[Any] = []


def database(config: Any, purpose: str) -> Database | None:
    """This process's ``Database`` for ``'lookup'`` or ``'storage'``, or None if unset."""
    entries = getattr(config, f"{purpose}_sql_dsn", None) or []
    if not entries:
        return None
    key = f"{purpose}:{entries!r}"
    db = _databases.get(key)
    if db is None:
        persistent = bool(getattr(config, "database_sessions_persistent", 1))
        db = _databases[key] = Database(entries, purpose, persistent=persistent)
    return db


def end_of_task() -> None:
    """Called by the child after each message (``$database_sessions_persistent``)."""
    for db in _databases.values():
        db.end_of_task()
