# tests: t/checks/test_virus.py
"""The virus check: run @av_scanners (then @av_scanners_backup) on the parts folder.

spec/pipeline.md section 9 (9.1 what is scanned, 9.2 entry format, 9.3 daemon
protocols, 9.4 primary vs secondary, 9.5 names that are really spam) and section 2
steps 15-16.  Runs in the child after decoding and the banned check.  It records
findings only (STYLE.md: checks record, ``decide`` decides): the virus names go to
``ContentFindings.virus_names`` and ``msg.findings['virus_names']``, from which
``decide`` adds CC_VIRUS for the recipients that do not bypass virus checks.

**Entries.**  Each entry is ``[name, method, args, clean, infected, names]``
(optionally followed by pre/post code, which we do not run).  Native config::

    av_scanners = [
        ('ClamAV-clamd', 'ask_daemon', ['CONTSCAN {}\\n', '/var/run/clamav/clamd.ctl'],
         re.compile(r'\\bOK$', re.M), re.compile(r'\\bFOUND$', re.M),
         re.compile(r'^.*?: (?!Infected Archive)(.*) FOUND$', re.M)),
    ]
    av_scanners_backup = [
        ('ClamAV-clamscan', 'clamscan', '--stdout --no-summary -r {}',
         [0], re.compile(r':.*\\sFOUND$', re.M),
         re.compile(r'^.*?: (?!Infected Archive)(.*) FOUND$', re.M)),
    ]

An imported Perl config gives the same with ``PerlCode('ask_daemon')`` as method
and translated ``qr//`` patterns, so Debian's 15-av_scanners works as it is.

* method ``'ask_daemon'`` (or ``PerlCode('ask_daemon')``): args is
  ``[query_template, socket_spec or list of specs]``.  A spec is a Unix socket
  path or ``host:port``; the query is sent as is after ``{}`` became the parts
  folder (``CONTSCAN {}\\n``, ``MULTISCAN {}\\n``); a template with ``*`` or
  ``{}/*`` asks once per file.  A spec ``clamd:<path or host:port>`` uses clamd's
  native protocol instead: every file streamed with INSTREAM in one IDSESSION
  (the template is then ignored; amavis writes ``'*'``).  Several specs are
  tried in turn, twice each (amavis: 2 x specs retries, a pause between rounds).
* method a program name, an absolute path, or a list of alternatives (the first
  one found is used, else the scanner is skipped as "not available"): args is a
  string split on blanks (no shell); a word ``{}`` is the parts folder, ``{}/*``
  and ``*`` are the files (in batches of at most ~4000 bytes of arguments).  The
  program runs with a time limit; its exit status and output are matched.
* method a Python callable ``f(parts_dir, files, timeout) -> output`` or
  ``-> (exit_status, output)``: a scanner written in the config.
* clean / infected: a list of exit statuses, or a regex matched against the
  output (infected is tested first); clean ``None`` means "never vouches"
  (inconclusive).  Daemons have the exit status 0.  names: a regex whose captures
  (over all matches) are the virus names, or a callable ``f(output) -> list``.

**Primary and backup (9.4).**  Every primary scanner runs in order, unless
``first_infected_stops_scan`` and a detection.  A scanner that cannot be reached,
times out (``av_scanner_timeout``) or answers something unexpected has failed;
the next one is tried.  Only when no primary scanner completed are the backups
run (``WARN: all primary virus scanners failed, considering backups``).  The
first detecting scanner's names and output are the result.  When none completed,
the check failed (``ALL VIRUS SCANNERS FAILED``, or ``NO VIRUS SCANNERS
AVAILABLE``): the message gets CC_UNCHECKED (pipeline.md 2 step 15, 12.3), and
with ``virus_scanners_failure_is_fatal`` the message is tempfailed instead
(``451 4.5.0 ... virus_scan FAILED: AV: ALL VIRUS SCANNERS FAILED``).

**Concurrency.**  ``scan()`` is a plain blocking function whose every wait is
bounded (sockets and programs, ``av_scanner_timeout`` each); it touches neither
the Message nor the stats, so the pipeline may run it in a thread beside the
spam check: ``scan_deferred(reactor, ...)`` returns a ``Deferred[VirusResult]``.
``record()`` then stores the result and counts it, on the reactor thread.
``run()`` does both in a row: what content.py calls today.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amavisd.config.lookup import lookup
from amavisd.config.perlconf import PerlCode
from amavisd.errors import TempFail
from amavisd.log import do_log
from amavisd.message import Message
from amavisd.parts import Part, PartsTree
from amavisd.scanners import clamd

log = logging.getLogger(__name__)

NAME = "virus"

#: The methods that mean amavis's ``\\&ask_daemon`` (section 9.3).
DAEMON_METHODS = frozenset({"ask_daemon"})
#: amavis passes file names to a program in batches of this many argument bytes
#: (POSIX guarantees at least 4 kB of arguments).
ARGLIST_LIMIT = 4000
#: At most this much of a program's output is read (amavis: 200 KiB).
MAX_OUTPUT = 200 * 1024
#: Search path for scanner programs given by bare name (amavis's ``$path``).
PROGRAM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/usr/bin:/bin"
ALL_FAILED = "ALL VIRUS SCANNERS FAILED"
NONE_AVAILABLE = "NO VIRUS SCANNERS AVAILABLE"


class ScannerFailed(Exception):
    """One scanner did not complete (unreachable, timed out, unexpected answer)."""


# ---------------------------------------------------------------- entries
@dataclass(frozen=True)
class Scanner:
    """One usable @av_scanners entry (section 9.2)."""

    name: str
    kind: str                      # 'daemon', 'program' or 'code'
    command: Any                   # program path, or the callable
    args: Any                      # query template (program, code) or [template, specs]
    clean: Any                     # list of statuses, regex, or None (inconclusive)
    infected: Any
    names: Any                     # regex or callable(output) -> names


def _pattern(value: Any) -> Any:
    """A regex from a compiled pattern or a string (multi-line, as amavis's qr//m)."""
    if isinstance(value, str):
        return re.compile(value, re.M) if value else None
    return value


def find_program(candidates: Any, search_path: str = PROGRAM_PATH) -> str | None:
    """The first of ``candidates`` (name, path or list) that exists and is executable."""
    if isinstance(candidates, str):
        candidates = [candidates]
    for item in candidates or ():
        if not isinstance(item, str) or not item:
            continue
        if os.sep in item:
            if os.access(item, os.X_OK) and os.path.isfile(item):
                return item
            continue
        found = shutil.which(item, path=search_path)
        if found:
            return found
    return None


def scanner_from_entry(entry: Any) -> Scanner | None:
    """An entry of the native or imported config as a Scanner, or None if unusable.

    Unusable: not a list, no method (amavis disables an entry by setting it to
    undef), a program not found, or a Perl code reference we do not implement
    (anything but ``\\&ask_daemon``).  Those count as "not tried" (section 9.4).
    """
    if not isinstance(entry, (list, tuple)) or len(entry) < 2 or entry[1] is None:
        return None
    name = str(entry[0])
    method = entry[1]
    args = entry[2] if len(entry) > 2 else "{}"
    clean = entry[3] if len(entry) > 3 else None
    infected = entry[4] if len(entry) > 4 else None
    names = entry[5] if len(entry) > 5 else None
    if len(entry) > 6 and any(x is not None for x in entry[6:8]):
        do_log(1, "%s: pre/post code of an av_scanners entry is not run", name)
    if isinstance(method, PerlCode) or (isinstance(method, str) and method in DAEMON_METHODS):
        code = method.name if isinstance(method, PerlCode) else method
        if code not in DAEMON_METHODS:
            do_log(-1, "%s: av scanner method \\&%s is not supported, skipped", name, code)
            return None
        if not isinstance(args, (list, tuple)) or len(args) < 2:
            do_log(-1, "%s: ask_daemon needs [query, socket], skipped", name)
            return None
        return Scanner(name, "daemon", code, list(args), _matcher(clean), _matcher(infected),
                       _pattern(names) if not callable(names) else names)
    if callable(method):
        return Scanner(name, "code", method, args, _matcher(clean), _matcher(infected),
                       _pattern(names) if not callable(names) else names)
    program = find_program(method)
    if program is None:
        do_log(2, "%s: no program %s found, scanner not available", name, method)
        return None
    if isinstance(args, (list, tuple)):
        args = " ".join(str(a) for a in args)
    return Scanner(name, "program", program, str(args), _matcher(clean), _matcher(infected),
                   _pattern(names) if not callable(names) else names)


def _matcher(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return _pattern(value)


def _matches(matcher: Any, status: int, output: str) -> bool:
    if matcher is None:
        return False
    if isinstance(matcher, list):
        return status in matcher
    return matcher.search(output) is not None


def virus_names_from(how: Any, output: str) -> list[str]:
    """Section 9.2 item 6: every capture of every match (the whole match if no group)."""
    if how is None:
        return []
    if callable(how):
        return [str(n) for n in (how(output) or []) if n is not None]
    found: list[str] = []
    for m in how.finditer(output):
        if m.re.groups:
            found.extend(g for g in m.groups() if g is not None)
        else:
            found.append(m.group(0))
    return found


def unique(names: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for n in names:
        seen.setdefault(n, None)
    return list(seen)


# ---------------------------------------------------------------- results
@dataclass
class ScannerResult:
    """One scanner's answer: status True (infected), False (clean), None (failed)."""

    name: str
    status: bool | None
    output: str = ""
    virus_names: list[str] = field(default_factory=list)
    error: str | None = None
    tier: str = "primary"


@dataclass
class AvSpam:
    """Section 9.5: a detection whose names all map to spam scores (the spam part's hook)."""

    scanner: str
    names: list[str]
    scores: list[float]

    @property
    def score(self) -> float:
        return max(self.scores)

    @property
    def tests(self) -> str:
        """``AV:<name>=<score>,...`` as amavis appends to the spam tests."""
        return ",".join(f"AV:{n}={s}" for n, s in zip(self.names, self.scores, strict=True))


@dataclass
class VirusResult:
    """What the virus check found (section 9.4)."""

    status: bool | None = None          # True infected, False clean, None: check failed
    virus_names: list[str] = field(default_factory=list)
    detecting_scanners: list[str] = field(default_factory=list)
    output: str = ""                    # first detecting scanner's output (%v), paths cut
    results: list[ScannerResult] = field(default_factory=list)   # %W
    error: str | None = None            # ALL VIRUS SCANNERS FAILED / NO ... AVAILABLE
    av_spam: list[AvSpam] = field(default_factory=list)
    files: int = 0
    skipped: str | None = None          # why no scan ran (a decoding hold)

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class ScanSettings:
    """The settings the scan reads, taken from the view on the reactor thread."""

    av_scanners: Sequence[Any] = ()
    av_scanners_backup: Sequence[Any] = ()
    first_infected_stops_scan: bool = False
    timeout: float = 120.0
    virus_name_to_spam_score_maps: Sequence[Any] = ()

    @classmethod
    def from_view(cls, view: Any) -> ScanSettings:
        def get(name: str, default: Any) -> Any:
            value = getattr(view, name, default)
            return default if value is None else value

        return cls(av_scanners=list(get("av_scanners", [])),
                   av_scanners_backup=list(get("av_scanners_backup", [])),
                   first_infected_stops_scan=bool(get("first_infected_stops_scan", False)),
                   timeout=float(get("av_scanner_timeout", 120)),
                   virus_name_to_spam_score_maps=list(get("virus_name_to_spam_score_maps",
                                                          [])))


def configured(view: Any) -> bool:
    """Any scanner configured at all (amavis loads its AV code only then)."""
    return bool(getattr(view, "av_scanners", None) or getattr(view, "av_scanners_backup", None))


# ---------------------------------------------------------------- 9.1 files
def files_to_scan(parts_dir: Path, tree: PartsTree) -> list[str]:
    """Base names of the regular, non-empty files in ``parts/`` that are parts.

    Anything else is removed with a WARN, as amavis does; a file name outside
    ``[A-Za-z0-9_.-]`` is logged as suspicious (ours are always ``pNNN``).
    """
    known = {p.base_name for p in tree.walk()}
    names: list[str] = []
    with os.scandir(parts_dir) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or entry.name not in known:
            what = ("symlink" if stat.S_ISLNK(st.st_mode) else "directory"
                    if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode)
                    else "non-regular file")
            extra = "" if entry.name in known else ", it has no corresponding parts object"
            do_log(-1, "WARN: files_to_scan: removing unexpected %s %s%s", what,
                   entry.path, extra)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            continue
        if st.st_size == 0:
            continue
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", entry.name):
            do_log(-1, "WARN: files_to_scan: unexpected/suspicious file name: %s", entry.name)
        names.append(entry.name)
    return names


def present_mail_part(msg: Message, tree: PartsTree, parts_dir: Path, view: Any) -> Part | None:
    """Hard-link the whole message into ``parts/`` as part ``MAIL`` when section 9.1 says so.

    When: the MIME parse had errors, ``MAIL`` matches ``@keep_decoded_original_maps``,
    or some part is undecipherable and ``MAIL-UNDECIPHERABLE`` matches (Debian).
    """
    tables = getattr(view, "keep_decoded_original_maps", None) or []
    if not isinstance(tables, (list, tuple)):
        tables = [tables]
    want = bool(tree.mime_errors) or bool(lookup(False, "MAIL", tables)) or (
        tree.any_undecipherable and bool(lookup(False, "MAIL-UNDECIPHERABLE", tables)))
    if not want or not msg.spool_path:
        return None
    name = tree.new_name(None, ignore_limit=True)
    part = Part(base_name=name, path=parts_dir / name, placement=str(
        len(tree.root.children) + 1), depth=1)
    try:
        os.link(msg.spool_path, part.path)
    except OSError as exc:
        raise TempFail("linking-to-MAIL", f"Can't create hard link {part.path} to "
                                          f"{msg.spool_path}: {exc.strerror}") from exc
    part.size = os.path.getsize(part.path)
    part.type_short = ["MAIL"]
    if msg.smtputf8 and getattr(msg, "header_8bit", False):
        part.declared_types, part.declared_names = ["message/global"], ["message.u8msg"]
    else:
        part.declared_types, part.declared_names = ["message/rfc822"], ["message.msg"]
    tree.root.add(part)
    do_log(3, "presenting full original message to scanners as %s", part.path)
    return part


# ---------------------------------------------------------------- one scanner
def _expand(template: str, parts_dir: str, files: list[str]) -> list[list[str]]:
    """Program arguments (section 9.2 item 3): ``{}`` the folder, ``*``/``{}/*`` the files.

    Returns one argument list per call: a single call without a glob, else the files
    in batches of at most ARGLIST_LIMIT bytes (but at least one file per batch).
    """
    words = template.split()
    globbing = any(w in ("*", "{}/*") for w in words)

    def word(w: str, batch: list[str]) -> list[str]:
        if w == "*":
            return list(batch)
        if w == "{}/*":
            return [f"{parts_dir}/{f}" for f in batch]
        if w == "{}" or w.startswith("{}/"):
            return [parts_dir + w[2:]]
        return [w]

    if not globbing:
        return [[a for w in words for a in word(w, [])]]
    calls, batch, size = [], [], sum(len(w) + 1 for w in words)
    for f in files:
        cost = len(parts_dir) + len(f) + 2
        if batch and size + cost > ARGLIST_LIMIT:
            calls.append([a for w in words for a in word(w, batch)])
            batch, size = [], sum(len(w) + 1 for w in words)
        batch.append(f)
        size += cost
    if batch:
        calls.append([a for w in words for a in word(w, batch)])
    return calls


def _queries(template: str, parts_dir: str, files: list[str]) -> list[str]:
    """ask_daemon queries: the template once (``{}`` -> folder), or once per file."""
    if "*" not in template:
        return [template.replace("{}", parts_dir)]
    out = []
    for f in files:
        q = re.sub(r"\{\}/\*|\*|\{\}", lambda m, f=f: {"{}/*": f"{parts_dir}/{f}", "*": f,
                                                     "{}": parts_dir}[m.group(0)], template)
        out.append(q)
    return out


def _ask_daemon(sc: Scanner, parts_dir: str, files: list[str], timeout: float,
                stops: bool) -> list[tuple[int, str]]:
    """Run an ask_daemon entry; returns (status 0, output) per query (section 9.3)."""
    template, specs = sc.args[0], sc.args[1]
    specs = [specs] if isinstance(specs, str) else [str(s) for s in specs]
    if not specs:
        raise ScannerFailed("no sockets specified")
    deadline = time.monotonic() + timeout
    parsed = [clamd.parse_address(s) for s in specs]
    if parsed[0][0] == "clamd":
        paths = [f"{parts_dir}/{f}" for f in files]
        return [(0, _retrying(sc.name, parsed, deadline, lambda addr, left: clamd.instream_files(
            addr, paths, left, first_infected_stops_scan=stops)))]
    results = []
    for query in _queries(str(template), parts_dir, files):
        results.append((0, _retrying(sc.name, parsed, deadline,
                                     lambda addr, left, q=query: clamd.ask(addr, q, left))))
    return results


def _retrying(name: str, addresses: list[tuple[str, Any]], deadline: float,
              call: Callable[[Any, float], str]) -> str:
    """Try the sockets in turn, 2 x their number of attempts, as amavis does.

    A pause of 1 s (more on later rounds, at most the time left) follows each full
    round; a timeout is final.  The socket that answered is kept first.
    """
    attempts = 2 * len(addresses)
    last = ""
    for attempt in range(1, attempts + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            raise ScannerFailed(f"Exceeded allowed time ({last})" if last
                                else "Exceeded allowed time")
        address = addresses[0][1]
        try:
            return call(address, left)
        except clamd.ClamdTimeout as exc:
            raise ScannerFailed(str(exc)) from exc
        except (clamd.ClamdError, OSError) as exc:
            last = str(exc)
            do_log(-1 if attempt > 1 else 1, "%s: %s, retrying (%d)", name, last, attempt)
        if len(addresses) > 1:
            addresses.append(addresses.pop(0))
        if attempt % len(addresses) == 0 and attempt < attempts:
            time.sleep(max(0.0, min(1.0 + 5 * (attempt // len(addresses) - 1),
                                    deadline - time.monotonic())))
    raise ScannerFailed(f"Too many retries to talk to {clamd.describe(addresses[0][1])} "
                        f"({last})")


def _run_program(sc: Scanner, parts_dir: str, files: list[str],
                 timeout: float) -> list[tuple[int, str]]:
    """Run a command-line scanner: no shell, cwd parts/, a time limit for all calls."""
    deadline = time.monotonic() + timeout
    results = []
    for args in _expand(sc.args, parts_dir, files):
        left = deadline - time.monotonic()
        if left <= 0:
            raise ScannerFailed("Exceeded allowed time")
        do_log(3, "run_av Using (%s): %s %s", sc.name, sc.command, " ".join(args))
        try:
            proc = subprocess.run([sc.command, *args], cwd=parts_dir, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=left, close_fds=True, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ScannerFailed(f"{sc.command} timed out after {timeout:.0f} s") from exc
        except OSError as exc:
            raise ScannerFailed(f"{sc.command}: {exc.strerror or exc}") from exc
        output = proc.stdout[:MAX_OUTPUT].decode("utf-8", "replace").rstrip("\n")
        if proc.returncode < 0:
            raise ScannerFailed(f"{sc.command} killed by signal {-proc.returncode}, "
                                f"output=\"{output}\"")
        results.append((proc.returncode, output))
    return results


def _run_code(sc: Scanner, parts_dir: str, files: list[str],
              timeout: float) -> list[tuple[int, str]]:
    answer = sc.command(parts_dir, list(files), timeout)
    if isinstance(answer, tuple):
        status, output = answer
        if status is None:
            raise ScannerFailed(str(output))
        return [(int(status), str(output))]
    return [(0, str(answer))]


def run_scanner(sc: Scanner, parts_dir: str, files: list[str], timeout: float,
                stops: bool) -> ScannerResult:
    """Call one scanner and judge its answers (amavis ``run_av``, section 9.2)."""
    try:
        if sc.kind == "daemon":
            answers = _ask_daemon(sc, parts_dir, files, timeout, stops)
        elif sc.kind == "program":
            answers = _run_program(sc, parts_dir, files, timeout)
        else:
            answers = _run_code(sc, parts_dir, files, timeout)
    except ScannerFailed as exc:
        return ScannerResult(sc.name, None, error=str(exc))
    status: bool | None = None
    output = ""
    names: list[str] = []
    for code, text in answers:
        if _matches(sc.infected, code, text):            # infected is tested first
            status = True
            found = virus_names_from(sc.names, text)
            names.extend(found)
            output += text.rstrip("\n") + "\n"
            do_log(2, "run_av (%s): INFECTED: %s", sc.name, ", ".join(found))
        elif sc.clean is None:
            do_log(3, "run_av (%s): CLEAN, but inconclusive", sc.name)
        elif _matches(sc.clean, code, text):
            status = status or False
            do_log(3, "run_av (%s): CLEAN", sc.name)
        else:
            error = f"unexpected exit {code}, output=\"{text.rstrip()}\""
            do_log(-1, "run_av (%s) FAILED - %s", sc.name, error)
            return ScannerResult(sc.name, None, output, error=error)
        if status and stops:
            break
    if status and not names:
        names = [""]                                     # section 9.2: never empty
    return ScannerResult(sc.name, status, output, unique(names))


# ---------------------------------------------------------------- 9.4 all scanners
def spam_scores(names: list[str], tables: Sequence[Any]) -> list[float | None]:
    """``@virus_name_to_spam_score_maps`` per name (section 9.5); None keeps a virus."""
    scores: list[float | None] = []
    for name in names:
        value = lookup(False, name, tables) if tables else None
        scores.append(None if value is None else float(value))
    return scores


def scan(parts_dir: Path, files: list[str], settings: ScanSettings) -> VirusResult:
    """Run the scanners on ``files`` (base names in ``parts_dir``); blocking, bounded.

    Thread-safe: reads only its arguments and logs.  Section 9.4 semantics; the
    %v output has the ``<parts_dir>/`` prefix removed.
    """
    result = VirusResult(files=len(files))
    folder = str(parts_dir)
    anyone_tried = anyone_done = False
    stops = settings.first_infected_stops_scan
    tiers = (("primary", settings.av_scanners), ("secondary", settings.av_scanners_backup))
    for tier, entries in tiers:
        if tier == "secondary":
            if anyone_done:
                break
            do_log(-1, "WARN: all primary virus scanners failed, considering backups")
        stop = False
        for entry in entries:
            sc = scanner_from_entry(entry)
            if sc is None:
                continue
            anyone_tried = True
            if not files:
                one = ScannerResult(sc.name, False, tier=tier)
            else:
                one = run_scanner(sc, folder, files, settings.timeout, stops)
                one.tier = tier
                if one.status is None:
                    do_log(-1, "%s av-scanner FAILED: %s", sc.name, one.error)
            anyone_done = anyone_done or one.status is not None
            if one.status and one.virus_names:
                scores = spam_scores(one.virus_names, settings.virus_name_to_spam_score_maps)
                if scores and all(s is not None for s in scores):
                    spam = AvSpam(sc.name, list(one.virus_names), [float(s or 0) for s in scores])
                    do_log(2, "Turning AV infection into a spam report: score=%s, %s",
                           spam.score, spam.tests)
                    result.av_spam.append(spam)
                    one.status, one.virus_names = False, []
            result.results.append(one)
            if one.status:
                result.detecting_scanners.append(sc.name)
                if not result.virus_names:
                    result.virus_names = list(one.virus_names)
                    result.status, result.output = True, one.output
                if stops:
                    stop = True
                    break
            elif result.status is None and one.status is not None:
                result.status, result.output = one.status, one.output
        if stop:
            break
    if not files and anyone_tried:
        do_log(2, "Not calling virus scanners, no files to scan in %s", folder)
    if result.virus_names and result.detecting_scanners:
        do_log(2, "virus_scan: (%s), detected by %d scanners: %s",
               ", ".join(result.virus_names), len(result.detecting_scanners),
               ", ".join(s.replace(",", ";") for s in result.detecting_scanners))
    result.output = re.sub(re.escape(folder) + "/?", "", result.output)
    if not anyone_tried:
        result.error, result.status = NONE_AVAILABLE, None
    elif not anyone_done:
        result.error, result.status = ALL_FAILED, None
    return result


def scan_deferred(reactor: Any, parts_dir: Path, files: list[str],
                  settings: ScanSettings) -> Any:
    """``scan`` in the reactor's thread pool: a ``Deferred[VirusResult]``.

    For running the virus check beside the spam check; ``record`` the result on
    the reactor thread afterwards.
    """
    from twisted.internet import threads

    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), scan, parts_dir,
                                     files, settings)


def record(msg: Message, result: VirusResult, stats: Any = None) -> None:
    """Store the result for decide, headers, DSN, log and quarantine; count it.

    ``msg.findings['virus_names']`` (unique, scanner order), ``['virus']`` (the
    VirusResult: %W, %v, the AV-as-spam hook).  Counters (monitoring.md):
    ``OpsVirusCheck`` once per scanned message, ``virus.byname.<name>`` per name.
    """
    msg.findings["virus"] = result
    msg.findings["virus_names"] = [n for n in result.virus_names]
    if result.detecting_scanners:
        msg.findings["detecting_scanners"] = list(result.detecting_scanners)
    if stats is None or result.skipped:
        return
    stats.add("OpsVirusCheck")
    for name in result.virus_names:
        if name:
            stats.add_dynamic(f"virus.byname.{name}")


def run(msg: Message, tree: PartsTree, parts_dir: Path, view: Any,
        stats: Any = None) -> VirusResult:
    """The whole check on the reactor thread: MAIL part, scan, record, fatal failure.

    Raises TempFail (``virus_scan FAILED: AV: <error>``) when every scanner failed
    and ``virus_scanners_failure_is_fatal`` is set (pipeline.md section 2 step 15).
    """
    if tree.hold:
        do_log(0, "NOTICE: Virus scanning skipped: %s", tree.hold)
        result = VirusResult(skipped=tree.hold)
        record(msg, result, stats)
        return result
    present_mail_part(msg, tree, parts_dir, view)
    started = time.monotonic()
    result = scan(parts_dir, files_to_scan(parts_dir, tree), ScanSettings.from_view(view))
    if stats is not None:
        stats.add("TimeElapsedVirusCheck", int((time.monotonic() - started) * 1000))
    record(msg, result, stats)
    if result.failed:
        do_log(-2, "AV: %s", result.error)
        if getattr(view, "virus_scanners_failure_is_fatal", None):
            raise TempFail("virus_scan", f"AV: {result.error}")
    return result
