# tests: amavisd/checks/filetype.py
"""File typing (spec/pipeline.md 6.3): libmagic in-process on 64 KiB, amavis's short types.

Oracles: ``file -b`` on the whole file for the long description, and amavisd's own
``$map_full_type_to_short_type_re`` applied by Amavis::Lookup
(``t/data/filetype/amavis_short_type.pl``) for the mapping.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import shutil
import struct
import subprocess
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from amavisd.checks.filetype import MagicTyper, short_type, type_part
from amavisd.parts import Part

ORACLE = Path(__file__).resolve().parents[1] / "data" / "filetype" / "amavis_short_type.pl"
CLAM = Path("/usr/share/clamav-testfiles")


def perl_short_types(longs: list[str]) -> list[list[str]]:
    """amavisd's mapping, run by Perl on the installed Amavis::Conf."""
    if shutil.which("perl") is None or not Path("/usr/share/perl5/Amavis/Conf.pm").exists():
        pytest.skip("perl or Debian amavisd-new (Amavis::Conf) not installed")
    out = subprocess.run(["perl", str(ORACLE)], input="\n".join(longs) + "\n",
                         capture_output=True, text=True, check=True, timeout=60)
    return [line.split(",") for line in out.stdout.splitlines()]


def file_b(path: Path) -> str:
    return subprocess.run(["file", "-b", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def png_bytes() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
            chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b""))


