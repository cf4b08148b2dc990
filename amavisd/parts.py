"""The parts tree of one message: MIME bodies and archive members on disk.

spec/pipeline.md sections 6.1-6.5.  The MIME walk and the decoders create parts
(files ``<tempdir>/parts/pNNN``; containers are pseudo parts without a file); file
typing fills ``type_long``/``type_short``; the banned check reads the whole tree.
Nothing here reads or writes files: this module is the shared model only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Part attributes (pipeline.md 6.2): letters used as A=... in banned keys.
ATTR_UNDECIPHERABLE = "U"
ATTR_ENCRYPTED = "C"
ATTR_AMBIGUOUS = "B"       # several boundary parameters (CVE-2024-28054)
ATTR_DIRECTORY = "D"
ATTR_SYMLINK = "L"
ATTR_SPECIAL = "S"


class LimitExceeded(Exception):
    """A decoding bound was hit ($MAXLEVELS, $MAXFILES, the storage quota, time).

    The message text is amavis's ``$hold`` reason, e.g.
    ``Maximum decoding depth (14) exceeded`` or ``Maximum number of files (1500) exceeded``.
    """


@dataclass
class Part:
    """One node of the tree.  The root pseudo part has ``base_name == ''``."""

    base_name: str                          # 'p001', 'p002', ... ; '' for the root
    path: Path | None = None                # parts/pNNN; None for a container
    placement: str = ""                     # '1', '1/2', '1/2/1'; members 'parent/<n>'
    parent: Part | None = None
    depth: int = 0                          # decoding tier (MIME leaves: 1)
    declared_types: list[str] = field(default_factory=list)   # MIME type(s), lower case
    declared_names: list[str] = field(default_factory=list)   # decoded and raw forms
    report_type: str | None = None
    encoding: str | None = None             # Content-Transfer-Encoding as declared
    size: int = 0
    attributes: set[str] = field(default_factory=set)
    type_long: str | None = None            # libmagic's description
    type_short: list[str] = field(default_factory=list)       # amavis short types
    decoded_by: str | None = None           # e.g. 'MimeParser', 'ArZip', '7z'
    children: list[Part] = field(default_factory=list)

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def add(self, child: Part) -> Part:
        child.parent = self
        self.children.append(child)
        return child

    def path_from_root(self) -> list[Part]:
        """This part and its ancestors, root pseudo part excluded, root side first."""
        chain: list[Part] = []
        node: Part | None = self
        while node is not None and node.base_name:
            chain.append(node)
            node = node.parent
        return list(reversed(chain))


@dataclass
class PartsTree:
    """All parts of one message, with the counters the limits need."""

    root: Part = field(default_factory=lambda: Part(base_name=""))
    folder: Path | None = None              # <tempdir>/parts
    counter: int = 0
    bytes_extracted: int = 0
    hold: str | None = None                 # amavis's $hold: why decoding stopped
    over_levels: bool = False
    mime_errors: list[str] = field(default_factory=list)

    def new_name(self, max_files: int | None, ignore_limit: bool = False) -> str:
        """The next ``pNNN`` name; over ``$MAXFILES`` raises LimitExceeded (section 6.5)."""
        if max_files and not ignore_limit and self.counter >= max_files:
            raise LimitExceeded(f"Maximum number of files ({max_files}) exceeded")
        self.counter += 1
        return f"p{self.counter:03d}"

    def walk(self) -> Iterator[Part]:
        """Breadth first, root excluded."""
        queue = list(self.root.children)
        while queue:
            part = queue.pop(0)
            yield part
            queue.extend(part.children)

    def leaves(self) -> Iterator[Part]:
        return (p for p in self.walk() if p.is_leaf)

    @property
    def any_undecipherable(self) -> bool:
        return any(ATTR_UNDECIPHERABLE in p.attributes for p in self.walk())

    @property
    def any_encrypted(self) -> bool:
        return any(ATTR_ENCRYPTED in p.attributes for p in self.walk())

    @property
    def ambiguous(self) -> bool:
        return any(ATTR_AMBIGUOUS in p.attributes for p in self.walk())
