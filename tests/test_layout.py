"""The package's imports run one way: command line -> run path -> the rest.

Read from the source tree with an AST walk, so a forbidden import fails here
before anything runs.  Layers, from the top:

    cli          may import anything
    supervision  (the run path) anything but cli
    control      integrity, kernel, policy and the shared vocabulary
    integrity    kernel, policy and the shared vocabulary
    kernel       policy values and the shared vocabulary
    policy       only the shared vocabulary
    events/paths/hashing/logger  nothing of the package
    hooks        nothing of the package (it runs inside the agent)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"agentsup": ROOT / "supervisor", "agentsup.hooks": ROOT / "hooks"}

VOCABULARY = {"events", "paths", "hashing", "logger", "visible"}
ALLOWED: dict[str, set[str]] = {
    "cli": {"cli", "supervision", "control", "integrity", "kernel", "policy", "hooks", "demo"},
    "supervision": {"supervision", "control", "integrity", "kernel", "policy", "hooks"},
    "control": {"control", "integrity", "kernel", "policy"},
    "integrity": {"integrity", "kernel", "policy"},
    "kernel": {"kernel", "policy"},
    "policy": {"policy"},
    "events": set(),
    "paths": set(),
    "hashing": set(),
    "logger": set(),
    "visible": set(),
    "hooks": {"hooks"},
    "demo": set(),
}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.append((".".join([package, *parts]), path))
    return found


def _exists(module: str) -> bool:
    """Whether `module` is a module or package of ours (not a name inside one)."""
    parts = module.split(".")
    if parts[:2] == ["agentsup", "hooks"]:
        folder, parts = PACKAGE_DIRS["agentsup.hooks"], parts[2:]
    else:
        folder, parts = PACKAGE_DIRS["agentsup"], parts[1:]
    path = folder.joinpath(*parts)
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(module: str, path: Path) -> list[tuple[int, str, int]]:
    """(line, absolute module name, level) of every import, nested ones included."""
    tree = ast.parse(path.read_text(), str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target, node.level))
            if not node.module:  # `from .. import hooks` may name modules
                named = (f"{target}.{alias.name}" for alias in node.names)
                found += [(node.lineno, name, node.level) for name in named if _exists(name)]
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = _modules()


def test_every_module_is_in_a_known_layer() -> None:
    layers = {_layer(name) for name, _ in MODULES} - {"", "__main__"}
    assert layers <= set(ALLOWED), layers - set(ALLOWED)


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[name for name, _ in MODULES])
def test_imports_run_one_way(module: str, path: Path) -> None:
    layer = _layer(module)
    wrong = []
    for line, target, level in _imports(module, path):
        if target.split(".")[0] != "agentsup":
            continue
        where = f"{path.relative_to(ROOT)}:{line}: {target}"
        if level == 0 and module != "agentsup.__main__":
            wrong.append(f"{where} (use a relative import inside the package)")
            continue
        target_layer = _layer(target)
        if layer in ("events", "paths", "hashing", "logger", "visible", "hooks", "demo"):
            allowed = {layer}
        else:
            allowed = ALLOWED.get(layer, set(ALLOWED)) | VOCABULARY | {"", layer}
        if target_layer not in allowed:
            wrong.append(f"{where} ({layer or 'the root'} must not import {target_layer})")
    assert not wrong, "\n".join(wrong)


def test_the_walk_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The check above is only worth something if it can fail."""
    bad = tmp_path / "engine.py"
    bad.write_text("from ..supervision.judge import Judge\n")
    imports = _imports("agentsup.policy.engine", bad)
    assert imports == [(1, "agentsup.supervision.judge", 2)]
    assert _layer(imports[0][1]) not in ALLOWED["policy"]
