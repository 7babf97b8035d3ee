"""The built-in templates in policies/: each loads and behaves as documented."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest

from agentsup.events import ActionType, Event, Response, Severity, Verdict, ViolationMode
from agentsup.events import response_for as respond
from agentsup.policy import (
    CompiledPolicy,
    RunContext,
    builtin_names,
    compile_policy,
    resolve_policy,
)

A = ActionType
WS = "/home/dev/project"
CTX = RunContext(workspace=WS, home="/root", agent_id="agent", python_prefixes=("/opt/py",))
NO_POLICY_DIR = Path("/nonexistent-policy-dir")


def template(name: str) -> CompiledPolicy:
    return compile_policy(resolve_policy(name, NO_POLICY_DIR), CTX)


def response(policy: CompiledPolicy, action: ActionType, target: str) -> Response:
    return respond(policy.evaluate(Event(action, target)))


def test_the_four_templates_ship() -> None:
    assert set(builtin_names()) >= {"strict", "permissive", "read_only", "audit"}


@pytest.mark.parametrize("name", ["strict", "permissive", "read_only", "audit"])
def test_each_template_loads_and_starts_with_a_comment_block(name: str) -> None:
    text = importlib.resources.files("agentsup.policies").joinpath(f"{name}.yaml").read_text()
    assert text.startswith(f"# {name}"), "the first line says what the template is for"
    policy = resolve_policy(name, NO_POLICY_DIR)
    assert policy.name == name
    assert policy.description


# ---------------------------------------------------------------- strict

SECRETS = [
    "/root/.ssh/id_rsa",
    "/root/.ssh/config",
    "/root/.aws/credentials",
    "/root/.gnupg/secring.gpg",
    "/root/.config/gcloud/credentials.db",
    "/root/.kube/config",
    "/root/.docker/config.json",
    "/srv/tls/server.pem",
    "/srv/tls/server.key",
    "/tmp/id_rsa.bak",
    "/srv/id_ed25519",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/sudoers.d/90-users",
    f"{WS}/.env",
    f"{WS}/.env.production",
    f"{WS}/../../../root/.ssh/id_rsa",
]
FILE_ACTIONS = [A.FILE_READ, A.FILE_WRITE, A.FILE_DELETE, A.FILE_MOVE, A.FILE_CHMOD]


@pytest.mark.parametrize("name", ["strict", "permissive"])
def test_netrc_is_refused_quietly_as_curl_git_and_requests_read_it_unasked(name: str) -> None:
    for action in FILE_ACTIONS:
        decision = template(name).evaluate(Event(action, "/root/.netrc"))
        assert (decision.verdict, decision.on_violation) == (Verdict.DENY, ViolationMode.BLOCK)
        assert decision.rule_id == "secret-netrc"


@pytest.mark.parametrize("target", SECRETS)
def test_strict_kills_on_secrets_for_every_file_action(target: str) -> None:
    strict = template("strict")
    for action in FILE_ACTIONS:
        decision = strict.evaluate(Event(action, target))
        assert decision.verdict is Verdict.DENY, (action, target, decision)
        assert decision.on_violation is ViolationMode.SIGKILL
        assert decision.severity in (Severity.HIGH, Severity.CRITICAL)


@pytest.mark.parametrize(
    "target",
    [f"{WS}/tls/server.pem", f"{WS}/tls/server.key", f"{WS}/certs/client.p12", f"{WS}/.c/id_ecdsa"],
)
def test_workspace_key_files_are_never_read_and_change_as_the_policy_says(target: str) -> None:
    """A repository's fixtures: strict writes and removes them like any
    workspace file, read_only not at all; neither reads, moves, chmods or
    runs one, and neither kills for it."""
    strict, read_only = template("strict"), template("read_only")
    for action in (A.FILE_READ, A.FILE_MOVE, A.FILE_CHMOD, A.PROCESS_SPAWN):
        for policy in (strict, read_only):
            decision = policy.evaluate(Event(action, target))
            assert (decision.rule_id, respond(decision)) == (
                "workspace-key-read",
                Response.BLOCK,
            ), (action, policy.name)
    for action in (A.FILE_WRITE, A.FILE_DELETE):
        assert response(strict, action, target) is Response.ALLOW
        assert response(read_only, action, target).proceeds is False


def test_strict_secret_rules_come_before_the_allow_rules() -> None:
    policy = resolve_policy("strict", NO_POLICY_DIR)
    order = [rule.id for rule in policy.rules]
    secret_rules = [i for i, rule in enumerate(policy.rules) if rule.id.startswith("secret-")]
    assert max(secret_rules) < order.index("workspace")
    assert max(secret_rules) < order.index("read-etc")


@pytest.mark.parametrize(
    ("action", "target"),
    [
        (A.FILE_READ, f"{WS}/x"),
        (A.FILE_WRITE, f"{WS}/src/new.py"),
        (A.FILE_DELETE, f"{WS}/build/old.o"),
        (A.FILE_MOVE, f"{WS}/a"),
        (A.FILE_CHMOD, f"{WS}/run.sh"),
        (A.FILE_READ, "/usr/lib/python3.11/os.py"),
        (A.FILE_READ, "/etc/hosts"),
        (A.FILE_READ, "/lib/x86_64-linux-gnu/libc.so.6"),
        (A.FILE_READ, "/proc/self/status"),
        (A.FILE_READ, "/opt/py/lib/python3.11/site.py"),  # {python}
        (A.FILE_WRITE, "/tmp/scratch.txt"),
        (A.FILE_WRITE, "/var/tmp/x"),
        (A.FILE_WRITE, "/dev/null"),
        (A.FILE_WRITE, "/dev/tty"),
        (A.FILE_WRITE, "/dev/pts/3"),
        (A.FILE_WRITE, "/dev/shm/sem.x"),
        (A.FILE_READ, "/dev/urandom"),
        # what dpkg -l, apt-cache, rpm -q, pacman -Q and man read
        (A.FILE_READ, "/var/lib/dpkg/status"),
        (A.FILE_READ, "/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease"),
        (A.FILE_READ, "/var/cache/apt/pkgcache.bin"),
        (A.FILE_READ, "/var/lib/rpm/rpmdb.sqlite"),
        (A.FILE_READ, "/var/lib/pacman/local/ALPM_DB_VERSION"),
        (A.FILE_READ, "/var/cache/man/index.db"),
        (A.SHELL_EXECUTE, "ls -la"),
        (A.SHELL_EXECUTE, "rm -rf build"),
        (A.SHELL_EXECUTE, "rm -rf /tmp/x"),
        # a lone / after the removal, in another command
        (A.SHELL_EXECUTE, "sh -c rm -rf out; echo $(( (t - s) / 1000 ))"),
        (A.SHELL_EXECUTE, "rm -rf build && python3 -c 'print(6 / 2)'"),
        (A.SHELL_EXECUTE, "rm -f a.o | tee /\nls ~"),
        (A.SHELL_EXECUTE, "python3 -m pytest -q"),
        # Found by a new user: naming a privileged program is not running it.
        (A.SHELL_EXECUTE, "grep -rn sudo ."),
        (A.SHELL_EXECUTE, "git commit -m drop sudo from install.sh"),
        (A.SHELL_EXECUTE, "grep -c su notes.txt"),
        (A.SHELL_EXECUTE, "sed -i s/sudo //g install.sh"),
        (A.SHELL_EXECUTE, "man mkfs"),
        (A.SHELL_EXECUTE, "busybox ls -la"),
        (A.PROCESS_SPAWN, "/usr/bin/git"),
        (A.ENV_READ, "HOME"),
        (A.DATABASE_READ, "SELECT 1"),
        (A.DATABASE_WRITE, "INSERT INTO t VALUES (1)"),
    ],
)
def test_strict_allows_ordinary_work(action: ActionType, target: str) -> None:
    assert response(template("strict"), action, target) is Response.ALLOW


@pytest.mark.parametrize(
    ("action", "target"),
    [
        (A.SHELL_EXECUTE, "rm -rf /"),
        (A.SHELL_EXECUTE, "rm -rf /*"),
        (A.SHELL_EXECUTE, "rm -fr ~"),
        (A.SHELL_EXECUTE, "rm -r -f /root"),
        (A.SHELL_EXECUTE, "rm -rf --no-preserve-root /"),
        (A.SHELL_EXECUTE, "cd / && rm -rf /usr"),
        (A.SHELL_EXECUTE, "rm -rf /;echo done"),
        (A.SHELL_EXECUTE, "make clean; rm -rf / && echo gone"),
        (A.SHELL_EXECUTE, "sh -c rm -rf ~|cat"),
        (A.SHELL_EXECUTE, "(rm -rf /)"),
        (A.SHELL_EXECUTE, "echo `rm -rf ~`"),
        (A.SHELL_EXECUTE, "mkfs.ext4 /dev/sda1"),
        (A.SHELL_EXECUTE, "dd if=/dev/zero of=/dev/sda bs=1M"),
        (A.SHELL_EXECUTE, ":(){ :|:& };:"),
        (A.SHELL_EXECUTE, "sudo ls"),
        (A.SHELL_EXECUTE, "su -"),
        (A.SHELL_EXECUTE, "doas sh"),
        (A.SHELL_EXECUTE, "/usr/bin/sudo -i"),
        (A.SHELL_EXECUTE, "./su root"),
        (A.SHELL_EXECUTE, "/sbin/mkfs -t ext4 /dev/sdb"),
        # A multi-call binary called by its own name runs the applet named next
        # (red team 34), and mkfs is known by its file whatever its argv[0] says.
        (A.SHELL_EXECUTE, "busybox su -c id root"),
        (A.SHELL_EXECUTE, "/usr/bin/busybox.static sudo ls"),
        (A.SHELL_EXECUTE, "busybox mke2fs img"),
        (A.PROCESS_SPAWN, "/usr/sbin/mkfs.ext4"),
        (A.PROCESS_SPAWN, "/sbin/mke2fs"),
        (A.PROCESS_SPAWN, "/usr/bin/sudo"),
        (A.PROCESS_SPAWN, "/bin/su"),
        (A.FILE_WRITE, "/etc/passwd"),
        (A.FILE_WRITE, "/usr/bin/python3"),
        (A.FILE_DELETE, "/lib/x.so"),
        (A.FILE_CHMOD, "/usr/bin/env"),
        (A.NETWORK_CONNECT, "127.0.0.1:9"),
        (A.NETWORK_CONNECT, "[::1]:443"),
        (A.NETWORK_REQUEST, "GET https://example.com/"),
    ],
)
def test_strict_kills_on_destruction_privilege_and_network(action: ActionType, target: str) -> None:
    decision = template("strict").evaluate(Event(action, target))
    assert respond(decision) is Response.KILL, decision


@pytest.mark.parametrize("target", ["unix:/var/run/nscd/socket", "unix:@/tmp/x", "netlink:0"])
def test_strict_only_blocks_local_sockets(target: str) -> None:
    decision = template("strict").evaluate(Event(A.NETWORK_CONNECT, target))
    assert (decision.verdict, decision.on_violation) == (Verdict.DENY, ViolationMode.BLOCK)
    assert decision.severity is Severity.LOW


def test_strict_other_sections() -> None:
    strict = template("strict")
    # What no rule names is refused without a signal (issue 12: nearly every
    # kill of an ordinary tool was a false alarm); known-bad rules kill.
    assert (strict.default, strict.on_violation) == (Verdict.DENY, ViolationMode.BLOCK)
    assert respond(strict.evaluate(Event(A.MEMORY_ACCESS, "1234"))) in (
        Response.BLOCK,
        Response.KILL,
    )
    assert response(strict, A.DATABASE_DELETE, "DELETE FROM t") is Response.WARN
    assert response(strict, A.DATABASE_EXECUTE, "DROP TABLE t") is Response.WARN
    assert strict.env_allowed("PATH") and strict.env_allowed("LC_ALL")
    assert not strict.env_allowed("OPENAI_API_KEY") and not strict.env_allowed("GITHUB_TOKEN")
    assert response(strict, A.FILE_READ, "/var/log/syslog") is Response.BLOCK  # default deny
    assert response(strict, A.FILE_WRITE, "/root/.bashrc") is Response.BLOCK


@pytest.mark.parametrize(
    "target",
    [
        "/root/.gitconfig",
        "/root/.inputrc",
        "/root/.sqliterc",
        "/root/.config/git/config",
        "/root/.config/pip/pip.conf",
        "/root/.cache/pip/http/x",
        "/opt/py/lib/python3.11/site-packages/certifi/cacert.pem",
        f"{WS}/.venv/lib/python3.11/site-packages/certifi/cacert.pem",
        f"{WS}/.venv/lib/python3.11/site-packages/pip/_vendor/certifi/cacert.pem",
        "/var/tmp/tmpzf3b6nv5cacert.pem",  # ensurepip's zipped pip extracts it there
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/ssl/certs/ISRG_Root_X1.pem",
        "/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt",
        # toolchains kept in the home: version managers and per-user installs
        "/root/.pyenv/versions/3.12.1/lib/python3.12/os.py",
        "/root/.nvm/versions/node/v20.11.0/bin/node",
        "/root/.rbenv/versions/3.3.0/bin/ruby",
        "/root/.volta/bin/node",
        "/root/.local/bin/pipx",
        "/root/.local/lib/python3.11/site-packages/rich/__init__.py",
    ],
)
def test_strict_reads_tool_configuration_and_public_certificates(target: str) -> None:
    assert response(template("strict"), A.FILE_READ, target) is Response.ALLOW


@pytest.mark.parametrize(
    "target",
    [
        "/root/.config/gh/hosts.yml",
        "/root/.config/git/credentials",
        "/root/.pgpass",
        "/root/.cargo/credentials.toml",
        "/root/.local/share/keyrings/login.keyring",
        "/root/.vault-token",
        "/etc/ssl/private/server.key",
        "/etc/letsencrypt/live/x/privkey.pem",
        "/srv/certs/client.p12",
        "/srv/id_ecdsa",
        "/srv/tls/tls-key.pem",
    ],
)
def test_strict_kills_on_stored_credentials_and_key_stores(target: str) -> None:
    assert response(template("strict"), A.FILE_READ, target) is Response.KILL


def test_strict_blocks_npmrc_and_loopback_probes_without_killing() -> None:
    strict = template("strict")
    assert response(strict, A.FILE_READ, "/root/.npmrc") is Response.BLOCK  # tokens stay unread
    assert response(strict, A.NETWORK_CONNECT, "[::1]:0") is Response.BLOCK  # urllib3's probe
    assert response(strict, A.NETWORK_CONNECT, "127.0.0.53:53") is Response.BLOCK  # a lookup
    assert strict.floor_roots([A.NETWORK_CONNECT]) == ()  # the agent keeps its own network


def test_strict_floor_covers_the_workspace_and_system_but_not_home() -> None:
    strict = template("strict")
    read = strict.floor_roots([A.FILE_READ])
    assert read is not None
    assert WS in read and "/usr" in read and "/etc" in read and "/opt/py" not in read
    assert "/opt" in read  # /opt/py lies beneath /opt
    assert not any(root in ("/", "/root") for root in read)
    write = strict.floor_roots([A.FILE_WRITE])
    assert write is not None and WS in write and "/usr" not in write


# ---------------------------------------------------------------- permissive


def test_permissive_allows_by_default_but_still_kills_on_secrets_and_rm_rf() -> None:
    permissive = template("permissive")
    assert (permissive.default, permissive.on_violation) == (Verdict.ALLOW, ViolationMode.BLOCK)
    assert response(permissive, A.FILE_WRITE, "/etc/motd") is Response.ALLOW
    assert response(permissive, A.NETWORK_CONNECT, "1.1.1.1:443") is Response.ALLOW
    assert response(permissive, A.FILE_READ, "/root/.ssh/id_rsa") is Response.KILL
    assert response(permissive, A.FILE_READ, "/etc/shadow") is Response.KILL
    assert response(permissive, A.SHELL_EXECUTE, "rm -rf /") is Response.KILL
    assert response(permissive, A.SHELL_EXECUTE, "sudo -i") is Response.KILL
    assert permissive.floor_roots([A.FILE_READ]) is None


# ---------------------------------------------------------------- read_only


def test_read_only_reads_like_strict_and_changes_nothing() -> None:
    read_only = template("read_only")
    assert response(read_only, A.FILE_READ, f"{WS}/x") is Response.ALLOW
    assert response(read_only, A.FILE_READ, "/usr/lib/os.py") is Response.ALLOW
    for action in (A.FILE_WRITE, A.FILE_DELETE, A.FILE_MOVE, A.FILE_CHMOD):
        decision = read_only.evaluate(Event(action, f"{WS}/x"))
        assert decision.verdict is Verdict.DENY, action
        assert response(read_only, action, "/tmp/x").proceeds is False
    assert response(read_only, A.FILE_WRITE, "/dev/null") is Response.ALLOW
    assert response(read_only, A.FILE_WRITE, "/dev/tty") is Response.ALLOW
    assert response(read_only, A.NETWORK_CONNECT, "10.0.0.1:80") is Response.KILL
    assert response(read_only, A.FILE_READ, "/root/.ssh/id_rsa") is Response.KILL
    assert response(read_only, A.SHELL_EXECUTE, "rm -rf /") is Response.KILL
    assert read_only.floor_roots([A.FILE_WRITE, A.FILE_DELETE]) == ("/dev/null", "/dev/tty")


# ---------------------------------------------------------------- audit


def test_audit_allows_and_logs_everything() -> None:
    audit = template("audit")
    assert audit.default is Verdict.ALLOW
    assert audit.audit_level.value == "all"
    for action in ActionType:
        decision = audit.evaluate(Event(action, "/root/.ssh/id_rsa"))
        assert decision.verdict is Verdict.LOG
        assert respond(decision) is Response.LOG


@pytest.mark.parametrize(
    "target",
    ["/var/lib/docker/volumes/x", "/var/lib/postgresql/15/main/pg_hba.conf", "/var/log/auth.log"],
)
def test_strict_reads_no_other_state_of_the_host(target: str) -> None:
    assert response(template("strict"), A.FILE_READ, target) is not Response.ALLOW
