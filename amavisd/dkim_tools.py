# tests: t/test_dkim_keys.py
"""``amavisd genrsa | showkeys | testkeys`` (spec/pipeline.md 24.4, protocols.md 1.7).

The texts are the Perl daemon's (Amavis::Tools), so an admin's scripts and zone
file habits keep working: ``showkeys`` prints each declared key as a zone-file
TXT record, ``testkeys`` signs a tiny message with each key and verifies it
against the record published in DNS, ``genrsa`` writes a new RSA key file
(mode 0600, never over an existing file).
"""

from __future__ import annotations

import math
import os
import secrets
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from email.utils import formatdate
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from amavisd.dkim_keys import DkimKeyDecl, ace, keys_of, private_key, record_tags

EXIT_OK, EXIT_FAILURE = 0, 1


# ---------------------------------------------------------------- genrsa
def genrsa(args: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``genrsa FILE [NBITS]``: errors on stdout (``genrsa: ...``, exit 1), notes on stderr."""
    out = out or sys.stdout
    err = err or sys.stderr
    fname = args[0] if args else None
    nbits_text = args[1] if len(args) > 1 else ""
    try:
        nbits_text = nbits_text or "1024"
        if not nbits_text.isdigit():
            raise _Fail("Number of bits in a key must be numeric")
        nbits = int(nbits_text)
        if nbits < 512:
            raise _Fail("Number of bits is below 512 (suggested 1024..2048)")
        if nbits > 4096:
            raise _Fail("Number of bits too large (suggested 1024..2048)")
        if not fname:
            raise _Fail("File name for a key not provided")
        if nbits < 1024:
            err.write("INFO: RFC 6376 states: Signers MUST use RSA keys of at least 1024 bits "
                      "for long-lived keys.\n")
        try:
            fd = os.open(fname, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError as exc:
            raise _Fail(f'Can\'t create file "{fname}": {exc.strerror}') from None
        key = rsa.generate_private_key(65537, nbits) if nbits >= 1024 else _small_rsa(nbits)
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
        except OSError as exc:
            os.unlink(fname)
            raise _Fail(f'Error writing key to a file "{fname}": {exc.strerror}') from None
    except _Fail as exc:
        out.write(f"genrsa: {exc}\n")
        return EXIT_FAILURE
    err.write(f'Private RSA key successfully written to file "{fname}" ({nbits} bits, '
              "PEM format) \n")
    return EXIT_OK


class _Fail(Exception):
    pass


def _probable_prime(n: int, rounds: int = 40) -> bool:
    """Miller-Rabin (with trial division first)."""
    for small in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % small == 0:
            return n == small
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int) -> int:
    while True:               # the top two bits set, so p*q has exactly the wanted size
        candidate = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if _probable_prime(candidate):
            return candidate


def _small_rsa(nbits: int) -> rsa.RSAPrivateKey:
    """An RSA key of 512..1023 bits, which ``cryptography`` no longer generates but
    amavis still allows (with its RFC 6376 note); the key is then loaded as usual."""
    e = 65537
    while True:
        p, q = _prime(nbits - nbits // 2), _prime(nbits // 2)
        phi = math.lcm(p - 1, q - 1)
        if p != q and (p * q).bit_length() == nbits and math.gcd(e, phi) == 1:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                    rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key()


# ---------------------------------------------------------------- selection
def select_keys(keys: Sequence[DkimKeyDecl], args: Sequence[str]) -> list[DkimKeyDecl]:
    """Keys for ``domain`` or ``.domain`` (that domain and its subdomains) arguments.

    With arguments the list is sorted by reversed domain labels (``com.example``),
    keeping the declared order within one domain; without, all keys as declared.
    """
    seek = [ace(a) for a in args]
    if not seek:
        return list(keys)
    ordered = sorted(keys, key=lambda k: (".".join(reversed(k.domain_text.split("."))),
                                          k.index))
    chosen = []
    for key in ordered:
        for want in seek:
            if key.wildcard:
                hit = key.domain.search(want) is not None
            elif want.startswith("."):
                rest = want[1:]
                hit = key.domain_text == rest or key.domain_text.endswith("." + rest) \
                    or not rest
            else:
                hit = key.domain_text == want
            if hit:
                chosen.append(key)
                break
    return chosen


# ---------------------------------------------------------------- showkeys
def public_key_lines(key: DkimKeyDecl) -> list[str]:
    """The base64 of the public key in the lines of its PEM form (64 characters)."""
    pub = private_key(key).public_key()
    if key.key_type == "ed25519":
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        import base64

        return textwrap.wrap(base64.b64encode(raw).decode("ascii"), 64)
    pem = pub.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
    return [ln for ln in pem.splitlines() if ln.strip() and not ln.startswith("---")]


def show_record(key: DkimKeyDecl) -> str:
    """One key as amavis's ``showkeys`` prints it: a comment and a zone-file TXT record."""
    lines = [f"; key#{key.index + 1} {key.bits} bits, s={key.selector}, "
             f"d={key.domain_text}{', ' + key.path if key.path else ''}"]
    if key.wildcard:
        lines.append("; CANNOT DECLARE A WILDCARDED LABEL IN DNS, AVOID OR EDIT MANUALLY!")
    strings = ["; ".join([*record_tags(key), "p="]), *public_key_lines(key)]
    quoted = "".join(f'\n  "{s}"' for s in strings)
    lines.append(f"{ace(key.selector)}._domainkey.{key.domain_text}.\t3600 TXT ({quoted})")
    return "\n".join(lines) + "\n\n"


def showkeys(config: Any, args: Sequence[str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    keys = keys_of(config)
    chosen = select_keys(keys, args)
    if not keys:
        out.write("No DKIM private keys declared in a config file.\n")
    elif not chosen:
        out.write("No DKIM private keys match the selection list.\n")
    for key in chosen:
        out.write(show_record(key))
    return EXIT_OK


# ---------------------------------------------------------------- testkeys
def test_key(key: DkimKeyDecl, config: Any, now: float | None = None) -> list[str]:
    """Sign a tiny message with ``key`` and verify it against DNS; the result lines."""
    from amavisd.actions.dkim_sign import SignPlan, make_signature
    from amavisd.checks.dkim import verify
    from amavisd.dkim_canon import split_fields

    now = time.time() if now is None else now
    domain = key.domain_text
    text = (f"From: test@{domain}\nMessage-ID: <123@{domain}>\n"
            f"Date: {formatdate(now, localtime=True)}\nSubject: test\n\ntest\n").encode()
    header = text[:text.index(b"\n\n") + 1]
    algorithm = "ed25519-sha256" if key.key_type == "ed25519" else "rsa-sha256"
    with tempfile.TemporaryDirectory(prefix="amavisd-testkeys-") as tmp:
        path = Path(tmp) / "email.txt"
        path.write_bytes(text)
        msg = SimpleNamespace(sender="", spool_path=path, findings={}, rx_time=now,
                              originating=False, recipients=[], client=None, smtputf8=False)
        plan = SignPlan(key, {"d": domain, "s": key.selector, "a": algorithm,
                              "c": "simple/simple", "x": str(int(now) + 24 * 3600)},
                        True, "From", f"test@{domain}", [f"test@{domain}"])
        _, field = make_signature(msg, plan, split_fields(header), len(header) + 1, config)
        signed = field.replace(b"\r\n", b"\n") + text
        path.write_bytes(signed)
        view = SimpleNamespace(enable_dkim_verification=1,
                               dkim_dns_timeout=getattr(config, "dkim_dns_timeout", 10),
                               dkim_dns_servers=getattr(config, "dkim_dns_servers", []))
        block = signed[:signed.index(b"\n\n") + 1]
        msg.findings = {}
        verify(msg, view, block, path)
    return [f"TESTING#{key.index + 1} {domain}: {r.selector}._domainkey.{r.domain} => "
            f"{r.result_detail}" for r in msg.findings.get("dkim_signatures_all", [])]


def testkeys(config: Any, args: Sequence[str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    keys = keys_of(config)
    chosen = select_keys(keys, args)
    for key in chosen:
        for line in test_key(key, config):
            out.write(line + "\n")
    if not keys:
        out.write("No DKIM private keys declared in a config file.\n")
    elif not chosen:
        out.write("No DKIM private keys match the selection list.\n")
    return EXIT_OK
