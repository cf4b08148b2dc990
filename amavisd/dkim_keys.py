# tests: t/test_dkim_keys.py, t/actions/test_dkim_sign.py
"""DKIM signing keys: ``dkim_key()`` declarations, choosing a key, key records.

spec/pipeline.md 24.3 ("Keys") and 24.4.  A declaration is made while the config
is read, by the master as root: the PEM file is read then (a key file is
normally root-only, and children run unprivileged), checked, and kept in the
``dkim_signing_keys_list`` setting as a ``DkimKeyDecl`` that never prints its
key.  Each child turns the PEM into a ``cryptography`` key object the first time
it signs with it and keeps it (``private_key``), so an RSA-2048 signature costs
OpenSSL's ~1 ms, not dkimpy's pure-Python ~10 ms.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

log = logging.getLogger(__name__)

#: Public key record tags shown by ``showkeys`` (RFC 6376 3.6.1), in amavis's order.
RECORD_TAGS = ("v", "g", "h", "k", "s", "t", "n")
#: amavis skips its duplicate check beyond this many keys (O(n^2) otherwise).
_DUP_CHECK_LIMIT = 100


class DkimKeyError(ValueError):
    """A ``dkim_key()`` call amavis would die on (bad arguments, unreadable key)."""


@dataclass(frozen=True)
class DkimKeyDecl:
    """One ``dkim_key(domain, selector, pem_file, tag => value, ...)``.

    ``domain`` is lower-case ACE, or a compiled pattern (a regex domain, or a
    ``*`` wildcard turned into one: ``domain_text`` keeps what was written).
    ``tags`` are the public-key record options (``v`` defaults to DKIM1, ``k`` is
    the key's real type).  ``pem`` is the key file's content, read as root.
    """

    domain: Any
    domain_text: str
    selector: str
    path: str
    tags: Mapping[str, str]
    origin: str
    index: int
    key_type: str                       # 'rsa' | 'ed25519'
    bits: int
    pem: bytes = field(repr=False, compare=False)

    @property
    def wildcard(self) -> bool:
        return isinstance(self.domain, re.Pattern)

    def matches_domain(self, domain: str) -> bool:
        if isinstance(self.domain, re.Pattern):
            return self.domain.search(domain) is not None
        return domain == self.domain


def ace(name: str) -> str:
    """Lower-case, and an international name in its ASCII (``xn--``) form."""
    name = name.strip()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return name.lower()


def wildcard_pattern(domain: str) -> re.Pattern[str]:
    """dkim-milter style ``*.example.com``: ``*`` any characters, the rest literal."""
    text = re.sub(r"\*{2,}", "*", domain)
    body = "".join(".*" if c == "*" else re.escape(c) for c in text)
    pattern = "^" + body + r"\Z"
    if pattern.startswith("^.*"):
        pattern = pattern[3:]
    if pattern.endswith(r".*\Z"):
        pattern = pattern[:-4]
    return re.compile(pattern or "(?:)", re.S)


#: parsed keys by PEM bytes, per process (and inherited by the children: describe_key)
_parsed: dict[bytes, Any] = {}
_parsed_lock = threading.Lock()


def _load(pem: bytes) -> Any:
    return serialization.load_pem_private_key(pem, password=None)


def describe_key(pem: bytes) -> tuple[str, int]:
    """(type, bits) of a PEM private key; ValueError if it is neither RSA nor Ed25519.

    The parsed key is kept (``private_key``): the master declares the keys when it reads
    the config, so the children it forks inherit them parsed.  Parsing an RSA key checks
    it, about 30 ms for 2048 bits; once per new child (every ``$max_requests``) that was
    a visible share of the signing cost.
    """
    try:
        with _parsed_lock:
            key = _parsed.get(pem)
            if key is None:
                key = _parsed[pem] = _load(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM private key ({exc})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa", key.key_size
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519", 256
    raise ValueError(f"unsupported key type {type(key).__name__} (RSA or Ed25519 only)")


def _read_pem(path: str, earlier: Sequence[DkimKeyDecl]) -> bytes:
    """The key file's bytes; a file already declared (same device and inode) is shared."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            for old in earlier:
                try:
                    ost = os.stat(old.path)
                except OSError:
                    continue
                if (ost.st_dev, ost.st_ino) == (st.st_dev, st.st_ino):
                    return old.pem
            return fh.read(1 << 20)
    except OSError as exc:
        raise DkimKeyError(f"Can't open PEM file {path}: {exc.strerror}") from None


def declare(domain: Any, selector: Any, key: Any, options: Mapping[str, Any] | None,
            origin: str, earlier: Sequence[DkimKeyDecl]) -> DkimKeyDecl:
    """Check one ``dkim_key()`` call the way amavis does at startup and read its key."""
    if domain is None or domain == "":
        raise DkimKeyError(f"dkim_key: domain must not be empty: ({domain},{selector},{key})")
    if selector is None or str(selector) == "":
        raise DkimKeyError(f"dkim_key: selector must not be empty: ({domain},{selector},{key})")
    if not isinstance(key, (str, os.PathLike)) or str(key) == "":
        raise DkimKeyError("dkim_key: the key must be the name of a PEM file")
    path = os.fspath(key)
    pem = _read_pem(path, earlier)
    try:
        key_type, bits = describe_key(pem)
    except ValueError as exc:
        raise DkimKeyError(f"dkim_key: {path}: {exc}") from None
    tags = {str(k): "" if v is None else str(v) for k, v in (options or {}).items()}
    if "k" in tags or key_type != "rsa":
        tags["k"] = key_type                  # amavis forces k=rsa; ours follows the file
    tags.setdefault("v", "DKIM1")
    selector = ace(str(selector))
    if isinstance(domain, re.Pattern):
        pattern, text = domain, domain.pattern
    elif "*" in str(domain):
        text = ace(str(domain))
        pattern = wildcard_pattern(text)
    else:
        pattern = text = ace(str(domain))
    if len(earlier) <= _DUP_CHECK_LIMIT:
        for old in earlier:
            if old.domain_text == text and old.selector == selector:
                raise DkimKeyError(f"dkim_key: selector {selector} for domain {text} "
                                "already in use")
    decl = DkimKeyDecl(pattern, text, selector, path, tags, origin, len(earlier),
                       key_type, bits, pem)
    if key_type == "rsa" and bits < 1024:
        log.warning("NOTE: DKIM %d-bit signing key is shorter than a recommended RFC 6376 "
                    "minimum of %d bits, file: %s", bits, 1024, path)
    if "g" in tags:
        log.info("INFO: the 'g' tag is historic (RFC 6376), signers are advised not to "
                 "include a 'g' tag in key records: s=%s d=%s g=%s", selector, text, tags["g"])
    if decl.wildcard:
        log.warning("dkim: wildcard in signing domain (key#%d, %s), may produce "
                    "unverifiable signatures with no published public key, avoid!",
                    decl.index + 1, text)
    return decl


def declare_all(calls: Iterable[tuple[Any, Any, Any, Mapping[str, Any] | None, str]],
                earlier: Sequence[DkimKeyDecl] = ()) -> list[DkimKeyDecl]:
    """Several declarations in order: (domain, selector, key, options, origin) each."""
    out = list(earlier)
    for domain, selector, key, options, origin in calls:
        out.append(declare(domain, selector, key, options, origin, out))
    return out


# ---------------------------------------------------------------- choosing a key
def _split_list(value: str | None) -> list[str]:
    return [] if value is None else [v.strip() for v in str(value).split(":")]


def find_key(keys: Sequence[DkimKeyDecl], d: str, s: str | None = None,
             a: str | None = None, i: str | None = None) -> DkimKeyDecl | None:
    """The first declared key fit for these signature options (pipeline.md 24.3).

    ``d`` must match the key's domain, ``s`` (if given) its selector; the type of
    ``a`` (``rsa``-sha256, ``ed25519``-sha256) the key type and the hash the
    key's ``h`` list (no ``a``: any type, the key then decides the algorithm); the
    key's ``s`` must allow ``email`` or ``*``; with an identity ``i``, ``t=s``
    forbids a subdomain and ``g`` must match its local part.
    """
    if not d:
        return None
    domain = ace(d)
    selector = ace(s) if s else None
    keytype, hashalg = None, None             # no algorithm asked: a key of either type
    if a:
        keytype = "rsa"
        m = re.fullmatch(r"([a-z0-9]+)-(.*)", a, re.I | re.S)
        if m:
            keytype, hashalg = m.group(1).lower(), m.group(2).lower()
    local = ident_domain = ""
    if i is not None:
        local, _, ident_domain = i.rpartition("@") if "@" in i else ("", "", i)
        ident_domain = ace(ident_domain) if ident_domain else ""
    for key in keys:
        if not key.matches_domain(domain):
            continue
        if selector is not None and key.selector != selector:
            continue
        if keytype is not None and keytype != key.tags.get("k", "rsa"):
            continue
        services = key.tags.get("s")
        if services is not None and not {"*", "email"} & set(_split_list(services)):
            continue
        if hashalg is not None and "h" in key.tags and hashalg not in _split_list(key.tags["h"]):
            continue
        if i is not None:
            if ident_domain != domain and "s" in _split_list(key.tags.get("t")):
                continue
            g = key.tags.get("g")
            if g is not None and g != "*":
                if "*" in g:
                    head, _, tail = g.partition("*")
                    if not (local.startswith(head) and local.endswith(tail)
                            and len(local) >= len(head) + len(tail)):
                        continue
                elif local != g:
                    continue
        return key
    return None


# ---------------------------------------------------------------- key objects


def private_key(decl: DkimKeyDecl) -> Any:
    """The key as a ``cryptography`` object, parsed once per process."""
    with _parsed_lock:
        found = _parsed.get(decl.pem)
        if found is None:
            found = _parsed[decl.pem] = _load(decl.pem)
        return found


def public_key_data(decl: DkimKeyDecl) -> str:
    """The ``p=`` value: base64 SubjectPublicKeyInfo (RSA) or raw key (Ed25519, RFC 8463)."""
    pub = private_key(decl).public_key()
    if decl.key_type == "ed25519":
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = pub.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def qp_section(text: str) -> str:
    """The ``n=`` tag's quoted-printable section: controls, ``=``, ``;`` and ``"`` as =XX."""
    return re.sub(r'[\x00-\x1f\x7f=;"]', lambda m: f"={ord(m.group()):02X}", text)


def record_tags(decl: DkimKeyDecl) -> list[str]:
    """``v=DKIM1`` and any of g h k s t n, as the key record lists them before ``p=``."""
    out = []
    for tag in RECORD_TAGS:
        if tag in decl.tags:
            value = decl.tags[tag]
            out.append(f"{tag}={qp_section(value) if tag == 'n' else value}")
    return out


def dns_record(decl: DkimKeyDecl) -> str:
    """The whole TXT record text: ``v=DKIM1; [tags; ]p=<key>``."""
    return "; ".join([*record_tags(decl), "p=" + public_key_data(decl)])


def keys_of(view: Any) -> list[DkimKeyDecl]:
    """The declared keys of a config or bank view (anything else in the list ignored)."""
    value = getattr(view, "dkim_signing_keys_list", None) or []
    return [k for k in value if isinstance(k, DkimKeyDecl)]


def python_declarator(target: list[Any], path: str) -> Any:
    """The ``dkim_key(domain, selector, pem_file, *pairs, **tags)`` of a native config.

    ``target`` is the config's ``dkim_signing_keys_list`` being built; a bad call
    raises, which the loader reports with the file and line.
    """
    import sys

    def dkim_key(domain: Any, selector: Any, key: Any, *pairs: Any, **tags: Any) -> None:
        if len(pairs) % 2:
            raise DkimKeyError("dkim_key: a list of key/value pairs expected as options")
        options = dict(zip(pairs[::2], pairs[1::2], strict=True))
        options.update(tags)
        line = sys._getframe(1).f_lineno
        earlier = [k for k in target if isinstance(k, DkimKeyDecl)]
        target.append(declare(domain, selector, key, options, f"{path}:{line}", earlier))
    return dkim_key
