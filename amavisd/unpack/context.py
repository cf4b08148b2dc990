"""What every decoder shares: limits, the storage quota, the clock, new member parts.

spec/pipeline.md section 6.5.  One ``DecodeContext`` per message, built by
``amavisd.unpack.decode_message``; decoders never create files any other way, so
every byte they write is charged to the quota *before* it is written (nothing
lands on disk beyond the quota) and every new part goes through
``PartsTree.new_name`` (``$MAXFILES``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from amavisd.mime.walk import create_part_file
from amavisd.parts import LimitExceeded, Part, PartsTree

#: Debian's ``@keep_decoded_original_maps`` (20-debian_defaults), case-insensitive.
DEBIAN_KEEP_DECODED_ORIGINAL: tuple[str, ...] = (
    r"^MAIL-UNDECIPHERABLE$",
    r"^(ASCII(?! cpio)|text|uuencoded|xxencoded|binhex)",
)

COPY_CHUNK = 64 * 1024


@dataclass
class DecodeLimits:
    """The decoding settings of section 6.5 (Debian defaults), plus a time limit.

    ``None`` in a quota/factor setting behaves like Perl's undef in arithmetic (0);
    ``max_levels``/``max_files`` of 0 or None disable that limit, as in amavis.
    """

    max_levels: int | None = 14                  # $MAXLEVELS
    max_files: int | None = 1500                 # $MAXFILES
    min_expansion_quota: int | None = 100 * 1024         # $MIN_EXPANSION_QUOTA
    max_expansion_quota: int | None = 300 * 1024 * 1024  # $MAX_EXPANSION_QUOTA
    min_expansion_factor: int | None = 5         # $MIN_EXPANSION_FACTOR
    max_expansion_factor: int | None = 500       # $MAX_EXPANSION_FACTOR
    keep_decoded_original: tuple[str, ...] = DEBIAN_KEEP_DECODED_ORIGINAL
    time_limit: float = 120.0                    # seconds for the whole decode of one message
    max_mime_depth: int = 100                    # multipart nesting kept by the MIME walk

    def quota(self, mail_size: int) -> int:
        """max(MIN_Q, size*MIN_F, min(MAX_Q, size*MAX_F)) (NewFilename.pm).

        Amavis::Util::min/max skip undefined values, so an unset quota drops out of
        the formula (it does not count as 0); an unset factor does count as 0.
        """
        low = [v for v in (self.min_expansion_quota,
                           mail_size * (self.min_expansion_factor or 0)) if v is not None]
        high = [v for v in (self.max_expansion_quota,
                            mail_size * (self.max_expansion_factor or 0)) if v is not None]
        return max([*low, min(high)] if high else low or [0])


class DecodeError(Exception):
    """A decoder could not decode a part: it stays as it is (section 6.4)."""


class DecodeTimeout(LimitExceeded):
    """The per-message decoding time ran out."""


@dataclass
class DecodeContext:
    """Per-message decoding state handed to every decoder."""

    tree: PartsTree
    parts_dir: Path
    limits: DecodeLimits
    quota: int
    deadline: float
    clock: Callable[[], float]
    depth: int = 1                               # the tier being decoded
    remaining: int = 0
    issued: list[Part] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.remaining = self.quota - self.tree.bytes_extracted

    # -- limits ----------------------------------------------------------------
    def charge(self, nbytes: int, who: str, tentative: bool = False) -> None:
        """Charge bytes to the quota; over it raises the hold text of section 6.5."""
        if nbytes > self.remaining and self.remaining >= 0:
            raise LimitExceeded(f"Exceeded storage quota {self.quota} bytes by {who}; "
                                f"last chunk {nbytes} bytes")
        if not tentative:
            self.remaining -= nbytes
            self.tree.bytes_extracted += nbytes

    def check_time(self) -> None:
        if self.clock() > self.deadline:
            raise DecodeTimeout(f"Decoding time limit ({self.limits.time_limit:g} s) exceeded")

    def time_left(self) -> float:
        return max(0.0, self.deadline - self.clock())

    # -- new parts -------------------------------------------------------------
    def new_part(self, parent: Part, index: int, names: Iterable[str] = (),
                 with_file: bool = True) -> Part:
        """A member/decoded part: pNNN under ``parent``, placement ``parent/<index>``."""
        name = self.tree.new_name(self.limits.max_files)
        part = Part(base_name=name, placement=f"{parent.placement}/{index}",
                    depth=self.depth + 1)
        if with_file:
            part.path = self.parts_dir / name
        for n in names:
            if n and n not in part.declared_names:
                part.declared_names.append(n)
        parent.add(part)
        self.issued.append(part)
        return part

    def write_part(self, part: Part, chunks: Iterable[bytes], who: str) -> int:
        """Write a member's data, chunk by chunk, charging each chunk first."""
        assert part.path is not None
        fd = create_part_file(part.path)
        size = 0
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                self.check_time()
                self.charge(len(chunk), who)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                size += len(chunk)
        finally:
            os.close(fd)
            part.size = size
        return size


def read_chunks(fh, size: int = COPY_CHUNK) -> Iterable[bytes]:
    """A file object's content in bounded chunks."""
    while True:
        chunk = fh.read(size)
        if not chunk:
            return
        yield chunk
