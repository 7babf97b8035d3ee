"""`agentsup totp init [--force]`: create the TOTP secret that `resume` needs."""

from __future__ import annotations

import argparse
import sys

from ..integrity.totp import TotpSecretExists, init_secret
from ..paths import default_locations

EXIT_OK = 0
EXIT_REFUSED = 1


def cmd_init(args: argparse.Namespace) -> int:
    locations = default_locations()
    try:
        uri = init_secret(locations, force=args.force)
    except TotpSecretExists:
        sys.stderr.write(
            f"agentsup: a TOTP secret already exists at {locations.totp_secret}; "
            "use 'agentsup totp init --force' to replace it "
            "(codes from the old secret stop working)\n"
        )
        return EXIT_REFUSED
    except OSError as exc:
        sys.stderr.write(f"agentsup: cannot write {locations.totp_secret}: {exc.strerror}\n")
        return EXIT_REFUSED
    print(uri)
    print(
        "Scan this URI (or type its secret=) into an authenticator app; "
        "its 6-digit codes approve 'agentsup resume'."
    )
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    totp = subparsers.add_parser("totp", help="manage the TOTP secret for approvals")
    actions = totp.add_subparsers(dest="totp_command", metavar="ACTION")
    actions.required = True
    init = actions.add_parser("init", help="create the secret and print its otpauth:// URI")
    init.add_argument(
        "--force", action="store_true", help="replace an existing secret (old codes stop working)"
    )
    init.set_defaults(func=cmd_init)
