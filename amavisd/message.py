"""The message and per-recipient model handed down the pipeline.

Built by the protocol (SMTP/LMTP or AM.PDP) once DATA is spooled; checks add
findings, ``decide`` sets each recipient's destiny, actions record outcomes.  The
message body is never held here: ``spool_path`` names the file on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amavisd.errors import Reply


@dataclass
class ClientInfo:
    """Who sent the message to the MTA (from XFORWARD or AM.PDP), and who connected to us."""

    addr: str | None = None          # XFORWARD ADDR (the original client), None if unknown
    name: str | None = None
    port: str | None = None
    proto: str | None = None
    helo: str | None = None
    ident: str | None = None         # the MTA's queue id
    source: str | None = None        # LOCAL / REMOTE
    login: str | None = None
    mta_addr: str = ""               # the MTA connected to us (peer IP)
    mta_port: int = 0
    mta_helo: str | None = None      # EHLO/HELO/LHLO argument the MTA gave us
    local_addr: str = ""             # our socket IP ('' on a Unix socket)
    local_port: int = 0              # our port (0 on a Unix socket)
    unix_socket: str | None = None   # our socket path when on a Unix socket


@dataclass
class Recipient:
    """One envelope recipient and everything decided about it."""

    address: str                     # unquoted, as amavis keeps it internally
    quoted: str                      # the client's form, between the angle brackets
    notify: list[str] | None = None  # DSN NOTIFY values, upper case
    orcpt: str | None = None         # 'type;address', decoded (RFC 3461)
    #: Set by decide/actions.  ``done`` 0: open, 1: decided by us, 2: by the next hop.
    destiny: int | None = None
    ccat_blocking: str | None = None
    reply: Reply | None = None
    done: int = 0
    delivery_method: str | list[str] | None = None
    queued_as: str | None = None
    mailbox: str | None = None
    #: Content categories, ``"maj"`` or ``"maj,min"`` (pipeline.md 12.2), set by decide;
    #: empty means CLEAN only.  Header edits (actions/headers.py) read them.
    ccats: list[str] = field(default_factory=list)
    #: The address forwarding uses in RCPT TO when it differs from ``address``
    #: (an address extension, pipeline.md 20.9); logs keep ``address``.
    final_address: str | None = None
    #: Spam facts (pipeline.md 10, 12.3), set by ``amavisd.checks.spam.apply``; read by
    #: header edits, quarantine and DSN.  ``spam_level`` None: no spam check touched it.
    spam_level: float | None = None
    spam_tests: list[str] = field(default_factory=list)
    blacklisted: bool = False
    whitelisted: bool = False
    bypass_spam_checks: bool = False
    #: amavis's ``recip_tagged``: forwarded with an alert, a subject tag or as spammy.
    tagged: bool = False


@dataclass
class Message:
    """One transaction: envelope, spool file, client info, policy bank, ids, findings."""

    sender: str                      # unquoted; '' is the null sender
    sender_quoted: str
    recipients: list[Recipient]
    spool_path: Path                 # email.txt: LF line ends, dot-unstuffed
    size: int                        # RFC 1870 size (CRLF counted)
    log_id: str                      # am_id, e.g. '12160-02' or '12160-02-2'
    mail_id: str = ""
    secret_id: str = ""
    client: ClientInfo = field(default_factory=ClientInfo)
    body_type: str | None = None     # BODY=7BIT|8BITMIME as given
    smtputf8: bool = False
    dsn_ret: str | None = None       # RET=FULL|HDRS
    dsn_envid: str | None = None     # ENVID, kept xtext-encoded
    declared_size: int | None = None
    auth_submitter: str | None = None
    protocol: str = "ESMTP"          # proto string for Received: ESMTP, LMTP, UTF8SMTP, ...S/A
    tls_cipher: str | None = None
    lmtp: bool = False               # per-recipient final replies
    policy_bank_path: str = ""
    originating: bool = False
    rx_time: float = 0.0             # time.time() when DATA ended
    rx_start: float = 0.0            # monotonic: start of the transaction timing
    findings: dict[str, Any] = field(default_factory=dict)
    actions_performed: list[str] = field(default_factory=list)
