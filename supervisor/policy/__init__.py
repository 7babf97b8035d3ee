"""The policy language: loading, compiling and the pure evaluator.

Pure: no syscalls beyond reading policy files, and no imports from the rest
of the package but the shared vocabulary (`events`).  `floor` compiles a
policy's reach into the Landlock plan that `kernel.landlock` installs.

    policy = resolve_policy("strict", default_locations().policy_dir)
    compiled = compile_policy(policy, RunContext(workspace, home, agent_id))
    decision = compiled.evaluate(Event(ActionType.FILE_READ, "/etc/hosts"))

Every pattern and glob is matched by RE2, in time linear in the target
(`linear.py`); a target longer than MAX_TARGET_LENGTH is a deny
(TARGET_TOO_LONG_RULE) that no rule is run on.

Extensions beyond DESIGN.md 1.3: a rule may have `except: [glob, ...]`
(targets matching one of them are not matched by the rule), and the
placeholder `{python}` stands for the install prefixes of the Python running
agentsup.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import (
        MAX_TARGET_LENGTH,
        TARGET_TOO_LONG_RULE,
        Attempt,
        CompiledPolicy,
        CompiledRule,
        Explanation,
        RateLimiter,
        RunContext,
        compile_policy,
    )
    from .loader import (
        load_policy_file,
        load_policy_text,
        load_source,
        resolve_policy,
    )
    from .matchers import GlobMatcher, Matcher, RegexMatcher, normalise_path
    from .model import Approval, EnvPolicy, Limits, Policy, PolicyError, Rule, SourceLocation
    from .sources import (
        PolicySource,
        builtin_names,
        builtin_source,
        find_policy,
        is_path_reference,
    )

__all__ = [
    "MAX_TARGET_LENGTH",
    "TARGET_TOO_LONG_RULE",
    "Approval",
    "Attempt",
    "CompiledPolicy",
    "CompiledRule",
    "EnvPolicy",
    "Explanation",
    "GlobMatcher",
    "Limits",
    "Matcher",
    "Policy",
    "PolicyError",
    "PolicySource",
    "RateLimiter",
    "RegexMatcher",
    "Rule",
    "RunContext",
    "SourceLocation",
    "builtin_names",
    "builtin_source",
    "compile_policy",
    "find_policy",
    "is_path_reference",
    "load_policy_file",
    "load_policy_text",
    "load_source",
    "normalise_path",
    "resolve_policy",
]

# Where each name lives.  Imported on first use, so that a module of this
# package (`agentsup run` reads a cached policy) does not pull in the rest:
# the YAML loader, above all.
_HOME = {
    **dict.fromkeys(
        (
            "MAX_TARGET_LENGTH",
            "TARGET_TOO_LONG_RULE",
            "Attempt",
            "CompiledPolicy",
            "CompiledRule",
            "Explanation",
            "RateLimiter",
            "RunContext",
            "compile_policy",
        ),
        "engine",
    ),
    **dict.fromkeys(
        ("load_policy_file", "load_policy_text", "load_source", "resolve_policy"), "loader"
    ),
    **dict.fromkeys(("GlobMatcher", "Matcher", "RegexMatcher", "normalise_path"), "matchers"),
    **dict.fromkeys(
        ("Approval", "EnvPolicy", "Limits", "Policy", "PolicyError", "Rule", "SourceLocation"),
        "model",
    ),
    **dict.fromkeys(
        ("PolicySource", "builtin_names", "builtin_source", "find_policy", "is_path_reference"),
        "sources",
    ),
}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value
