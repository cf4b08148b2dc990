# tests: amavisd-nanny/amavisd_nanny/main.py
"""amavisd-nanny lines, bars, kill loop and options (spec/monitoring.md section 3).

Expected lines are written out by hand from the spec's samples, with an injected
clock, liveness check, kill and sleep, so no real process is signalled.
"""

from __future__ import annotations

import io
import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "amavisd-nanny"))

from amavisd_nanny import main as nanny_main
from amavisd_nanny.main import (
    HEADER,
    Nanny,
    advance_history,
    busy_bar,
    format_age,
    idle_bar,
)

from amavisd.stats import DEFAULT_FILENAME, SlotInfo, StatsSegment, is_idle

NOW = 1_796_007_700.0
HEADER_TEXT = ("process-id task-id     elapsed in    elapsed-bar (dots indicate idle)\n"
               "           or state   idle or busy\n")
LEGEND_TEXT = "States legend:\n  A  accepted a connection\n"
USAGE_TEXT = "Usage: amavisd-nanny [-c <count>] [-w <wait-interval>]\n"


def child(pid: int, age: float, state: str = "", task_id: str = "", index: int = 0,
          now: float = NOW) -> SlotInfo:
    return SlotInfo(pid=pid, state=state, timestamp=now - age, task_id=task_id,
                    heartbeat=now, busy=not is_idle(state, task_id), index=index)


class World:
    """Fake clock, processes and signals for one nanny run."""

    def __init__(self, now: float = NOW, dead: set[int] | None = None) -> None:
        self.now = now
        self.dead = set(dead or ())
        self.kills: list[tuple[int, int]] = []
        self.sleeps: list[float] = []
        self.die_on: dict[int, int] = {}          # pid -> signal that kills it
        self.out = io.StringIO()
        self.err = io.StringIO()

    def alive(self, pid: int) -> bool:
        return pid not in self.dead

    def kill(self, pid: int, sig: int) -> None:
        self.kills.append((pid, sig))
        if self.die_on.get(pid) == sig:
            self.dead.add(pid)

    def sleep(self, secs: float) -> None:
        self.sleeps.append(secs)
        self.now += secs

    def nanny(self, path: str = "/nonexistent/seg") -> Nanny:
        return Nanny(path, self.out, self.err, clock=lambda: self.now, sleep=self.sleep,
                     alive=self.alive, kill=self.kill)

    def lines(self) -> list[str]:
        text = self.err.getvalue()
        self.err.seek(0)
        self.err.truncate()
        return text.splitlines()


# ---- formats (3.2) -------------------------------------------------------------------


@pytest.mark.parametrize("age, text", [
    (0.3, "  0:00:00"), (77.9, "  0:01:17"), (700, "  0:11:40"),
    (86399, "  23:59:59"), (90062.1, "1d1:01:02"),
])
def test_age_format(age, text):
    assert format_age(age) == text


def test_idle_bar_is_int_age_dots_capped_at_35():
    assert idle_bar(0.9) == ""
    assert idle_bar(14.2) == ".........:...."
    assert idle_bar(1000) == ".........:.........:.........:....."


def test_busy_bar_hides_a_letter_on_a_tick_and_marks_overflow():
    assert busy_bar(advance_history("", 9.6, "d")) == "=========:"
    assert busy_bar(advance_history("", 0.2, "A")) == "A"
    assert busy_bar(advance_history("", 50, "S")) == "=========:=========:=========:===S>"


def test_busy_bar_keeps_spaces_of_the_template():
    assert busy_bar("=  m") == "===m"


# ---- per-process lines (3.2) ------------------------------------------------------------


def test_idle_busy_and_dot_lines_match_the_spec_samples():
    w = World()
    w.nanny().report([
        child(11982, 14.2, "."),
        child(11979, 77.3),
        child(11980, 6.7, "m", "11980-03"),
    ])
    assert w.lines() == [
        "PID 11979:               0:01:17 .........:.........:.........:.....",
        "PID 11980: 11980-03      0:00:06 ======m",
        "PID 11982: .             0:00:14 .........:....",
    ]


def test_small_pids_are_zero_padded_and_sorted_numerically():
    w = World()
    w.nanny().report([child(100000, 5), child(1234, 5)])
    assert [ln[:10] for ln in w.lines()] == ["PID 01234:", "PID 100000"]


