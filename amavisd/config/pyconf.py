"""Loader of the native config format: a Python file of plain assignments.

The file runs in a namespace that provides the amavis constants (D_PASS, CC_VIRUS,
...) and the values assigned so far, so ``TEMPBASE = MYHOME + '/tmp'`` works as it
does in amavisd.conf.  Every top-level name the file binds must be a known
setting: a misspelled ``final_virus_destiny`` stops the daemon with the file and
line, instead of being ignored (STYLE.md section 2).
"""

from __future__ import annotations

import ast
import copy
import os
from pathlib import Path
from typing import Any

from amavisd.config.model import Config
from amavisd.config.registry import canonical
from amavisd.constants import CONFIG_CONSTANTS
from amavisd.dkim_keys import python_declarator
from amavisd.errors import ConfigError
from amavisd.templates.loader import config_helpers


def _assigned_lines(tree: ast.Module) -> dict[str, int]:
    """Line of the last top-level binding of each name (assignments, imports, defs)."""
    lines: dict[str, int] = {}

    def bind(target: ast.AST, lineno: int) -> None:
        if isinstance(target, ast.Name):
            lines[target.id] = lineno
        elif isinstance(target, (ast.Tuple, ast.List)):
            for item in target.elts:
                bind(item, lineno)
        elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
            lines[target.value.id] = lineno

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                bind(target, node.lineno)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            bind(node.target, node.lineno)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            lines.setdefault(node.name, node.lineno)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                lines.setdefault((alias.asname or alias.name).split(".")[0], node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "dkim_key"):        # dkim_key() fills this setting
            lines["dkim_signing_keys_list"] = node.lineno
    return lines


def load_python_config(path: str | os.PathLike, config: Config) -> None:
    """Execute one native config file and assign what it set into ``config``."""
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read config file: {exc.strerror}") from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise ConfigError(f"{path}:{exc.lineno}", "", f"syntax error: {exc.msg}") from None
    lines = _assigned_lines(tree)
    namespace: dict[str, Any] = {"__builtins__": __builtins__, "__file__": str(path)}
    namespace.update(CONFIG_CONSTANTS)
    snapshot = {name: copy.deepcopy(value) for name, value in config.values.items()}
    namespace.update(copy.deepcopy(snapshot))
    namespace["dkim_key"] = python_declarator(namespace["dkim_signing_keys_list"], str(path))
    namespace.update(config_helpers(namespace))       # read_text, read_l10n_templates
    try:
        exec(compile(tree, str(path), "exec"), namespace)
    except Exception as exc:  # noqa: BLE001 - any error in the file is a config error
        lineno = _traceback_line(exc, str(path))
        raise ConfigError(f"{path}:{lineno}", "", f"{type(exc).__name__}: {exc}") from None
    for name, value in namespace.items():
        if name.startswith("_") or name in CONFIG_CONSTANTS:
            continue
        if callable(value) or isinstance(value, type(os)):
            continue
        if name in snapshot and name not in lines and value == snapshot[name]:
            continue
        origin = f"{path}:{lines.get(name, '?')}"
        if canonical(name) is None:
            raise ConfigError(origin, name, "unknown setting")
        config.assign(name, value, origin)
    config.files.append(str(path))


def _traceback_line(exc: BaseException, filename: str) -> int | str:
    tb = exc.__traceback__
    line: int | str = "?"
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
