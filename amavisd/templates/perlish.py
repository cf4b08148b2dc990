# tests: t/templates/test_engine.py
"""The Perl behaviours the string macros of spec/pipeline.md 19.2 are defined by.

Templates were written against Perl: ``[:incr|aa]`` is ``ab``, ``[:substr|abc|-5]`` is
``abc``, ``[:sprintf|%%.1f|2.25]`` rounds like C, numbers print like Perl's ``%.15g``.
These helpers give the same answers from Python, bounded where Perl is not (a
``%999999999s`` would otherwise allocate a gigabyte from one template line).
"""

from __future__ import annotations

import math
import re

#: Widths and precisions above this are clamped (a template bug, not a feature).
MAX_FIELD = 10_000

_NUMBER = re.compile(r"[ \t\n\r\f\v]*([+-]?)(?:(inf(?:inity)?|nan)|"
                     r"([0-9]+)?(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?)", re.IGNORECASE)
_MAGIC = re.compile(r"[a-zA-Z]*[0-9]*")


def perl_num(text: str | None) -> int | float:
    """Perl's numeric value of a string: the leading number, 0 if there is none."""
    if text is None:
        return 0
    m = _NUMBER.match(text)
    if not m:
        return 0
    sign, special, whole, frac, exp = m.groups()
    if special:
        value = math.inf if special.lower().startswith("inf") else math.nan
        return -value if sign == "-" else value
    if whole is None and not frac:
        return 0
    if frac is None and exp is None:
        number = int(whole)
        if sign == "-":
            return -number if number else -0.0
        return number
    mantissa = f"{whole or '0'}.{frac or '0'}"
    try:
        value = float(f"{sign}{mantissa}e{exp or '0'}")
    except OverflowError:
        value = math.inf if sign != "-" else -math.inf
    return value


def perl_str(value: int | float) -> str:
    """How Perl prints a number: integers as digits, others with ``%.15g``."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        if -(2 ** 64) < value < 2 ** 64:
            return str(value)
        value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = f"{value:.15g}"
    return text


def perl_int(text: str | None) -> int:
    """Perl's integer value of a string (the number truncated toward zero)."""
    value = perl_num(text)
    if isinstance(value, float):
        if math.isnan(value):
            return 0
        if math.isinf(value):
            return 2 ** 63 - 1 if value > 0 else -(2 ** 63)
        return int(value)
    return value


def _magic_increment(text: str) -> str:
    chars = list(text)
    i = len(chars) - 1
    while i >= 0:
        c = chars[i]
        if c == "z":
            chars[i] = "a"
        elif c == "Z":
            chars[i] = "A"
        elif c == "9":
            chars[i] = "0"
        else:
            chars[i] = chr(ord(c) + 1)
            return "".join(chars)
        i -= 1
    first = text[0]
    lead = "1" if first.isdigit() else "a" if first.islower() else "A"
    return lead + "".join(chars)


def perl_incr(value: str | None, rest: list[str]) -> str:
    """``incr``: ``$v++`` (with Perl's magic string increment), or ``$v += each``."""
    if rest:
        total: int | float = perl_num(value)
        for item in rest:
            total = total + perl_num(item)
        return perl_str(total)
    if value is None or value == "":
        return "1"
    if _MAGIC.fullmatch(value):
        return _magic_increment(value)
    return perl_str(perl_num(value) + 1)


def perl_decr(value: str | None, rest: list[str]) -> str:
    """``decr``: ``$v--`` or ``$v -= each`` (no magic for decrement, as in Perl)."""
    total: int | float = perl_num(value)
    if not rest:
        return perl_str(total - 1)
    for item in rest:
        total = total - perl_num(item)
    return perl_str(total)


def perl_substr(text: str, pos: int, length: int | None = None) -> str | None:
    """``substr($s, $pos[, $len])``; None where Perl returns undef (outside the string)."""
    n = len(text)
    p1 = pos
    if p1 < 0 and n:
        p1 += n
    if p1 > n:
        return None
    if length is None:
        p2 = n
    elif length < 0:
        p2 = n + length
    else:
        p2 = p1 + length
    if p2 < 0:
        if p1 < 0:
            return None
        p2 = 0
    elif p1 < 0:
        p1 = 0
    p2 = max(p2, p1)
    p2 = min(p2, n)
    return text[p1:p2]


def perl_index(text: str, needle: str, pos: int = 0) -> int:
    """``index($s, $t, $pos)``: the position is clamped into the string."""
    pos = max(0, min(pos, len(text)))
    return text.find(needle, pos)


