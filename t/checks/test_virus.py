# tests: amavisd/checks/virus.py, amavisd/scanners/clamd.py
"""The virus check against a real clamd (t/helpers/clamd.py) and Debian's clamscan.

spec/pipeline.md 9.1-9.5.  One private clamd serves the module (a Unix socket and a
TCP port); the only fake is a socket that accepts and never answers (the timeout
case), which no real clamd can be made to do on purpose.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from amavisd.checks import virus
from amavisd.config.lookup import new_RE
from amavisd.config.perlconf import PerlCode, evaluate_perl_config, perl_regex
from amavisd.message import Message
from amavisd.parts import Part, PartsTree
from amavisd.scanners import clamd
from t.helpers.clamd import CLAMSCAN, EICAR, TESTFILES, ClamdServer, clamd_available

pytestmark = pytest.mark.skipif(not clamd_available(), reason="clamd or clamav-testfiles missing")

CLEAN_RE = perl_regex(r"\bOK$", "m")
INFECTED_RE = perl_regex(r"\bFOUND$", "m")
NAMES_RE = perl_regex(r"^.*?: (?!Infected Archive)(.*) FOUND$", "m")
EICAR_NAME = "Eicar-Test-Signature.UNOFFICIAL"
CLAM_NAME = "Clamav.Test.File-6.UNOFFICIAL"
#: each clamav-testfiles archive that holds clam.exe and that clamd 1.4 opens
ARCHIVES = ["clam.zip", "clam.7z", "clam.cab", "clam.arj", "clam.tar.gz", "clam.exe.bz2",
            "clam.bin-be.cpio", "clam.bin-le.cpio", "clam.newc.cpio", "clam.odc.cpio",
            "clam.bz2.zip", "clam.d64.zip", "clam.impl.zip", "clam.exe.mbox.base64",
            "clam.exe.mbox.uu", "clam.tnef", "clam.exe.binhex", "clam.exe.rtf",
            "clam.exe.szdd", "clam.ole.doc", "clam.pdf", "clam.sis"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ClamdServer(tmp_path_factory.mktemp("clamd")) as s:
        yield s


def entry(spec: str, query: str = "CONTSCAN {}\n", name: str = "ClamAV-clamd"):
    return [name, PerlCode("ask_daemon"), [query, spec], CLEAN_RE, INFECTED_RE, NAMES_RE]


def parts(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, PartsTree, list[str]]:
    folder = tmp_path / "parts"
    folder.mkdir(parents=True, exist_ok=True)
    tree = PartsTree(folder=folder)
    for data in files.values():
        name = tree.new_name(None)
        (folder / name).write_bytes(data)
        tree.root.add(Part(base_name=name, path=folder / name, placement=name[1:]))
    return folder, tree, virus.files_to_scan(folder, tree)


def settings(*primary, backup=(), **kw) -> virus.ScanSettings:
    return virus.ScanSettings(av_scanners=list(primary), av_scanners_backup=list(backup), **kw)


# ---------------------------------------------------------------- replies
def test_parse_reply_lines():
    text = ("/t/parts/p001: Eicar-Test-Signature FOUND\n/t/parts/p002: OK\n"
            "/t/x: lstat() failed: No such file or directory. ERROR\n")
    assert clamd.parse_reply(text) == [
        clamd.ScanLine("/t/parts/p001", "FOUND", "Eicar-Test-Signature"),
        clamd.ScanLine("/t/parts/p002", "OK", ""),
        clamd.ScanLine("/t/x", "ERROR", "lstat() failed: No such file or directory.")]


@pytest.mark.parametrize(("spec", "want"), [
    ("/var/run/clamav/clamd.ctl", ("simple", "/var/run/clamav/clamd.ctl")),
    ("127.0.0.1:3310", ("simple", ("127.0.0.1", 3310))),
    ("[::1]:3310", ("simple", ("::1", 3310))),
    ("clamd:/run/clamd.sock", ("clamd", "/run/clamd.sock")),
    ("clamd:127.0.0.1:3310", ("clamd", ("127.0.0.1", 3310))),
])
def test_socket_specs(spec, want):
    assert clamd.parse_address(spec) == want


# ---------------------------------------------------------------- protocols
def test_contscan_over_unix_socket_finds_eicar(server, tmp_path):
    folder, _tree, files = parts(tmp_path, {"text": b"hello\n", "eicar": EICAR})
    result = virus.scan(folder, files, settings(entry(server.socket_path)))
    assert result.status is True
    assert result.virus_names == [EICAR_NAME]
    assert result.detecting_scanners == ["ClamAV-clamd"]
    assert result.output == f"p002: {EICAR_NAME} FOUND\n"          # %v: folder cut


def test_multiscan_over_unix_socket(server, tmp_path):
    folder, _tree, files = parts(tmp_path, {"a": EICAR, "b": b"x", "c": EICAR + b"\n"})
    result = virus.scan(folder, files, settings(entry(server.socket_path, "MULTISCAN {}\n")))
    assert result.virus_names == [EICAR_NAME]
    assert result.output.count("FOUND") == 2


def test_instream_over_tcp_finds_eicar(server, tmp_path):
    folder, _tree, files = parts(tmp_path, {"text": b"hello\n", "eicar": EICAR,
                                            "clam": (TESTFILES / "clam.exe").read_bytes()})
    spec = f"clamd:127.0.0.1:{server.tcp_port}"
    result = virus.scan(folder, files, settings(entry(spec, "*", "ClamAV-clamd-stream")))
    assert result.status is True
    assert result.virus_names == [EICAR_NAME, CLAM_NAME]
    assert result.output == f"p002: {EICAR_NAME} FOUND\np003: {CLAM_NAME} FOUND\n"


def test_instream_first_infected_stops_sending(server, tmp_path):
    folder, _tree, files = parts(tmp_path, {"a": EICAR, "b": (TESTFILES / "clam.exe")
                                            .read_bytes()})
    text = clamd.instream_files(("127.0.0.1", server.tcp_port),
                                [str(folder / f) for f in files], 10,
                                first_infected_stops_scan=True)
    assert text == f"{folder}/p001: {EICAR_NAME} FOUND\n"


def test_instream_large_file_in_chunks(server, tmp_path):
    big = tmp_path / "big"
    with open(big, "wb") as fh:
        fh.write(os.urandom(3 << 20) + EICAR)
    assert clamd.instream_bytes(("127.0.0.1", server.tcp_port), str(big), 20,
                                chunk_size=256 * 1024) == f"stream: {EICAR_NAME} FOUND"


def test_clean_parts_are_clean(server, tmp_path):
    folder, _tree, files = parts(tmp_path, {"a": b"hello\n", "b": b"world\n"})
    result = virus.scan(folder, files, settings(entry(server.socket_path)))
    assert (result.status, result.virus_names, result.error) == (False, [], None)


def test_clam_exe_found_in_every_testfiles_archive(server, tmp_path):
    """clamd unpacks archives itself: every clamav-testfiles container yields clam.exe."""
    present = [a for a in ARCHIVES if (TESTFILES / a).is_file()]
    folder, _tree, files = parts(tmp_path, {a: (TESTFILES / a).read_bytes() for a in present})
    text = clamd.contscan(server.socket_path, str(folder), 30)
    found = {line.path.rsplit("/", 1)[1]: line for line in clamd.parse_reply(text)}
    missing = [a for a, f in zip(present, files, strict=True)
               if found.get(f, clamd.ScanLine("", "", "")).name != CLAM_NAME]
    assert missing == [], text
    result = virus.scan(folder, files, settings(entry(server.socket_path)))
    assert result.virus_names == [CLAM_NAME]


# ---------------------------------------------------------------- 9.4 tiers and failures
def test_debian_15_av_scanners_entries_work_as_imported(server, tmp_path):
    """Debian's 15-av_scanners, imported by the Perl shim: the clamd entry (only its
    socket changed) and the clamscan backup (given our test DB)."""
    conf = Path("/etc/amavis/conf.d/15-av_scanners")
    if not conf.is_file():
        pytest.skip("Debian's amavisd-new config is not installed")
    got = evaluate_perl_config([str(conf)]).variables
    primary = list(got["@av_scanners"][0])
    assert primary[1] == PerlCode("ask_daemon")
    primary[2] = [primary[2][0], server.socket_path]
    folder, _tree, files = parts(tmp_path, {"eicar": EICAR})
    assert virus.scan(folder, files, settings(primary)).virus_names == [EICAR_NAME]
    backup = list(got["@av_scanners_backup"][0])
    assert backup[0] == "ClamAV-clamscan"
    # $TEMPBASE is empty here (only this file is evaluated); give clamscan our test DB
    backup[2] = backup[2].replace("--tempdir=", f"--tempdir={tmp_path}").replace(
        "{}", f"-d {server.db} {{}}")
    dead = entry(str(tmp_path / "no-such.sock"))
    result = virus.scan(folder, files, settings(dead, backup=[backup]))
    assert result.virus_names == [EICAR_NAME]
    assert [(r.name, r.status, r.tier) for r in result.results] == [
        ("ClamAV-clamd", None, "primary"), ("ClamAV-clamscan", True, "secondary")]


@pytest.mark.skipif(not os.access(CLAMSCAN, os.X_OK), reason="no clamscan")
def test_clamscan_command_line_scanner(server, tmp_path):
    folder, _tree, files = parts(tmp_path, {"clean": b"hi\n", "clam": (TESTFILES / "clam.exe")
                                            .read_bytes()})
    scanner = ("ClamAV-clamscan", "clamscan", f"--stdout --no-summary -r -d {server.db} {{}}",
               [0], r":.*\sFOUND$", NAMES_RE)
    result = virus.scan(folder, files, settings(scanner))
    assert result.virus_names == [CLAM_NAME]
    assert f"p002: {CLAM_NAME} FOUND\n" in result.output
    folder2, _t, files2 = parts(tmp_path / "two", {"clean": b"hi\n"})
    assert virus.scan(folder2, files2, settings(scanner)).status is False


def test_failing_primary_tries_next_primary_then_backups(server, tmp_path, caplog):
    folder, _tree, files = parts(tmp_path, {"eicar": EICAR})
    dead = entry(str(tmp_path / "missing.sock"), name="dead")
    tcp = entry(f"127.0.0.1:{server.tcp_port}", name="clamd-tcp")
    with caplog.at_level(logging.DEBUG):
        result = virus.scan(folder, files, settings(dead, tcp))
    assert result.virus_names == [EICAR_NAME] and result.detecting_scanners == ["clamd-tcp"]
    assert "considering backups" not in caplog.text
    result = virus.scan(folder, files, settings(dead, backup=[tcp]))
    assert result.detecting_scanners == ["clamd-tcp"]
    assert "WARN: all primary virus scanners failed, considering backups" in caplog.text


def test_everything_fails_or_nothing_available(tmp_path):
    folder, _tree, files = parts(tmp_path, {"eicar": EICAR})
    dead = entry(str(tmp_path / "missing.sock"))
    result = virus.scan(folder, files, settings(dead, backup=[dead]))
    assert (result.status, result.error) == (None, virus.ALL_FAILED)
    assert "Too many retries" in result.results[0].error
    absent = ("Nothing", ["/nonexistent/scanner", "no-such-scanner-program"], "{}", [0], [1])
    result = virus.scan(folder, files, settings(absent))
    assert result.error == virus.NONE_AVAILABLE


def test_unexpected_answer_is_a_failure(server, tmp_path):
    folder, _tree, files = parts(tmp_path, {"a": b"x"})
    # a query clamd refuses: the reply matches neither clean nor infected
    bad = entry(server.socket_path, "NOSUCHCOMMAND {}\n")
    result = virus.scan(folder, files, settings(bad))
    assert result.error == virus.ALL_FAILED
    assert result.results[0].error.startswith("unexpected exit 0, output=")


def test_daemon_that_never_answers_times_out(tmp_path):
    """A mock (the one allowed): accepts, reads, never replies."""
    path = str(tmp_path / "silent.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        folder, _tree, files = parts(tmp_path, {"a": EICAR})
        t0 = time.monotonic()
        result = virus.scan(folder, files, settings(entry(path), timeout=1.0))
        assert time.monotonic() - t0 < 3
        assert result.error == virus.ALL_FAILED
        assert "timed out" in result.results[0].error
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        srv.close()


def test_first_infected_stops_scan(server, tmp_path):
    folder, _tree, files = parts(tmp_path, {"eicar": EICAR})
    one, two = entry(server.socket_path, name="one"), entry(server.socket_path, name="two")
    assert virus.scan(folder, files, settings(one, two)).detecting_scanners == ["one", "two"]
    stopped = virus.scan(folder, files, settings(one, two, first_infected_stops_scan=True))
    assert stopped.detecting_scanners == ["one"]


def test_virus_names_that_are_spam_are_returned_not_applied(server, tmp_path):
    """Section 9.5: the hook gives the scores; the scanner's detection turns clean."""
    folder, _tree, files = parts(tmp_path, {"eicar": EICAR})
    maps = [new_RE((r"^Eicar-Test-Signature\b", 0.1))]
    result = virus.scan(folder, files, settings(entry(server.socket_path),
                                                virus_name_to_spam_score_maps=maps))
    assert (result.status, result.virus_names) == (False, [])
    assert [(s.scanner, s.names, s.score) for s in result.av_spam] == [
        ("ClamAV-clamd", [EICAR_NAME], 0.1)]
    assert result.av_spam[0].tests == f"AV:{EICAR_NAME}=0.1"


