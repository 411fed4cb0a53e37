"""scripts/mutate.py stays runnable: every mutant still applies to the code as it is now (a
refactor that moves the text a mutant changes must update the mutant, not silently drop it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mesh_mutate", ROOT / "scripts" / "mutate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mesh_mutate", module)
    spec.loader.exec_module(module)
    return module


MUTATE = load_script()


def test_at_least_fifteen_distinct_mutants_over_the_deciding_modules() -> None:
    names = [m.name for m in MUTATE.MUTANTS]
    assert len(names) >= 15
    assert len(set(names)) == len(names)
    touched = {m.path for m in MUTATE.MUTANTS}
    assert {"mesh_client/core.py", "mesh_client/envoy.py", "mesh_client/haproxy.py", "mesh_client/policy.py"} <= touched


@pytest.mark.parametrize("mutant", MUTATE.MUTANTS, ids=lambda m: m.name)
def test_each_mutant_changes_exactly_one_place(mutant: Any) -> None:
    text = (ROOT / mutant.path).read_text()
    assert text.count(mutant.find) == 1, f"{mutant.path} no longer holds the text this mutant changes"
    assert mutant.find != mutant.replace
