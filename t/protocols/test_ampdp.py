"""AM.PDP server (spec/protocols.md section 4) over a StringTransport."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from amavisd.constants import D_DISCARD, D_PASS, D_REJECT, D_TEMPFAIL
from amavisd.errors import Reply
from amavisd.protocols import ampdp
from amavisd.protocols.ampdp import AMPDPServer, encode_field, encode_line, parse_line


class FakeView:
    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.banks: list[str] = []

    def set(self, name: str, value: object) -> None:
        self.values[name] = value


class FakeHandler:
    """Decides by recipient local part: rej* reject, tmp* tempfail, dis* discard."""

    def __init__(self, base: Path) -> None:
        self.tempbase = str(base / "tmp")
        self.myhome = str(base)
        self.protected = [str(base / "virusmails"), str(base / "db")]
        self.timeout = 60.0
        self.messages: list[tuple[object, FakeView]] = []
        self.n = 0
        self.ended = False
        self.fail: Exception | None = None

    def request_started(self, tempdir) -> str:
        self.n += 1
        return f"pdp-{self.n:02d}"

    def request_view(self, client_addr, banks):
        view = FakeView()
        view.banks = banks
        view.values["client_addr"] = client_addr
        return view

    def process(self, msg, view):
        if self.fail is not None:
            return defer.fail(self.fail)
        self.messages.append((msg, view))
        for r in msg.recipients:
            local = r.address.split("@")[0]
            if local.startswith("rej"):
                r.destiny, r.done = D_REJECT, 1
                r.reply = Reply(554, "5.7.0", f"Reject, id={msg.log_id} - BANNED: x.exe")
            elif local.startswith("tmp"):
                r.destiny, r.done = D_TEMPFAIL, 1
                r.reply = Reply(450, "4.7.0", f"Temporary failure, id={msg.log_id}")
            elif local.startswith("dis"):
                r.destiny, r.done = D_DISCARD, 1
                r.reply = Reply(250, "2.7.0", f"Ok, discarded, id={msg.log_id}")
            else:
                r.destiny = D_PASS
                r.reply = Reply(250, "2.5.0", f"Ok, id={msg.log_id}, continue delivery")
        return defer.succeed(None)

    def request_ended(self) -> None:
        pass

    def session_ended(self) -> None:
        self.ended = True


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setattr(ampdp, "header_field_edits",
                        lambda msg, view: [("insheader", "0", "X-Virus-Scanned", "amavis at x")])
    handler = FakeHandler(tmp_path)
    tempdir = tmp_path / "tmp" / "amavis-pdp1"
    tempdir.mkdir(parents=True)
    (tempdir / "email.txt").write_bytes(b"From: a@x\nSubject: hi\n\nbody\n")
    server = AMPDPServer(handler, reactor=task.Clock())
    transport = StringTransport()
    server.makeConnection(transport)
    return server, transport, handler, tempdir


def send(server, transport, text: str) -> list[str]:
    transport.clear()
    server.dataReceived(text.encode())
    return transport.value().decode().split("\r\n")


def request(tempdir: Path, *rcpts: str, extra: str = "", eol: str = "\r\n") -> str:
    lines = ["request=AM.PDP", f"tempdir={tempdir}", "tempdir_removed_by=client",
             "sender=<alice@x.test>"] + [f"recipient=<{r}>" for r in rcpts]
    lines += [x for x in extra.split("\n") if x]
    return eol.join(lines) + eol + eol


def test_log_id_prefix():
    assert ampdp.log_id_prefix("/var/lib/amavis/tmp/amavis-pdp1") == "pdp1"
    assert ampdp.log_id_prefix("/var/lib/amavis/tmp/amavis-milter-Xy_1/") == "Xy_1"
    assert ampdp.log_id_prefix("/var/lib/amavis/tmp/other") is None
    assert ampdp.log_id_prefix(None) is None


def test_codec():
    assert parse_line(b"recipient=%3Cbob%40x%3e") == ("recipient", "<bob@x>")
    assert parse_line(b"sender:  <a@b>") == ("sender", "<a@b>")
    assert parse_line(b"%72equest=AM.PDP") == ("request", "AM.PDP")
    assert parse_line(b"no separator") is None
    assert encode_field("Ok, 100% fine\n") == "Ok,%20100%25%20fine%0a"
    line = encode_line("setreply", "250", "2.5.0", "Ok, id=1")
    assert line == b"setreply=250 2.5.0 Ok,%20id=1\r\n"
    assert encode_line("a b", "x") == b"a%20b=x\r\n"


def test_clean_message_continue_in_order(env):
    server, transport, handler, tempdir = env
    lines = send(server, transport, request(tempdir, "bob@x.test", eol="\n"))
    assert lines == ["version_server=2", "log_id=pdp-01",
                     "setreply=250 2.5.0 Ok,%20id=pdp-01,%20continue%20delivery",
                     "insheader=0 X-Virus-Scanned amavis%20at%20x",
                     "return_value=continue", "exit_code=0", "", ""]
    msg, view = handler.messages[0]
    assert view.values["forward_method"] == ""           # delivery_care_of=client
    assert msg.sender == "alice@x.test" and msg.recipients[0].quoted == "bob@x.test"
    assert msg.spool_path == tempdir / "email.txt"
    assert msg.size == len(b"From: a@x\nSubject: hi\n\nbody\n") + 4
    assert tempdir.exists()                              # removed by the client


def test_mixed_gives_delrcpt_and_several_requests(env):
    server, transport, handler, tempdir = env
    lines = send(server, transport, request(tempdir, "bob@x.test", "rej@x.test")
                 + request(tempdir, "rej@x.test"))
    assert lines[:6] == ["version_server=2", "log_id=pdp-01",
                         "setreply=250 2.5.0 Ok,%20id=pdp-01,%20continue%20delivery,"
                         "%20but%201%20REJECT",
                         "delrcpt=<rej@x.test>",
                         "insheader=0 X-Virus-Scanned amavis%20at%20x",
                         "return_value=continue"]
    second = lines[lines.index("log_id=pdp-02") - 1:]
    assert second == ["version_server=2", "log_id=pdp-02",
                      "setreply=554 5.7.0 Reject,%20id=pdp-02%20-%20BANNED:%20x.exe",
                      "return_value=reject", "exit_code=69", "", ""]


def test_tempfail_is_tempfail_not_discard(env):
    """Section 9 item 8: Perl reports discard/99 here; we report tempfail/75."""
    server, transport, handler, tempdir = env
    lines = send(server, transport, request(tempdir, "tmp1@x.test", "tmp2@x.test"))
    assert lines[2].startswith("setreply=450 4.7.0 ")
    assert lines[3:] == ["return_value=tempfail", "exit_code=75", "", ""]


def test_all_discarded(env):
    server, transport, handler, tempdir = env
    lines = send(server, transport, request(tempdir, "dis@x.test"))
    assert lines[3:] == ["return_value=discard", "exit_code=99", "", ""]


def test_no_recipients(env):
    """Section 9 item 9: a clean 450 instead of Perl's crash."""
    server, transport, handler, tempdir = env
    lines = send(server, transport, request(tempdir))
    assert lines == ["version_server=2", "log_id=pdp-01",
                     "setreply=450 4.5.0 Incomplete%20request",
                     "return_value=tempfail", "exit_code=75", "", ""]
    assert handler.messages == []