def test_python_callable_scanner(tmp_path):
    folder, _tree, files = parts(tmp_path, {"a": b"bad"})

    def mine(parts_dir, names, timeout):
        return 0, "".join(f"{parts_dir}/{n}: Mine.Test FOUND\n" for n in names)

    result = virus.scan(folder, files, settings(("mine", mine, "{}", [], INFECTED_RE, NAMES_RE)))
    assert result.virus_names == ["Mine.Test"] and result.output == "p001: Mine.Test FOUND\n"


# ---------------------------------------------------------------- 9.1 files, record
def test_files_to_scan_skips_empty_and_removes_strangers(tmp_path, caplog):
    folder, tree, _files = parts(tmp_path, {"a": b"x", "empty": b""})
    (folder / "stray").write_bytes(b"?")
    (folder / "sub").mkdir()
    assert virus.files_to_scan(folder, tree) == ["p001"]
    assert sorted(os.listdir(folder)) == ["p001", "p002"]
    assert "removing unexpected file" in caplog.text


class Stats:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    add_dynamic = add


def message(tmp_path: Path) -> Message:
    spool = tmp_path / "email.txt"
    spool.write_bytes(b"Subject: x\n\nbody\n")
    return Message(sender="a@b", sender_quoted="a@b", recipients=[], spool_path=spool,
                   size=20, log_id="1-01")


