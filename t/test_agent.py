# tests: amavisd-agent/amavisd_agent/main.py, amavisd-agent/amavisd_agent/prometheus.py
"""amavisd-agent: text layout, rates, options, Prometheus endpoint (spec/monitoring.md 2).

Expected lines are written by hand from the spec: the layout and printf formats of
2.2, the rate rules of 2.3 and the sample of 2.4.  The clock is injected, so uptime
and windows are exact.  The last tests run the real daemon and the tool as a
subprocess, as an operator would.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AGENT_DIR = REPO / "amavisd-agent"
sys.path.insert(0, str(AGENT_DIR))

from amavisd_agent import main as agent_main  # noqa: E402
from amavisd_agent.main import Agent, RateHistory, classify, format_ticks  # noqa: E402
from amavisd_agent.prometheus import (  # noqa: E402
    CHILD_STATES,
    STATE_NAMES,
    make_registry,
    metric_name,
    snake_name,
    start,
)
from prometheus_client import generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from amavisd.constants import NANNY_LEGEND  # noqa: E402
from amavisd.stats import COUNTER_NAMES, DEFAULT_FILENAME, StatsSegment  # noqa: E402
from t.helpers.daemon import free_port  # noqa: E402
from t.integration.conftest import (  # noqa: E402, F401 - fixtures
    Client,
    amavisd,
    message,
    send_message,
    sink,
    tmp_path,
    wait_for,
)

CREATED = 1_796_007_000.0
USAGE_TEXT = "Usage: amavisd-agent [-c <count>] [-w <wait-interval>]"

#: spec 2.4, typed in from the spec (the entropy line left out, see docs/monitoring.md).
SPEC_SAMPLE = [
    "sysContact      STR ",
    "sysDescr        STR amavis-2.13.0 (20230106)",
    "sysLocation     STR ",
    "sysName         STR mail.example.com",
    "sysObjectID     OID 1.3.6.1.4.1.15312.2",
    "sysUpTime       TimeTicks 3110 (0 days, 0:00:31.10)",
    "ContentCleanMsgs                         2    232/h    66.7 % (InMsgs)",
    "ContentCleanMsgsInbound                  1    116/h    50.0 % (InMsgsInbound)",
    "ContentSpamMsgs                          1    116/h    33.3 % (InMsgs)",
    "InMsgs                                   3    347/h   100.0 % (InMsgs)",
    "InMsgsRecipsLocal                        4    463/h    80.0 % (InMsgsRecips)",
    "InMsgsSize                               0MB    0MB/h 100.0 % (InMsgsSize)",
    "InMsgsStatusRelayedUntaggedOriginating      1    116/h    33.3 % (InMsgs)",
    "LogEntries                              27   3125/h   900.0 % (InMsgs)",
    "OutMsgsSubmitQuar                        1    116/h    25.0 % (OutMsgs)",
    "QuarMsgsSpam                             1    116/h   100.0 % (QuarMsgs)",
    "TimeElapsedSpamCheck                     0 s      0.047 s/msg (InMsgs)",
    "TimeElapsedTotal                         0 s      0.061 s/msg (InMsgs)",
    "sysServices                             64   7408/h     --- % ()",
]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, secs: float) -> None:
        self.sleeps.append(secs)
        self.now += secs


@pytest.fixture
def seg(tmp_path):  # noqa: F811 - the fixture
    s = StatsSegment.create(str(tmp_path / DEFAULT_FILENAME), 4, os.getpid(), created=CREATED)
    yield s
    s.close()


def agent(seg: StatsSegment, clock: Clock) -> Agent:
    return Agent(seg.path, io.StringIO(), io.StringIO(), clock=clock, sleep=clock.sleep,
                 sys_name="mail.example.com")


# ---- layout (2.2, 2.4) ------------------------------------------------------------------


def test_spec_sample_lines_appear_in_order_with_the_same_numbers(seg):
    """The counters behind spec 2.4 give its lines, in its order, 31.10 s after the start."""
    seg.writer(0, 1234).add_many({
        "InMsgs": 3, "InMsgsInbound": 2, "InMsgsRecips": 5, "InMsgsRecipsLocal": 4,
        "InMsgsSize": 4000, "ContentCleanMsgs": 2, "ContentCleanMsgsInbound": 1,
        "ContentSpamMsgs": 1, "InMsgsStatusRelayedUntaggedOriginating": 1,
        "LogEntries": 27, "OutMsgs": 4, "OutMsgsSubmitQuar": 1, "QuarMsgs": 1,
        "QuarMsgsSpam": 1, "TimeElapsedSpamCheck": 141, "TimeElapsedTotal": 183,
    })
    out = agent(seg, Clock(CREATED + 31.1005)).render(seg.snapshot())
    assert out.startswith("\n\n")
    got = out.splitlines()
    expected = ["", "", *SPEC_SAMPLE]
    assert got[:8] == expected[:8]                # the strings and sysUpTime, exactly
    it = iter(got[8:])                            # the spec's excerpt is shortened
    missing = [line for line in expected[8:] if line not in it]
    assert missing == []
    assert got[-1] == expected[-1]


def test_whole_poll_exactly(seg):
    """Order: strings, numeric keys in ASCII order, OpsDecType by value, then the groups.

    Zero counters are not shown; a group whose reference is 0 prints nothing but
    still causes the empty line; spammy.byOS is shown as spam.byOS.
    """
    seg.writer(0, 1234).add_many({
        "InMsgs": 4, "ContentVirusMsgs": 2, "ContentSpamMsgs": 1, "UserCounter1": 7,
        "OutMsgsSize": 3 * 1048576, "TimeElapsedDecoding": 500,
        "OpsDecType-asc": 2, "OpsDecType-zip": 5, "OpsDecType-exe": 2,
        "virus.byname.Eicar-Test-Signature": 1, "virus.byname.Foo": 3,
        "spammy.byOS.Linux": 1, "ham.byOS.Windows-XP": 9, "banned.byOS.Linux": 1,
    })
    clock = Clock(CREATED + 36.0)                 # 36 s up: value x 100 per hour
    assert agent(seg, clock).render(seg.snapshot()) == (
        "\n\n"
        "sysContact      STR \n"
        "sysDescr        STR amavis-2.13.0 (20230106)\n"
        "sysLocation     STR \n"
        "sysName         STR mail.example.com\n"
        "sysObjectID     OID 1.3.6.1.4.1.15312.2\n"
        "sysUpTime       TimeTicks 3600 (0 days, 0:00:36.00)\n"
        "ContentSpamMsgs                          1    100/h    25.0 % (InMsgs)\n"
        "ContentVirusMsgs                         2    200/h    50.0 % (InMsgs)\n"
        "InMsgs                                   4    400/h   100.0 % (InMsgs)\n"
        "OutMsgsSize                              3MB  300MB/h  --- % (InMsgsSize)\n"
        "TimeElapsedDecoding                      0 s      0.125 s/msg (InMsgs)\n"
        "UserCounter1                             7    700/h     --- % ()\n"
        "banned.byOS.Linux                        1    100/h    25.0 % (InMsgs)\n"
        "sysServices                             64   6400/h     --- % ()\n"
        "OpsDecType-zip                           5    500/h   125.0 % (InMsgs)\n"
        "OpsDecType-asc                           2    200/h    50.0 % (InMsgs)\n"
        "OpsDecType-exe                           2    200/h    50.0 % (InMsgs)\n"
        "\n"
        "virus.byname.Foo                         3    300/h  150.0 % (ContentVirusMsgs)\n"
        "virus.byname.Eicar-Test-Signature        1    100/h   50.0 % (ContentVirusMsgs)\n"
        "spam.byOS.Linux                          1    100/h  100.0 % (ContentSpamMsgs)\n"
    )


def test_fresh_segment_shows_only_the_sys_entries(seg):
    out = agent(seg, Clock(CREATED + 90061.5)).render(seg.snapshot())
    assert out.splitlines()[2:] == [
        "sysContact      STR ",
        "sysDescr        STR amavis-2.13.0 (20230106)",
        "sysLocation     STR ",
        "sysName         STR mail.example.com",
        "sysObjectID     OID 1.3.6.1.4.1.15312.2",
        "sysUpTime       TimeTicks 9006150 (1 days, 1:01:01.50)",
        "sysServices                             64      3/h     --- % ()",
    ]


def test_no_messages_means_no_time_per_message(seg):
    seg.writer(0, 1).add("TimeElapsedTotal", 2500)
    out = agent(seg, Clock(CREATED + 10)).render(seg.snapshot())
    assert "TimeElapsedTotal                         2 s        --- s/msg (InMsgs)\n" in out


@pytest.mark.parametrize("name, printer, ref", [
    ("ContentCleanMsgsInbound", "p1", "InMsgsInbound"),
    ("ContentVirusMsgs", "p1", "InMsgs"),
    ("CacheHitsVirusMsgs", "p1", "ContentVirusMsgs"),
    ("CacheMisses", "p1", "CacheAttempts"),
    ("OpsSqlSelect", "p1", "InMsgsRecips"),
    ("InMsgsSizeOriginating", "size", "InMsgsSize"),
    ("InMsgsRecipsLocal", "p1", "InMsgsRecips"),
    ("InMsgsRecipsOpenRelay", "p1", "InMsgsOpenRelay"),
    ("InMsgsRecips", "p1", "InMsgs"),
    ("InMsgsBounceKilled", "p1", "InMsgsBounce"),
    ("InMsgsBounce", "p1", "InMsgs"),
    ("OpsDecByMimeParser", "p1", "InMsgs"),
    ("OutMsgsSize", "size", "InMsgsSize"),
    ("OutMsgsSizeRelay", "size", "OutMsgsSize"),
    ("OutMsgs", "p1", "InMsgs"),
    ("OutConnNew", "p1", "OutMsgs"),
    ("QuarMsgsSize", "size", "InMsgsSize"),
    ("QuarMsgsSizeSpam", "size", "QuarMsgsSize"),
    ("QuarAttemptFails", "p1", "QuarMsgs"),
    ("LogEntries", "p1", "InMsgs"),
    ("LogLines", "p1", "LogEntries"),
    ("GenMailIdRetries", "p1", "InMsgs"),
    ("PenPalsAttempts", "p1", "InMsgsRecipsLocal"),
    ("PenPalsHits", "p1", "PenPalsAttempts"),
    ("PenPalsHitsMid", "p1", "PenPalsHits"),
    ("PenPalsSavedFromTag2", "p1", "PenPalsAttempts"),
    ("SqlAddrSenderAttempts", "p1", "InMsgs"),
    ("SqlAddrSenderHits", "p1", "SqlAddrSenderAttempts"),
    ("SqlAddrRecipAttempts", "p1", "InMsgsRecips"),
    ("SqlAddrRecipMisses", "p1", "SqlAddrRecipAttempts"),
    ("TimeElapsedTotal", "time", "InMsgs"),
    ("sysServices", "p1", None),
])
def test_reference_table_of_spec_2_2(name, printer, ref):
    assert classify(name) == (printer, ref)


def test_ticks_format():
    assert format_ticks(3110) == "0 days, 0:00:31.10"
    assert format_ticks(((2 * 24 + 3) * 3600 + 4 * 60 + 5) * 100 + 7) == "2 days, 3:04:05.07"


# ---- rates (2.3) ---------------------------------------------------------------------


def test_rates_use_the_lifetime_average_then_the_window_over_two_polls(seg):
    """First poll and a window under 150 s: value/uptime; from 150 s: delta/delta-t."""
    w = seg.writer(0, 1234)
    w.add_many({"InMsgs": 36, "TimeElapsedTotal": 3600})
    clock = Clock(CREATED + 3600.0)
    a = agent(seg, clock)

    def line(name: str) -> str:
        return next(x for x in a.render(seg.snapshot()).splitlines() if x.startswith(name + " "))

    assert line("InMsgs") == (
        "InMsgs                                  36     36/h   100.0 % (InMsgs)")
    clock.now += 100
    w.add_many({"InMsgs": 4, "TimeElapsedTotal": 2000})
    # 100 s apart is under half of 300 s: still the average since the start
    assert line("InMsgs") == (
        "InMsgs                                  40     39/h   100.0 % (InMsgs)")
    clock.now += 100
    w.add_many({"InMsgs": 10, "TimeElapsedTotal": 1000})
    # 200 s window from the first sample: 14 messages -> 252/h; 3000 ms / 14 msgs
    assert line("InMsgs") == (
        "InMsgs                                  50    252/h   100.0 % (InMsgs)")
    assert line("TimeElapsedTotal") == (
        "TimeElapsedTotal                         7 s      0.214 s/msg (InMsgs)")
    clock.now += 200
    # 400 s after the first sample it is dropped: window from the second one (300 s)
    assert line("InMsgs") == (
        "InMsgs                                  50    120/h   100.0 % (InMsgs)")


def test_history_keeps_every_sample_when_all_are_too_old():
    """If every stored sample is older than 300 s none is dropped (2.3 step 1)."""
    h = RateHistory()
    uptime = 10_000.0                             # the fallback would give value/10000
    h.update("X", 1000.0, 10, 0, uptime)
    w = h.update("X", 1400.0, 14, 0, uptime)      # 400 s apart, yet the first one stays
    assert (w.rate, w.dv) == (pytest.approx(4 / 400), 4)
    w = h.update("X", 1500.0, 15, 0, uptime)      # first dropped; 100 s left: fallback
    assert (w.rate, w.dv) == (pytest.approx(15 / uptime), 15)
    w = h.update("X", 1600.0, 17, 0, uptime)      # window 1400..1600
    assert (w.rate, w.dv) == (pytest.approx(3 / 200), 3)


# ---- the loop and the segment (2.1) ------------------------------------------------------


def test_missing_segment_is_reported_and_retried_without_using_the_count(tmp_path):  # noqa: F811 - the fixture
    path = str(tmp_path / DEFAULT_FILENAME)
    clock = Clock(CREATED)
    a = Agent(path, io.StringIO(), io.StringIO(), clock=clock, sys_name="h")

    def sleep(secs: float) -> None:
        clock.sleeps.append(secs)
        if len(clock.sleeps) == 2:
            StatsSegment.create(path, 1, os.getpid(), created=CREATED).close()

    a.sleep = sleep
    a.run(count=1, wait=10.0)
    assert a.err.getvalue() == f"No stats segment {path}; waiting...\n" * 2
    assert a.out.getvalue().startswith("\n\nsysContact      STR \n")
    assert a.out.getvalue().count("sysUpTime") == 1
    assert clock.sleeps == [10.0, 10.0]


def test_a_recreated_segment_is_reopened_with_a_fresh_history(seg):
    clock = Clock(CREATED + 1000)
    a = agent(seg, clock)
    seg.writer(0, 1).add("InMsgs", 100)

    def sleep(secs: float) -> None:
        clock.now += 200
        s = StatsSegment.create(seg.path, 1, os.getpid(), created=clock.now - 100)
        s.writer(0, 1).add("InMsgs", 5)
        s.close()

    a.sleep = sleep
    a.run(count=2, wait=200)
    assert a.err.getvalue() == f"Reopening stats segment {seg.path}\n"
    polls = a.out.getvalue().split("\n\n\n")
    # a kept history would give (5 - 100) / 200 s; a fresh one gives 5 in 100 s
    assert "InMsgs                                   5    180/h" in polls[-1]


def test_main_reads_db_home_from_option_then_environment(seg, tmp_path, monkeypatch, capsys):  # noqa: F811 - the fixture
    seg.writer(0, 1).add("InMsgs", 3)
    monkeypatch.setenv("AMAVISD_DB_HOME", str(tmp_path / "nowhere"))
    assert agent_main(["-c", "1", "--db-home", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^InMsgs +3 ", out, re.M) and err == ""
    monkeypatch.setenv("AMAVISD_DB_HOME", str(tmp_path))
    assert agent_main(["-c", "1", "-w", "0"]) == 0
    assert re.search(r"^InMsgs +3 ", capsys.readouterr().out, re.M)


def test_count_zero_or_negative_prints_nothing(tmp_path, capsys):  # noqa: F811 - the fixture
    assert agent_main(["-c", "0", "--db-home", str(tmp_path)]) == 0
    assert agent_main(["-c", "-3", "--db-home", str(tmp_path)]) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("argv", [["-x"], ["-c"], ["-c", "abc"], ["-w", "-1"],
                                  ["-w", "1e3"], ["extra"], ["--prometheus", "nohost"]])
def test_bad_option_prints_usage_and_exited(argv, capsys):
    assert agent_main(argv) == 64
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(USAGE_TEXT) and err.endswith("\nexited\n")


# ---- Prometheus ------------------------------------------------------------------------


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """GET /metrics and parse it: {family: {(sample name, labels...): value}}."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = {(s.name, *sorted(s.labels.items())): s.value for s in fam.samples}
    return out


