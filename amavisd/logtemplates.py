# tests: t/test_logtemplates.py
"""The default texts of ``$log_short_templ``, ``$log_verbose_templ`` and ``$log_recip_templ``.

amavis carries its log templates built in and lets a config file use them on the
right-hand side (``$log_templ = $log_verbose_templ;``).  Ours live in
``conf/templates/log-*.txt`` (installed as ``amavisd/templates/defaults/``), in our
own wording with the same output (docs/logging.md).  The registry takes its
defaults from here, so a native config can write ``log_templ = log_verbose_templ``
too.
"""

from __future__ import annotations

from functools import cache

from amavisd.templates.loader import default_templates_dir, read_text

#: The default of each log template setting: the file in conf/templates/.
LOG_TEMPLATE_FILES = {
    "log_short_templ": "log-short.txt",
    "log_verbose_templ": "log-verbose.txt",
    "log_recip_templ": "log-recip.txt",
}


class BuiltinText(str):
    """A default template text that shows where it comes from instead of its 3 kB.

    It is the text itself (a ``str``), so templates, comparisons and string
    concatenation in a config file see the text; ``repr`` (the generated
    docs/config.md, ``amavisd showconfig``) names the file.
    """

    source: str

    def __new__(cls, text: str, source: str) -> BuiltinText:
        obj = super().__new__(cls, text)
        obj.source = source
        return obj

    def __repr__(self) -> str:
        return f"<text of conf/templates/{self.source}>"

    def __reduce__(self):          # copy.deepcopy and pickle keep the class
        return (BuiltinText, (str(self), self.source))


@cache
def default_log_template(setting_name: str) -> BuiltinText:
    """Our text for ``log_short_templ``, ``log_verbose_templ`` or ``log_recip_templ``."""
    filename = LOG_TEMPLATE_FILES[setting_name]
    return BuiltinText(read_text(default_templates_dir() / filename), filename)


def perl_presets() -> dict[str, str]:
    """The log template texts a Perl amavisd.conf sees before its first line.

    amavis fills ``$log_short_templ``, ``$log_verbose_templ`` and ``$log_templ``
    before reading the config; the Perl config reader (config/perlconf.py) gives
    them ours, so ``$log_templ = $log_verbose_templ;`` means our verbose text.
    ``$log_recip_templ`` stays undef (docs/logging.md).
    """
    short = default_log_template("log_short_templ")
    return {"log_short_templ": str(short),
            "log_verbose_templ": str(default_log_template("log_verbose_templ")),
            "log_templ": str(short)}
