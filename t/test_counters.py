# tests: the counters of monitoring.md section 1.3 as the running daemon moves them
"""Outgoing mail, quarantine, decoders, log statistics and elapsed time, read
back from the stats segment after a known mix of messages; and no increment lost
across a child's SIGKILL, its fold and its respawn."""

from __future__ import annotations

import os
import signal
import threading

from amavisd.stats import StatsSegment
from t.integration.conftest import (  # noqa: F401 - the fixtures
    Client,
    amavisd,
    message,
    send_message,
    sink,
    tmp_path,
    wait_for,
)
from t.integration.test_content import PROFILE, mail, zip_bytes

ALICE = "alice@anchor.test"


def segment(tmp_path) -> StatsSegment:  # noqa: F811
    return StatsSegment.open_readonly(str(tmp_path / "home" / "db" / "amavisd-stats.mmap"))


def test_counters_after_clean_banned_and_rejected_mail(amavisd, sink, tmp_path):  # noqa: F811
    daemon = amavisd(PROFILE, args=("-m", "1"))
    client = Client(daemon.port)
    client.reply()
    reply = send_message(client, ALICE, ["bob@anchor.test"], message("clean"))
    assert reply[0].startswith("250 "), reply
    banned = mail("banned", [("pad.zip", zip_bytes([("run.exe", b"MZ" + bytes(300))]))])
    reply = send_message(client, ALICE, ["bob@anchor.test"], banned, ehlo="")
    assert "BANNED" in reply[0], reply
    reply = send_message(client, ALICE, ["bob@anchor.test", "rej1@anchor.test"],
                         message("rejected"), ehlo="")
    assert reply[0].startswith("250 "), reply          # rej1 refused by the next hop: DSN
    client.cmd("QUIT")
    seg = segment(tmp_path)
    c = wait_for(lambda: (s := seg.snapshot().counters)["InMsgs"] == 3
                 and s["OutMsgsSubmitDsn"] == 1 and s, what="3 messages counted")

    # outgoing mail: 2 forwarded by SMTP (the second to bob and rej1), 1 quarantined
    # to a local file, 1 DSN by SMTP; outcomes per recipient reply
    want = {
        "OutMsgs": 4, "OutMsgsRelay": 2, "OutMsgsProtoSMTPRelay": 2,
        "OutMsgsProtoSMTP": 3, "OutMsgsSubmit": 2, "OutMsgsProtoSMTPSubmit": 1,
        "OutMsgsProtoLocal": 1, "OutMsgsProtoLocalSubmit": 1,
        "OutMsgsSubmitQuar": 1, "OutMsgsSubmitDsn": 1, "OutMsgsSubmitNotif": 0,
        "OutMsgsProtoLMTP": 0, "OutMsgsProtoBSMTP": 0, "OutMsgsProtoPipe": 0,
        "OutMsgsDelivers": 4, "OutMsgsRejects": 1, "OutMsgsAttemptFails": 0,
        # one cached session carries all three transactions (protocols.md 5.6); its QUIT
        # comes at the rundown, after the last flush
        "OutConnNew": 1, "OutConnTransact": 3, "OutConnReuseRecent": 2, "OutConnQuit": 0,
        "QuarMsgs": 1, "QuarMsgsBanned": 1, "QuarMsgsVirus": 0,
        "QuarAttemptTempFails": 0, "QuarAttemptFails": 0,
        "OpsDec": 3, "OpsDecByMimeParser": 3, "OpsDecType-zip": 1,
        "OpsDecByArZipAttempt": 1, "OpsDecByArZip": 1,
    }
    assert {k: c.get(k, 0) for k in want} == want
    # sizes: the banned mail went to the quarantine, the two others to the next hop
    assert c["OutMsgsSizeRelay"] + c["OutMsgsSizeSubmitQuar"] == c["InMsgsSize"]
    assert c["QuarMsgsSize"] == c["QuarMsgsSizeBanned"] == c["OutMsgsSizeSubmitQuar"] > 0
    assert c["OutMsgsSizeSubmitQuar"] == c["OutMsgsSizeProtoLocalSubmit"]
    assert c["OutMsgsSizeSubmit"] == c["OutMsgsSizeSubmitQuar"] + c["OutMsgsSizeSubmitDsn"]
    assert c["OutMsgsSize"] == c["OutMsgsSizeRelay"] + c["OutMsgsSizeSubmit"]
    assert c["OutMsgsSizeProtoSMTP"] == c["OutMsgsSizeRelay"] + c["OutMsgsSizeSubmitDsn"]
    # log statistics: cumulative "or more severe" counts, levels partition the entries
    log = [c[f"LogEntries{x}"] for x in ("Crit", "Err", "Warning", "Notice", "Info",
                                         "Debug")]
    assert log == sorted(log) and log[-1] == c["LogEntries"]
    assert sum(c[f"LogEntriesLevel{i}"] for i in range(6)) == c["LogEntries"]
    assert c["LogEntriesLevel0"] == c["LogEntriesNotice"]
    assert c["LogEntriesNotice"] >= 2               # the main lines of messages 1 and 2
    assert c["LogEntriesLevel2"] >= 2               # their TIMING lines
    assert c["LogLines"] == c["LogEntries"]         # $LOGFILE: one line per entry
    assert c["LogEntriesEmerg"] == c["LogEntriesAlert"] == 0
    # elapsed time: whole milliseconds, parts within the total
    parts = sum(c[f"TimeElapsed{x}"] for x in ("Receiving", "Decoding", "VirusCheck",
                                               "SpamCheck", "Sending"))
    assert c["TimeElapsedTotal"] >= parts - 5
    assert c["TimeElapsedVirusCheck"] == c["TimeElapsedSpamCheck"] == 0   # bypassed


def test_no_increment_lost_across_kill_fold_and_respawn(amavisd, sink, tmp_path):  # noqa: F811
    daemon = amavisd("max_requests = 7\n", args=("-m", "2"))
    total, per_thread = 40, 20
    permits = threading.Semaphore(2)       # the killer takes both: no message in flight
    sent: list[int] = []
    errors: list[BaseException] = []

    def sender(tag: str) -> None:
        try:
            for n in range(per_thread):
                with permits:
                    client = Client(daemon.port)
                    assert client.reply()[0].startswith("220 ")
                    reply = send_message(client, ALICE, ["bob@anchor.test"],
                                         message(f"{tag}{n}"))
                    assert reply[0].startswith("250 "), reply
                    client.cmd("QUIT")
                    client.close()
                    sent.append(1)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    wait_for(lambda: len(sent) >= 15 or errors, timeout=60, what="15 messages")
    permits.acquire()
    permits.acquire()
    try:
        victim = daemon.children()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in daemon.children() and len(daemon.children()) == 2,
                 timeout=20, what="respawn")
    finally:
        permits.release()
        permits.release()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(sent) == total
    seg = segment(tmp_path)
    c = wait_for(lambda: (s := seg.snapshot().counters)["InMsgs"] >= total and s,
                 timeout=20, what="all counted")
    assert c["InMsgs"] == total
    assert c["InMsgsRecips"] == total
    assert c["OutMsgsRelay"] == c["OutMsgsDelivers"] == total