def test_snake_names_are_valid_and_distinct():
    names = [metric_name(n) for n in COUNTER_NAMES]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"amavis_[a-z0-9_]+", n) for n in names)
    assert snake_name("InMsgsStatusRelayedUntaggedOriginating") == (
        "in_msgs_status_relayed_untagged_originating")
    assert snake_name("OpsLDAPSearch") == "ops_ldap_search"
    assert snake_name("OutMsgsProtoSMTPRelay") == "out_msgs_proto_smtp_relay"
    assert metric_name("TimeElapsedTotal") == "amavis_time_elapsed_total_seconds"


def test_every_busy_nanny_state_has_a_children_label():
    letters = {letter for letter, _ in NANNY_LEGEND} - {".", "sp"}
    assert set(STATE_NAMES) == letters
    assert len(set(STATE_NAMES.values())) == len(STATE_NAMES)


def test_metrics_endpoint_serves_counters_children_and_dynamic_names(seg):
    w = seg.writer(0, 1234)
    w.child_started()
    w.add_many({"InMsgs": 3, "InMsgsSize": 4000, "TimeElapsedTotal": 1500,
                "virus.byname.Eicar-Test-Signature": 2, "OpsDecType-zip": 1,
                "OpsDecBy7z": 4, "ham.byOS.Linux": 1})
    w2 = seg.writer(1, 1235)
    w2.child_started()
    w2.set_state("m", "01235-01")
    server, _thread = start(seg.path, "127.0.0.1", 0)
    try:
        m = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert m["amavis_up"] == {("amavis_up",): 1.0}
    assert m["amavis_in_msgs"] == {("amavis_in_msgs_total",): 3.0}
    assert m["amavis_in_msgs_size"] == {("amavis_in_msgs_size_total",): 4000.0}
    assert m["amavis_in_msgs_inbound"] == {("amavis_in_msgs_inbound_total",): 0.0}
    assert m["amavis_time_elapsed_total_seconds"] == {
        ("amavis_time_elapsed_total_seconds_total",): 1.5}
    assert m["amavis_virus_by_name"] == {
        ("amavis_virus_by_name_total", ("name", "Eicar-Test-Signature")): 2.0}
    assert m["amavis_ops_dec_type"] == {("amavis_ops_dec_type_total", ("type", "zip")): 1.0}
    assert m["amavis_by_os"] == {
        ("amavis_by_os_total", ("class", "ham"), ("os", "Linux")): 1.0}
    assert m["amavis_dynamic_counter"] == {
        ("amavis_dynamic_counter_total", ("name", "OpsDecBy7z")): 4.0}
    children = {dict(k[1:])["state"]: v for k, v in m["amavis_children"].items()}
    assert set(children) == set(CHILD_STATES)
    assert (children["idle"], children["mail"], sum(children.values())) == (1, 1, 2)
    assert m["amavis_start_time_seconds"] == {("amavis_start_time_seconds",): CREATED}
    assert len([f for f in m if f not in ("amavis_up",)]) > len(COUNTER_NAMES)


