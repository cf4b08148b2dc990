"""The order of work on one message: the only code that knows it.

Runs in the child, inside its reactor, once DATA is spooled.  Steps (spec/
pipeline.md section 2, as far as the relay path goes): mail_id (and the SQL
``msgs`` row), header facts, checks, ``decide``, quarantine, forward the passed
recipients, turn next-hop failures into CC_MTA, DSN, the final SQL rows, then
counters and the main log line.  SQL logging runs in worker threads
(amavisd/sql/offload.py) and never fails the message.  The SMTP reply is
computed by the protocol from the recipients afterwards; nothing here talks to
the client.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from twisted.internet import defer, threads

from amavisd import decide as decider
from amavisd import ids, msglog
from amavisd import log as amavis_log
from amavisd import stats as stats_mod
from amavisd.actions import dsn, notify, quarantine
from amavisd.actions.addrext import apply_address_extensions
from amavisd.actions.forward import forward
from amavisd.actions.headers import hops_refusal, plan_edits, render_header, split_header
from amavisd.checks import dkim, spam
from amavisd.config.lookup import Lookups
from amavisd.constants import (
    CCAT_DISPLAY_NAMES_MAJOR,
    D_PASS,
    ST_CHECK_DONE,
    ST_CHECKING,
    ST_DECODING,
    ST_FORWARDING,
    ST_MAIL_ID,
    ST_QUARANTINE,
    ST_SPAM,
)
from amavisd.content import conclude, examine
from amavisd.errors import Reply, TempFail
from amavisd.header import header_facts, read_header_block
from amavisd.logline import direction, status_word, timing_report
from amavisd.message import Message
from amavisd.sql import connection as sql_connection
from amavisd.sql import storage
from amavisd.sql.offload import run_blocking

log = logging.getLogger(__name__)


def _failure_text(exc: BaseException) -> str:
    """A failure for the log: a timeout says so, anything else its message."""
    if isinstance(exc, (defer.TimeoutError, defer.CancelledError)):
        return "timed out ($child_timeout)"
    return " ".join(str(exc).split()) or type(exc).__name__


_BULK = re.compile(rb"^Precedence:[ \t]*(bulk|list|junk)\b", re.I | re.M)


@dataclass
class Timing:
    """Section timings of one message, for the TIMING line and TimeElapsed* counters."""

    start: float = field(default_factory=time.monotonic)
    last: float = 0.0
    sections: list[tuple[str, float]] = field(default_factory=list)
    #: TimeElapsed<name> ms measured inside a section (Decoding, VirusCheck, SpamCheck)
    elapsed: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.last = self.start

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.sections.append((name, (now - self.last) * 1000.0))
        self.last = now

    def total_ms(self) -> float:
        return (time.monotonic() - self.start) * 1000.0


class Pipeline:
    """Processes messages for one child; ``stats`` is the child's stats writer."""

    def __init__(self, config, stats, reactor, tempdir: str = "") -> None:
        self.config = config
        self.stats = stats
        self.reactor = reactor
        self.tempdir = tempdir

    def is_local(self, view, address: str) -> bool:
        """``@local_domains_maps`` (pipeline.md section 15), through the bank in force."""
        return bool(Lookups(view).per_recipient("local_domains_maps", address))

    @defer.inlineCallbacks
    def process(self, msg: Message, view):
        """Check, decide, forward; fills every recipient's reply, destiny and done."""
        timing = Timing(start=msg.rx_start or time.monotonic())
        timing.mark("SMTP DATA")
        self.stats.set_state(ST_CHECKING)
        if (view.originating and "MYUSERS" in self.config.policy_bank
                and self.is_local(view, msg.sender)):
            view.load("MYUSERS")                   # pipeline.md 16, selection point 4
        msg.policy_bank_path = view.policy_bank_path
        msg.originating = bool(view.originating)
        self.stats.set_state(ST_MAIL_ID)
        msg.mail_id, msg.secret_id = ids.generate_mail_id(self.config.mail_id_size_bits)
        self.stats.set_mail_id(msg.mail_id)
        msg.findings["partition_tag"] = storage.partition_tag(view, msg)
        sql_deadline = time.time() + float(view.child_timeout)
        sql_db = self._storage()
        store_all = bool(self.config.sql_store_info_for_all_msgs)
        stored = None
        try:
            block = read_header_block(msg.spool_path)
        except OSError as exc:
            raise TempFail("collect_info", str(exc)) from exc
        facts = header_facts(block)
        if msg.client.addr is None and msg.client.mta_addr:
            msg.client.addr = msg.client.mta_addr     # section 3.11: from the top trace entry
        if dkim.enabled(view):          # pipeline.md 24.1; author banks: 16, point 7
            # DNS may be slow: a worker thread, bounded by $dkim_dns_timeout per message
            yield threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                            dkim.verify, msg, view, block, msg.spool_path)
            for bank in dkim.author_policy_banks(msg, view):
                view.load(bank)
            msg.policy_bank_path = view.policy_bank_path
            msg.originating = bool(view.originating)
            timing.mark("dkim")
        dkim.set_sender_credible(msg)       # pipeline.md 4: orig/dkim, for the DSN cutoffs
        timing.mark("collect_info")
        if sql_db is not None and store_all:        # section 23: msgs row, content NULL
            stored = yield self._sql_preliminary(sql_db, msg, view, sql_deadline)
            timing.mark("gen_mail_id")
        self.stats.set_state(ST_DECODING)
        bulk = bool(_BULK.search(block))
        # the spam check needs only the spool file: it runs in a worker thread while
        # this thread decodes and asks the virus scanners, so the message waits for
        # the slower of the two, not their sum (issue: concurrency beyond Perl)
        spam_started = time.monotonic()
        spam_pending = spam.check(msg, view, self.config, reactor=self.reactor,
                                  header_block=block)
        spam_done: list[float] = []

        def spam_stamp(result):
            spam_done.append(time.monotonic())
            return result

        spam_pending.addBoth(spam_stamp)
        try:
            examined = examine(msg, view, self.config, self.tempdir, block, self.stats)
        except BaseException:
            spam_pending.addErrback(lambda _f: None)   # its outcome no longer matters
            raise
        timing.mark("decode+virus")
        self.stats.set_state(ST_SPAM)
        spam_result = yield spam_pending
        if spam_result.performed:
            self.stats.add("OpsSpamCheck")
            timing.elapsed["SpamCheck"] = (spam_done[0] - spam_started) * 1000.0
        timing.elapsed["Decoding"] = examined.decode_ms
        timing.elapsed["VirusCheck"] = examined.virus_ms
        timing.mark("spam_scan")
        conclude(msg, view, examined, bulk, spam_result)
        timing.mark("content_checks")
        self.stats.set_state(ST_QUARANTINE)
        deadline = time.time() + float(view.child_timeout)
        requests = quarantine.select(msg, lambda rcpt: view)
        if sql_db is not None and not store_all and any(not r.is_archive for r in requests):
            stored = yield self._sql_preliminary(sql_db, msg, view, sql_deadline)
            timing.mark("gen_mail_id")
        if requests:           # QuarMsgs* and OutMsgs* are counted in actions/
            yield quarantine.quarantine_async(msg, requests, view, self.reactor, deadline)
        # pipeline.md 19: admin and recipient notices; a 4xx tempfails the message (as Perl)
        yield notify.send(msg, view, self.reactor, is_local=lambda a: self.is_local(view, a),
                          deadline=deadline, stats=self.stats)
        timing.mark("notif-quar")
        self.stats.set_state(ST_FORWARDING)
        yield self._forward(msg, view)
        forwarded = any(r.done == 2 and r.reply is not None and r.reply.is_ok
                        for r in msg.recipients)
        for rcpt in msg.recipients:
            if rcpt.done == 2:
                decider.apply_mta_failure(rcpt, msg.log_id)
        timing.mark("forwarding")
        dsn_plan = dsn.plan(msg, view, per_recipient_capable=msg.lmtp)
        if dsn_plan.needed:
            yield dsn.send(msg, view, self.reactor, per_recipient_capable=msg.lmtp,
                           deadline=deadline, forwarded_any=forwarded,
                           is_local=lambda a: self.is_local(view, a))
            timing.mark("DSN")
        elif dsn_plan.suppressed:                 # protocols.md 3.8: bounce.suppressed
            msg.findings["dsn_sent"] = 2
            for rcpt, _why in dsn_plan.suppressed:
                rcpt.dsn_suppressed = True
        if stored is not None:
            yield self._sql_final(sql_db, msg, view, stored, block, sql_deadline)
            timing.mark("sql-update")
        self._count(msg, view, timing)
        self.stats.set_state(ST_CHECK_DONE)
        # main log entries ($log_templ), the JSON event and Redis: amavisd/msglog.py
        amavis_log.apply_bank(view)         # $log_level, $syslog_ident/facility of the bank
        msglog.log_message(self.config, msg, view, block, facts,
                           [self.is_local(view, r.address) for r in msg.recipients],
                           timing.total_ms, msglog.elapsed_sections(
                               timing.sections, timing.elapsed, timing.total_ms()), stored)
        if logging.getLogger().isEnabledFor(amavis_log.py_level(2)):
            timing.mark("rundown")          # monitoring.md 5.4: always the last section
            amavis_log.do_log(2, "%s", timing_report(
                msg.size, timing.sections, sum(ms for _, ms in timing.sections)))
        amavis_log.restore_base()

    def _storage(self) -> sql_connection.Database | None:
        """This child's ``@storage_sql_dsn`` connection, or None (unset, or an unusable DSN)."""
        try:
            return sql_connection.database(self.config, "storage")
        except sql_connection.SQLConfigError as exc:
            log.error("SQL storage disabled: %s", exc)
            return None

    @defer.inlineCallbacks
    def _sql_preliminary(self, db, msg: Message, view, deadline: float):
        """maddr ids and the msgs row (section 23), in a worker thread (sql/offload.py).

        None if nothing was stored: the failure is logged and the message goes on
        (docs/differences.md).  A mail_id collision gives the message a new id.
        """
        keys = storage.address_keys(view, msg)
        try:
            stored = yield run_blocking(self.reactor, deadline, storage.save_info_preliminary,
                                        db, view, msg, keys, msg.findings["partition_tag"])
        except Exception as exc:  # noqa: BLE001 - timeout or bug: logging must not cost mail
            log.error("SQL storage: save_info_preliminary %s failed, message not logged: %s",
                      msg.mail_id, _failure_text(exc))
            return None
        if stored is not None and stored.mail_id != msg.mail_id:
            msg.mail_id, msg.secret_id = stored.mail_id, stored.secret_id
            self.stats.set_mail_id(msg.mail_id)
        return stored

    @defer.inlineCallbacks
    def _sql_final(self, db, msg: Message, view, stored, block: bytes, deadline: float):
        """msgrcpt rows and the msgs update (section 23); a failure is only logged."""
        try:
            local = [self.is_local(view, r.address) for r in msg.recipients]
            where = quarantine.log_locations(msg, view)
            rows = storage.final_rows(view, msg, stored, block, local, where[0] if where else None)
            yield run_blocking(self.reactor, deadline, storage.save_info_final, db, view, rows,
                               stored.mail_id)
        except Exception as exc:  # noqa: BLE001 - past the point of no return: log only
            log.error("SQL storage: save_info_final %s failed, info not saved: %s",
                      msg.mail_id, _failure_text(exc))

    def delivery_method(self, view, address: str):
        """pipeline.md section 2 step 28: ``@forward_method_maps`` per recipient (an SQL
        ``policy.forward_method`` is in front of them), else ``$forward_method``."""
        if not getattr(view, "forward_method_maps", None):
            return view.forward_method
        found = Lookups(view).per_recipient("forward_method_maps", address)
        return found if found not in (None, "") else view.forward_method

    def _forward(self, msg: Message, view):
        """Per header-edit cluster (pipeline.md 20.10), one transaction per delivery method.

        Each cluster gets its own header section (actions/headers.py); the body is
        streamed from the spool file after the original header.  The categories
        and findings the edits depend on are the recipients' ``ccats`` and
        ``msg.findings`` as decide and the checks left them.
        """
        passed = []
        client_delivers = False
        for rcpt in msg.recipients:
            if rcpt.done or rcpt.destiny != D_PASS:
                continue
            rcpt.delivery_method = self.delivery_method(view, rcpt.address)
            if not rcpt.delivery_method:  # the AM.PDP client delivers (section 5.1)
                rcpt.reply = Reply(250, "2.5.0", f"Ok, id={msg.log_id}, continue delivery")
                client_delivers = True
                continue
            passed.append(rcpt)
        if client_delivers:   # pipeline.md 24.3: its copy is signed too, for the response
            from amavisd.actions.dkim_sign import sign_for_client

            sign_for_client(msg, view)
        if not passed:
            return defer.succeed(None)
        try:
            split = split_header(msg.spool_path)
        except OSError as exc:
            raise TempFail("forwarding", str(exc)) from exc
        apply_address_extensions(passed, view)      # pipeline.md 20.9
        refusal = hops_refusal(split.block, msg.log_id)
        calls = []
        deadline = time.time() + float(view.child_timeout)
        for cluster in plan_edits(msg, passed, view, msg.findings, msg.rx_time, split.block):
            if refusal is not None:       # RFC 5321 6.3 loop detection (pipeline.md 20.1)
                amavis_log.do_log(-1, "Too many hops: %s", refusal.text)
                for rcpt in cluster.recipients:
                    rcpt.reply, rcpt.done = refusal, 2
                continue
            for rcpt in cluster.recipients:
                rcpt.tagged = cluster.tagged      # amavis's recip_tagged: RelayedTagged
            header = render_header(split.block, cluster.edit, complete=split.complete)
            groups: OrderedDict[str, list] = OrderedDict()
            methods: dict[str, object] = {}
            for rcpt in cluster.recipients:
                key = repr(rcpt.delivery_method)
                groups.setdefault(key, []).append(rcpt)
                methods[key] = rcpt.delivery_method
            for key, rcpts in groups.items():
                calls.append(forward(msg, rcpts, methods[key], header, split.body_offset, view,
                                     self.reactor, per_recipient_capable=msg.lmtp,
                                     deadline=deadline))
        return defer.gatherResults(calls, consumeErrors=True) if calls else defer.succeed(None)

    def _count(self, msg: Message, view, timing: Timing) -> None:
        """The per-message counter flush (monitoring.md section 1.3), one ``add_many``.

        Besides the counters decided here it carries what the actions, the decoders
        (``stats.count``) and the log handlers (``log.drain_log_counts``) noted
        since the previous flush.
        """
        counts = stats_mod.drain_pending()

        def add(name: str, n: int = 1) -> None:
            counts[name] = counts.get(name, 0) + n

        nrcpt = len(msg.recipients)
        local = [self.is_local(view, r.address) for r in msg.recipients]
        dirs = []
        if any(local):
            dirs.append(direction(True, msg.originating))
        if not all(local):
            dirs.append(direction(False, msg.originating))
        add("InMsgs")
        add("InMsgsRecips", nrcpt)
        add("InMsgsSize", msg.size)
        if msg.sender == "":
            add("InMsgsBounceNullRPath")
        if msg.originating:
            add("InMsgsOriginating")
            add("InMsgsRecipsOriginating", nrcpt)
            add("InMsgsSizeOriginating", msg.size)
        nlocal = sum(local)
        for d in dirs:
            add(f"InMsgs{d}")
            add(f"InMsgsSize{d}", msg.size)
            add(f"InMsgsRecips{d}", nlocal if d in ("Inbound", "Internal") else nrcpt - nlocal)
        if nlocal:
            add("InMsgsRecipsLocal", nlocal)
        ccat = msg.findings.get("ccat_main", "1")
        blocking = [r.ccat_blocking for r in msg.recipients if r.ccat_blocking]
        if blocking:
            ccat = max(blocking, key=lambda c: tuple(int(x) for x in c.split(",")))
        name = CCAT_DISPLAY_NAMES_MAJOR[int(ccat.split(",")[0])]
        add(f"Content{name}Msgs")
        for d in dirs:
            add(f"Content{name}Msgs{d}")
        statuses = []
        for rcpt, is_local in zip(msg.recipients, local, strict=True):
            word = status_word(rcpt)
            if word == "Relayed":
                word = "RelayedUntagged"
            if (word, is_local) not in statuses:
                statuses.append((word, is_local))
        seen = set()
        for word, is_local in statuses:
            if word not in seen:
                add(f"InMsgsStatus{word}")
                seen.add(word)
            add(f"InMsgsStatus{word}{direction(is_local, msg.originating)}")
        if "RelayedUntagged" in seen or "RelayedTagged" in seen:
            add("InMsgsStatusRelayed")
        sections = dict(timing.sections)
        elapsed = dict(timing.elapsed)
        elapsed["Receiving"] = sections.get("SMTP DATA", 0.0)
        elapsed["Sending"] = sum(sections.get(x, 0.0) for x in ("notif-quar", "forwarding",
                                                                  "DSN"))
        elapsed["Total"] = timing.total_ms()
        for section, ms in elapsed.items():
            add(f"TimeElapsed{section}", int(ms))
        for key, n in amavis_log.drain_log_counts().items():
            add(key, n)
        self.stats.add_many(counts)
