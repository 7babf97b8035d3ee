"""The two things pyproject.toml cannot express: the .pth, and an optional extension.

The broker's native hot path (supervisor/kernel/_fastpath.c) is built
wherever a C compiler and Python's headers exist; `optional=True` means a
machine without them still installs, and agentsup runs its Python path
(`agentsup doctor` says which).

Install hooks/agentsup-hook.pth at the top of site-packages.

The .pth starts the audit hook in every Python process that inherits
AGENTSUP_HOOK_SOCKET, so Python children of an agent are hooked too.  A .pth
must sit in site-packages itself, outside any package, which pyproject.toml
cannot express; these two command classes add it to regular wheels
(`pip install .`) and to editable wheels (`pip install -e .`).  All other
metadata stays in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "agentsup-hook.pth"
PTH_SOURCE = Path(__file__).resolve().parent / "hooks" / PTH_NAME


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            shutil.copyfile(PTH_SOURCE, Path(self.build_lib, PTH_NAME))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not self.editable_mode:
            outputs.append(str(Path(self.build_lib, PTH_NAME)))
        return outputs


class _StrategyWithPth:
    """Wraps setuptools' editable strategy and adds the .pth to the wheel."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, wheel: Any, files: list[str], mapping: dict[str, str]) -> None:
        self._inner(wheel, files, mapping)
        wheel.writestr(PTH_NAME, PTH_SOURCE.read_bytes())

    def __enter__(self) -> _StrategyWithPth:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        return self._inner.__exit__(*exc_info)


class EditableWheelWithPth(editable_wheel):
    def _select_strategy(self, *args: Any, **kwargs: Any) -> Any:
        return _StrategyWithPth(super()._select_strategy(*args, **kwargs))


FASTPATH = Extension(
    "agentsup.kernel._fastpath",
    ["supervisor/kernel/_fastpath.c"],
    extra_compile_args=["-O2", "-Wall"],
    optional=True,
)

setup(
    cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth},
    ext_modules=[FASTPATH],
)
