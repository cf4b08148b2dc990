# tests: amavisd (daemon process) with spam checks, against the golden case full/gtube
"""GTUBE through our daemon with spamd, as the Perl amavisd in profile full.

Same input as the golden case (t/data/golden/full/gtube.txt): the delivered
header fields X-Spam-Flag/-Score/-Level/-Status and the subject tag, the main
log line (``Passed SPAM {RelayedTaggedInbound,Quarantined}``, ``Hits: 999``)
must match, up to what spamd cannot tell (autolearn) and the per-run values.
With spamd down the message passes and the log says why.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from t.helpers.daemon import free_port
from t.helpers.spamd import running_spamd, spamd_available
from t.integration.conftest import Client, wait_for
from t.integration.test_golden import mask, replay, sections

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "full" / "gtube.txt"
PROFILE_FULL = """
from amavisd.checks.banned import DEBIAN_BANNED_FILENAME_RE as _DEBIAN_BANNED
banned_filename_re = _DEBIAN_BANNED
final_virus_destiny = D_DISCARD
final_banned_destiny = D_DISCARD
final_spam_destiny = D_PASS
final_bad_header_destiny = D_PASS
QUARANTINEDIR = MYHOME + '/virusmails'
quarantine_subdir_levels = 1
X_HEADER_LINE = 'Debian amavis at anchor.test'
bypass_virus_checks_maps = []
bypass_spam_checks_maps = []
sa_tag_level_deflt = 2.0
sa_tag2_level_deflt = 6.31
sa_kill_level_deflt = 6.31
sa_dsn_cutoff_level = 10
sa_spam_subject_tag = '***SPAM*** '
sa_mail_body_size_limit = 200 * 1024
spamd_address = [{address!r}]
"""

pytestmark = pytest.mark.skipif(not spamd_available(), reason="no /usr/sbin/spamd")


@pytest.fixture(scope="module")
def spamd():
    with running_spamd() as instance:
        yield instance


def send_gtube(daemon) -> dict[str, str]:
    golden = sections(GOLDEN.read_text())
    data = golden["INPUT MESSAGE"].rstrip("\n").encode().replace(b"\n", b"\r\n") + b"\r\n"
    replay(Client(daemon.port), golden, data)
    return golden


def spam_fields(head: str) -> list[str]:
    fields = re.split(r"\n(?![ \t])", head)
    return [" ".join(f.split()) for f in fields if f.startswith(("X-Spam-", "Subject:"))]


def without_autolearn(fields: list[str]) -> list[str]:
    return [re.sub(r" autolearn=.*", "", f) for f in fields]


def test_gtube_golden_full(amavisd, sink, spamd):
    daemon = amavisd(PROFILE_FULL.format(address=spamd.address))
    golden = send_gtube(daemon)
    log = wait_for(lambda: " Passed " in (t := daemon.logfile_text()) and t,
                   what="the main log line")
    want_log = [mask(x) for x in golden["LOG LINES"].splitlines() if " Passed " in x]
    got_log = [mask(x) for x in log.splitlines() if " Passed " in x]
    assert got_log == want_log
    assert len(sink.messages) == 1
    head = sink.messages[0].data.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n", "\n")
    want = spam_fields(golden["delivered header section"])
    assert without_autolearn(spam_fields(head)) == without_autolearn(want)


def test_spamd_down_passes_unscored(amavisd, sink):
    daemon = amavisd(PROFILE_FULL.format(address=f"127.0.0.1:{free_port()}"))
    send_gtube(daemon)
    log = wait_for(lambda: " Passed " in (t := daemon.logfile_text()) and t,
                   what="the main log line")
    assert re.search(r"SpamAssassin client failed: Can't connect to spamd", log)
    assert re.search(r"Passed CLEAN \{RelayedInbound\}, .* Hits: 0, ", log)
    head = sink.messages[0].data.split(b"\r\n\r\n", 1)[0].decode()
    assert "X-Spam-" not in head and "Subject: Test: GTUBE" in head
