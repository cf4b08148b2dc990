# tests: t/actions/test_dkim_sign.py, t/checks/test_dkim.py
"""DKIM canonicalisation shared by signing and verification (RFC 6376 section 3.4).

The body is never held whole: ``BodyHasher`` takes the spool file in chunks and
feeds every requested (canonicalisation, hash, length limit) at once, so one pass
over a 50 MB body serves all signatures of a message.  Headers are few and small:
they are split here and hashed with dkimpy's header canonicalisation and field
selection (``dkim.hash_headers``), so the header side of a signature is exactly
the library's.

Two views of the bytes exist.  Verification hashes what the spool holds (LF line
ends become CRLF).  Signing hashes what the next hop will receive: the SMTP client
(``protocols.smtp_client.DotStuffer``) strips every CR and turns NUL into
``\\xC0\\x80``, so ``wire=True`` applies the same change before canonicalising,
or our own signatures would break in transit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 256 * 1024
#: A partial line longer than this is canonicalised up to its trailing whitespace, so
#: a body without line ends does not grow the carry without bound.
_CARRY_LIMIT = 64 * 1024
HASHES = {"sha256": hashlib.sha256, "sha1": hashlib.sha1}

_WSP_RUN = re.compile(rb"[ \t]+")
_WSP_EOL = re.compile(rb"[ \t]+\n")
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def wire_bytes(data: bytes) -> bytes:
    """What the SMTP client sends for these spool bytes (CR dropped, NUL mapped)."""
    if b"\r" in data:
        data = data.replace(b"\r", b"")
    if b"\0" in data:
        data = data.replace(b"\0", b"\xc0\x80")
    return data


@dataclass(frozen=True)
class BodySpec:
    """One body hash a signature needs: ``c`` body part, hash name, ``l=`` limit."""

    canon: str                      # 'simple' | 'relaxed'
    hash_name: str                  # 'sha256' | 'sha1'
    limit: int | None = None


class _Sink:
    """A hash fed at most ``limit`` canonical bytes (the ``l=`` tag)."""

    def __init__(self, spec: BodySpec):
        self.hasher = HASHES[spec.hash_name]()
        self.left = spec.limit

    def update(self, data: bytes) -> None:
        if self.left is None:
            self.hasher.update(data)
        elif self.left > 0:
            piece = data[:self.left]
            self.hasher.update(piece)
            self.left -= len(piece)


class _Canon:
    """Streaming simple or relaxed body canonicalisation into a set of sinks.

    Empty lines are held back (``held``) until a non-empty line follows, because
    both algorithms drop the empty lines at the end of the body.
    """

    def __init__(self, relaxed: bool, sinks: list[_Sink]):
        self.relaxed = relaxed
        self.sinks = sinks
        self.held = 0                 # LFs not yet emitted (possible trailing empty lines)
        self.carry = b""              # relaxed: the unfinished last line
        self.emitted = False

    def _emit(self, text: bytes) -> None:
        """``text`` ends with a non-LF byte; held line ends go out first."""
        out = (b"\n" * self.held + text).replace(b"\n", b"\r\n")
        self.held = 0
        self.emitted = True
        for sink in self.sinks:
            sink.update(out)

    def _lines(self, data: bytes) -> None:
        core = data.rstrip(b"\n")
        if core:
            self._emit(core)
            self.held = len(data) - len(core)
        else:
            self.held += len(data)

    def feed(self, data: bytes) -> None:
        if not self.relaxed:
            if data:
                self._lines(data)
            return
        data = self.carry + data
        cut = data.rfind(b"\n") + 1
        done, self.carry = data[:cut], data[cut:]
        if done:
            self._lines(_WSP_RUN.sub(b" ", _WSP_EOL.sub(b"\n", done)))
        if len(self.carry) > _CARRY_LIMIT:
            head = self.carry.rstrip(b" \t")
            if head:
                self._emit(_WSP_RUN.sub(b" ", head))
                self.carry = self.carry[len(head):]

    def finish(self) -> None:
        if self.relaxed and self.carry:
            tail = _WSP_RUN.sub(b" ", self.carry.rstrip(b" \t"))
            self.carry = b""
            if tail:
                self._emit(tail)
        if self.emitted:
            end = b"\r\n"               # the last line's own end (added when missing)
        else:
            end = b"" if self.relaxed else b"\r\n"   # RFC 6376 3.4.3 / 3.4.4 empty body
        for sink in self.sinks:
            sink.update(end)


class BodyHasher:
    """Body hashes for several ``BodySpec``s from one pass over the body bytes."""

    def __init__(self, specs: Iterable[BodySpec], wire: bool = False):
        self.wire = wire
        self.sinks: dict[BodySpec, _Sink] = {}
        self._canons: list[_Canon] = []
        for spec in dict.fromkeys(specs):
            if spec.canon not in ("simple", "relaxed") or spec.hash_name not in HASHES:
                raise ValueError(f"unsupported body hash {spec}")
            self.sinks[spec] = _Sink(spec)
        for relaxed in (False, True):
            sinks = [s for spec, s in self.sinks.items() if (spec.canon == "relaxed") == relaxed]
            if sinks:
                self._canons.append(_Canon(relaxed, sinks))

    def update(self, data: bytes) -> None:
        """More spool bytes (LF line ends), any chunking."""
        if self.wire:
            data = wire_bytes(data)
        for canon in self._canons:
            canon.feed(data)

    def digests(self) -> dict[BodySpec, bytes]:
        for canon in self._canons:
            canon.finish()
        self._canons = []
        return {spec: sink.hasher.digest() for spec, sink in self.sinks.items()}


def hash_body_file(path: Path, offset: int, specs: Sequence[BodySpec], *,
                   wire: bool = False) -> dict[BodySpec, bytes]:
    """Hash the spool file from ``offset`` (where the body starts), in chunks."""
    hasher = BodyHasher(specs, wire=wire)
    with open(path, "rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(CHUNK):
            hasher.update(chunk)
    return hasher.digests()


# ---------------------------------------------------------------- header fields
Field = tuple[bytes, bytes]   # (name as written, value after the colon incl. the CRLF)


def split_fields(block: bytes) -> list[Field]:
    """Header fields of a header block (LF or CRLF line ends), as dkimpy hashes them.

    Continuation lines stay with their field; a line that is neither a field nor a
    continuation (garbage) is skipped.  Values keep their folding and end in CRLF.
    """
    fields: list[list[bytes]] = []
    for line in re.split(rb"\r?\n", block):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1][1] += line + b"\r\n"
            continue
        m = _FIELD_NAME.match(line)
        if m is None:
            fields.append([b"", b""])     # a stray line interrupts continuations
            continue
        name = line[:line.index(b":")]
        fields.append([name, line[len(name) + 1:] + b"\r\n"])
    return [(f[0], f[1]) for f in fields if f[0]]


def header_digest(fields: Sequence[Field], signed: Sequence[bytes], canon_header: str,
                  canon_body: str, sig_field: Field, hash_name: str) -> bytes:
    """The header hash of RFC 6376 3.7: the ``h=`` fields bottom-up, then the signature
    field itself with its ``b=`` value emptied and no final CRLF (dkimpy does both).
    python-dkim is imported here, not at the top: only signing and verifying need it."""
    import dkim
    from dkim.canonicalization import CanonicalizationPolicy

    policy = CanonicalizationPolicy.from_c_value(f"{canon_header}/{canon_body}".encode())
    hasher = HASHES[hash_name]()
    headers = policy.canonicalize_headers(
        [list(f) for f in _selected(fields, signed, canon_header == "relaxed")])
    dkim.hash_headers(hasher, policy, headers, list(signed), list(sig_field), None)
    return hasher.digest()


def _selected(fields: Sequence[Field], signed: Sequence[bytes], relaxed: bool) -> list[Field]:
    """The fields ``h=`` picks (dkimpy's ``select_headers``: per name, bottom-up), in
    header order.  Only these need canonicalising, the most costly part of the header
    hash; dkimpy selecting again from this subset picks the same fields in the same
    order, since a name's picks are always its bottom-most occurrences.  Names compare
    as dkimpy compares them after canonicalisation (relaxed also drops trailing blanks)."""
    names = [f[0].lower().rstrip() if relaxed else f[0].lower() for f in fields]
    chosen: set[int] = set()
    last: dict[bytes, int] = {}
    for name in signed:
        i = last.get(name, len(fields))
        while i > 0:
            i -= 1
            if names[i] == name:
                chosen.add(i)
                break
        last[name] = i
    return [f for i, f in enumerate(fields) if i in chosen]


def parse_canon(value: bytes | None) -> tuple[str, str]:
    """``c=`` as (header, body); a missing body part is ``simple`` (RFC 6376 3.5)."""
    if value is None:
        return "simple", "simple"
    head, _, body = value.decode("ascii", "replace").strip().lower().partition("/")
    return head.strip(), (body.strip() or "simple")


def tags_text(tags: Any) -> str:
    """For logs: ``k=v; ...`` of a parsed tag dict (bytes keys and values)."""
    return "; ".join(f"{k.decode()}={v.decode('latin-1')}" for k, v in tags.items())