@pytest.mark.parametrize("bad", ["/tmp/../etc", "/etc", "relative/dir", "{base}/tmp/../x",
                                 "{base}/tmp/a b", "{base}/virusmails", "{base}/virusmails/k",
                                 "{base}/db"])
def test_suspicious_tempdir(env, bad):
    server, transport, handler, tempdir = env
    bad = bad.format(base=handler.myhome)
    lines = send(server, transport, f"request=AM.PDP\ntempdir={bad}\nrecipient=<b@x>\n\n")
    assert lines == [f"setreply=450 4.5.0 Failure:%20Suspicious%20temporary%20directory"
                     f"%20name%20'{encode_field(bad)}'",
                     "return_value=tempfail", "exit_code=75", "", ""]


def test_missing_file_and_bad_mail_file(env):
    server, transport, handler, tempdir = env
    (tempdir / "email.txt").unlink()
    lines = send(server, transport, request(tempdir, "b@x"))
    assert lines[0].startswith("setreply=450 4.5.0 Failure:%20File%20/")
    assert lines[1:] == ["return_value=tempfail", "exit_code=75", "", ""]
    lines = send(server, transport, request(tempdir, "b@x", extra="mail_file=../etc/passwd"))
    assert "Suspicious%20mail%20file%20name" in lines[0]


