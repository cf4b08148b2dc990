# tests: amavisd/actions/dkim_sign.py, amavisd/dkim_keys.py, amavisd/dkim_canon.py
"""DKIM signing: what is signed, which key and tags, and independent verifiers agree.

Our signatures are checked by Perl's Mail::DKIM (Debian's libmail-dkim-perl, fed the
key record without DNS: t/dkim_verify.pl) and by dkimpy (rsa and ed25519), after the
message went through the real SMTP client to the test sink, so the bytes verified are
the bytes a next hop receives.
"""

from __future__ import annotations

import base64
import math
import re
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import reactor

from amavisd.actions import dkim_sign
from amavisd.actions.forward import forward
from amavisd.checks.dkim import SignatureResult
from amavisd.dkim_canon import split_fields
from amavisd.dkim_keys import dns_record, find_key
from t.helpers.dkim import (
    ANCHOR_PEM,
    dkimpy_verify,
    golden_message,
    key,
    make_msg,
    make_view,
    perl_verify,
)
from t.sink import Sink, in_reactor

ANCHOR = "anchor._domainkey.anchor.test"
LONG_SUBJECT = b"Subject: " + b"a long folded subject with many words " * 6 + b"\n\tand more\n"
HEADER = (b"Received: from pc.anchor.test ([10.0.0.5])\n\tby submit.anchor.test (Postfix) with "
          b"ESMTPSA id 4QJ0\n\tfor <bob@example.com>; Mon, 1 Jan 2024 00:00:00 +0000\n"
          b"From: Alice Example <alice@anchor.test>\nTo: Bob <bob@example.com>\n" + LONG_SUBJECT
          + b"Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <m1@anchor.test>\n"
          b"MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n"
          b"Content-Transfer-Encoding: 8bit\nX-Mailer: test\n")
BODIES = {
    "8bit": "Grüße aus Köln — 8-bit body\n\ttabs\tand  spaces  \n\n".encode(),
    "trailing-empty-lines": b"line\n\n\n\n",
    "whitespace-lines": b"  \n\t\nx  y \t\n \n",
    "dots": b".leading dot\n..two\n.\nend\n",
    "empty": b"",
    "no-final-newline": b"last line without LF",
    "bare-cr-and-nul": b"a\rb\x00c\r\nd\n",
}


@pytest.fixture
def anchor_key():
    return key()


@pytest.fixture
def ed_key(tmp_path):
    pem = tmp_path / "ed.pem"
    pem.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return key("anchor.test", "ed", pem)


def signing_view(keys, **kw):
    settings = dict(enable_dkim_signing=1, dkim_signing_keys_list=keys,
                    myhostname="mx.anchor.test", local_domains_acl=["anchor.test"])
    settings.update(kw)
    return make_view(**settings)


def spool(tmp_path, header=HEADER, body=b"Hello\n", **kw):
    """A spooled originating message and its header as render_header gives it."""
    msg = make_msg(tmp_path / "email.txt", header + b"\n" + body, originating=True,
                   rx_time=kw.pop("rx_time", time.time()), **kw)
    return msg, (header + b"\n").replace(b"\n", b"\r\n"), len(header) + 1


def sign(msg, header, offset, view, **kw):
    new, new_offset = dkim_sign.signed_content(msg, header, offset, view, **kw)
    assert new_offset == offset
    return new


def tags_of(signed: bytes) -> dict[str, str]:
    text = re.match(rb"DKIM-Signature:(.*?)\r\n(?!\t)", signed, re.S).group(1).decode()
    text = re.sub(r"\s+", "", text)
    return dict(item.split("=", 1) for item in text.split(";") if item)


def through_sink(msg, header, offset, view, tmp_path):
    """Forward by SMTP to the sink (signing happens in forward) and return what arrived."""
    with Sink() as sink:
        in_reactor(forward, msg, msg.recipients, f"smtp:[127.0.0.1]:{sink.port}", header,
                   offset, view, reactor, False, time.time() + 60)
        assert [str(r.reply)[:3] for r in msg.recipients] == ["250"] * len(msg.recipients)
        data = sink.messages[0].data
    path = tmp_path / "delivered.eml"
    path.write_bytes(data)
    return data, path


# ---------------------------------------------------------------- independent verifiers
@pytest.mark.parametrize("canon", ["relaxed/simple", "simple/simple", "relaxed/relaxed",
                                   "simple/relaxed"])
