#!/bin/sh
# Install agentsup from this checkout into its own virtual environment.
#
#   ./install.sh           agentsup and its dependencies
#   ./install.sh --test    the same, plus the test tools (pytest, ruff, mypy)
#
# A virtual environment keeps the system Python untouched, as Debian 12 and
# Ubuntu 24.04 require (PEP 668: their pip refuses to install into it). As
# root, it goes to /opt/agentsup, `agentsup` is linked into /usr/local/bin,
# the systemd unit is installed (not enabled) with ExecStart pointing at the
# environment, and bash/zsh completion is installed. As a normal user, it
# goes to ~/.local/lib/agentsup and ~/.local/bin, without the unit (not in
# ~/.local/share/agentsup: that is agentsup's state, which no agent may read).
#
# Environment: PYTHON (default python3, 3.10 or newer), PREFIX (the virtual
# environment), BINDIR (where the `agentsup` link goes).
set -eu

cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
extras=""
case "${1:-}" in
    "") ;;
    --test) extras="[test]" ;;
    *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac

# A PREFIX of the caller's is a private installation: nothing outside it and
# BINDIR is written (no unit, completion or /etc/agentsup), root or not.
system=no
if [ "$(id -u)" -eq 0 ] && [ -z "${PREFIX:-}" ]; then
    system=yes
fi

if [ "$(id -u)" -eq 0 ]; then
    PREFIX=${PREFIX:-/opt/agentsup}
    BINDIR=${BINDIR:-/usr/local/bin}
else
    PREFIX=${PREFIX:-$HOME/.local/lib/agentsup}
    BINDIR=${BINDIR:-$HOME/.local/bin}
fi

say() { echo "install.sh: $*"; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    say "no $PYTHON: install Python 3.10 or newer (apt-get install python3)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    say "$("$PYTHON" --version 2>&1) is too old: agentsup needs Python 3.10 or newer" >&2
    exit 1
fi

# Debian and Ubuntu ship venv's pip bootstrap (ensurepip) in a separate package.
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing python3-venv (the system Python lacks ensurepip)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    else
        say "$PYTHON cannot make a virtual environment: as root run" \
            "'apt-get install python3-venv', then run this again" >&2
        exit 1
    fi
fi

if [ ! -x "$PREFIX/bin/python" ]; then
    say "creating the virtual environment $PREFIX"
    "$PYTHON" -m venv "$PREFIX"
fi
say "installing agentsup$extras into $PREFIX"
"$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check ".$extras"

mkdir -p "$BINDIR"
ln -sf "$PREFIX/bin/agentsup" "$BINDIR/agentsup"
say "linked $BINDIR/agentsup -> $PREFIX/bin/agentsup"

if [ "$system" = no ] && [ "$(id -u)" -eq 0 ]; then
    say "PREFIX was given: no systemd unit, completion or /etc/agentsup installed" \
        "(leave PREFIX unset for those)"
fi
if [ "$system" = yes ]; then
    install -d -m 0755 /etc/agentsup /etc/agentsup/agents
    unit=/etc/systemd/system/agentsup.service
    if [ -d /etc/systemd/system ]; then
        sed "s#/opt/agentsup/bin/agentsup#$PREFIX/bin/agentsup#" systemd/agentsup.service \
            > "$unit.tmp"
        chmod 0644 "$unit.tmp"
        mv "$unit.tmp" "$unit"
        if [ -d /run/systemd/system ]; then
            systemctl daemon-reload
        fi
        say "installed $unit (start it with: systemctl enable --now agentsup)"
    fi
    if [ -d /usr/share/bash-completion/completions ]; then
        "$PREFIX/bin/agentsup" completion bash > /usr/share/bash-completion/completions/agentsup
    fi
    install -d /usr/local/share/zsh/site-functions
    "$PREFIX/bin/agentsup" completion zsh > /usr/local/share/zsh/site-functions/_agentsup
fi

case ":$PATH:" in
    *":$BINDIR:"*) ;;
    *) say "note: $BINDIR is not on your PATH; add it, or run $PREFIX/bin/agentsup" ;;
esac
# The broker's native path is an optional C extension: without a compiler and
# Python's headers at install time, the Python path answers every open.
"$PREFIX/bin/python" - <<'PY'
from agentsup.kernel import fastpath

native, why = fastpath.status()
print(f"install.sh: mediation path: {why}")
if fastpath.native is None:
    print("install.sh: for the native path, install a C compiler and Python's headers "
          "(Debian/Ubuntu: apt-get install gcc python3-dev) and run install.sh again")
PY
say "done: $("$PREFIX/bin/agentsup" --version)"
