# tests: amavisd/checks/dkim.py, amavisd/dkim_dns.py, amavisd/actions/authres.py
"""DKIM verification: the Perl daemon's signed messages, RFC 8463, tampering, DNS trouble.

Keys come from a real DNS server on 127.0.0.1 (t/helpers/dnsstub.py) that dnspython
asks, so the deadline and the cache are exercised for real.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from amavisd.actions.authres import authentication_results
from amavisd.actions.headers import plan_edits, render_header
from amavisd.checks import dkim as dk
from amavisd.dkim_canon import BodyHasher, BodySpec
from t.helpers.dkim import (
    ANCHOR_PEM,
    anchor_record,
    golden_message,
    header_of,
    make_msg,
    make_view,
    rfc8463_records,
)
from t.helpers.dnsstub import DnsStub

ANCHOR = "anchor._domainkey.anchor.test"
GOLDEN = ["clean", "clean-xforward", "gtube", "bad-header-8bit", "utf8-subject"]


@pytest.fixture
def dns():
    with DnsStub({ANCHOR: anchor_record()}) as stub:
        yield stub


def run(tmp_path, data, stub, name="email.txt", **kw):
    """Verify ``data`` as a spooled message; returns the message."""
    settings = {"enable_dkim_verification": 1, "dkim_dns_servers": [stub.address]}
    settings.update(kw.pop("settings", {}))
    view = make_view(**settings)
    msg = make_msg(tmp_path / name, data, **kw)
    dk.verify(msg, view, header_of(data), msg.spool_path)
    return msg


def results(msg):
    return [r.result_detail for r in msg.findings["dkim_signatures_all"]]


def dkim_log(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("dkim: ")
            and "verified" not in r.getMessage()]


# ---------------------------------------------------------------- the Perl daemon's mail
@pytest.mark.parametrize("name", GOLDEN)
def test_golden_signatures_of_the_perl_daemon_verify(tmp_path, dns, caplog, name):
    caplog.set_level(1)
    msg = run(tmp_path, golden_message(name), dns)
    (res,) = msg.findings["dkim_signatures_all"]
    assert (res.result_detail, res.key_bits, res.domain, res.selector) == \
        ("pass", 2048, "anchor.test", "anchor")
    f = msg.findings
    assert (f["dkim_author_sig"], f["dkim_sender_sig"], f["dkim_envsender_sig"]) == \
        ("anchor.test",) * 3
    assert "dkim_thirdparty_sig" not in f
    assert f["dkim_sd"] == ["anchor:anchor.test"]
    assert dkim_log(caplog) == [
        "dkim: VALID Author+Sender+MailFrom signature by d=anchor.test, From: "
        "<alice@anchor.test>, a=rsa-sha256, c=relaxed/simple, s=anchor, i=@anchor.test"]


def test_tampered_body_fails(tmp_path, dns, caplog):
    caplog.set_level(1)
    data = golden_message("clean").replace(b"Hi Bob,", b"Hi Rob,")
    msg = run(tmp_path, data, dns)
    assert results(msg) == ["fail (body has been altered)"]
    assert msg.findings["dkim_signatures_valid"] == []
    assert "dkim_author_sig" not in msg.findings
    assert dkim_log(caplog)[-1].endswith(", i=@anchor.test, fail (body has been altered)")
    assert dkim_log(caplog)[-1].startswith("dkim: FAILED Author+Sender+MailFrom signature")
    (ar,) = authentication_results(msg.findings["dkim_signatures_all"], "mx.example.net",
                                   msg.rx_time)
    assert ar == ('mx.example.net (amavis);\n dkim=fail (2048-bit key)\n'
                  ' reason="fail (body has been altered)"\n header.d=anchor.test')


def test_tampered_header_fails_without_detail(tmp_path, dns):
    data = golden_message("clean").replace(b"Subject: Quarterly", b"Subject: Quartely")
    assert results(run(tmp_path, data, dns)) == ["fail"]


def test_one_byte_added_after_the_body_keeps_relaxed_simple_valid_but_not_a_new_line(
        tmp_path, dns):
    data = golden_message("clean")
    assert results(run(tmp_path, data + b"\n\n", dns)) == ["pass"]       # empty lines
    assert results(run(tmp_path, data + b"x\n", dns, name="b.txt")) == \
        ["fail (body has been altered)"]


def test_missing_key_record_is_invalid_and_neutral_in_the_a_r(tmp_path):
    with DnsStub({}) as stub:
        msg = run(tmp_path, golden_message("clean"), stub)
    assert results(msg) == ["invalid (public key: not available)"]
    (ar,) = authentication_results(msg.findings["dkim_signatures_all"], "mx.example.net",
                                   msg.rx_time)
    assert ar == ('mx.example.net (amavis);\n dkim=neutral\n'
                  ' reason="invalid (public key: not available)"\n header.d=anchor.test')


@pytest.mark.parametrize("record, detail", [
    ("v=DKIM1; p=", "public key: revoked"),
    ("v=DKIM2; p=AAAA", "public key: unsupported version"),
    ("v=DKIM1; k=dsa; p=AAAA", "public key: unsupported key type"),
    ("v=DKIM1; k=rsa", "public key: missing p= tag"),
    ("v=DKIM1; p=not*base64", "public key: invalid data"),
    ("v=DKIM1; s=tlsrpt; p=" + anchor_record().split("p=")[1], "public key: does not "
                                                                "support email"),
    ("v=DKIM1; h=sha1; p=" + anchor_record().split("p=")[1],
     "public key: does not support hash algorithm 'sha256'"),
    ("v=DKIM1; g=bob; p=" + anchor_record().split("p=")[1], "public key: granularity mismatch"),
])
def test_unusable_key_records(tmp_path, record, detail):
    with DnsStub({ANCHOR: record}) as stub:
        msg = run(tmp_path, golden_message("clean"), stub)
    assert results(msg) == [f"invalid ({detail})"]


def sig_field(data: bytes) -> bytes:
    return re.search(rb"^DKIM-Signature:.*?\n(?=\S)", data, re.S | re.M).group(0)


@pytest.mark.parametrize("old, new, detail", [
    (b"a=rsa-sha256", b"a=rsa-md5", "unsupported algorithm rsa-md5"),
    (b"c=relaxed/simple", b"c=nowsp/simple", "unsupported canonicalization nowsp/simple"),
    (b"v=1;", b"v=2;", "unsupported version 2"),
    (b"d=anchor.test;", b"i=@other.example; d=anchor.test;", "bad identity"),
    (b"d=anchor.test;", b"q=http/well-known; d=anchor.test;",
     "unsupported query protocol, q=http/well-known"),
    (b"s=anchor;", b"", "missing s tag"),
])
def test_unusable_signatures(tmp_path, dns, old, new, detail):
    data = golden_message("clean")
    field = sig_field(data)
    data = data.replace(field, field.replace(old, new))
    assert results(run(tmp_path, data, dns)) == [f"invalid ({detail})"]


def test_unparseable_signature_is_not_reported(tmp_path, dns):
    data = golden_message("clean")
    data = b"DKIM-Signature: v=1; v=1; a\n" + data
    assert results(run(tmp_path, data, dns)) == ["pass"]


def test_expired_signature_and_one_from_the_future(tmp_path, dns, caplog):
    caplog.set_level(1)
    data = golden_message("clean")
    expired = run(tmp_path, data, dns, rx_time=1797822130 + 5)
    assert results(expired) == ["invalid (signature is expired)"]
    assert dkim_log(caplog)[-1].startswith("dkim: FAILED, EXPIRED Author+Sender+MailFrom ")
    early = run(tmp_path, data, dns, name="e2.txt", rx_time=1796007729 - 3600)
    assert results(early) == ["pass"]
    assert dkim_log(caplog)[-1].startswith(
        "dkim: VALID, IN_FUTURE:(0 1:00:00) Author+Sender+MailFrom signature by d=anchor.test")


# ---------------------------------------------------------------- RFC 8463: ed25519 + rsa
def test_rfc8463_example_ed25519_and_rsa_both_pass(tmp_path):
    data = (ANCHOR_PEM.parent / "rfc8463.eml").read_bytes()
    with DnsStub(rfc8463_records()) as stub:
        msg = run(tmp_path, data, stub, sender="joe@football.example.com",
                  rx_time=1528637909 + 10)
    got = [(r.algorithm, r.result_detail, r.key_bits) for r in
           msg.findings["dkim_signatures_all"]]
    assert got == [("ed25519-sha256", "pass", 256), ("rsa-sha256", "pass", 1024)]
    (ar,) = authentication_results(msg.findings["dkim_signatures_all"], "mx.example.net",
                                   msg.rx_time)
    assert ar == ('mx.example.net (amavis);\n dkim=pass (256-bit key)\n'
                  ' header.d=football.example.com\n header.b="/gCrinpc";\n'
                  ' dkim=pass (1024-bit key)\n header.d=football.example.com\n'
                  ' header.b="F45dVWDf"')


def test_ed25519_signature_made_by_dkimpy_verifies(tmp_path):
    private = ed25519.Ed25519PrivateKey.generate()
    seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
    import base64

    body = (b"From: Carol <carol@example.org>\r\nTo: bob@anchor.test\r\nSubject: ed\r\n\r\n"
            b"\xc3\xa4 8-bit  body\t \r\n\r\n\r\n")
    for canon in ((b"relaxed", b"relaxed"), (b"simple", b"simple")):
        sig = dkim.sign(body, b"ed", b"example.org", base64.b64encode(seed),
                        canonicalize=canon, signature_algorithm=b"ed25519-sha256")
        record = "v=DKIM1; k=ed25519; p=" + base64.b64encode(public).decode()
        with DnsStub({"ed._domainkey.example.org": record}) as stub:
            msg = run(tmp_path, (sig + body).replace(b"\r\n", b"\n"), stub,
                      sender="carol@example.org", rx_time=time.time())
        assert results(msg) == ["pass"], canon


@pytest.mark.skipif(shutil.which("opendkim-testmsg") is None, reason="opendkim-tools missing")
def test_rsa_sha1_signature_made_by_opendkim_verifies(tmp_path, dns, caplog):
    caplog.set_level(1)
    text = (b"From: Alice <alice@anchor.test>\r\nTo: bob@example.com\r\nSubject: via "
            b"opendkim\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody  text\r\n\r\n")
    out = subprocess.run(["opendkim-testmsg", "-d", "anchor.test", "-s", "anchor", "-k",
                          str(ANCHOR_PEM)], input=text, capture_output=True, timeout=30,
                         check=True).stdout
    msg = run(tmp_path, out.replace(b"\r\n", b"\n"), dns, rx_time=time.time())
    assert results(msg) == ["pass"]
    assert ", a=rsa-sha1, c=relaxed/simple, s=anchor," in dkim_log(caplog)[-1]


# ---------------------------------------------------------------- several signatures
def test_third_party_signature_and_a_r_of_two(tmp_path, dns, caplog):
    caplog.set_level(1)
    base = (b"From: Carol <carol@other.example>\r\nTo: bob@anchor.test\r\nSubject: x\r\n\r\n"
            b"hello\r\n")
    pem = ANCHOR_PEM.read_bytes()
    first = dkim.sign(base, b"anchor", b"anchor.test", pem)
    second = dkim.sign(first + base, b"anchor", b"anchor.test", pem,
                       canonicalize=(b"simple", b"simple"))
    data = (second + first + base).replace(b"\r\n", b"\n")
    msg = run(tmp_path, data, dns, sender="carol@other.example", rx_time=time.time())
    assert results(msg) == ["pass", "pass"]
    f = msg.findings
    assert f["dkim_thirdparty_sig"] == "anchor.test"
    assert "dkim_author_sig" not in f and "dkim_envsender_sig" not in f
    assert f["dkim_sd"] == ["anchor:anchor.test"]
    assert dkim_log(caplog)[-2].startswith("dkim: VALID third-party signature by d=anchor.test,"
                                           " From: <carol@other.example>, a=rsa-sha256, "
                                           "c=simple/simple,")
    (ar,) = authentication_results(f["dkim_signatures_all"], "mx.example.net", msg.rx_time)
    b1, b2 = (r.b[:8] for r in f["dkim_signatures_all"])
    assert ar == ('mx.example.net (amavis);\n dkim=pass (2048-bit key)\n header.d=anchor.test'
                  f'\n header.b="{b1}";\n dkim=pass (2048-bit key)\n header.d=anchor.test\n'
                  f' header.b="{b2}"')


def test_at_most_50_signatures_are_looked_at(tmp_path, dns):
    data = golden_message("clean")
    field = sig_field(data)
    data = field * 55 + data
    assert len(results(run(tmp_path, data, dns))) == 50


# ---------------------------------------------------------------- DNS: deadline, cache, errors
def test_slow_dns_server_hits_the_deadline_and_gives_temperror(tmp_path, caplog):
    caplog.set_level(1)
    base = (b"From: Carol <carol@other.example>\r\nTo: bob@anchor.test\r\nSubject: x\r\n\r\n"
            b"hello\r\n")
    pem = ANCHOR_PEM.read_bytes()
    first = dkim.sign(base, b"anchor", b"anchor.test", pem)
    second = dkim.sign(first + base, b"s2", b"other.example", pem)
    data = (second + first + base).replace(b"\r\n", b"\n")
    with DnsStub({}, mode="silent") as stub:
        started = time.monotonic()
        msg = run(tmp_path, data, stub, sender="carol@other.example", rx_time=time.time(),
                  settings={"dkim_dns_timeout": 1.5})
        elapsed = time.monotonic() - started
        asked = sorted(set(stub.queries))
    assert 1.4 <= elapsed < 2.2, elapsed
    assert asked == ["anchor._domainkey.anchor.test", "s2._domainkey.other.example"]
    assert results(msg) == [
        "temperror (public key: DNS query timeout for s2._domainkey.other.example)",
        "temperror (public key: DNS query timeout for anchor._domainkey.anchor.test)"]
    (ar,) = authentication_results(msg.findings["dkim_signatures_all"], "mx", msg.rx_time)
    assert ar.startswith('mx (amavis);\n dkim=temperror\n reason="temperror (public key: DNS '
                         'query timeout for s2._domainkey.other.example)"\n header.d=other.'
                         'example\n header.b="')


def test_deadline_already_past_asks_nothing(tmp_path):
    with DnsStub({ANCHOR: anchor_record()}) as stub:
        msg = run(tmp_path, golden_message("clean"), stub, settings={"dkim_dns_timeout": 0.0})
        assert stub.queries == []
    assert results(msg) == [f"temperror (public key: DNS query timeout for {ANCHOR})"]


def test_servfail_is_temperror(tmp_path):
    with DnsStub({}, mode="servfail") as stub:
        msg = run(tmp_path, golden_message("clean"), stub)
    assert results(msg) == ["temperror (public key: DNS error: SERVFAIL)"]


def test_key_is_cached_per_child_and_failures_are_not(tmp_path, dns):
    run(tmp_path, golden_message("clean"), dns)
    run(tmp_path, golden_message("gtube"), dns, name="two.txt")
    assert dns.queries == [ANCHOR]
    with DnsStub({}, mode="servfail") as bad:
        run(tmp_path, golden_message("clean"), bad, name="three.txt")
        run(tmp_path, golden_message("clean"), bad, name="four.txt")
        assert len(bad.queries) >= 2             # no negative caching of a failure


# ---------------------------------------------------------------- banks and reputation
def test_author_policy_banks(tmp_path, dns, caplog):
    caplog.set_level(1)
    data = golden_message("clean")
    bank = {"TRUSTED": {"spam_kill_level_maps": [99]}, "AUTHOR_APPROVED": {}}
    msg = run(tmp_path, data, dns)
    view = make_view(policy_bank=bank, author_to_policy_bank_maps=[
        {"alice@anchor.test": "TRUSTED"}])
    assert dk.author_policy_banks(msg, view) == ["TRUSTED"]
    assert "dkim: policy bank TRUSTED by alice@anchor.test" in dkim_log(caplog)
    view = make_view(policy_bank=bank, author_to_policy_bank_maps=[[".anchor.test"]])
    assert dk.author_policy_banks(msg, view) == ["AUTHOR_APPROVED"]
    view = make_view(policy_bank=bank, dkim_minimum_key_bits=4096,
                     author_to_policy_bank_maps=[{"alice@anchor.test": "TRUSTED"}])
    assert dk.author_policy_banks(msg, view) == []
    assert ("dkim: policy bank TRUSTED by alice@anchor.test NOT LOADED, valid signature "
            "ignored, 2048-bit key is shorter than 4096") in dkim_log(caplog)


def test_third_party_author_bank_key_has_the_signer_appended(tmp_path, dns):
    base = b"From: Carol <carol@sub.other.example>\r\nTo: bob@anchor.test\r\n\r\nhello\r\n"
    sig = dkim.sign(base, b"anchor", b"anchor.test", ANCHOR_PEM.read_bytes())
    msg = run(tmp_path, (sig + base).replace(b"\r\n", b"\n"), dns, rx_time=time.time())
    for tables, want in (
            ([{"carol@sub.other.example": "NO", ".other.example/@anchor.test": "VIA"}], ["VIA"]),
            ([{".example/@anchor.test": 1}], ["AUTHOR_APPROVED"]),
            ([{"carol@sub.other.example/@anchor.test": "A,B"}], ["A", "B"]),
            # an ACL entry with an '@' compares whole addresses, so (as in amavis) the
            # appended form never matches an ACL
            ([[".other.example/@anchor.test"]], []),
            ([{"carol@sub.other.example": "NO"}], [])):
        view = make_view(author_to_policy_bank_maps=tables)
        assert dk.author_policy_banks(msg, view) == want, tables


def test_signer_reputation_pulls_the_spam_level(tmp_path, dns, caplog):
    caplog.set_level(1)
    msg = run(tmp_path, golden_message("clean"), dns)
    rcpt = msg.recipients[0]
    rcpt.spam_level, rcpt.spam_tests = 5.0, ["BAYES_50=0.8"]
    view = make_view(signer_reputation_maps=[{"@anchor.test": -3}])
    assert dk.adjust_spam_levels(msg, view) == -3
    assert rcpt.spam_level == pytest.approx(0.2 * -3 + 0.8 * 5.0)
    assert rcpt.spam_tests == ["AM.DKIM_REPUT=-1.6", "BAYES_50=0.8"]
    assert ("dkim: score 5.000 adjusted to 3.400 due to reputation (-3) of a signer domain "
            "anchor.test") in dkim_log(caplog)
    assert dk.adjust_spam_levels(msg, make_view(reputation_factor=0,
                                                signer_reputation_maps=[{".": 1}])) is None


# ---------------------------------------------------------------- A-R in the forwarded header
def test_authentication_results_for_local_recipients_only(tmp_path, dns):
    data = golden_message("clean")
    data = b"Authentication-Results: mx.anchor.test; dkim=pass header.d=forged\n" + data
    view = make_view(enable_dkim_verification=1, dkim_dns_servers=[dns.address],
                     myhostname="mx.anchor.test", local_domains_acl=["anchor.test"])
    msg = make_msg(tmp_path / "m.txt", data, rcpts=("bob@anchor.test", "eve@elsewhere.example"))
    dk.verify(msg, view, header_of(data), msg.spool_path)
    clusters = plan_edits(msg, msg.recipients, view, msg.findings, msg.rx_time, header_of(data))
    assert [[r.address for r in c.recipients] for c in clusters] == \
        [["bob@anchor.test"], ["eve@elsewhere.example"]]
    local, remote = (render_header(header_of(data), c.edit).decode() for c in clusters)
    assert local.startswith("X-Virus-Scanned: amavis at anchor.test\r\n"
                            "Authentication-Results: mx.anchor.test (amavis); dkim=pass "
                            "(2048-bit key)\r\n header.d=anchor.test\r\nReceived: ")
    assert "header.d=forged" not in local and "header.d=forged" not in remote
    assert not remote.startswith("Authentication-Results")


def test_verification_off_records_nothing(tmp_path, dns):
    data = golden_message("clean")
    msg = make_msg(tmp_path / "m.txt", data)
    dk.verify(msg, make_view(), header_of(data), msg.spool_path)
    assert msg.findings == {} and dns.queries == []


def test_no_signature_means_no_a_r(tmp_path, dns):
    msg = run(tmp_path, b"From: a@b.example\nSubject: x\n\nhi\n", dns)
    assert msg.findings["dkim_signatures_all"] == []
    assert authentication_results([], "mx", 0) == []
    assert authentication_results([], "mx", 0, allow_none=True) == ["mx (amavis);\n dkim=none"]


# ---------------------------------------------------------------- body canonicalisation
def test_long_lines_without_line_ends_are_hashed_in_bounded_pieces():
    """A body of one 1 MB line through the relaxed carry gives dkimpy's hash."""
    from dkim.canonicalization import Relaxed

    body = (b"word \t  " * 150_000) + b"  \n"
    hasher = BodyHasher([BodySpec("relaxed", "sha256")])
    for i in range(0, len(body), 4096):
        hasher.update(body[i:i + 4096])
    import hashlib

    want = hashlib.sha256(Relaxed.canonicalize_body(body.replace(b"\n", b"\r\n"))).digest()
    assert hasher.digests()[BodySpec("relaxed", "sha256")] == want
    logging.getLogger().debug("checked %d bytes", len(body))


