# tests: t/actions/test_dkim_sign.py
"""DKIM signing at dispatch time (spec/pipeline.md 24.3, 20.3 item 15).

``signed_content`` is what ``actions.forward.forward`` calls with the final
header section of one cluster and the spool offset of the body: it returns the
header with ``DKIM-Signature`` (and, for local recipients when verification is
on, an ``Authentication-Results`` for it) prepended, or the header unchanged.
Every header edit of the cluster is already in it (Received included), so the
signature covers what the next hop receives.

The policy (which mail, which key, which tags) follows amavis: originating mail
only, never CC_VIRUS/CC_SPAM/CC_SPAMMY or quarantine copies; the first of From,
Resent-From/Resent-Sender, Sender, envelope sender with a fitting ``dkim_key``
chooses the key, with ``@dkim_signature_options_bysender_maps`` giving tags.
The mechanics are split so each part stays plain: the body hash is streamed
from the spool (``dkim_canon``, the exact bytes the SMTP client will send), the
header hash is dkimpy's canonicalisation and field selection, and the
signature itself is one call into OpenSSL through ``cryptography`` (RSA ~1 ms,
dkimpy's pure-Python RSA ~10 ms), with the key parsed once per child.
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from amavisd.actions.authres import authentication_results, authserv_id
from amavisd.checks.dkim import SignatureResult
from amavisd.config.lookup import Lookups, lookup
from amavisd.constants import CC_SPAM, CC_SPAMMY, CC_VIRUS
from amavisd.dkim_canon import (
    BodySpec,
    Field,
    hash_body_file,
    header_digest,
    split_fields,
    wire_bytes,
)
from amavisd.dkim_keys import DkimKeyDecl, ace, find_key, keys_of, private_key
from amavisd.log import do_log
from amavisd.logline import quote_address

#: amavis's ``%signed_header_fields`` (Amavis::Conf): 1 sign every occurrence, 2 also
#: one empty ("oversigned") occurrence, 0 never.  A configured hash is laid over it.
DEFAULT_SIGNED_HEADER_FIELDS: dict[str, int] = {
    **{name.lower(): 1 for name in (
        "From Reply-To Subject Date Message-ID In-Reply-To References MIME-Version "
        "Content-Type Content-Transfer-Encoding Content-ID Content-Description "
        "Resent-Date Resent-From Resent-Sender Resent-Message-ID List-Id List-Post "
        "List-Owner List-Subscribe List-Unsubscribe List-Help List-Archive Received "
        "Precedence Original-Message-ID Message-Context PICS-Label Sensitivity "
        "Solicitation Content-Location Content-Features Content-Disposition "
        "Content-Language Content-Alternative Content-Base Content-MD5 Content-Duration "
        "Content-Class Accept-Language Auto-Submitted Archived-At VBR-Info Organization "
        "Organisation User-Agent X-Mailer").split()},
    **{name: 0 for name in ("sender", "to", "cc", "resent-to", "resent-cc")},
    **{name: 2 for name in ("from", "date", "subject", "content-type")},
}
#: Appended to the options of every candidate address (the catch-all of amavis, whose
#: ``a => 'rsa-sha256'`` becomes "the chosen key's type": amavis has RSA keys only).
DEFAULT_OPTIONS = {"c": "relaxed/simple"}
DEFAULT_ALGORITHM = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}
_ALGORITHMS = {"rsa-sha256": ("rsa", "sha256"), "rsa-sha1": ("rsa", "sha1"),
               "ed25519-sha256": ("ed25519", "sha256")}
_HASH = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
WIDTH = 78
_BODY_CACHE = "_dkim_body_hashes"
#: ``msg.findings`` key: the fields (name, body) an AM.PDP client inserts, topmost first
FINDING_CLIENT_FIELDS = "dkim_client_fields"


@dataclass
class SignPlan:
    """The chosen key and the tags of the signature to make."""

    key: DkimKeyDecl
    options: dict[str, str]          # a c d s i q x (and ttl), as amavis keeps them
    author: bool
    source: str                      # From / Resent-From / Resent-Sender / Sender / mail_from
    address: str
    froms: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- entry points
def signing_enabled(view: Any) -> bool:
    return bool(getattr(view, "enable_dkim_signing", None)) and bool(keys_of(view))


def signed_content(msg: Any, header: bytes, body_offset: int, view: Any,
                   submit: str | None = None) -> tuple[bytes, int]:
    """(header, body offset) to send, signed when amavis would sign (module doc).

    ``header`` is the complete new header section (CRLF, ending with the empty
    line) and the body follows in the spool from ``body_offset``; ``header``
    empty with offset 0 means the spool file holds the whole message (a DSN):
    then its header is split off here.  Never raises: a failure is logged and
    the message goes out unsigned, as in amavis.
    """
    if submit == "Quar" or not signing_enabled(view):
        return header, body_offset
    try:
        if not header and body_offset == 0:
            from amavisd.actions.headers import split_header

            split = split_header(msg.spool_path)
            if not split.complete:
                return header, body_offset
            header = (split.block + b"\n").replace(b"\n", b"\r\n")
            body_offset = split.body_offset
        fields = signature_fields(msg, header, body_offset, view)
    except Exception as exc:  # noqa: BLE001 - an unsigned message beats a lost one
        do_log(0, "dkim: signing error: %s", exc)
        return header, body_offset
    if not fields:
        return header, body_offset
    return b"".join(fields) + header, body_offset


def sign_for_client(msg: Any, view: Any) -> None:
    """AM.PDP/milter: sign the message the client (the MTA) delivers (pipeline.md 24.3).

    The header signed is the spool's header with the client's edits applied as the
    MTA applies them (``delivered_header`` of ``protocols.ampdp.planned_header_edits``),
    the topmost Received left unsigned (the MTA's own, which it may render otherwise).
    No Authentication-Results for the new signature: the Perl daemon sends none there.
    The fields to insert are kept in ``msg.findings[FINDING_CLIENT_FIELDS]`` for the
    response; called by the pipeline when it would forward, so the main log line
    carries ``dkim_new=`` as amavis's does.  Never raises.
    """
    if not signing_enabled(view):
        return
    try:
        from amavisd.actions.headers import split_header
        from amavisd.protocols.ampdp import planned_header_edits

        split = split_header(msg.spool_path)
        if not split.complete:
            return
        header = delivered_header(split.block, planned_header_edits(msg, view))
        fields = signature_fields(msg, header, split.body_offset, view,
                                  skip_topmost_received=True, authres=False)
    except Exception as exc:  # noqa: BLE001 - an unsigned message beats a lost one
        do_log(0, "dkim: signing error: %s", exc)
        return
    if fields:
        msg.findings[FINDING_CLIENT_FIELDS] = [client_field(f) for f in fields]


def delivered_header(block: bytes, edits: Sequence[Sequence[str]]) -> bytes:
    """The header section (CRLF, ending with the empty line) after an MTA applied the
    AM.PDP edits through the milter API (protocols.md 4.4, smfi_* semantics).

    ``delheader=i N`` removes the i-th field named N, ``chgheader=i N B`` replaces its
    body (or appends the field when there is no i-th), ``insheader=i N B`` inserts at
    position i (0: on top), ``addheader=N B`` appends; the MTA writes ``N: B`` (it adds
    the space) and turns the LFs of a folded body into CRLF.
    """
    fields = [(name, value) for name, value in split_fields(wire_bytes(block))]

    def render(name: str, body: str) -> tuple[bytes, bytes]:
        value = body.encode("utf-8", "surrogateescape").replace(b"\r\n", b"\n")
        return name.encode("utf-8", "surrogateescape"), \
            b" " + value.replace(b"\n", b"\r\n") + b"\r\n"

    def nth(name: str, index: str) -> int | None:
        want, seen = name.lower().encode("utf-8", "surrogateescape"), 0
        for pos, (fname, _) in enumerate(fields):
            if fname.lower() == want:
                seen += 1
                if seen == max(int(index), 1):
                    return pos
        return None

    for kind, *args in edits:
        if kind == "delheader":
            pos = nth(args[1], args[0])
            if pos is not None:
                del fields[pos]
        elif kind == "chgheader":
            pos = nth(args[1], args[0])
            if pos is None:
                fields.append(render(args[1], args[2]))
            else:
                fields[pos] = render(fields[pos][0].decode("utf-8", "surrogateescape"),
                                     args[2])
        elif kind == "insheader":
            fields.insert(min(max(int(args[0]), 0), len(fields)), render(args[1], args[2]))
        elif kind == "addheader":
            fields.append(render(args[0], args[1]))
    return b"".join(name + b":" + value for name, value in fields) + b"\r\n"


def client_field(raw: bytes) -> tuple[str, str]:
    """A rendered field (``Name: body`` CRLF) as an AM.PDP edit's (name, body): one
    leading space dropped (the MTA adds it), folds as LF (protocols.md 4.4)."""
    name, _, body = raw.partition(b":")
    body = body[1:] if body.startswith(b" ") else body
    body = body.replace(b"\r\n", b"\n").rstrip(b"\n")
    return (name.decode("utf-8", "surrogateescape"),
            body.decode("utf-8", "surrogateescape"))


def signature_fields(msg: Any, header: bytes, body_offset: int, view: Any, *,
                     skip_topmost_received: bool = False, authres: bool = True) -> list[bytes]:
    """The fields to prepend (CRLF ends), topmost first: an A-R for the new signature
    if due, then the ``DKIM-Signature``; empty when this message is not signed.

    ``skip_topmost_received``: AM.PDP/milter, where the MTA adds its own Received
    later and amavis leaves the top one unsigned.  ``authres``: False for no A-R.
    """
    if not header.endswith(b"\r\n\r\n") and header != b"\r\n":
        return []                        # header longer than our read limit: not signed
    wire = wire_bytes(header.replace(b"\r\n", b"\n"))
    fields = split_fields(wire)
    plan = choose(msg, view, fields)
    if plan is None:
        return []
    result, sig_field = make_signature(msg, plan, fields, body_offset, view,
                                       skip_topmost_received)
    findings = msg.findings
    findings.setdefault("dkim_signatures_new", []).append(result)
    findings["dkim_new"] = list(dict.fromkeys([*findings.get("dkim_new", []), result.sd]))
    findings["dkim_signwith_sd"] = (result.selector, result.domain)
    out = [sig_field]
    if authres and _wants_ar(msg, view):
        from amavisd.actions.headers import hdr

        for body in authentication_results([result], authserv_id(view), _rx_time(msg)):
            raw = hdr("Authentication-Results", body, 1, smtputf8=bool(msg.smtputf8))
            out.insert(0, raw.replace(b"\n", b"\r\n"))
    return out


# ---------------------------------------------------------------- the policy
def _majors(msg: Any) -> set[int]:
    majors = set()
    for rcpt in getattr(msg, "recipients", []):
        for ccat in getattr(rcpt, "ccats", None) or []:
            try:
                majors.add(int(str(ccat).split(",")[0]))
            except ValueError:
                continue
    if msg.findings.get("virus_names"):
        majors.add(CC_VIRUS)
    return majors


def _addresses(fields: Sequence[Field], name: bytes) -> list[str]:
    values = [re.sub(r"\r?\n", "", f[1].decode("utf-8", "replace"))
              for f in fields if f[0].lower() == name]
    return [addr for _, addr in getaddresses(values) if addr]


def candidates(msg: Any, fields: Sequence[Field]) -> list[tuple[str, str]]:
    """(address, source) in amavis's order: each From, Resent-From and Resent-Sender by
    resent block top-down, Sender, the envelope sender; duplicates and empties out."""
    found = [(a, "From") for a in _addresses(fields, b"from")]
    blocks: list[tuple[list[str], list[str]]] = []
    in_block = False
    for name, value in fields:
        key = name.lower()
        if not key.startswith(b"resent-"):
            in_block = False
            continue
        if not in_block or (key == b"resent-from" and blocks[-1][0]):
            blocks.append(([], []))
            in_block = True
        if key in (b"resent-from", b"resent-sender"):
            addrs = _addresses([(name, value)], key)
            blocks[-1][0 if key == b"resent-from" else 1].extend(addrs)
    for resent_from, resent_sender in blocks:
        found += [(a, "Resent-From") for a in resent_from]
        found += [(a, "Resent-Sender") for a in resent_sender]
    senders = _addresses(fields, b"sender")
    if senders:
        found.append((senders[0], "Sender"))
    found.append((msg.sender, "mail_from"))
    seen: set[str] = set()
    out = []
    for addr, source in found:
        if addr and addr not in seen:
            seen.add(addr)
            out.append((addr, source))
    return out


def _domain(addr: str) -> str:
    return addr.rpartition("@")[2] if "@" in addr else ""


def _options_for(view: Any, addr: str) -> dict[str, str]:
    """Every matching ``@dkim_signature_options_bysender_maps`` hash, most specific
    first: the first value of each tag wins; amavis's defaults come last."""
    tables = getattr(view, "dkim_signature_options_bysender_maps", None) or []
    found = lookup(True, addr, tables,
                   recipient_delimiter=getattr(view, "recipient_delimiter", None),
                   localpart_is_case_sensitive=bool(
                       getattr(view, "localpart_is_case_sensitive", False))) if tables else []
    merged: dict[str, str] = {}
    for item in [*(found or []), DEFAULT_OPTIONS]:
        if not isinstance(item, Mapping):
            continue
        for k, v in item.items():
            if v is not None:
                merged.setdefault(str(k), str(v))
    return merged


def choose(msg: Any, view: Any, fields: Sequence[Field]) -> SignPlan | None:
    """The signing decision of pipeline.md 24.3, or None (with amavis's log line)."""
    froms = _addresses(fields, b"from")
    from_str = ", ".join(quote_address(a) for a in froms)
    if len(from_str) > 100:
        from_str = from_str[:100] + "[...]"
    allowed = getattr(view, "allowed_added_header_fields", None) or {}
    if not any(str(k).lower() == "dkim-signature" and v not in (0, "0", "", None, False)
               for k, v in allowed.items()):
        do_log(5, "dkim: inserting a DKIM-Signature header field disabled")
        return None
    if not msg.originating:
        do_log(5, "dkim: not signing mail which is not originating from our site")
        return None
    majors = _majors(msg)
    for ccat, what in ((CC_VIRUS, "infected mail"), (CC_SPAM, "spam"),
                       (CC_SPAMMY, "suspected spam")):
        if ccat in majors:
            do_log(2, "dkim: not signing %s (from inside), From: %s", what, from_str)
            return None
    search = candidates(msg, fields)
    do_log(2, "dkim: candidate originators: %s",
           ", ".join(f"{src}:{quote_address(a)}" for a, src in search))
    keys = keys_of(view)
    preset: dict[str, str] = {}
    signwith = msg.findings.get("dkim_signwith_sd")
    if signwith and all(signwith):
        preset = {"s": signwith[0], "d": signwith[1]}
    chosen: tuple[DkimKeyDecl, dict[str, str], str, str] | None = None
    tried: list[str] = []
    for addr, source in search:
        options = dict(preset)
        for k, v in _options_for(view, addr).items():
            options.setdefault(k, v)
        options.setdefault("d", _domain(addr))
        tried.append(options["d"])
        if not options["d"]:
            continue
        key = find_key(keys, options["d"], options.get("s") or None, options.get("a"),
                       options.get("i"))
        if key is not None:
            options["s"] = key.selector
            options.setdefault("a", DEFAULT_ALGORITHM[key.key_type])
            chosen = (key, options, addr, source)
            break
    if chosen is None:
        do_log(2, "dkim: not signing, no applicable private key for domains %s, s=%s, "
                  "From: %s", ", ".join(tried), preset.get("s", ""), from_str)
        return None
    key, options, addr, source = chosen
    d_ace = ace(options["d"])
    subdomains_ok = "s" not in [t.strip() for t in key.tags.get("t", "").split(":")]
    if "i" in options:
        if options["i"] and "@" not in options["i"]:
            options["i"] = "@" + options["i"]          # amavis: "have mercy"
    elif subdomains_ok:
        addr_domain = _domain(addr)
        if addr_domain and re.search(r".\." + re.escape(d_ace) + r"\Z", ace(addr_domain),
                                     re.S):
            options["i"] = "@" + addr_domain
    if options.get("i"):
        ident_domain = ace(options["i"].rpartition("@")[2])
        if not subdomains_ok and ident_domain != d_ace:
            do_log(2, "dkim: not signing, identity domain %s not the same as a signing "
                      "domain %s, flags t=%s, From: %s", options["i"], options["d"],
                   key.tags.get("t", ""), from_str)
            return None
        if subdomains_ok and not (ident_domain == d_ace
                                  or ident_domain.endswith("." + d_ace)):
            do_log(2, "dkim: not signing, identity %s not a subdomain of %s, From: %s",
                   options["i"], options["d"], from_str)
            return None
    for sig in msg.findings.get("dkim_signatures_valid") or []:
        if ace(sig.domain) == d_ace and (not options.get("i") or options["i"] == sig.identity):
            do_log(2, "dkim: not signing, already signed by domain %s, From: %s", d_ace,
                   from_str)
            return None
    author = any(ace(_domain(a)) == d_ace for a in froms)
    return SignPlan(key, options, author, source, addr, froms)


# ---------------------------------------------------------------- the signature
def signed_names(fields: Sequence[Field], view: Any, skip_topmost_received: bool) -> list[str]:
    """The ``h=`` list: each signed field name once per occurrence, bottom-up, with one
    more (oversigned) for names valued 2, next to their bottom-most occurrence."""
    table = dict(DEFAULT_SIGNED_HEADER_FIELDS)
    for k, v in (getattr(view, "signed_header_fields", None) or {}).items():
        table[str(k).lower()] = v
    weight = {name: _weight(v) for name, v in table.items()}
    names = [f[0].decode("latin-1").lower() for f in fields]
    left: dict[str, int] = {}
    for name in names:
        left[name] = left.get(name, 0) + 1
    top_down: list[str] = []
    for name in names:
        top_down.append(name)
        left[name] -= 1
        if not left[name] and weight.get(name, 0) > 1:
            top_down.append(name)
    top_down = [n for n in top_down if weight.get(n, 0) > 0]
    if skip_topmost_received and "received" in top_down:
        top_down.remove("received")
    return list(reversed(top_down))


def _weight(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 1.0 if value else 0.0


def _rx_time(msg: Any) -> float:
    return float(getattr(msg, "rx_time", 0) or time.time())


def make_signature(msg: Any, plan: SignPlan, fields: Sequence[Field], body_offset: int,
                   view: Any, skip_topmost_received: bool = False
                   ) -> tuple[SignatureResult, bytes]:
    """Build and sign the field; returns (its result record, the field bytes with CRLF)."""
    opts = dict(plan.options)
    algorithm = opts.get("a", "rsa-sha256").lower()
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"unsupported signing algorithm {algorithm}")
    _, hash_name = _ALGORITHMS[algorithm]
    canon = opts.get("c", "relaxed/simple").lower()
    head_c, _, body_c = canon.partition("/")
    body_c = body_c or "simple"
    rx_time = _rx_time(msg)
    ttl = opts.get("ttl")
    if ttl is not None and _weight(ttl) > 0:
        opts["x"] = str(math.ceil(rx_time + float(ttl)))
    elif "x" in opts:
        opts["x"] = str(math.ceil(float(opts["x"])))
    d_ace = ace(plan.options["d"])
    if opts.get("i", "").startswith("@") and ace(opts["i"]) == "@" + d_ace:
        del opts["i"]
    if canon in ("simple/simple", "simple"):
        opts.pop("c", None)
    if opts.get("q") == "dns/txt":
        del opts["q"]
    log_opts = ", ".join(f"{k}={opts[k]}" for k in sorted(opts))
    do_log(2, "dkim: signing (%s), From: %s (%s:%s), %s",
           "author" if plan.author else "3rd-party",
           ", ".join(quote_address(a) for a in plan.froms), plan.source,
           quote_address(plan.address), log_opts)
    names = signed_names(fields, view, skip_topmost_received)
    body_hash = _body_hash(msg, body_offset, BodySpec(body_c, hash_name))
    timestamp = int(rx_time)
    tags: list[tuple[str, str]] = [("v", "1"), ("a", algorithm)]
    if "c" in opts:
        tags.append(("c", f"{head_c}/{body_c}"))
    tags += [("d", d_ace), ("h", ":".join(names))]
    if opts.get("q"):
        tags.append(("q", opts["q"]))
    tags.append(("s", plan.key.selector))
    if opts.get("i"):
        tags.append(("i", _qp_identity(opts["i"])))
    tags.append(("t", str(timestamp)))
    if opts.get("x"):
        tags.append(("x", opts["x"]))
    tags.append(("bh", base64.b64encode(body_hash).decode("ascii")))
    folder = _Folder(len("DKIM-Signature:"))
    for k, v in tags:
        folder.tag(k, v)
    folder.tag_start("b")
    unsigned = folder.text()
    digest = header_digest(fields, [n.encode() for n in names], head_c, body_c,
                           (b"DKIM-Signature", unsigned.encode("ascii") + b"\r\n"), hash_name)
    signature = base64.b64encode(_sign(plan.key, digest, hash_name)).decode("ascii")
    folder.value(signature)
    raw = b"DKIM-Signature:" + folder.text().encode("ascii") + b"\r\n"
    result = SignatureResult(
        domain=d_ace, selector=plan.key.selector,
        identity=opts.get("i") or "@" + d_ace, algorithm=algorithm,
        canonicalization=f"{head_c}/{body_c}", b=signature, timestamp=timestamp,
        expiration=int(opts["x"]) if opts.get("x") else None, result=None,
        key_bits=plan.key.bits, key_type=plan.key.key_type)
    return result, raw


def _qp_identity(identity: str) -> str:
    """dkim-quoted-printable: octets outside the safe range as ``=XX``."""
    out = []
    for byte in identity.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if 0x21 <= byte <= 0x7e and ch not in ";=" else f"={byte:02X}")
    return "".join(out)


