# tests: t/sql/test_storage.py, t/integration/test_sql_logging.py
"""SQL logging: the maddr, msgs and msgrcpt rows of each message (spec/pipeline.md 23).

Runs in the child.  The pipeline calls the two ``save_info_*`` steps in a worker
thread of the child's reactor (they block on the database); everything that
reads settings or lookups is worked out beforehand, in the reactor thread, by the
pure functions below, so the thread only talks to PostgreSQL.

* ``save_info_preliminary`` right after the mail_id is drawn: the sender's and
  each recipient's ``maddr`` id (found, or inserted), then the ``msgs`` row with
  ``content`` NULL, which front ends read as "in progress".  The insert also
  proves the mail_id unique (spec section 3): on a collision a new id is drawn.
* ``save_info_final`` after the DSN: one ``msgrcpt`` row per recipient and the
  ``upd_msg`` update, in one transaction.

Neither step raises: a logging failure is logged and the message goes on, so a
database outage never costs mail (protocols.md section 6; docs/differences.md
records where this differs from the Perl daemon).  The statements are
amavisd's clause names from ``clauses(config)``, so ``%sql_clause`` overrides work.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from amavisd import ids, stats
from amavisd.actions.headers import safe_decode_mime
from amavisd.actions.quarantine import ccat_key, sorted_ccats
from amavisd.config.lookup import _domain_key, _lower, split_address
from amavisd.config.perlconf import PerlCode
from amavisd.constants import (
    CC_BADH,
    CC_BANNED,
    CC_CATCHALL,
    CC_CLEAN,
    CC_MTA,
    CC_OVERSIZED,
    CC_SPAM,
    CC_SPAMMY,
    CC_UNCHECKED,
    CC_VIRUS,
    D_BOUNCE,
    D_DISCARD,
    D_PASS,
)
from amavisd.logline import quote_address
from amavisd.message import Message, Recipient
from amavisd.sql.connection import Database, clause, clauses

log = logging.getLogger(__name__)

#: Section 23: the one-letter content codes of msgs.content and msgrcpt.content.
CONTENT_LETTERS: dict[str, str] = {
    str(CC_VIRUS): "V", str(CC_BANNED): "B", str(CC_UNCHECKED): "U", str(CC_SPAM): "S",
    str(CC_SPAMMY): "Y", f"{CC_BADH},2": "M", str(CC_BADH): "H", str(CC_OVERSIZED): "O",
    str(CC_MTA): "T", str(CC_CLEAN): "C", str(CC_CATCHALL): "?",
}
#: Varchar columns hold at most this many characters (README.sql-pg: varchar(255)).
FIELD_MAX = 255
#: Section 23: "5 retries on final update"; also the mail_id collision attempts (section 2).
ATTEMPTS = 5
#: Schema generation that added rseqnum, is_local, content (msgrcpt) and originating (msgs).
SCHEMA_2_7 = 2.007

_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
_NOT_PRINTABLE_TEXT = re.compile(r"[^\x20-\x7e]")


# ------------------------------------------------------------------ values


def normalize_address(addr: str, *, localpart_is_case_sensitive: bool = False,
                      allow_8bit: bool = False) -> tuple[bytes, str]:
    """``maddr.email`` and ``maddr.domain`` for an address in its SMTP form (section 23).

    The local part is lowercased unless ``$localpart_is_case_sensitive``; the domain
    is lowercased and turned to ACE (``xn--``), without its trailing dots.  The
    result is cut to 255 octets and, unless ``$sql_allow_8bit_address``, every
    octet outside printable ASCII becomes ``?``.  ``domain`` has the labels in
    reverse order (``com.example.sub``).  The null address stays empty.
    """
    if addr == "":
        return b"", ""
    local, domain = split_address(addr)
    domain = _domain_key(domain)
    if not localpart_is_case_sensitive:
        local = _lower(local)
    email = f"{local}@{domain}".encode("utf-8", "surrogateescape")[:FIELD_MAX]
    if not allow_8bit:
        email = _NOT_PRINTABLE.sub(b"?", email)
    reversed_domain = ".".join(reversed(domain.split(".")))[:FIELD_MAX]
    return email, _text(reversed_domain)


def smtp_form(addr: str) -> str:
    """The address as amavis keeps ``sender_smtp``, without the angle brackets."""
    return quote_address(addr)[1:-1]


_perl_partition_warned = False


def partition_tag(view: Any, msg: Message) -> int:
    """``$partition_tag`` (a bank setting): a value, or a function called with the message.

    Undefined means 0 (spec section 3).  A Perl ``sub {...}`` from an imported
    amavisd.conf cannot run here: it counts as 0, with a warning once per process.
    """
    global _perl_partition_warned
    value = getattr(view, "partition_tag", None)
    if isinstance(value, PerlCode):
        if not _perl_partition_warned:
            _perl_partition_warned = True
            log.warning("$partition_tag is Perl code, which cannot run here; using 0 "
                        "(set partition_tag to a Python function in the native config)")
        return 0
    if callable(value):
        value = value(msg)
    if value is None or value == "":
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        log.warning("$partition_tag %r is not an integer, using 0", value)
        return 0


def time_iso(rx_time: float) -> str:
    """``msgs.time_iso``: ISO 8601 basic format in UTC, ``20261130T030154Z``.

    ``$timestamp_fmt_mysql`` only changes MySQL's format; on PostgreSQL, as with
    the Perl daemon, the zone-qualified form is always written (a bare
    ``20261130030154`` is not a timestamp PostgreSQL accepts).
    """
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(int(rx_time)))


def content_letter(blocking: str | None, ccats: Iterable[str]) -> str:
    """The letter of a blocking category (exact, then its major), else of the first
    category in the sorted list that has one (``4,2`` is ``M``); CATCHALL is ``?``."""
    if blocking:
        candidates = [str(blocking), str(blocking).split(",")[0]]
    else:
        candidates = sorted_ccats(ccats)
    for ccat in [*candidates, str(CC_CATCHALL)]:
        if ccat in CONTENT_LETTERS:
            return CONTENT_LETTERS[ccat]
    return "?"


def message_blocking_ccat(msg: Message) -> str | None:
    """The most important blocking category over the recipients (section 13)."""
    blocking = [r.ccat_blocking for r in msg.recipients if r.ccat_blocking]
    if not blocking:
        return None
    return max(blocking, key=ccat_key)


def delivery_status(rcpt: Recipient) -> str:
    """``msgrcpt.ds``: P pass, R reject, B bounce, D discard, T tempfail (section 23)."""
    resp = str(rcpt.reply) if rcpt.reply is not None else ""
    if resp.startswith("4"):
        return "T"
    if resp.startswith("5"):
        return "B" if rcpt.destiny == D_BOUNCE else "R"
    if rcpt.destiny == D_PASS and (resp.startswith("2") or not rcpt.done):
        return "P"
    if rcpt.destiny == D_DISCARD:
        return "D"
    return "?"


def seven_bit(text: str, limit: int = FIELD_MAX) -> str:
    """Cut to ``limit`` characters; anything but printable ASCII becomes ``?``."""
    return _NOT_PRINTABLE_TEXT.sub("?", text[:limit])


def _text(value: str) -> str:
    """Text PostgreSQL will store: no NUL, no lone surrogates."""
    return value.replace("\x00", "?").encode("utf-8", "replace").decode("utf-8")


# ------------------------------------------------------------------ header fields


def field_body(block: bytes, name: str) -> bytes | None:
    """The body of the first header field ``name`` (after the colon, folding kept)."""
    wanted = name.lower().encode("ascii")
    lines = block.split(b"\n")
    for index, line in enumerate(lines):
        head, colon, rest = line.partition(b":")
        if not colon or head.rstrip(b" \t").lower() != wanted or head[:1] in (b" ", b"\t"):
            continue
        body = [rest]
        for more in lines[index + 1:]:
            if more[:1] not in (b" ", b"\t"):
                break
            body.append(more)
        return b"\n".join(body)
    return None


def decoded_field(body: bytes | None) -> str:
    """``from_addr``/``subject``: unfolded, trimmed, RFC 2047 decoded, <= 255 characters."""
    if body is None:
        return ""
    raw = re.sub(rb"\r?\n(?=[ \t])", b"", body.rstrip(b"\r\n")).strip(b" \t")
    return _text(safe_decode_mime(raw)[:FIELD_MAX])


_MSGID_TOKEN = re.compile(
    r'[ \t]+|\((?:\\.|[^()\\]){0,999}\)'
    r'|<(?:"(?:\\.|[^"\\>]){0,999}"|\[(?:\\.|[^\]\\>]){0,999}\]|[^"<>\[\]\\])*>'
    r'|[^<( \t]+|.', re.S)


def parse_message_id(text: str) -> list[str]:
    """The ``<...>`` ids of a Message-ID body, comments and whitespace (CFWS) dropped.

    Anything else makes the text "garbage": with no id found, it becomes one id,
    trimmed, bracketed, inner ``>`` replaced by ``_``.
    """
    text = re.sub(r"[ \t]+", " ", text.replace("\n", "").replace("\r", ""))
    found: list[str] = []
    garbage = False
    for match in _MSGID_TOKEN.finditer(text):
        token = match.group(0)
        if len(token) > 1 and token.startswith("<") and token.endswith(">"):
            found.append(token)
        elif token.strip(" \t") == "" or (token.startswith("(") and token.endswith(")")):
            continue
        else:
            garbage = True
    if len(found) > 1:
        return list(dict.fromkeys(found))
    if garbage and not found:
        body = text.strip(" \t")
        body = body[1:] if body.startswith("<") else body
        body = body[:-1] if body.endswith(">") else body
        return [f"<{body.replace('>', '_')}>"]
    return found


def message_id_column(body: bytes | None) -> str:
    """``msgs.message_id``: CFWS stripped, <= 255 characters, 7-bit."""
    if body is None:
        return ""
    return seven_bit(" ".join(parse_message_id(body.decode("latin-1"))))


# ------------------------------------------------------------------ the two steps


@dataclass
class Stored:
    """What ``save_info_preliminary`` wrote; the final step needs it."""

    partition_tag: int
    mail_id: str
    secret_id: str
    sid: int
    rids: list[int | None]
    #: mail_ids drawn again after a collision (the pipeline adopts the last)
    retries: int = 0


@dataclass
class AddressKeys:
    """The normalised sender and recipient addresses, worked out in the reactor thread."""

    sender: tuple[bytes, str]
    recipients: list[tuple[bytes, str] | None] = field(default_factory=list)


def address_keys(config: Any, msg: Message) -> AddressKeys:
    """``maddr`` keys for the sender and each recipient (None: no row, e.g. empty)."""
    case = bool(getattr(config, "localpart_is_case_sensitive", False))
    eight = bool(getattr(config, "sql_allow_8bit_address", False))

    def key(addr: str) -> tuple[bytes, str]:
        return normalize_address(smtp_form(addr) if addr else "",
                                 localpart_is_case_sensitive=case, allow_8bit=eight)

    return AddressKeys(key(msg.sender),
                       [key(r.address) if r.address else None for r in msg.recipients])


def find_or_insert_address(cur: Any, statements: dict[str, str], partition: int,
                           email: bytes, domain: str) -> tuple[int | None, bool]:
    """``(maddr.id, existed)``: ``sel_adr``, else ``ins_adr`` and select again.

    Two children may insert the same new address at once: the loser's insert
    fails on the unique (partition_tag, email) key, inside a savepoint so the
    transaction survives, and its second select finds the winner's row.
    """
    import psycopg

    select = clause(statements["sel_adr"])
    cur.execute(select, [partition, email])
    row = cur.fetchone()
    if row is not None:
        return int(row[0]), True
    insert_error: Exception | None = None
    try:
        with cur.connection.transaction():          # a savepoint
            cur.execute(clause(statements["ins_adr"]), [partition, email, domain])
    except psycopg.errors.UniqueViolation as exc:
        insert_error = exc
    cur.execute(select, [partition, email])
    row = cur.fetchone()
    if row is None:
        raise RuntimeError(f"find_or_save_addr: failed to insert addr {email!r}: "
                           f"{insert_error}")
    if insert_error is not None:
        log.debug("find_or_save_addr: found on a second attempt, id=%s, %r", row[0], email)
    return int(row[0]), insert_error is not None


def msg_row(config: Any, msg: Message, partition: int, sid: int, mail_id: str,
            secret_id: str) -> list[Any]:
    """The ``ins_msg`` parameters (section 23)."""
    host = str(getattr(config, "myhostname", None) or "localhost")
    return [partition, mail_id.encode("ascii"), secret_id.encode("ascii"), msg.log_id,
            int(msg.rx_time), time_iso(msg.rx_time), sid,
            _text(msg.policy_bank_path or "")[:FIELD_MAX], msg.client.addr or "",
            int(msg.size), _text(host)[:FIELD_MAX]]


#: Log rows are committed without waiting for the WAL flush: two fsyncs per message
#: were most of the SQL logging cost (bench/RESULTS.md).  A database crash may lose
#: the last moment of log rows, never mail: the ``sql:`` quarantine commits
#: synchronously, which also makes every earlier log row durable (docs/sql.md).
LOG_COMMIT = "SET LOCAL synchronous_commit TO OFF"


def save_info_preliminary(db: Database, config: Any, msg: Message, keys: AddressKeys,
                          partition: int,
                          new_id: Callable[[], tuple[str, str]] | None = None,
                          sleep: Callable[[float], None] = time.sleep) -> Stored | None:
    """Address ids, then the ``msgs`` row; None when nothing was stored (logged).

    Runs in a worker thread.  A mail_id collision (the msgs primary key) draws a
    new id, up to 5 attempts with 1-3 s pauses as amavis does; any other failure
    is logged once and the message goes on unlogged.
    """
    import psycopg

    statements = clauses(config)
    if new_id is None:
        bits = int(getattr(config, "mail_id_size_bits", 72) or 72)

        def new_id() -> tuple[str, str]:
            return ids.generate_mail_id(bits)

    def addresses(cur: Any) -> tuple[int | None, list[int | None]]:
        sid, existed = find_or_insert_address(cur, statements, partition, *keys.sender)
        stats.count("SqlAddrSenderAttempts")
        stats.count("SqlAddrSenderHits" if existed else "SqlAddrSenderMisses")
        rids: list[int | None] = []
        for key in keys.recipients:
            if key is None:
                rids.append(None)
                continue
            rid, existed = find_or_insert_address(cur, statements, partition, *key)
            stats.count("SqlAddrRecipAttempts")
            stats.count("SqlAddrRecipHits" if existed else "SqlAddrRecipMisses")
            rids.append(rid)
        return sid, rids

    try:
        sid, rids = db.run(addresses)
    except Exception as exc:  # noqa: BLE001 - logging must not cost mail
        log.error("SQL storage: save_info_preliminary %s failed, message not logged: %s",
                  msg.mail_id, _one_line(exc))
        return None
    if sid is None:
        return None
    mail_id, secret_id = msg.mail_id, msg.secret_id
    insert = clause(statements["ins_msg"])
    for attempt in range(1, ATTEMPTS + 1):
        params = msg_row(config, msg, partition, sid, mail_id, secret_id)
        try:
            db.run(lambda cur, p=params: (cur.execute(LOG_COMMIT), cur.execute(insert, p)))
        except psycopg.errors.UniqueViolation:
            if attempt == ATTEMPTS:
                log.error("too many retries on storing preliminary, info not saved")
                return None
            stats.count("GenMailIdRetries")
            log.info("retrying storing preliminary, %d attempts remain", ATTEMPTS - attempt)
            sleep(random.randint(1, 3))
            mail_id, secret_id = new_id()
            continue
        except Exception as exc:  # noqa: BLE001 - logging must not cost mail
            log.error("SQL storage: save_info_preliminary %s failed, message not logged: %s",
                      mail_id, _one_line(exc))
            return None
        log.debug("save_info_preliminary %s, sender id: %s", mail_id, sid)
        return Stored(partition, mail_id, secret_id, sid, rids, attempt - 1)
    return None


@dataclass
class FinalRows:
    """The parameters of ``ins_rcp`` (one list per stored recipient) and ``upd_msg``."""

    recipients: list[list[Any]]
    update: list[Any]


def final_rows(config: Any, msg: Message, stored: Stored, header_block: bytes,
               is_local: Sequence[bool], quar_loc: str | None) -> FinalRows:
    """Section 23 column by column, from the message as the pipeline left it.

    ``is_local`` is ``@local_domains_maps`` per recipient; ``quar_loc`` the first
    quarantine location with ``$QUARANTINEDIR/`` stripped (None if not quarantined).
    """
    schema = float(getattr(config, "sql_schema_version", 2.013) or 2.013)
    mail_id = stored.mail_id.encode("ascii")
    levels = [r.spam_level for r in msg.recipients if r.spam_level is not None]
    rows = []
    for seq, (rcpt, rid, local) in enumerate(zip(msg.recipients, stored.rids, is_local,
                                                 strict=True), start=1):
        if rid is None:                 # no maddr row (section 23: skipped)
            continue
        resp = seven_bit(str(rcpt.reply) if rcpt.reply is not None else "")
        middle: list[Any] = [rid]
        if schema >= SCHEMA_2_7:
            middle = [seq, rid, "Y" if local else "N",
                      content_letter(rcpt.ccat_blocking, rcpt.ccats)]
        rows.append([stored.partition_tag, mail_id, *middle, delivery_status(rcpt), " ",
                     "Y" if rcpt.blacklisted else "N", "Y" if rcpt.whitelisted else "N",
                     float(rcpt.spam_level or 0.0), resp])
    ccats = msg.findings.get("ccats") or [msg.findings.get("ccat_main", str(CC_CLEAN))]
    content = content_letter(message_blocking_ccat(msg), ccats)
    qtypes = msg.findings.get("quar_type") or []
    dsn = {1: "Y", 2: "q"}.get(int(msg.findings.get("dsn_sent") or 0), "N")
    update: list[Any] = [
        content, qtypes[0] if qtypes else " ", seven_bit(quar_loc or ""), dsn,
        float(min(levels)) if levels else 0.0,
        message_id_column(field_body(header_block, "Message-ID")),
        decoded_field(field_body(header_block, "From")),
        decoded_field(field_body(header_block, "Subject")),
        msg.client.addr or ""]
    if schema >= SCHEMA_2_7:
        update.append("Y" if msg.originating else "N")
    update += [stored.partition_tag, mail_id]
    return FinalRows(rows, update)


def _transient(exc: BaseException) -> bool:
    """Worth another attempt: a deadlock, a serialisation failure, a lost connection."""
    import psycopg

    return isinstance(exc, (psycopg.errors.SerializationFailure,
                            psycopg.errors.DeadlockDetected,
                            psycopg.errors.LockNotAvailable,
                            psycopg.OperationalError))


def save_info_final(db: Database, config: Any, rows: FinalRows, mail_id: str,
                    sleep: Callable[[float], None] = time.sleep) -> bool:
    """``msgrcpt`` rows and the ``msgs`` update in one transaction; False if not saved.

    Runs in a worker thread.  A transient failure is tried again (5 attempts in
    all, 1-3 s apart, section 23); an unreachable server or any other error is
    logged at once and the message goes on.
    """
    statements = clauses(config)
    insert = clause(statements["ins_rcp"])
    update = clause(statements["upd_msg"])

    def work(cur: Any) -> None:
        cur.execute(LOG_COMMIT)
        for params in rows.recipients:
            cur.execute(insert, params)
        cur.execute(update, rows.update)

    for attempt in range(1, ATTEMPTS + 1):
        try:
            db.run(work)
            return True
        except Exception as exc:  # noqa: BLE001 - logging must not cost mail
            if attempt == ATTEMPTS or not _transient(exc):
                log.error("SQL storage: save_info_final %s failed, info not saved: %s",
                          mail_id, _one_line(exc))
                return False
            log.warning("SQL storage: save_info_final %s: %s; retrying, %d attempts remain",
                        mail_id, _one_line(exc), ATTEMPTS - attempt)
            sleep(random.randint(1, 3))
    return False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
