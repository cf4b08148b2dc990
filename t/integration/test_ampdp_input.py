# tests: AM.PDP hostile input through the real daemon's Unix socket
"""Malformed lines, unknown attributes and paths outside $TEMPBASE/$MYHOME
(spec/protocols.md 4.1, 4.3, 4.4; docs/differences.md #31, #42).

One daemon serves the whole module.  Every refused request is sent with
``delivery_care_of=server`` and ``tempdir_removed_by=server``, the settings under
which a server that did read the file would forward it to the sink and then delete
it, so "touches nothing" is checked where it could fail: the file outside keeps its
bytes, mtime and atime (atime proves it was not read), its folder gets no ``parts/``,
the sink gets nothing and the log has no Passed/Blocked line.
``test_baseline_valid_request_is_forwarded_and_removed`` shows the same harness does
see a request that is processed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from t.helpers.daemon import free_port, start_daemon
from t.integration.conftest import base_config, wait_for
from t.integration.test_ampdp import CLEAN
from t.integration.test_golden import PROFILE_PASS
from t.sink import Sink

NOBODY = 65534
OLD_ATIME = 1_000_000_000            # 2001: any read moves it (relatime, atime < mtime)


def pct(text: str) -> str:
    """AM.PDP field encoding as the spec words it (4.1): bytes outside 0x21-0x7E and
    ``%`` become lowercase %xx.  Written here again so the test does not trust the
    server's own encoder."""
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else f"%{b:02x}"
                   for b in text.encode("utf-8", "surrogateescape"))


def failure(reason: str) -> list[str]:
    """The failure reply of 4.4 (without Perl's source location: differences #34)."""
    return [f"setreply=450 4.5.0 {pct('Failure: ' + reason)}", "return_value=tempfail",
            "exit_code=75", ""]


class Env:
    """The module's daemon, sink and folders, and a raw AM.PDP client."""

    def __init__(self, root: Path, sink: Sink) -> None:
        self.root = root
        self.sink = sink
        self.home = root / "home"
        self.tempbase = self.home / "tmp"
        self.sock = self.home / "amavisd.sock"
        self.outside = root / "outside"
        self.daemon = None

    def log(self) -> str:
        return self.daemon.logfile_text()

    def main_lines(self) -> list[str]:
        return [x for x in self.log().splitlines() if " Passed " in x or " Blocked " in x]

    def tempdir(self, name: str, data: bytes | None = CLEAN) -> Path:
        """A client folder under $TEMPBASE, as amavisd-submit makes it."""
        path = self.tempbase / f"amavis-{name}"
        path.mkdir()
        os.chmod(path, 0o777)               # the daemon (nobody) may remove it
        if data is not None:
            (path / "email.txt").write_bytes(data)
            os.chmod(path / "email.txt", 0o644)
        return path

    def exchange(self, raw: bytes, replies: int = 1) -> list[list[str]]:
        """Send ``raw`` on one connection, read ``replies`` responses (each up to its
        empty line; ``action=DUNNO`` ends with LF LF).  Returns each one's lines."""
        out: list[list[str]] = []
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(self.sock))
            s.sendall(raw)
            buf = b""
            while len(out) < replies:
                ends = [i for i in (buf.find(b"\r\n\r\n"), buf.find(b"DUNNO\n\n")) if i >= 0]
                if ends:
                    cut = min(ends)
                    cut += 4 if buf[cut:cut + 4] == b"\r\n\r\n" else 7
                    text = buf[:cut].decode("ascii")
                    out.append(text.replace("\r\n", "\n").split("\n")[:-1])
                    buf = buf[cut:]
                    continue
                chunk = s.recv(65536)
                assert chunk, f"server closed the connection; got {out} and {buf!r}"
                buf += chunk
        return out


