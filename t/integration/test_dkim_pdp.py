# tests: AM.PDP signing (amavisd/actions/dkim_sign.sign_for_client, protocols/ampdp.py)
"""DKIM signing when the AM.PDP client delivers (spec pipeline.md 24.3, protocols.md 4.4).

A request through the daemon's real Unix socket, as amavisd-submit or amavisd-milter
sends it.  The Perl daemon, asked the same request with the same key (observed, see
docs/dkim.md), answers ``chgheader=1 subject [ext]%20hello``, ``insheader=0
X-Virus-Scanned ...`` and, last so that it lands on top, ``insheader=0 DKIM-Signature
v=1;%20a=rsa-sha256;%20c=relaxed/simple;%20d=anchor.test;%20h=...message-id:subject:
subject:date:date:from:from:received...``: one ``received`` for two Received fields,
the topmost (the MTA's own) is not signed.  Here the test applies the edits to the
message as an MTA does (its own code, not the daemon's) and Mail::DKIM and dkimpy
must verify the result; without the Subject change they must not.
"""

from __future__ import annotations

import re

from amavisd.dkim_keys import declare, dns_record
from t.helpers.dkim import ANCHOR_PEM, dkimpy_verify, perl_verify
from t.integration.conftest import wait_for
from t.integration.test_ampdp import start, submit
from t.integration.test_golden import PROFILE_PASS

RECORDS = {"anchor._domainkey.anchor.test": dns_record(
    declare("anchor.test", "anchor", str(ANCHOR_PEM), {}, "t", []))}
SIGNING = PROFILE_PASS + f"""
enable_dkim_signing = 1
dkim_key('anchor.test', 'anchor', {str(ANCHOR_PEM)!r})
dkim_signature_options_bysender_maps = [{{'.': {{'ttl': 21 * 24 * 3600, 'c': 'relaxed/simple'}}}}]
policy_bank = {{'AM.PDP-SOCK': {{'protocol': 'AM.PDP', 'originating': 1}}}}
bypass_virus_checks_maps = []
# a scanner that cannot be reached: CC_UNCHECKED, which is signed, with the three edits
av_scanners = [('ClamAV-clamd', 'ask_daemon', ['CONTSCAN {{}}\\n', '/nonexistent/clamd.sock'],
                r'\\bOK$', r'\\bFOUND$', r'^.*?: (.*) FOUND$')]
av_scanners_backup = []
virus_scanners_failure_is_fatal = 0
remove_existing_x_scanned_headers = 1
signed_header_fields = {{'x-virus-scanned': 1}}
enable_dkim_verification = 1    # yet no A-R for our own signature here (as the Perl daemon)
"""
MESSAGE = (b"Received: from client.anchor.test (client.anchor.test [192.0.2.10])\n"
           b"\tby mx.anchor.test (Postfix) with ESMTP id QID1\n"
           b"\tfor <bob@anchor.test>; Mon, 30 Nov 2026 03:01:55 +0000 (UTC)\n"
           b"Received: from laptop by client.anchor.test; Mon, 30 Nov 2026 03:01:54 +0000\n"
           b"From: Alice <alice@anchor.test>\nTo: Bob <bob@anchor.test>\n"
           b"Date: Mon, 30 Nov 2026 03:01:54 +0000\nSubject: hello\n"
           b"Message-ID: <hello@anchor.test>\nX-Virus-Scanned: by someone else\n"
           b"\nHi Bob,\nsee you.\n")


