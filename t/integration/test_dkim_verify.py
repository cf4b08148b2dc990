# tests: amavisd daemon: DKIM verification, Authentication-Results, author banks
"""Ready to become t/integration/test_dkim_verify.py once amavisd/pipeline.py calls
``amavisd.checks.dkim.verify`` (see issue #8's report): not collected until renamed.

Incoming mail signed by anchor.test (dkimpy as the signer, the anchor's key published
by a DNS server of the test) reaches a local recipient with our Authentication-Results
above our Received, the log line carries dkim_sd=, and @author_to_policy_bank_maps
loads a bank; a name server that never answers costs at most $dkim_dns_timeout.
"""

from __future__ import annotations

import re
import time

import dkim

from t.helpers.dkim import ANCHOR_PEM, anchor_record
from t.helpers.dnsstub import DnsStub
from t.integration.conftest import Client, message, send_message, wait_for


def signed_message() -> bytes:
    data = message("verified", body=b"Hi Bob,\r\nsee you.\r\n")
    return dkim.sign(data, b"anchor", b"anchor.test", ANCHOR_PEM.read_bytes()) + data


def settings(stub: DnsStub, timeout: float = 5) -> str:
    return f"""
enable_dkim_verification = 1
dkim_dns_servers = [{stub.address!r}]
dkim_dns_timeout = {timeout}
author_to_policy_bank_maps = [{{'alice@anchor.test': 'TRUSTED'}}]
policy_bank = {{'TRUSTED': {{}}}}
"""


def test_incoming_signature_gives_authentication_results_and_loads_the_bank(amavisd, sink):
    with DnsStub({"anchor._domainkey.anchor.test": anchor_record()}) as stub:
        daemon = amavisd(extra=settings(stub))
        client = Client(daemon.port)
        client.reply()
        reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"],
                             signed_message())
        assert reply[0].startswith("250 2.0.0 "), reply
        client.cmd("QUIT")
    got = sink.messages[-1].data
    assert got.startswith(b"Authentication-Results: mx.anchor.test (amavis); dkim=pass "
                          b"(2048-bit key)\r\n header.d=anchor.test\r\nReceived: from "
                          b"client.anchor.test"), got[:300]
    log = wait_for(lambda: "Passed CLEAN" in daemon.logfile_text() and daemon.logfile_text(),
                   what="the main log line")
    assert "dkim: VALID Author+Sender+MailFrom signature by d=anchor.test, From: " \
           "<alice@anchor.test>, a=rsa-sha256, c=relaxed/simple, s=anchor, i=@anchor.test" in log
    assert "dkim: policy bank TRUSTED by alice@anchor.test" in log
    line = next(x for x in log.splitlines() if "Passed CLEAN" in x)
    assert re.search(r"Passed CLEAN \{RelayedInbound\}, TRUSTED \[127\.0\.0\.1\] .*"
                     r", dkim_sd=anchor:anchor\.test, \d+ ms$", line), line


def test_silent_name_server_costs_at_most_the_deadline(amavisd, sink):
    with DnsStub({}, mode="silent") as stub:
        daemon = amavisd(extra=settings(stub, timeout=1.5))
        client = Client(daemon.port)
        client.reply()
        started = time.monotonic()
        reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"],
                             signed_message())
        elapsed = time.monotonic() - started
        client.cmd("QUIT")
    assert reply[0].startswith("250 2.0.0 "), reply
    assert 1.4 < elapsed < 4.0, elapsed
    assert sink.messages[-1].data.startswith(
        b"Authentication-Results: mx.anchor.test (amavis); dkim=temperror\r\n reason=\"temperror"
        b" (public key: DNS query timeout for anchor._domainkey.anchor.test)\"\r\n "
        b"header.d=anchor.test\r\n")
