"""The body digest of a message (pipeline.md section 5): macro ``%b``, ``%b`` in
quarantine file names, the JSON event's ``digest_body``.

Over the body only, the bytes after the first empty line as stored (LF line
ends in our spool), with ``$mail_digest_algorithm`` (``MD5`` by default; other
names as Digest::SHA spells them, ``SHA-1``, ``SHA-256``...).  It is fed while
the message passes anyway (the SMTP spool, the AM.PDP size pass), so it costs no
extra read of the file.
"""

from __future__ import annotations

import hashlib
from typing import Any


def hash_name(algorithm: str | None) -> str:
    """``MD5``/``SHA-1``/``SHA256`` -> hashlib's ``md5``/``sha1``/``sha256``."""
    name = (algorithm or "MD5").replace("-", "").replace("_", "").lower()
    if name not in hashlib.algorithms_available:
        raise ValueError(f"$mail_digest_algorithm {algorithm!r} is not a known digest")
    return name


class BodyDigest:
    """Feed the message in order, in pieces of any size; ``hexdigest()`` at the end."""

    def __init__(self, algorithm: str | None = "MD5"):
        self._hash: Any = hashlib.new(hash_name(algorithm))
        self._in_body = False
        self._tail = b"\n"          # the message start counts as a line start

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._in_body:
            self._hash.update(data)
            return
        probe = self._tail + data
        at = probe.find(b"\n\n")
        if at < 0:
            at = probe.find(b"\n\r\n")          # a CRLF-stored file (AM.PDP clients)
            sep = 3
        else:
            crlf = probe.find(b"\n\r\n", 0, at)
            at, sep = (crlf, 3) if crlf >= 0 else (at, 2)
        if at >= 0:
            self._in_body = True
            self._hash.update(data[at + sep - len(self._tail):])
        else:
            self._tail = probe[-2:]

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
