# tests: amavisd-agent/amavisd_agent/snmp.py, amavisd-agent/amavisd_agent/main.py, mibs/
"""amavisd-agent --snmp and AMAVIS-MIB, checked with net-snmp's own tools (spec/monitoring.md 4).

The MIB is parsed by ``snmptranslate``; the agent runs as a subprocess on a free
loopback UDP port against a segment written here, and is queried with ``snmpget``,
``snmpwalk`` and ``snmpbulkwalk``, as an operator would.  Expected OIDs, names,
syntaxes and the syntax counts are typed in from spec/monitoring.md 4.1/4.2 and
spec/mib-objects.tsv.  The standard SMI modules are not installed here (Debian's
snmp package ships none), so t/data/mibs/ holds import-only stand-ins for
SNMPv2-SMI and SNMPv2-TC; real ones earlier in the search path win.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import rfc1905
from pysnmp.proto.api import v1, v2c

REPO = Path(__file__).resolve().parents[1]
AGENT_DIR = REPO / "amavisd-agent"
sys.path.insert(0, str(AGENT_DIR))

from amavisd_agent.main import main as agent_main  # noqa: E402
from amavisd_agent.main import parse_args  # noqa: E402
from amavisd_agent.snmp import (  # noqa: E402
    OBJECTS,
    QueueCounter,
    SnmpAgent,
    process_gauges,
    to_snmp,
)

from amavisd.stats import DEFAULT_FILENAME, SlotInfo, StatsSegment  # noqa: E402

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("snmpget", "snmpwalk", "snmpbulkwalk", "snmptranslate")),
    reason="net-snmp tools (Debian package snmp) are not installed")

ROOT = ".1.3.6.1.4.1.15312.2.1"
MIBDIRS = f"+{REPO / 'mibs'}:{REPO / 't' / 'data' / 'mibs'}"
MIB_ARGS = ["-M", MIBDIRS, "-m", "AMAVIS-MIB"]
CREATED = time.time() - 3600.0
COUNTERS = {
    "InMsgs": 7,
    "InMsgsInbound": 5,
    "InMsgsSize": 5_000_000_123,            # past 2^32: only a Counter64 holds it
    "InMsgsStatusAccepted": 3,               # served at 1.2.7 and at 1.19.1 (4.2)
    "InMsgsStatusRelayedTaggedOpenRelay": 2,
    "QuarMsgsSpam": 4,                       # quarSpamMsgs (word order differs, 4.2)
    "QuarMsgsSizeSpam": 8192,
    "ContentVirusMsgsOriginating": 6,
    "TimeElapsedTotal": 12_345,              # ms; served as 1234 hundredths (4.2)
    "LogEntriesLevel3": 11,
    "UserCounter10": 99,
}

#: net-snmp's name for each MIB syntax, in snmptranslate -Tp and in walk output.
TP_TYPES = {"Counter32": "Counter", "Counter64": "Counter64", "Gauge32": "Gauge",
            "TimeInterval": "INTEGER", "DisplayString": "String", "OBJECT IDENTIFIER": "ObjID",
            "TimeTicks": "TimeTicks", "Integer32": "Integer32"}
WALK_TYPES = {"Counter32": "Counter32", "Counter64": "Counter64", "Gauge32": "Gauge32",
              "TimeInterval": "INTEGER", "DisplayString": "STRING", "OBJECT IDENTIFIER": "OID",
              "TimeTicks": "Timeticks", "Integer32": "INTEGER"}


def run(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_pid() -> int:
    """A PID no process can have (above pid_max): a reaped child's PID could be reused
    by the time a busy test suite asks, which made this test flaky."""
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1


# ---- the MIB file -------------------------------------------------------------------------


def translate(*args: str) -> subprocess.CompletedProcess[str]:
    return run(["snmptranslate", *MIB_ARGS, *args])


def test_mib_parses_without_errors_and_has_331_read_only_scalars():
    out = translate("-Tp", ROOT)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.startswith("+--amavis(1)\n")
    types = Counter(re.findall(r"-- -R-- (\S+) +\w+\(\d+\)$", out.stdout, re.M))
    assert types == {"Counter": 203, "Counter64": 70, "Gauge": 44, "INTEGER": 7,
                     "String": 4, "ObjID": 1, "TimeTicks": 1, "Integer32": 1}
    assert "-RW-" not in out.stdout and "Index:" not in out.stdout     # no tables (4.1)


def test_mib_names_oids_and_syntaxes_match_the_agent_table():
    oids = dict(re.findall(r'^"(\w+)"\s+"([\d.]+)"$', translate("-Tz").stdout, re.M))
    tree = translate("-Tp", ROOT).stdout
    syntax = dict((n, t) for t, n in re.findall(r"-- -R-- (\S+) +(\w+)\(\d+\)$", tree, re.M))
    assert len(syntax) == len(OBJECTS) == 331
    for obj in OBJECTS:
        assert oids.get(obj.name) == ".".join(map(str, obj.oid)), obj.name
        assert syntax[obj.name] == TP_TYPES[obj.syntax], obj.name
    assert oids["amavis"] == "1.3.6.1.4.1.15312.2.1"
    assert (oids["amavisStats"], oids["amavisProc"], oids["amavisMta"]) == (
        "1.3.6.1.4.1.15312.2.1.1", "1.3.6.1.4.1.15312.2.1.2", "1.3.6.1.4.1.15312.2.1.3")


def test_agent_table_follows_the_spec():
    """Syntax counts of 4.1, a few OIDs from mib-objects.tsv, the mapping rules of 4.2."""
    assert Counter(o.syntax for o in OBJECTS) == {
        "Counter32": 203, "Counter64": 70, "Gauge32": 44, "TimeInterval": 7,
        "DisplayString": 4, "OBJECT IDENTIFIER": 1, "TimeTicks": 1, "Integer32": 1}
    by_name = {o.name: o for o in OBJECTS}
    assert len(by_name) == 331
    spec = {  # name: (OID under .2.1, internal name) from spec/mib-objects.tsv
        "sysUpTime": ("1.1.3", "sysUpTime"),
        "inMsgs": ("1.2.1", "InMsgs"),
        "inMsgsStatusRelayed": ("1.2.8", "InMsgsStatusRelayed"),
        "inMsgsRecipsLocal": ("1.4.7", "InMsgsRecipsLocal"),
        "outMsgsProtoSQLSubmit": ("1.6.26", "OutMsgsProtoSQLSubmit"),
        "outMsgsRejects": ("1.6.29", "OutMsgsRejects"),
        "outMsgsSizeProtoSQLSubmit": ("1.7.26", "OutMsgsSizeProtoSQLSubmit"),
        "quarSpamMsgs": ("1.8.8", "QuarMsgsSpam"),
        "quarVirusMsgsSize": ("1.9.11", "QuarMsgsSizeVirus"),
        "contentVirusMsgsOpenRelay": ("1.10.9.6", "ContentVirusMsgsOpenRelay"),
        "outConnReuseRefreshed": ("1.11.11", "OutConnReuseRefreshed"),
        "penPalsSavedFromKill": ("1.13.11", "PenPalsSavedFromKill"),
        "logRetries": ("1.15.17", "LogRetries"),
        "timeElapsedSpamCheck": ("1.16.7", "TimeElapsedSpamCheck"),
        "userGauge10": ("1.18.10", "UserGauge10"),
        "inMsgsStatusAcceptedAll": ("1.19.1", "InMsgsStatusAccepted"),
        "inMsgsStatusRelayedUntaggedAll": ("1.20.1", "InMsgsStatusRelayedUntagged"),
        "inMsgsStatusTempFailedOpenRelay": ("1.26.6", "InMsgsStatusTempFailedOpenRelay"),
        "procGone": ("2.1.1", "ProcGone"),
        "procBusyOther": ("2.1.9", "ProcBusyOther"),
        "procBusy0": ("2.2.1", "ProcBusy0"),
        "procBusy30h": ("2.2.22", "ProcBusy21"),
        "mtaQueueEntriesDeferred": ("3.1.4", "MtaQueueEntriesDeferred"),
    }
    for name, (sub, key) in spec.items():
        assert ".".join(map(str, by_name[name].oid)) == f"1.3.6.1.4.1.15312.2.1.{sub}", name
        assert by_name[name].key == key, name
    twins = [o.name for o in OBJECTS if o.key == "InMsgsStatusAccepted"]
    assert twins == ["inMsgsStatusAccepted", "inMsgsStatusAcceptedAll"]


# ---- values without the network ----------------------------------------------------------


def slot(pid: int, state: str, ts: float, task: str = "", busy: bool = True) -> SlotInfo:
    return SlotInfo(pid=pid, state=state, timestamp=ts, task_id=task, heartbeat=ts, busy=busy)


def test_process_gauges_by_state_and_age():
    now = 1_000_000.0
    children = [
        slot(1, "", now - 50, busy=False),
        slot(2, ".", now - 5000, busy=False),
        slot(3, "m", now - 0.05, "00003-01"),      # Transfer, younger than 0.1 s
        slot(4, "F", now - 0.3, "00004-01"),       # Transfer
        slot(5, "D", now - 61, "00005-01"),
        slot(6, "V", now - 3600, "00006-01"),
        slot(7, "S", now - 200_000, "00007-01"),   # older than 30 h
        slot(8, "=", now - 2, "00008-01"),         # Other
        slot(9, "A", now - 1),                     # Other
    ]
    g = process_gauges(children, now)
    assert (g["ProcAll"], g["ProcIdle"], g["ProcBusy"]) == (9, 2, 7)
    assert (g["ProcBusyTransfer"], g["ProcBusyDecode"], g["ProcBusyVirus"],
            g["ProcBusySpam"], g["ProcBusyOther"]) == (2, 1, 1, 1, 2)
    ages = [g[f"ProcBusy{j}"] for j in range(22)]
    #        0  .1 .2 .5 1s 2s 4s 8s 15 30 1m 2m 4m 8m 15 30 1h 2h 4h 8h 15h 30h
    assert ages == [7, 6, 6, 5, 5, 4, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1]


def test_type_conversions_wrap_like_snmp():
    assert int(to_snmp("Counter32", 2**32 + 5)) == 5
    assert int(to_snmp("Counter64", 2**64 + 6)) == 6
    assert int(to_snmp("Gauge32", 2**40)) == 2**32 - 1
    assert int(to_snmp("TimeInterval", 12_345)) == 1234               # ms -> 0.01 s
    assert int(to_snmp("TimeInterval", (2**31 + 7) * 10)) == 7
    assert isinstance(to_snmp("TimeInterval", 0), v2c.Integer32)
    assert str(to_snmp("OBJECT IDENTIFIER", "1.3.6.1.4.1.15312.2")) == "1.3.6.1.4.1.15312.2"


def request(pdu_class: type, oids: list[str], community: str = "public",
            non_repeaters: int = 0, max_repetitions: int = 10) -> bytes:
    pdu = pdu_class()
    if pdu_class is v2c.GetBulkRequestPDU:
        v2c.apiBulkPDU.set_defaults(pdu)
        v2c.apiBulkPDU.set_non_repeaters(pdu, non_repeaters)
        v2c.apiBulkPDU.set_max_repetitions(pdu, max_repetitions)
    else:
        v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_varbinds(pdu, [(v2c.ObjectIdentifier(o), v2c.null) for o in oids])
    msg = v2c.Message()
    v2c.apiMessage.set_defaults(msg)
    v2c.apiMessage.set_community(msg, community)
    v2c.apiMessage.set_pdu(msg, pdu)
    return bytes(encoder.encode(msg))


def answer(agent: SnmpAgent, data: bytes) -> tuple[int, list[tuple[str, object]]]:
    reply = agent.handle(data)
    assert reply is not None
    msg, _ = decoder.decode(reply, asn1Spec=v2c.Message())
    pdu = v2c.apiMessage.get_pdu(msg)
    return (int(v2c.apiPDU.get_error_status(pdu)),
            [(str(o), v) for o, v in v2c.apiPDU.get_varbinds(pdu)])


def test_without_a_segment_only_the_queue_gauges_are_served(tmp_path):
    agent = SnmpAgent(str(tmp_path / DEFAULT_FILENAME), queues=QueueCounter(None),
                      log=lambda line: None)
    status, vbs = answer(agent, request(v2c.GetRequestPDU, [f"{ROOT[1:]}.1.2.1.0"]))
    assert status == 0 and vbs[0][1].tagSet == rfc1905.NoSuchObject.tagSet
    status, vbs = answer(agent, request(v2c.GetNextRequestPDU, [ROOT[1:]]))
    assert vbs[0][0] == f"{ROOT[1:]}.3.1.1.0" and int(vbs[0][1]) == 0
    StatsSegment.create(agent.path, 1, os.getpid()).close()
    status, vbs = answer(agent, request(v2c.GetNextRequestPDU, [ROOT[1:]]))
    assert vbs[0][0] == f"{ROOT[1:]}.1.1.1.0"
    agent.close()


def test_getbulk_stops_at_the_end_and_keeps_non_repeaters(tmp_path):
    StatsSegment.create(str(tmp_path / DEFAULT_FILENAME), 1, os.getpid()).close()
    agent = SnmpAgent(str(tmp_path / DEFAULT_FILENAME), sys_name="h", log=lambda line: None)
    last = ".".join(map(str, OBJECTS[-1].oid))
    _, vbs = answer(agent, request(v2c.GetBulkRequestPDU, [ROOT[1:], f"{last}.0"],
                                   non_repeaters=1, max_repetitions=1000))
    assert vbs[0] == (f"{ROOT[1:]}.1.1.1.0", vbs[0][1]) and bytes(vbs[0][1]).startswith(b"amavis")
    assert len(vbs) == 2 and vbs[1][1].tagSet == rfc1905.EndOfMibView.tagSet
    _, vbs = answer(agent, request(v2c.GetBulkRequestPDU, [ROOT[1:]], max_repetitions=5000))
    assert [o for o, _ in vbs[:331]] == [".".join(map(str, (*o.oid, 0))) for o in OBJECTS]
    assert len(vbs) == 332 and vbs[-1][1].tagSet == rfc1905.EndOfMibView.tagSet
    assert agent.handle(request(v2c.GetRequestPDU, [ROOT[1:]], community="other")) is None
    agent.close()


# ---- the agent as a subprocess, queried with net-snmp ------------------------------------


class Running:
    def __init__(self, proc: subprocess.Popen[str], port: int, seg: StatsSegment) -> None:
        self.proc = proc
        self.port = port
        self.seg = seg
        self.target = f"127.0.0.1:{port}"

    def snmp(self, tool: str, *args: str, community: str = "public",
             timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """Run a net-snmp tool; arguments starting with '-' go before the agent address."""
        opts = [a for a in args if a.startswith("-")]
        rest = [a for a in args if not a.startswith("-")]
        return run([tool, "-v2c", "-c", community, "-t", "1", "-r", "1", *MIB_ARGS, *opts,
                    self.target, *rest], timeout=timeout)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    db_home = tmp_path_factory.mktemp("db")
    seg = StatsSegment.create(str(db_home / DEFAULT_FILENAME), 4, os.getpid(), created=CREATED)
    idle = seg.writer(0, os.getpid())
    idle.child_started()
    idle.add_many(COUNTERS)
    busy = seg.writer(1, os.getppid())                  # a live process of ours
    busy.child_started()
    busy.set_state("m", "12345-01")
    busy.add("InMsgs", 1)
    gone = seg.writer(2, dead_pid())                    # died, not folded yet
    gone.child_started()
    port = free_udp_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(AGENT_DIR), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    log = db_home / "agent.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "amavisd_agent.main", "--snmp",
                                 f"127.0.0.1:{port}", "--db-home", str(db_home)],
                                env=env, cwd=str(db_home), stderr=err, text=True)
    agent = Running(proc, port, seg)
    try:
        deadline = time.monotonic() + 15
        while True:
            out = run(["snmpget", "-v2c", "-c", "public", "-t", "0.3", "-r", "0", "-On",
                       agent.target, f"{ROOT}.1.2.1.0"])
            if out.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the SNMP agent did not answer: {log.read_text()}")
            time.sleep(0.2)
        yield agent
        assert "Traceback" not in log.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        seg.close()


def test_snmpget_by_name_returns_the_written_values(running):
    out = running.snmp("snmpget", "AMAVIS-MIB::inMsgs.0", "AMAVIS-MIB::inMsgsSize.0",
                       "AMAVIS-MIB::quarSpamMsgs.0", "AMAVIS-MIB::timeElapsedTotal.0",
                       "AMAVIS-MIB::inMsgsStatusAccepted.0",
                       "AMAVIS-MIB::inMsgsStatusAcceptedAll.0",
                       "AMAVIS-MIB::userCounter10.0", "AMAVIS-MIB::userGauge1.0",
                       "AMAVIS-MIB::sysObjectID.0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "AMAVIS-MIB::inMsgs.0 = Counter32: 8",
        "AMAVIS-MIB::inMsgsSize.0 = Counter64: 5000000123",
        "AMAVIS-MIB::quarSpamMsgs.0 = Counter32: 4",
        "AMAVIS-MIB::timeElapsedTotal.0 = INTEGER: 1234",
        "AMAVIS-MIB::inMsgsStatusAccepted.0 = Counter32: 3",
        "AMAVIS-MIB::inMsgsStatusAcceptedAll.0 = Counter32: 3",
        "AMAVIS-MIB::userCounter10.0 = Counter64: 99",
        "AMAVIS-MIB::userGauge1.0 = Gauge32: 0",
        "AMAVIS-MIB::sysObjectID.0 = OID: AMAVIS-MIB::ijsAmavis",
    ]


def test_process_gauges_and_uptime(running):
    out = running.snmp("snmpget", "-Oqv", "AMAVIS-MIB::procAll.0", "AMAVIS-MIB::procIdle.0",
                       "AMAVIS-MIB::procBusy.0", "AMAVIS-MIB::procBusyTransfer.0",
                       "AMAVIS-MIB::procBusy0.0", "AMAVIS-MIB::procBusy30h.0",
                       "AMAVIS-MIB::procGone.0", "-Ot", "AMAVIS-MIB::sysUpTime.0")
    assert out.returncode == 0, out.stderr
    *gauges, uptime = out.stdout.split()
    assert gauges == ["2", "1", "1", "1", "1", "0", "1"]
    assert 3600 * 100 <= int(uptime) < 3600 * 100 + 600 * 100    # slack for a busy suite


def walk(running: Running, tool: str, *opts: str) -> list[tuple[tuple[int, ...], str, str]]:
    out = running.snmp(tool, "-On", *opts, ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # The walk runs into the end of the agent's tree: net-snmp says so on a last line.
    assert lines[-1].endswith(" = No more variables left in this MIB View "
                              "(It is past the end of the MIB tree)"), lines[-1]
    rows = []
    for line in lines[:-1]:
        m = re.fullmatch(r"\.([\d.]+) = (\w+): ?(.*)", line)
        assert m, line
        rows.append((tuple(map(int, m.group(1).split("."))), m.group(2), m.group(3)))
    return rows


def test_full_walk_returns_all_331_objects_in_order_with_their_types(running):
    rows = walk(running, "snmpwalk")
    assert len(rows) == 331
    oids = [r[0] for r in rows]
    assert all(a < b for a, b in zip(oids, oids[1:], strict=False))        # strictly increasing
    assert oids == [(*o.oid, 0) for o in OBJECTS]
    assert [r[1] for r in rows] == [WALK_TYPES[o.syntax] for o in OBJECTS]
    values = {o.name: r[2] for o, r in zip(OBJECTS, rows, strict=True)}
    assert values["inMsgsInbound"] == "5" and values["inMsgsOutbound"] == "0"
    assert values["inMsgsStatusRelayedTaggedOpenRelay"] == "2"
    assert values["contentVirusMsgsOriginating"] == "6"
    assert values["quarSpamMsgsSize"] == "8192" and values["logEntriesLevel3"] == "11"
    assert values["sysDescr"].startswith("amavis-") and values["sysServices"] == "64"
    assert values["sysContact"] == "" and values["sysObjectID"] == ".1.3.6.1.4.1.15312.2"


def test_bulkwalk_sees_the_same_as_walk(running):
    def stable(rows: list[tuple[tuple[int, ...], str, str]]) -> list[tuple[object, ...]]:
        # sysUpTime and the busy-age gauges (2.2) move on between the two walks.
        moving = [r[0] for r in rows if r[1] == "Timeticks" or r[0][9:11] == (2, 2)]
        return [r[:2] if r[0] in moving else r for r in rows]

    assert stable(walk(running, "snmpbulkwalk", "-Cr25")) == stable(walk(running, "snmpwalk"))


def test_get_of_unknown_oids_and_set_is_refused(running):
    out = running.snmp("snmpget", "-On", f"{ROOT}.1.2.1", f"{ROOT}.1.2.1.0.5", f"{ROOT}.1.99.1.0",
                       f"{ROOT}.4.0")
    assert out.stdout.splitlines() == [
        f"{ROOT}.1.2.1 = No Such Instance currently exists at this OID",
        f"{ROOT}.1.2.1.0.5 = No Such Instance currently exists at this OID",
        f"{ROOT}.1.99.1.0 = No Such Object available on this agent at this OID",
        f"{ROOT}.4.0 = No Such Object available on this agent at this OID",
    ]
    out = running.snmp("snmpset", "-Ir", f"{ROOT}.1.2.1.0", "i", "5")
    assert out.returncode != 0 and "notWritable" in out.stderr


def test_wrong_community_gets_no_answer(running):
    started = time.monotonic()
    out = running.snmp("snmpget", "AMAVIS-MIB::inMsgs.0", community="private")
    assert out.returncode != 0 and "Timeout" in out.stderr + out.stdout
    assert time.monotonic() - started >= 1.5                 # it waited, nothing came back


def test_garbage_datagrams_do_not_stop_it(running):
    v1_msg = v1.Message()
    v1.apiMessage.set_defaults(v1_msg)
    v1.apiMessage.set_community(v1_msg, "public")
    v1_pdu = v1.GetRequestPDU()
    v1.apiPDU.set_defaults(v1_pdu)
    v1.apiPDU.set_varbinds(v1_pdu, [(v1.ObjectIdentifier(ROOT[1:] + ".1.2.1.0"), v1.null)])
    v1.apiMessage.set_pdu(v1_msg, v1_pdu)
    good = request(v2c.GetRequestPDU, [ROOT[1:] + ".1.2.1.0"])
    crafted = [
        b"", b"\x00", b"\x30", b"\x30\x84\xff\xff\xff\xff", b"\x30\x03\x02\x01\x01",
        b"\x30\x80" + b"\x04" * 100, good[:-3], good + b"\x00", good[:10] + b"\xff" * 40,
        bytes(encoder.encode(v1_msg)),
        request(v2c.GetBulkRequestPDU, [ROOT[1:]], non_repeaters=7, max_repetitions=2**31 - 1),
        request(v2c.GetBulkRequestPDU, [ROOT[1:]] * 500, max_repetitions=1000),
        request(v2c.GetRequestPDU, []),
        request(v2c.GetRequestPDU, ["0.0"]),
        request(v2c.ResponsePDU, [ROOT[1:]]),
        request(v2c.SNMPv2TrapPDU, [ROOT[1:]]),
        b"\x30" + bytes([0x82, 0xFF, 0xF0]) + os.urandom(40),
    ]
    rng = random.Random(4711)
    fuzz = [rng.randbytes(rng.randrange(1, 300)) for _ in range(300)]
    fuzz += [bytearray(good) for _ in range(200)]
    for b in fuzz[300:]:
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for data in crafted + [bytes(b) for b in fuzz]:
            s.sendto(data, ("127.0.0.1", running.port))
    time.sleep(0.5)
    assert running.proc.poll() is None
    out = running.snmp("snmpget", "-Oqv", "AMAVIS-MIB::inMsgs.0")
    assert out.returncode == 0 and out.stdout.strip() == "8", out.stderr


def test_counters_are_read_again_on_every_request(running):
    w = running.seg.writer(3, os.getpid())
    w.child_started()
    w.add("OutMsgsDelivers", 17)
    out = running.snmp("snmpget", "-Oqv", "AMAVIS-MIB::outMsgsDelivers.0", "AMAVIS-MIB::procAll.0")
    assert out.stdout.split() == ["17", "3"], out.stderr


# ---- options ----------------------------------------------------------------------------


def test_snmp_options():
    opts = parse_args(["--snmp", "127.0.0.1:1161", "--community", "s3cret", "-d", "/x"])
    assert (opts.snmp, opts.community, opts.db_home, opts.prometheus) == (
        ("127.0.0.1", 1161), "s3cret", "/x", None)
    assert parse_args(["--snmp", ":161"]).snmp == ("0.0.0.0", 161)
    assert parse_args([]).community == "public"


@pytest.mark.parametrize("argv", [["--snmp", "nohost"], ["--snmp", "h:99999"],
                                  ["--snmp", ":1161", "--prometheus", ":9100"],
                                  ["--community", ""]])
def test_bad_snmp_options_print_usage(argv, capsys):
    assert agent_main(argv) == 64
    err = capsys.readouterr().err
    assert "[--snmp <host>:<port> [--community <name>]]" in err and err.endswith("exited\n")
