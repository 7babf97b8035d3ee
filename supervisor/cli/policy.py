"""`agentsup policy check | list | explain | suggest`: policies without running an agent.

Exit codes: `check` 0 when every file loads (warnings print but do not
fail it), 1 otherwise.  `explain` 0 when
the decision is allow, log or warn, 1 for deny (and for a bad policy), 2 for
require_approval (2 is also argparse's usage error; that is the contract).
`--json` prints one JSON document instead of text.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..events import DEFAULT_RULE_ID, ActionType, Decision, Event, Verdict, response_for
from ..integrity.audit import RecordReader, chain_files
from ..integrity.statefiles import open_output_directory, write_output
from ..kernel.landlock import landlock_abi
from ..kernel.namespaces import own_sockets_here
from ..paths import Locations, default_locations
from ..policy import (
    CompiledPolicy,
    CompiledRule,
    Explanation,
    PolicyError,
    RunContext,
    builtin_names,
    builtin_source,
    compile_policy,
    find_policy,
    floor,
    is_path_reference,
    load_policy_file,
    load_source,
    resolve_policy,
)
from ..policy.engine import invoking_home
from ..policy.suggest import last_run
from ..policy.suggest import suggest as suggest_policy
from ..visible import hides, visible, visible_lines
from .output import error_document, plural, report_error

EXIT_OK = 0
EXIT_DENY = 1
EXIT_APPROVAL = 2

_EXPLAIN_EXIT = {
    Verdict.ALLOW: EXIT_OK,
    Verdict.LOG: EXIT_OK,
    Verdict.WARN: EXIT_OK,
    Verdict.DENY: EXIT_DENY,
    Verdict.REQUIRE_APPROVAL: EXIT_APPROVAL,
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "policy",
        help="check, list, explain, seal, unseal and verify policies",
        description=(
            "Check policy files, list the available policies, explain a decision, and seal "
            "the policy directory (read-only, hashed, watched; tampering fails closed)."
        ),
    )
    # Sub-subcommands get the frame's parser class, so usage errors stay one line.
    commands = parser.add_subparsers(
        dest="policy_command", metavar="SUBCOMMAND", parser_class=type(parser)
    )
    commands.required = True
    from .seal import register_seal_commands

    register_seal_commands(commands)

    check = commands.add_parser(
        "check",
        help="validate policy files",
        description=(
            "Load each policy file or named policy (with its extends) and report the first error."
        ),
    )
    check.add_argument(
        "paths", nargs="+", metavar="PATH|NAME", help="a policy file, or a name as --policy takes"
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=_check)

    listing = commands.add_parser(
        "list",
        help="list built-in templates and policies in the policy directory",
        description="List the built-in templates and the policy directory's policies.",
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_list)

    explain = commands.add_parser(
        "explain",
        help="show which rule decides an action, and why",
        description=(
            "Evaluate one action against a policy and show the deciding rule and every "
            "rule tried before it, then the kernel floor (Landlock) planned from the policy, "
            "which can refuse what no rule could allow. Exit 0 for allow/log/warn, 1 for "
            "deny, 2 for require_approval."
        ),
    )
    explain.add_argument("--policy", required=True, help="policy name or path")
    explain.add_argument("--workspace", default=".", help="value of {workspace} (default: .)")
    explain.add_argument("--id", dest="agent_id", default="agent", help="agent id (default: agent)")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.add_argument(
        "action",
        metavar="ACTION_TYPE",
        choices=[a.value for a in ActionType],
        help="one of " + ", ".join(a.value for a in ActionType),
    )
    explain.add_argument("target", metavar="TARGET")
    explain.set_defaults(func=_explain)

    suggest = commands.add_parser(
        "suggest",
        help="learn the rules an agent's last run needed",
        description=(
            "Read the would-deny and deny records of the agent's most recent run (best a "
            "`run --shadow` one) and print the smallest policy that extends the policy it "
            "ran under and lets those actions pass. Cache and configuration directories "
            "become DIR/**, many files of one directory DIR/*. Secrets, destructive "
            "commands and agentsup's own files are never allowed. Exit 1 when the audit "
            "log has no run of that agent."
        ),
    )
    suggest.add_argument("--agent", required=True, metavar="ID", help="the agent id of the run")
    suggest.add_argument(
        "--policy-name", metavar="NAME", help="name of the new policy (default: <policy>-learned)"
    )
    suggest.add_argument("-o", "--output", metavar="FILE", help="write it here, not to stdout")
    suggest.add_argument(
        "--json", action="store_true", help='print {"ok": true, "policy": TEXT, "output": FILE}'
    )
    suggest.set_defaults(func=_suggest)


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, sort_keys=False))


def _error_json(error: PolicyError) -> dict[str, Any]:
    return {
        "path": error.path,
        "line": error.line,
        "column": error.column,
        "rule": error.rule_id,
        "message": error.message,
        "text": str(error),
    }


def run_context(workspace: str, agent_id: str, home: str | None = None) -> RunContext:
    """The placeholders as `agentsup run` fills them for the user running agentsup
    (or with the `home` a run recorded).

    Built by `RunContext.for_run`, as supervision/agent.py `prepare` builds
    the run's: with a symlinked home or workspace, `explain` and `suggest`
    decide as the run does.
    """
    return RunContext.for_run(
        workspace, home or invoking_home(), agent_id, sockets=own_sockets_here()
    )


# ---------------------------------------------------------------- suggest


def _suggest(args: argparse.Namespace) -> int:
    locations = default_locations()
    if not chain_files(locations.audit_log):
        return _suggest_failed(args, f"no audit log at {locations.audit_log}")
    try:
        run = last_run(RecordReader(locations.audit_log), args.agent)
    except OSError as exc:
        return _suggest_failed(args, f"cannot read the audit log {locations.audit_log}: {exc}")
    if not run:
        return _suggest_failed(args, f"no run of agent '{args.agent}' in the audit log")
    start = run[0]
    reference = start.get("policy_source") or start.get("policy")
    workspace = start.get("workspace")
    # The run's own home (sudo, a daemon agent's `user:`), else the caller's.
    recorded_home = start.get("home")
    home = recorded_home if isinstance(recorded_home, str) else None
    if not isinstance(reference, str) or not isinstance(workspace, str):
        return _suggest_failed(args, "the run's start record names no policy or workspace")
    strict = builtin_source("strict")
    assert strict is not None  # shipped with the package
    try:
        parent = resolve_policy(reference, locations.policy_dir)
        text = suggest_policy(
            run,
            parent,
            load_source(strict, locations.policy_dir),
            run_context(workspace, args.agent, home),
            extends=reference,
            name=args.policy_name or f"{parent.name}-learned",
        )
    except PolicyError as error:
        return _suggest_failed(args, str(error))
    if args.output:
        try:
            _write_file(args.output, text)
        except OSError as exc:
            return _suggest_failed(args, f"cannot write {args.output}: {exc.strerror or exc}")
    if args.json:
        _print_json({"ok": True, "policy": text, "output": args.output})
    elif not args.output:
        sys.stdout.write(_terminal_yaml(text))
    return EXIT_OK


def _terminal_yaml(text: str) -> str:
    """The suggested policy for stdout: YAML escapes the controls in a target but
    keeps a bidi override or NEL as they are, so such a line is shown `visible`
    (then it is for reading, not for pasting: --output writes the file as is)."""
    return "\n".join(visible(line) if hides(line) else line for line in text.split("\n"))


def _write_file(path: str, text: str) -> None:
    """`suggest -o`: often into the workspace, where the agent may have left a
    symlink at the name or on the way to it (`statefiles`).  Raises OSError."""
    directory = open_output_directory(path)
    try:
        write_output(directory, os.path.basename(path), text)
    finally:
        os.close(directory)


def _suggest_failed(args: argparse.Namespace, message: str) -> int:
    return report_error(args.json, f"policy suggest: {message}", EXIT_DENY)


# ---------------------------------------------------------------- check


def _check(args: argparse.Namespace) -> int:
    policy_dir = default_locations().policy_dir
    results: list[dict[str, Any]] = []
    for path in args.paths:
        try:
            if is_path_reference(path) or os.path.exists(path):
                policy = load_policy_file(path, policy_dir)
            else:  # a name, as `run --policy` takes it (new user 18)
                policy = resolve_policy(path, policy_dir)
        except PolicyError as error:
            results.append({"path": path, "ok": False, "error": _error_json(error)})
            if not args.json:
                print(visible_lines(str(error)))
            continue
        results.append(
            {
                "path": path,
                "ok": True,
                "name": policy.name,
                "rules": len(policy.rules),
                "warnings": list(policy.warnings),
            }
        )
        if not args.json:
            print(f"{path}: ok ({plural(len(policy.rules), 'rule')})")
            for warning in policy.warnings:  # after its file's line: legal, but likely a mistake
                print(visible_lines(warning))
    if args.json:
        _print_json(results)
    return EXIT_OK if all(result["ok"] for result in results) else EXIT_DENY


# ---------------------------------------------------------------- list


def _list(args: argparse.Namespace) -> int:
    policy_dir = default_locations().policy_dir
    local = sorted(policy_dir.glob("*.yaml")) if policy_dir.is_dir() else []
    local_names = {path.stem for path in local}
    entries: list[dict[str, Any]] = []
    for path in local:
        entry = _describe_entry(path.stem, "policy-dir", str(path), policy_dir)
        if path.stem in builtin_names():
            entry["shadows"] = f"built-in {path.stem}"
        entries.append(entry)
    for name in builtin_names():
        source = builtin_source(name)
        assert source is not None
        entry = _describe_entry(name, "built-in", source.path, policy_dir)
        if name in local_names:
            entry["shadowed_by"] = str(policy_dir / f"{name}.yaml")
        entries.append(entry)
    if args.json:
        _print_json({"policy_dir": str(policy_dir), "policies": entries})
        return EXIT_OK
    print(f"policy directory: {policy_dir}")
    width = max((len(entry["name"]) for entry in entries), default=4)
    for entry in entries:
        note = ""
        if "shadows" in entry:
            note = f"  [shadows the {entry['shadows']}]"
        elif "shadowed_by" in entry:
            note = f"  [shadowed by {entry['shadowed_by']}]"
        text = entry["description"] if entry["ok"] else f"INVALID: {entry['error']['text']}"
        print(visible(f"{entry['name']:<{width}}  {entry['origin']:<10}  {text}{note}"))
    return EXIT_OK


def _describe_entry(name: str, origin: str, path: str, policy_dir: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "origin": origin, "path": path}
    try:
        source = builtin_source(name) if origin == "built-in" else find_policy(path, policy_dir)
        assert source is not None
        policy = load_source(source, policy_dir)
    except PolicyError as error:
        entry.update(ok=False, error=_error_json(error), description="")
        return entry
    entry.update(ok=True, description=policy.description, rules=len(policy.rules))
    return entry


# ---------------------------------------------------------------- explain


def judged_network_target(action: ActionType, target: str) -> str | None:
    """A network target as the hook, the proxy and the seccomp layer spell it
    (one spelling: `127.1` is 127.0.0.1, `delete` is DELETE); None for other
    actions, or when it cannot be read (it is then judged as written)."""
    from ..hooks import _mapping as mapping

    try:
        if action is ActionType.NETWORK_REQUEST:
            method, _, url = target.partition(" ")
            return mapping.request_target(method, url)
        if action is ActionType.NETWORK_CONNECT and target.startswith("netlink:"):
            # A netlink socket is judged by its protocol, spelled by name
            # (`netlink:route`): `netlink:0` is that same protocol.
            number = target.removeprefix("netlink:")
            if number.isdigit():
                from ..supervision.mediator import socket_target

                return socket_target(socket.AF_NETLINK, socket.SOCK_RAW, int(number))
            return None
        if action is ActionType.NETWORK_CONNECT and not target.startswith("unix:"):
            host, sep, port = target.rpartition(":")
            if sep and port.isdigit():
                folded = mapping.host_text(host.removeprefix("[").removesuffix("]"))
                return f"[{folded}]:{port}" if ":" in folded else f"{folded}:{port}"
    except ValueError:
        pass
    return None


def _explain(args: argparse.Namespace) -> int:
    locations = default_locations()
    try:
        policy = resolve_policy(args.policy, locations.policy_dir)
        context = run_context(args.workspace, args.agent_id)
        compiled = compile_policy(policy, context)
        if compiled.floor_roots((ActionType.NETWORK_CONNECT,)) == ():
            # A run of it gets a network namespace of its own (nothing may
            # connect out), and with it abstract sockets of its own.
            facts = own_sockets_here(own_network=True)
            compiled = compile_policy(
                policy, replace(context, private_abstract=facts.private_abstract)
            )
    except PolicyError as error:
        if args.json:
            # The failure envelope every --json command uses, and where it is.
            _print_json({**error_document(str(error), EXIT_DENY), "at": _error_json(error)})
        else:
            print(visible_lines(str(error)), file=sys.stderr)
        return EXIT_DENY
    action = ActionType(args.action)
    explanation = compiled.explain(
        Event(action, args.target, agent_id=args.agent_id),
        judged_network_target(action, args.target),
    )
    floor_view = _FloorView.of(compiled, explanation, locations)
    if args.json:
        _print_json(_explanation_json(compiled.name, explanation, floor_view))
    else:
        _print_explanation(compiled.name, explanation, floor_view)
    return _EXPLAIN_EXIT[floor_view.decision.verdict]


class _FloorView:
    """The kernel floor's say on one explained action, as the supervisor would apply it."""

    def __init__(self, abi: int, checked: str, decision: Decision, decides: bool) -> None:
        self.abi = abi
        self.checked = checked  # the target as the floor sees it (symlinks resolved)
        self.decision = decision  # the final decision
        self.decides = decides

    @classmethod
    def of(
        cls, compiled: CompiledPolicy, explanation: Explanation, locations: Locations
    ) -> _FloorView:
        decision = explanation.decision
        action = explanation.event.action
        abi = landlock_abi()
        checked = explanation.target
        if abi < 1 or action not in floor.ACTION_RIGHTS or not checked.startswith("/"):
            return cls(abi, checked, decision, False)
        checked = os.path.realpath(checked)
        plan = floor.plan_policy_floor(
            compiled,
            no_write=[str(path) for path in locations.protected_paths()],
            no_read=[str(path) for path in locations.secret_paths()],
            abi=abi,
        )
        final = floor.floor_verdict(floor.FloorCheck(plan), action, checked, decision)
        return cls(abi, checked, final, final is not decision)

    def json(self) -> dict[str, Any]:
        return {
            "landlock_abi": self.abi,
            "target": self.checked,
            "decides": self.decides,
            "decision": _decision_json(self.decision) if self.decides else None,
        }

    def lines(self) -> list[str]:
        if self.abi < 1:
            return ["kernel floor: none (no Landlock on this kernel)"]
        if not self.decides:
            return [
                f"kernel floor: reaches the target (Landlock ABI {self.abi}); the policy decides"
            ]
        decision = self.decision
        return [
            f"kernel floor: DECIDES (Landlock ABI {self.abi}): {decision.verdict} "
            f"(response: {response_for(decision)}), rule {decision.rule_id}",
            f"  {decision.reason}: {self.checked}",
        ]


