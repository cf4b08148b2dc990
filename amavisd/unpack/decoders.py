"""The decoders (spec/pipeline.md section 6.4): one function per routine, and the table.

Each decoder takes (part, ctx) and returns amavis's status: 0 atomic/not decoded,
1 unpacked (the original is deleted unless ``keep_decoded_original`` says keep),
2 unpacked but keep the original.  A failure raises ``DecodeError`` (the part stays,
children made so far stay too); a limit raises ``LimitExceeded`` (section 6.5).

In-process libraries first: ``gzip``/``bz2``/``lzma`` (gz, bz2, xz, lzma),
``zipfile`` (zip, kmz; members in other methods, e.g. deflate64, get U as in amavis),
``tarfile`` (tar), libarchive-c over Debian's libarchive13 (7z, rar, cab, lha,
iso, cpio, deb/ar, rpm, Z, lz4, zst, exe as RAR/7z self-extractor).  External
programs only where no library exists (arj, lzop), through ``run_program``:
argv list, no shell, a time limit, cwd in a private folder, the output charged to
the quota and capped with RLIMIT_FSIZE.

Archive member names are hostile: they are kept in ``declared_names`` and never
used as file names; libraries only ever hand us data streams, and the external
programs' output folders are walked without following links.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import logging
import lzma
import os
import re
import resource
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from amavisd.mime.walk import PART_FILE_MODE
from amavisd.parts import (
    ATTR_DIRECTORY,
    ATTR_ENCRYPTED,
    ATTR_SPECIAL,
    ATTR_SYMLINK,
    ATTR_UNDECIPHERABLE,
    LimitExceeded,
    Part,
)
from amavisd.unpack.context import COPY_CHUNK, DecodeContext, DecodeError, read_chunks

log = logging.getLogger(__name__)

try:                                   # libarchive-c; optional at import time
    import libarchive
    from libarchive import ffi as _la_ffi
    from libarchive.exception import ArchiveError
    from libarchive.read import ArchiveRead

    _entry_is_encrypted = _la_ffi.ffi("entry_is_encrypted", [_la_ffi.c_archive_entry_p],
                                      _la_ffi.c_int)
    HAVE_LIBARCHIVE = True
except (ImportError, OSError, AttributeError):   # pragma: no cover - depends on the host
    libarchive = None
    HAVE_LIBARCHIVE = False

    class ArchiveError(Exception):   # type: ignore[no-redef]
        """Stand-in when libarchive-c is missing."""


Decoder = Callable[[Part, DecodeContext], int]


def _text(name: str | bytes | None) -> str:
    if name is None:
        return ""
    if isinstance(name, bytes):
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            return name.decode("latin-1")
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# --------------------------------------------------------------------------
# single-stream decompressors (do_uncompress / do_gunzip)

_SUFFIX_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "Z": ((r"\.Z\Z", ""), (r"\.tg?z\Z", ".tar")),
    "gz": ((r"\.gz\Z", ""), (r"\.tgz\Z", ".tar")),
    "bz2": ((r"\.bz2?\Z", ""), (r"\.tbz2?\Z", ".tar")),
    "xz": ((r"\.xz\Z", ""), (r"\.txz\Z", ".tar")),
    "lzma": ((r"\.lzma\Z", ""), (r"\.tlz\Z", ".tar")),
    "lzo": ((r"\.lzo\Z", ""),),
    "lz4": ((r"\.lz4\Z", ""),),
    "rpm": ((r"\.rpm\Z", ".cpio"),),
    "zst": ((r"\.zst\Z", ""),),
}
_WAS_NAME = re.compile(r'^\S+\s+compressed data, was "(.+)"(\Z|, from\b)')


def _decompressed_names(part: Part) -> list[str]:
    """Names for the single output: 'was "x"' from the type, then declared names
    with the compression suffix taken off (do_uncompress)."""
    names: list[str] = []
    m = _WAS_NAME.search(part.type_long or "")
    if m:
        names.append(m.group(1))
    for declared in part.declared_names:
        if not declared:
            continue
        name = declared
        for short in part.type_short:
            for pattern, repl in _SUFFIX_RULES.get(short, ()):
                new = re.sub(pattern, repl, name)
                if new != name:
                    name = new
                    break
        if name not in names:
            names.append(name)
    return names


def _single_stream(opener: Callable[[Path], object], who: str) -> Decoder:
    def decode(part: Part, ctx: DecodeContext) -> int:
        assert part.path is not None
        child = ctx.new_part(part, 1, _decompressed_names(part))
        try:
            with opener(part.path) as fh:     # type: ignore[attr-defined]
                ctx.write_part(child, read_chunks(fh), who)
        except (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError) as exc:
            raise DecodeError(f"{who}: {exc}") from exc
        part.decoded_by = who
        return 1
    return decode


do_gunzip = _single_stream(lambda p: gzip.open(p, "rb"), "do_gunzip")
do_bunzip2 = _single_stream(lambda p: bz2.open(p, "rb"), "do_bunzip2")
do_unxz = _single_stream(lambda p: lzma.open(p, "rb", format=lzma.FORMAT_XZ), "do_unxz")
do_unlzma = _single_stream(lambda p: lzma.open(p, "rb", format=lzma.FORMAT_ALONE), "do_unlzma")


# --------------------------------------------------------------------------
# libarchive


@contextlib.contextmanager
def _la_reader(path: Path, formats: tuple[str, ...], filters: tuple[str, ...]):
    """A libarchive reader with exactly these formats/filters (never 'all': no mtree,
    no filters that spawn programs)."""
    archive_p = _la_ffi.read_new()
    try:
        for name in filters:
            _la_ffi.get_read_filter_function(name)(archive_p)
        for name in formats:
            _la_ffi.get_read_format_function(name)(archive_p)
        _la_ffi.read_open_filename_w(archive_p, str(path), COPY_CHUNK)
        yield ArchiveRead(archive_p, header_codec="utf-8")
    finally:
        _la_ffi.read_free(archive_p)


def _is_crypt_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "encrypt" in text or "passphrase" in text or "password" in text


def _la_extract(part: Part, ctx: DecodeContext, formats: tuple[str, ...],
                filters: tuple[str, ...] = ("none",), who: str = "libarchive",
                sfx: bool = False) -> int:
    """Every member of an archive libarchive reads, as new parts (flatten_and_tidy_dir)."""
    if not HAVE_LIBARCHIVE:
        raise DecodeError("libarchive-c is not installed")
    assert part.path is not None
    index = 0
    encrypted = 0
    try:
        with _la_reader(part.path, formats, filters) as archive:
            for entry in archive:
                ctx.check_time()
                index += 1
                name = _text(entry.pathname)
                is_reg = entry.isreg and not entry.islnk
                child = ctx.new_part(part, index, [name], with_file=is_reg)
                if entry.isdir:
                    child.attributes.add(ATTR_DIRECTORY)
                elif entry.issym or entry.islnk:
                    child.attributes.add(ATTR_SYMLINK)
                elif not is_reg:
                    child.attributes.add(ATTR_SPECIAL)
                elif _entry_is_encrypted(entry._entry_p) > 0:
                    encrypted += 1
                    child.attributes.update((ATTR_UNDECIPHERABLE, ATTR_ENCRYPTED))
                    child.path = None
                else:
                    ctx.write_part(child, entry.get_blocks(COPY_CHUNK), who)
    except ArchiveError as exc:
        if sfx and index == 0:
            return 0
        if _is_crypt_error(exc):
            part.attributes.update((ATTR_UNDECIPHERABLE, ATTR_ENCRYPTED))
        raise DecodeError(f"{who}: {exc}") from exc
    if sfx:
        if index == 0:
            return 0
        part.decoded_by = who
        return 2
    if index == 0:
        raise DecodeError(f"{who}: no archive members")
    part.decoded_by = who
    return 2 if encrypted else 1


def _la_decoder(formats: tuple[str, ...], who: str) -> Decoder:
    def decode(part: Part, ctx: DecodeContext) -> int:
        return _la_extract(part, ctx, formats, who=who)
    return decode


def _la_stream(filter_name: str, who: str) -> Decoder:
    """A compressed single stream through libarchive's 'raw' format (compress, lz4, zstd,
    rpm's cpio payload)."""
    def decode(part: Part, ctx: DecodeContext) -> int:
        if not HAVE_LIBARCHIVE:
            raise DecodeError("libarchive-c is not installed")
        assert part.path is not None
        child = ctx.new_part(part, 1, _decompressed_names(part))
        try:
            with _la_reader(part.path, ("raw",), (filter_name,)) as archive:
                for entry in archive:
                    ctx.write_part(child, entry.get_blocks(COPY_CHUNK), who)
                    break
        except ArchiveError as exc:
            raise DecodeError(f"{who}: {exc}") from exc
        part.decoded_by = who
        return 1
    return decode