@pytest.mark.parametrize("body", sorted(BODIES))
def test_rsa_signature_verified_by_mail_dkim_and_dkimpy(tmp_path, anchor_key, canon, body):
    view = signing_view([anchor_key],
                        dkim_signature_options_bysender_maps=[{".": {"c": canon}}])
    msg, header, offset = spool(tmp_path, body=BODIES[body])
    data, path = through_sink(msg, header, offset, view, tmp_path)
    assert data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; ")
    record = dns_record(anchor_key)
    assert perl_verify(path, {ANCHOR: record}) == [
        "d=anchor.test s=anchor a=rsa-sha256 => pass", "result: pass"]
    assert dkimpy_verify(data, {ANCHOR: record})
    assert msg.findings["dkim_new"] == ["anchor:anchor.test"]


@pytest.mark.parametrize("canon", ["relaxed/simple", "simple/simple", "relaxed/relaxed"])
def test_ed25519_signature_verified_by_dkimpy(tmp_path, ed_key, canon):
    view = signing_view([ed_key], dkim_signature_options_bysender_maps=[
        {".": {"c": canon, "a": "ed25519-sha256"}}])
    msg, header, offset = spool(tmp_path, body=BODIES["8bit"])
    data, path = through_sink(msg, header, offset, view, tmp_path)
    tags = tags_of(data)
    assert (tags["a"], tags["s"]) == ("ed25519-sha256", "ed")
    record = dns_record(ed_key)
    assert record.startswith("v=DKIM1; k=ed25519; p=") and len(record.split("p=")[1]) == 44
    assert dkimpy_verify(data, {"ed._domainkey.anchor.test": record})
    tampered = data.replace("Köln".encode(), b"Koln")
    assert not dkimpy_verify(tampered, {"ed._domainkey.anchor.test": record})
    # Debian's Mail::DKIM does not know ed25519 yet: it says so instead of failing it
    assert perl_verify(path, {"ed._domainkey.anchor.test": record})[0].endswith(
        "=> invalid (unsupported algorithm ed25519-sha256)")


def test_large_body_in_chunks_with_very_long_lines(tmp_path, anchor_key):
    body = (b"x" * 300_000 + b"  \t \n") * 3 + b"tail  \n" * 20_000
    view = signing_view([anchor_key],
                        dkim_signature_options_bysender_maps=[{".": {"c": "relaxed/relaxed"}}])
    msg, header, offset = spool(tmp_path, body=body)
    data, path = through_sink(msg, header, offset, view, tmp_path)
    assert perl_verify(path, {ANCHOR: dns_record(anchor_key)})[-1] == "result: pass"


# ---------------------------------------------------------------- tags and header list
def test_tags_as_amavis_sets_them(tmp_path, anchor_key):
    view = signing_view([anchor_key], dkim_signature_options_bysender_maps=[
        {".": {"ttl": 21 * 24 * 3600, "c": "relaxed/simple"}}])
    msg, header, offset = spool(tmp_path, rx_time=1796007729.25)
    tags = tags_of(sign(msg, header, offset, view))
    assert list(tags) == ["v", "a", "c", "d", "h", "s", "t", "x", "bh", "b"]
    assert (tags["v"], tags["a"], tags["c"], tags["d"], tags["s"]) == \
        ("1", "rsa-sha256", "relaxed/simple", "anchor.test", "anchor")
    assert tags["t"] == "1796007729"                                 # floor of reception
    assert tags["x"] == str(math.ceil(1796007729.25 + 21 * 24 * 3600))
    assert tags["h"] == ("x-mailer:content-transfer-encoding:content-type:content-type:"
                         "mime-version:message-id:date:date:subject:subject:from:from:received")


def test_h_list_matches_the_perl_daemons_golden_signature(anchor_key):
    """The golden header (its DKIM-Signature taken off) gives amavis's own h= list."""
    head = golden_message("clean").split(b"\n\n", 1)[0] + b"\n"
    sig, rest = re.match(rb"(DKIM-Signature:.*?\n)(?=\S)(.*)", head, re.S).groups()
    want = re.search(rb"h=(.*?);", re.sub(rb"\s+", b"", sig)).group(1).decode()
    assert dkim_sign.signed_names(split_fields(rest), make_view(), False) == want.split(":")


def test_simple_simple_omits_c_and_identity_defaults_to_a_subdomain(tmp_path, anchor_key):
    header = HEADER.replace(b"From: Alice Example <alice@anchor.test>",
                            b"From: Alice <alice@eu.anchor.test>")
    view = signing_view([anchor_key], dkim_signature_options_bysender_maps=[
        {".anchor.test": {"d": "anchor.test", "c": "simple/simple"}}])
    msg, h, offset = spool(tmp_path, header=header, sender="alice@eu.anchor.test")
    tags = tags_of(sign(msg, h, offset, view))
    assert "c" not in tags and tags["i"] == "@eu.anchor.test" and tags["d"] == "anchor.test"


