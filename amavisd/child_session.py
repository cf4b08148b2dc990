"""Per-connection glue in the child: socket -> policy bank, ACL, protocol, handler.

Runs in the child.  ``SessionFactory.buildProtocol`` is called for each accepted
connection: it loads the base and interface banks, applies ``@inet_acl`` (a
denied client is closed with no byte sent, spec/protocols.md section 2.3), picks
the protocol from the bank (section 2.4) and builds the SMTP/LMTP server with an
``SmtpSession`` handler, which is where the protocol meets policy: ids, temp
files, banks by client IP, nanny states, and the pipeline.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from twisted.internet import defer
from twisted.internet.protocol import ServerFactory

from amavisd import ids, stats
from amavisd import log as amavis_log
from amavisd.config.banks import load_client_ip_banks
from amavisd.config.model import BankView
from amavisd.constants import ST_FORWARDING, ST_IDLE
from amavisd.message import ClientInfo, Message, Recipient
from amavisd.protocols.smtp_server import SizePolicy
from amavisd.sizelimit import oversized_destiny, recipient_size_limit

log = logging.getLogger(__name__)


class SessionFactory(ServerFactory):
    """One per listening socket of the child."""

    noisy = False

    def __init__(self, child, spec) -> None:
        self.child = child
        self.spec = spec
        self.port = None

    def buildProtocol(self, addr):
        child = self.child
        view = child.base_view(self.spec)
        peer_ip = getattr(addr, "host", None)
        if self.spec.kind == "inet":
            allowed, rule = child.allowed(view, peer_ip)
            if not allowed:
                how = f", blocked by rule {rule}" if rule else ""
                log.warning("DENIED ACCESS from IP %s, policy bank '%s'%s", peer_ip,
                            view.policy_bank_path, how)
                child.connection_refused(self.port)
                return None                          # Twisted closes it: no byte sent
        protocol = view.protocol
        if protocol in (None, "SMTP", "LMTP"):
            if protocol is None and self.spec.kind == "unix":
                log.error("TROUBLE in process_request: protocol not specified, UNIX")
                child.connection_refused(self.port)
                return None
            from amavisd.protocols.smtp_server import SMTPServer

            handler = SmtpSession(child, view)
            server = SMTPServer(handler, reactor=child.reactor)
            handler.server = server
            child.session_opened(server)
            return server
        if protocol == "AM.PDP":
            from amavisd.protocols.ampdp import AMPDPServer

            session = AmpdpSession(child, view)
            server = AMPDPServer(session, reactor=child.reactor)
            child.session_opened(server)
            return server
        log.error("TROUBLE in process_request: protocol %s is not available in this "
                  "version (on %s)", protocol, self.spec.label)
        child.connection_refused(self.port)
        return None


class SmtpSession:
    """The ``SessionHandler`` of one SMTP/LMTP session (see protocols/smtp_server.py)."""

    def __init__(self, child, view: BankView) -> None:
        self.child = child
        self.baseline = view                 # interface banks: restored after each transaction
        self.settings: BankView = view.copy()
        self.server = None
        self.transactions = 0
        self.log_id = ""
        self.started = time.monotonic()
        self.task_started = self.started
        self.ended = False

    # -- SessionHandler -------------------------------------------------------
    def session_started(self, client: ClientInfo) -> None:
        self.child._set_title(f"ch{self.child.connections}-idle")

    def transaction_started(self) -> tuple[str, Path]:
        self.transactions += 1
        self.child.tasks += 1
        self.log_id = ids.log_id(os.getpid(), self.child.connections, self.transactions)
        amavis_log.set_task_id(self.log_id)
        if self.transactions > 1:
            self.task_started = time.monotonic()
        self.child._set_title(f"ch{self.child.connections}-{self.log_id}")
        return self.log_id, Path(self.child.tempdir) / "email.txt"

    def client_info_at_mail(self, client: ClientInfo) -> None:
        """Banks by client IP (``@client_ipaddr_policy``: MYNETS from ``@mynetworks``).

        The key is the XFORWARD client address, or 0.0.0.0 when unknown (section 2.2).
        """
        load_client_ip_banks(self.settings, client.addr)

    def state(self, letter: str) -> None:
        self.child.stats.set_state(letter, self.log_id)

    def recipient_size_policy(self, rcpt: Recipient) -> SizePolicy | None:
        """The recipient's ``@message_size_limit_maps`` limit and oversized destiny.

        Asked by the server at RCPT, with the banks of the transaction in force: a
        declared SIZE over the limit gets 552/452/250 by the destiny, and the DATA
        limit is the largest limit whose destiny is not D_PASS (protocols.md 3.6,
        3.7).  None when the recipient has no limit.
        """
        limit = recipient_size_limit(self.settings, rcpt.address)
        if limit is None:
            return None
        return SizePolicy(limit, oversized_destiny(self.settings, rcpt.address))

    def process(self, msg: Message) -> defer.Deferred:
        msg.rx_start = self.task_started
        return defer.maybeDeferred(self.child.pipeline.process, msg, self.settings)

    def transaction_ended(self, msg: Message | None) -> None:
        self.settings = self.baseline.copy()
        if msg is not None:
            self.child.stats.set_state(ST_IDLE, None)
            self.child._set_title(f"ch{self.child.connections}-{self.log_id}-idle")

    def session_ended(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.child.session_closed()


class AmpdpSession:
    """The ``AmpdpHandler`` of one AM.PDP connection (spec/protocols.md section 4)."""

    def __init__(self, child, view: BankView) -> None:
        self.child = child
        self.baseline = view
        self.requests = 0
        self.log_id = ""
        self.tempbase = str(child.config.TEMPBASE or "")
        self.myhome = str(child.config.MYHOME or "")
        conf = child.config
        self.protected = [str(d) for d in (conf.QUARANTINEDIR, conf.db_home) if d]
        self.timeout = float(view.smtpd_timeout or 0)
        self.ended = False
        self.started = time.monotonic()

    def request_started(self, tempdir: str | None) -> str:
        """The log id's prefix comes from the tempdir name when it has one (1.8)."""
        from amavisd.protocols.ampdp import log_id_prefix

        self.requests += 1
        self.child.tasks += 1
        self.started = time.monotonic()
        self.log_id = ids.log_id(os.getpid(), self.child.connections, self.requests)
        prefix = log_id_prefix(tempdir)
        if prefix is not None:
            self.log_id = prefix + self.log_id[len(f"{os.getpid():05d}"):]
        amavis_log.set_task_id(self.log_id)
        self.child._set_title(f"ch{self.child.connections}-{self.log_id}")
        return self.log_id

    def request_view(self, client_addr: str | None, banks: list[str]) -> BankView:
        """originating=1, then client-IP banks, then the request's banks (4.3).

        "Set to 1, then recomputed from the banks": a bank this connection already
        loaded (the socket's, e.g. ``{'originating' => 0}``) keeps its say.
        """
        view = self.baseline.copy()
        view.set("originating", True)
        banks_in_force = self.child.config.policy_bank or {}
        for name in self.baseline.banks:
            bank = banks_in_force.get(name)
            if isinstance(bank, dict) and "originating" in bank:
                view.set("originating", bank["originating"])
        load_client_ip_banks(view, client_addr)
        for bank in banks:
            view.load(bank)                  # unknown banks are silently ignored
        return view

    def process(self, msg: Message, view: BankView) -> defer.Deferred:
        msg.rx_start = self.started
        return defer.maybeDeferred(self.child.pipeline.process, msg, view)

    def pdp_release(self, request) -> defer.Deferred:
        """4.5: a new mail_id and the log id ``rel-<mail_id>``, then actions/release.py.

        The view is this socket's banks with originating set (a release is our own
        submission); ``$auth_required_release`` is read from it.  The counters the
        dispatch noted are flushed here, as the pipeline does once per message.
        """
        from amavisd.actions.release import release

        self.requests += 1
        self.child.tasks += 1
        self.started = time.monotonic()
        mail_id, secret_id = ids.generate_mail_id(self.child.config.mail_id_size_bits)
        self.log_id = f"rel-{mail_id}"
        amavis_log.set_task_id(self.log_id)
        self.child._set_title(f"ch{self.child.connections}-{self.log_id}")
        self.child.stats.set_state(ST_FORWARDING, self.log_id)
        self.child.stats.set_mail_id(mail_id)
        view = self.baseline.copy()
        view.set("originating", True)
        d = defer.maybeDeferred(release, request, view, self.child.config, self.child.reactor,
                                mail_id=mail_id, secret_id=secret_id, log_id=self.log_id,
                                tempdir=self.child.tempdir)

        def flush(result):
            self.child.stats.add_many(stats.drain_pending())
            return result

        return d.addBoth(flush)

    def request_ended(self) -> None:
        self.child.stats.set_state(ST_IDLE, None)
        self.child._set_title(f"ch{self.child.connections}-{self.log_id}-idle")

    def session_ended(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.child.session_closed()