do_7z = _la_decoder(("7zip",), "7zip")
do_rar = _la_decoder(("rar", "rar5"), "rar")
do_cab = _la_decoder(("cab",), "cab")
do_lha = _la_decoder(("lha",), "lha")
do_iso = _la_decoder(("iso9660",), "iso9660")
do_cpio = _la_decoder(("cpio",), "cpio")
do_ar = _la_decoder(("ar",), "ar")
do_uncompress_Z = _la_stream("compress", "uncompress")
do_unlz4 = _la_stream("lz4", "unlz4")
do_unzstd = _la_stream("zstd", "unzstd")
do_rpm2cpio = _la_stream("rpm", "rpm2cpio")


def do_executable(part: Part, ctx: DecodeContext) -> int:
    """A self-extracting RAR (amavis tries unrar, then unarj); the exe is kept (2)."""
    if not HAVE_LIBARCHIVE:
        return 0
    try:
        return _la_extract(part, ctx, ("rar", "rar5"), who="rar-sfx", sfx=True)
    except DecodeError as exc:
        log.debug("do_executable: not a RAR sfx, ignoring: %s", exc)
        return 0


# --------------------------------------------------------------------------
# zip (do_unzip, Archive::Zip's behaviour) and tar

_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                zipfile.ZIP_LZMA}


