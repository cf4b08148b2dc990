# tests: amavisd-nanny/amavisd_nanny/main.py, amavisd/stats.py (against the real daemon)
"""amavisd-nanny against a running daemon: a busy child in state F, and a hung one.

The back end (t/sink.py) holds its reply to the end of DATA for a few seconds, so a
message stays in flight in state F (forwarding, a level-2 state: the daemon runs with
``nanny_details_level = 2``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

from amavisd.stats import DEFAULT_FILENAME, StatsSegment
from t.integration.conftest import Client, message, send_message, wait_for
from t.sink import Sink

DELAY = 4.0


def nanny(db_home, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amavisd_nanny.main", "-c", "1", "-w", "0",
                           "--db-home", str(db_home), *args],
                          capture_output=True, text=True, timeout=timeout)


def send_in_background(port: int) -> threading.Thread:
    def run() -> None:
        try:
            client = Client(port)
            client.reply()
            send_message(client, "alice@anchor.test", ["bob@anchor.test"], message("slow"))
        except (OSError, AssertionError, TimeoutError):
            pass                                   # the hung-child test kills it
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def forwarding(seg: StatsSegment, pid: int):
    info = next((c for c in seg.snapshot().children if c.pid == pid), None)
    return info if info is not None and info.state == "F" else None


def start(amavisd, slow: Sink, tmp_path):
    daemon = amavisd("nanny_details_level = 2", args=("-m", "1"),
                     forward=f"smtp:[127.0.0.1]:{slow.port}")
    (child,) = wait_for(lambda: len(daemon.children()) == 1 and daemon.children())
    db_home = tmp_path / "home" / "db"
    seg = StatsSegment.open_readonly(str(db_home / DEFAULT_FILENAME))
    return daemon, child, db_home, seg


def test_busy_child_shows_state_f_task_id_and_mail_id(amavisd, tmp_path):
    with Sink(data_delay=DELAY) as slow:
        daemon, child, db_home, seg = start(amavisd, slow, tmp_path)
        thread = send_in_background(daemon.port)
        info = wait_for(lambda: forwarding(seg, child), what="state F")
        out = nanny(db_home, "-v")
        assert out.returncode == 0, out.stderr
        (line,) = [x for x in out.stderr.splitlines() if x.startswith(f"PID {child:05d}: ")]
        assert re.fullmatch(rf"{child:05d}-\d\d", info.task_id), info
        task = re.escape(info.task_id)
        assert re.fullmatch(
            rf"PID {child:05d}: {task} +  0:00:0\d =*[=:F]"
            rf" mail_id={re.escape(info.mail_id)} state=F for \ds", line), line
        assert re.fullmatch(r"[A-Za-z0-9_-]{12}", info.mail_id)
        plain = nanny(db_home)                      # without -v: the Perl layout only
        assert re.search(rf"PID {child:05d}: {task} +  0:00:0\d =*[=:F]$",
                         plain.stderr, re.M), plain.stderr
        thread.join(DELAY + 10)
        assert len(slow.messages) == 1
        wait_for(lambda: seg.slot_info(0).mail_id == "", what="mail_id cleared when idle")
        seg.close()


def test_hung_child_over_busy_ttl_is_reported_killed_and_replaced(amavisd, tmp_path):
    with Sink(data_delay=DELAY) as slow:
        daemon, child, db_home, seg = start(amavisd, slow, tmp_path)
        send_in_background(daemon.port)
        info = wait_for(lambda: forwarding(seg, child), what="state F")
        os.kill(child, signal.SIGSTOP)              # hung while busy
        try:
            time.sleep(max(0.0, info.timestamp + 1.2 - time.time()))   # age > 1 s
            out = nanny(db_home, "--busy-ttl", "1", "--kill", timeout=90)
        finally:
            try:
                os.kill(child, signal.SIGCONT)      # never leave a stopped process behind
            except ProcessLookupError:
                pass
        assert out.returncode == 0, out.stderr
        lines = out.stderr.splitlines()
        key = f"PID {child:05d}: {info.task_id:<11} "
        terminated = next(i for i, x in enumerate(lines)
                          if x.startswith(key) and " terminated " in x)
        assert lines[terminated + 1] == f"{key}over its busy TTL (1 s), sending SIGTERM"
        assert lines[-1] == f"{key}successfully killed"
        assert not any("sending SIGKILL in 0 s" in x for x in lines)   # SIGCONT did it
        fresh = wait_for(lambda: [p for p in daemon.children() if p != child], timeout=15,
                         what="a replacement child")
        assert child not in daemon.children() and fresh
        seg.close()
