"""Which unix sockets are the agent's own: the run's facts, and strict's rules on them.

Pure logic, no agent: `own_socket_facts` (fail-closed facts of a launch),
placeholders with no value (they match nothing), strict's own-sockets-*
rules against local-socket, and why none of them costs the agent its
network namespace.  tests/test_own_sockets_e2e.py runs real agents.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from agentsup.events import ActionType, Event, Verdict
from agentsup.kernel.namespaces import own_sockets_here
from agentsup.policy import floor, resolve_policy
from agentsup.policy.engine import (
    CompiledPolicy,
    OwnSockets,
    RunContext,
    compile_policy,
    own_socket_facts,
    unix_sockets_only,
)
from agentsup.policy.loader import load_policy_text
from agentsup.policy.matchers import compile_glob, compile_regex, parse_glob, parse_regex
from agentsup.supervision.mediator import abstract_address, describe_sockaddr

A = ActionType
NO_POLICY_DIR = Path("/nonexistent")
TMP = ("/tmp", "/var/tmp")


def context(*, private_tmp: tuple[str, ...] = (), private_abstract: bool = False) -> RunContext:
    return RunContext(
        workspace="/srv/project",
        home="/tmp/home",  # under /tmp: the private /tmp binds it back in
        agent_id="agent",
        python_prefixes=("/opt/py",),
        private_tmp=private_tmp,
        private_abstract=private_abstract,
    )


def strict(ctx: RunContext) -> CompiledPolicy:
    return compile_policy(resolve_policy("strict", NO_POLICY_DIR), ctx)


def rule_for(policy: CompiledPolicy, target: str) -> tuple[Verdict, str]:
    decision = policy.evaluate(Event(A.NETWORK_CONNECT, target))
    return decision.verdict, decision.rule_id


# -- the facts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespaces", "may_lack", "expected"),
    [
        # A sure mount namespace: /tmp and /var/tmp are a tmpfs of its own.
        ({"mount", "net"}, set(), OwnSockets(TMP, True)),
        ({"mount"}, set(), OwnSockets(TMP, False)),
        # --allow-degraded mount: it may run on the host's /tmp.
        ({"mount", "net"}, {"mount"}, OwnSockets((), True)),
        # Abstract names are its own only in a network namespace that cannot
        # go missing (Landlock's scope keeps its connects in, not the host's
        # connects to a name it bound out).
        ({"mount", "net"}, {"net"}, OwnSockets(TMP, False)),
        (set(), set(), OwnSockets((), False)),
    ],
)
def test_a_fact_holds_only_when_the_launch_guarantees_it(
    namespaces: set[str], may_lack: set[str], expected: OwnSockets
) -> None:
    assert own_socket_facts(namespaces, may_lack, tmp_dirs=TMP) == expected


def test_the_facts_of_a_run_here_follow_its_namespaces() -> None:
    assert own_sockets_here().private_abstract is False
    assert own_sockets_here(own_network=True).private_abstract is True
    assert own_sockets_here({"net"}, own_network=True).private_abstract is False
    assert own_sockets_here({"mount"}).private_tmp == ()
    assert "/tmp" in own_sockets_here().private_tmp


def test_explain_and_a_run_fill_the_facts_alike() -> None:
    ctx = RunContext.for_run("/", "/root", "a", sockets=own_sockets_here(own_network=True))
    assert ctx.private_abstract is True and "/tmp" in ctx.private_tmp
    degraded = RunContext.for_run("/", "/root", "a", sockets=own_sockets_here({"mount"}))
    assert degraded.private_tmp == ()
    assert RunContext.for_run("/", "/root", "a").private_tmp == ()  # no facts: none


def test_the_facts_are_placeholders() -> None:
    values = context(private_tmp=TMP, private_abstract=True).placeholder_values()
    assert values["private_tmp"] == TMP
    assert values["private_abstract"] == ("@",)
    none = context().placeholder_values()
    assert none["private_tmp"] == () and none["private_abstract"] == ()


@pytest.mark.parametrize(
    ("kept", "own"),
    [
        ({}, TMP),  # nothing of the host's in /tmp: all it holds is the agent's
        ({"home": "/tmp/home"}, ()),
        ({"home": "/home/u", "home_real": "/var/tmp/u"}, ()),  # a symlinked home
        ({"workspace": "/var/tmp/ws"}, ()),
        ({"python_prefixes": ("/opt/py", "/tmp/venv")}, ()),
        ({"tmp_binds": ("/tmp/bin/tool",)}, ()),  # the program, bound back in
        ({"workspace": "/tmpx/ws"}, TMP),  # a name that only starts like /tmp
    ],
)
def test_own_tmp_is_the_private_tmp_only_when_nothing_of_the_hosts_is_bound_in(
    kept: dict[str, object], own: tuple[str, ...]
) -> None:
    """`{own_tmp}`: where every file is the agent's own making.  A workspace,
    home or Python beneath the private /tmp is bound back in from the host."""
    fields: dict[str, object] = {
        "workspace": "/srv/project",
        "home": "/home/u",
        "agent_id": "agent",
        "python_prefixes": ("/opt/py",),
        "private_tmp": TMP,
        **kept,
    }
    values = RunContext(**fields).placeholder_values()  # type: ignore[arg-type]
    assert values["own_tmp"] == own
    assert context().placeholder_values()["own_tmp"] == ()  # no private /tmp, no value


# -- a placeholder with no value matches nothing ----------------------------------------


def test_a_glob_on_a_placeholder_with_no_value_matches_nothing() -> None:
    values = {"private_tmp": (), "private_abstract": ()}
    glob = compile_glob(parse_glob("unix:{private_tmp}/**"), values)
    assert not any(glob.matches(t) for t in ("unix:", "unix:/", "unix:/tmp/x", "unix:/x"))
    assert glob.roots == ()
    assert str(glob) == "glob 'unix:{private_tmp: no value}/**'"
    anything = compile_glob(parse_glob("{private_abstract}**"), values)
    assert not any(anything.matches(t) for t in ("", "@", "unix:@x", "x"))


def test_a_regex_on_a_placeholder_with_no_value_matches_nothing() -> None:
    values = {"private_tmp": ()}
    regex = compile_regex(parse_regex("^unix:{private_tmp}/"), values)
    assert not any(regex.matches(t) for t in ("unix:/tmp/x", "unix://", "unix:/"))
    # A quantifier takes the whole placeholder: `?` makes it optional, not true.
    optional = compile_regex(parse_regex("^unix:{private_tmp}?/x$"), values)
    assert optional.matches("unix:/x") and not optional.matches("unix:/tmp/x")


# -- strict's rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "rule"),
    [
        ("unix:/tmp/pymp-k3j/listener-x8", "own-sockets-tmp"),
        ("unix:/var/tmp/x.sock", "own-sockets-tmp"),
        ("unix:@/org/own/socket", "own-sockets-abstract"),
        # The host's: its daemons, what a workspace keeps in hidden directories,
        # what the private /tmp binds back in (a home, a Python under /tmp).
        ("unix:/run/docker.sock", "local-socket"),
        ("unix:/run/dbus/system_bus_socket", "local-socket"),
        ("unix:/run/systemd/private", "local-socket"),
        ("unix:/srv/project/.git/fsmonitor--daemon.ipc", "local-socket"),
        # A workspace socket may be a host process's (or linked from one).
        ("unix:/srv/project/dev.sock", "local-socket"),
        ("unix:/tmp/home/.gnupg/S.gpg-agent", "local-socket"),
        ("unix:/tmp/home/app.sock", "local-socket"),
        ("unix:/opt/py/x.sock", "local-socket"),
        ("unix:/tmpx/x.sock", "local-socket"),
        ("unix:", "local-socket"),  # an autobind: no name to judge
    ],
)
def test_strict_allows_the_agents_own_sockets_and_no_other(target: str, rule: str) -> None:
    policy = strict(context(private_tmp=TMP, private_abstract=True))
    verdict = Verdict.DENY if rule == "local-socket" else Verdict.ALLOW
    assert rule_for(policy, target) == (verdict, rule)


@pytest.mark.parametrize(
    "target", ["unix:/tmp/pymp-k3j/listener-x8", "unix:/var/tmp/x.sock", "unix:@/tmp/.X11-unix/X0"]
)
def test_without_the_facts_tmp_and_abstract_sockets_are_refused(target: str) -> None:
    assert rule_for(strict(context()), target) == (Verdict.DENY, "local-socket")


def test_local_socket_says_what_it_refuses() -> None:
    decision = strict(context()).evaluate(Event(A.NETWORK_CONNECT, "unix:/run/docker.sock"))
    assert decision.message == "local sockets other than the agent's own are refused (no signal)"


def test_no_rule_on_unix_sockets_costs_the_network_namespace() -> None:
    """The agent of strict keeps its network namespace and Landlock's TCP
    floor: a unix socket is reached through files, or in that namespace."""
    policy = strict(context(private_tmp=TMP, private_abstract=True))
    assert policy.floor_roots([A.NETWORK_CONNECT]) == ()
    own = load_policy_text(
        "name: own\nextends: [strict]\nrules:\n"
        "  - id: pg\n    actions: [network_connect]\n"
        "    target: 'unix:/run/postgresql/.s.PGSQL.5432'\n    decision: allow\n    priority: 1\n"
        "  - id: x11\n    actions: [network_connect]\n"
        "    pattern: '^unix:@/tmp/\\.X11-unix/X[0-9]+$'\n    decision: allow\n    priority: 1\n",
        "own.yaml",
        NO_POLICY_DIR,
    )
    assert compile_policy(own, context()).floor_roots([A.NETWORK_CONNECT]) == ()


@pytest.mark.parametrize(
    ("target", "pattern", "only"),
    [
        ("unix:**", None, True),
        ("unix:{workspace}/**", None, True),
        ("**", None, False),
        ("{private_abstract}**", None, False),
        (None, "^unix:/run/", True),
        (None, "\\Aunix:@x", True),
        (None, "^unix:(?:a|b)", True),
        (None, "^unix:a|b", False),  # `b` anywhere
        (None, "unix:", False),  # not anchored
        (None, "(?m)^unix:", False),
    ],
)
def test_which_rules_are_only_for_unix_sockets(
    target: str | None, pattern: str | None, only: bool
) -> None:
    matcher = f"target: '{target}'" if target is not None else f"pattern: '{pattern}'"
    text = (
        "name: t\nrules:\n  - id: r\n    actions: [network_connect]\n"
        f"    {matcher}\n    decision: allow\n"
    )
    (rule,) = load_policy_text(text, "t.yaml", NO_POLICY_DIR).rules
    assert unix_sockets_only(rule) is only


# -- the mediator's addresses --------------------------------------------------------


def _unix(path: bytes) -> bytes:
    return struct.pack("<H", socket.AF_UNIX) + path


def test_an_abstract_address_is_copied_with_every_byte_of_its_length() -> None:
    assert abstract_address(_unix(b"\0own\0\0")) == b"\0own\0\0"
    assert abstract_address(_unix(b"/tmp/x.sock\0")) is None
    assert abstract_address(_unix(b"")) is None  # an autobind
    assert abstract_address(struct.pack("<HH4s", socket.AF_INET, 80, b"\x7f\0\0\1")) is None
    # Its target drops the padding: rules see the name.
    assert describe_sockaddr(_unix(b"\0own\0\0"), lambda _raw: "") == "unix:@own"


def test_the_start_record_names_the_scopes() -> None:
    assert floor.scope_names(floor.scopes_for_abi(6)) == ["abstract_unix_socket", "signal"]
    assert floor.scope_names(floor.scopes_for_abi(5)) == []