def do_unzip(part: Part, ctx: DecodeContext) -> int:
    """zipfile on the central directory; encrypted members become U,C phantoms."""
    assert part.path is not None
    try:
        zf = zipfile.ZipFile(part.path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise DecodeError(f"do_unzip: not a zip: {exc}") from exc
    with zf:
        infos = zf.infolist()
        # pre-check on the declared sizes (amavis does this for 7z, rar, pax, ...)
        ctx.charge(sum(i.file_size for i in infos if not i.flag_bits & 1), "do_unzip-pre",
                   tentative=True)
        encrypted = unsupported = zero = 0
        for index, info in enumerate(infos, 1):
            ctx.check_time()
            name = _text(info.filename)
            child = ctx.new_part(part, index, [name], with_file=False)
            if info.compress_type not in _ZIP_METHODS:
                unsupported += 1
                child.attributes.add(ATTR_UNDECIPHERABLE)
            elif info.flag_bits & 1:
                encrypted += 1
                child.attributes.update((ATTR_UNDECIPHERABLE, ATTR_ENCRYPTED))
            elif info.is_dir():
                child.attributes.add(ATTR_DIRECTORY)
            else:
                child.path = ctx.parts_dir / child.base_name
                try:
                    with zf.open(info) as fh:
                        size = ctx.write_part(child, read_chunks(fh), "do_unzip")
                except (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError,
                        ValueError, NotImplementedError) as exc:
                    raise DecodeError(f"do_unzip: {part.base_name}: error reading member: "
                                      f"{exc}") from exc
                if size == 0:
                    zero += 1
    part.decoded_by = "do_unzip"
    if unsupported or zero or encrypted:
        return 2
    return 1


def do_tar(part: Part, ctx: DecodeContext) -> int:
    """tarfile, members read as streams (never ``extract``: no paths are ever built)."""
    assert part.path is not None
    index = 0
    try:
        with tarfile.open(part.path, mode="r:") as tf:
            for info in tf:
                ctx.check_time()
                index += 1
                name = _text(info.name)
                child = ctx.new_part(part, index, [name], with_file=info.isreg())
                if info.isdir():
                    child.attributes.add(ATTR_DIRECTORY)
                elif info.issym() or info.islnk():
                    child.attributes.add(ATTR_SYMLINK)
                elif not info.isreg():
                    child.attributes.add(ATTR_SPECIAL)
                else:
                    fh = tf.extractfile(info)
                    if fh is not None:
                        with fh:
                            ctx.write_part(child, read_chunks(fh), "do_tar")
                    else:
                        ctx.write_part(child, (), "do_tar")
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise DecodeError(f"do_tar: {exc}") from exc
    if index == 0:
        raise DecodeError("do_tar: no archive members")
    part.decoded_by = "do_tar"
    return 1


# --------------------------------------------------------------------------
# external programs

def find_program(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def run_program(argv: list[str], ctx: DecodeContext, *, cwd: Path,
                stdin_path: Path | None = None, stdout_path: Path | None = None,
                who: str) -> subprocess.CompletedProcess:
    """Run an unpacker: no shell, a time limit, files capped at the remaining quota."""
    limit = max(0, ctx.remaining)

    def _child_setup() -> None:          # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit + 1, limit + 1))
        os.umask(0o077)

    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    stdout_fd = -1
    try:
        if stdout_path is not None:
            stdout_fd = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                                os.O_NOFOLLOW, PART_FILE_MODE)
            os.fchmod(stdout_fd, PART_FILE_MODE)
        timeout = ctx.time_left()
        try:
            return subprocess.run(argv, stdin=stdin,
                                  stdout=stdout_fd if stdout_fd >= 0 else subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd=cwd, timeout=timeout,
                                  preexec_fn=_child_setup, close_fds=True, check=False,
                                  env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
        except subprocess.TimeoutExpired as exc:
            ctx.check_time()
            raise DecodeError(f"{who}: timed out") from exc
    finally:
        if stdout_fd >= 0:
            os.close(stdout_fd)
        if stdin is not subprocess.DEVNULL:
            stdin.close()


def _flatten(folder: Path, part: Part, ctx: DecodeContext, who: str) -> int:
    """Take what a program extracted into ``folder`` as new parts, then remove it.

    Walked with an explicit stack and lstat (no link is followed); every regular
    file is charged and renamed to pNNN, everything else noted as D/L/S.
    """
    index = 0
    todo = [folder]
    dirs: list[Path] = []
    try:
        while todo:
            current = todo.pop()
            dirs.append(current)
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                index += 1
                st = entry.stat(follow_symlinks=False)
                child = ctx.new_part(part, index, [_text(os.fsencode(entry.name))],
                                     with_file=False)
                path = Path(entry.path)
                if stat.S_ISDIR(st.st_mode):
                    child.attributes.add(ATTR_DIRECTORY)
                    todo.append(path)
                elif stat.S_ISLNK(st.st_mode):
                    child.attributes.add(ATTR_SYMLINK)
                    os.unlink(path)
                elif not stat.S_ISREG(st.st_mode):
                    child.attributes.add(ATTR_SPECIAL)
                    os.unlink(path)
                else:
                    ctx.charge(st.st_size, who)
                    child.path = ctx.parts_dir / child.base_name
                    child.size = st.st_size
                    os.chmod(path, PART_FILE_MODE)
                    os.rename(path, child.path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return index


def do_unarj(part: Part, ctx: DecodeContext) -> int:
    """ARJ via the arj/unarj program (libarchive has no ARJ reader)."""
    prog = find_program("arj", "unarj")
    if prog is None:
        raise DecodeError("do_unarj: no arj program")
    assert part.path is not None
    work = Path(tempfile.mkdtemp(prefix=".arj", dir=ctx.parts_dir))
    try:
        src = work / "in.arj"
        os.link(part.path, src)
        out = work / "out"
        os.mkdir(out, 0o700)
        argv = [prog, "e", "-y", "-i", "-jyc", "-gsecret", str(src)] \
            if os.path.basename(prog) == "arj" else [prog, "e", str(src)]
        done = run_program(argv, ctx, cwd=out, who="do_unarj")
        text = (done.stdout or b"") + (done.stderr or b"")
        if b"password" in text.lower() or b"encrypt" in text.lower():
            part.attributes.update((ATTR_UNDECIPHERABLE, ATTR_ENCRYPTED))
        count = _flatten(out, part, ctx, "do_unarj")
        if done.returncode not in (0, 1) and not count:
            raise DecodeError(f"do_unarj: exit {done.returncode}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    part.decoded_by = "do_unarj"
    return 2 if ATTR_ENCRYPTED in part.attributes else 1


def do_unlzop(part: Part, ctx: DecodeContext) -> int:
    """lzop -dc (libarchive reads lzop only through the same program)."""
    prog = find_program("lzop")
    if prog is None:
        raise DecodeError("do_uncompress: no lzop program")
    assert part.path is not None
    child = ctx.new_part(part, 1, _decompressed_names(part))
    assert child.path is not None
    done = run_program([prog, "-dc"], ctx, cwd=ctx.parts_dir, stdin_path=part.path,
                       stdout_path=child.path, who="do_uncompress")
    size = os.path.getsize(child.path)
    child.size = size
    ctx.charge(size, "do_uncompress")
    if done.returncode not in (0, 2):
        raise DecodeError(f"do_uncompress: lzop exit {done.returncode}")
    part.decoded_by = "do_uncompress"
    return 1


# --------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class DecoderEntry:
    """One row of ``@decoders``: short types, routine, and whether it can run here."""

    types: frozenset[str]
    name: str
    func: Decoder
    available: Callable[[], bool]


def _always() -> bool:
    return True


def _have_libarchive() -> bool:
    return HAVE_LIBARCHIVE


def _have(*names: str) -> Callable[[], bool]:
    return lambda: find_program(*names) is not None


#: In amavisd's order (section 6.4); rows whose program/library is missing are skipped.
DECODERS: list[DecoderEntry] = [
    DecoderEntry(frozenset({"Z"}), "do_uncompress", do_uncompress_Z, _have_libarchive),
    DecoderEntry(frozenset({"gz"}), "do_gunzip", do_gunzip, _always),
    DecoderEntry(frozenset({"bz2"}), "do_bunzip2", do_bunzip2, _always),
    DecoderEntry(frozenset({"xz"}), "do_unxz", do_unxz, _always),
    DecoderEntry(frozenset({"lzma"}), "do_unlzma", do_unlzma, _always),
    DecoderEntry(frozenset({"lzo"}), "do_unlzop", do_unlzop, _have("lzop")),
    DecoderEntry(frozenset({"lz4"}), "do_unlz4", do_unlz4, _have_libarchive),
    DecoderEntry(frozenset({"rpm"}), "do_rpm2cpio", do_rpm2cpio, _have_libarchive),
    DecoderEntry(frozenset({"tar"}), "do_tar", do_tar, _always),
    DecoderEntry(frozenset({"cpio"}), "do_cpio", do_cpio, _have_libarchive),
    DecoderEntry(frozenset({"deb"}), "do_ar", do_ar, _have_libarchive),
    DecoderEntry(frozenset({"rar"}), "do_unrar", do_rar, _have_libarchive),
    DecoderEntry(frozenset({"arj"}), "do_unarj", do_unarj, _have("arj", "unarj")),
    DecoderEntry(frozenset({"cab"}), "do_cabextract", do_cab, _have_libarchive),
    DecoderEntry(frozenset({"zip", "kmz"}), "do_unzip", do_unzip, _always),
    DecoderEntry(frozenset({"7z"}), "do_7zip", do_7z, _have_libarchive),
    DecoderEntry(frozenset({"lha"}), "do_lha", do_lha, _have_libarchive),
    DecoderEntry(frozenset({"iso"}), "do_iso", do_iso, _have_libarchive),
    DecoderEntry(frozenset({"exe"}), "do_executable", do_executable, _have_libarchive),
    DecoderEntry(frozenset({"zst"}), "do_unzstd", do_unzstd, _have_libarchive),
]


def active_decoders(entries: list[DecoderEntry] | None = None) -> list[DecoderEntry]:
    """The usable rows, decided once per child like amavis's start-up program search."""
    return [e for e in (entries if entries is not None else DECODERS) if e.available()]


def pick_decoder(short_types: list[str], table: list[DecoderEntry]) -> DecoderEntry | None:
    """The first row whose types meet the part's short types (decompose_part)."""
    for entry in table:
        if any(t in entry.types for t in short_types):
            return entry
    return None


def iter_table() -> Iterator[tuple[str, str, bool]]:
    """(types, routine, usable) for ``amavisd debug`` style listings."""
    for e in DECODERS:
        yield ",".join(sorted(e.types)), e.name, e.available()


__all__ = ["DECODERS", "DecodeError", "DecoderEntry", "LimitExceeded", "active_decoders",
           "pick_decoder"]
