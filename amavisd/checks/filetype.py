"""File typing of parts: libmagic's long description and amavis's short type(s).

spec/pipeline.md section 6.3.  Runs in the child, once per decoding tier
(section 6.5), on every part that has a file.  amavisd asks ``file(1)`` (or
File::LibMagic) for a long description and maps it to short types with
``@map_full_type_to_short_type_maps``; here libmagic runs in-process (python-magic
over Debian's libmagic1, the same library and magic database as ``file`` 5.44),
one ``magic.Magic`` per child, reading the first ``READ_LIMIT`` bytes of the file only
(spec/prototype.md: libmagic is the costly step; the test suite checks that the
answers for the section 6.3 table stay those of ``file -b`` on the whole file).

``MAP_FULL_TYPE_TO_SHORT_TYPE`` reproduces amavisd's built-in table (Amavis/Conf.pm),
in its order, first match wins; ``t/data/filetype/amavis_short_type.pl`` applies the
Perl table itself and is the oracle for the tests.  The table is the mapping, not
something to improve: type strings depend on the libmagic version (section 6.3).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from amavisd.parts import ATTR_ENCRYPTED, Part

NAME = "filetype"
READ_LIMIT = 64 * 1024          # MAGIC_PARAM_BYTES_MAX: bytes libmagic reads per part

_I = re.IGNORECASE

#: (regex, short type(s)) pairs, in amavisd's order; first match wins (section 6.3).
MAP_FULL_TYPE_TO_SHORT_TYPE: list[tuple[re.Pattern[str], tuple[str, ...]]] = [
    (re.compile(p, f), (r,) if isinstance(r, str) else tuple(r))
    for p, r, f in [
        (r"^empty\Z", "empty", 0),
        (r"^directory\Z", "dir", 0),
        (r"^can't (stat|read)\b", "dat", 0),           # file(1) diagnostics
        (r"^cannot open\b", "dat", 0),
        (r"^ERROR:", "dat", 0),
        (r"can't read magic file|couldn't find any magic files", "dat", 0),
        (r"^data\Z", "dat", 0),

        (r"^ISO-8859.*\btext\b", "txt", 0),
        (r"^Non-ISO.*ASCII\b.*\btext\b", "txt", 0),
        (r"^Unicode\b.*\btext\b", "txt", _I),
        (r"^UTF.* Unicode text\b", "txt", _I),
        (r"^'diff' output text\b", "txt", 0),
        (r"^GNU message catalog\b", "mo", 0),

        (r"^PGP message [Ss]ignature\b", ("pgp", "pgp.asc"), 0),
        (r"^PGP message.*[Ee]ncrypted\b", ("pgp", "pgp.enc"), 0),
        (r"^PGP message\Z", ("pgp", "pgp.enc"), 0),
        (r"^(?:PGP|GPG) encrypted data\b", ("pgp", "pgp.enc"), 0),
        (r"^PGP public key\b", ("pgp", "pgp.asc"), 0),
        (r"^PGP armored data( signed)? message\b", ("pgp", "pgp.asc"), 0),
        (r"^PGP armored\b", ("pgp", "pgp.asc"), 0),
        (r"^PGP\b", "pgp", 0),

        # amavis keeps 'RFC 822 mail text' -> 'mail' commented out
        (r"^(ASCII|smtp|RFC 822) mail text\b", "txt", 0),

        (r"^JPEG image data\b", ("image", "jpg"), 0),
        (r"^GIF image data\b", ("image", "gif"), 0),
        (r"^PNG image data\b", ("image", "png"), 0),
        (r"^TIFF image data\b", ("image", "tif"), 0),
        (r"^PCX\b.*\bimage data\b", ("image", "pcx"), 0),
        (r"^PC bitmap data\b", ("image", "bmp"), 0),
        (r"^SVG Scalable Vector Graphics image\b", ("image", "svg"), 0),

        (r"^MP2\b", ("audio", "mpa", "mp2"), 0),
        (r"^MP3\b", ("audio", "mpa", "mp3"), 0),
        (r"\bMPEG ADTS, layer III\b", ("audio", "mpa", "mp3"), 0),
        (r"^ISO Media, MPEG v4 system, 3GPP\b", ("audio", "mpa", "3gpp"), 0),
        (r"^ISO Media, MPEG v4 system\b", ("audio", "mpa", "m4a", "m4b"), 0),
        (r"^FLAC audio bitstream data\b", ("audio", "flac"), 0),
        (r"^Ogg data, FLAC audio\b", ("audio", "oga"), 0),
        (r"^Ogg data\b", ("audio", "ogg"), 0),

        (r"^MPEG video stream data\b", ("movie", "mpv"), 0),
        (r"^MPEG system stream data\b", ("movie", "mpg"), 0),
        (r"^MPEG\b", ("movie", "mpg"), 0),
        (r"^Matroska data\b", ("movie", "mkv"), 0),
        (r"^Microsoft ASF\b", ("movie", "wmv"), 0),
        (r"^RIFF\b.*\bAVI\b", ("movie", "avi"), 0),
        (r"^RIFF\b.*\banimated cursor\b", ("movie", "ani"), 0),
        (r"^RIFF\b.*\bWAVE audio\b", ("audio", "wav"), 0),

        (r"^Macromedia Flash data\b", "swf", 0),
        (r"^HTML document text\b", "html", 0),
        (r"^XML document text\b", "xml", 0),
        (r"^exported SGML document text\b", "sgml", 0),
        (r"^PostScript document text\b", "ps", 0),
        (r"^PDF document\b", "pdf", 0),
        (r"^Rich Text Format data\b", "rtf", 0),
        (r"^Microsoft Office Document\b", "doc", _I),
        (r"^Microsoft Word\b", "doc", _I),
        (r"^Microsoft Installer\b", "doc", _I),
        (r"^Composite Document File V2 Document\b", "cdf-ms", _I),
        (r"^ms-windows meta(file|font)\b", "wmf", _I),
        (r"^LaTeX\b.*\bdocument text\b", "lat", 0),
        (r"^TeX DVI file\b", "dvi", 0),
        (r"\bdocument text\b", "txt", 0),
        (r"^compiled Java class data\b", "java", 0),
        (r"^MS Windows 95 Internet shortcut text\b", "url", 0),
        (r"^Compressed Google KML Document\b", "kmz", 0),

        (r"^frozen\b", "F", 0),
        (r"^gzip compressed\b", "gz", 0),
        (r"^bzip compressed\b", "bz", 0),
        (r"^bzip2 compressed\b", "bz2", 0),
        (r"^xz compressed\b", "xz", 0),
        (r"^lzma compressed\b", "lzma", 0),
        (r"^lrz compressed\b", "lrz", 0),
        (r"^lzop compressed\b", "lzo", 0),
        (r"^LZ4 compressed\b", "lz4", 0),
        (r"^compress'd", "Z", 0),
        (r"^Zip archive\b", "zip", _I),
        (r"^7-zip archive\b", "7z", _I),
        (r"^RAR archive\b", "rar", _I),
        (r"^LHa.*\barchive\b", "lha", _I),
        (r"^ARC archive\b", "arc", _I),
        (r"^ARJ archive\b", "arj", _I),
        (r"^ACE archive\b", "ace", _I),
        (r"^Zoo archive\b", "zoo", _I),
        (r"^(\S+\s+)?tar archive\b", "tar", _I),
        (r"^(\S+\s+)?cpio archive\b", "cpio", _I),
        (r"^StuffIt Archive\b", "sit", _I),
        (r"^Debian binary package\b", "deb", _I),
        (r"^current ar archive\b", "a", _I),
        (r"^RPM\b", "rpm", 0),
        (r"^(Transport Neutral Encapsulation Format|TNEF)\b", "tnef", _I),
        (r"^Microsoft Cabinet (file|archive)\b", "cab", _I),
        (r"^InstallShield Cabinet file\b", "installshield", 0),
        (r"^ISO 9660 CD-ROM filesystem\b", "iso", _I),

        (r"^(uuencoded|xxencoded)\b", "uue", _I),
        (r"^binhex\b", "hqx", _I),
        (r"^(ASCII|text)\b", "asc", _I),
        (r"^Emacs.*byte-compiled Lisp data", "asc", _I),
        (r"\bscript\b.* text executable\b", "txt", 0),

        (r"^MS Windows\b.*\bDLL\b", ("exe", "dll"), 0),
        (r"\bexecutable for MS Windows\b.*\bDLL\b", ("exe", "dll"), 0),
        (r"^MS-DOS executable \(built-in\)", "asc", 0),
        (r"^(MS-)?DOS executable\b.*\bDLL\b", ("exe", "dll"), 0),
        (r"^MS Windows\b.*\bexecutable\b", ("exe", "exe-ms"), 0),
        (r"\bexecutable\b.*\bfor MS Windows\b", ("exe", "exe-ms"), 0),
        (r"^COM executable for DOS\b", "asc", 0),
        (r"^DOS executable \(COM\)", "asc", 0),
        (r"^(MS-)?DOS executable\b(?!.*\(COM\))", ("exe", "exe-ms"), 0),
        (r"^PA-RISC.*\bexecutable\b", ("exe", "exe-unix"), 0),
        (r"^ELF .*\bexecutable\b", ("exe", "exe-unix"), 0),
        (r"^COFF format .*\bexecutable\b", ("exe", "exe-unix"), 0),
        (r"^executable \(RISC System\b", ("exe", "exe-unix"), 0),
        (r"^VMS\b.*\bexecutable\b", ("exe", "exe-vms"), 0),
        (r"\bexecutable\b", "exe", _I),

        (r"\bshared object, ", "so", _I),
        (r"\brelocatable, ", "o", _I),
        (r"\btext\b", "asc", _I),
        (r"^Zstandard compressed\b", "zst", 0),
        (r"^", "dat", 0),                                  # catch-all
    ]
]

_short_cache: dict[str, list[str]] = {}


def short_type(type_long: str) -> list[str]:
    """amavis's short type(s) for a long description (first matching table row)."""
    hit = _short_cache.get(type_long)
    if hit is not None:
        return list(hit)
    result = ["dat"]
    for rx, short in MAP_FULL_TYPE_TO_SHORT_TYPE:
        if rx.search(type_long):
            result = list(short)
            break
    if len(_short_cache) < 4096:
        _short_cache[type_long] = result
    return list(result)


