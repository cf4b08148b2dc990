# tests: amavisd daemon: DKIM signing of originating mail (actions/forward.py wiring)
"""The anchor's 'dkim' profile on our daemon: originating mail from anchor.test leaves
signed, Mail::DKIM verifies what the sink received, the log line says dkim_new=."""

from __future__ import annotations

import re

from amavisd.dkim_keys import declare, dns_record
from t.helpers.dkim import ANCHOR_PEM, perl_verify
from t.integration.conftest import Client, message, send_message, wait_for

DKIM_PROFILE = f"""
enable_dkim_signing = 1
dkim_key('anchor.test', 'anchor', {str(ANCHOR_PEM)!r})
dkim_signature_options_bysender_maps = [{{'.': {{'ttl': 21 * 24 * 3600, 'c': 'relaxed/simple'}}}}]
policy_bank = {{'ORIGINATING': {{'originating': 1}}}}
"""


def test_mail_that_is_not_originating_is_not_signed(amavisd, sink):
    daemon = amavisd(extra=DKIM_PROFILE)
    client = Client(daemon.port)
    client.reply()
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"], message("plain"))
    assert reply[0].startswith("250 2.0.0 "), reply
    assert sink.messages[-1].data.startswith(b"Received: from client.anchor.test")
    client.cmd("QUIT")


def test_signed_through_the_originating_bank(amavisd, sink, tmp_path):
    from t.helpers.daemon import free_port

    port = free_port()
    daemon = amavisd(extra=DKIM_PROFILE + f"inet_socket_port = {port}\n"
                     f"interface_policy = {{'{port}': 'ORIGINATING'}}\n")
    client = Client(daemon.port)
    client.reply()
    data = message("signed", body="Grüße, Bob\r\n\r\n".encode(),
                   extra=b"X-Long: " + b"folded header text " * 8 + b"\r\n\tcontinued\r\n")
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"], data)
    assert reply[0].startswith("250 2.0.0 "), reply
    got = sink.messages[-1].data
    assert re.sub(rb"\r\n\t", b" ", got).startswith(
        b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=anchor.test; h=message-id:"
        b"subject:subject:date:date:from:from:received; s=anchor; t=")
    assert re.search(rb"\r\nReceived: from client\.anchor\.test", got)
    path = tmp_path / "delivered.eml"
    path.write_bytes(got)
    record = dns_record(declare("anchor.test", "anchor", str(ANCHOR_PEM), {}, "t", []))
    assert perl_verify(path, {"anchor._domainkey.anchor.test": record}) == [
        "d=anchor.test s=anchor a=rsa-sha256 => pass", "result: pass"]
    line = wait_for(lambda: next((x for x in daemon.logfile_text().splitlines()
                                  if "Passed CLEAN" in x), None), what="the main log line")
    assert re.search(r"Passed CLEAN \{RelayedInternal\}, ORIGINATING LOCAL \[127\.0\.0\.1\] "
                     r"<alice@anchor\.test> -> <bob@anchor\.test>, Message-ID: <signed@anchor"
                     r"\.test>, mail_id: \S+, Hits: -, size: \d+, queued_as: \w+, "
                     r"dkim_new=anchor:anchor\.test, \d+ ms$", line), line
    log = daemon.logfile_text()
    assert "dkim: signing (author), From: <alice@anchor.test> (From:<alice@anchor.test>), " \
           "a=rsa-sha256, c=relaxed/simple, d=anchor.test, s=anchor, ttl=1814400, x=" in log
    client.cmd("QUIT")
