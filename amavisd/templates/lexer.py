# tests: t/templates/test_engine.py
"""Lexical analysis of a template, done once per template text (README.customize, EXPAND).

The macro language is defined on a token stream, not on a tree: ``#`` discards
tokens up to the next source newline *after* an active call has pushed its result
back, so a comment in a chosen selector alternative can swallow the newline that
follows the selector (Debian's ``[? %#C |#|Cc: ...]`` idiom).  We therefore lex
into an immutable tuple of tokens and cache it per template text; the expansion
machine (``engine``) walks that tuple.

A token is either a plain ``str`` (literal text, never interpreted again) or a
``Tok`` (a lexical element: a bracket, a separator, a ``%x`` call, ...).  Lexical
elements compare by identity, as the references of the Perl implementation do.
Macro values are always plain strings, so text coming from a message (a Subject
such as ``[? %x |a|b]``) can never become a lexical element.
"""

from __future__ import annotations

import re
from functools import lru_cache


class Tok:
    """One lexical element; ``text`` is what it stands for when printed literally."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Tok({self.text!r})"


#: The fixed lexical elements, one object each (compared with ``is``).
LB = Tok("[")        # iterator
LB_SEL = Tok("[?")   # selector
LB_RE = Tok("[~")    # regexp selector
LB_ACT = Tok("[@")   # active call
LB_CALL = Tok("[:")  # neutral call
LB_DEF = Tok("[=")   # define a macro
LB_QQ = Tok('["')    # open quote
RB_QQ = Tok('"]')    # close quote
RB = Tok("]")
SEP = Tok("|")
HASH = Tok("#")      # discard to the end of the source line
PCT_HASH = Tok("%#")
FORMAL = tuple(Tok(f"%{d}") for d in range(10))   # %0 .. %9: formal arguments
#: ``\n`` in a template: prints a newline but is not a source newline for ``#``.
ESC_NL = Tok("\n")

_FIXED = {t.text: t for t in (LB, LB_SEL, LB_RE, LB_ACT, LB_CALL, LB_DEF, LB_QQ, RB_QQ,
                              RB, SEP, HASH, PCT_HASH, *FORMAL)}
_ESCAPES = {"r": "\r", "f": "\f", "b": "\b", "e": "\x1b", "a": "\x07", "t": "\t"}

# Alternatives in the order of the reference lexer: the first that matches wins.
_TOKEN = re.compile(r"""
      \#
    | \[ [?~@:="]?
    | "\]
    | \]
    | \|
    | % \#? .
    | \\ [^0-7]
    | \\ [0-7]{1,3}
    | _ [A-Z]+ (?: \( [^)]* \) )? _
    | [^\[\]\\|%\n#"_]+
    | [^\n]+?
    | \n
""", re.VERBOSE | re.DOTALL)
_SIMPLE_CALL = re.compile(r"%#?.", re.DOTALL)
_SA_CALL = re.compile(r"_[A-Z]+(?:\([^)]*\))?_", re.DOTALL)

Token = str | Tok


def _token(lexeme: str) -> Token | None:
    """The token for one lexeme; None for those dropped (``\\<newline>``, ``\\_``)."""
    fixed = _FIXED.get(lexeme)
    if fixed is not None:
        return fixed
    if lexeme in ("\\\n", "\\_"):
        return None
    if lexeme == "%%":
        return "%"
    first = lexeme[0]
    if first == "%" and _SIMPLE_CALL.fullmatch(lexeme):
        return Tok(lexeme)                    # a simple call %x or %#x
    if first == "\\" and len(lexeme) > 1:
        rest = lexeme[1:]
        if rest.isdigit() and len(rest) <= 3 and set(rest) <= set("01234567"):
            return chr(int(rest, 8))
        if rest == "n":
            return ESC_NL
        return _ESCAPES.get(rest, rest)
    if first == "_" and _SA_CALL.fullmatch(lexeme):
        return Tok(lexeme)                    # SpamAssassin-style _NAME(arg)_
    return lexeme


@lru_cache(maxsize=256)
def tokenize(text: str) -> tuple[Token, ...]:
    """The token tuple of ``text``; cached, so each template text is lexed once."""
    out: list[Token] = []
    for match in _TOKEN.finditer(text):
        token = _token(match.group(0))
        if token is not None:
            out.append(token)
    return tuple(out)


def tokens_text(tokens) -> str:
    """The plain text of a token list (lexical elements print as themselves)."""
    return "".join(t if type(t) is str else t.text for t in tokens)