def test_run_records_names_and_counters(server, tmp_path):
    folder, tree, _files = parts(tmp_path, {"a": EICAR, "b": EICAR + b"\n"})
    msg = message(tmp_path)
    stats = Stats()

    class View:
        av_scanners = [entry(server.socket_path)]
        av_scanners_backup = []
        keep_decoded_original_maps = []

    result = virus.run(msg, tree, folder, View(), stats)
    assert msg.findings["virus_names"] == [EICAR_NAME] == result.virus_names
    assert stats.counts["OpsVirusCheck"] == 1
    assert stats.counts[f"virus.byname.{EICAR_NAME}"] == 1


def test_fatal_failure_raises_tempfail(tmp_path):
    from amavisd.errors import TempFail

    folder, tree, _files = parts(tmp_path, {"a": b"x"})

    class View:
        av_scanners = [entry(str(tmp_path / "gone.sock"))]
        av_scanners_backup = []
        keep_decoded_original_maps = []
        virus_scanners_failure_is_fatal = True

    with pytest.raises(TempFail, match="virus_scan FAILED: AV: ALL VIRUS SCANNERS FAILED"):
        virus.run(message(tmp_path), tree, folder, View())


def test_parts_folder_readable_by_group_only(tmp_path):
    from amavisd.content import fresh_parts_dir

    old = os.umask(0o077)
    try:
        folder = fresh_parts_dir(str(tmp_path))
    finally:
        os.umask(old)
    assert (os.stat(folder).st_mode & 0o777) == 0o750
    shutil.rmtree(folder)
