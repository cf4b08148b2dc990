# tests: t/templates/test_engine.py
"""amavis's template language: notices, DSN text, release text and log templates.

Use::

    ctx = TemplateContext.from_message(msg, header_block, virus_names=[...], ...)
    ctx.notify_from, ctx.notify_to = hdrfrom, ["<postmaster@example.com>"]
    text = render(template_text(view, "notify_virus_admin_templ"), ctx)
    notice = split_notice(text)          # header fields + body, for the MIME builder

    for line in render_log_lines(view.log_templ, ctx): ...

docs/templates.md describes the syntax and every macro; spec/pipeline.md 19.
"""

from __future__ import annotations

from amavisd.templates.builtins import (
    BUILTINS,
    CCAT_DISPLAY_NAMES,
    log_macros,
    message_macros,
    recipient_log_macros,
)
from amavisd.templates.context import (
    DkimSignature,
    RecipientFacts,
    ScannerResult,
    TemplateContext,
    read_header_fields,
    split_header_fields,
)
from amavisd.templates.engine import (
    DEFAULT_LIMITS,
    Limits,
    TemplateError,
    TemplateLimitError,
    UserMacro,
    expand,
)
from amavisd.templates.loader import (
    DEFAULT_FILES,
    L10N_FILES,
    default_template,
    read_l10n_templates,
    read_text,
    template_setting_for,
    template_text,
)
from amavisd.templates.notice import Notice, split_notice
from amavisd.templates.trace import TraceHop, build_trace


def render(template: str, ctx: TemplateContext, limits: Limits = DEFAULT_LIMITS) -> str:
    """Expand a notice, DSN, release or report template for ``ctx``."""
    return expand(template, message_macros(ctx), limits)


def _lines(text: str) -> list[str]:
    """amavis splits a log template's result at newlines (trailing blanks dropped)."""
    import re

    return [line for line in re.split(r"[ \t]*\n", text) if line != ""]


def render_log_lines(template: str, ctx: TemplateContext,
                     limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """The non-empty lines ``$log_templ`` gives for ``ctx`` (each one a log entry)."""
    return _lines(expand(template, log_macros(ctx), limits))


def render_recipient_log_lines(template: str, ctx: TemplateContext, index: int,
                               limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """The lines ``$log_recip_templ`` gives for the ``index``-th recipient."""
    return _lines(expand(template, recipient_log_macros(ctx, index), limits))


__all__ = [
    "BUILTINS", "CCAT_DISPLAY_NAMES", "DEFAULT_FILES", "DEFAULT_LIMITS", "L10N_FILES",
    "DkimSignature", "Limits", "Notice", "RecipientFacts", "ScannerResult", "TemplateContext",
    "TemplateError", "TemplateLimitError", "TraceHop", "UserMacro", "build_trace",
    "default_template", "expand", "log_macros", "message_macros", "read_header_fields",
    "read_l10n_templates", "read_text", "recipient_log_macros", "render", "render_log_lines",
    "render_recipient_log_lines", "split_header_fields", "split_notice",
    "template_setting_for", "template_text",
]
