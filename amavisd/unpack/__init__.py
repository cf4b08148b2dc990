"""Decoding a message into its parts tree: the MIME walk, then the decoder loop.

spec/pipeline.md sections 6.1-6.5 (amavisd's ``mime_decode`` + ``decompose_mail``).
Runs in the child, in the pipeline's ``mime_decode-1``/``parts_decode_ext``
sections (section 2 step 12).  ``decode_message`` is the one entry point; it never
raises on hostile input: a decoding bound sets ``PartsTree.hold`` (the text amavis
puts in ``X-Amavis-Hold``) and ``over_levels``, a broken archive is logged and left
as it is.  Only a failure of our own infrastructure (the disk, the parts folder)
raises ``OSError``, which the pipeline turns into a tempfail.

The loop works in breadth-first tiers (section 6.5): the parts issued by the
previous tier are checked (missing -> skipped, empty -> file removed and typed
``empty``), typed with libmagic (``amavisd.checks.filetype``), and each is handed to
the first usable decoder whose short type matches (``decoders.DECODERS``); the
parts those decoders issue form the next tier.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path

from amavisd import stats
from amavisd.checks.filetype import type_part
from amavisd.message import Message
from amavisd.mime.walk import mime_walk
from amavisd.parts import LimitExceeded, Part, PartsTree
from amavisd.unpack.context import (
    DEBIAN_KEEP_DECODED_ORIGINAL,
    DecodeContext,
    DecodeError,
    DecodeLimits,
    DecodeTimeout,
)
from amavisd.unpack.decoders import DecoderEntry, active_decoders, pick_decoder

__all__ = ["DEBIAN_KEEP_DECODED_ORIGINAL", "DecodeLimits", "decode_message", "decode_parts"]

log = logging.getLogger(__name__)

_table: list[DecoderEntry] | None = None
_keep_cache: dict[tuple[str, ...], list[re.Pattern[str]]] = {}


def _decoders() -> list[DecoderEntry]:
    global _table
    if _table is None:
        _table = active_decoders()
    return _table


def _keep_patterns(limits: DecodeLimits) -> list[re.Pattern[str]]:
    key = tuple(limits.keep_decoded_original)
    pats = _keep_cache.get(key)
    if pats is None:
        pats = [re.compile(p, re.IGNORECASE) for p in key]
        _keep_cache[key] = pats
    return pats


def decode_message(msg: Message, parts_dir: Path, limits: DecodeLimits, *,
                   typer: Callable[[Path], str] | None = None,
                   clock: Callable[[], float] = time.monotonic) -> PartsTree:
    """MIME-split ``msg.spool_path`` into ``parts_dir`` and decode archives (section 6).

    ``typer`` maps a file to libmagic's long description (default: the child's one
    libmagic instance); ``clock`` is for the time limit.
    """
    tree = PartsTree(folder=parts_dir)
    start = clock()
    stats.count("OpsDecByMimeParser")
    issued = mime_walk(msg.spool_path, tree, parts_dir, max_files=limits.max_files,
                       max_depth=limits.max_mime_depth)
    size = msg.size or _file_size(msg.spool_path)
    ctx = DecodeContext(tree=tree, parts_dir=parts_dir, limits=limits,
                        quota=limits.quota(size), deadline=start + limits.time_limit,
                        clock=clock)
    if tree.hold is None:
        decode_parts(issued, ctx, typer)
    else:
        for part in issued:                  # still typed: banned checks need the types
            _check_file(part)
            if part.path is not None:
                type_part(part, typer)
    return tree


def _file_size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _check_file(part: Part) -> bool:
    """Section 6.5's existence test: True if the part has a non-empty regular file."""
    if part.path is None:
        return False
    try:
        st = os.lstat(part.path)
    except FileNotFoundError:
        part.path = None
        return False
    if not stat.S_ISREG(st.st_mode):
        kind = "symlink" if stat.S_ISLNK(st.st_mode) else \
            "dir" if stat.S_ISDIR(st.st_mode) else "special"
        log.warning("decompose_mail: removing unexpected %s %s", kind, part.path)
        if stat.S_ISDIR(st.st_mode):
            import shutil

            shutil.rmtree(part.path, ignore_errors=True)
        else:
            os.unlink(part.path)
        part.path = None
        if not part.type_short:
            part.type_short = [kind]
        return False
    if st.st_size == 0:
        os.unlink(part.path)
        part.path = None
        part.size = 0
        if not part.type_short:
            part.type_short = ["empty"]
        if part.type_long is None:
            part.type_long = "empty"
        return False
    return True


