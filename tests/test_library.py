"""The shape of the library: every module imports on its own, no import cycles, a public API on purpose."""
import ast
import importlib
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minilora"
MODULES = sorted("minilora." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
                 for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def _tree(module: str) -> ast.Module:
    path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
    return ast.parse(path.read_text())


def _internal_imports(module: str) -> set[str]:
    """The minilora modules that ``module`` imports anywhere: at its top level or inside a function."""
    out, package = set(), module.rsplit(".", 1)[0]
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import models` imports a module, `from .x import y` a name of x
                out.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in MODULES}


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh interpreter state for minilora (torch stays loaded)."""
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {MODULES!r}:\n"
        "    for m in [m for m in sys.modules if m == 'minilora' or m.startswith('minilora.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_no_import_cycles_and_config_is_a_leaf():
    graph = {m: _internal_imports(m) for m in MODULES}
    leaves = {m for m, deps in graph.items() if not deps}
    assert {"minilora.errors", "minilora.utils"} <= leaves
    assert graph["minilora.config"] <= leaves, \
        f"config may import only leaf modules (which import nothing from minilora): {graph['minilora.config'] - leaves}"
    assert "minilora.config" in graph["minilora.layers"]
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for dep in sorted(graph[m]):
            visit(dep, path + [m])
        state[m] = 2

    for m in MODULES:
        visit(m, [])


def test_no_deferred_imports_without_a_reason():
    """Imports sit at the top of each module; one inside a function must say why, in a comment."""
    for module in MODULES:
        lines = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py").read_text().splitlines()
        for node in ast.walk(_tree(module)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        assert "#" in lines[inner.lineno - 1], f"{module}:{inner.lineno} imports inside a function"


@pytest.mark.parametrize("module", MODULES + ["minilora"])
def test_all_lists_exactly_the_public_api(module):
    mod = importlib.import_module(module)
    assert isinstance(getattr(mod, "__all__", None), list), f"{module} has no __all__"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"{module}.__all__ names what it does not define: {missing}"
    assert len(set(mod.__all__)) == len(mod.__all__)
    private = [n for n in mod.__all__ if n.startswith("_")]
    assert not private, f"{module}.__all__ lists private names: {private}"


def test_the_library_never_loads_the_course_or_its_heavy_dependencies():
    """``import minilora`` loads torch, transformers and safetensors, and none of the course's tools."""
    script = ("import sys, minilora\n"
              "heavy = ('sklearn', 'scipy', 'matplotlib', 'pandas', 'minilora.course')\n"
              "print(sorted(m for m in heavy if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout


def test_the_package_exports_the_lifecycle_and_qlora():
    import minilora

    for name in ("LoRAConfig", "inject_lora", "merge_and_unload", "add_weighted_adapter", "save_adapter",
                 "load_adapter", "get_peft_model_state_dict", "set_peft_model_state_dict", "enable_adapter_layers",
                 "disable_adapter_layers", "train_step", "UnknownAdapterError", "AdapterFileError",
                 "quantize_model_nf4", "LinearNF4", "mark_only_lora_as_trainable", "disable_adapter",
                 "get_nb_trainable_parameters", "print_trainable_parameters", "create_loraplus_optimizer",
                 "seed_everything", "fit"):
        assert name in minilora.__all__
    assert minilora.UnknownAdapterError is importlib.import_module("minilora.errors").UnknownAdapterError
    assert minilora.AdapterFileError is importlib.import_module("minilora.io").AdapterFileError


def test_the_package_exports_no_helpers_and_documents_every_name():
    import minilora

    helpers = [n for n in minilora.__all__ if n.startswith(("_", "check_"))]
    assert not helpers, f"minilora.__all__ lists helpers, which users do not call: {helpers}"
    undocumented = [n for n in minilora.__all__ if len((getattr(minilora, n).__doc__ or "").split()) < 3]
    assert not undocumented, f"every exported name needs a docstring: {undocumented}"


def test_the_version_is_the_packaged_one():
    import minilora

    packaged = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert packaged and minilora.__version__ == packaged.group(1) == "0.3.0"


def test_the_package_docstring_names_every_library_module_and_the_course():
    """``help(minilora)`` is the library's map: every module of the library, and ``minilora.course`` apart."""
    import minilora

    doc = minilora.__doc__
    missing = [m for m in MODULES if not m.startswith("minilora.course") and f"``{m.split('.')[1]}``" not in doc]
    assert not missing, f"name these modules, with their chapter, in minilora/__init__.py's docstring: {missing}"
    assert "``minilora.course``" in doc


def _is_submodule(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent is a module, not a package
        return False


def test_every_minilora_import_in_the_repository_resolves():
    """Notebooks, tools, tests and benchmarks import only names that exist, function-local imports included
    (a torchrun worker's import runs in another process, where a unit test would not see it fail)."""
    import json

    sources = [(str(p.relative_to(ROOT)), p.read_text()) for folder in ("tools", "tests", "benchmarks", "minilora")
               for p in (ROOT / folder).rglob("*.py")]
    for nb in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "code":
                code = "\n".join(line for line in "".join(cell["source"]).splitlines()
                                 if not line.lstrip().startswith(("%", "!")))
                sources.append((f"{nb.relative_to(ROOT)} cell {i}", code))
    missing = []
    for where, code in sources:
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("minilora"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name) and not _is_submodule(f"{node.module}.{alias.name}"):
                        missing.append(f"{where}: from {node.module} import {alias.name}")
    assert not missing, "\n".join(missing)
