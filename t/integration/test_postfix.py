# tests: the three MTA topologies end to end with a real Postfix (Debian's postfix package)
"""A private Postfix (t/helpers/postfix.py) in front of our daemon, one per topology
(spec/protocols.md 3.8, 4.6, 6, 8; docs/postfix.md shows the same snippets):

* after-queue: ``content_filter = smtp-amavis:[127.0.0.1]:P``, our daemon forwards to a
  re-injection smtpd, Postfix delivers to the sink;
* before-queue: the public smtpd proxies each message to our daemon
  (``smtpd_proxy_filter``, ``speed_adjust``) and passes our reply to the client;
* milter: ``smtpd_milters`` -> Debian's amavisd-milter -> our AM.PDP socket.

What is asserted is what a client, the sink and the admin see: the client's replies
(our 5xx inside the session, a 4xx while we are down), the bytes at the sink (our
Received field, X-Virus-Scanned), Postfix's log lines and ``postqueue -p`` (mail stays
deferred while we are down and is delivered once we are back), and our main log line
(with Postfix's queue id, passed to us by XFORWARD or the milter).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from t.helpers import postfix as pf
from t.helpers.daemon import Daemon, free_port, start_daemon
from t.integration.conftest import base_config, message, wait_for
from t.integration.test_ampdp import EXE
from t.integration.test_golden import PROFILE_PASS
from t.integration.test_milter import NOBODY, NOGROUP, private_folder
from t.sink import Sink, SinkMessage

pytestmark = pytest.mark.skipif(pf.unavailable() is not None,
                                reason=pf.unavailable() or "")

REPO = Path(__file__).resolve().parents[2]
X_LINE = "Debian amavis at anchor.test"
BANNED = "application/octet-stream,.exe,.exe-ms,evil.exe"
LOG_ID = r"\d+-\d\d"
MAIL_ID = r"[A-Za-z0-9_-]{12}"
QID = pf.QUEUE_ID
#: the test's own additions to the anchor's profile pass and a topology's amavisd.conf
#: lines: X-Virus-Scanned on passed mail (virus checks not bypassed, no scanner), and in
#: after-queue mode bob gets Debian's D_DISCARD for banned mail, dave D_BOUNCE, erin D_REJECT
CHECKED = "bypass_virus_checks_maps = []\n"
AFTER_DESTINIES = """final_destiny_maps_by_ccat = {'8': [{'dave@anchor.test': D_BOUNCE,
                                     'erin@anchor.test': D_REJECT}, D_DISCARD]}
"""


# ------------------------------------------------------------------ the setups
@dataclass
class Setup:
    """One topology: sink, Postfix, our daemon (restartable), maybe the milter."""

    root: Path
    sink: Sink
    amavis_port: int
    reinject_port: int
    config: str
    postfix: pf.Postfix | None = None
    daemon: Daemon | None = None
    milter: subprocess.Popen | None = None
    checked: str = ""
    extra: dict = field(default_factory=dict)

    def start_daemon(self) -> Daemon:
        self.daemon = start_daemon(self.config, self.root / "amavisd")
        if self.milter is not None or "milter_port" in self.extra:
            os.chmod(self.tempbase, 0o750)   # amavisd-milter refuses a world-accessible one
        return self.daemon

    @property
    def tempbase(self) -> Path:
        return self.root / "amavisd" / "home" / "tmp"

    def our_log(self) -> str:
        return self.daemon.logfile_text() if self.daemon else ""

    def our_line(self, pattern: str) -> re.Match:
        """Our main log line matching `pattern` (waits for it)."""
        rx = re.compile(pattern, re.M)
        return wait_for(lambda: rx.search(self.our_log()), 15, f"our log line {pattern!r}")

    def arrived(self, message_id: str) -> list[SinkMessage]:
        """The copies of the message at the sink (not DSNs that quote it)."""
        tag = f"Message-ID: <{message_id}>".encode()
        return [m for m in self.sink.messages
                if tag in m.data and not m.mail.startswith(b"MAIL FROM:<>")]


def submit(port: int, data: bytes, rcpts: list[str], sender: str = "alice@anchor.test",
           ) -> tuple[int, str]:
    """One SMTP transaction with Postfix's public port; the reply to the data."""
    with smtplib.SMTP("127.0.0.1", port, "client.anchor.test", timeout=60) as smtp:
        smtp.ehlo()
        code, text = smtp.mail(sender)
        assert code == 250, text
        for rcpt in rcpts:
            code, text = smtp.rcpt(rcpt)
            assert code == 250, text
        code, text = smtp.data(data)
    return code, text.decode("utf-8", "replace")


