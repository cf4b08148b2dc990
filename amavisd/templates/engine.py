# tests: t/templates/test_engine.py
"""The macro processor of README.customize (spec/pipeline.md 19.1), bounded.

``expand(text, macros)`` walks the cached token tuple of ``text`` (``lexer``) with
a call stack and quoting levels, exactly as the reference machine does: a
selector quotes its alternatives, an iterator all of its arguments, ``["..."]``
one level; neutral calls (``[:name|...]``, ``%x``, ``_NAME_``) put their value
out as plain text, active calls (selectors, iterators, ``[@name|...]``) push
their result back in front of the remaining input.

Macro values come from ``macros``: a mapping from a name to ``None``, a ``str``,
a ``list`` of str, a ``UserMacro`` (from ``[= name|body]``) or a callable
``f(name, *args)`` returning one of the first three.  Values are plain strings:
they are never lexed, so a hostile Subject stays literal text.

Templates are admin-provided, but the values that flow through them come from
mail, so every expansion is bounded (``Limits``): tokens processed, call depth,
and characters held in the output and in pending arguments.  Going over a bound
raises ``TemplateLimitError``; the callers log it and fall back (a notification
without its text is better than a child stuck in a loop).
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from amavisd.templates.lexer import (
    FORMAL,
    HASH,
    LB,
    LB_ACT,
    LB_CALL,
    LB_DEF,
    LB_QQ,
    LB_RE,
    LB_SEL,
    RB,
    RB_QQ,
    SEP,
    Tok,
    Token,
    tokenize,
    tokens_text,
)

log = logging.getLogger(__name__)

Value = None | str | list
_FORMAL_INDEX = {tok: i for i, tok in enumerate(FORMAL)}
_SELECTOR_NUMBER = re.compile(r"\s*([0-9]+)\s*", re.ASCII)
_WS = " \t\n"


class TemplateError(Exception):
    """A template could not be expanded."""


class TemplateLimitError(TemplateError):
    """An expansion went over one of its bounds (``Limits``)."""


@dataclass(frozen=True)
class Limits:
    """Bounds of one expansion.

    The defaults leave ample room for real templates (Debian's largest expands
    in under 2 000 tokens; a 1 000-recipient notification in well under 100 000)
    while stopping a runaway ``[= x|["[@x]"]][@x]`` within a second.
    """

    max_tokens: int = 1_000_000     # tokens taken from the input, re-pushed ones included
    max_depth: int = 64             # nested open calls
    max_chars: int = 4 * 1024 * 1024   # output plus pending arguments, in characters


DEFAULT_LIMITS = Limits()


class UserMacro:
    """A macro defined by ``[= name|body]``: its body tokens, ``%0``..``%9`` formal."""

    __slots__ = ("body",)

    def __init__(self, body: list[Token]) -> None:
        self.body = tuple(body)

    def substitute(self, actual: list[Any]) -> list[Token]:
        """The body with ``%n`` replaced by the n-th actual argument's tokens.

        ``actual[0]`` is the macro name as a plain string, which (as in the
        reference) makes ``%0`` expand to nothing.
        """
        out: list[Token] = []
        for tok in self.body:
            index = _FORMAL_INDEX.get(tok) if type(tok) is Tok else None
            if index is None:
                out.append(tok)
            elif index < len(actual) and isinstance(actual[index], list):
                out.extend(actual[index])
        return out


def _blank(text: str) -> bool:
    """Perl's ``/^\\s*\\z/``: empty or whitespace only."""
    return text.strip(" \t\n\r\f\v") == ""


def perl_regex_search(pattern: str, subject: str) -> re.Match[str] | None:
    """Match a template regexp with Perl's syntax; an invalid one never matches."""
    compiled = _compile_regex(pattern)
    return compiled.search(subject) if compiled is not None else None


_REGEX_CACHE: dict[str, re.Pattern[str] | None] = {}


def _compile_regex(pattern: str) -> re.Pattern[str] | None:
    if pattern in _REGEX_CACHE:
        return _REGEX_CACHE[pattern]
    from amavisd.config.perlconf import RegexError, perl_regex

    try:
        compiled: re.Pattern[str] | None = perl_regex(pattern)
    except (RegexError, RecursionError) as exc:
        log.info("invalid macro regexp arg: %s", exc)
        compiled = None
    if len(_REGEX_CACHE) > 512:
        _REGEX_CACHE.clear()
    _REGEX_CACHE[pattern] = compiled
    return compiled


class _Frame:
    """One open call: its kind, its arguments so far, whether it quotes implicitly."""

    __slots__ = ("kind", "args", "implied", "held")

    def __init__(self, kind: Tok) -> None:
        self.kind = kind
        self.args: list[list[Any]] = [[]]
        self.implied = False
        self.held = 0


