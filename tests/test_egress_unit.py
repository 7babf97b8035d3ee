"""The egress proxy's pure parts: the SNI parser, network_mode, address classes, pid lookup."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentsup.events import ActionType, Event, response_for
from agentsup.policy import (
    CompiledPolicy,
    Policy,
    PolicyError,
    RunContext,
    cache,
    compile_policy,
    load_policy_text,
)
from agentsup.supervision import egress
from agentsup.supervision.egress import NotTLS, client_hello_sni


def _hello(server_hostname: str | None, **options: object) -> bytes:
    """A real ClientHello from Python's ssl, as a client writes it to the wire."""
    context = ssl.create_default_context()
    for name, value in options.items():
        setattr(context, name, value)
    if server_hostname is None:
        context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("name", ["example.test", "API.Anthropic.com", "a" * 60 + ".test"])
def test_sni_of_real_client_hellos(name: str) -> None:
    assert client_hello_sni(_hello(name)) == name.lower()


def test_sni_of_a_tls12_only_hello_and_of_one_without_sni() -> None:
    hello = _hello("old.test", maximum_version=ssl.TLSVersion.TLSv1_2)
    assert client_hello_sni(hello) == "old.test"
    assert client_hello_sni(_hello(None)) == ""  # an IP literal has no server_name


def test_sni_with_trailing_bytes_after_the_hello() -> None:
    assert client_hello_sni(_hello("x.test") + b"\x17\x03\x03junk") == "x.test"


def test_every_truncation_needs_more_bytes_never_a_wrong_answer() -> None:
    hello = _hello("cut.test")
    for end in range(len(hello)):
        assert client_hello_sni(hello[:end]) is None, end
    assert client_hello_sni(hello) == "cut.test"


def test_a_hello_split_over_two_records() -> None:
    hello = _hello("split.test")
    body = hello[5:]
    half = len(body) // 2
    records = b"".join(
        b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part for part in (body[:half], body[half:])
    )
    assert client_hello_sni(records) == "split.test"


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\x16\x02\x00\x00\x10" + b"\x00" * 16,  # not TLS 1.x
        b"\x16\x03\x01\x00\x00",  # an empty record
        b"\x16\x03\x01\xff\xff" + b"\x00" * 10,  # longer than any record may be
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
        b"\x17\x03\x03\x00\x05hello",  # application data first
    ],
)
def test_what_is_not_a_client_hello(data: bytes) -> None:
    with pytest.raises(NotTLS):
        client_hello_sni(data)


def test_inner_lengths_that_overrun_are_refused() -> None:
    hello = bytearray(_hello("overrun.test"))
    # The cipher suites' length (after 4 handshake, 2 version, 32 random bytes and
    # the session id) set past the end of the hello.
    at = 5 + 4 + 34
    at += 1 + hello[at]
    hello[at : at + 2] = b"\xff\xff"
    with pytest.raises(NotTLS):
        client_hello_sni(bytes(hello))


def test_oversize_hellos_are_refused_not_buffered() -> None:
    record = b"\x16\x03\x01" + (16384).to_bytes(2, "big")
    # A handshake message that claims 1 MiB is refused at once.
    claim = record + b"\x01" + (1 << 20).to_bytes(3, "big") + b"\x00" * (16384 - 4)
    with pytest.raises(NotTLS):
        client_hello_sni(claim)
    # One that claims 60 KiB may come in records, up to 64 KiB in all.
    first = record + b"\x01" + (60 << 10).to_bytes(3, "big") + b"\x00" * (16384 - 4)
    data = first + (record + b"\x00" * 16384) * 2
    assert client_hello_sni(data) is None
    with pytest.raises(NotTLS):  # a fourth full record would pass 64 KiB on the wire
        client_hello_sni(data + record + b"\x00" * 100)


def test_garbage_never_raises_anything_but_not_tls() -> None:
    import random

    chance = random.Random(13)
    hello = _hello("fuzz.test")
    for _ in range(3000):
        data = bytearray(hello)
        for _flip in range(chance.randint(1, 6)):
            data[chance.randrange(len(data))] = chance.randrange(256)
        try:
            sni = client_hello_sni(bytes(data[: chance.randint(0, len(data))]))
        except NotTLS:
            continue
        assert sni is None or isinstance(sni, str)


