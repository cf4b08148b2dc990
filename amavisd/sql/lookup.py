# tests: t/sql/test_lookup.py, t/integration/test_sql_lookups.py
"""SQL lookups (``@lookup_sql_dsn``): per-recipient settings from ``users``/``policy``
and per-recipient sender lists from ``wblist``/``mailaddr`` (pipeline.md 14, 10.1, 23).

How a field is answered (amavisd-new's Amavis::Lookup::SQL and ::SQLfield):

1. The address gives its SQL keys, most specific first: the address as given,
   ``user+ext@dom``, ``user@dom``, then ``user+ext`` and ``user`` only when the
   address is local by the *static* part of ``@local_domains_maps`` (asking SQL
   there would recurse), then ``@dom``, ``@.dom``, ``@.parent``..., ``@.``.  With
   ``$sql_lookups_no_at_means_domain`` a bare key is a domain instead: ``user@``,
   ``dom``, ``.dom``... .  Octets outside printable ASCII become ``?`` unless
   ``$sql_allow_8bit_address``.
2. ``sel_policy`` runs once with those keys (``%k``), and ``%a %l %u %e %d %L``
   if the admin's clause uses them.  The records it returns are kept for the
   rest of the message, so the thirty-odd per-recipient settings cost one query
   per address and message.
3. A field's answer is its value in the first record where it is not NULL; a
   record without that column is "no answer" for types ending in ``-``, true
   for ``B1`` (the ``local`` field: a user record makes the address local,
   except the ``@.`` catch-all) and false for ``B0``.  No answer from any
   record lets the next (static) table of the map answer.

``imply_sql_lookups`` (run by ``Config.finish``) puts the SQL fields in front
of the maps amavisd names and makes the config's lookups the process's
(``activate``; each child activates its own config again after the fork, so a
reload the master rejected cannot change what its children ask).

The records live for one message: the cache belongs to the task id the log
lines carry (``amavisd.log.task_id``: set at MAIL FROM and per AM.PDP request),
and a new task starts with an empty cache.  Outside a task nothing is cached.

A lookup that fails (server down, a bad clause) raises ``TempFail``: the MTA
gets a 4xx and retries; mail never passes under a policy we could not read.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from amavisd import log as amavis_log
from amavisd.config.lookup import (
    SQLField,
    _domain_key,
    _lower,
    is_sql_table,
    lookup,
    split_address,
    split_localpart,
)
from amavisd.config.perlconf import PerlLookup, PerlScalarRef
from amavisd.errors import ConfigError, TempFail
from amavisd.sql import connection

log = logging.getLogger(__name__)

#: At most this many ``@.domain`` keys per address; the deepest are dropped (§14).
MAX_DOMAIN_SUFFIX_KEYS = 20

#: The settings ``$lookup_maps_imply_sql_and_ldap`` puts an SQL field in front of, in
#: amavisd's order (pipeline.md 14): (map, users/policy column, field type).
IMPLIED_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("local_domains_maps", "local", "B1"),
    ("virus_lovers_maps", "virus_lover", "B-"),
    ("spam_lovers_maps", "spam_lover", "B-"),
    ("unchecked_lovers_maps", "unchecked_lover", "B-"),
    ("banned_files_lovers_maps", "banned_files_lover", "B-"),
    ("bad_header_lovers_maps", "bad_header_lover", "B-"),
    ("bypass_virus_checks_maps", "bypass_virus_checks", "B-"),
    ("bypass_spam_checks_maps", "bypass_spam_checks", "B-"),
    ("bypass_banned_checks_maps", "bypass_banned_checks", "B-"),
    ("bypass_header_checks_maps", "bypass_header_checks", "B-"),
    ("spam_tag_level_maps", "spam_tag_level", "N-"),
    ("spam_tag2_level_maps", "spam_tag2_level", "N-"),
    ("spam_tag3_level_maps", "spam_tag3_level", "N-"),
    ("spam_kill_level_maps", "spam_kill_level", "N-"),
    ("spam_dsn_cutoff_level_maps", "spam_dsn_cutoff_level", "N-"),
    ("spam_quarantine_cutoff_level_maps", "spam_quarantine_cutoff_level", "N-"),
    ("spam_subject_tag_maps", "spam_subject_tag", "S-"),
    ("spam_subject_tag2_maps", "spam_subject_tag2", "S-"),
    ("spam_subject_tag3_maps", "spam_subject_tag3", "S-"),
    ("virus_quarantine_to_maps", "virus_quarantine_to", "S-"),
    ("spam_quarantine_to_maps", "spam_quarantine_to", "S-"),
    ("banned_quarantine_to_maps", "banned_quarantine_to", "S-"),
    ("unchecked_quarantine_to_maps", "unchecked_quarantine_to", "S-"),
    ("bad_header_quarantine_to_maps", "bad_header_quarantine_to", "S-"),
    ("clean_quarantine_to_maps", "clean_quarantine_to", "S-"),
    ("archive_quarantine_to_maps", "archive_quarantine_to", "S-"),
    ("message_size_limit_maps", "message_size_limit", "N-"),
    ("addr_extension_virus_maps", "addr_extension_virus", "S-"),
    ("addr_extension_spam_maps", "addr_extension_spam", "S-"),
    ("addr_extension_banned_maps", "addr_extension_banned", "S-"),
    ("addr_extension_bad_header_maps", "addr_extension_bad_header", "S-"),
    ("warnvirusrecip_maps", "warnvirusrecip", "B-"),
    ("warnbannedrecip_maps", "warnbannedrecip", "B-"),
    ("warnbadhrecip_maps", "warnbadhrecip", "B-"),
    ("newvirus_admin_maps", "newvirus_admin", "S-"),
    ("virus_admin_maps", "virus_admin", "S-"),
    ("spam_admin_maps", "spam_admin", "S-"),
    ("banned_admin_maps", "banned_admin", "S-"),
    ("bad_header_admin_maps", "bad_header_admin", "S-"),
    ("banned_filename_maps", "banned_rulenames", "S-"),
    ("disclaimer_options_bysender_maps", "disclaimer_options", "S-"),
    ("forward_method_maps", "forward_method", "S-"),
    ("sa_userconf_maps", "sa_userconf", "S-"),
    ("sa_username_maps", "sa_username", "S-"),
)

#: ``q_sql_*`` of a Perl config -> field type (Amavis::Conf: all "missing means undef").
_PERL_KINDS = {"q_sql_s": "S-", "q_sql_n": "N-", "q_sql_b": "B-"}

#: Boolean field values that mean false: N n F f, zeros, NULs, space (then spaces).
_FALSE = re.compile(r"(?:[NnFf ]|0+|\x00+) *\Z")
#: A Perl string in numeric context: the leading number, else 0.
_PERL_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")
#: amavisd's substitutions in lookup clauses.
_CLAUSE_TOKEN = re.compile(r"%[kaluedL]|\?")


# ---------------------------------------------------------------- keys
@dataclass(frozen=True)
class QueryKeys:
    """The SQL keys of one address and the pieces ``%a %l %u %e %d`` stand for."""

    keys: list[str]
    #: full address, full localpart, user, extension (with delimiter), domain
    rhs: tuple[str, str, str, str, str]
    is_local: bool


def query_keys(address: str, *, delimiter: str | None = None, case_sensitive: bool = False,
               is_local: bool = False, no_at_means_domain: bool = False) -> QueryKeys:
    """The keys ``sel_policy``/``sel_wblist`` are asked, most specific first (§14).

    ``User+Foo@Sub.Example.COM``, delimiter ``+``, local: the address as given,
    ``user+foo@sub.example.com``, ``user@sub.example.com``, ``user+foo``,
    ``user``, ``@sub.example.com``, ``@.sub.example.com``, ``@.example.com``,
    ``@.com``, ``@.``.  Not local: the same without the two bare user keys.
    With ``no_at_means_domain`` the user keys end in ``@`` and the domain keys
    have no ``@`` (``user@``, ``sub.example.com``, ``.sub.example.com``...).
    """
    full_localpart, domain = split_address(address)
    localpart = full_localpart if case_sensitive else _lower(full_localpart)
    domain = _domain_key(domain)
    user, extension = split_localpart(localpart, delimiter)
    extension = extension or ""
    user_tail, domain_head = ("@", "") if no_at_means_domain else ("", "@")
    keys = [address]
    if extension:
        keys.append(f"{user}{extension}@{domain}")
    keys.append(f"{user}@{domain}")
    if is_local:
        if extension:
            keys.append(f"{user}{extension}{user_tail}")
        keys.append(f"{user}{user_tail}")
    keys.append(domain_head + domain)
    if "[" in domain:                          # an address literal is not split
        keys.append(domain_head + ".")
    else:
        suffixes = []
        rest = domain
        while True:
            suffixes.append(f"{domain_head}.{rest}")
            if not rest:
                break
            rest = rest.partition(".")[2]
        keys.extend(suffixes[-MAX_DOMAIN_SUFFIX_KEYS:])
    return QueryKeys(list(dict.fromkeys(keys)),
                     (address, full_localpart, user, extension, domain), is_local)


def key_octets(key: str, allow_8bit: bool = False) -> bytes:
    """A key as the ``email`` column holds it: UTF-8, and without ``$sql_allow_8bit_address``
    every octet outside printable ASCII (8-bit, controls, DEL) turned into ``?``."""
    data = key.encode("utf-8", "surrogateescape")
    if allow_8bit:
        return data
    return bytes(b if 0x20 <= b <= 0x7E else 0x3F for b in data)


def _param(data: bytes) -> str | bytes:
    """How an octet string is sent: bytes (bytea) when text would not survive, else
    text of no declared type, which PostgreSQL reads as bytea or varchar as the
    column is (schemas older than 2.7 have ``varchar`` e-mail columns)."""
    if b"\\" in data or any(b > 0x7E or b < 0x20 for b in data):
        return data
    return data.decode("ascii")


def expand_clause(sql: str, keys: QueryKeys, extra: Sequence[Any] = (),
                  allow_8bit: bool = False) -> tuple[str, list[Any]]:
    """amavisd's clause to psycopg's, with its parameters in order.

    ``%k`` -> one placeholder per key; ``%a %l %u %e %d`` -> the full address, full
    localpart, user, extension and domain; ``%L`` -> is-local (boolean); ``?`` ->
    the next of ``extra``.  Text in single quotes is left alone; other ``%`` are
    literal.
    """
    out: list[str] = []
    params: list[Any] = []
    pieces = dict(zip("alued", keys.rhs, strict=True))
    extras = list(extra)
    for i, piece in enumerate(re.split(r"('(?:[^']|'')*')", sql)):
        if i % 2:                                   # a quoted literal
            out.append(piece.replace("%", "%%"))
            continue
        pos = 0
        for match in _CLAUSE_TOKEN.finditer(piece):
            out.append(piece[pos:match.start()].replace("%", "%%"))
            pos = match.end()
            token = match.group(0)
            if token == "%k":
                params.extend(_param(key_octets(k, allow_8bit)) for k in keys.keys)
                out.append(", ".join(["%s"] * len(keys.keys)) or "NULL")
                continue
            if token == "?":
                params.append(extras.pop(0) if extras else None)
            elif token == "%L":
                params.append(keys.is_local)
            else:
                params.append(_param(pieces[token[1]].encode("utf-8", "surrogateescape")))
            out.append("%s")
        out.append(piece[pos:].replace("%", "%%"))
    return "".join(out), params


# ---------------------------------------------------------------- values
def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "surrogateescape")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def perl_number(value: Any) -> int | float:
    """A field value in numeric context, as Perl's ``$x + 0``."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, (float, Decimal)):
        number = float(value)
        return int(number) if number.is_integer() and isinstance(value, Decimal) else number
    match = _PERL_NUMBER.match(_text(value))
    if not match:
        return 0
    number = float(match.group(1))
    return int(number) if re.fullmatch(r"[+-]?\d+", match.group(1)) else number


