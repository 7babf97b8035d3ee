"""Put the agentsup audit hook in any Python 3 the agent runs (DESIGN.md 1.2).

The supervisor puts this directory first on the agent's PYTHONPATH, so every
Python started in the agent's tree (its own venvs, /usr/bin/python3, pyenv
builds) imports this module while `site` starts up.  When
AGENTSUP_HOOK_SOCKET is set it installs the hook, then chains to the
`sitecustomize` this one shadows (Debian's, a venv's, the user's), which
becomes `sys.modules["sitecustomize"]` as if it had been imported directly.

The hook is loaded by path from the directory above this one, under a
private package name, so it needs neither agentsup nor its dependencies in
the interpreter.  A Python that already has the hook (agentsup's own, via
the .pth file) is left alone.

Versions: Python 3.8 and later get the hook; a failure to install it there
ends the process with status 125 (fail closed, as the .pth does).  Older
Pythons have no audit hooks: they run unhooked after a warning on stderr,
with files, commands and connects still decided by the syscall layer.  A
Python started with -I, -E or -S never reads this file; the same holds.

Kept to syntax that Python 3.6 parses, so that the warning is printed.
"""

import os
import sys

_ENV_SOCKET = "AGENTSUP_HOOK_SOCKET"
_PRIVATE = "_agentsup_hook_private"
_MARKER = "_agentsup_hook_installed"  # set by hooks/_hook.py install(), in either copy
_EXIT_HOOK_FAILED = 125  # as hooks/_run.py and the .pth


def _install() -> None:
    socket_path = os.environ.get(_ENV_SOCKET)
    if not socket_path:
        return
    if _MARKER in sys.modules:
        return  # agentsup's own interpreter: the .pth got there first
    if not hasattr(sys, "addaudithook"):
        sys.stderr.write(
            "agentsup: Python {}.{} has no audit hooks; it runs without the agentsup hook "
            "(files, commands and connects are still mediated)\n".format(*sys.version_info[:2])
        )
        return
    try:
        import importlib.util

        hooks_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        spec = importlib.util.spec_from_file_location(
            _PRIVATE,
            os.path.join(hooks_dir, "__init__.py"),
            submodule_search_locations=[hooks_dir],
        )
        if spec is None or spec.loader is None:
            raise ImportError("cannot load the hook package from " + hooks_dir)
        package = importlib.util.module_from_spec(spec)
        sys.modules[_PRIVATE] = package
        spec.loader.exec_module(package)
        hook = importlib.import_module(_PRIVATE + "._hook")
        hook.install_from_env(during_site=True)
    except BaseException as exc:
        sys.stderr.write(f"agentsup: cannot install the audit hook: {exc!r}\n")
        sys.stderr.flush()
        os._exit(_EXIT_HOOK_FAILED)


def _chain() -> None:
    """Run the sitecustomize this module shadows, and let it take the name."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [
        entry
        for entry in sys.path
        if os.path.abspath(entry or os.curdir) != here and entry != "" and entry != os.curdir
    ]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)  # its errors are reported by `site`, as usual


_install()
_chain()
