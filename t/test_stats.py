# tests: amavisd/stats.py
"""The stats segment: layout, writer, master fold, reader snapshot, seqlock.

Real processes (os.fork) write while the test reads, as the children of the master
and the tools do (DESIGN.md "Stats segment", spec/monitoring.md 1.3 and 1.5).
"""

from __future__ import annotations

import os
import signal
import stat
import time
from collections.abc import Callable, Iterator

import pytest

from amavisd import stats
from amavisd.stats import COUNTER_NAMES, COUNTER_TYPES, SegmentError, StatsSegment


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / stats.DEFAULT_FILENAME)


@pytest.fixture
def seg(path) -> Iterator[StatsSegment]:
    s = StatsSegment.create(path, 4, os.getpid())
    yield s
    s.close()


def _fork(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child that exits with 0, or 1 if it raised."""
    pid = os.fork()
    if pid == 0:                                     # pragma: no cover - child
        code = 0
        try:
            body()
        except BaseException:  # noqa: BLE001 - a forked child must reach os._exit
            import traceback
            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# ---- counter table (monitoring.md 1.3) -------------------------------------------


def test_counter_table_has_the_relay_path_names_from_the_naming_rules():
    expected = [
        "InMsgs", "InMsgsRecips", "InMsgsSize", "InMsgsOriginating", "InMsgsInbound",
        "InMsgsOpenRelay", "InMsgsRecipsLocal", "InMsgsRecipsOutbound",
        "InMsgsSizeInternal", "InMsgsBounceNullRPath", "InMsgsStatusRelayed",
        "InMsgsStatusRelayedTaggedInbound", "InMsgsStatusTempFailedOriginating",
        "InMsgsStatusAccepted", "OutMsgs", "OutMsgsSize", "OutMsgsRelay",
        "OutMsgsSizeRelay", "OutMsgsProtoSMTP", "OutMsgsProtoSMTPRelay",
        "OutMsgsProtoLMTPRelay", "OutMsgsProtoBSMTP", "OutMsgsSizeProtoPipeRelay",
        "OutMsgsSubmitQuar", "OutMsgsDelivers", "OutMsgsAttemptFails", "OutMsgsRejects",
        "OutConnNew", "OutConnQuit", "OutConnTransact", "ContentCleanMsgs",
        "ContentCleanMsgsInbound", "ContentVirusMsgsOpenRelay", "ContentCatchAllMsgs",
        "TimeElapsedReceiving", "TimeElapsedTotal", "LogLines", "LogEntries",
        "LogEntriesLevel5", "QuarMsgsSizeSpam", "PenPalsHitsnone",
    ]
    missing = [n for n in expected if n not in COUNTER_TYPES]
    assert missing == []
    assert len(set(COUNTER_NAMES)) == len(COUNTER_NAMES)


def test_relayed_has_no_direction_variant_monitoring_1_3():
    assert "InMsgsStatusRelayedInbound" not in COUNTER_TYPES


def test_counter_types_sizes_and_logs_are_c64():
    assert COUNTER_TYPES["InMsgsSize"] == "C64"
    assert COUNTER_TYPES["OutMsgsSizeRelay"] == "C64"
    assert COUNTER_TYPES["LogLines"] == "C64"
    assert COUNTER_TYPES["InMsgs"] == "C32"
    assert COUNTER_TYPES["TimeElapsedTotal"] == "C32"


def test_dynamic_families_are_not_fixed():
    assert not any(n.startswith(("virus.byname.", "OpsDecType-")) for n in COUNTER_NAMES)


# ---- creation and opening ----------------------------------------------------------


def test_create_writes_header_and_mode_0640(seg, path):
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert seg.nslots == 4
    assert seg.master_pid == os.getpid()
    assert abs(seg.created - time.time()) < 5
    assert seg.generation == 0
    assert seg.counter_names == COUNTER_NAMES
    assert not any(p.endswith(".tmp." + str(os.getpid())) for p in os.listdir(
        os.path.dirname(path)))


def test_open_readonly_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        StatsSegment.open_readonly(str(tmp_path / "none.mmap"))


def test_open_readonly_rejects_a_file_that_is_not_a_segment(tmp_path):
    bad = tmp_path / "bad.mmap"
    bad.write_bytes(b"x" * 4096)
    with pytest.raises(SegmentError, match="bad magic"):
        StatsSegment.open_readonly(str(bad))


def test_open_readonly_rejects_another_version(seg, path):
    seg._q[stats._H_VERSION] = 99
    with pytest.raises(SegmentError, match="version 99"):
        StatsSegment.open_readonly(path)


def test_readonly_segment_gives_no_writer(seg, path):
    with StatsSegment.open_readonly(path) as ro, pytest.raises(SegmentError):
        ro.writer(0, 1)


def test_replaced_after_a_cold_create(seg, path):
    with StatsSegment.open_readonly(path) as ro:
        assert not ro.replaced()
        StatsSegment.create(path, 4, os.getpid()).close()
        assert ro.replaced()


# ---- writer, state rules (monitoring.md 1.5) --------------------------------------


def test_unknown_fixed_counter_is_a_key_error(seg):
    w = seg.writer(0, 100)
    with pytest.raises(KeyError):
        w.add("InMsgsBogus")


def test_unknown_state_letter_is_a_value_error(seg):
    w = seg.writer(0, 100)
    with pytest.raises(ValueError):
        w.set_state("Z")


def test_level_2_state_is_skipped_at_details_level_1(seg):
    w = seg.writer(0, 100, nanny_details_level=1)
    w.child_started()
    assert w.set_state("=", "00100-01")
    assert not w.set_state("V", "00100-01")
    assert seg.slot_info(0).state == "="


def test_level_2_state_is_written_at_details_level_2(seg):
    w = seg.writer(0, 100, nanny_details_level=2)
    w.child_started()
    assert w.set_state("V", "00100-01")
    info = seg.slot_info(0)
    assert (info.state, info.task_id, info.busy) == ("V", "00100-01", True)


def test_timestamp_reset_only_by_start_accept_and_mail(seg, monkeypatch):
    clock = iter([1000.0, 1010.0, 1020.0, 1030.0, 1040.0, 1050.0])
    monkeypatch.setattr(stats.time, "time", lambda: next(clock))
    w = seg.writer(0, 100)
    w.child_started()                                        # 1000
    assert seg.slot_info(0).timestamp == 1000.0
    w.begin_connection()                                     # 'A' at 1010 resets
    assert seg.slot_info(0).timestamp == 1010.0
    w.set_state("=", "00100-01")                             # 1020 keeps
    assert seg.slot_info(0).timestamp == 1010.0
    w.set_state("m", "00100-01-2")                           # 1030 resets
    assert seg.slot_info(0).timestamp == 1030.0
    w.set_state("")                                          # 1040 idle, keeps
    info = seg.slot_info(0)
    assert (info.timestamp, info.heartbeat, info.busy) == (1030.0, 1040.0, False)
    assert info.connections == 1


def test_dot_is_idle_and_has_no_task_id(seg):
    w = seg.writer(0, 100)
    w.child_started()
    w.set_state(".", "00100-01")
    info = seg.slot_info(0)
    assert (info.state, info.task_id, info.busy) == (".", "", False)


def test_accepted_without_task_id_is_busy(seg):
    w = seg.writer(0, 100)
    w.child_started()
    w.begin_connection()
    info = seg.slot_info(0)
    assert (info.state, info.task_id, info.busy) == ("A", "", True)


def test_child_exiting_hides_the_slot_but_keeps_its_counts(seg):
    w = seg.writer(1, 100)
    w.child_started()
    w.add("InMsgs", 3)
    w.child_exiting()
    snap = seg.snapshot()
    assert snap.children == []
    assert snap.counters["InMsgs"] == 3
    assert seg.slot_info(1).exiting


def test_negative_increment_adds_nothing_monitoring_1_2(seg):
    w = seg.writer(0, 100)
    w.add("InMsgs", -5)
    assert seg.snapshot().counters["InMsgs"] == 0


# ---- children, fold, claim ---------------------------------------------------------


def test_forked_child_writes_state_and_counters_reader_sees_them(seg, path):
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def child() -> None:
        c = StatsSegment.attach(path)
        w = c.writer(2, os.getpid())
        w.child_started()
        w.begin_connection()
        w.set_state("m", f"{os.getpid():05d}-01")
        w.add_many({"InMsgs": 1, "InMsgsRecips": 2, "InMsgsSize": 1234})
        w.add("ContentCleanMsgs")
        w.add_dynamic("virus.byname.Eicar-Test-Signature")
        os.write(ready_w, b"x")
        os.read(go_r, 1)

    pid = _fork(child)
    try:
        os.read(ready_r, 1)
        seg.claim(2, pid)
        with StatsSegment.open_readonly(path) as ro:
            snap = ro.snapshot()
        [info] = snap.children
        assert (info.pid, info.index, info.state) == (pid, 2, "m")
        assert info.task_id == f"{pid:05d}-01"
        assert info.busy
        assert snap.counters["InMsgs"] == 1
        assert snap.counters["InMsgsRecips"] == 2
        assert snap.counters["InMsgsSize"] == 1234
        assert snap.counters["ContentCleanMsgs"] == 1
        assert snap.counters["virus.byname.Eicar-Test-Signature"] == 1
    finally:
        os.write(go_w, b"x")
        assert _wait(pid) == 0


def test_fold_after_child_died_moves_shard_into_totals_and_frees_slot(seg, path):
    def child() -> None:
        w = StatsSegment.attach(path).writer(1, os.getpid())
        w.child_started()
        w.add("InMsgs", 5)
        w.add("OutMsgsSizeRelay", 10_000)
        w.add_dynamic("OpsDecType-asc", 2)

    pid = _fork(child)
    assert _wait(pid) == 0
    before = seg.snapshot()
    assert [c.pid for c in before.children] == [pid]     # dead but not yet folded
    assert before.counters["InMsgs"] == 5                  # its shard still counts
    seg.fold(1)
    after = seg.snapshot()
    assert after.children == []
    assert seg.slot_info(1).pid == 0
    assert after.counters["InMsgs"] == 5
    assert after.counters["OutMsgsSizeRelay"] == 10_000
    assert after.counters["OpsDecType-asc"] == 2
    shard_base = (seg._slot_off(1) + stats._S_COUNTERS) // 8
    assert all(seg._q[shard_base + k] == 0 for k in range(len(COUNTER_NAMES)))
    # A new child in the same slot adds on top of the totals.
    w = seg.writer(1, 4242)
    w.child_started()
    w.add("InMsgs")
    w.add_dynamic("OpsDecType-asc")
    snap = seg.snapshot()
    assert (snap.counters["InMsgs"], snap.counters["OpsDecType-asc"]) == (6, 3)


def test_claim_refuses_a_slot_still_owned_by_another_pid(seg):
    seg.claim(0, 111)
    seg.claim(0, 111)
    with pytest.raises(SegmentError, match="pid 111"):
        seg.claim(0, 222)
    seg.fold(0)
    seg.claim(0, 222)
    assert seg.slot_info(0).pid == 222


def test_dynamic_table_overflow_is_counted_not_lost_silently(path):
    seg = StatsSegment.create(path, 2, os.getpid(), ndyn_slot=2, ndyn_total=3)
    w = seg.writer(0, 1)
    for name in ("virus.byname.A", "virus.byname.B", "virus.byname.C"):
        w.add_dynamic(name, 1)
    w.add_dynamic("virus.byname.A", 1)
    snap = seg.snapshot()
    assert snap.counters["virus.byname.A"] == 2
    assert snap.counters["virus.byname.B"] == 1
    assert "virus.byname.C" not in snap.counters
    assert snap.dyn_dropped == 1
    seg.fold(0)
    w = seg.writer(0, 2)
    for name in ("virus.byname.C", "virus.byname.D"):
        w.add_dynamic(name, 1)
    seg.fold(0)                                   # totals hold 3 names: D is dropped
    snap = seg.snapshot()
    assert snap.counters["virus.byname.C"] == 1
    assert "virus.byname.D" not in snap.counters
    assert snap.dyn_dropped == 2
    seg.close()


def test_add_dynamic_with_a_fixed_name_goes_to_the_fixed_cell(seg):
    seg.writer(0, 1).add_dynamic("InMsgs", 4)
    assert seg.snapshot().counters["InMsgs"] == 4


def test_long_dynamic_names_are_truncated_to_64_bytes(seg):
    w = seg.writer(0, 1)
    name = "virus.byname." + "X" * 80
    w.add_dynamic(name)
    w.add_dynamic(name)
    assert seg.snapshot().counters[name[:64]] == 2


# ---- HUP: reopen keeping totals ----------------------------------------------------


def test_open_or_create_reopens_same_file_keeping_totals(path):
    seg = StatsSegment.create(path, 4, 10)
    created, ino = seg.created, os.stat(path).st_ino
    w = seg.writer(0, 20)
    w.add("InMsgs", 7)
    w.add_dynamic("virus.byname.X", 2)
    seg.fold(0)
    seg.writer(3, 21).add("InMsgs", 1)           # an old child's unfolded shard
    seg.close()
    seg = StatsSegment.open_or_create(path, 4, 11)
    snap = seg.snapshot()
    assert snap.counters["InMsgs"] == 8
    assert snap.counters["virus.byname.X"] == 2
    assert (seg.master_pid, seg.generation, seg.created) == (11, 1, created)
    assert os.stat(path).st_ino == ino
    assert seg.slot_info(3).pid == 0             # folded
    seg.close()


def test_open_or_create_migrates_by_name_when_geometry_changes(path):
    seg = StatsSegment.create(path, 2, 10)
    created = seg.created
    seg.writer(0, 20).add("OutConnNew", 9)
    seg.writer(1, 21).add_dynamic("OpsDecType-zip", 3)
    seg.close()
    seg = StatsSegment.open_or_create(path, 8, 11)
    snap = seg.snapshot()
    assert seg.nslots == 8
    assert snap.counters["OutConnNew"] == 9
    assert snap.counters["OpsDecType-zip"] == 3
    assert (snap.created, snap.generation) == (created, 1)
    seg.close()


def test_open_or_create_replaces_garbage_with_a_fresh_segment(path):
    with open(path, "wb") as fh:
        fh.write(b"garbage" * 100)
    seg = StatsSegment.open_or_create(path, 2, 10)
    assert seg.snapshot().counters["InMsgs"] == 0
    seg.close()


# ---- seqlock: readers never see half an update ------------------------------------


def test_reader_never_sees_a_torn_pair_while_a_forked_writer_hammers(seg, path):
    """``add_many`` of InMsgs=1, InMsgsSize=1000 is one update: the ratio must hold."""
    stop_r, stop_w = os.pipe()
    os.set_blocking(stop_r, False)

    def child() -> None:
        w = StatsSegment.attach(path).writer(0, os.getpid())
        w.child_started()
        pair = {"InMsgs": 1, "InMsgsSize": 1000}
        while True:
            for _ in range(1000):
                w.add_many(pair)
            try:
                if os.read(stop_r, 1):
                    return
            except BlockingIOError:
                pass

    pid = _fork(child)
    try:
        ro = StatsSegment.open_readonly(path)
        deadline = time.monotonic() + 1.5
        reads = 0
        last = 0
        while time.monotonic() < deadline:
            data = ro._read_slot(0)
            _, shard, _ = ro._parse_slot(0, data)
            msgs = shard[ro.counter_index["InMsgs"]]
            size = shard[ro.counter_index["InMsgsSize"]]
            assert size == 1000 * msgs, f"torn read after {reads} reads"
            assert msgs >= last
            last = msgs
            reads += 1
        assert last > 0 and reads > 100
        ro.close()
    finally:
        os.write(stop_w, b"x")
        assert _wait(pid) == 0


def test_snapshot_totals_never_go_backwards_while_the_master_folds(seg, path):
    """A fold moves counts from a shard to the totals; a snapshot sees them once."""
    done_r, done_w = os.pipe()
    result_r, result_w = os.pipe()

    def reader() -> None:
        ro = StatsSegment.open_readonly(path)
        os.set_blocking(done_r, False)
        last, n = 0, 0
        while True:
            c = ro.snapshot().counters
            assert c["InMsgsSize"] == 1000 * c["InMsgs"]
            assert c["InMsgs"] >= last, f"went back from {last} to {c['InMsgs']}"
            last, n = c["InMsgs"], n + 1
            try:
                if os.read(done_r, 1):
                    break
            except BlockingIOError:
                pass
        os.write(result_w, str(n).encode())

    pid = _fork(reader)
    total = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        for i in range(seg.nslots):
            w = seg.writer(i, 1000 + i)
            w.add_many({"InMsgs": 1, "InMsgsSize": 1000})
            total += 1
        for i in range(seg.nslots):
            seg.fold(i)
    os.write(done_w, b"x")
    assert _wait(pid) == 0
    assert int(os.read(result_r, 32)) > 10
    assert seg.snapshot().counters["InMsgs"] == total


def test_reader_does_not_hang_on_a_writer_killed_mid_update(seg, path):
    def child() -> None:
        w = StatsSegment.attach(path).writer(0, os.getpid())
        w.child_started()
        w.add("InMsgs", 2)
        w._q[w._seq] += 1                  # leave the seqlock odd, as a SIGKILL would
        os.kill(os.getpid(), signal.SIGKILL)

    pid = _fork(child)
    os.waitpid(pid, 0)
    t0 = time.monotonic()
    assert seg.snapshot().counters["InMsgs"] == 2
    assert time.monotonic() - t0 < stats.StatsSegment.READ_RETRY_SECONDS + 0.5
    seg.fold(0)                                        # fold evens the seqlock again
    assert seg._q[(seg._slot_off(0) + stats._S_SEQ) // 8] % 2 == 0
    assert seg.snapshot().counters["InMsgs"] == 2


# ---- hot path cost --------------------------------------------------------------------


def test_add_and_set_state_stay_cheap(seg):
    """The writer hot path is a dict lookup and three stores (sanity bound only)."""
    w = seg.writer(0, 1)
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        w.add("InMsgs")
    per_add = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        w.set_state("=", "00001-01")
    per_state = (time.perf_counter() - t0) / n
    assert seg.snapshot().counters["InMsgs"] == n
    assert per_add < 5e-6 and per_state < 10e-6