def test_signed_header_fields_setting_is_laid_over_the_defaults(anchor_key):
    fields = split_fields(b"To: a@b\nFrom: c@d\nX-Custom: 1\nReceived: x\n")
    view = make_view(signed_header_fields={"x-custom": 1, "received": 0, "from": 1})
    assert dkim_sign.signed_names(fields, view, False) == ["x-custom", "from"]
    assert dkim_sign.signed_names(split_fields(b"Received: a\nReceived: b\nFrom: c\n"),
                                  make_view(), True) == ["from", "from", "received"]


# ---------------------------------------------------------------- what is signed
def test_only_originating_clean_mail_is_signed(tmp_path, anchor_key, caplog):
    caplog.set_level(1)
    view = signing_view([anchor_key])
    msg, header, offset = spool(tmp_path)
    assert sign(msg, header, offset, view).startswith(b"DKIM-Signature:")
    msg.originating = False
    assert sign(msg, header, offset, view) == header
    msg.originating = True
    msg.recipients[0].ccats = ["5", "1"]
    assert sign(msg, header, offset, view) == header
    assert "dkim: not signing suspected spam (from inside), From: <alice@anchor.test>" in \
        caplog.messages
    msg.recipients[0].ccats = ["9"]
    assert sign(msg, header, offset, view) == header
    msg.recipients[0].ccats = ["1"]
    assert sign(msg, header, offset, view, submit="Quar") == header
    assert sign(msg, header, offset, make_view()) == header             # signing off
    off = signing_view([anchor_key], allowed_added_header_fields={"dkim-signature": 0})
    assert sign(msg, header, offset, off) == header


def test_no_key_for_the_domain(tmp_path, anchor_key, caplog):
    caplog.set_level(1)
    header = HEADER.replace(b"alice@anchor.test", b"carol@other.example")
    msg, h, offset = spool(tmp_path, header=header, sender="carol@other.example")
    assert sign(msg, h, offset, signing_view([anchor_key])) == h
    assert ("dkim: not signing, no applicable private key for domains other.example, "
            "s=, From: <carol@other.example>") in caplog.messages


def test_sender_key_signs_as_third_party(tmp_path, anchor_key, caplog):
    caplog.set_level(1)
    header = HEADER.replace(b"From: Alice Example <alice@anchor.test>",
                            b"From: Carol <carol@other.example>\nSender: alice@anchor.test")
    msg, h, offset = spool(tmp_path, header=header)
    signed = sign(msg, h, offset, signing_view([anchor_key]))
    assert tags_of(signed)["d"] == "anchor.test"
    assert "dkim: candidate originators: From:<carol@other.example>, Sender:<alice@anchor.test>"\
        in caplog.messages
    assert any(m.startswith("dkim: signing (3rd-party), From: <carol@other.example> "
                            "(Sender:<alice@anchor.test>), a=rsa-sha256, c=relaxed/simple, "
                            "d=anchor.test, s=anchor") for m in caplog.messages)


def test_not_signed_again_by_the_same_domain(tmp_path, anchor_key, caplog):
    caplog.set_level(1)
    msg, header, offset = spool(tmp_path)
    msg.findings["dkim_signatures_valid"] = [SignatureResult(
        "anchor.test", "old", "@anchor.test", "rsa-sha256", "relaxed/simple", "AAAA", 1, None,
        "pass")]
    assert sign(msg, header, offset, signing_view([anchor_key])) == header
    assert "dkim: not signing, already signed by domain anchor.test, From: " \
           "<alice@anchor.test>" in caplog.messages


def test_key_choice_follows_selector_algorithm_and_key_tags(tmp_path, anchor_key, ed_key):
    keys = [anchor_key, ed_key]
    assert find_key(keys, "anchor.test") is anchor_key
    assert find_key(keys, "Anchor.Test", a="ed25519-sha256") is ed_key
    assert find_key(keys, "anchor.test", s="ed") is ed_key
    assert find_key(keys, "anchor.test", s="ed", a="rsa-sha256") is None
    sha1_only = key(earlier=[], selector="s1", h="sha1")
    assert find_key([sha1_only], "anchor.test", a="rsa-sha256") is None
    assert find_key([sha1_only], "anchor.test", a="rsa-sha1") is sha1_only
    tls = key(selector="t1", s="tlsrpt")
    assert find_key([tls], "anchor.test") is None
    strict = key(selector="st", t="s")
    assert find_key([strict], "anchor.test", i="@sub.anchor.test") is None
    assert find_key([strict], "anchor.test", i="@anchor.test") is strict
    wild = key("*.anchor.test", "w")
    assert find_key([wild], "eu.anchor.test") is wild and find_key([wild], "anchor.test") is None


def test_option_maps_pick_selector_and_domain(tmp_path, anchor_key, ed_key):
    view = signing_view([anchor_key, ed_key], dkim_signature_options_bysender_maps=[
        {"alice@anchor.test": {"s": "ed", "a": "ed25519-sha256"}, ".": {"a": "rsa-sha256"}}])
    msg, header, offset = spool(tmp_path)
    tags = tags_of(sign(msg, header, offset, view))
    assert (tags["s"], tags["a"]) == ("ed", "ed25519-sha256")