# ---------------------------------------------------------------- sender_credible
@pytest.mark.parametrize("originating,sender,tamper,want", [
    (False, "alice@anchor.test", False, "dkim"),
    (True, "alice@anchor.test", False, "orig,dkim"),
    (True, "alice@anchor.test", True, "orig"),
    (False, "alice@anchor.test", True, None),
    (False, "carol@other.example", False, None),   # valid, but not the sender's domain
    (True, "", False, None),                        # null sender: never credible
])
def test_sender_credible_from_originating_and_an_envelope_sender_signature(
        tmp_path, dns, originating, sender, tamper, want):
    """pipeline.md 4: ``orig`` and ``dkim`` (valid signature by the envelope sender's
    domain); the DSN cutoffs of actions/dsn.py read it."""
    data = golden_message("clean")
    if tamper:
        data = data.replace(b"Hi Bob,", b"Hi Rob,")
    msg = run(tmp_path, data, dns, sender=sender, originating=originating)
    msg.findings["sender_credible"] = "stale"         # recomputed, never kept
    dk.set_sender_credible(msg)
    assert msg.findings.get("sender_credible") == want


@pytest.mark.parametrize("canon", ["relaxed", "simple"])
def test_header_hash_of_the_selected_fields_equals_dkimpys_over_all(canon):
    """dkim_canon canonicalises only the fields h= picks: the same hash as dkimpy's own
    selection over every field, repeated and over-signed names and ``Name :`` included."""
    import hashlib

    from dkim.canonicalization import CanonicalizationPolicy

    from amavisd.dkim_canon import header_digest, split_fields
    block = (b"Received: a\nSubject : spaced\nFrom: x@y\nReceived:  b\n\tfolded\n"
             b"Subject: plain\nTo: z\nReceived: c\nX-Other:  v \n")
    fields = split_fields(block)
    signed = [b"received", b"received", b"subject", b"subject", b"subject", b"from",
              b"x-other", b"date"]
    sig = (b"DKIM-Signature", b" v=1; h=x; b=abc\r\n")
    policy = CanonicalizationPolicy.from_c_value(f"{canon}/simple".encode())
    want = hashlib.sha256()
    dkim.hash_headers(want, policy, policy.canonicalize_headers([list(f) for f in fields]),
                      signed, list(sig), None)
    assert header_digest(fields, signed, canon, "simple", sig, "sha256") == want.digest()
