# tests: amavisd/release_client.py
"""The amavisd-release client (spec/protocols.md 7.2) against a scripted AM.PDP server."""

from __future__ import annotations

import io
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from amavisd import release_client as rc
from amavisd.release_client import Target, parse_mail_file


@pytest.mark.parametrize(("text", "want"), [
    ("spam/U/UM3XM3XDbN52.gz", Target("spam/U/UM3XM3XDbN52.gz", "UM3XM3XDbN52", "Z")),
    ("k/virus-kX3V0tN-vU4A", Target("k/virus-kX3V0tN-vU4A", "kX3V0tN-vU4A", "F")),
    ("S/banned-AbCdEf012345", Target("S/banned-AbCdEf012345", "AbCdEf012345", "F")),
    ("spam-AbCdEf012345.gz", Target("spam-AbCdEf012345.gz", "AbCdEf012345", "Z")),
    ("UM3XM3XDbN52[27]", Target("UM3XM3XDbN52", "UM3XM3XDbN52", "", "27")),
    ("AbCdEf0123456789", Target("AbCdEf0123456789", "AbCdEf0123456789", "")),
    ("old$id.x", Target("old$id.x", "old$id.x", "")),              # an old-style id
])
def test_parse_mail_file(text: str, want: Target) -> None:
    assert parse_mail_file(text) == want


@pytest.mark.parametrize("text", ["/abs/AbCdEf012345", "", "has space", "a/b/"])
def test_parse_mail_file_refuses(text: str) -> None:
    with pytest.raises(rc.UsageError, match="Invalid quarantine ID"):
        parse_mail_file(text)


def test_request_lines_and_encoding() -> None:
    target = parse_mail_file("k/banned-kX3V0tN-vU4A[3]")
    assert rc.request_lines("release", target, "s3cr%t", ["a b@x"]) == [
        ("request", "release"), ("mail_id", "kX3V0tN-vU4A"), ("quar_type", "F"),
        ("secret_id", "s3cr%t"), ("mail_file", "k/banned-kX3V0tN-vU4A"),
        ("partition_tag", "3"), ("recipient", "a b@x")]
    assert rc.encode_value("s3cr%t a\n") == "s3cr%25t%20a%0a"
    assert rc.encode_name("mail.id") == "mail%2eid"


def test_exit_status_rules() -> None:
    assert rc.status_of(["250 2.0.0 Ok", "250 2.0.0 Ok"]) == 0
    assert rc.status_of(["250 2.0.0 Ok", "450 4.5.0 ERROR: x"]) == 75
    assert rc.status_of(["450 4.5.0 x", "554 5.7.1 no"]) == 1
    assert rc.status_of(["554 5.7.1 no", "450 4.5.0 x"]) == 1
    assert rc.status_of([]) == 1
    assert rc.worse(0, 75) == 75 and rc.worse(75, 1) == 1 and rc.worse(1, 0) == 1


def test_request_kind_from_program_name() -> None:
    assert rc.request_kind("/usr/sbin/amavisd-release") == "release"
    assert rc.request_kind("/usr/local/bin/amavisd-requeue") == "requeue"
    assert rc.request_kind("amavisd-report") == "report"


# ------------------------------------------------------------------ against a server


class Scripted:
    """A Unix-socket AM.PDP server that records requests and answers from a list."""

    def __init__(self, path: Path, answers: list[bytes]):
        self.requests: list[bytes] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                buf = b""
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    buf += line
                    if line == b"\r\n":
                        outer.requests.append(buf)
                        buf = b""
                        self.wfile.write(answers.pop(0))

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator:
    made: list[Scripted] = []

    def make(*answers: bytes) -> tuple[Scripted, Path]:
        path = tmp_path / f"s{len(made)}.sock"
        made.append(Scripted(path, list(answers)))
        return made[-1], path

    yield make
    for s in made:
        s.close()


def run(argv: list[str], kind: str = "release", stdin: str = "") -> tuple[int, str]:
    err = io.StringIO()
    status = rc.run(argv, kind, f"amavisd-{kind}", stdin=io.StringIO(stdin), err=err)
    return status, err.getvalue()