@pytest.mark.parametrize(
    ("addr", "internal"),
    [
        ("127.0.0.1", True),
        ("127.5.6.7", True),
        ("169.254.169.254", True),  # the cloud metadata service
        ("169.254.1.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("100.64.0.1", True),  # carrier-grade NAT
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("255.255.255.255", True),
        ("::1", True),
        ("::", True),
        ("fe80::1", True),
        ("fe80::1%eth0", True),
        ("fd00::1", True),  # unique local
        ("fd00:ec2::254", True),  # AWS's IPv6 metadata address
        ("::ffff:127.0.0.1", True),
        ("::ffff:169.254.169.254", True),
        ("ff02::1", True),
        ("8.8.8.8", False),
        ("1.1.1.1", False),
        ("2606:4700:4700::1111", False),
        ("::ffff:8.8.8.8", False),
    ],
)
def test_internal_addresses(addr: str, internal: bool) -> None:
    assert egress.is_internal(addr) is internal


def test_address_targets() -> None:
    assert egress.address_target("10.0.0.1", 80) == "10.0.0.1:80"
    assert egress.address_target("fd00::1", 443) == "[fd00::1]:443"


def _mode(tmp_path: Path, rules: str, default: str = "deny", header: bool = True) -> str:
    text = f"name: m\ndefault: {default}\non_violation: block\n"
    text += f"rules:\n{rules}" if header else rules
    policy = load_policy_text(text, policy_dir=tmp_path)
    return egress.network_mode(compile_policy(policy, RunContext(str(tmp_path), "/root", "t")))


def test_network_mode(tmp_path: Path) -> None:
    files = "  - {id: f, actions: [file_read], target: '/**', decision: allow}\n"
    assert _mode(tmp_path, files) == "none"
    by_name = "  - {id: a, actions: [network_connect], target: 'api.test:443', decision: allow}\n"
    assert _mode(tmp_path, by_name) == "proxy"
    by_ip = "  - {id: a, actions: [network_connect], target: '127.0.0.1:8080', decision: allow}\n"
    assert _mode(tmp_path, by_ip) == "direct"
    v6 = "  - {id: a, actions: [network_connect], target: '[::1]:8080', decision: allow}\n"
    assert _mode(tmp_path, v6) == "direct"
    ephemeral = "  - {id: b, actions: [network_connect], target: '127.0.0.1:0', decision: allow}\n"
    assert _mode(tmp_path, ephemeral + by_name) == "proxy"
    denied_ip = "  - {id: d, actions: [network_connect], target: '10.0.0.1:22', decision: deny}\n"
    assert _mode(tmp_path, denied_ip + by_name) == "proxy"  # a deny opens no way out
    assert _mode(tmp_path, files, default="allow") == "proxy"


def test_the_network_key_chooses_the_mode_and_the_rules_choose_without_it(tmp_path: Path) -> None:
    by_name = "  - {id: a, actions: [network_connect], target: 'api.test:443', decision: allow}\n"
    by_ip = "  - {id: b, actions: [network_connect], target: '10.0.0.5:443', decision: allow}\n"
    files = "  - {id: f, actions: [file_read], target: '/**', decision: allow}\n"
    for rules, chosen in ((by_name, "proxy"), (by_ip, "direct"), (by_name + by_ip, "direct")):
        assert _mode(tmp_path, rules) == chosen
        assert _mode(tmp_path, "network: proxy\nrules:\n" + rules, header=False) == "proxy"
        assert _mode(tmp_path, "network: direct\nrules:\n" + rules, header=False) == "direct"
    # Nothing may connect: loopback only, whatever the key says.
    assert _mode(tmp_path, "network: direct\nrules:\n" + files, header=False) == "none"


def test_the_network_key_is_checked_inherited_and_cached(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"<string>:2:10: unknown network 'tor'"):
        load_policy_text("name: m\nnetwork: tor\n", policy_dir=tmp_path)
    (tmp_path / "parent.yaml").write_text("name: parent\nnetwork: proxy\n")
    child = load_policy_text("name: c\nextends: [parent]\n", policy_dir=tmp_path)
    assert child.network == "proxy"
    own = load_policy_text("name: c\nextends: [parent]\nnetwork: direct\n", policy_dir=tmp_path)
    assert own.network == "direct"
    assert load_policy_text("name: c\n", policy_dir=tmp_path).network is None
    assert cache.decode(Policy, cache.encode(own)) == own


def test_network_direct_warns_of_connect_rules_that_name_hosts(tmp_path: Path) -> None:
    text = (
        "name: m\nnetwork: direct\nrules:\n"
        "  - {id: api, actions: [network_connect], target: 'api.test:443', decision: allow}\n"
        "  - {id: ip, actions: [network_connect], target: '10.0.0.5:443', decision: allow}\n"
        "  - {id: evil, actions: [network_connect], target: 'evil.test:*', decision: deny}\n"
        # sockets, not hosts: no warning
        "  - {id: nl, actions: [network_connect], target: 'netlink:route', decision: allow}\n"
        "  - {id: pk, actions: [network_connect], target: 'packet:0x0003', decision: allow}\n"
        "  - {id: rw, actions: [network_connect], target: 'raw:2:1', decision: allow}\n"
        "  - {id: ux, actions: [network_connect], target: 'unix:/run/x.sock', decision: allow}\n"
    )
    (warning,) = load_policy_text(text, policy_dir=tmp_path).warnings
    assert warning.startswith("<string>:4:5: warning: rule 'api' names a host"), warning
    proxied = load_policy_text(text.replace("direct", "proxy"), policy_dir=tmp_path)
    assert proxied.warnings == ()


def test_an_address_rule_that_makes_the_network_the_hosts_says_so(tmp_path: Path) -> None:
    """New user 17: `127.0.0.1:8765` allowed for the agent's own server gave it
    the host's network (no `network:` key: an address rule means direct), and
    nothing said so; it read a host server's secret on that port."""
    rule = (
        "  - {id: local, actions: [network_connect], target: '127.0.0.1:8765', decision: allow}\n"
    )
    (warning,) = load_policy_text(f"name: m\nrules:\n{rule}", policy_dir=tmp_path).warnings
    assert warning.startswith("<string>:3:5: warning: rule 'local' allows connects to an address")
    assert "shares the host's network" in warning and "network: proxy" in warning
    for key in ("direct", "proxy"):  # said in so many words: nothing to warn of
        text = f"name: m\nnetwork: {key}\nrules:\n{rule}"
        assert load_policy_text(text, policy_dir=tmp_path).warnings == ()
    own = "  - {id: own, actions: [network_connect], pattern: '^(?:127\\.0\\.0\\.1):\\d+$', "
    own += "decision: allow}\n"
    assert load_policy_text(f"name: m\nrules:\n{own}", policy_dir=tmp_path).warnings == ()
    refused = rule.replace("allow", "deny")
    assert load_policy_text(f"name: m\nrules:\n{refused}", policy_dir=tmp_path).warnings == ()


def _compiled(tmp_path: Path, rules: str, default: str = "deny") -> CompiledPolicy:
    text = f"name: m\ndefault: {default}\non_violation: block\nrules:\n{rules}"
    policy = load_policy_text(text, policy_dir=tmp_path)
    return compile_policy(policy, RunContext(str(tmp_path), "/root", "t"))


@pytest.mark.parametrize(
    ("rule", "addr", "named"),
    [
        ("target: '169.254.169.254:80'", "169.254.169.254", True),
        ("pattern: '^10\\.1\\.2\\.3:80$'", "10.1.2.3", True),
        ("pattern: '^[0-9.]+:80$'", "127.0.0.2", True),  # about addresses: the user's word
        ("target: '*:80'", "169.254.169.254", False),  # any host is no word about this one
        ("target: '**'", "10.1.2.3", False),
        ("pattern: '.*'", "127.0.0.2", False),
    ],
)
def test_only_a_rule_about_addresses_names_an_internal_one(
    tmp_path: Path, rule: str, addr: str, named: bool
) -> None:
    rules = f"  - {{id: r, actions: [network_connect], {rule}, decision: allow}}\n"
    policy = _compiled(tmp_path, rules)
    assert policy.evaluate(Event(ActionType.NETWORK_CONNECT, f"{addr}:80")).rule_id == "r"
    assert egress.names_address(policy, addr, 80) is named


def test_neither_the_default_nor_a_deny_names_an_address(tmp_path: Path) -> None:
    files = "  - {id: f, actions: [file_read], target: '/**', decision: allow}\n"
    assert not egress.names_address(_compiled(tmp_path, files, default="allow"), "10.0.0.1", 80)
    deny = "  - {id: d, actions: [network_connect], target: '10.0.0.1:80', decision: deny}\n"
    assert not egress.names_address(_compiled(tmp_path, deny), "10.0.0.1", 80)


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_policy(tmp_path: Path, heading: str) -> CompiledPolicy:
    """The README's egress rule shape whose YAML block starts with `# heading`."""
    text = README.read_text()
    section = text[text.index("### Egress by name") :]
    start = section.index(f"```yaml\n# {heading}") + len("```yaml\n")
    block = section[start : section.index("```", start)]
    policy = load_policy_text(block, source=f"README {heading}", policy_dir=tmp_path)
    assert policy.warnings == ()
    return compile_policy(policy, RunContext(str(tmp_path), "/home/u", "t"))


def _goes(policy: CompiledPolicy, action: ActionType, target: str) -> bool:
    return response_for(policy.evaluate(Event(action, target))).proceeds


CONNECT, REQUEST = ActionType.NETWORK_CONNECT, ActionType.NETWORK_REQUEST


def test_readme_only_the_anthropic_api(tmp_path: Path) -> None:
    policy = _readme_policy(tmp_path, "only the Anthropic API")
    assert egress.network_mode(policy) == "proxy"
    assert _goes(policy, CONNECT, "api.anthropic.com:443")
    assert _goes(policy, REQUEST, "CONNECT api.anthropic.com:443")
    assert _goes(policy, REQUEST, "POST https://api.anthropic.com/v1/messages")
    for target in ("api.anthropic.com:80", "evil.test:443", "api.anthropic.com.evil.test:443"):
        assert not _goes(policy, CONNECT, target), target
    assert not _goes(policy, REQUEST, "CONNECT api.anthropic.com.evil.test:443")
    assert not _goes(policy, REQUEST, "GET https://evil.test/")
    assert not egress.names_address(policy, "169.254.169.254", 443)


def test_readme_registries_for_installs(tmp_path: Path) -> None:
    policy = _readme_policy(tmp_path, "PyPI and npm registries for installs")
    assert egress.network_mode(policy) == "proxy"
    for host in ("pypi.org", "files.pythonhosted.org", "registry.npmjs.org"):
        assert _goes(policy, CONNECT, f"{host}:443")
        assert _goes(policy, REQUEST, f"CONNECT {host}:443")
    assert _goes(policy, REQUEST, "GET https://pypi.org/simple/requests/")
    assert not _goes(policy, REQUEST, "POST https://upload.pypi.org/legacy/")
    assert not _goes(policy, CONNECT, "github.com:443")
    assert not _goes(policy, CONNECT, "pypi.org.evil.test:443")


def test_readme_github_read_only(tmp_path: Path) -> None:
    policy = _readme_policy(tmp_path, "GitHub read-only")
    assert egress.network_mode(policy) == "proxy"
    for host in ("github.com", "api.github.com", "codeload.github.com"):
        assert _goes(policy, CONNECT, f"{host}:443")
    assert _goes(policy, REQUEST, "CONNECT objects.githubusercontent.com:443")
    assert _goes(policy, REQUEST, "GET https://api.github.com/repos/o/r")
    assert not _goes(policy, REQUEST, "POST https://api.github.com/repos/o/r/issues")
    assert not _goes(policy, CONNECT, "gitlab.com:443")
    shell = ActionType.SHELL_EXECUTE
    for push in ("git push", "git push origin main", "/usr/bin/git -C repo push -f"):
        assert policy.evaluate(Event(shell, push)).rule_id == "no-push", push
    assert policy.evaluate(Event(shell, "git clone https://github.com/o/r")).rule_id != "no-push"
    assert policy.evaluate(Event(shell, "git pushd")).rule_id != "no-push"
    # Nothing to push with: no token variable, no credential file.
    environ = policy.filter_environ({"PATH": "/bin", "GITHUB_TOKEN": "t", "GH_TOKEN": "t"})
    assert "GITHUB_TOKEN" not in environ and "GH_TOKEN" not in environ
    for secret in ("/home/u/.git-credentials", "/home/u/.config/gh/hosts.yml", "/home/u/.netrc"):
        assert not _goes(policy, ActionType.FILE_READ, secret), secret


def test_proxy_environment_names_the_proxy_for_every_client() -> None:
    env = egress.proxy_environment(3128)
    for name in (
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "PIP_PROXY",
        "npm_config_proxy",
        "npm_config_https_proxy",
    ):
        assert env[name] == "http://127.0.0.1:3128"
    assert "localhost" in env["no_proxy"] and env["no_proxy"] == env["NO_PROXY"]


def test_the_owner_lookup_reads_a_bounded_number_of_fds() -> None:
    """The agent picks how many processes and fds its tree has, and the
    lookup runs in the loop: past its budget (per lookup, and per second for
    all), it gives up and the agent's main pid is named."""
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(300)]  # listed before the sockets
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, peer = listener.accept()
    now = [0.0]
    owners = egress.SocketOwners(clock=lambda: now[0])
    try:
        me, proxy = os.getpid(), listener.getsockname()
        owners.LOOKUP_FDS = 100  # fewer than this process holds
        assert owners.pid(peer, proxy, me, [me]) == 0
        owners.LOOKUP_FDS, owners.FDS_PER_SECOND = 100_000, 10_000
        assert owners.pid(peer, proxy, me, [me]) == me
        owners.FDS_PER_SECOND = 0  # this second's reads are spent
        assert owners.pid(peer, proxy, me, [me]) == 0
        owners.FDS_PER_SECOND = 10_000
        now[0] += 1.0  # a new second
        assert owners.pid(peer, proxy, me, [me]) == me
    finally:
        owners.close()
        for fd in held:
            os.close(fd)
        for sock in (client, server, listener):
            sock.close()


