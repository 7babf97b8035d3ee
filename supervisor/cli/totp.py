"""`agentsup totp init [--force] [--json]`: create the TOTP secret that `resume` needs."""

from __future__ import annotations

import argparse
import sys

from ..integrity.totp import CODE_DIGITS, TotpSecretExists, init_secret, normalize_code
from ..paths import default_locations
from .output import CommandError, add_json_flag, emit

EXIT_OK = 0
EXIT_REFUSED = 1


FROM_STDIN = "-"
_STDIN_LINE_LIMIT = 256  # a code is 6 digits; more than this is not one


def code_argument(text: str) -> str:
    """argparse type of --code: a malformed code is a usage error and uses no attempt.

    `--code -` reads the code from one line of standard input, so that it is
    not in the command line `ps` shows while the command runs.  An empty or
    malformed line is refused the same way, without echoing what was read.
    """
    if text == FROM_STDIN:
        return _code_from_stdin()
    code = normalize_code(text)
    if code is None:
        raise argparse.ArgumentTypeError(
            f"a TOTP code is {CODE_DIGITS} digits, not {text!r} (no attempt was used)"
        )
    return code


def _code_from_stdin() -> str:
    stream = getattr(sys.stdin, "buffer", None)
    try:
        line = stream.readline(_STDIN_LINE_LIMIT) if stream is not None else b""
    except (OSError, ValueError):  # closed, or not readable
        line = b""
    text = line.decode("utf-8", "replace").strip()
    if not text:
        raise argparse.ArgumentTypeError("no TOTP code on standard input (no attempt was used)")
    code = normalize_code(text)
    if code is None:
        raise argparse.ArgumentTypeError(
            f"the line on standard input is not a TOTP code of {CODE_DIGITS} digits "
            "(no attempt was used)"
        )
    return code


def cmd_init(args: argparse.Namespace) -> int:
    locations = default_locations()
    try:
        uri = init_secret(locations, force=args.force)
    except TotpSecretExists:
        raise CommandError(
            f"a TOTP secret already exists at {locations.totp_secret}; "
            "use 'agentsup totp init --force' to replace it "
            "(codes from the old secret stop working)"
        ) from None
    except OSError as exc:
        raise CommandError(f"cannot write {locations.totp_secret}: {exc.strerror}") from None
    emit(
        args,
        {"uri": uri, "secret_file": str(locations.totp_secret)},
        f"{uri}\nScan this URI (or type its secret=) into an authenticator app; "
        "its 6-digit codes approve 'agentsup resume'.",
    )
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    totp = subparsers.add_parser(
        "totp",
        help="manage the TOTP secret for approvals",
        description=(
            "Create the TOTP secret whose codes approve agentsup resume and policy "
            "seal/unseal. Each code is accepted once; five wrong codes in a minute lock "
            "approvals out for five minutes."
        ),
    )
    actions = totp.add_subparsers(dest="totp_command", metavar="ACTION")
    actions.required = True
    init = actions.add_parser(
        "init",
        help="create the secret and print its otpauth:// URI",
        description=(
            "Create the TOTP secret in the state directory (mode 0600) and print its "
            "otpauth:// URI for an authenticator app. Refuses to replace an existing "
            "secret without --force."
        ),
    )
    init.add_argument(
        "--force", action="store_true", help="replace an existing secret (old codes stop working)"
    )
    add_json_flag(init)
    init.set_defaults(func=cmd_init)