def build_corpus(folder: Path) -> list[Path]:
    """Files made by hand plus a few from clamav-testfiles and the system."""
    folder.mkdir()
    files: dict[str, bytes] = {
        "text.txt": b"Dear colleague,\nplease find the figures attached.\nRegards\n" * 20,
        "utf8.txt": "Gr\u00fc\u00dfe aus K\u00f6ln, caf\u00e9\n".encode() * 10,
        "page.html": b"<!DOCTYPE html>\n<html><head><title>x</title></head>"
                     b"<body><p>hello</p></body></html>\n",
        "photo.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
                     + b"\x00" * 64 + b"\xff\xd9",
        "pic.png": png_bytes(),
        "anim.gif": b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04"
                    b"\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;",
        "doc.rtf": b"{\\rtf1\\ansi\\deff0 {\\fonttbl {\\f0 Times;}}\\f0 hello\\par}\n",
        "doc.pdf": b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n",
        "empty": b"",
        "random.bin": bytes(range(256)) * 64,
        "gz.gz": gzip.compress(b"hello " * 100),
        "bz.bz2": bz2.compress(b"hello " * 100),
        "xz.xz": lzma.compress(b"hello " * 100),
        "lz.lzma": lzma.compress(b"hello " * 100, format=lzma.FORMAT_ALONE),
        "script.sh": b"#!/bin/sh\necho hello\n",
        "sig.asc": b"-----BEGIN PGP SIGNATURE-----\n\niQEz\n-----END PGP SIGNATURE-----\n",
        "msg.pgp": b"-----BEGIN PGP MESSAGE-----\n\nhQEMA\n-----END PGP MESSAGE-----\n",
        "mail.eml": b"From: a@example.com\nTo: b@example.com\nSubject: hi\n\nbody\n",
    }
    zb = io.BytesIO()
    with zipfile.ZipFile(zb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", b"hello " * 100)
    files["archive.zip"] = zb.getvalue()
    tb = io.BytesIO()
    with tarfile.open(fileobj=tb, mode="w", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo("a.txt")
        info.size = 5
        t.addfile(info, io.BytesIO(b"hello"))
    files["archive.tar"] = tb.getvalue()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    for name in ("clam.exe", "clam.7z", "clam.cab", "clam.zip", "clam.tar.gz", "clam.arj",
                 "clam.newc.cpio", "clam.ole.doc", "clam.exe.rtf", "clam.pdf", "clam.tnef",
                 "clam.exe.binhex", "clam.exe.mbox.uu", "clam.exe.bz2", "clam.mail"):
        if (CLAM / name).exists():
            shutil.copyfile(CLAM / name, folder / name)
    for system in ("/bin/true", "/usr/lib/x86_64-linux-gnu/libc.so.6"):
        if Path(system).exists():
            shutil.copyfile(system, folder / Path(system).name)
    big = b"A" * (70 * 1024) + b"\x00\x01\x02" * 100     # text in the first 64 KiB only
    (folder / "text-then-binary").write_bytes(big)
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    if shutil.which("file") is None:
        pytest.skip("file(1) not installed")
    return build_corpus(tmp_path_factory.mktemp("ft") / "corpus")


def test_short_type_matches_amavis_for_file_output(corpus):
    """libmagic on 64 KiB gives the short type amavis gives for ``file -b`` on the file."""
    typer = MagicTyper()
    longs = [file_b(p) for p in corpus]
    ours = [typer(p) for p in corpus]
    expected = perl_short_types(longs)
    mismatches = [(p.name, lng, our, exp, short_type(our))
                  for p, lng, our, exp in zip(corpus, longs, ours, expected, strict=True)
                  if short_type(our) != exp]
    assert mismatches == []
    same_text = sum(lng == our for lng, our in zip(longs, ours, strict=True))
    assert same_text >= len(corpus) - 2, list(zip(longs, ours, strict=True))


def test_expected_short_types(corpus):
    """Spot checks of the section 6.3 table on this Debian's libmagic (file 5.44)."""
    typer = MagicTyper()
    got = {p.name: short_type(typer(p)) for p in corpus}
    want = {
        "text.txt": ["asc"], "page.html": ["asc"], "photo.jpg": ["image", "jpg"],
        "pic.png": ["image", "png"], "anim.gif": ["image", "gif"], "archive.zip": ["zip"],
        # file 5.44 says "XZ ..."/"LZMA ...": no row matches, so amavis types them 'dat'
        "gz.gz": ["gz"], "bz.bz2": ["bz2"], "xz.xz": ["dat"], "lz.lzma": ["dat"],
        "archive.tar": ["tar"], "doc.pdf": ["pdf"], "doc.rtf": ["rtf"], "empty": ["empty"],
        "clam.exe": ["exe", "exe-ms"], "true": ["exe", "exe-unix"], "clam.7z": ["7z"],
        "clam.ole.doc": ["cdf-ms"], "clam.cab": ["cab"], "clam.newc.cpio": ["cpio"],
        "random.bin": ["dat"], "clam.arj": ["arj"],
    }
    for name, short in want.items():
        if name in got:
            assert got[name] == short, (name, got[name])


def test_mapping_table_equals_perl_table():
    """Descriptions covering every row of the table map as the Perl table maps them."""
    longs = [
        "empty", "directory", "can't stat `x'", "cannot open `x'", "ERROR: bad", "data",
        "ISO-8859 text", "Non-ISO extended-ASCII text", "Unicode text, UTF-16",
        "UTF-8 Unicode text", "'diff' output text", "GNU message catalog (little endian)",
        "PGP message Signature", "PGP message, encrypted", "PGP message",
        "GPG encrypted data", "PGP public key block", "PGP armored data signed message",
        "PGP armored data", "PGP something", "RFC 822 mail text", "ASCII mail text",
        "JPEG image data, JFIF standard 1.01", "GIF image data, version 89a",
        "PNG image data, 1 x 1", "TIFF image data, big-endian", "PCX ver. 3.0 image data",
        "PC bitmap data", "SVG Scalable Vector Graphics image", "MP2, 128 kbps",
        "MP3 file", "Audio file with ID3, MPEG ADTS, layer III, v1",
        "ISO Media, MPEG v4 system, 3GPP", "ISO Media, MPEG v4 system, version 1",
        "FLAC audio bitstream data", "Ogg data, FLAC audio", "Ogg data, Vorbis audio",
        "MPEG video stream data", "MPEG system stream data", "MPEG sequence",
        "Matroska data", "Microsoft ASF", "RIFF (little-endian) data, AVI",
        "RIFF (little-endian) data, animated cursor", "RIFF (little-endian) data, WAVE audio",
        "Macromedia Flash data", "HTML document text", "XML document text",
        "exported SGML document text", "PostScript document text", "PDF document",
        "Rich Text Format data", "Microsoft Office Document", "Microsoft Word 2007+",
        "Microsoft Installer", "Composite Document File V2 Document, Little Endian",
        "ms-windows metafile", "LaTeX 2e document text", "TeX DVI file",
        "troff or preprocessor input document text", "compiled Java class data",
        "MS Windows 95 Internet shortcut text", "Compressed Google KML Document",
        "frozen file", "gzip compressed data", "bzip compressed data",
        "bzip2 compressed data", "xz compressed data", "lzma compressed data",
        "lrz compressed data", "lzop compressed data", "LZ4 compressed data",
        "compress'd data 16 bits", "Zip archive data", "7-zip archive data",
        "RAR archive data", "LHa (2.x) archive data", "ARC archive data",
        "ARJ archive data", "ACE archive data", "Zoo archive data",
        "POSIX tar archive (GNU)", "ASCII cpio archive", "StuffIt Archive",
        "Debian binary package", "current ar archive", "RPM v3.0 bin",
        "Transport Neutral Encapsulation Format", "Microsoft Cabinet archive data",
        "InstallShield Cabinet file", "ISO 9660 CD-ROM filesystem data",
        "uuencoded text", "xxencoded text", "BinHex binary text", "ASCII text",
        "text/plain", "Emacs v18 byte-compiled Lisp data",
        "Bourne-Again shell script text executable", "MS Windows DLL",
        "PE32 executable for MS Windows (DLL)", "MS-DOS executable (built-in)",
        "MS-DOS executable, NE for MS Windows 3.x (DLL)", "MS Windows PE executable",
        "PE32 executable (GUI) Intel 80386, for MS Windows", "COM executable for DOS",
        "DOS executable (COM)", "MS-DOS executable", "PA-RISC1.1 executable",
        "ELF 64-bit LSB pie executable, x86-64", "COFF format alpha executable",
        "executable (RISC System/6000 V3.1)", "VMS VAX executable", "Mach-O executable",
        "ELF 64-bit LSB shared object, x86-64", "ELF 64-bit LSB relocatable, x86-64",
        "HTML document, ASCII text", "Zstandard compressed data (v0.8+)", "JSON data",
        "news or mail, ASCII text", "Microsoft Excel 2007+", "CSV text",
    ]
    expected = perl_short_types(longs)
    assert [short_type(x) for x in longs] == expected


def test_type_part_sets_fields_and_pgp_enc_is_C(tmp_path):
    f = tmp_path / "p001"
    f.write_bytes(b"-----BEGIN PGP MESSAGE-----\n\nhQEMA\n-----END PGP MESSAGE-----\n")
    part = Part(base_name="p001", path=f)
    type_part(part, lambda p: "PGP message")
    assert part.type_long == "PGP message" and part.type_short == ["pgp", "pgp.enc"]
    assert "C" in part.attributes
    container = Part(base_name="p002")
    type_part(container, lambda p: "data")
    assert container.type_long is None


def test_a_preloaded_typer_is_adopted_by_a_forked_child(tmp_path):
    """preload() in the master: the child types with the inherited handle (no reload:
    ~30 ms per child before), and the result is the same as a fresh instance's."""
    import os

    sample = tmp_path / "a.zip"
    sample.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    typer = MagicTyper()
    typer.preload()
    handle = id(typer._magic)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # pragma: no cover - the child
        try:
            described = typer(sample)
            same = id(typer._magic) == handle
            os.write(write, f"{same}|{described}".encode())
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 4096).decode()
    os.waitpid(pid, 0)
    assert answer == f"True|{MagicTyper()(sample)}"
    assert "Zip archive" in answer
