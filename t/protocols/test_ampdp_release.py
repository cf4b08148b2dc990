# tests: amavisd/protocols/ampdp.py (release/requeue/report dispatch)
"""AM.PDP release requests over a StringTransport (spec/protocols.md 4.5).

The handler is a fake: these tests pin the wire side only, what the server
passes on and the exact response lines it writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from amavisd.actions.release import ReleaseError, ReleaseRequest
from amavisd.errors import Reply
from amavisd.protocols.ampdp import AMPDPServer


class ReleaseHandler:
    """Answers each release request with the next item of ``answers``."""

    def __init__(self, base: Path) -> None:
        self.tempbase = str(base / "tmp")
        self.myhome = str(base)
        self.timeout = 60.0
        self.requests: list[ReleaseRequest] = []
        self.answers: list[object] = []
        self.pending: defer.Deferred | None = None
        self.ended = 0

    def pdp_release(self, request: ReleaseRequest) -> defer.Deferred:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if answer == "pending":
            self.pending = defer.Deferred()
            return self.pending
        if isinstance(answer, Exception):
            raise answer                      # a synchronous failure, as maybeDeferred sees
        return defer.succeed(answer)

    def request_ended(self) -> None:
        self.ended += 1

    def session_ended(self) -> None:
        pass


@pytest.fixture
def env(tmp_path):
    handler = ReleaseHandler(tmp_path)
    server = AMPDPServer(handler, reactor=task.Clock())
    transport = StringTransport()
    server.makeConnection(transport)
    return server, transport, handler


def send(server, transport, text: str) -> bytes:
    transport.clear()
    server.dataReceived(text.encode())
    return transport.value()


def test_request_attributes_are_passed_on(env):
    server, transport, handler = env
    handler.answers.append([Reply(250, "2.0.0", "from MTA(smtp:[127.0.0.1]:25): 250 2.0.0 Ok")])
    out = send(server, transport, "request=Release\r\nmail_id=kX3V0tN-vU4A\r\nquar_type=F\r\n"
                                  "secret_id=abc\r\nmail_file=k/banned-kX3V0tN-vU4A\r\n"
                                  "partition_tag=3\r\nrequested_by=<adm%40x>\r\n"
                                  "recipient=a@x\r\nrecipient=<b@x>\r\n\r\n")
    assert handler.requests == [ReleaseRequest(
        kind="release", mail_id="kX3V0tN-vU4A", secret_id="abc", partition_tag="3",
        quar_type="F", mail_file="k/banned-kX3V0tN-vU4A", requested_by="<adm@x>",
        sender=None, recipients=("a@x", "<b@x>"))]
    assert out == (b"setreply=250 2.0.0 from%20MTA(smtp:[127.0.0.1]:25):%20250%202.0.0%20Ok"
                   b"\r\n\r\n")                       # no return_value, no exit_code (4.5)
    assert handler.ended == 1


def test_one_setreply_per_recipient_then_next_request(env):
    server, transport, handler = env
    handler.answers += [[Reply(250, "2.0.0", "Ok"), Reply(450, "4.5.0", "ERROR: no way")],
                        [Reply(250, "2.5.0", "No recipients, nothing to do")]]
    out = send(server, transport, "request=requeue\nmail_id=A1\n\nrequest=report\nmail_id=B2\n\n")
    assert out == (b"setreply=250 2.0.0 Ok\r\nsetreply=450 4.5.0 ERROR:%20no%20way\r\n\r\n"
                   b"setreply=250 2.5.0 No%20recipients,%20nothing%20to%20do\r\n\r\n")
    assert [r.kind for r in handler.requests] == ["requeue", "report"]


def test_refusal_is_the_failure_triple_and_the_session_goes_on(env):
    server, transport, handler = env
    handler.answers += [ReleaseError("Invalid mail_id 'bad/id'"), RuntimeError("boom"),
                        [Reply(250, "2.0.0", "Ok")]]
    out = send(server, transport, "request=release\nmail_id=bad/id\n\n")
    assert out == (b"setreply=450 4.5.0 Failure:%20Invalid%20mail_id%20'bad/id'\r\n"
                   b"return_value=tempfail\r\nexit_code=75\r\n\r\n")
    out = send(server, transport, "request=release\nmail_id=A\n\n")
    assert out == b"setreply=450 4.5.0 Failure:%20boom\r\nreturn_value=tempfail\r\nexit_code=75" \
                  b"\r\n\r\n"
    assert send(server, transport, "request=release\nmail_id=A\n\n") == \
        b"setreply=250 2.0.0 Ok\r\n\r\n"
    assert transport.connected


def test_input_waits_while_a_release_runs(env):
    """One request at a time: the next is read only after the answer is written."""
    server, transport, handler = env
    handler.answers += ["pending", [Reply(250, "2.0.0", "second")]]
    out = send(server, transport, "request=release\nmail_id=A\n\nrequest=release\nmail_id=B\n\n")
    assert out == b"" and [r.mail_id for r in handler.requests] == ["A"]
    assert handler.pending is not None
    handler.pending.callback([Reply(250, "2.0.0", "first")])
    assert transport.value() == (b"setreply=250 2.0.0 first\r\n\r\n"
                                 b"setreply=250 2.0.0 second\r\n\r\n")