def test_second_cluster_signs_with_the_same_key(tmp_path, anchor_key, ed_key):
    view = signing_view([anchor_key, ed_key])
    msg, header, offset = spool(tmp_path)
    msg.findings["dkim_signwith_sd"] = ("ed", "anchor.test")
    tags = tags_of(sign(msg, header, offset, view))
    assert (tags["s"], tags["a"]) == ("ed", "ed25519-sha256")


# ---------------------------------------------------------------- A-R for our signature, DSN
def test_a_r_for_the_new_signature_above_it(tmp_path, anchor_key):
    view = signing_view([anchor_key], enable_dkim_verification=1)
    msg, header, offset = spool(tmp_path)
    signed = sign(msg, header, offset, view)
    assert signed.startswith(
        b"Authentication-Results: mx.anchor.test (amavis); dkim=pass (2048-bit key)\r\n"
        b' reason="pass (just generated, assumed good)" header.d=anchor.test\r\n'
        b"DKIM-Signature: v=1;")
    msg.recipients[0].address = "bob@elsewhere.example"
    assert sign(msg, header, offset, view).startswith(b"DKIM-Signature: ")


def test_whole_file_message_is_split_and_signed(tmp_path, anchor_key):
    """A DSN is handed over as one file (header b'', offset 0)."""
    msg, header, offset = spool(tmp_path)
    new, new_offset = dkim_sign.signed_content(msg, b"", 0, signing_view([anchor_key]))
    assert new_offset == offset and new.endswith(header)
    path = tmp_path / "dsn.eml"
    path.write_bytes(new + Path(msg.spool_path).read_bytes()[offset:])
    assert perl_verify(path, {ANCHOR: dns_record(anchor_key)})[-1] == "result: pass"


def test_signing_error_leaves_the_message_unsigned(tmp_path, anchor_key, caplog):
    caplog.set_level(1)
    msg, header, offset = spool(tmp_path)
    msg.spool_path = tmp_path / "gone.txt"
    assert sign(msg, header, offset, signing_view([anchor_key])) == header
    assert any(m.startswith("dkim: signing error: ") for m in caplog.messages)


def test_anchor_key_signature_costs_about_a_millisecond(tmp_path, anchor_key):
    """Keys are parsed once per process and OpenSSL signs (dkimpy's RSA ~10 ms)."""
    view = signing_view([anchor_key])
    msg, header, offset = spool(tmp_path)
    sign(msg, header, offset, view)
    started = time.perf_counter()
    for _ in range(20):
        msg.findings.clear()
        sign(msg, header, offset, view)
    per_signature = (time.perf_counter() - started) / 20
    assert per_signature < 0.008, per_signature
    assert base64.b64decode(tags_of(sign(msg, header, offset, view))["b"])
    assert ANCHOR_PEM.exists()


# ---------------------------------------------------------------- AM.PDP / milter
def test_delivered_header_applies_the_edits_as_an_mta_does():
    """smfi semantics: index counts fields of that name, 1-based; insheader 0 on top;
    the MTA writes ``Name: body`` and CRLF for the body's LFs."""
    block = (b"Received: a\nX-Test: one\nSubject: hi\nX-Test: two\n"
             b"Long: x\n\ty\nTo: b\n")
    edits = [("delheader", "2", "x-test"), ("chgheader", "1", "Subject", "[tag] hi"),
             ("chgheader", "3", "X-Test", "new"), ("insheader", "0", "X-A", "1"),
             ("insheader", "0", "X-B", "folded\n\tbody"), ("insheader", "99", "X-C", "c"),
             ("addheader", "X-D", "d")]
    assert dkim_sign.delivered_header(block, edits) == (
        b"X-B: folded\r\n\tbody\r\nX-A: 1\r\nReceived: a\r\nX-Test: one\r\n"
        b"Subject: [tag] hi\r\nLong: x\r\n\ty\r\nTo: b\r\nX-Test: new\r\nX-C: c\r\n"
        b"X-D: d\r\n\r\n")
    assert dkim_sign.delivered_header(b"", []) == b"\r\n"


def test_client_field_is_the_insheader_form_of_a_rendered_field():
    raw = b"DKIM-Signature: v=1; a=rsa-sha256;\r\n\th=from; b=abc\r\n"
    assert dkim_sign.client_field(raw) == ("DKIM-Signature", "v=1; a=rsa-sha256;\n\th=from; b=abc")
    name, body = dkim_sign.client_field(raw)
    assert dkim_sign.delivered_header(b"", [("insheader", "0", name, body)]) == raw + b"\r\n"