@pytest.fixture(scope="module")
def env():
    base = Path(tempfile.gettempdir()) / "amavisd-tests"
    base.mkdir(mode=0o711, exist_ok=True)
    os.chmod(base, 0o711)
    root = Path(tempfile.mkdtemp(prefix="ampdp-input-", dir=base))
    os.chmod(root, 0o711)
    try:
        with Sink() as sink:
            e = Env(root, sink)
            extra = PROFILE_PASS + (
                f"unix_socketname = {str(e.sock)!r}\nunix_socket_mode = 0o666\n"
                "interface_policy = {'SOCK': 'AM.PDP-SOCK'}\n"
                "policy_bank = {'AM.PDP-SOCK': {'protocol': 'AM.PDP'}}\n")
            e.daemon = start_daemon(base_config(root, free_port(),
                                                f"smtp:[127.0.0.1]:{sink.port}", extra), root)
            try:
                yield e
            finally:
                e.daemon.stop()
    finally:
        if os.environ.get("AMAVISD_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def outside(env):
    """A message outside $TEMPBASE and $MYHOME, owned by the daemon user (so a buggy
    server could read and delete it), with an old atime."""
    folder = env.outside
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    target = folder / "email.txt"
    target.write_bytes(CLEAN)
    for p in (folder, target):
        os.chown(p, NOBODY, -1)
    os.chmod(folder, 0o777)
    os.utime(target, (OLD_ATIME, time.time() - 60))
    probe = folder / "probe.txt"                 # can this file system show a read?
    probe.write_bytes(b"x")
    os.utime(probe, (OLD_ATIME, time.time() - 60))
    probe.read_bytes()
    if os.stat(probe).st_atime == OLD_ATIME:
        pytest.skip("this file system does not update atime on read (noatime)")
    probe.unlink()
    st = os.stat(target)
    return target, (st.st_ino, st.st_mtime_ns, st.st_atime_ns)


def untouched(env, target: Path, before: tuple, n_sink: int, n_main: int) -> None:
    st = os.stat(target)
    assert target.read_bytes() == CLEAN
    assert (st.st_ino, st.st_mtime_ns) == before[:2]
    assert sorted(p.name for p in target.parent.iterdir()) == ["email.txt"]   # no parts/
    assert len(env.sink.messages) == n_sink
    assert len(env.main_lines()) == n_main
    assert st.st_atime_ns == before[2], "the file outside was read"


def client_dirs(env) -> list[str]:
    """What clients put under $TEMPBASE (the children's own folders come and go)."""
    own = re.compile(r"amavis-\d{8}T\d{6}-\d+-\w{8}")
    return sorted(p.name for p in env.tempbase.iterdir() if not own.fullmatch(p.name))


def request(tempdir: Path | str | None, *extra: str, rcpt: str = "bob@anchor.test") -> bytes:
    lines = ["request=AM.PDP"]
    if tempdir is not None:
        lines.append(f"tempdir={tempdir}")
    lines += ["tempdir_removed_by=server", "delivery_care_of=server",
              "sender=<alice@anchor.test>", f"recipient=<{rcpt}>", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


POLICY = b"request=smtpd_access_policy\n\n"


def continue_reply(reply: list[str]) -> list[str]:
    """The exact clean ``continue`` response (client delivers), with its log id."""
    log_id = reply[1].partition("=")[2]
    return ["version_server=2", f"log_id={log_id}",
            f"setreply=250 2.5.0 {pct(f'Ok, id={log_id}, continue delivery')}",
            "return_value=continue", "exit_code=0", ""]


# ------------------------------------------------------------------ the harness can fail
def test_baseline_valid_request_is_forwarded_and_removed(env):
    """delivery_care_of=server: a request we process does reach the sink and its
    tempdir is removed, so the checks below would notice a leak."""
    n_sink, n_main = len(env.sink.messages), len(env.main_lines())
    tempdir = env.tempdir("base1")
    (reply,) = env.exchange(request(tempdir))
    assert reply[-3:] == ["return_value=discard", "exit_code=99", ""]   # we delivered
    wait_for(lambda: len(env.sink.messages) == n_sink + 1, what="the forwarded message")
    assert not tempdir.exists()
    wait_for(lambda: len(env.main_lines()) == n_main + 1, what="the Passed line")


# ------------------------------------------------------------------ paths
PATH_CASES = {
    # id: (attributes given the env and the outside file, expected failure reason)
    "tempdir outside": (lambda e, t: (t.parent, ()),
                        lambda e, t: f"Suspicious temporary directory name '{t.parent}'"),
    "tempdir ..": (lambda e, t: (f"{e.tempbase}/amavis-x/../../../outside", ()),
                   lambda e, t: "Suspicious temporary directory name "
                                f"'{e.tempbase}/amavis-x/../../../outside'"),
    "tempdir is $TEMPBASE/.": (lambda e, t: (f"{e.tempbase}/.", ()),
                               lambda e, t: f"Suspicious temporary directory name "
                                            f"'{e.tempbase}/.'"),
    "tempdir is $MYHOME/tmp": (lambda e, t: (e.tempbase, ()),
                               lambda e, t: f"Suspicious temporary directory name "
                                            f"'{e.tempbase}'"),
    "tempdir symlink": (lambda e, t: (_symlink(e.tempbase / "amavis-link", t.parent), ()),
                        lambda e, t: "Suspicious temporary directory name "
                                     f"'{e.tempbase}/amavis-link'"),
    "mail_file outside": (lambda e, t: (e.tempdir("mf1"), (f"mail_file={t}",)),
                          lambda e, t: f"Suspicious mail file name '{t}'"),
    "mail_file ..": (lambda e, t: (e.tempdir("mf2"),
                                   (f"mail_file={e.tempbase}/amavis-mf2/../../../outside/"
                                    "email.txt",)),
                     lambda e, t: "Suspicious mail file name "
                                  f"'{e.tempbase}/amavis-mf2/../../../outside/email.txt'"),
    "mail_file in $MYHOME, ..": (lambda e, t: (None, (f"mail_file={e.home}/../outside/"
                                                      "email.txt",)),
                                 lambda e, t: "Suspicious mail file name "
                                              f"'{e.home}/../outside/email.txt'"),
    "email.txt symlink": (lambda e, t: (_symlinked_mail(e.tempdir("sl", None), t), ()),
                          lambda e, t: "Suspicious mail file name "
                                       f"'{e.tempbase}/amavis-sl/email.txt'"),
    "mail_file symlink": (lambda e, t: (None, (f"mail_file={_symlink(e.home / 'm.txt', t)}",)),
                          lambda e, t: f"Suspicious mail file name '{e.home}/m.txt'"),
}


def _symlink(link: Path, to: Path) -> Path:
    link.symlink_to(to)
    return link


def _symlinked_mail(tempdir: Path, to: Path) -> Path:
    (tempdir / "email.txt").symlink_to(to)
    return tempdir


@pytest.mark.parametrize("case", list(PATH_CASES))
def test_path_outside_the_allowed_folders_is_refused_untouched(env, outside, case):
    target, before = outside
    attrs, reason = PATH_CASES[case]
    tempdir, extra = attrs(env, target)
    n_sink, n_main = len(env.sink.messages), len(env.main_lines())
    inside = client_dirs(env)
    refused, policy = env.exchange(request(tempdir, *extra) + POLICY, replies=2)
    assert refused == failure(reason(env, target))
    assert policy == ["action=DUNNO", ""]        # the same connection goes on
    time.sleep(0.2)
    untouched(env, target, before, n_sink, n_main)
    assert client_dirs(env) == inside            # nothing removed
    assert f"AM.PDP request refused: {reason(env, target)}" in env.log()


def test_missing_mail_file(env, outside):
    target, before = outside
    n_sink, n_main = len(env.sink.messages), len(env.main_lines())
    empty = env.tempdir("empty1", None)
    (reply,) = env.exchange(request(empty))
    assert reply == failure(f"File {empty}/email.txt does not exist")
    assert empty.is_dir()                        # a refused request removes nothing
    (reply,) = env.exchange(request(None, f"mail_file={env.home}/nothere.txt"))
    assert reply == failure(f"File {env.home}/nothere.txt does not exist")
    untouched(env, target, before, n_sink, n_main)


# ------------------------------------------------------------------ malformed lines
def test_line_without_separator_is_logged_and_ignored(env):
    tempdir = env.tempdir("inv1")
    raw = request(tempdir, "this line has no separator").replace(
        b"delivery_care_of=server", b"delivery_care_of=client")
    (reply,) = env.exchange(raw)
    assert reply == continue_reply(reply)
    assert reply[1].startswith("log_id=inv1-")
    assert "(!)INVALID AM.PDP ATTRIBUTE LINE: this line has no separator" in env.log()


def test_nul_in_a_name_makes_the_line_invalid(env):
    """4.1: a name must not contain NUL; the line (a second recipient) is ignored."""
    n_sink = len(env.sink.messages)
    tempdir = env.tempdir("nul1")
    raw = request(tempdir, "recip\x00ient=<carol@anchor.test>")
    (reply,) = env.exchange(raw)
    assert reply[-3:] == ["return_value=discard", "exit_code=99", ""]
    wait_for(lambda: len(env.sink.messages) == n_sink + 1, what="the forwarded message")
    (rcpt,) = env.sink.messages[-1].rcpts                              # not carol
    assert rcpt.startswith(b"RCPT TO:<bob@anchor.test>")
    assert re.search(r"\(!\)INVALID AM.PDP ATTRIBUTE LINE: recip.{1,6}ient=<carol@anchor"
                     r"\.test>", env.log())


def test_nul_and_dotdot_decoded_from_percent_in_a_path(env):
    (reply,) = env.exchange(request(f"{env.tempbase}/amavis-a%00b"))
    assert reply == failure(f"Suspicious temporary directory name '{env.tempbase}/amavis-a\0b'")
    (reply,) = env.exchange(request(f"{env.tempbase}/%2e%2e/%2e%2e/outside"))
    assert reply == failure("Suspicious temporary directory name "
                            f"'{env.tempbase}/../../outside'")


def test_bad_percent_escapes_stay_literal(env):
    """4.1 decodes only %XX with two hex digits; anything else is kept as it is."""
    (reply,) = env.exchange(b"request=AM.PDP%zz\r\nrecipient=<b@x>\r\n\r\n")
    assert reply == failure("Unknown request 'AM.PDP%zz'")
    (reply,) = env.exchange(b"request=AM.PDP%4\r\n\r\n")
    assert reply == failure("Unknown request 'AM.PDP%4'")


def test_overlong_line_gets_a_failure_and_the_session_goes_on(env):
    """A line over 64 KiB is dropped unread and its request tempfails; the next request
    on the same connection is served normally."""
    kept = env.tempdir("long1")
    huge = "recipient=<" + "a" * 100_000 + "@anchor.test>"
    good = env.tempdir("long2")
    raw = (request(kept, huge) + request(good).replace(b"delivery_care_of=server",
                                                       b"delivery_care_of=client"))
    refused, served = env.exchange(raw, replies=2)
    assert refused == failure("AM.PDP attribute line too long")
    assert (kept / "email.txt").read_bytes() == CLEAN    # refused: not removed
    assert served == continue_reply(served)
    assert "(!)INVALID AM.PDP ATTRIBUTE LINE: longer than 65536 bytes" in env.log()


def test_overlong_line_in_small_pieces(env):
    """The same when the line arrives slowly, with no LF for a long time."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(env.sock))
        s.sendall(b"request=AM.PDP\r\nsender=<")
        for _ in range(40):
            s.sendall(b"x" * 4096)
        s.sendall(b">\r\nrecipient=<b@x>\r\n\r\n" + POLICY)
        buf = b""
        while not buf.endswith(b"DUNNO\n\n"):
            chunk = s.recv(4096)
            assert chunk, buf
            buf += chunk
    lines = buf.decode().replace("\r\n", "\n").split("\n")
    assert lines == failure("AM.PDP attribute line too long") + ["action=DUNNO", "", ""]


def test_unknown_attributes_are_logged_and_ignored(env):
    tempdir = env.tempdir("unk1")
    raw = request(tempdir, "frobnicate=yes", "x-custom:  1").replace(
        b"delivery_care_of=server", b"delivery_care_of=client")
    (reply,) = env.exchange(raw)
    assert reply == continue_reply(reply)
    log = env.log()
    assert "AM.PDP: unknown attribute ignored: frobnicate=yes" in log
    assert "AM.PDP: unknown attribute ignored: x-custom=1" in log


def test_only_invalid_lines_is_a_missing_request(env):
    (reply,) = env.exchange(b"garbage\r\n\x00=\r\n=\r\n\r\n")
    assert reply == failure("Missing 'request' field")


def test_cr_lf_nul_in_client_attributes_do_not_reach_the_next_hop(env):
    """%0d%0a and %00 decode to control characters (4.1); with delivery_care_of=server
    they must not become SMTP commands toward the next hop (XFORWARD values are
    sanitised), and the request is otherwise served."""
    n_sink = len(env.sink.messages)
    tempdir = env.tempdir("inj1")
    (reply,) = env.exchange(request(tempdir, "client_address=192.0.2.1%00x",
                                    "helo_name=h%0d%0aRCPT%20TO:<evil@x>",
                                    "client_name=n%0aQUIT", "queue_id=Q%0d%0aDATA"))
    assert reply[-3:] == ["return_value=discard", "exit_code=99", ""]
    wait_for(lambda: len(env.sink.messages) == n_sink + 1, what="the forwarded message")
    commands = [c for s in env.sink.sessions for c in s.commands]
    assert b"XFORWARD ADDR=192.0.2.1?x NAME=n?QUIT HELO=h??RCPT?TO:?evil?x? IDENT=Q??DATA" \
        in commands
    assert not any(c.startswith((b"RCPT TO:<evil", b"QUIT\r")) for c in commands)
    (rcpt,) = env.sink.messages[-1].rcpts
    assert rcpt.startswith(b"RCPT TO:<bob@anchor.test>")