def test_went_away_line_then_the_slot_is_not_shown_again():
    w = World(dead={11848, 99998})
    n = w.nanny()
    kids = [child(11848, 10.4), child(99998, 22.6, "V", "99998-07", index=1)]
    n.report(kids)
    assert w.lines() == [
        "PID 11848:             went away   0:00:10 .........:",
        "PID 99998: 99998-07    went away   0:00:22 =========:=========:==V",
    ]
    n.report(kids)                                 # master has not folded yet
    assert w.lines() == []
    n.report([])                                   # folded
    w.dead.clear()
    n.report([child(11848, 3.0, index=4)])         # pid reused elsewhere: shown
    assert w.lines() == ["PID 11848:               0:00:03 ..."]


def test_busy_history_grows_across_polls_and_resets_on_a_new_timestamp():
    w = World()
    n = w.nanny()
    t0 = NOW - 2.2
    for state, expect in (("d", "=d"), ("d", "=dd"), ("V", "=ddV")):
        n.report([child(500, w.now - t0, state, "00500-01", now=w.now)])
        assert w.lines() == [f"PID 00500: 00500-01    {format_age(w.now - t0)} {expect}"]
        w.now += 1.0
    n.report([child(500, 0.4, "m", "00500-01-2", now=w.now)])      # new transaction
    assert w.lines() == ["PID 00500: 00500-01-2    0:00:00 m"]


def test_idle_resets_the_history():
    w = World()
    n = w.nanny()
    t0 = NOW - 3.0
    n.report([child(7, w.now - t0, "m", "00007-01", now=w.now)])
    w.now += 1.0
    n.report([child(7, w.now - t0, ".", now=w.now)])
    w.now += 1.0
    n.report([child(7, w.now - t0, "=", "00007-01", now=w.now)])
    assert w.lines() == [
        "PID 00007: 00007-01      0:00:03 ==m",
        "PID 00007: .             0:00:04 ....",
        "PID 00007: 00007-01      0:00:05 =====",       # not "==mm="
    ]


def test_fresh_run_on_a_long_busy_pid_shows_equals_then_the_letter():
    w = World()
    w.nanny().report([child(11981, 39.0, "S", "11981-01-2")])
    assert w.lines() == ["PID 11981: 11981-01-2    0:00:39 =========:=========:=========:===S>"]


# ---- stuck detection and the kill loop (3.3) ------------------------------------------


def test_busy_over_600s_is_terminated_then_reported_killed_with_its_label():
    w = World()
    n = w.nanny()
    pending = n.report([child(11981, 700.2, "V", "11981-05")])
    assert w.kills == [(11981, signal.SIGTERM)]
    assert pending == {11981: "11981-05"}

    def sleep(secs: float) -> None:
        w.sleeps.append(secs)
        if len(w.sleeps) == 2:
            w.dead.add(11981)

    n.sleep = sleep
    n.wait_for_kills(pending)
    assert w.lines() == [
        "PID 11981: 11981-05    terminated   0:11:40 =========:=========:=========:===V>",
        "PID 11981: sending SIGKILL in 29 s",
        "Waiting for the process to terminate: 11981",
        "PID 11981: 11981-05    successfully killed",
    ]
    assert w.sleeps == [1.0, 2.0]


def test_busy_at_600s_is_not_terminated():
    w = World()
    w.nanny().report([child(5, 600.0, "=", "00005-01")])
    assert w.kills == []


def test_idle_over_3h_is_terminated():
    w = World()
    w.die_on[42] = signal.SIGTERM
    n = w.nanny()
    pending = n.report([child(42, 10800.5)])
    n.wait_for_kills(pending)
    assert w.lines() == [
        "PID 00042:             terminated   3:00:00 .........:.........:.........:.....",
        "PID 00042:             successfully killed",
    ]


def test_sigkill_after_30_rounds():
    w = World()
    w.die_on[9] = signal.SIGKILL
    n = w.nanny()
    n.wait_for_kills(n.report([child(9, 601, "=", "00009-01")]))
    assert w.kills == [(9, signal.SIGTERM), (9, signal.SIGKILL)]
    lines = w.lines()
    assert lines[1:3] == ["PID 00009: sending SIGKILL in 29 s",
                          "Waiting for the process to terminate: 00009"]
    assert "PID 00009: sending SIGKILL in 0 s" in lines
    assert lines[-1] == "PID 00009: 00009-01    successfully killed"
    assert w.sleeps == [1.0] + [2.0] * 31


