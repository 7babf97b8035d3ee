"""`agentsup policy seal --code TOTP | unseal --code TOTP | verify`, each with `--json`.

Exit codes: `seal` and `unseal` 0 on success, 1 when refused (wrong or reused
code, a policy that does not load, symlinks, not sealed, an OS error).
`verify` 0 when the directory is sealed and intact, and also when it is
unsealed or was never sealed (both say so: the directory is then not
protected); 1 when it is tampered with.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..integrity.seal import SealError, check_sealed, seal, unseal
from ..integrity.totp import TotpRefused
from ..paths import default_locations
from ..policy import PolicyError
from .output import add_json_flag, emit, json_text, plural, report_error, wants_json
from .totp import code_argument

EXIT_OK = 0
EXIT_FAIL = 1


def register_seal_commands(
    policy_subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `seal`, `unseal` and `verify` to the `agentsup policy` subparsers."""
    sealing = policy_subparsers.add_parser(
        "seal",
        help="make the policy directory read-only and record its manifest",
        description=(
            "Validate every policy, make the directory root-owned 0555/0444 with chattr +i "
            "where supported, and write an HMAC'd manifest.  Needs a TOTP code."
        ),
    )
    sealing.add_argument(
        "--code", required=True, type=code_argument, metavar="TOTP", help="current TOTP code"
    )
    add_json_flag(sealing)
    sealing.set_defaults(func=cmd_seal)

    unsealing = policy_subparsers.add_parser(
        "unseal",
        help="make the sealed policy directory editable again",
        description="Clear chattr +i and make the files writable by root.  Needs a TOTP code.",
    )
    unsealing.add_argument(
        "--code", required=True, type=code_argument, metavar="TOTP", help="current TOTP code"
    )
    add_json_flag(unsealing)
    unsealing.set_defaults(func=cmd_unseal)

    verify = policy_subparsers.add_parser(
        "verify",
        help="check the policy directory against its manifest",
        description="Exit 0 when sealed and intact (or unsealed / never sealed), 1 if tampered.",
    )
    add_json_flag(verify)
    verify.set_defaults(func=cmd_verify)


def _refused(args: argparse.Namespace, what: str, reason: object) -> int:
    return report_error(wants_json(args), f"policy {what} refused: {reason}", EXIT_FAIL)


def cmd_seal(args: argparse.Namespace) -> int:
    locations = default_locations()
    try:
        manifest = seal(locations, args.code, os.getuid())
    except PolicyError as exc:
        return _refused(args, "seal", f"{exc} (fix the policy, then seal again)")
    except (TotpRefused, SealError) as exc:
        return _refused(args, "seal", exc)
    except OSError as exc:
        return _refused(args, "seal", f"{exc.filename or ''}: {exc.strerror}")
    flag = (
        "immutable flag set (chattr +i)"
        if manifest.immutable
        else "chattr +i could not be set (it needs root, CAP_LINUX_IMMUTABLE, and a file "
        "system that has it): modes and manifest only"
    )
    emit(
        args,
        {
            "state": "sealed",
            "directory": str(manifest.directory),
            "files": sorted(manifest.files),
            "immutable": bool(manifest.immutable),
            "generation": manifest.generation,
        },
        f"sealed {manifest.directory}: {plural(len(manifest.files), 'file')}, {flag}",
    )
    return EXIT_OK


def cmd_unseal(args: argparse.Namespace) -> int:
    locations = default_locations()
    try:
        manifest = unseal(locations, args.code, os.getuid())
    except (TotpRefused, SealError) as exc:
        return _refused(args, "unseal", exc)
    except OSError as exc:
        return _refused(args, "unseal", f"{exc.filename or ''}: {exc.strerror}")
    emit(
        args,
        {"state": "unsealed", "directory": str(manifest.directory)},
        f"unsealed {manifest.directory} for editing; "
        "run 'agentsup policy seal --code TOTP' when done",
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    status = check_sealed(default_locations())
    if args.json:
        manifest = status.manifest
        print(
            json_text(
                {
                    "state": status.state,
                    "directory": status.directory,
                    "reasons": status.reasons,
                    "files": sorted(status.files),
                    "sealed_at": manifest.sealed_at if manifest else None,
                    "sealed_by_uid": manifest.sealed_by_uid if manifest else None,
                    "generation": manifest.generation if manifest else None,
                    "immutable": bool(manifest.immutable) if manifest else False,
                }
            )
        )
    else:
        stream = sys.stderr if status.tampered else sys.stdout
        stream.write(status.describe() + "\n")
    return EXIT_FAIL if status.tampered else EXIT_OK
