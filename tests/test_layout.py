"""The layout keeps its promises: a side-effect-free import, modules that load only what they need,
small modules, and an engine that knows no task."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tilediff"


def loaded_after(statement):
    """(tilediff modules loaded, whether torch was loaded, os.environ changed) after ``statement`` in a
    fresh interpreter."""
    code = ("import os, sys, json; before = dict(os.environ); " + statement + "; "
            "print(json.dumps([sorted(m for m in sys.modules if m.startswith('tilediff')), 'torch' in sys.modules, "
            "dict(os.environ) != before]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_tilediff_loads_nothing_and_changes_no_process_state():
    modules, torch_loaded, environ_changed = loaded_after("import tilediff")
    assert modules == ["tilediff", "tilediff._lazy", "tilediff._version"]
    assert not torch_loaded and not environ_changed


def test_public_names_are_imported_on_first_use():
    modules, _, environ_changed = loaded_after("import tilediff; tilediff.Restorer; tilediff.restore_folder")
    assert "tilediff.restorer" in modules and "tilediff.batch" in modules
    assert not environ_changed    # the allocator is tuned when a restoration runs, not at import
    with pytest.raises(AttributeError):
        import tilediff
        tilediff.no_such_name


@pytest.mark.parametrize("module", ["tilediff.sde", "tilediff.weights", "tilediff.options", "tilediff.tiling"])
def test_pure_modules_do_not_load_the_engine_or_io(module):
    modules, _, _ = loaded_after(f"import {module}")
    for heavy in ("tilediff.engine.stages", "tilediff.restorer", "tilediff.batch", "tilediff.io"):
        assert heavy not in modules, (module, heavy)
    if module != "tilediff.weights":
        assert "tilediff.weights" not in modules


def test_no_library_module_over_700_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 700} == {}


def test_the_engine_imports_no_task_code():
    for path in (PACKAGE / "engine").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = "." * node.level + (node.module or "")
            elif isinstance(node, ast.Import):
                name = ",".join(alias.name for alias in node.names)
            else:
                continue
            assert "tasks" not in name and "dehaze" not in name, (path.name, name)


def test_sampler_names_agree():
    from tilediff import options, sde
    assert tuple(options.SAMPLERS) == tuple(sde.SAMPLERS)