def _decode(text: str) -> str:
    return re.sub(r"%([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def apply_edits(data: bytes, attrs: dict[str, list[str]], skip: str = "") -> bytes:
    """The response's header edits applied as sendmail/Postfix apply a milter's (the
    MTA writes ``Name: value``), CRLF line ends: what the next hop receives."""
    head, _, body = data.decode().partition("\n\n")
    fields = re.split(r"\n(?![ \t])", head)
    lines = [(k, v) for k in ("delheader", "chgheader", "insheader") if k != skip
             for v in attrs.get(k, [])]
    for kind, value in lines:
        index, name, *rest = value.split(" ", 2)
        text = f"{name}: {_decode(rest[0])}" if rest else ""
        if kind == "insheader":
            fields.insert(int(index), text)
            continue
        same = [i for i, f in enumerate(fields) if f.split(":")[0].lower() == name.lower()]
        pos = same[int(index) - 1]
        if kind == "delheader":
            del fields[pos]
        else:
            fields[pos] = text
    return ("\n".join(fields) + "\n\n" + body).replace("\n", "\r\n").encode()


def test_originating_pdp_mail_gets_the_signature_as_the_last_insheader(amavisd, sink,
                                                                        tmp_path):
    daemon, path = start(amavisd, tmp_path, SIGNING)
    attrs, _ = submit(path, tmp_path, "pdp1", MESSAGE, ["bob@anchor.test"])
    assert attrs["return_value"] == ["continue"], attrs
    assert attrs["delheader"] == ["1 X-Virus-Scanned"]
    assert attrs["chgheader"] == ["1 Subject ***UNCHECKED***%20hello"]
    assert "addheader" not in attrs
    first, last = attrs["insheader"]                     # and no Authentication-Results
    assert first == "0 X-Virus-Scanned Debian%20amavis%20at%20anchor.test"
    sig = re.sub("%0a%09", "", last)
    assert sig.startswith("0 DKIM-Signature v=1;%20a=rsa-sha256;%20c=relaxed/simple;"
                          "%20d=anchor.test;h=message-id:subject:subject:date:date:from:from"
                          ":received:x-virus-scanned;%20s=anchor;%20t="), last
    assert "%0d" not in last and "%0a%09" in last         # folded with LF TAB (4.4)
    delivered = apply_edits(MESSAGE, attrs)
    assert delivered.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert b"\r\nSubject: ***UNCHECKED*** hello\r\n" in delivered
    eml = tmp_path / "delivered.eml"
    eml.write_bytes(delivered)
    assert perl_verify(eml, RECORDS) == ["d=anchor.test s=anchor a=rsa-sha256 => pass",
                                         "result: pass"]
    assert dkimpy_verify(delivered, RECORDS)
    # the signature covers the edited header: without either edit it does not verify
    for skip in ("chgheader", "delheader"):
        unedited = apply_edits(MESSAGE, attrs, skip=skip)
        eml.write_bytes(unedited)
        assert perl_verify(eml, RECORDS)[-1].startswith("result: fail"), skip
        assert not dkimpy_verify(unedited, RECORDS)
    assert sink.messages == []                           # the client delivers
    line = wait_for(lambda: next((x for x in daemon.logfile_text().splitlines()
                                  if " Passed UNCHECKED " in x), None), what="the Passed line")
    assert re.search(r", dkim_new=anchor:anchor\.test, \d+ ms$", line), line
    assert "dkim: signing (author), From: <alice@anchor.test> (From:<alice@anchor.test>), " \
           "a=rsa-sha256, c=relaxed/simple, d=anchor.test, s=anchor, ttl=1814400, x=" \
        in daemon.logfile_text()


def test_pdp_mail_not_originating_is_not_signed(amavisd, sink, tmp_path):
    """AM.PDP mail is originating unless a bank of the request says otherwise (4.3):
    here the client-IP bank of the unknown client (0.0.0.0)."""
    daemon, path = start(amavisd, tmp_path, SIGNING + "client_ipaddr_policy = [['0.0.0.0/0'],"
                         " 'OUTSIDE']\npolicy_bank['OUTSIDE'] = {'originating': 0}\n")
    attrs, _ = submit(path, tmp_path, "pdp2", MESSAGE, ["bob@anchor.test"])
    assert attrs["return_value"] == ["continue"], attrs
    assert attrs["insheader"] == ["0 X-Virus-Scanned Debian%20amavis%20at%20anchor.test"]
    line = wait_for(lambda: next((x for x in daemon.logfile_text().splitlines()
                                  if " Passed UNCHECKED " in x), None), what="the Passed line")
    assert "dkim_new=" not in line
