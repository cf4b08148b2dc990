# tests: DKIM signing through Debian's amavisd-milter (actions/dkim_sign.sign_for_client)
"""The milter path of pipeline.md 24.3 end to end, as in t/integration/test_milter.py:

    miltertest (the MTA side) -> amavisd-milter (Debian) -> our AM.PDP socket

The milter must ask the MTA to insert our X-Virus-Scanned and then, on top, the
DKIM-Signature; the message the MTA would deliver (those two fields above the
message it received) must verify with Perl's Mail::DKIM.  The topmost Received of
the milter's copy (amavisd-milter's stand-in for the MTA's own) is not signed.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from t.helpers.daemon import free_port, start_daemon
from t.helpers.dkim import ANCHOR_PEM, perl_verify
from t.integration.conftest import base_config, wait_for
from t.integration.test_dkim_pdp import MESSAGE, RECORDS
from t.integration.test_golden import PROFILE_PASS
from t.integration.test_milter import (
    MILTER,
    MILTERTEST,
    check,
    miltertest,
    private_folder,
    start_milter,
    stop_milter,
    transaction,
)
from t.sink import Sink

pytestmark = pytest.mark.skipif(
    not (os.access(MILTER, os.X_OK) and os.access(MILTERTEST, os.X_OK)),
    reason="Debian's amavisd-milter and miltertest packages are not installed")

X_LINE = "Debian amavis at anchor.test"
CONFIG = PROFILE_PASS + f"""
bypass_virus_checks_maps = []         # asks for X-Virus-Scanned
unix_socketname = {{sock!r}}
unix_socket_mode = 0o660
interface_policy = {{{{'SOCK': 'AM.PDP-SOCK'}}}}
policy_bank = {{{{'AM.PDP-SOCK': {{{{'protocol': 'AM.PDP'}}}}}}}}
enable_dkim_signing = 1
dkim_key('anchor.test', 'anchor', {str(ANCHOR_PEM)!r})
dkim_signature_options_bysender_maps = [{{{{'.': {{{{'ttl': 21 * 24 * 3600}}}}}}}}]
"""
#: the message as the MTA received it: without our X-Virus-Scanned test line
RECEIVED = MESSAGE.replace(b"X-Virus-Scanned: by someone else\n", b"")
MTA_RECEIVED = (b"Received: from client.anchor.test (client.anchor.test [192.0.2.10])\n"
                b"\tby mx2.anchor.test (Postfix) with ESMTP id QIDK\n"
                b"\tfor <bob@anchor.test>; Mon, 30 Nov 2026 03:01:56 +0000 (UTC)\n")


def test_milter_inserts_a_signature_that_verifies(tmp_path):
    root = private_folder("dkim-milter-")
    try:
        with Sink() as sink:
            sock = root / "home" / "amavisd.sock"
            daemon = start_daemon(base_config(root, free_port(), f"smtp:[127.0.0.1]:{sink.port}",
                                              CONFIG.format(sock=str(sock))), root)
            try:
                tempbase = root / "home" / "tmp"
                os.chmod(tempbase, 0o750)
                milter = start_milter(root, sock, tempbase)
                try:
                    _case(tmp_path, daemon, milter, sink)
                finally:
                    stop_milter(milter)
            finally:
                daemon.stop()
    finally:
        if os.environ.get("AMAVISD_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(root, ignore_errors=True)


def _case(tmp_path, daemon, milter, sink) -> None:
    script = transaction("QIDK", ["bob@anchor.test"], RECEIVED)
    script += check("x_virus_scanned", 'mt.eom_check(conn, MT_HDRINSERT, "X-Virus-Scanned",'
                    f' "{X_LINE}", 0)')
    script += 'local sig = mt.getheader(conn, "DKIM-Signature", 0)\n'
    script += check("signed_at_0", 'mt.eom_check(conn, MT_HDRINSERT, "DKIM-Signature", sig, 0)')
    script += check("changed", "mt.eom_check(conn, MT_HDRCHANGE)")
    script += check("appended", "mt.eom_check(conn, MT_HDRADD)")
    # the field body on one line: its LFs as <LF> (a folded body keeps them, 4.4)
    script += 'print("dkim=" .. string.gsub(tostring(sig), "\\n", "<LF>"))\n'
    got = miltertest(tmp_path, milter, script)
    value = got.pop("dkim").replace("<LF>", "\n")
    assert got == {"reply": "c", "x_virus_scanned": "true", "signed_at_0": "true",
                   "changed": "false", "appended": "false"}
    tags = dict(t.strip().split("=", 1) for t in re.sub(r"\s+", "", value).split(";") if t)
    assert tags["d"] == "anchor.test" and tags["s"] == "anchor"
    # amavisd-milter puts a Received of its own on top of the two of the message (the one
    # the MTA will write, but not byte for byte): that topmost one is left unsigned
    assert "QIDK: ADDHDR: Received: from client.anchor.test" in milter.log_text()
    assert tags["h"] == "message-id:subject:subject:date:date:from:from:received:received"
    log = milter.log_text()
    inserted = [x.split("insheader=0 ", 1)[1].split(" ", 1)[0] for x in log.splitlines()
                if "QIDK: insheader=0 " in x]
    assert inserted == ["X-Virus-Scanned", "DKIM-Signature"]      # the signature ends on top
    # what the MTA delivers: each insert at index 0 over its own Received and the message
    delivered = (f"DKIM-Signature: {value}\nX-Virus-Scanned: {X_LINE}\n".encode()
                 + MTA_RECEIVED + RECEIVED).replace(b"\n", b"\r\n")
    eml = tmp_path / "delivered.eml"
    eml.write_bytes(delivered)
    assert perl_verify(eml, RECORDS) == ["d=anchor.test s=anchor a=rsa-sha256 => pass",
                                         "result: pass"]
    eml.write_bytes(delivered.replace(b"see you.", b"see you!"))
    assert perl_verify(eml, RECORDS)[-1].startswith("result: fail")
    line = wait_for(lambda: next((x for x in daemon.logfile_text().splitlines()
                                  if " Passed CLEAN " in x), None), what="the Passed line")
    assert "Queue-ID: QIDK" in line and ", dkim_new=anchor:anchor.test, " in line, line
    assert sink.messages == []
