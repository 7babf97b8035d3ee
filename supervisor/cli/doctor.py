"""`agentsup doctor [--json]`: which walls this host gives an agent, and what a missing one costs.

Exit 0 when a default `agentsup run` by this user (policy `strict`) has
every layer it needs; 1 when it would refuse to start, whether or not
`--allow-degraded` could make it run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pwd

from ..kernel import namespaces
from ..supervision.layers import Layer, probe, refusals
from .output import add_json_flag, emit

EXIT_OK = 0
EXIT_MISSING = 1


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _state(layer: Layer) -> str:
    if layer.available:
        return "ok"
    return "MISSING" if layer.needed else "missing (optional)"


def _verdict(refused: list[Layer]) -> str:
    if not refused:
        return "A default `agentsup run` has every layer it needs here."
    names = ", ".join(layer.name for layer in refused)
    line = f"A default `agentsup run` refuses to start here: {names} missing"
    if any(layer.degrade is None for layer in refused):
        return line + "; no option runs it without them."
    options = " ".join(f"--allow-degraded {layer.degrade}" for layer in refused)
    return line + f"; `{options}` runs it without them, at the costs above."


def table(layers: list[Layer]) -> str:
    width = max(len(layer.name) for layer in layers) + 2
    state_width = max(len("STATE"), *(len(_state(layer)) for layer in layers)) + 2
    lines = [
        f"agentsup doctor: Linux {os.uname().release}, {_user()}",
        "",
        f"{'LAYER':<{width}}{'STATE':<{state_width}}DETAIL",
    ]
    for layer in layers:
        lines.append(f"{layer.name:<{width}}{_state(layer):<{state_width}}{layer.detail}")
        if layer.cost:
            lines.append(f"{'':<{width + state_width}}cost: {layer.cost}")
    lines += ["", _verdict(refusals(layers))]
    return "\n".join(lines)


def with_private_run(layers: list[Layer]) -> list[Layer]:
    """The mount namespace's line, saying the private /run it gives too (or,
    missing, that the host's /run and its daemons' sockets are in the agent's view)."""
    run = " and ".join(namespaces.private_run_dirs())
    if not run:
        return layers
    found = []
    for layer in layers:
        if layer.name == "mount_namespace":
            if layer.available:
                gives = f"; the agent gets a private /tmp, /var/tmp and {run}"
                layer = dataclasses.replace(layer, detail=layer.detail + gives)
            elif layer.cost:
                costs = (
                    f"; its {run} is the host's too, whose daemons' sockets (Docker, D-Bus, "
                    "journald) only the policy refuses"
                )
                layer = dataclasses.replace(layer, cost=layer.cost + costs)
        found.append(layer)
    return found


def cmd_doctor(args: argparse.Namespace) -> int:
    layers = with_private_run(probe())
    refused = refusals(layers)
    document = {
        "ok": not refused,
        "kernel": os.uname().release,
        "uid": os.geteuid(),
        "refused_without": [layer.name for layer in refused],
        "layers": {layer.name: layer.as_dict() for layer in layers},
    }
    emit(args, document, table(layers))
    return EXIT_MISSING if refused else EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = subparsers.add_parser(
        "doctor",
        help="show which isolation layers this host gives an agent",
        description=(
            "Probe which layers stand between an agent and this host for this user: "
            "seccomp user notification (with ADDFD and CONTINUE), Landlock, each "
            "namespace, a writable cgroup, dropping capabilities, a pty. For each "
            "missing one, say what it costs. Exits 0 when a default run has what it "
            "needs, 1 when run would refuse to start."
        ),
    )
    add_json_flag(doctor)
    doctor.set_defaults(func=cmd_doctor)
