"""`domain/` and `sagas/` are pure (DESIGN rule 2): they import no I/O library.

Checked statically with `ast`, directly and through every `lendstream` module they import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "lendstream"
PURE_PACKAGES = ("domain", "sagas")
FORBIDDEN = frozenset(
    {"faust", "asyncpg", "aiohttp", "aiokafka", "prometheus_client", "mode", "rocksdict"}
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, package: str) -> set[str]:
    """Every module `source` imports, anywhere in it (relative imports resolved in `package`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def source_of(module: str) -> Path | None:
    if not module.startswith("lendstream."):
        return None
    relative = Path(*module.split(".")[1:])
    for candidate in (ROOT / relative.with_suffix(".py"), ROOT / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def walk(start: Path) -> tuple[set[str], list[str]]:
    """The `lendstream` modules reachable from `start`, and import chains to forbidden ones."""
    chains = []
    seen: dict[Path, str] = {}
    todo: list[tuple[Path, tuple[str, ...]]] = [(start, (module_name(start),))]
    while todo:
        path, chain = todo.pop()
        if path in seen:
            continue
        seen[path] = module_name(path)
        for imported in sorted(imports_of(path.read_text(), package_of(path))):
            if imported.split(".")[0] in FORBIDDEN:
                chains.append(" -> ".join([*chain, imported]))
            elif (source := source_of(imported)) is not None:
                todo.append((source, (*chain, imported)))
    return set(seen.values()), chains


PURE_MODULES = sorted(path for package in PURE_PACKAGES for path in (ROOT / package).rglob("*.py"))


def test_the_pure_packages_exist() -> None:
    assert (ROOT / "domain" / "loans.py").is_file()
    assert (ROOT / "domain" / "sequencing.py").is_file()
    assert (ROOT / "sagas" / "__init__.py").is_file()


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_imports_no_io_library(path: Path) -> None:
    _, chains = walk(path)
    assert chains == []


def test_the_walk_follows_lendstream_imports() -> None:
    reached, _ = walk(ROOT / "domain" / "sequencing.py")
    assert {"lendstream.domain.errors", "lendstream.topics.codec"} <= reached
    assert "lendstream.topics.envelope" in reached  # through codec, transitively


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("import faust\n", "faust"),
        ("import faust.types, json\n", "faust.types"),
        ("from asyncpg import Pool\n", "asyncpg"),
        ("import prometheus_client as p\n", "prometheus_client"),
        ("from mode.utils.objects import cached_property\n", "mode.utils.objects"),
        ("def f():\n    import rocksdict\n", "rocksdict"),
        ("try:\n    import aiokafka\nexcept ImportError:\n    pass\n", "aiokafka"),
        ("if TYPE_CHECKING:\n    from aiohttp import web\n", "aiohttp"),
    ],
)
def test_the_check_sees_every_form_of_import(source: str, name: str) -> None:
    found = imports_of(source, "lendstream.domain")
    assert name in found
    assert {n.split(".")[0] for n in found} & FORBIDDEN


def test_relative_imports_are_resolved() -> None:
    found = imports_of("from . import errors\nfrom ..topics import codec\n", "lendstream.domain")
    assert {"lendstream.domain.errors", "lendstream.topics.codec"} <= found