def convert(value: Any, field_type: str) -> Any:
    """A non-NULL column value as the field type wants it (pipeline.md 14)."""
    kind = field_type[:1]
    if kind == "B":
        if isinstance(value, bool):
            return value
        text = _text(value)
        return bool(text) and not _FALSE.match(text)
    if kind == "N":
        return perl_number(value)
    return _text(value)


@dataclass(frozen=True)
class Record:
    """One row a lookup clause returned: columns by (lowercase) name, and its key."""

    values: dict[str, Any]
    #: the row's ``email`` (the key it matched) for logs, or ``(sql)``
    key: str


def _answer(record: Record, field: str, field_type: str) -> Any:
    """The field of one record, or None for "no answer from this record"."""
    if field not in record.values:
        if field_type[1:2] == "-":
            return None
        if field_type.startswith("B1"):
            return True
        if field_type.startswith("B0"):
            return False
        return None
    value = record.values[field]
    return None if value is None else convert(value, field_type)


def wb_verdict(value: Any) -> tuple[str, float]:
    """A ``wblist.wb`` value: ('score', n), ('neutral', 0), ('black', 0) or ('white', 0).

    Numeric: a soft score; empty, spaces or NUL: neutral; B, N, F: blacklisted;
    anything else (W, Y, T, or unexpected text) whitelisted (pipeline.md 10.1).
    """
    text = _text(value)
    number = re.fullmatch(r" *([+-]?\d+(?:\.\d*)?) *", text)
    if number:
        return "score", float(number.group(1))
    if re.fullmatch(r"[ \x00]*", text):
        return "neutral", 0.0
    if re.fullmatch(r"[BbNnFf] *", text):
        return "black", 0.0
    return "white", 0.0