def perl_minmax(args: list[str], want_max: bool) -> str | None:
    """List::Util min/max over the args, blank ones counting as an undef (0 printed empty)."""
    best: tuple[int | float, str | None] | None = None
    for arg in args:
        blank = arg.strip(" \t\n\r\f\v") == ""
        candidate = (0 if blank else perl_num(arg), None if blank else arg)
        if best is None or (candidate[0] > best[0] if want_max else candidate[0] < best[0]):
            best = candidate
    return None if best is None else best[1]


# -------------------------------------------------------------------------- sprintf
_DIRECTIVE = re.compile(r"%(?:(?P<index>[1-9][0-9]*)\$)?(?P<flags>[-+ 0#]*)(?P<vector>\*?v)?"
                        r"(?P<width>\*|[0-9]+)?"
                        r"(?:\.(?P<prec>\*|[0-9]*))?(?P<size>hh|h|ll|l|q|L|V|j|z|t)?"
                        r"(?P<conv>.)?", re.DOTALL)


def perl_sprintf(fmt: str, args: list[str]) -> str:
    """Perl's ``sprintf`` for the conversions templates use (c s d i u o x X e E f F g G b B).

    An unknown conversion is copied through, as Perl does; a missing argument is
    an empty string / zero.  Widths and precisions are clamped at ``MAX_FIELD``.
    """
    out: list[str] = []
    pos = 0
    queue = list(args)

    def take() -> str:
        return queue.pop(0) if queue else ""

    while True:
        start = fmt.find("%", pos)
        if start < 0:
            out.append(fmt[pos:])
            break
        out.append(fmt[pos:start])
        m = _DIRECTIVE.match(fmt, start)
        assert m is not None
        conv = m.group("conv")
        if conv is None:
            out.append(fmt[start:])
            break
        flags = m.group("flags")
        width_s, prec_s = m.group("width"), m.group("prec")
        if m.group("vector") or conv not in "%csdiuoxXeEfFgGbB":
            out.append(m.group(0))              # an invalid conversion prints as itself
            pos = m.end()
            continue
        width = perl_int(take()) if width_s == "*" else int(width_s) if width_s else None
        if width is not None and width < 0:
            flags += "-"
            width = -width
        prec: int | None
        if prec_s == "*":
            prec = perl_int(take())
            prec = None if prec < 0 else prec
        else:
            prec = int(prec_s) if prec_s else (0 if prec_s == "" else None)
        width = min(width, MAX_FIELD) if width is not None else None
        prec = min(prec, MAX_FIELD) if prec is not None else None
        if conv == "%":
            arg = "%"
        elif m.group("index"):
            index = int(m.group("index")) - 1
            arg = args[index] if index < len(args) else ""
        else:
            arg = take()
        out.append(_convert(conv, flags, width, prec, arg))
        pos = m.end()
    return "".join(out)


def _to_integer(number: int | float, signed: bool) -> int:
    """C's cast of a Perl number to IV (``%d``) or UV (``%u %o %x %b``), wrapping like Perl."""
    if isinstance(number, int) and not -(2 ** 63) <= number < 2 ** 64:
        number = float(number)
    if isinstance(number, float):
        if math.isnan(number):
            return 0
        if number < -(2 ** 63):
            number = -(2 ** 63)
        elif number >= 2 ** 64:
            number = 2 ** 64 - 1
        else:
            number = int(number)
    if signed:
        return number - 2 ** 64 if number >= 2 ** 63 else number
    return number + 2 ** 64 if number < 0 else number


def _pad(body: str, flags: str, width: int | None, numeric: bool, sign: str = "") -> str:
    text = sign + body
    if width is None or len(text) >= width:
        return text
    if "-" in flags:
        return text.ljust(width)
    if numeric and "0" in flags:
        return sign + body.rjust(width - len(sign), "0")
    return text.rjust(width)