def _sign(key: DkimKeyDecl, digest: bytes, hash_name: str) -> bytes:
    private = private_key(key)
    if key.key_type == "ed25519":
        return private.sign(digest)                  # RFC 8463: Ed25519 over the hash
    return private.sign(digest, padding.PKCS1v15(), Prehashed(_HASH[hash_name]()))


def _body_hash(msg: Any, offset: int, spec: BodySpec) -> bytes:
    """The body hash of what the SMTP client sends, once per message and offset."""
    cache = msg.findings.setdefault(_BODY_CACHE, {})
    key = (str(msg.spool_path), offset, spec)
    if key not in cache:
        cache[key] = hash_body_file(msg.spool_path, offset, [spec], wire=True)[spec]
    return cache[key]


def _wants_ar(msg: Any, view: Any) -> bool:
    """An A-R for our own signature: verification on, A-R allowed, a local recipient."""
    if not getattr(view, "enable_dkim_verification", None):
        return False
    allowed = getattr(view, "allowed_added_header_fields", None) or {}
    if not any(str(k).lower() == "authentication-results" and v not in (0, "0", "", None)
               for k, v in allowed.items()):
        return False
    lookups = Lookups(view)
    return any(lookups.per_recipient("local_domains_maps", r.address)
               for r in getattr(msg, "recipients", []))