def test_the_process_holding_the_client_socket_is_found() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, peer = listener.accept()
    owners = egress.SocketOwners()
    try:
        me = os.getpid()
        proxy = listener.getsockname()
        assert owners.pid(peer, proxy, me, [1, me]) == me
        assert owners.pid(peer, proxy, me, [1]) == 0  # not a process of the tree
        assert owners.pid(("127.0.0.1", 1), proxy, me, [me]) == 0  # no such socket
    finally:
        owners.close()
        for sock in (client, server, listener):
            sock.close()


def test_the_lookup_enters_another_network_namespace() -> None:
    """The agent's namespace: a socket made there is found from here."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    script = (
        "import socket,sys,time\n"
        "l=socket.create_server(('127.0.0.1',3128));c=socket.create_connection(('127.0.0.1',3128))\n"
        "print(c.getsockname()[1],flush=True);sys.stdin.read()\n"
    )
    inner = subprocess.Popen(
        [
            "unshare",
            "--net",
            "sh",
            "-c",
            f'ip link set lo up && exec {sys.executable} -c "{script}"',
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    owners = egress.SocketOwners()
    try:
        assert inner.stdout is not None
        port = int(inner.stdout.readline())
        found = owners.pid(("127.0.0.1", port), ("127.0.0.1", 3128), inner.pid, [inner.pid])
        assert found == inner.pid
        started = time.perf_counter()
        for _ in range(100):
            owners.pid(("127.0.0.1", port), ("127.0.0.1", 3128), inner.pid, [inner.pid])
        assert (time.perf_counter() - started) / 100 < 0.005  # cheap: no walk of every socket
    finally:
        owners.close()
        inner.communicate("")