class MagicTyper:
    """libmagic, loaded once per process on first use, or once in the master.

    ``preload()`` in the master loads the magic database before the children are
    forked: each child then starts with it (copy-on-write) instead of importing
    python-magic (which runs ``ldconfig -p`` to find the library) and parsing
    magic.mgc again, ~30 ms per child, once every ``$max_requests`` sessions.  The
    handle holds no descriptor or thread, and the master never uses it, so each
    child owns its copy alone.
    """

    def __init__(self, read_limit: int = READ_LIMIT) -> None:
        self.read_limit = read_limit
        self._magic = None
        self._pid = -1
        self._inherited = False

    def preload(self) -> None:
        """Load now, for the processes this one will fork."""
        self._instance()
        self._inherited = True

    def _instance(self):
        if self._magic is not None and self._inherited and self._pid != os.getpid():
            self._pid = os.getpid()            # a forked child adopts the master's copy
            self._inherited = False
        if self._magic is None or self._pid != os.getpid():
            import magic  # python-magic; libmagic1 underneath

            m = magic.Magic()
            m.setparam(magic.MAGIC_PARAM_BYTES_MAX, self.read_limit)
            self._magic = m
            self._pid = os.getpid()
        return self._magic

    def __call__(self, path: Path) -> str:
        """Long description of the file at ``path``.

        libmagic gets the descriptor, as file(1) does: it reads at most
        ``read_limit`` bytes for the magic tests, and its ELF/CDF readers may look
        further (bounded by libmagic's own ELF/CDF limits); from a plain buffer a
        PIE binary would read 'shared object' instead of 'pie executable'.
        """
        import magic

        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) |
                     getattr(os, "O_CLOEXEC", 0))
        try:
            return self._instance().from_descriptor(fd)
        except magic.MagicException as exc:
            raise RuntimeError(str(exc)) from exc
        finally:
            os.close(fd)


_default_typer: MagicTyper | None = None


def default_typer() -> MagicTyper:
    """The child's one libmagic instance."""
    global _default_typer
    if _default_typer is None:
        _default_typer = MagicTyper()
    return _default_typer


def type_part(part: Part, typer: Callable[[Path], str] | None = None) -> None:
    """Set ``type_long`` and ``type_short`` of a part with a file; ``pgp.enc`` adds C.

    A typer failure leaves the part untyped and is logged, as amavis does
    (``File::LibMagic::describe_filename failed``).
    """
    if part.path is None:
        return
    typer = typer or default_typer()
    try:
        type_long = typer(part.path)
    except (OSError, ValueError, RuntimeError) as exc:
        import logging

        logging.getLogger(__name__).warning("libmagic failed on %s: %s", part.base_name, exc)
        return
    type_long = type_long.replace("\n", " ").strip() if type_long else "data"
    part.type_long = type_long
    part.type_short = short_type(type_long)
    if "pgp.enc" in part.type_short:
        part.attributes.add(ATTR_ENCRYPTED)