# ---- whole runs against a real segment (3.1) -----------------------------------------


def test_run_prints_header_once_and_a_blank_line_per_poll(tmp_path):
    path = str(tmp_path / DEFAULT_FILENAME)
    seg = StatsSegment.create(path, 2, os.getpid())
    w = World()
    wr = seg.writer(1, 4321)
    wr.child_started()
    slot_ts = seg.slot_info(1).timestamp
    w.now = slot_ts + 65.5
    w.nanny(path).run(count=2, wait=0.5)
    assert w.out.getvalue() == HEADER_TEXT + "\n\n"
    assert w.lines() == [
        "PID 04321:               0:01:05 .........:.........:.........:.....",
        "PID 04321:               0:01:06 .........:.........:.........:.....",
    ]
    assert w.sleeps == [0.5]
    seg.close()


def test_missing_segment_is_reported_and_retried_without_using_the_count(tmp_path):
    path = str(tmp_path / DEFAULT_FILENAME)
    w = World()
    n = w.nanny(path)

    def sleep(secs: float) -> None:
        w.sleeps.append(secs)
        if len(w.sleeps) == 2:
            StatsSegment.create(path, 1, os.getpid()).close()

    n.sleep = sleep
    n.run(count=1, wait=2.0)
    assert w.lines() == [f"No stats segment {path}; waiting..."] * 2
    assert w.out.getvalue() == HEADER_TEXT + "\n"


def test_a_recreated_segment_is_reopened(tmp_path):
    path = str(tmp_path / DEFAULT_FILENAME)
    StatsSegment.create(path, 1, os.getpid()).close()
    w = World()
    n = w.nanny(path)
    n.sleep = lambda secs: StatsSegment.create(path, 1, os.getpid()).close()
    n.run(count=2, wait=1.0)
    assert w.lines() == [f"Reopening stats segment {path}"]


def test_header_constant_matches_the_spec():
    assert HEADER == HEADER_TEXT


# ---- options (3.1) -------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["-x"], ["-c"], ["-c", "abc"], ["-w", "soon"], ["extra"]])
def test_bad_option_prints_legend_to_stdout_and_usage_to_stderr(argv, capsys):
    assert nanny_main(argv) != 0
    out, err = capsys.readouterr()
    assert out.startswith(LEGEND_TEXT)
    assert "  sp space indicates idle (elapsed bar is showing dots)\n" in out
    assert out.endswith("\n\n")
    assert err.startswith(USAGE_TEXT)


def test_count_zero_prints_only_the_header(tmp_path, capsys):
    assert nanny_main(["-c", "0", "-w", "0.1", "-d", str(tmp_path)]) == 0
    assert capsys.readouterr() == (HEADER_TEXT, "")


def test_db_home_from_the_environment(tmp_path, monkeypatch, capsys):
    StatsSegment.create(str(tmp_path / DEFAULT_FILENAME), 1, os.getpid()).close()
    monkeypatch.setenv("AMAVISD_DB_HOME", str(tmp_path))
    assert nanny_main(["-c", "1"]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (HEADER_TEXT + "\n", "")


@pytest.mark.parametrize("flag", [["--db-home"], ["--db-home="], ["-d"]])
def test_db_home_option_overrides_the_environment(flag, tmp_path, monkeypatch, capsys):
    """--db-home DIR (and its short alias -d) names the directory of the segment."""
    home = tmp_path / "db"
    home.mkdir()
    seg = StatsSegment.create(str(home / DEFAULT_FILENAME), 1, os.getpid())
    seg.writer(0, 4321).child_started()
    monkeypatch.setenv("AMAVISD_DB_HOME", str(tmp_path / "elsewhere"))
    args = [flag[0] + str(home)] if flag[0].endswith("=") else [*flag, str(home)]
    assert nanny_main(["-c", "1", *args]) == 0
    out, err = capsys.readouterr()
    assert out == HEADER_TEXT + "\n"
    assert err.startswith("PID 04321: ")
    seg.close()
