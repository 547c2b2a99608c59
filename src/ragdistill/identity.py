"""What makes a stage's output what it is: its settings, its inputs' contents and its own code.

A stage's identity is a hash of three things (DESIGN.md, "Contracts"):

- the settings the stage reads, and only those (no names, worker counts, data paths or unused fields);
- the content digests of its input artifacts (never their per-run counts or timestamps);
- a fingerprint of the code that produces the output: the stage's module and every ``ragdistill``
  module it imports, directly or not, read as syntax trees without docstrings, so comments, docstrings
  and formatting do not count but every statement and prompt string does.

Editing one stage's code changes that stage's fingerprint (and, through its output, everything
downstream) and nothing upstream. Modules that only move artifacts around or describe settings
(:data:`NOT_OUTPUT_CODE`) are left out: the settings are hashed by value, and the bookkeeping does not
change what a stage computes.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGE = "ragdistill"
NOT_OUTPUT_CODE: frozenset[str] = frozenset(
    {
        "ragdistill",
        "ragdistill.config",
        "ragdistill.config.run_context",
        "ragdistill.config.stage_models",
        "ragdistill.config.stages",
        "ragdistill.errors",
        "ragdistill.layout",
        "ragdistill.identity",
        "ragdistill.store",
        "ragdistill.store_manifest",
        "ragdistill.store_paths",
        "ragdistill.store_records",
        "ragdistill.leases",
        "ragdistill.processes",
        "ragdistill.version",
        "ragdistill.stages",
        "ragdistill.stages.experiment",
        "ragdistill.stages.identities",
        "ragdistill.stages.lifecycle",
        "ragdistill.inference.shared",
    }
)
"""Bookkeeping, not computation: settings are hashed by value, artifacts are checked by content."""


def digest(payload: Any) -> str:
    """sha256 of a JSON-able value, independent of key order."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


PACKAGE_DIR = Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    """The source file of a ragdistill module (found on disk, never imported); None for a non-module
    such as ``ragdistill.config.StrictModel``."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    parts = name.split(".")[1:]
    if not parts:
        return PACKAGE_DIR / "__init__.py"
    relative = Path(*parts)
    for candidate in (PACKAGE_DIR / relative.with_suffix(".py"), PACKAGE_DIR / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            first = body[0].value if body and isinstance(body[0], ast.Expr) else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _imported_modules(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every ``ragdistill`` module a module imports, at top level or inside functions."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


@cache
def _module_summary(name: str) -> tuple[str, frozenset[str]] | None:
    """(digest of the module's syntax tree without docstrings, the ragdistill modules it imports)."""
    path = _module_file(name)
    if path is None:
        return None
    tree = _without_docstrings(ast.parse(path.read_text(), filename=str(path)))
    imports = _imported_modules(tree, name, path.name == "__init__.py")
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest(), frozenset(imports)


def module_closure(roots: Iterable[str]) -> list[str]:
    """The modules that ``roots`` run, following ragdistill imports, minus :data:`NOT_OUTPUT_CODE`."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        summary = _module_summary(name)
        if summary is not None:
            pending.extend(summary[1] - seen)
    return sorted(name for name in seen if name not in NOT_OUTPUT_CODE and _module_summary(name))


@cache
def code_fingerprint(*roots: str) -> str:
    """A digest of the code ``roots`` run (see the module docstring). Cached per process."""
    return digest({name: _module_summary(name)[0] for name in module_closure(roots)})  # type: ignore[index]


def library_versions(*distributions: str) -> dict[str, str]:
    """Installed versions of third-party libraries whose upgrade can change a stage's output."""
    versions: dict[str, str] = {}
    for name in distributions:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions
