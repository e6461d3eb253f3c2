"""The layers of DESIGN.md, enforced by reading the source: api -> projections -> ledger, never upward."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "ledger": {"projections", "api", "scripts", "tests"},
    "projections": {"api", "scripts", "tests"},
    "api": {"scripts", "tests"},
}
SQL_WORDS = ("SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM", "CREATE TABLE")
STORAGE_MODULES = {
    "ledger/sqlite_store.py", "projections/sqlite_tables.py", "projections/sqlite_reader.py",
    "ledger/pg_store.py", "projections/pg_tables.py", "projections/pg_reader.py", "projections/reader.py",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_imports_point_down_the_layers() -> None:
    problems = []
    for package, forbidden in FORBIDDEN.items():
        for path in python_files(package):
            for module in imported_modules(path):
                if module.split(".")[0] in forbidden:
                    problems.append(f"{path.relative_to(ROOT)} imports {module}")
    assert problems == []


def test_only_ledger_crypto_imports_cryptography() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in FORBIDDEN
        for path in python_files(package)
        if any(m.split(".")[0] == "cryptography" for m in imported_modules(path))
    ]
    assert offenders == ["ledger/crypto.py"]


def test_sql_lives_only_in_storage_modules() -> None:
    offenders = []
    for package in FORBIDDEN:
        for path in python_files(package):
            rel = str(path.relative_to(ROOT))
            if rel in STORAGE_MODULES:
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    text = node.value.upper()
                    if any(word in text for word in SQL_WORDS) and ("?" in text or " FROM " in text or "(" in text):
                        offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_the_checker_would_catch_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from api.app import create_app\nimport projections.sqlite_reader\n")
    assert imported_modules(bad) == {"api.app", "projections.sqlite_reader"}