def test_metrics_without_a_segment_say_down_then_up_once_it_appears(tmp_path):  # noqa: F811 - the fixture
    path = str(tmp_path / DEFAULT_FILENAME)
    registry, collector = make_registry(path)
    text = generate_latest(registry).decode()
    assert "amavis_up 0.0" in text and "amavis_in_msgs_total" not in text
    StatsSegment.create(path, 1, os.getpid()).close()
    assert "amavis_up 1.0" in generate_latest(registry).decode()
    collector.close()


# ---- the real daemon ---------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(AGENT_DIR), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_agent_and_metrics_count_messages_through_the_daemon(amavisd, sink, tmp_path):  # noqa: F811 - the fixture
    """N messages through the daemon: the text tool shows InMsgs N, /metrics says N."""
    n = 3
    daemon = amavisd(args=("-m", "2"))
    client = Client(daemon.port)
    client.reply()
    for i in range(n):
        reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"],
                             message(f"a{i}"), ehlo="EHLO c.anchor.test" if i == 0 else "")
        assert reply[0].startswith("250 "), reply
    client.cmd("QUIT")
    db_home = tmp_path / "home" / "db"
    seg = StatsSegment.open_readonly(str(db_home / DEFAULT_FILENAME))
    wait_for(lambda: seg.snapshot().counters["InMsgs"] == n, what="InMsgs to reach N")
    seg.close()

    out = subprocess.run([sys.executable, "-m", "amavisd_agent.main", "-c", "1",
                          "--db-home", str(db_home)], capture_output=True, text=True,
                         timeout=30, env=_env(), cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("\n\nsysContact      STR \n")
    assert re.search(rf"^InMsgs {{30,}}{n} +\d+/h   100\.0 % \(InMsgs\)$", out.stdout, re.M)
    assert re.search(rf"^ContentCleanMsgs +{n} +\d+/h   100\.0 % \(InMsgs\)$", out.stdout, re.M)
    assert re.search(rf"^InMsgsRecips +{n} ", out.stdout, re.M)
    assert re.search(r"^sysUpTime       TimeTicks \d+ \(0 days, 0:\d\d:\d\d\.\d\d\)$",
                     out.stdout, re.M)

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "amavisd_agent.main", "--prometheus",
                             f"127.0.0.1:{port}", "--db-home", str(db_home)],
                            env=_env(), cwd=str(tmp_path), stderr=subprocess.PIPE)
    try:
        def up():
            try:
                return scrape(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                return None

        m = wait_for(up, what="the /metrics endpoint")
        assert m["amavis_up"] == {("amavis_up",): 1.0}
        assert m["amavis_in_msgs"] == {("amavis_in_msgs_total",): float(n)}
        assert m["amavis_content_clean_msgs"] == {("amavis_content_clean_msgs_total",): n}
        children = sum(m["amavis_children"].values())
        assert children == len(daemon.children())
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