# ---------------------------------------------------------------- the engine
class SQLLookups:
    """The SQL lookups of one config in one process: clauses, the database, the cache."""

    def __init__(self, config: Any):
        self.config = config
        self.implied = bool(_setting(config, "lookup_maps_imply_sql_and_ldap", 1))
        self.allow_8bit = bool(_setting(config, "sql_allow_8bit_address", 0))
        self.no_at_means_domain = bool(_setting(config, "sql_lookups_no_at_means_domain", 0))
        self._lock = threading.RLock()
        self._cache: dict[tuple[Any, ...], list[Record]] = {}
        self._cache_task: str | None = None
        self.queries = 0                       # statements run (tests, debugging)

    # -- clauses -------------------------------------------------------------
    def clause(self, name: str) -> str | None:
        """The statement for ``name``, or None when the admin disabled it.

        ``$sql_clause{name}`` set to undef/'' (or the legacy
        ``$sql_select_policy``/``$sql_select_white_black_list`` assigned undef)
        disables that lookup, as in amavisd.
        """
        overrides = _setting(self.config, "sql_clause", None) or {}
        if name in overrides:
            value = overrides[name]
            if isinstance(value, PerlScalarRef):
                value = value.value
            return str(value) if value else None
        for legacy, clause_name in connection.LEGACY_CLAUSES.items():
            if clause_name == name:
                value = _setting(self.config, legacy, None)
                if value:
                    return str(value)
                origin = getattr(self.config, "origin", None)
                if callable(origin) and origin(legacy) not in ("default", "?"):
                    return None                # assigned undef on purpose
        return connection.clauses(self.config).get(name)

    # -- keys ----------------------------------------------------------------
    def is_local(self, address: str, delimiter: str | None, case_sensitive: bool) -> bool:
        """``@local_domains_maps`` without its SQL/LDAP tables (asking SQL would recurse)."""
        tables = _setting(self.config, "local_domains_maps", None) or []
        if not isinstance(tables, (list, tuple)):
            tables = [tables]
        static = [t for t in tables if not is_sql_table(t)]
        return bool(lookup(False, address, static, recipient_delimiter=delimiter,
                           localpart_is_case_sensitive=case_sensitive))

    def keys(self, address: str, delimiter: str | None, case_sensitive: bool) -> QueryKeys:
        return query_keys(address, delimiter=delimiter, case_sensitive=case_sensitive,
                          is_local=self.is_local(address, delimiter, case_sensitive),
                          no_at_means_domain=self.no_at_means_domain)

    # -- the cache -------------------------------------------------------------
    def clear_cache(self) -> None:
        """Forget every record (a new message; amavisd's ``clear_cache``)."""
        with self._lock:
            self._cache.clear()

    def _cached(self, slot: tuple[Any, ...]) -> list[Record] | None:
        task = amavis_log.task_id()
        with self._lock:
            if task != self._cache_task:
                self._cache.clear()
                self._cache_task = task
            return self._cache.get(slot) if task is not None else None

    def _remember(self, slot: tuple[Any, ...], records: list[Record]) -> None:
        with self._lock:
            if amavis_log.task_id() is not None and amavis_log.task_id() == self._cache_task:
                self._cache[slot] = records

    # -- queries -----------------------------------------------------------------
    def records(self, address: str, delimiter: str | None = None,
                case_sensitive: bool = False) -> list[Record]:
        """What ``sel_policy`` returns for ``address``, in its order; cached per message."""
        slot = ("sel_policy", address, delimiter, case_sensitive)
        cached = self._cached(slot)
        if cached is not None:
            amavis_log.do_log(5, 'lookup_sql (cached): "%s", %d records', address,
                              len(cached))
            return cached
        sql = self.clause("sel_policy")
        if sql is None:
            amavis_log.do_log(4, "lookup_sql disabled for clause: sel_policy")
            return []
        keys = self.keys(address, delimiter, case_sensitive)
        records = self._select("sel_policy", sql, keys, address)
        self._remember(slot, records)
        return records

    def wb(self, user_id: Any, sender: str, delimiter: str | None = None,
           case_sensitive: bool = False) -> str | None:
        """``sel_wblist`` for one ``users.id`` and one sender: the first non-NULL ``wb``.

        Not cached (amavisd runs it for each recipient's ids and each sender).
        """
        sql = self.clause("sel_wblist")
        if sql is None:
            return None
        keys = self.keys(sender, delimiter, case_sensitive)
        for record in self._select("sel_wblist", sql, keys, sender, extra=(user_id,)):
            value = _answer(record, "wb", "S")
            if value is not None:
                return value
        return None

    def _select(self, name: str, sql: str, keys: QueryKeys, address: str,
                extra: Sequence[Any] = ()) -> list[Record]:
        statement, params = expand_clause(sql, keys, extra, self.allow_8bit)
        amavis_log.do_log(4, 'lookup_sql %s "%s", query keys: %s', name, address,
                          ", ".join(f'"{k}"' for k in keys.keys))

        def work(cursor: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
            cursor.execute(statement, params)
            names = [d.name.lower() for d in cursor.description or ()]
            return names, cursor.fetchall() if cursor.description else []

        try:
            db = connection.database(self.config, "lookup")
            if db is None:
                raise connection.SQLConfigError("@lookup_sql_dsn is empty")
            self.queries += 1
            names, rows = db.run(work)
        except Exception as exc:   # any failure: the policy is unknown
            reason = " ".join(str(exc).split()) or type(exc).__name__
            amavis_log.do_log(-1, "lookup_sql: %s for <%s> failed: %s", name, address, reason)
            raise TempFail("lookup_sql", f"{name} for <{address}>: {reason}") from exc
        records = [self._record(name, names, row) for row in rows]
        records = _by_specificity(records, keys, self.allow_8bit)
        if logging.getLogger().isEnabledFor(amavis_log.py_level(4)):
            if not records:
                amavis_log.do_log(4, 'lookup_sql, "%s" no match', address)
            for record in records:
                amavis_log.do_log(4, 'lookup_sql(%s) matches, result=(%s)', address, ", ".join(
                    f"{k}=>{'-' if v is None else repr(_text(v))}"
                    for k, v in record.values.items()))
        return records

    @staticmethod
    def _record(clause_name: str, names: list[str], row: Sequence[Any]) -> Record:
        values: dict[str, Any] = {}
        for column, value in zip(names, row, strict=True):
            values[column] = value          # a later column of the same name wins (users.id)
        email = values.get("email")
        key = _text(email) if email is not None else "(sql)"
        if clause_name == "sel_policy" and "local" not in values and key == "@.":
            # the catch-all does not make every address local: 'local' NULL
            # lets local_domains_maps fall through to the static tables
            values["local"] = None
        return Record(values, key)

    # -- answers -------------------------------------------------------------------
    def field(self, address: str, field: str, field_type: str = "S-", get_all: bool = False,
              delimiter: str | None = None, case_sensitive: bool = False
              ) -> list[tuple[Any, str]]:
        """(value, matching key) of the first record (every record with ``get_all``)
        where ``field`` has an answer."""
        found: list[tuple[Any, str]] = []
        for record in self.records(address, delimiter, case_sensitive):
            value = _answer(record, field, field_type)
            if value is None:
                continue
            found.append((value, f"sql:{record.key}"))
            if not get_all:
                break
        amavis_log.do_log(5, 'lookup_sql_field(%s), "%s" result: %s', field, address,
                          ", ".join(repr(v) for v, _ in found) or "undef")
        return found

    def user_ids(self, address: str, delimiter: str | None = None,
                 case_sensitive: bool = False) -> list[Any]:
        """Every ``users.id`` matching the recipient, in order (the rids ``wblist`` is
        asked for); amavisd has them only when the maps imply SQL."""
        if not self.implied:
            return []
        return [v for v, _ in self.field(address, "id", "N-", True, delimiter, case_sensitive)]


def _by_specificity(records: list[Record], keys: QueryKeys, allow_8bit: bool) -> list[Record]:
    """Records of equal ``priority`` ordered by how specific their key is.

    The clause orders by priority only; PostgreSQL returns ties in any order.
    Within a run of equal priority the record for the more specific key comes
    first (user before domain before catch-all), so ties have one outcome.
    """
    if len(records) < 2 or any("priority" not in r.values or "email" not in r.values
                               for r in records):
        return records
    rank = {key_octets(k, allow_8bit): i for i, k in enumerate(keys.keys)}
    runs: list[list[Record]] = []
    for record in records:
        if runs and runs[-1][0].values["priority"] == record.values["priority"]:
            runs[-1].append(record)
        else:
            runs.append([record])

    def specificity(record: Record) -> int:
        email = record.values["email"]
        data = bytes(email) if isinstance(email, (bytes, bytearray, memoryview)) \
            else str(email).encode("utf-8", "surrogateescape")
        return rank.get(data, len(rank))

    return [r for run in runs for r in sorted(run, key=specificity)]


def _setting(config: Any, name: str, default: Any) -> Any:
    try:
        value = getattr(config, name)
    except AttributeError:
        return default
    return default if value is None else value


# ---------------------------------------------------------------- the process's engine
_active: SQLLookups | None = None


def active() -> SQLLookups | None:
    """The SQL lookups of the config in force, None when ``@lookup_sql_dsn`` is empty."""
    return _active


def clear_cache() -> None:
    """Drop the cached records (also done by itself when a new task id is set)."""
    if _active is not None:
        _active.clear_cache()


def activate(config: Any) -> SQLLookups | None:
    """Make ``config``'s SQL lookups the ones SQL fields ask (None: no SQL lookups)."""
    global _active
    _active = SQLLookups(config) if _setting(config, "lookup_sql_dsn", None) else None
    return _active


def imply_sql_lookups(config: Any) -> None:
    """Activate SQL lookups for ``config`` and put the SQL fields in front of its maps.

    Called once the config is complete (``Config.finish``).  With
    ``@lookup_sql_dsn`` set and ``$lookup_maps_imply_sql_and_ldap`` (default 1),
    each map of ``IMPLIED_FIELDS`` the registry has gets its field first, as
    amavisd unshifts them; a policy bank that replaces such a map replaces it
    whole, without the field, as in amavisd.  Idempotent.
    """
    entries = _setting(config, "lookup_sql_dsn", None) or []
    for entry in entries:
        try:
            connection.conninfo(entry)
        except connection.SQLConfigError as exc:
            raise ConfigError(_origin(config, "lookup_sql_dsn"), "lookup_sql_dsn",
                              str(exc)) from None
    engine = activate(config)
    if engine is None or not engine.implied:
        return
    values = config.values
    for name, field, field_type in IMPLIED_FIELDS:
        if name not in values:
            continue                         # a map this version does not have yet
        current = values[name]
        tables = list(current) if isinstance(current, (list, tuple)) else \
            [] if current is None else [current]
        if tables and isinstance(tables[0], SQLField) and tables[0].implied:
            continue
        values[name] = [SQLField(field, field_type, implied=True), *tables]


def _origin(config: Any, name: str) -> str:
    origin = getattr(config, "origin", None)
    return origin(name) if callable(origin) else "config"


def ask_field(table: SQLField | PerlLookup, address: str, get_all: bool,
              delimiter: str | None, case_sensitive: bool) -> list[tuple[Any, str]]:
    """Answer an SQL field table for ``amavisd.config.lookup`` (no SQL lookups: nothing)."""
    engine = _active
    if engine is None:
        return []
    if isinstance(table, PerlLookup):
        field_type = _PERL_KINDS.get(table.kind)
        if field_type is None or not table.args:    # q_ldap_*, q_dns_a: no LDAP/DNS here
            return []
        table = SQLField(str(table.args[0]), field_type)
    return engine.field(address, table.field, table.type, get_all, delimiter, case_sensitive)