def _convert(conv: str, flags: str, width: int | None, prec: int | None, arg: str) -> str:
    if conv == "%":
        return _pad("%", flags, width, False)
    number = perl_num(arg)
    special = isinstance(number, float) and (math.isinf(number) or math.isnan(number))
    if conv == "c":
        if special:
            return ""                           # Perl dies here; we print nothing
        code = perl_int(arg)
        if not 0 <= code <= 0x10FFFF:
            return ""                           # Perl dies here too
        return _pad(chr(code), flags, width, False)
    if conv == "s":
        text = arg if prec is None else arg[:prec]
        return _pad(text, flags, width, False)
    if special:
        body = "NaN" if math.isnan(number) else "Inf"
        text = ("-" if number < 0 else "+" if "+" in flags and body == "Inf" else "") + body
        if width is not None and "0" in flags and "-" not in flags:
            return text.rjust(width, "0")           # Perl pads the sign too, here
        return _pad(text, flags, width, False)
    if conv in "diuoxXbB":
        number = _to_integer(number, signed=conv in "di")
        negative = number < 0
        magnitude = -number if negative else number
        digits = {"d": str, "i": str, "u": str, "o": lambda v: format(v, "o"),
                  "x": lambda v: format(v, "x"), "X": lambda v: format(v, "X"),
                  "b": lambda v: format(v, "b"), "B": lambda v: format(v, "b")}[conv](magnitude)
        if prec is not None:
            digits = "" if prec == 0 and magnitude == 0 else digits.rjust(prec, "0")
            flags = flags.replace("0", "")
        if "#" in flags and magnitude:
            digits = {"o": "0" + digits if not digits.startswith("0") else digits,
                      "x": "0x" + digits, "X": "0X" + digits, "b": "0b" + digits,
                      "B": "0B" + digits}.get(conv, digits)
        sign = "-" if negative else "+" if "+" in flags else " " if " " in flags else ""
        return _pad(digits, flags, width, True, sign)
    value = float(number)
    spec = ("#" if "#" in flags else "") + "." + str(6 if prec is None else prec) + conv
    body = format(abs(value), spec)
    negative = math.copysign(1.0, value) < 0
    sign = "-" if negative else "+" if "+" in flags else " " if " " in flags else ""
    return _pad(body, flags, width, True, sign)


# -------------------------------------------------------------------------- wrapping
def displayed_length(text: str, column: int) -> int:
    """The column after printing ``text`` from ``column`` (a TAB goes to the next 8)."""
    for ch in text:
        column += 8 - column % 8 if ch == "\t" else 1
    return column


_CHUNK = re.compile(r"(?:^.*?|[ \t])[^ \t]+[ \t]*(?=\Z|[ \t][^ \t])", re.DOTALL)
_SOLID = re.compile(r"(.*[^ \t])([ \t]*)", re.DOTALL)


def _all_white(text: str) -> bool:
    return text.strip(" \t") == ""


def _chunks(text: str, structured: bool) -> list[str]:
    if structured:
        while True:
            stripped = re.sub(r"^([ \t]*)\n", r"\1", text, count=1)
            if stripped == text:
                break
            text = stripped
        text = re.sub(r"\n(?=[ \t]*(\n|\Z))", "", text)
        text = re.sub(r"\n(?![ \t])", "\n ", text)
        return text.split("\n")
    text = re.sub(r"\n(?![ \t])", "\n ", text)
    text = text.replace("\n", "")
    chunks = []
    pos = 0
    while True:
        m = _CHUNK.match(text, pos)
        if not m or m.end() == pos:
            break
        chunks.append(m.group(0))
        pos = m.end()
    return chunks


def wrap_string(text: str, max_len: int | float = 78, prefix: str = "",
                indent: str | None = None, structured: bool = False) -> str:
    """Wrap ``text`` into lines of at most ``max_len`` columns (the ``wrap`` macro).

    Breaks only inside whitespace runs and never produces an all-white line;
    continuation lines start with ``indent`` in place of their first blank (kept
    when ``indent`` is None).  An empty ``indent`` means plain-text wrapping:
    whitespace at the breaks is dropped.  ``prefix`` starts every line.
    """
    chunks = _chunks(text, structured)
    result: list[str] = []
    line = ""
    column = displayed_length(prefix, 0)
    continuation = False
    plain = indent is not None and indent == ""
    while chunks:
        chunk = chunks.pop(0)
        if indent is not None and continuation and line == "" and chunk[:1] in (" ", "\t"):
            chunk = indent + chunk[1:]
        end = displayed_length(chunk, column)
        if end <= max_len or (not chunks and _all_white(line)):
            line += chunk
            column = end
            continue
        solid_m = _SOLID.fullmatch(chunk)
        assert solid_m is not None              # every chunk holds a non-blank
        solid, tail = solid_m.group(1), solid_m.group(2)
        solid_end = displayed_length(solid, column)
        if chunks and (solid_end <= max_len or _all_white(line)):
            line += solid
            column = solid_end
            if not plain:
                while tail:                     # keep what whitespace still fits
                    after = displayed_length(tail[0], column)
                    if after > max_len:
                        break
                    line += tail[0]
                    column = after
                    tail = tail[1:]
                if tail:
                    chunks[0] = tail + chunks[0]
        else:                                   # flush the line, retry the chunk
            if plain:
                line = line.rstrip(" \t")
            result.append(prefix + line)
            continuation = True
            line = ""
            column = displayed_length(prefix, 0)
            chunks.insert(0, chunk)
    if not _all_white(line):
        if plain:
            line = line.rstrip(" \t")
        result.append(prefix + line)
    return "\n".join(result)