def _rule_json(rule: CompiledRule) -> dict[str, Any]:
    source = rule.rule.source
    return {
        "id": rule.id,
        "priority": rule.rule.priority,
        "source": str(source),
        "matcher": str(rule.matcher),
        "except": [str(excepted) for excepted in rule.excepts],
        "agents": list(rule.rule.agents) if rule.rule.agents is not None else None,
    }


def _decision_json(decision: Decision) -> dict[str, Any]:
    return {
        "verdict": decision.verdict.value,
        "rule": decision.rule_id,
        "severity": decision.severity.value,
        "message": decision.message,
        "on_violation": decision.on_violation.value,
        "response": response_for(decision).value,
        "reason": decision.reason,
        "rate_limit": (
            {"max": decision.rate_limit.max, "per_seconds": decision.rate_limit.per_seconds}
            if decision.rate_limit is not None
            else None
        ),
    }


def _explanation_json(
    policy_name: str, explanation: Explanation, floor_view: _FloorView
) -> dict[str, Any]:
    return {
        "policy": policy_name,
        "action": explanation.event.action.value,
        "target": explanation.event.target,
        "normalised_target": explanation.target,
        "decision": _decision_json(floor_view.decision),
        "policy_decision": _decision_json(explanation.decision),
        "floor": floor_view.json(),
        "rule": _rule_json(explanation.rule) if explanation.rule is not None else None,
        "real_root": _real_root_json(explanation),
        "tried": [
            {**_rule_json(attempt.rule), "why_not": attempt.reason} for attempt in explanation.tried
        ],
    }


