"""Parse, compare and bump semantic versions (https://semver.org, 2.0.0).

A small, dependency-free library; agentsup's real-jobs test runs its suite.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["Version", "max_satisfying", "parse"]

_PATTERN = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


@functools.total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    def _key(self) -> tuple[object, ...]:
        # A release sorts after its pre-releases; numeric identifiers sort
        # numerically and before alphanumeric ones.  Build metadata is ignored.
        if not self.prerelease:
            pre: tuple[object, ...] = ((1,),)
        else:
            pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
            pre = ((0,), *pre)
        return (self.major, self.minor, self.patch, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def bump(self, part: str) -> Version:
        if part == "major":
            return Version(self.major + 1, 0, 0)
        if part == "minor":
            return Version(self.major, self.minor + 1, 0)
        if part == "patch":
            if self.prerelease:
                return Version(self.major, self.minor, self.patch)
            return Version(self.major, self.minor, self.patch + 1)
        raise ValueError(f"unknown part {part!r}")


def parse(text: str) -> Version:
    match = _PATTERN.match(text.strip().removeprefix("v"))
    if match is None:
        raise ValueError(f"not a semantic version: {text!r}")
    major, minor, patch, pre, build = match.groups()
    return Version(
        int(major),
        int(minor),
        int(patch),
        tuple(pre.split(".")) if pre else (),
        tuple(build.split(".")) if build else (),
    )


def _satisfies(version: Version, spec: str) -> bool:
    for clause in spec.split():
        op = re.match(r"^(>=|<=|>|<|==|\^|~)?", clause)
        assert op is not None
        operator = op.group(1) or "=="
        bound = parse(clause[len(op.group(1) or "") :])
        if operator == "^":
            upper = bound.bump("major") if bound.major else bound.bump("minor")
            ok = bound <= version < upper
        elif operator == "~":
            ok = bound <= version < bound.bump("minor")
        else:
            ok = {
                ">=": version >= bound,
                "<=": version <= bound,
                ">": version > bound,
                "<": version < bound,
                "==": version == bound,
            }[operator]
        if not ok:
            return False
    return True


def max_satisfying(versions: list[str], spec: str) -> str | None:
    """The highest of `versions` that meets every clause of `spec` (e.g. `^1.2.0 <1.9.0`)."""
    matching = [v for v in map(parse, versions) if not v.prerelease and _satisfies(v, spec)]
    return str(max(matching)) if matching else None
