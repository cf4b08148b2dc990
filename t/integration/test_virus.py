# tests: amavisd (daemon process): virus scanning with a real clamd, end to end
"""The daemon with clamd (t/helpers/clamd.py), against the Perl amavisd's golden
outputs of the anchor's profile ``clamd`` (t/data/golden/clamd) and through faults.

spec/pipeline.md 2 (steps 15-16), 9, 12.3, 13 step 6 (``INFECTED: %V``), 17, 20.3
(X-Virus-Scanned, X-Amavis-Alert), 22 (virus quarantine); monitoring.md 5.3 (log).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from t.helpers.clamd import ClamdServer, clamd_available
from t.integration.conftest import Client, send_message, wait_for
from t.integration.test_golden import PROFILE_PASS, mask, replay, sections

pytestmark = pytest.mark.skipif(not clamd_available(), reason="clamd or clamav-testfiles missing")

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "clamd"
SENDER, BOB = "alice@anchor.test", "bob@anchor.test"
ENTRY = """
bypass_virus_checks_maps = []
av_scanners = [('ClamAV-clamd', 'ask_daemon', [{query!r}, {spec!r}],
                r'\\bOK$', r'\\bFOUND$', r'^.*?: (?!Infected Archive)(.*) FOUND$')]
av_scanners_backup = []
"""


def profile(spec: str, query: str = "CONTSCAN {}\n", extra: str = "") -> str:
    return PROFILE_PASS + ENTRY.format(query=query, spec=spec) + extra


@pytest.fixture
def clamd_server(tmp_path):
    with ClamdServer(tmp_path) as server:
        yield server


def golden_input(case: str) -> tuple[dict[str, str], bytes]:
    golden = sections((GOLDEN / f"{case}.txt").read_text(errors="surrogateescape"))
    data = golden["INPUT MESSAGE"].rstrip("\n").encode(errors="surrogateescape") \
        .replace(b"\n", b"\r\n") + b"\r\n"
    return golden, data


def main_lines(daemon, count: int = 1) -> list[str]:
    def lines() -> list[str]:
        return [x for x in daemon.logfile_text().splitlines()
                if " Passed " in x or " Blocked " in x]
    wait_for(lambda: len(lines()) >= count, 15, "the main log line")
    return lines()


def to_bob(sink) -> list:
    return [m for m in sink.messages if f"<{BOB}>".encode() in b" ".join(m.rcpts)]


@pytest.mark.parametrize("case", ["eicar", "clam-zip", "clean"])
def test_golden_clamd_case(case, clamd_server, amavisd, sink, tmp_path):
    """Replies, transcript, log line and quarantine as the Perl amavisd with clamd."""
    golden, data = golden_input(case)
    daemon = amavisd(profile(clamd_server.socket_path))
    got = replay(Client(daemon.port), golden, data)
    want = [x for x in golden["SMTP TRANSCRIPT"].splitlines()
            if x and not x.endswith("bytes of message data>")]
    passed = golden["FINAL SMTP REPLY"].startswith("250 2.0.0 from MTA(")

    def norm(line: str) -> str:
        return "S: FROM-MTA" if passed and line.startswith("S: 250 2.0.0 from MTA(") \
            else mask(line)

    assert [norm(x) for x in got] == [norm(x) for x in want]
    want_log = [mask(x) for x in golden["LOG LINES"].splitlines()
                if " Passed " in x or " Blocked " in x]
    assert [mask(x) for x in main_lines(daemon)] == want_log
    if passed:
        (msg,) = to_bob(sink)
        head = msg.data.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n", "\n")
        assert "X-Virus-Scanned: Debian amavis at anchor.test" in head
        assert mask(head) == mask(golden["delivered header section"].strip("\n"))
    else:
        assert to_bob(sink) == []
        match = re.search(r"quarantine: (\w/virus-\S+?),", main_lines(daemon)[0])
        assert match
        quarantined = re.sub(rb"\n[ \t]+", b" ",        # unfolded
                             (tmp_path / "home" / "virusmails" / match.group(1)).read_bytes())
        name = re.search(r"INFECTED: (\S+)", golden["FINAL SMTP REPLY"]).group(1)
        assert f"X-Amavis-Alert: INFECTED, message contains virus: {name}".encode() \
            in quarantined


def test_instream_over_tcp_blocks_eicar(clamd_server, amavisd, sink):
    golden, data = golden_input("eicar")
    daemon = amavisd(profile(f"clamd:127.0.0.1:{clamd_server.tcp_port}", "*"))
    client = Client(daemon.port)
    client.reply()
    reply = send_message(client, SENDER, [BOB], data)
    assert mask(reply[0]) == mask(golden["FINAL SMTP REPLY"].strip())
    assert "Blocked INFECTED (Eicar-Test-Signature.UNOFFICIAL) {DiscardedInbound," \
           "Quarantined}" in main_lines(daemon)[0]


def test_reject_reply_carries_virus_names(clamd_server, amavisd, sink):
    _golden, data = golden_input("eicar")
    daemon = amavisd(profile(clamd_server.socket_path, extra="final_virus_destiny = D_REJECT\n"))
    client = Client(daemon.port)
    client.reply()
    reply = send_message(client, SENDER, [BOB], data)
    assert re.fullmatch(r"554 5\.7\.0 Reject, id=\d+-\d\d - INFECTED: "
                        r"Eicar-Test-Signature\.UNOFFICIAL", reply[0]), reply
    assert "Blocked INFECTED (Eicar-Test-Signature.UNOFFICIAL) {RejectedInbound" \
           in main_lines(daemon)[0]


def test_clamd_down_tempfails_then_retry_passes(clamd_server, amavisd, sink):
    """virus_scanners_failure_is_fatal: 451, nothing delivered; clamd back: passes."""
    _golden, data = golden_input("clean")
    daemon = amavisd(profile(clamd_server.socket_path,
                             extra="virus_scanners_failure_is_fatal = 1\n"))
    client = Client(daemon.port)
    client.reply()
    clamd_server.stop()
    reply = send_message(client, SENDER, [BOB], data)
    assert re.fullmatch(r"451 4\.5\.0 Error in processing, id=\d+-\d\d, virus_scan FAILED: "
                        r"AV: ALL VIRUS SCANNERS FAILED", reply[0]), reply
    assert sink.messages == []
    clamd_server.start()
    reply = send_message(client, SENDER, [BOB], data)
    assert reply[0].startswith("250 2.0.0 from MTA("), reply
    assert len(to_bob(sink)) == 1


def test_clamd_down_with_amavis_default_is_unchecked(clamd_server, amavisd, sink):
    """amavis >= 2.7 (virus_scanners_failure_is_fatal 0): every scanner failed -> CC_UNCHECKED,
    passed with a subject tag.  Ours defaults to a tempfail (docs/differences.md #24)."""
    _golden, data = golden_input("clean")
    daemon = amavisd(profile(clamd_server.socket_path,
                             extra="virus_scanners_failure_is_fatal = 0\n"))
    clamd_server.stop()
    client = Client(daemon.port)
    client.reply()
    reply = send_message(client, SENDER, [BOB], data)
    assert reply[0].startswith("250 2.0.0 from MTA("), reply
    assert " Passed UNCHECKED {RelayedTaggedInbound}" in main_lines(daemon)[0]
    (msg,) = to_bob(sink)
    assert b"Subject: ***UNCHECKED*** " in msg.data


def test_silent_clamd_times_out_to_tempfail(amavisd, sink, tmp_path):
    """A socket that accepts and never answers (the one mock): timeout -> failure -> 451."""
    import socket

    path = str(tmp_path / "silent.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(8)
    import os
    os.chmod(path, 0o666)
    try:
        _golden, data = golden_input("clean")
        daemon = amavisd(profile(path, extra="virus_scanners_failure_is_fatal = 1\n"
                                             "av_scanner_timeout = 2\n"))
        client = Client(daemon.port)
        client.reply()
        reply = send_message(client, SENDER, [BOB], data)
        assert reply[0].startswith("451 4.5.0 Error in processing"), reply
        assert "AV: ALL VIRUS SCANNERS FAILED" in reply[0]
        assert sink.messages == []
        assert "timed out" in daemon.logfile_text()
    finally:
        srv.close()


def test_clamscan_command_line_scanner(clamd_server, amavisd, sink):
    _golden, data = golden_input("clam-zip")
    extra = (f"av_scanners = [('ClamAV-clamscan', 'clamscan', "
             f"'--stdout --no-summary -r -d {clamd_server.db} {{}}', [0], r':.*\\sFOUND$', "
             "r'^.*?: (?!Infected Archive)(.*) FOUND$')]\n")
    daemon = amavisd(profile(clamd_server.socket_path, extra=extra))
    client = Client(daemon.port)
    client.reply()
    reply = send_message(client, SENDER, [BOB], data)
    assert "INFECTED: Clamav.Test.File-6.UNOFFICIAL" in reply[0], reply