OK = b"setreply=250 2.0.0 from%20MTA(smtp:[127.0.0.1]:25):%20250%202.0.0%20Ok\r\n\r\n"
TEMPFAIL = (b"setreply=450 4.5.0 Failure:%20File%20x%20does%20not%20exist\r\n"
            b"return_value=tempfail\r\nexit_code=75\r\n\r\n")


def test_one_release_request(scripted) -> None:
    server, path = scripted(OK)
    status, err = run(["--socket", str(path), "k/banned-kX3V0tN-vU4A", "bob@x", "c d@x"])
    assert status == 0
    assert err == "250 2.0.0 from MTA(smtp:[127.0.0.1]:25): 250 2.0.0 Ok\n"
    assert server.requests == [b"request=release\r\nmail_id=kX3V0tN-vU4A\r\nquar_type=F\r\n"
                               b"mail_file=k/banned-kX3V0tN-vU4A\r\nrecipient=bob@x\r\n"
                               b"recipient=c%20d@x\r\n\r\n"]


def test_secret_id_starting_with_dash_is_no_option(scripted) -> None:
    server, path = scripted(OK)
    status, _ = run([f"--socket={path}", "kX3V0tN-vU4A", "-xYz_secret1"], kind="requeue")
    assert status == 0
    assert server.requests == [b"request=requeue\r\nmail_id=kX3V0tN-vU4A\r\n"
                               b"secret_id=-xYz_secret1\r\nmail_file=kX3V0tN-vU4A\r\n\r\n"]


def test_stdin_mode_one_connection_worst_status(scripted) -> None:
    server, path = scripted(OK, TEMPFAIL, OK)
    lines = ("# a comment\n\n  \nA/spam-AbCdEf012345.gz\nB/x-BbCdEf012345 secret\n"
             "CbCdEf012345[2] s2 alt@x\n")
    status, err = run(["--socket", str(path), "-"], kind="report", stdin=lines)
    assert status == 75
    assert err.splitlines()[1] == "450 4.5.0 Failure: File x does not exist"
    assert [r.split(b"\r\n")[:2] for r in server.requests] == [
        [b"request=report", b"mail_id=AbCdEf012345"],
        [b"request=report", b"mail_id=BbCdEf012345"],
        [b"request=report", b"mail_id=CbCdEf012345"]]
    assert b"partition_tag=2\r\nrecipient=alt@x\r\n" in server.requests[2]


def test_5xx_and_missing_setreply(scripted) -> None:
    server, path = scripted(b"setreply=554 5.7.1 no\r\n\r\n", b"version_server=2\r\n\r\n")
    assert run(["--socket", str(path), "AbCdEf012345"]) == (1, "554 5.7.1 no\n")
    assert run(["--socket", str(path), "AbCdEf012345"]) == (
        1, "Error, missing 'setreply' attribute\n")


def test_inet_socket(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while not data.endswith(b"\r\n\r\n"):
                data += conn.recv(4096)
            got.append(data)
            conn.sendall(OK)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert run(["--socket", f"inet:127.0.0.1:{port}", "AbCdEf012345"])[0] == 0
    t.join(5)
    listener.close()
    assert got[0].startswith(b"request=release\r\nmail_id=AbCdEf012345\r\n")


@pytest.mark.parametrize(("argv", "first"), [
    ([], "Not enough arguments"),
    (["-", "extra"], "Extra arguments after '-'"),
    (["--bogus", "x"], "Unknown option --bogus"),
    (["/abs/AbCdEf012345"], "Invalid quarantine ID: /abs/AbCdEf012345"),
    (["--socket"], "--socket needs a value"),
])
def test_usage_errors_exit_64(argv: list[str], first: str) -> None:
    status, err = run(["--socket", "/nonexistent/sock", *argv] if argv[:1] != ["--socket"]
                      else argv)
    assert status == 64
    assert err.splitlines()[0] == first
    assert "Usage:  $ amavisd-release [--socket PATH|inet:host:port] mail_file" in err


def test_connection_error_exits_1(tmp_path: Path) -> None:
    status, err = run(["--socket", str(tmp_path / "none.sock"), "AbCdEf012345"])
    assert status == 1
    assert err == f"Can't connect to UNIX socket {tmp_path}/none.sock: No such file or directory\n"