def clean(tag: str, to: str = "bob@anchor.test") -> bytes:
    return message(tag).replace(b"To: Bob <bob@anchor.test>", f"To: <{to}>".encode())


def banned(tag: str) -> bytes:
    return EXE.replace(b"<evil@anchor.test>", f"<{tag}@anchor.test>".encode())


def stop_milter(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_milter(setup: Setup, port: int) -> subprocess.Popen:
    """Debian's amavisd-milter in the foreground as the daemon user (nobody), on the
    TCP socket the milter snippet names, with the arguments docs/postfix.md shows."""
    folder = setup.root / "milter"
    folder.mkdir(exist_ok=True)
    shutil.chown(folder, NOBODY, NOGROUP)
    args = pf.milter_args(port, str(setup.root / "amavisd" / "home" / "amavisd.sock"),
                          str(setup.tempbase))
    argv = [pf.AMAVISD_MILTER, "-f", "-p", str(folder / "milter.pid"), *args]
    with open(setup.root / "milter.log", "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd="/", user=NOBODY,
                                group=NOGROUP, extra_groups=[])
    try:
        wait_for(lambda: proc.poll() is not None or port_open(port), 10, "the milter port")
    except AssertionError:
        stop_milter(proc)
        raise
    if proc.poll() is not None:
        raise AssertionError("amavisd-milter exited: "
                             + (setup.root / "milter.log").read_text(errors="replace"))
    return proc


def port_open(port: int) -> bool:
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), 1):
            return True
    except OSError:
        return False


