# tests: t/checks/test_dkim.py
"""DKIM verification of incoming mail (spec/pipeline.md 24.1, 11.2, 16 point 7).

``verify`` is the one entry point: it reads the header block and streams the
body from the spool file once, checks every ``DKIM-Signature`` (at most 50, as
Mail::DKIM), fetches the keys through ``dkim_dns`` (one deadline per message, a
cache per child) and records the facts on ``msg.findings``; it decides nothing.
It runs in a worker thread: no Twisted, no shared state but the DNS cache.

Results use Mail::DKIM's words, which amavis logs and maps for
Authentication-Results: ``pass``, ``fail`` (with "body has been altered" when
only the body hash differs), ``invalid`` (the signature or the key record is
unusable, "public key: not available" for a missing record) and ``temperror``
(a DNS failure or the deadline: ours, where Mail::DKIM says invalid).

Keys of ``msg.findings`` written here: ``dkim_signatures_all``,
``dkim_signatures_valid`` (lists of ``SignatureResult``), ``dkim_sd``
(``selector:domain`` of valid ones, for the log line), and the signing domain
of a valid signature matching the author, sender or envelope sender:
``dkim_author_sig``, ``dkim_sender_sig``, ``dkim_envsender_sig``,
``dkim_thirdparty_sig`` (amavis's ``msginfo`` fields of the same names), and
``dkim_author_from``.  ``set_sender_credible`` writes ``sender_credible``.  The list
of every DKIM fact and its type, for templates and logs: docs/dkim.md.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

# python-dkim (``dkim.util``, ``dkim.crypto``) and ``dkim_dns`` (dnspython) are imported
# where a signature is verified: a child with verification off never loads them (~4 MB
# per process; the master preimports them when DKIM is on, master.preimport).
from amavisd.config.lookup import address_keys, lookup_with_key
from amavisd.dkim_canon import (
    BodySpec,
    Field,
    hash_body_file,
    header_digest,
    parse_canon,
    split_fields,
)
from amavisd.log import do_log
from amavisd.logline import quote_address

#: Mail::DKIM stops taking signatures after this many (abuse protection).
MAX_SIGNATURES = 50
#: The verifier gets at most this much of the header section (protocols.md 6.6).
HEADER_LIMIT = 256 * 1024
ALGORITHMS = {"rsa-sha256": ("rsa", "sha256"), "rsa-sha1": ("rsa", "sha1"),
              "ed25519-sha256": ("ed25519", "sha256")}
_HASH = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
_B64 = re.compile(rb"[A-Za-z0-9+/=]+\Z")


@dataclass
class SignatureResult:
    """One signature and its outcome (amavis keeps the Mail::DKIM object)."""

    domain: str
    selector: str
    identity: str                 # i=, decoded; '@<d>' when absent
    algorithm: str
    canonicalization: str         # 'relaxed/simple'
    b: str                        # b= without whitespace
    timestamp: int | None
    expiration: int | None
    result: str | None = None     # pass | fail | invalid | temperror; None: just made
    detail: str | None = None
    key_bits: int | None = None
    key_type: str | None = None

    @property
    def result_detail(self) -> str:
        """``result (detail)`` as Mail::DKIM prints it, e.g. ``fail (body has been altered)``."""
        result = self.result or "pass"
        return f"{result} ({self.detail})" if self.detail else result

    @property
    def valid(self) -> bool:
        return self.result == "pass"

    @property
    def sd(self) -> str:
        return f"{self.selector}:{self.domain}"


@dataclass
class _Sig:
    """A parsed signature field on its way through the checks."""

    field: Field
    tags: dict[bytes, bytes]
    res: SignatureResult
    hash_name: str = "sha256"
    key_kind: str = "rsa"
    canon: tuple[str, str] = ("simple", "simple")
    body: BodySpec | None = None


def enabled(view: Any) -> bool:
    return bool(getattr(view, "enable_dkim_verification", None))


# ---------------------------------------------------------------- entry point
def verify(msg: Any, view: Any, header_block: bytes, spool_path: Path | str) -> None:
    """Verify every signature of the message and record the findings (see module doc).

    ``header_block`` is the header section as read from the spool (LF line ends);
    the body is streamed from ``spool_path``.  Callable from a worker thread; it
    never takes longer than the DNS deadline (``$dkim_dns_timeout``) plus the
    hashing, and never raises for anything in the message.
    """
    if not enabled(view):
        return
    started = time.monotonic()
    limit = getattr(view, "dkim_dns_timeout", None)
    deadline = started + float(10 if limit is None else limit)
    now = float(getattr(msg, "rx_time", 0) or time.time())
    block = _cut(header_block)
    fields = split_fields(block)
    sigs = []
    for field in fields:
        if field[0].lower() != b"dkim-signature":
            continue
        if len(sigs) >= MAX_SIGNATURES:
            break
        sig = _parse(field)
        if sig is not None:
            sigs.append(sig)
    results: list[SignatureResult] = []
    if sigs:
        for sig in sigs:
            _check_signature(sig, now)
        servers = tuple(getattr(view, "dkim_dns_servers", None) or ())
        _verify_all(sigs, fields, Path(spool_path), len(header_block), deadline, servers)
        results = [s.res for s in sigs]
    record(msg, results, fields, now)
    if sigs:
        do_log(5, "dkim: verified %d signature(s) in %.0f ms", len(sigs),
               (time.monotonic() - started) * 1000)


def _cut(block: bytes) -> bytes:
    """At most HEADER_LIMIT bytes, cut after a whole line."""
    if len(block) <= HEADER_LIMIT:
        return block
    cut = block.rfind(b"\n", 0, HEADER_LIMIT) + 1
    return block[:cut]


# ---------------------------------------------------------------- parsing and checks
def _unfold(value: bytes) -> bytes:
    return re.sub(rb"\r?\n(?=[ \t])", b"", value)


def _decode_qp(text: str) -> str:
    """dkim-quoted-printable (the ``i=`` tag): ``=XX`` are octets."""
    raw = re.sub(r"=([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return raw


def _parse(field: Field) -> _Sig | None:
    """A signature field's tags, or None if it cannot be parsed at all (Mail::DKIM
    then does not report it)."""
    from dkim.util import InvalidTagValueList, parse_tag_value

    try:
        tags = parse_tag_value(_unfold(field[1]))
    except InvalidTagValueList as exc:
        do_log(3, "dkim: unparseable signature ignored: %s", exc)
        return None

    def text(tag: bytes) -> str | None:
        value = tags.get(tag)
        return None if value is None else value.decode("utf-8", "replace")

    domain = text(b"d")
    canon = parse_canon(tags.get(b"c"))
    res = SignatureResult(
        domain=domain or "", selector=text(b"s") or "",
        identity=_decode_qp(re.sub(r"\s+", "", text(b"i") or "")) if b"i" in tags
        else "@" + (domain or ""),
        algorithm=(text(b"a") or "").lower(), canonicalization="/".join(canon),
        b=re.sub(r"\s+", "", text(b"b") or ""),
        timestamp=_number(tags.get(b"t")), expiration=_number(tags.get(b"x")))
    return _Sig(field, tags, res, canon=canon)


def _number(value: bytes | None) -> int | None:
    if value is None or not re.fullmatch(rb"0*\d{1,10}", value.strip()):
        return None
    return int(value)


def _invalid(sig: _Sig, why: str) -> None:
    sig.res.result, sig.res.detail = "invalid", why


def _check_signature(sig: _Sig, now: float) -> None:
    """Mail::DKIM's ``check_signature`` order: version, algorithm, canonicalisation,
    query method, expiry, d, s (then our required b, bh, h)."""
    tags, res = sig.tags, sig.res
    version = tags.get(b"v")
    if version is not None and version not in (b"1", b"0.5"):
        return _invalid(sig, f"unsupported version {version.decode('latin-1')}")
    if res.algorithm not in ALGORITHMS:
        return _invalid(sig, "unsupported algorithm" +
                        (f" {res.algorithm}" if b"a" in tags else ""))
    sig.key_kind, sig.hash_name = ALGORITHMS[res.algorithm]
    if any(c not in ("simple", "relaxed") for c in sig.canon):
        return _invalid(sig, f"unsupported canonicalization {res.canonicalization}")
    query = tags.get(b"q", b"dns/txt").decode("latin-1")
    if "dns/txt" not in [q.strip().lower() for q in query.split(":")]:
        return _invalid(sig, f"unsupported query protocol, q={query}")
    if res.expiration is not None and now > res.expiration:
        return _invalid(sig, "signature is expired")
    if b"d" not in tags:
        return _invalid(sig, "missing d tag")
    if not res.domain:
        return _invalid(sig, "invalid domain in d tag")
    if b"s" not in tags:
        return _invalid(sig, "missing s tag")
    for tag in (b"b", b"bh", b"h"):
        if not tags.get(tag):
            return _invalid(sig, f"missing {tag.decode()} tag")
    limit = None
    if b"l" in tags:
        limit = _number(tags[b"l"])
        if limit is None:
            return _invalid(sig, "invalid l tag")
    sig.body = BodySpec(sig.canon[1], sig.hash_name, limit)
    return None


def _identity_ok(res: SignatureResult) -> bool:
    """i= must be in d= or a subdomain of it (Mail::DKIM ``check_signature_identity``)."""
    if "@" not in res.identity:
        return False
    ident_domain = res.identity.rpartition("@")[2].lower()
    domain = res.domain.lower()
    return ident_domain == domain or ident_domain.endswith("." + domain)


def _verify_all(sigs: list[_Sig], fields: Sequence[Field], path: Path, header_len: int,
                deadline: float, servers: tuple[str, ...]) -> None:
    from amavisd import dkim_dns

    live = [s for s in sigs if s.res.result is None]
    for sig in live:
        if not _identity_ok(sig.res):
            _invalid(sig, "bad identity")
    live = [s for s in live if s.res.result is None]
    if not live:
        return
    names = {id(s): dkim_dns.key_name(s.res.selector, s.res.domain) for s in live}
    answers = dkim_dns.fetcher(servers).lookup_many(names.values(), deadline)
    keys = {}
    for sig in live:
        answer = answers[names[id(sig)]]
        if answer.status == "error":
            sig.res.result, sig.res.detail = "temperror", f"public key: {answer.detail}"
            continue
        if answer.status == "none":
            _invalid(sig, "public key: not available")
            continue
        try:
            keys[id(sig)] = _public_key(answer.text, sig)
        except _KeyProblem as exc:
            _invalid(sig, f"public key: {exc}")
    live = [s for s in live if id(s) in keys]
    if not live:
        return
    offset = _body_offset(path, header_len)
    specs = [s.body for s in live if s.body is not None]
    try:
        digests = hash_body_file(path, offset, specs)
    except OSError as exc:
        for sig in live:
            sig.res.result, sig.res.detail = "temperror", f"reading the message: {exc}"
        return
    for sig in live:
        _verify_one(sig, keys[id(sig)], fields, digests)


def _body_offset(path: Path, header_len: int) -> int:
    """Where the body starts: after the header block and its empty line, if any."""
    with open(path, "rb") as fh:
        fh.seek(header_len)
        return header_len + 1 if fh.read(1) == b"\n" else header_len


class _KeyProblem(Exception):
    """Why a key record cannot verify this signature (Mail::DKIM's words)."""


def _public_key(record: bytes, sig: _Sig) -> Any:
    """Check the key record as Mail::DKIM does and load the key; _KeyProblem otherwise."""
    from dkim.util import InvalidTagValueList, parse_tag_value

    try:
        tags = parse_tag_value(_unfold(record))
    except InvalidTagValueList:
        raise _KeyProblem("syntax error") from None
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        raise _KeyProblem("unsupported version")
    kind = tags.get(b"k", b"rsa").decode("latin-1").lower()
    if kind not in ("rsa", "ed25519"):
        raise _KeyProblem("unsupported key type")
    if b"p" not in tags:
        raise _KeyProblem("missing p= tag")
    data = re.sub(rb"\s+", b"", tags[b"p"])
    if not data:
        raise _KeyProblem("revoked")
    if not _B64.match(data):
        raise _KeyProblem("invalid data")
    key = _load_public(kind, data)
    services = tags.get(b"s")
    if services and not {b"*", b"email"} & {s.strip() for s in services.split(b":")}:
        raise _KeyProblem("does not support email")
    if kind != sig.key_kind:
        raise _KeyProblem("unsupported key type")
    allowed = tags.get(b"h")
    if allowed and sig.hash_name.encode() not in [h.strip() for h in allowed.split(b":")]:
        raise _KeyProblem(f"does not support hash algorithm '{sig.hash_name}'")
    _check_granularity(tags, sig.res)
    sig.res.key_type = kind
    sig.res.key_bits = key.key_size if kind == "rsa" else 256
    return key


def _load_public(kind: str, data: bytes) -> Any:
    from dkim.crypto import UnparsableKeyError, parse_public_key

    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _KeyProblem("invalid data") from None
    if kind == "ed25519":
        if len(raw) != 32:
            raise _KeyProblem("invalid data")
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    try:
        key = serialization.load_der_public_key(raw)
    except (ValueError, TypeError):
        try:                                    # a bare RSAPublicKey (PKCS#1), seen in DNS
            pk = parse_public_key(raw)
            key = rsa.RSAPublicNumbers(pk["publicExponent"], pk["modulus"]).public_key()
        except (UnparsableKeyError, ValueError, KeyError, IndexError, TypeError):
            raise _KeyProblem("invalid data") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise _KeyProblem("invalid data")
    return key


def _check_granularity(tags: dict[bytes, bytes], res: SignatureResult) -> None:
    """The historic ``g=`` against the identity's local part, and ``t=s``."""
    local, _, ident_domain = res.identity.rpartition("@")
    g = tags.get(b"g", b"*").decode("latin-1")
    if "*" in g:
        head, _, tail = g.partition("*")
        if len(local) < len(head) + len(tail) or not local.startswith(head) \
                or not local.endswith(tail):
            raise _KeyProblem("granularity mismatch")
    elif g == "":
        raise _KeyProblem("granularity is empty")
    elif local != g:
        raise _KeyProblem("granularity mismatch")
    flags = [f.strip() for f in tags.get(b"t", b"").decode("latin-1").split(":")]
    if "s" in flags and ident_domain.lower() != res.domain.lower():
        raise _KeyProblem("does not support signing subdomains")


def _verify_one(sig: _Sig, key: Any, fields: Sequence[Field],
                digests: dict[BodySpec, bytes]) -> None:
    """Header signature first, then the body hash (Mail::DKIM's order)."""
    signed = [h.strip().lower() for h in _unfold(sig.tags[b"h"]).split(b":") if h.strip()]
    digest = header_digest(fields, signed, sig.canon[0], sig.canon[1], sig.field,
                           sig.hash_name)
    try:
        signature = base64.b64decode(sig.res.b)
    except (binascii.Error, ValueError):
        sig.res.result, sig.res.detail = "fail", "bad signature data"
        return
    try:
        if sig.key_kind == "ed25519":
            key.verify(signature, digest)
        else:
            key.verify(signature, digest, padding.PKCS1v15(),
                       Prehashed(_HASH[sig.hash_name]()))
    except InvalidSignature:
        sig.res.result, sig.res.detail = "fail", None
        return
    try:
        expected = base64.b64decode(re.sub(rb"\s+", b"", sig.tags[b"bh"]))
    except (binascii.Error, ValueError):
        expected = b""
    assert sig.body is not None
    if digests.get(sig.body) != expected:
        sig.res.result, sig.res.detail = "fail", "body has been altered"
        return
    sig.res.result, sig.res.detail = "pass", None


# ---------------------------------------------------------------- findings
def _addresses(fields: Sequence[Field], name: bytes) -> list[str]:
    values = [f[1].decode("utf-8", "replace") for f in fields if f[0].lower() == name]
    return [addr for _, addr in getaddresses([re.sub(r"\r?\n", "", v) for v in values])
            if addr]


def _domain_of(addr: str | None) -> str | None:
    if not addr or "@" not in addr:
        return None
    return _ace(addr.rpartition("@")[2])


def _ace(domain: str) -> str:
    domain = domain.strip().rstrip(".")
    try:
        return domain.lower() if domain.isascii() else domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain.lower()


def format_time_interval(seconds: float) -> str:
    """amavis's ``D H:MM:SS`` (e.g. ``0 0:05:00``)."""
    sign = "-" if seconds < 0 else ""
    t = abs(seconds)
    dd = int(t // 86400)
    t -= dd * 86400
    hh = int(t // 3600)
    t -= hh * 3600
    mm = int(t // 60)
    t -= mm * 60
    return f"{sign}{dd} {hh}:{mm:02d}:{int(t + 0.5):02d}"


def record(msg: Any, results: list[SignatureResult], fields: Sequence[Field],
           now: float) -> None:
    """Write the findings and amavis's ``dkim: VALID|FAILED ...`` lines (level 2)."""
    findings = msg.findings
    froms = _addresses(fields, b"from")
    senders = _addresses(fields, b"sender")
    responsible = senders[0] if senders else (froms[0] if froms else None)
    findings["dkim_signatures_all"] = results
    findings["dkim_author_from"] = froms
    valid: list[SignatureResult] = []
    from_text = ", ".join(quote_address(a) for a in froms)
    for res in results:
        sdid = _ace(res.domain)
        envsender = _domain_of(msg.sender) == sdid
        sender = _domain_of(responsible) == sdid
        authors = [_domain_of(a) == sdid for a in froms]
        expired = res.expiration is not None and (
            now > res.expiration or (res.timestamp is not None
                                     and res.timestamp > res.expiration))
        age = None if res.timestamp is None else now - res.timestamp
        if res.valid and not expired:
            valid.append(res)
            domain = res.domain or "?"
            if envsender:
                findings["dkim_envsender_sig"] = domain
            if sender:
                findings["dkim_sender_sig"] = domain
            if any(authors):
                findings["dkim_author_sig"] = domain
            if not findings.get("dkim_author_sig"):
                findings["dkim_thirdparty_sig"] = domain
        kinds = ["Author" for a in authors if a]
        kinds += ["Sender"] if sender else []
        kinds += ["MailFrom"] if envsender else []
        if not kinds:
            kinds = ["third-party"]
        orig = ""
        if getattr(msg, "originating", False):
            client = getattr(msg, "client", None)
            orig = f", ORIG [{getattr(client, 'addr', '') or ''}]:" \
                   f"{getattr(client, 'port', '') or ''}"
        mlist = findings.get("is_mlist")
        do_log(2, "dkim: %s%s%s %s signature by d=%s, From: %s, a=%s, c=%s, s=%s, i=%s%s%s%s",
               "VALID" if res.valid else "FAILED", ", EXPIRED" if expired else "",
               f", IN_FUTURE:({format_time_interval(-age)})" if age is not None and age < -1
               else "", "+".join(kinds), res.domain, from_text, res.algorithm,
               res.canonicalization, res.selector, res.identity, orig,
               f", m.list({mlist})" if mlist is not None else "",
               "" if res.valid else ", " + res.result_detail)
    findings["dkim_signatures_valid"] = valid
    findings["dkim_sd"] = list(dict.fromkeys(r.sd for r in valid))


def set_sender_credible(msg: Any) -> None:
    """``sender_credible`` (pipeline.md 4): for a non-null envelope sender, ``orig`` when
    the mail is originating and ``dkim`` when a valid signature is by the sender's domain
    (``dkim_envsender_sig``), comma-joined; absent when neither.  The DSN cutoffs
    (``@spam_crediblefrom_dsn_cutoff_level*``) depend on it.  Call after the author banks
    are loaded: they may change ``originating``."""
    findings = msg.findings
    findings.pop("sender_credible", None)
    if not getattr(msg, "sender", ""):
        return
    reasons = ["orig"] if getattr(msg, "originating", False) else []
    if findings.get("dkim_envsender_sig"):
        reasons.append("dkim")
    if reasons:
        findings["sender_credible"] = ",".join(reasons)


# ---------------------------------------------------------------- banks and reputation
def _lookup(view: Any, setting: str, key: str, append: str = "") -> tuple[Any, Any]:
    """``lookup2(0, key, @maps, AppendStr => append)``: (value, matching key).

    Without ``append`` this is the ordinary lookup.  With it (amavis's third-party
    form ``user@dom/@signer``) every hash key variant and the ACL domain get
    ``append`` added, and a regex sees ``key`` + ``append`` (Amavis::Lookup).
    """
    tables = getattr(view, setting, None) or []
    if not isinstance(tables, (list, tuple)):
        tables = [tables]
    delimiter = getattr(view, "recipient_delimiter", None)
    case = bool(getattr(view, "localpart_is_case_sensitive", False))
    if not append:
        return lookup_with_key(False, key, tables, recipient_delimiter=delimiter,
                               localpart_is_case_sensitive=case)
    for table in tables:
        if isinstance(table, dict):
            for candidate in address_keys(key, delimiter, case):
                if candidate + append in table:
                    value = table[candidate + append]
                    if value is not None:
                        return value, candidate + append
                    break
            continue
        if isinstance(table, (list, tuple)) and all(isinstance(e, str) for e in table):
            found = _acl_append(key, table, append, case)
            if found[0] is not None:
                return found
            continue
        value, matched = lookup_with_key(False, key + append, [table],
                                         recipient_delimiter=delimiter,
                                         localpart_is_case_sensitive=case)
        if value is not None:
            return value, matched
    return None, None


def _acl_append(key: str, acl: Sequence[str], append: str,
                case: bool) -> tuple[Any, Any]:
    """An address ACL asked with ``append`` added to the domain (Amavis::Lookup)."""
    local, _, domain = key.rpartition("@") if "@" in key else (key, "", "")
    local = local if case else local.lower()
    domain = _ace(domain) + append
    for entry in acl:
        bare = entry.lstrip("!")
        result = (len(entry) - len(bare)) % 2 == 0
        if "@" in bare:
            user, _, dom = bare.rpartition("@")
            hit = local == (user if case else user.lower()) and domain == dom.lower()
        elif bare.startswith("."):
            suffix = bare[1:].lower()
            hit = domain == suffix or domain.endswith("." + suffix) or not suffix
        else:
            hit = domain == bare.lower()
        if hit:
            return result, entry
    return None, None


def author_policy_banks(msg: Any, view: Any) -> list[str]:
    """``@author_to_policy_bank_maps`` (pipeline.md 24.1, 16 point 7): the bank names to
    load, in order.  The caller loads them on its view and re-reads ``originating``.

    For each valid signature and each From address: the address itself (only for an
    author domain signature), then ``address/@signer``; ``1`` means AUTHOR_APPROVED;
    ignored when the key is shorter than ``$dkim_minimum_key_bits`` (RSA only).
    """
    tables = getattr(view, "author_to_policy_bank_maps", None)
    valid = msg.findings.get("dkim_signatures_valid") or []
    if not tables or not valid:
        return []
    froms = msg.findings.get("dkim_author_from") or []
    minimum = int(getattr(view, "dkim_minimum_key_bits", 1024) or 0)
    banks: list[str] = []
    asked: set[str] = set()
    for res in valid:
        sdid = _ace(res.domain)
        for author in froms:
            key = author.rpartition("@")[0] + "@" + _ace(author.rpartition("@")[2]) \
                if "@" in author else author
            options = ([""] if _domain_of(author) == sdid else []) + ["/@" + sdid]
            for append in options:
                if key + append in asked:
                    continue
                asked.add(key + append)
                value, matched = _lookup(view, "author_to_policy_bank_maps", key, append)
                if not value:
                    continue
                value = "AUTHOR_APPROVED" if value is True or str(value) == "1" else str(value)
                names = [n.strip() for n in value.split(",") if n.strip()]
                if not names:
                    continue
                short = res.key_type == "rsa" and res.key_bits and minimum \
                    and res.key_bits < minimum
                if short:
                    do_log(1, "dkim: policy bank %s by %s NOT LOADED, valid signature "
                              "ignored, %d-bit key is shorter than %d", ",".join(names),
                           matched, res.key_bits, minimum)
                    continue
                banks.extend(names)
                do_log(2, "dkim: policy bank %s by %s", ",".join(names), matched or key)
    return banks


def adjust_spam_levels(msg: Any, view: Any) -> float | None:
    """Signer reputation (pipeline.md 11.2): pull each recipient's spam level towards
    the best (smallest) ``@signer_reputation_maps`` value of a valid signature's
    ``@domain``; adds the ``AM.DKIM_REPUT=<delta>`` test.  Returns the reputation used."""
    factor = float(getattr(view, "reputation_factor", 0.2) or 0)
    factor = min(max(factor, 0.0), 1.0)
    valid = msg.findings.get("dkim_signatures_valid") or []
    if factor <= 0 or not valid:
        return None
    minimum = int(getattr(view, "dkim_minimum_key_bits", 1024) or 0)
    best = signer = None
    for res in valid:
        value, _ = _lookup(view, "signer_reputation_maps", "@" + res.domain)
        try:
            value = None if value is None else float(value)
        except (TypeError, ValueError):
            continue
        if value is None or (best is not None and value >= best):
            continue
        if minimum and res.key_type == "rsa" and res.key_bits and res.key_bits < minimum:
            do_log(1, "dkim: reputation for signing domain %s not used, valid signature "
                      "ignored, %d-bit key is shorter than %d", res.domain, res.key_bits,
                   minimum)
            continue
        best, signer = value, res.domain
    if best is None:
        return None
    level = 2
    for rcpt in msg.recipients:
        old = rcpt.spam_level
        if old is None:
            continue
        new = factor * best + (1 - factor) * old
        rcpt.spam_level = new
        delta = float(f"{new - old:.3f}")
        rcpt.spam_tests.insert(0, f"AM.DKIM_REPUT={delta:g}")
        do_log(level, "dkim: score %.3f adjusted to %.3f due to reputation (%s) of a signer "
                      "domain %s", old, new, _num(best), signer)
        level = 5
    return best


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else format(value, "g")
