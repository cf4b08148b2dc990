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
    assert w.kills == [(11981, signal.SIGTERM), (11981, signal.SIGCONT)]
    assert pending == {11981: "11981-05"}

    def sleep(secs: float) -> None:
        w.sleeps.append(secs)
        if len(w.sleeps) == 2:
            w.dead.add(11981)

    n.sleep = sleep
    n.wait_for_kills(pending)
    assert w.lines() == [
        "PID 11981: 11981-05    terminated   0:11:40 =========:=========:=========:===V>",
        "PID 11981: 11981-05    over its busy TTL (600 s), sending SIGTERM",
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
        "PID 00042:             over its idle TTL (10800 s), sending SIGTERM",
        "PID 00042:             successfully killed",
    ]


def test_sigkill_after_30_rounds():
    w = World()
    w.die_on[9] = signal.SIGKILL
    n = w.nanny()
    n.wait_for_kills(n.report([child(9, 601, "=", "00009-01")]))
    assert w.kills == [(9, signal.SIGTERM), (9, signal.SIGCONT), (9, signal.SIGKILL)]
    lines = w.lines()
    assert lines[2:4] == ["PID 00009: sending SIGKILL in 29 s",
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


# ---- kill policy, TTL options and -v (beyond the Perl tool) --------------------------------


def test_no_kill_only_reports_a_child_over_its_ttl():
    w = World()
    n = w.nanny()
    n.do_kill = False
    pending = n.report([child(11981, 700.2, "V", "11981-05"), child(42, 10801)])
    assert pending == {} and w.kills == []
    assert w.lines() == [
        "PID 00042:               3:00:01 .........:.........:.........:.....",
        "PID 00042:             over its idle TTL (10800 s), not killed (--no-kill)",
        "PID 11981: 11981-05      0:11:40 =========:=========:=========:===V>",
        "PID 11981: 11981-05    over its busy TTL (600 s), not killed (--no-kill)",
    ]


def test_busy_and_idle_ttl_are_configurable():
    w = World()
    w.die_on.update({5: signal.SIGTERM, 6: signal.SIGTERM})
    n = w.nanny()
    n.busy_ttl, n.idle_ttl = 1.0, 30.0
    pending = n.report([child(5, 1.5, "F", "00005-01"), child(6, 31.0, index=1),
                        child(7, 0.9, "F", "00007-01", index=2), child(8, 29.0, index=3)])
    assert pending == {5: "00005-01", 6: ""}
    assert [k for k in w.kills if k[1] == signal.SIGTERM] == [(5, signal.SIGTERM),
                                                              (6, signal.SIGTERM)]
    lines = w.lines()
    assert "PID 00005: 00005-01    over its busy TTL (1 s), sending SIGTERM" in lines
    assert "PID 00006:             over its idle TTL (30 s), sending SIGTERM" in lines
    assert lines.index("PID 00005: 00005-01    over its busy TTL (1 s), sending SIGTERM") < \
        lines.index("PID 00006:             terminated   0:00:31 .........:.........:.........:.")


def test_the_announcement_comes_before_the_signal():
    w = World()
    n = w.nanny()
    seen: list[str] = []

    def kill(pid: int, sig: int) -> None:
        seen.append(w.err.getvalue())
        w.kills.append((pid, sig))

    n.kill = kill
    n.report([child(3, 601, "S", "00003-01")])
    assert seen[0].endswith("PID 00003: 00003-01    over its busy TTL (600 s), sending SIGTERM\n")
    assert w.kills == [(3, signal.SIGTERM), (3, signal.SIGCONT)]


def test_verbose_appends_mail_id_state_and_time_in_state_to_busy_lines():
    w = World()
    n = w.nanny()
    n.verbose = True
    busy = child(500, 6.7, "F", "00500-01")._replace(mail_id="a1B2c3D4e5F6",
                                                    state_since=NOW - 2.6)
    fresh = child(501, 0.5, "m", "00501-01", index=1)       # no mail_id, since unknown
    n.report([busy, fresh, child(502, 14.2, ".", index=2)])
    assert w.lines() == [
        "PID 00500: 00500-01      0:00:06 ======F mail_id=a1B2c3D4e5F6 state=F for 2s",
        "PID 00501: 00501-01      0:00:00 m mail_id=- state=m for -",
        "PID 00502: .             0:00:14 .........:....",
    ]


def test_slot_records_mail_id_and_when_the_current_state_began(tmp_path, monkeypatch):
    seg = StatsSegment.create(str(tmp_path / DEFAULT_FILENAME), 1, os.getpid())
    wr = seg.writer(0, 4321, nanny_details_level=2)
    clock = [1000.0]
    monkeypatch.setattr("amavisd.stats.time.time", lambda: clock[0])
    wr.child_started()
    assert seg.slot_info(0).state_since == 1000.0 and seg.slot_info(0).mail_id == ""
    clock[0] = 1005.0
    wr.set_state("m", "04321-01")
    clock[0] = 1006.25
    wr.set_state("=", "04321-01")
    wr.set_state("G", "04321-01")
    wr.set_mail_id("a1B2c3D4e5F6")
    clock[0] = 1009.0
    wr.set_state("F")                              # no task id: the slot keeps its own
    clock[0] = 1011.0
    wr.set_state("F", "04321-01")                  # same state again: since unchanged
    info = seg.slot_info(0)
    assert (info.state, info.task_id, info.mail_id) == ("F", "04321-01", "a1B2c3D4e5F6")
    assert info.state_since == pytest.approx(1009.0, abs=0.11)
    wr.set_state(".", None)
    info = seg.slot_info(0)
    assert info.mail_id == "" and info.state_since == pytest.approx(1011.0, abs=0.11)
    wr.set_mail_id("x" * 20)                       # longer ids are cut to 12 bytes
    assert seg.slot_info(0).mail_id == "x" * 12
    wr.child_exiting()
    assert seg.slot_info(0).mail_id == ""
    seg.close()


def test_a_slot_without_the_new_fields_reads_as_unknown(tmp_path):
    seg = StatsSegment.create(str(tmp_path / DEFAULT_FILENAME), 1, os.getpid())
    seg.writer(0, 4321).child_started()
    off = seg._slot_off(0)
    seg._b[off + 112:off + 128] = bytes(16)         # what an older writer leaves
    info = seg.slot_info(0)
    assert (info.mail_id, info.state_since) == ("", 0.0)
    seg.close()


def test_options_parse_kill_policy_ttls_and_verbose():
    from amavisd_nanny.main import _parse_args
    o = _parse_args(["-c", "1"])
    assert (o.kill, o.busy_ttl, o.idle_ttl, o.verbose) == (True, 600, 10800, False)
    o = _parse_args(["--no-kill", "--busy-ttl", "1.5", "--idle-ttl=60", "-v"])
    assert (o.kill, o.busy_ttl, o.idle_ttl, o.verbose) == (False, 1.5, 60.0, True)
    assert _parse_args(["--no-kill", "--kill", "--verbose"])[3:] == (True, 600, 10800, True)


@pytest.mark.parametrize("argv", [["--busy-ttl", "x"], ["--idle-ttl", "-1"],
                                  ["--busy-ttl", "inf"], ["--kill=1"]])
def test_bad_kill_policy_options_are_usage_errors(argv, capsys):
    assert nanny_main(argv) != 0
    assert capsys.readouterr().err.startswith(USAGE_TEXT)


def test_main_passes_the_options_to_the_nanny(tmp_path, capsys):
    seg = StatsSegment.create(str(tmp_path / DEFAULT_FILENAME), 1, os.getpid())
    wr = seg.writer(0, os.getpid(), nanny_details_level=2)    # our own pid: alive
    wr.child_started()
    wr.set_state("m", "12345-01")
    wr.set_mail_id("a1B2c3D4e5F6")
    seg._d[(seg._slot_off(0) + 16) // 8] -= 700    # 700 s old: over the busy TTL
    assert nanny_main(["-c", "1", "-d", str(tmp_path), "--no-kill", "-v"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("PID ") and "mail_id=a1B2c3D4e5F6 state=m for 0s" in err[0]
    assert err[1].endswith("12345-01    over its busy TTL (600 s), not killed (--no-kill)")
    seg.close()