def _real_root_json(explanation: Explanation) -> dict[str, str] | None:
    """The deciding rule's root whose real path the target matched by, if it did."""
    rule = explanation.rule
    real = None if rule is None else rule.matcher.real_spelling(explanation.target)
    if real is None:
        return None
    return {"root": real.root, "real": real.real, "matcher": real.shown}


def _say(text: str) -> None:
    """One line of `explain`: the target (and what echoes it) made `visible`."""
    print(visible(text))


def _print_explanation(policy_name: str, explanation: Explanation, floor_view: _FloorView) -> None:
    decision = explanation.decision
    event = explanation.event
    _say(f"policy:    {policy_name}")
    target = event.target
    if explanation.target != event.target:
        target += f"  (normalised: {explanation.target})"
    _say(f"action:    {event.action} {target}")
    final = floor_view.decision
    _say(f"decision:  {final.verdict} (response: {response_for(final)})")
    if floor_view.decides:
        _say(f"           the kernel floor decides; the policy alone says {decision.verdict}")
    rule = explanation.rule
    if rule is None and decision.rule_id != DEFAULT_RULE_ID:
        _say(f"rule:      {decision.rule_id} ({decision.reason})")  # decided before any rule
    elif rule is None:
        _say("rule:      <default> (no rule matched; the policy default decides)")
    else:
        _say(f"rule:      {rule.id} (priority {rule.rule.priority}, {rule.rule.source})")
        _say(f"matcher:   {rule.matcher}")
        real = rule.matcher.real_spelling(explanation.target)
        if real is not None:  # the target is where a symlinked root really leads
            _say(f"           matched by the real path of {real.root}: '{real.shown}'")
        for excepted in rule.excepts:
            _say(f"except:    {excepted}")
    _say(f"severity:  {decision.severity}")
    _say(f"on_violation: {decision.on_violation}")
    if decision.message:
        _say(f"message:   {decision.message}")
    if decision.rate_limit is not None:
        limit = decision.rate_limit
        _say(f"rate_limit: {limit.max} per {limit.per_seconds:g}s")
    for line in floor_view.lines():
        _say(line)
    if not explanation.tried:
        _say("tried before it: none")
        return
    _say("tried before it:")
    for attempt in explanation.tried:
        tried = attempt.rule
        _say(
            f"  {tried.id} (priority {tried.rule.priority}, {tried.rule.source}): {attempt.reason}"
        )
