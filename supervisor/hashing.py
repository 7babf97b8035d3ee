"""SHA-256 and a constant-time comparison, without loading OpenSSL.

`hashlib` and `hmac` load libcrypto when imported (~3 ms), and every
`agentsup run` would pay that before its agent starts, to hash a few small
files (the policy cache's keys and entries, a sealed policy directory) and
to key and check the audit log's HMAC chain.  CPython's own SHA-256 serves
those: the same digests.  Another Python falls back to hashlib and hmac.
Shared vocabulary like `events`: imports nothing of the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol


class Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Hash: ...


def _sha256() -> Callable[..., Hash]:
    for name in ("_sha256", "_sha2"):  # CPython 3.11's built-in module; 3.12's
        try:
            constructor: Callable[..., Hash] = importlib.import_module(name).sha256
        except (ImportError, AttributeError):
            continue
        return constructor
    import hashlib

    return hashlib.sha256


sha256 = _sha256()

try:
    # What hmac.compare_digest is when there is no OpenSSL.
    from _operator import _compare_digest as compare_digest
except ImportError:  # another Python
    from hmac import compare_digest  # type: ignore[no-redef]

__all__ = ["Hash", "compare_digest", "sha256"]