def topology(kind: str) -> Iterator[Setup]:
    """Sink, our daemon (and milter), then Postfix; torn down in reverse order."""
    root = private_folder(f"postfix-{kind}-")
    amavis_port, reinject_port = free_port(), free_port()
    try:
        with Sink() as sink:
            forward = f"smtp:[127.0.0.1]:{reinject_port}"
            public = milter_port = None
            if kind == "after":
                snippet = pf.after_queue(amavis_port, reinject_port)
            elif kind == "before":
                public = free_port()
                snippet = pf.before_queue(f"127.0.0.1:{public}", amavis_port, reinject_port)
            else:
                milter_port = free_port()
                snippet = pf.milter(milter_port, reinject_port, socket_path=str(
                    root / "amavisd" / "home" / "amavisd.sock"))
            # the admin's lines (docs/postfix.md) come after the profile, as in a real file
            extra = PROFILE_PASS + snippet.amavisd + CHECKED \
                + (AFTER_DESTINIES if kind == "after" else "")
            setup = Setup(root, sink, amavis_port, reinject_port,
                          base_config(root / "amavisd", amavis_port, forward, extra))
            if kind == "milter":
                setup.extra["milter_port"] = milter_port
            setup.start_daemon()
            try:
                if kind == "milter":
                    setup.milter = start_milter(setup, milter_port)
                setup.postfix = pf.Postfix(root / "postfix", sink.port, snippet,
                                           smtp_port=public)
                setup.postfix.start()
                setup.checked = setup.postfix.check()
                yield setup
            finally:
                if setup.postfix:
                    setup.postfix.stop()
                stop_milter(setup.milter)
                if setup.daemon:
                    setup.daemon.stop()
    finally:
        if os.environ.get("AMAVISD_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def after() -> Iterator[Setup]:
    yield from topology("after")


@pytest.fixture(scope="module")
def before() -> Iterator[Setup]:
    yield from topology("before")


@pytest.fixture(scope="module")
def milter() -> Iterator[Setup]:
    yield from topology("milter")


# ------------------------------------------------------------------ the instance itself
def test_private_instance_passes_postfix_check_and_stops_cleanly(tmp_path):
    """``postfix check`` has nothing to say about the private config, the instance
    never touches the system one, and ``stop()`` leaves no process behind."""
    with Sink() as sink:
        instance = pf.Postfix(tmp_path / "postfix", sink.port)
        system_pid = Path("/var/spool/postfix/pid/master.pid")
        had_system_pid = system_pid.exists()
        with instance:
            assert instance.check() == ""
            pids = instance.pids()
            assert instance.master_pid() in pids and len(pids) >= 3   # master, qmgr, ...
            assert instance.postconf_value("inet_interfaces") == "loopback-only"
            assert instance.postconf_value("queue_directory") == str(tmp_path / "postfix"
                                                                     / "spool")
            assert instance.postconf_value("multi_instance_name") == pf.INSTANCE
            assert instance.queue().strip() == "Mail queue is empty"
        assert instance.pids() == []
        assert instance.master_pid() is None
        assert system_pid.exists() == had_system_pid
        assert " daemon started -- version " in instance.log_text()
        assert f"configuration {tmp_path / 'postfix' / 'etc'}" in instance.log_text()
        assert "stopping the Postfix mail system" in instance.log_text()


def test_each_topology_passes_postfix_check(after, before, milter):
    assert (after.checked, before.checked, milter.checked) == ("", "", "")


def test_docs_show_the_snippets_the_tests_run():
    """docs/postfix.md shows each snippet exactly as t/helpers/postfix.py renders it for
    the ports 10024/10025 (the tests render the same functions with free ports)."""
    doc = (REPO / "docs" / "postfix.md").read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", doc, re.S)
    for name, text in pf.doc_snippets().items():
        assert text in blocks, f"docs/postfix.md lacks the {name} snippet:\n{text}"


# ------------------------------------------------------------------ after-queue
def test_after_queue_clean_mail_passes_through_amavisd(after):
    code, text = submit(after.postfix.smtp_port, clean("aq-clean"), ["bob@anchor.test"])
    assert code == 250
    qid = re.fullmatch(rf"2\.0\.0 Ok: queued as ({QID})", text).group(1)
    got = wait_for(lambda: after.arrived("aq-clean@anchor.test"), 15, "the delivery")
    assert len(got) == 1
    msg = got[0]
    assert msg.mail.startswith(b"MAIL FROM:<alice@anchor.test>")
    assert msg.rcpts[0].startswith(b"RCPT TO:<bob@anchor.test>")
    # top down: the re-injection smtpd, our fields, the public smtpd that queued it
    head = msg.data.split(b"\r\n\r\n", 1)[0].decode()
    fields = re.split(r"\r\n(?![ \t])", head)
    assert re.fullmatch(rf"Received: from localhost \(unknown \[127\.0\.0\.1\]\)\r\n"
                        rf"\tby {re.escape(pf.HOSTNAME)} \(Postfix\) with ESMTP id "
                        rf"(?P<qid2>{QID})\r\n\tfor <bob@anchor\.test>; .*", fields[0])
    qid2 = re.search(rf"with ESMTP id ({QID})", fields[0]).group(1)
    assert fields[1] == f"X-Virus-Scanned: {X_LINE}"
    ours = re.fullmatch(rf"Received: from {re.escape(pf.HOSTNAME)} \(\[127\.0\.0\.1\]\)\r\n"
                        rf" by localhost \(mx\.anchor\.test \[127\.0\.0\.1\]\) \(amavis, "
                        rf"port {after.amavis_port}\) with ESMTP\r\n id ({MAIL_ID}) for "
                        r"<bob@anchor\.test>; .*", fields[2])
    assert ours, fields[2]
    assert f"with ESMTP id {qid}\r\n" in fields[3]
    # Postfix: queued, fed to us, our reply, re-injected (XFORWARD kept the origin), sent
    log = after.postfix
    log.wait_log(rf"/amavis/smtp\[\d+\]: {qid}: to=<bob@anchor\.test>, relay=127\.0\.0\.1"
                 rf"\[127\.0\.0\.1\]:{after.amavis_port}, .* dsn=2\.0\.0, status=sent \(250 "
                 rf"2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:{after.reinject_port}\): 250 "
                 rf"2\.0\.0 Ok: queued as {qid2}\)$")
    log.wait_log(rf"/reinject/smtpd\[\d+\]: {qid2}: client=unknown\[127\.0\.0\.1\], "
                 rf"orig_queue_id={qid}, orig_client=unknown\[127\.0\.0\.1\]$")
    log.wait_log(rf"/smtp\[\d+\]: {qid2}: to=<bob@anchor\.test>, relay=127\.0\.0\.1"
                 rf"\[127\.0\.0\.1\]:{after.sink.port}, .* status=sent ")
    # our log line carries Postfix's queue id (XFORWARD IDENT) and the re-injected one
    after.our_line(rf"\({LOG_ID}\) Passed CLEAN \{{RelayedInbound\}}, \[127\.0\.0\.1\]:\d+ "
                   rf"<alice@anchor\.test> -> <bob@anchor\.test>, Queue-ID: {qid}, "
                   rf"Message-ID: <aq-clean@anchor\.test>, mail_id: {ours.group(1)}, "
                   rf"Hits: -, size: \d+, queued_as: {qid2}, \d+ ms$")


def test_after_queue_banned_mail_is_discarded(after):
    """Debian's D_DISCARD: we answer 250 (Postfix logs it as sent), nothing arrives."""
    code, text = submit(after.postfix.smtp_port, banned("aq-discard"), ["bob@anchor.test"])
    assert code == 250
    qid = text.rsplit(" ", 1)[1]
    line = after.our_line(rf"\(({LOG_ID})\) Blocked BANNED \({re.escape(BANNED)}\) "
                          r"\{DiscardedInbound,Quarantined\}, \[127\.0\.0\.1\]:\d+ "
                          rf"<alice@anchor\.test> -> <bob@anchor\.test>, quarantine: \S+, "
                          rf"Queue-ID: {qid}, Message-ID: <aq-discard@anchor\.test>")
    after.postfix.wait_log(
        rf"/amavis/smtp\[\d+\]: {qid}: to=<bob@anchor\.test>, relay=127\.0\.0\.1\[127\.0\.0"
        rf"\.1\]:{after.amavis_port}, .* dsn=2\.7\.0, status=sent \(250 2\.7\.0 Ok, "
        rf"discarded, id={line.group(1)} - BANNED: {re.escape(BANNED)}\)$")
    after.postfix.wait_log(rf"qmgr\[\d+\]: {qid}: removed")
    assert after.arrived("aq-discard@anchor.test") == []
    assert qid not in after.postfix.queue()


def test_after_queue_banned_mail_is_bounced_by_us(after):
    """D_BOUNCE: we answer 250 and send the DSN through the re-injection port."""
    code, text = submit(after.postfix.smtp_port, banned("aq-bounce"), ["dave@anchor.test"])
    assert code == 250
    qid = text.rsplit(" ", 1)[1]
    line = after.our_line(rf"\(({LOG_ID})\) Blocked BANNED \({re.escape(BANNED)}\) "
                          r"\{BouncedInbound,Quarantined\}, \[127\.0\.0\.1\]:\d+ "
                          rf"<alice@anchor\.test> -> <dave@anchor\.test>, quarantine: \S+, "
                          rf"Queue-ID: {qid}, Message-ID: <aq-bounce@anchor\.test>")
    after.postfix.wait_log(
        rf"/amavis/smtp\[\d+\]: {qid}: to=<dave@anchor\.test>, relay=127\.0\.0\.1\[127\.0\.0"
        rf"\.1\]:{after.amavis_port}, .* dsn=2\.\d\.\d, status=sent \(250 2\.\d\.\d ")
    dsn = wait_for(lambda: [m for m in after.sink.messages if m.mail.startswith(b"MAIL FROM:<>")
                            and b"aq-bounce@anchor.test" in m.data], 15, "our DSN")
    assert len(dsn) == 1
    assert dsn[0].rcpts[0].startswith(b"RCPT TO:<alice@anchor.test>")
    assert b"report-type=delivery-status" in dsn[0].data
    assert b"Final-Recipient: rfc822;dave@anchor.test" in dsn[0].data
    assert f"Bounce, id={line.group(1)} - BANNED:".encode() in dsn[0].data
    # the DSN came in through the re-injection listener (no second pass through us)
    dsn_qid = re.search(rf"with ESMTP id ({QID})", dsn[0].data.decode()).group(1)
    after.postfix.wait_log(rf"/reinject/smtpd\[\d+\]: {dsn_qid}: client=")
    assert after.arrived("aq-bounce@anchor.test") == []


def test_after_queue_rejected_mail_is_bounced_by_postfix(after):
    """D_REJECT after the queue: our 554 goes to Postfix, which bounces to the sender
    with our text (the discouraged setting: the bounce may go to a forged sender)."""
    code, text = submit(after.postfix.smtp_port, banned("aq-reject"), ["erin@anchor.test"])
    assert code == 250                      # the client was long gone when we decided
    qid = text.rsplit(" ", 1)[1]
    line = after.our_line(rf"\(({LOG_ID})\) Blocked BANNED \({re.escape(BANNED)}\) "
                          r"\{RejectedInbound,Quarantined\}, \[127\.0\.0\.1\]:\d+ "
                          rf"<alice@anchor\.test> -> <erin@anchor\.test>, .*Queue-ID: {qid}")
    reply = f"554 5.7.0 Reject, id={line.group(1)} - BANNED: {BANNED}"
    after.postfix.wait_log(
        rf"/amavis/smtp\[\d+\]: {qid}: to=<erin@anchor\.test>, relay=127\.0\.0\.1\[127\.0\.0"
        rf"\.1\]:{after.amavis_port}, .* dsn=5\.7\.0, status=bounced \(host 127\.0\.0\.1"
        rf"\[127\.0\.0\.1\] said: {re.escape(reply)} \(in reply to end of DATA command\)\)$")
    bounce = wait_for(lambda: [m for m in after.sink.messages
                               if m.mail.startswith(b"MAIL FROM:<>")
                               and b"aq-reject@anchor.test" in m.data], 15, "the bounce")
    assert bounce[0].rcpts[0].startswith(b"RCPT TO:<alice@anchor.test>")
    assert f"From: Mail Delivery System <MAILER-DAEMON@{pf.HOSTNAME}>".encode() \
        in bounce[0].data
    assert reply.encode() in bounce[0].data.replace(b"\r\n    ", b" ")
    assert after.arrived("aq-reject@anchor.test") == []


def test_after_queue_mail_waits_in_the_queue_while_amavisd_is_down(after):
    """Nothing is lost: Postfix accepts, defers (mailq shows why), and delivers the
    message exactly once after we are back and the queue is flushed."""
    after.daemon.stop()
    try:
        code, text = submit(after.postfix.smtp_port, clean("aq-down"), ["bob@anchor.test"])
        assert code == 250                  # the client does not notice
        qid = text.rsplit(" ", 1)[1]
        refused = rf"connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{after.amavis_port}: " \
            r"Connection refused"
        after.postfix.wait_log(rf"/amavis/smtp\[\d+\]: {qid}: to=<bob@anchor\.test>, "
                               rf"relay=none, .* status=deferred \({refused}\)$")
        queue = after.postfix.queue()
        assert re.search(rf"^{qid}[*]?\s+\d+ .+ alice@anchor\.test\n\s*\({refused}\)\n"
                         r"\s+bob@anchor\.test$", queue, re.M), queue
        assert after.arrived("aq-down@anchor.test") == []
        # still there after a few retries (queue_run_delay and backoff are 1-2 s here)
        start = len(after.postfix.log_text())
        after.postfix.wait_log(rf"{qid}: .*status=deferred", start=start)
        assert after.postfix.queue_ids() == [qid]
    finally:
        after.start_daemon()
    after.postfix.flush()
    got = wait_for(lambda: after.arrived("aq-down@anchor.test"), 15, "the deferred mail")
    after.postfix.wait_log(rf"/amavis/smtp\[\d+\]: {qid}: to=<bob@anchor\.test>, "
                           rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{after.amavis_port}, .* "
                           r"status=sent \(250 2\.0\.0 from MTA")
    after.postfix.wait_log(rf"qmgr\[\d+\]: {qid}: removed")
    assert len(got) == 1 and len(after.arrived("aq-down@anchor.test")) == 1
    assert after.postfix.queue().strip() == "Mail queue is empty"


# ------------------------------------------------------------------ before-queue
def test_before_queue_client_gets_our_reply(before):
    code, text = submit(before.postfix.smtp_port, clean("bq-clean"), ["bob@anchor.test"])
    assert code == 250
    qid = re.fullmatch(rf"2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:{before.reinject_port}\): "
                       rf"250 2\.0\.0 Ok: queued as ({QID})", text).group(1)
    got = wait_for(lambda: before.arrived("bq-clean@anchor.test"), 15, "the delivery")
    head = got[0].data.split(b"\r\n\r\n", 1)[0].decode()
    fields = re.split(r"\r\n(?![ \t])", head)
    assert f"with ESMTP id {qid}\r\n" in fields[0]
    assert fields[1] == f"X-Virus-Scanned: {X_LINE}"
    assert re.fullmatch(rf"Received: from {re.escape(pf.HOSTNAME)} \(\[127\.0\.0\.1\]\)\r\n"
                        rf" by localhost \(mx\.anchor\.test \[127\.0\.0\.1\]\) \(amavis, "
                        rf"port {before.amavis_port}\) with ESMTP\r\n id {MAIL_ID} for "
                        r"<bob@anchor\.test>; .*", fields[2]), fields[2]
    # the public smtpd never queued it itself: no queue id, only the proxy's verdict
    assert re.match(r"Received: from client\.anchor\.test \(unknown \[127\.0\.0\.1\]\)\r\n"
                    rf"\tby {re.escape(pf.HOSTNAME)} \(Postfix\) with ESMTP\r\n", fields[3])
    before.postfix.wait_log(r"smtpd\[\d+\]: proxy-accept: END-OF-MESSAGE: "
                            + re.escape("250 " + text) + "; from=<alice@anchor.test> "
                            "to=<bob@anchor.test> proto=ESMTP helo=<client.anchor.test>$")
    before.our_line(r"Passed CLEAN \{RelayedInbound\}, \[127\.0\.0\.1\]:\d+ <alice@anchor"
                    r"\.test> -> <bob@anchor\.test>, Message-ID: <bq-clean@anchor\.test>, "
                    rf"mail_id: {MAIL_ID}, Hits: -, size: \d+, queued_as: {qid}, \d+ ms$")


def test_before_queue_banned_mail_is_rejected_in_the_session(before):
    code, text = submit(before.postfix.smtp_port, banned("bq-banned"), ["bob@anchor.test"])
    line = before.our_line(rf"\(({LOG_ID})\) Blocked BANNED \({re.escape(BANNED)}\) "
                           r"\{RejectedInbound,Quarantined\}, \[127\.0\.0\.1\]:\d+ "
                           r"<alice@anchor\.test> -> <bob@anchor\.test>, quarantine: \S+, "
                           r"Message-ID: <bq-banned@anchor\.test>")
    assert (code, text) == (554, f"5.7.0 Reject, id={line.group(1)} - BANNED: {BANNED}")
    before.postfix.wait_log(r"smtpd\[\d+\]: proxy-reject: END-OF-MESSAGE: 554 "
                            + re.escape(text) + "; from=<alice@anchor.test> ")
    assert before.arrived("bq-banned@anchor.test") == []
    assert before.postfix.queue().strip() == "Mail queue is empty"


def test_before_queue_client_gets_4xx_while_amavisd_is_down(before):
    """The client keeps the message and retries; Postfix tells the postmaster."""
    before.daemon.stop()
    try:
        code, text = submit(before.postfix.smtp_port, clean("bq-down"), ["bob@anchor.test"])
        assert (code, text) == (451, "4.3.0 Error: queue file write error")
        before.postfix.wait_log(rf"smtpd\[\d+\]: warning: connect to proxy filter "
                                rf"127\.0\.0\.1:{before.amavis_port}: Connection refused$")
        before.postfix.wait_log(r"smtpd\[\d+\]: proxy-reject: END-OF-MESSAGE: 451 4\.3\.0 "
                                r"Error: queue file write error; from=<alice@anchor\.test> ")
        notice = wait_for(lambda: [m for m in before.sink.messages
                                   if b"Subject: Postfix SMTP server: errors from" in m.data],
                          15, "Postfix's notice to the postmaster")
        assert notice[0].rcpts[0].startswith(b"RCPT TO:<postmaster@")
        assert b"Out: 451 4.3.0 Error: queue file write error" in notice[0].data
        assert before.arrived("bq-down@anchor.test") == []
    finally:
        before.start_daemon()
    code, text = submit(before.postfix.smtp_port, clean("bq-back"), ["bob@anchor.test"])
    assert code == 250 and text.startswith("2.0.0 from MTA("), text
    wait_for(lambda: before.arrived("bq-back@anchor.test"), 15, "the delivery")


# ------------------------------------------------------------------ milter
def test_milter_clean_mail_gets_our_header(milter):
    code, text = submit(milter.postfix.smtp_port, clean("mi-clean"), ["bob@anchor.test"])
    assert code == 250
    qid = re.fullmatch(rf"2\.0\.0 Ok: queued as ({QID})", text).group(1)
    got = wait_for(lambda: milter.arrived("mi-clean@anchor.test"), 15, "the delivery")
    head = got[0].data.split(b"\r\n\r\n", 1)[0].decode()
    fields = re.split(r"\r\n(?![ \t])", head)
    # inserted on top (index 0); no Received of ours: Postfix delivers, not us
    assert fields[0] == f"X-Virus-Scanned: {X_LINE}"
    assert f"with ESMTP id {qid}\r\n" in fields[1]
    assert "(amavis, port" not in head
    milter.our_line(r"Passed CLEAN \{RelayedInternal\}, AM\.PDP-SOCK LOCAL \[127\.0\.0\.1\] "
                    rf"<alice@anchor\.test> -> <bob@anchor\.test>, Queue-ID: {qid}, "
                    r"Message-ID: <mi-clean@anchor\.test>, ")
    assert not any(m.mail.startswith(b"MAIL FROM:<>") for m in milter.sink.messages)


def test_milter_banned_mail_is_rejected_in_the_session(milter):
    code, text = submit(milter.postfix.smtp_port, banned("mi-banned"), ["bob@anchor.test"])
    line = milter.our_line(rf"\(({LOG_ID})\) Blocked BANNED \({re.escape(BANNED)}\) "
                           r"\{RejectedInternal,Quarantined\}, AM\.PDP-SOCK LOCAL "
                           r"\[127\.0\.0\.1\] <alice@anchor\.test> -> <bob@anchor\.test>, "
                           rf"quarantine: \S+, Queue-ID: ({QID}), "
                           r"Message-ID: <mi-banned@anchor\.test>")
    assert (code, text) == (554, f"5.7.0 Reject, id={line.group(1)} - BANNED: {BANNED}")
    milter.postfix.wait_log(rf"cleanup\[\d+\]: {line.group(2)}: milter-reject: END-OF-MESSAGE "
                            rf"from unknown\[127\.0\.0\.1\]: {re.escape(text)}; ")
    assert milter.arrived("mi-banned@anchor.test") == []
    assert milter.postfix.queue().strip() == "Mail queue is empty"


def test_milter_down_is_postfix_tempfail(tmp_path):
    """The milter snippet with nothing on the milter port: ``milter_default_action =
    tempfail`` refuses mail with a 4xx instead of letting it through unchecked."""
    with Sink() as sink:
        port = free_port()
        with pf.Postfix(tmp_path / "postfix", sink.port, pf.milter(port, free_port())) as mta:
            with smtplib.SMTP("127.0.0.1", mta.smtp_port, "client.anchor.test",
                              timeout=30) as smtp:
                smtp.ehlo()
                code, text = smtp.mail("alice@anchor.test")
            assert (code, text) == (451, b"4.7.1 Service unavailable - try again later")
            mta.wait_log(rf"smtpd\[\d+\]: warning: connect to Milter service "
                         rf"inet:127\.0\.0\.1:{port}: Connection refused$")
            mta.wait_log(r"NOQUEUE: milter-reject: CONNECT from unknown\[127\.0\.0\.1\]: "
                         r"451 4\.7\.1 Service unavailable - try again later; proto=SMTP$")
            assert mta.queue().strip() == "Mail queue is empty"
        assert sink.messages == []


def test_milter_client_gets_4xx_while_amavisd_is_down(milter):
    milter.daemon.stop()
    try:
        code, text = submit(milter.postfix.smtp_port, clean("mi-down"), ["bob@anchor.test"])
        assert (code, text) == (451, "4.6.0 Content scanner malfunction")
        milter.postfix.wait_log(r"milter-reject: END-OF-MESSAGE from unknown\[127\.0\.0\.1\]: "
                                r"4\.6\.0 Content scanner malfunction; ")
        assert milter.arrived("mi-down@anchor.test") == []
    finally:
        milter.start_daemon()
    code, text = submit(milter.postfix.smtp_port, clean("mi-back"), ["bob@anchor.test"])
    assert code == 250, text
    wait_for(lambda: milter.arrived("mi-back@anchor.test"), 15, "the delivery")
