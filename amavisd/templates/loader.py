# tests: t/templates/test_debian_templates.py
"""Where template texts come from: settings, an l10n directory, or our defaults.

* ``$notify_*_templ`` settings hold the text itself (amavis's variables), e.g. set
  by ``read_text(file)`` or by ``read_l10n_templates('en_US', '/etc/amavis')`` in a
  Perl or Python config file.
* ``read_l10n_templates`` reads Debian's layout: a directory with a ``charset``
  file and ``template-dsn.txt``, ``template-virus-admin.txt``, ... (the six names
  below, as amavis: release, report and auto-response keep their default).
* When a setting is undef, our own default text in ``conf/templates/`` is used
  (our wording, the same macros and header fields as amavis's).

Texts are decoded with the directory's charset; an octet that is not valid in it
becomes ``\\xHH`` text, as Perl's ``:encoding`` layer shows it, instead of
stopping the daemon over one bad byte in a notice template.
"""

from __future__ import annotations

import codecs
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from amavisd.errors import ConfigError

#: The files ``read_l10n_templates`` reads, by the setting each one fills.
L10N_FILES: dict[str, str] = {
    "notify_sender_templ": "template-dsn.txt",
    "notify_virus_sender_templ": "template-virus-sender.txt",
    "notify_virus_admin_templ": "template-virus-admin.txt",
    "notify_virus_recips_templ": "template-virus-recipient.txt",
    "notify_spam_sender_templ": "template-spam-sender.txt",
    "notify_spam_admin_templ": "template-spam-admin.txt",
}
#: Our default for every template setting: the file in ``conf/templates/``.
DEFAULT_FILES: dict[str, str] = {
    **L10N_FILES,
    "notify_release_templ": "template-release-quarantine.txt",
    "notify_report_templ": "template-problem-feedback.txt",
    "notify_autoresp_templ": "template-auto-response.txt",
}
#: Which setting each kind of notice uses, by major content category; "0" (CC_CATCHALL)
#: is the fallback (amavis's %notify_*_templ_by_ccat defaults, pipeline.md 18, 19).
TEMPLATES_BY_CCAT: dict[str, dict[str, str]] = {
    "admin": {"6": "notify_spam_admin_templ", "0": "notify_virus_admin_templ"},
    "recips": {"6": "notify_spam_recips_templ", "0": "notify_virus_recips_templ"},
    "sender": {"9": "notify_virus_sender_templ", "8": "notify_virus_sender_templ",
               "6": "notify_spam_sender_templ", "0": "notify_sender_templ"},
    "release": {"0": "notify_release_templ"},
    "report": {"0": "notify_report_templ"},
    "autoresp": {"0": "notify_autoresp_templ"},
}

_CHARSET = re.compile(r"(?:#[^\n]*\n)*([^./\n\s]+)(\s*[#\n].*)?", re.DOTALL)


def _perlqq(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    bad = error.object[error.start:error.end]
    return "".join(f"\\x{b:02X}" for b in bad), error.end


codecs.register_error("amavis-perlqq", _perlqq)


def read_text(path: str | Path, encoding: str | None = None) -> str:
    """A file's text, decoded with ``encoding`` (default UTF-8, as amavis's own texts).

    Raises ConfigError when the file cannot be read or the encoding is unknown.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"Can't open file {path} for reading: "
                                         f"{exc.strerror}") from None
    name = encoding or "utf-8"
    try:
        codecs.lookup(name)
    except LookupError:
        raise ConfigError(str(path), "", f"Can't set :encoding({name}) on file {path}") \
            from None
    return data.decode(name, errors="amavis-perlqq")


def read_charset(directory: str | Path) -> str:
    """The charset named by ``<directory>/charset`` (first line that is no comment)."""
    path = Path(directory) / "charset"
    text = read_text(path)
    m = _CHARSET.fullmatch(text)
    if m is None:
        raise ConfigError(str(path), "", f"Invalid charset {text!r}")
    return m.group(1)


def l10n_directory(directory: str, base: str | None = None) -> Path:
    """``read_l10n_templates(dir)`` or Debian's ``read_l10n_templates(lang, base)``."""
    return Path(base) / directory if base is not None else Path(directory)


def read_l10n_templates(directory: str, base: str | None = None) -> dict[str, str]:
    """The six notification templates of an l10n directory, by setting name."""
    folder = l10n_directory(directory, base)
    charset = read_charset(folder)
    return {name: read_text(folder / filename, charset) for name, filename in L10N_FILES.items()}


def default_templates_dir() -> Path:
    """Our default templates: installed beside the package, or conf/templates of a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "defaults"
    if (installed / "charset").is_file():
        return installed
    return package.parent.parent / "conf" / "templates"


@lru_cache(maxsize=32)
def default_template(setting_name: str) -> str:
    """Our own text for a template setting (``conf/templates/<file>``)."""
    filename = DEFAULT_FILES.get(setting_name)
    if filename is None:
        raise KeyError(f"no default template for {setting_name}")
    folder = default_templates_dir()
    return read_text(folder / filename, read_charset(folder))


def template_text(settings: Any, setting_name: str) -> str:
    """The template a notice uses: the setting's text, or our default when it is undef."""
    value = getattr(settings, setting_name, None)
    if value is None:
        return default_template(setting_name) if setting_name in DEFAULT_FILES else ""
    return str(value)


def template_setting_for(kind: str, categories: list[str]) -> str | None:
    """The setting a notice of ``kind`` uses for the given categories (most important
    first), as amavis's ``setting_by_contents_category`` walks ``%notify_*_by_ccat``."""
    table = TEMPLATES_BY_CCAT[kind]
    for ccat in [*categories, "0"]:
        setting = table.get(ccat)
        if setting is not None:
            return setting
    return None


def config_helpers(namespace: dict[str, Any]) -> dict[str, Any]:
    """``read_text`` and ``read_l10n_templates`` for a native (Python) config file.

    As in amavisd.conf, ``read_l10n_templates('en_US', '/etc/amavis')`` sets the six
    template settings (in the file's namespace, where the loader collects them).
    """
    def read_l10n(directory: str, base: str | None = None) -> int:
        namespace.update(read_l10n_templates(directory, base))
        return 1

    return {"read_text": read_text, "read_l10n_templates": read_l10n}