def test_a_tempdir_holding_the_quarantine_is_refused(env):
    """Regression: with MYHOME as a root, tempdir_removed_by=server could remove it."""
    server, transport, handler, tempdir = env
    quarantine = Path(handler.myhome) / "virusmails" / "k"
    quarantine.mkdir(parents=True)
    (quarantine / "virus-kept").write_bytes(b"evidence")
    for bad in (f"{handler.myhome}/virusmails", f"{handler.myhome}/virusmails/k"):
        lines = send(server, transport, f"request=AM.PDP\ntempdir={bad}\n"
                     "tempdir_removed_by=server\nrecipient=<b@x>\n\n")
        assert "Suspicious%20temporary%20directory%20name" in lines[0]
    lines = send(server, transport, request(tempdir, "b@x", extra=f"mail_file={quarantine}"
                                                                  "/virus-kept"))
    assert "Suspicious%20mail%20file%20name" in lines[0]
    assert (quarantine / "virus-kept").read_bytes() == b"evidence"
    assert handler.messages == []


def test_server_removes_tempdir(env):
    server, transport, handler, tempdir = env
    text = request(tempdir, "bob@x.test").replace("tempdir_removed_by=client",
                                                  "tempdir_removed_by=server")
    lines = send(server, transport, text)
    assert "return_value=continue" in lines
    assert not tempdir.exists()


def test_other_requests(env):
    server, transport, handler, tempdir = env
    assert transport.value() == b""                      # no greeting
    send(server, transport, "request=smtpd_access_policy\nprotocol_state=RCPT\n\n")
    assert transport.value() == b"action=DUNNO\n\n"
    lines = send(server, transport, "request=bogus\n\n")
    assert lines == ["setreply=450 4.5.0 Failure:%20Unknown%20request%20'bogus'",
                     "return_value=tempfail", "exit_code=75", "", ""]
    lines = send(server, transport, "sender=<a@b>\n\n")
    assert lines[0] == "setreply=450 4.5.0 Failure:%20Missing%20'request'%20field"
    lines = send(server, transport, "garbage line\n\x00=x\nrequest=bogus\n\n")
    assert lines[0].startswith("setreply=450 4.5.0 Failure:%20Unknown")
    assert transport.connected


def test_attributes_and_banks(env):
    server, transport, handler, tempdir = env
    extra = ("client_address=192.0.2.1\nclient_name=c.x\nhelo_name=h.x\nqueue_id=Q1\n"
             "protocol_name=ESMTP\npolicy_bank=A,%20B ,\ndelivery_care_of=server\nAM.CL=1")
    text = request(tempdir, "bob@x.test", extra=extra).replace("AM.PDP", "am.cl", 1)
    send(server, transport, text)
    msg, view = handler.messages[0]
    assert view.banks == ["A", "B"]
    assert view.values["client_addr"] == "192.0.2.1"
    assert "forward_method" not in view.values
    c = msg.client
    assert (c.addr, c.name, c.helo, c.ident, c.proto) == ("192.0.2.1", "c.x", "h.x", "Q1",
                                                           "ESMTP")


def test_processing_failure_is_a_tempfail(env):
    server, transport, handler, tempdir = env
    handler.fail = RuntimeError("boom")
    lines = send(server, transport, request(tempdir, "bob@x.test"))
    assert lines == ["setreply=450 4.5.0 Failure:%20boom", "return_value=tempfail",
                     "exit_code=75", "", ""]


def test_close_ends_session(env):
    server, transport, handler, tempdir = env
    server.connectionLost(None)
    assert handler.ended


def test_timeout_closes(env):
    server, transport, handler, tempdir = env
    server._reactor.advance(61)
    assert transport.disconnecting
    assert os.path.isdir(tempdir)


def test_graceful_shutdown_answers_first(env):
    server, transport, handler, tempdir = env
    pending = defer.Deferred()
    handler.process = lambda msg, view: pending
    server.dataReceived(request(tempdir, "bob@x.test").encode())
    server.graceful_shutdown("TERM")
    assert not transport.disconnecting
    pending.callback(None)
    assert b"return_value=continue" in transport.value()
    assert transport.disconnecting
