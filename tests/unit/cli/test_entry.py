"""How ``mesh-client`` is started (``python -m mesh_client``, the console script), its commands,
and where the command line lives: in ``mesh_client.cli``, which the library never imports."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import mesh_client
from mesh_client import cli

from .helpers import run_cli

PACKAGE = Path(mesh_client.__file__).parent


def test_module_entry_point_runs(fixed_registry: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mesh_client", "render", "haproxy", str(fixed_registry)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "frontend users" in done.stdout


def test_every_command_has_help() -> None:
    for command in ("render", "route", "demo", "doctor", "call"):
        done = subprocess.run(
            [sys.executable, "-m", "mesh_client", command, "--help"], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        assert command in done.stdout


def test_the_commands_are_listed_in_their_order() -> None:
    done = run_cli("--help")
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ") and line[4] != " "]
    assert listed == ["render", "route", "demo", "doctor", "call", "shadow"]
    assert len(cli.COMMANDS) == len(listed)


def test_the_console_script_is_the_cli_main() -> None:
    (script,) = [ep for ep in importlib.metadata.entry_points(group="console_scripts") if ep.name == "mesh-client"]
    assert script.value == "mesh_client.cli:main"
    assert script.load() is cli.main


def imports_of(path: Path) -> set[str]:
    """The absolute module names ``path`` imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def test_the_library_never_imports_the_command_line() -> None:
    library = [p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts[:1]]
    assert PACKAGE / "mesh.py" in library
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(
            m for m in imports_of(p) if m == "mesh_client.cli" or m.startswith("mesh_client.cli.")
        )
        for p in library
        if p.name != "__main__.py"  # `python -m mesh_client` runs the command line: its one entry
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}
    # the check sees imports of the command line where they are (it can fail)
    assert "mesh_client.cli" in imports_of(PACKAGE / "__main__.py")