def decode_parts(issued: list[Part], ctx: DecodeContext,
                 typer: Callable[[Path], str] | None = None) -> None:
    """The tier loop of ``decompose_mail`` (section 6.5); sets hold/over_levels on a bound."""
    tree = ctx.tree
    limits = ctx.limits
    depth = 1
    parts = issued
    table = _decoders()
    keep = _keep_patterns(limits)
    while parts:
        if limits.max_levels and depth > limits.max_levels:
            tree.over_levels = True
            tree.hold = f"Maximum decoding depth ({limits.max_levels}) exceeded"
            log.info("%s", tree.hold)
            break
        ctx.depth = depth
        ctx.issued = []
        existing = [p for p in parts if _check_file(p)]
        for part in existing:
            type_part(part, typer)
        for part in existing:
            if tree.hold is not None:
                break
            _decompose_part(part, ctx, table, keep)
        if tree.hold is not None:
            break
        parts = ctx.issued
        depth += 1


#: ``OpsDecBy<name>`` of each decoder routine, and whether amavis counts an
#: ``...Attempt`` before running it and the plain name only on success
#: (monitoring.md 1.3: Attempt variants for ArZip, 7z, rar, lha, arj).  Where amavis
#: names the counter after the external program we name it after the program
#: amavis would run for that type.
OPS_DEC_BY: dict[str, tuple[str, bool]] = {
    "do_uncompress": ("Uncompress", False), "do_gunzip": ("Zlib", False),
    "do_bunzip2": ("Bzip2", False), "do_unxz": ("Xz", False), "do_unlzma": ("Lzma", False),
    "do_unlzop": ("Lzop", False), "do_unlz4": ("Lz4", False),
    "do_rpm2cpio": ("Rpm2cpio", False), "do_tar": ("Tar", False), "do_cpio": ("Pax", False),
    "do_ar": ("Ar", False), "do_unrar": ("Unrar", True), "do_unarj": ("Arj", True),
    "do_cabextract": ("Cabextract", False), "do_unzip": ("ArZip", True),
    "do_7zip": ("7z", True), "do_lha": ("Lha", True), "do_iso": ("7z", True),
    "do_executable": ("Executable", False), "do_unzstd": ("Zstd", False),
}


def _decompose_part(part: Part, ctx: DecodeContext, table: list[DecoderEntry],
                    keep: list[re.Pattern[str]]) -> None:
    """Run the first matching decoder on one part; limits become the hold (section 6.4)."""
    if not part.type_short:
        return
    stats.count("OpsDecType-" + ".".join(part.type_short))
    entry = pick_decoder(part.type_short, table)
    if entry is None:
        return
    tree = ctx.tree
    by, attempt = OPS_DEC_BY.get(entry.name, (entry.name.removeprefix("do_").capitalize(), False))
    if attempt:
        stats.count(f"OpsDecBy{by}Attempt")
    else:
        stats.count(f"OpsDecBy{by}")
    try:
        ctx.check_time()
        status = entry.func(part, ctx)
    except LimitExceeded as exc:
        tree.hold = str(exc)
        tree.over_levels = True
        log_fn = log.info if not isinstance(exc, DecodeTimeout) else log.warning
        log_fn("Decoding of %s (%s) failed, leaving it unpacked: %s",
               part.base_name, part.type_long, exc)
        return
    except DecodeError as exc:
        log.warning("Decoding of %s (%s) failed, leaving it unpacked: %s",
                    part.base_name, part.type_long, exc)
        return
    except Exception as exc:  # amavis evals decompose_part: a decoder bug is a failure
        log.error("Decoding of %s (%s) failed, leaving it unpacked: %s",
                  part.base_name, part.type_long, exc, exc_info=exc)
        return
    if attempt and status:
        stats.count(f"OpsDecBy{by}")
    if status == 1 and part.type_long and any(p.search(part.type_long) for p in keep):
        status = 2                            # @keep_decoded_original_maps
    if status == 1 and part.path is not None:
        os.unlink(part.path)
        part.path = None
