"""Identifiers: mail_id, secret_id and the log id (am_id), in amavis's formats.

spec/protocols.md section 1.8: the secret is ``bits/8`` random bytes in base64url;
the mail_id is base64url(MD5(secret bytes)) cut to the same length, drawn again until
it starts and ends with an alphanumeric.  The log id is ``%05d-%02d`` (pid,
connection count of the child), with ``-N`` for the Nth transaction of a session.
"""

from __future__ import annotations

import base64
import hashlib
import os


def _b64url(raw: bytes) -> str:
    return base64.b64encode(raw, altchars=b"-_").decode("ascii")


def generate_mail_id(size_bits: int = 72) -> tuple[str, str]:
    """Return ``(mail_id, secret_id)``; ``size_bits`` is a multiple of 24."""
    if size_bits % 24:
        raise ValueError("mail_id_size_bits must be a multiple of 24")
    nbytes = size_bits // 8
    length = size_bits // 6
    while True:
        raw = os.urandom(nbytes)
        secret = _b64url(raw)
        digest = _b64url(hashlib.md5(raw).digest())       # MD5 of the bytes (section 3)
        mail_id = digest[:length]
        if mail_id[0].isalnum() and mail_id[-1].isalnum():
            return mail_id, secret


def log_id(pid: int, connection_count: int, transaction: int = 1) -> str:
    """``12160-02`` for the first transaction of a session, ``12160-02-2`` for the next."""
    base = f"{pid:05d}-{connection_count:02d}"
    return base if transaction <= 1 else f"{base}-{transaction}"