class _Folder:
    """Folds the tag list at WIDTH columns, continuation lines starting with a TAB.

    Breaks go between tags, before a ``:`` of ``h=``, and anywhere inside the
    base64 of ``bh=``/``b=`` (RFC 6376 3.5 allows FWS there).
    """

    def __init__(self, start: int):
        self.parts: list[str] = []
        self.col = start

    def _put(self, atom: str, sep: str = "") -> None:
        if self.col + len(sep) + len(atom) > WIDTH and self.col > 8:
            self.parts.append("\r\n\t")
            self.col, sep = 8, ""
        self.parts.append(sep + atom)
        self.col += len(sep) + len(atom)

    def tag(self, k: str, v: str) -> None:
        if k == "h":
            items = v.split(":")
            self._put(f"h={items[0]}", " ")
            for item in items[1:]:
                self._put(":" + item)
            self._put(";")
        elif k in ("bh", "b"):
            self.tag_start(k)
            self.value(v)
            self._put(";")
        else:
            self._put(f"{k}={v};", " ")

    def tag_start(self, k: str) -> None:
        self._put(f"{k}=", " ")

    def value(self, v: str) -> None:
        while v:
            room = WIDTH - self.col
            if room < 8:
                self.parts.append("\r\n\t")
                self.col, room = 8, WIDTH - 8
            self.parts.append(v[:room])
            self.col += len(v[:room])
            v = v[room:]

    def text(self) -> str:
        return "".join(self.parts)