class _Expansion:
    """State of one ``expand`` call."""

    def __init__(self, macros: MutableMapping[str, Any], limits: Limits) -> None:
        self.macros = macros
        self.limits = limits
        self.cache: dict[str, Value] = {}
        self.steps = 0
        self.held = 0           # characters in pending arguments
        self.out: list[str] = []
        self.out_len = 0

    # -- bounded sinks ---------------------------------------------------------------
    def emit(self, text: str) -> None:
        self.out.append(text)
        self.out_len += len(text)
        if self.out_len + self.held > self.limits.max_chars:
            raise TemplateLimitError(f"template output exceeds {self.limits.max_chars} "
                                     "characters")

    def hold(self, frame: _Frame, tokens: list[Any]) -> None:
        frame.args[-1].extend(tokens)
        size = sum(len(t) if type(t) is str else len(t.text) for t in tokens)
        frame.held += size
        self.held += size
        if self.out_len + self.held > self.limits.max_chars:
            raise TemplateLimitError(f"template arguments exceed {self.limits.max_chars} "
                                     "characters")

    # -- macro values -----------------------------------------------------------------
    def value(self, name: str, args: list[str] | None) -> Value:
        """The value of a builtin or caller macro; callables are cached without args."""
        fn = self.macros.get(name)
        if not callable(fn):
            return fn
        if args:
            return _checked(fn(name, *args))
        if name not in self.cache:
            self.cache[name] = _checked(fn(name))
        return self.cache[name]

    # -- the built-in flow-control macros and calls -----------------------------------
    def evaluate(self, kind: Tok, args: list[list[Any]]) -> list[Any]:
        if kind is LB_SEL:
            return self.selector(args)
        if kind is LB_RE:
            return self.regexp_selector(args)
        if kind is LB:
            return self.iterator(args)
        if kind is LB_DEF:
            name = tokens_text(args[0]).strip(_WS)
            self.cache.pop(name, None)
            self.macros[name] = UserMacro(args[1] if len(args) > 1 else [])
            return []
        if kind is LB_ACT or kind is LB_CALL:
            name = tokens_text(args[0]).strip(_WS)
            return self.call(name, args, count_only=False)
        # a simple call %x or %#x
        count_only = kind.text.startswith("%#") and len(kind.text) == 3
        return self.call(kind.text[-1], [], count_only=count_only)

    def selector(self, args: list[list[Any]]) -> list[Any]:
        text = tokens_text(args[0])
        alternatives = args[1:]
        number = _SELECTOR_NUMBER.fullmatch(text)
        sel = 0 if _blank(text) else int(number.group(1)) if number else 1
        if len(alternatives) >= 2 and sel > len(alternatives) - 1:
            sel = len(alternatives) - 1
        return list(alternatives[sel]) if sel < len(alternatives) else []

    def regexp_selector(self, args: list[list[Any]]) -> list[Any]:
        subject = tokens_text(args[0])
        rest = args[1:]
        groups: list[str | None] = []
        while len(rest) >= 2:
            groups = []
            pattern = tokens_text(rest[0])
            rest = rest[1:]
            if pattern == "":
                break                         # an empty regexp matches (never "last regexp")
            found = perl_regex_search(pattern, subject)
            if found is not None:
                groups = list(found.groups()[:9])
                break
            rest = rest[1:]                   # skip the 'then' of a failed match
        if not rest:
            return []
        replacements = [subject, *groups]
        out: list[Any] = []
        for tok in rest[0]:
            index = _FORMAL_INDEX.get(tok) if type(tok) is Tok else None
            if index is None:
                out.append(tok)
            elif index < len(replacements) and replacements[index] is not None:
                out.append(replacements[index])
        return out

    def iterator(self, args: list[list[Any]]) -> list[Any]:
        if len(args) >= 3:
            var_r, body_r, sep_r = args[0], args[1], args[2]
        else:
            body_r = args[0]
            sep_r = args[1] if len(args) > 1 else None
            var_r = body_r
        var = None
        for tok in var_r:
            if type(tok) is Tok and len(tok.text) == 2 and tok.text[0] == "%":
                var = tok.text[1]
                break
        name = var
        if len(args) >= 3 and name is None:
            name = tokens_text(var_r).strip(_WS) or None
            if name is not None:
                var = "x"
        if name is None or name not in self.macros:
            return []
        entry = self.macros[name]
        if isinstance(entry, UserMacro):
            values: Value = tokens_text(entry.substitute([name]))
        else:
            values = self.value(name, None)
        target = "%" + str(var)
        out: list[Any] = []
        for n, item in enumerate(values if isinstance(values, list) else [values]):
            if n and sep_r is not None:
                out.extend(sep_r)
            item_text = "" if item is None else item
            out.extend(item_text if type(t) is Tok and t.text == target else t for t in body_r)
            if len(out) > self.limits.max_tokens:
                raise TemplateLimitError("iterator result exceeds the token limit")
        return out

    def call(self, name: str, args: list[list[Any]], count_only: bool) -> list[Any]:
        entry = self.macros.get(name)
        if isinstance(entry, UserMacro):
            actual: list[Any] = [name, *args[1:]]
            body = entry.substitute(actual)
            if count_only:
                return ["0" if _blank(tokens_text(body)) else "1"]
            return body
        value = self.value(name, [tokens_text(a) for a in args[1:]])
        if count_only:
            if isinstance(value, list):
                return [str(len(value))]
            return ["0" if value is None or _blank(value) else "1"]
        if isinstance(value, list):
            return [", ".join("" if v is None else v for v in value)]
        return ["" if value is None else value]

    # -- the machine ------------------------------------------------------------------
    def run(self, tokens: tuple[Token, ...]) -> str:
        limits = self.limits
        todo: deque[Any] = deque(tokens)
        stack: list[_Frame] = []
        quote = 0
        open_quote: list[Tok] = []
        top: _Frame | None = None          # the frame collecting arguments, or None

        def put(tok: Any) -> None:
            if top is not None:
                self.hold(top, [tok])
            else:
                self.emit(tok if type(tok) is str else tok.text)

        while todo:
            self.steps += 1
            if self.steps > limits.max_tokens:
                raise TemplateLimitError(f"template expansion exceeds {limits.max_tokens} "
                                         "tokens")
            t = todo.popleft()
            if type(t) is str:
                put(t)
                continue
            text = t.text
            if quote > 0 and text[0] == "[" and len(text) <= 2:
                quote += 2 if t is LB_QQ else 1      # deeper into quoting
                open_quote.append(t)
                put(t)
            elif t is LB_QQ:
                quote += 2                            # enter ["..."], drop the quote
                open_quote.append(t)
            elif text[0] == "[" and len(text) <= 2 and t is not RB:
                if len(stack) >= limits.max_depth:
                    raise TemplateLimitError(f"template calls nest deeper than "
                                             f"{limits.max_depth}")
                top = _Frame(t)                       # open a call
                stack.append(top)
                if t is LB:                           # an iterator quotes all arguments
                    quote += 1
                    open_quote.append(t)
                    top.implied = True
            elif quote <= 1 and top is not None and t is SEP:
                top.args.append([])                   # next argument
                if top.kind is LB_SEL and len(top.args) == 2:
                    quote += 1                        # a selector quotes its alternatives
                    open_quote.append(top.kind)
                    top.implied = True
            elif quote > 1 and (t is RB or t is RB_QQ):
                quote -= 2 if open_quote and open_quote[-1] is LB_QQ else 1
                if open_quote:
                    open_quote.pop()
                if t is RB or quote > 0:
                    put(t)
            elif top is not None and (t is RB or t is RB_QQ):
                frame = top                           # close the call and evaluate it
                if t is RB_QQ:
                    put('"')                          # the reference treats "] as two chars
                if frame.implied and quote > 0:
                    quote -= 2 if open_quote and open_quote[-1] is LB_QQ else 1
                    if open_quote:
                        open_quote.pop()
                result = self.evaluate(frame.kind, frame.args)
                stack.pop()
                self.held -= frame.held
                top = stack[-1] if stack else None
                if frame.kind is LB_CALL:             # neutral: the result is not re-read
                    if top is not None:
                        self.hold(top, result)
                    else:
                        self.emit(tokens_text(result))
                else:                                 # active: push back onto the input
                    if len(todo) + len(result) > limits.max_tokens:
                        raise TemplateLimitError("template input exceeds the token limit")
                    todo.extendleft(reversed(result))
            elif quote > 0:
                put(t)                                # quoted: %x and # are protected
            elif t is HASH:
                while todo:                           # discard through a source newline
                    if todo.popleft() == "\n":
                        break
            elif text[0] == "%" and 2 <= len(text) <= 3 and (len(text) == 2 or text[1] == "#"):
                result = self.evaluate(t, [])         # simple neutral call %x / %#x
                for piece in result:
                    put(piece)
            elif text[0] == "_" and len(text) > 2 and text[-1] == "_":
                name, _, arg = text[1:-1].partition("(")
                call_args: list[list[Any]] = [[name]]
                if arg:
                    call_args.append([arg[:-1]])
                for piece in self.call(name, call_args, count_only=False):
                    put(piece)
            else:
                put(t)                                # a misplaced element prints as itself
        return "".join(self.out)


def _checked(value: Any) -> Value:
    """A callable's result as a template value (str, list of str, or None)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return ["" if v is None else str(v) for v in value]
    return str(value)


def expand(template: str, macros: Mapping[str, Any],
           limits: Limits = DEFAULT_LIMITS) -> str:
    """Expand ``template`` with ``macros`` (never modified: ``[=`` defines go to a copy)."""
    return _Expansion(dict(macros), limits).run(tokenize(template))


MacroFunction = Callable[..., Value]
