"""Real jobs run the same under `strict`, with no custom rule, as they do bare.

Each job is a bash script run in a workspace, once bare and once under
`agentsup run --policy strict`, with the same minimal environment (what
strict passes) and a home holding ordinary tool configuration and a set of
planted secrets.  Exit status and output must be equal.  The same module pins
that every secret rule of strict still kills a reader.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Sandbox, locations_root

from agentsup.events import ActionType, Event, Verdict, ViolationMode
from agentsup.policy import RunContext, compile_policy, resolve_policy

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

JOBS = Path(__file__).parent / "jobs"
FAKE_SECRET = "-----BEGIN PRIVATE KEY-----\nbm90LWEtcmVhbC1rZXk=\n-----END PRIVATE KEY-----\n"


class Jobs:
    """One workspace path, reset between the bare and the supervised run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workspace = root / "workspace"
        self.home = root / "home"
        # Outside /tmp: the kernel floor punches agentsup's own files out of
        # their parents, and a punched /tmp would refuse gcc's temporary files.
        self.own = locations_root()
        for sub in ("policies", "log", "state", "run"):
            (self.own / sub).mkdir(parents=True)
        self._plant_home()
        bindir = os.path.dirname(sys.executable)
        # What strict passes on, nothing more: the bare run must see the same.
        self.env = {
            "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
        }
        self.sup_env = {
            **self.env,
            "AGENTSUP_POLICY_DIR": str(self.own / "policies"),
            "AGENTSUP_AUDIT_LOG": str(self.own / "log" / "audit.jsonl"),
            "AGENTSUP_STATE_DIR": str(self.own / "state"),
            "AGENTSUP_RUNTIME_DIR": str(self.own / "run"),
        }
        # agentsup itself is imported as the suite's is; strict drops the
        # variable for the agent, so both runs of a job see the same.
        if "PYTHONPATH" in os.environ:
            self.sup_env["PYTHONPATH"] = os.environ["PYTHONPATH"]

    def _plant_home(self) -> None:
        files = {
            ".gitconfig": "[user]\n\tname = Job Runner\n\temail = jobs@example.invalid\n"
            "[init]\n\tdefaultBranch = main\n",
            ".inputrc": "set bell-style none\n",
            ".config/git/ignore": "*.swp\n",
            ".npmrc": "//registry.example.invalid/:_authToken=npm_not_a_real_token\n",
        }
        for name, text in files.items():
            path = self.home / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def reset(self, setup: str) -> None:
        shutil.rmtree(self.workspace, ignore_errors=True)
        self.workspace.mkdir()
        if setup:
            subprocess.run(["bash", "-c", setup], cwd=self.workspace, env=self.env, check=True)

    def bare(self, script: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return self._run(["bash", "-c", script], self.env, timeout)

    def supervised(
        self, script: str, timeout: float, agent_id: str = "job"
    ) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "agentsup", "run", "--policy", "strict"]
        command += ["--workspace", str(self.workspace), "--id", agent_id, "--", "bash", "-c"]
        return self._run([*command, script], self.sup_env, timeout)

    def _run(
        self, command: list[str], env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            cwd=self.workspace,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def compare(self, script: str, setup: str = "", timeout: float = 120) -> str:
        """Run bare, then supervised in a fresh copy; assert the same outcome."""
        self.reset(setup)
        bare = self.bare(script, timeout)
        assert bare.returncode == 0, f"the job fails even bare:\n{bare.stdout}\n{bare.stderr}"
        self.reset(setup)
        sup = self.supervised(script, timeout)
        assert (sup.returncode, _normal(sup.stdout)) == (bare.returncode, _normal(bare.stdout)), (
            f"bare:\n{bare.stdout}\nsupervised:\n{sup.stdout}\nstderr:\n{sup.stderr}"
        )
        assert _normal(sup.stderr) == _normal(bare.stderr), sup.stderr
        return sup.stdout


def _normal(text: str) -> str:
    # Timings differ between any two runs.
    return re.sub(r"\b\d+(?:\.\d+)?s\b", "Ns", text)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jobs]:
    jobs = Jobs(tmp_path_factory.mktemp("jobs"))
    yield jobs
    shutil.rmtree(jobs.own, ignore_errors=True)


GIT = """
set -e
export GIT_AUTHOR_DATE='2024-01-01T00:00:00Z' GIT_COMMITTER_DATE='2024-01-01T00:00:00Z'
git init -q project && cd project
printf 'one\\n' > notes.txt && git add notes.txt && git commit -qm first
git branch feature && git checkout -q feature
printf 'two\\n' >> notes.txt && git commit -qam second
git checkout -q main && printf 'x\\n' > other.txt && git add other.txt && git commit -qm third
git merge -q --no-edit feature
git log --format='%h %s' --graph
cd .. && git clone -q project copy && git -C copy log --format='%h %s' | head -3
git -C copy status --short --branch
cat copy/notes.txt
"""


def test_git_init_commit_branch_merge_and_clone(jobs: Jobs) -> None:
    out = jobs.compare(GIT)
    assert "Merge branch 'feature'" in out and "two" in out


def test_a_real_projects_pytest_suite(jobs: Jobs) -> None:
    setup = f"cp -r {JOBS / 'semverlite'} ."
    out = jobs.compare("cd semverlite && python3 -m pytest -q", setup=setup)
    assert "18 passed" in out


def _tiny_wheel(folder: Path) -> Path:
    """A pure-Python wheel built by hand (no `wheel` package needed)."""
    name = "tinyjob-1.0-py3-none-any.whl"
    files = {
        "tinyjob/__init__.py": "def hello() -> str:\n    return 'hello from tinyjob'\n",
        "tinyjob-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinyjob\nVersion: 1.0\n",
        "tinyjob-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append("tinyjob-1.0.dist-info/RECORD,,")
    files["tinyjob-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / name
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.mark.slow
def test_venv_and_pip_install_of_a_local_wheel(jobs: Jobs, tmp_path: Path) -> None:
    wheel = _tiny_wheel(tmp_path)
    script = """
set -e
python3 -m venv .venv
pip='.venv/bin/python -m pip --disable-pip-version-check'
$pip install -q --no-index --find-links wheels tinyjob
.venv/bin/python -c 'import tinyjob; print(tinyjob.hello())'
$pip list --format=freeze | grep tinyjob
"""
    out = jobs.compare(script, setup=f"mkdir wheels && cp {wheel} wheels/", timeout=240)
    assert "hello from tinyjob" in out and "tinyjob==1.0" in out


MAKE = """
set -e
mkdir -p src
cat > src/greet.c <<'C'
#include <stdio.h>
#include "greet.h"
void greet(const char *who) { printf("hello, %s\\n", who); }
C
cat > src/greet.h <<'C'
void greet(const char *who);
C
cat > src/main.c <<'C'
#include "greet.h"
int main(void) { greet("make"); return 0; }
C
printf 'CFLAGS=-O1 -Wall\\nhello: src/main.o src/greet.o\\n\\t$(CC) -o $@ $^\\n' > Makefile
printf 'src/%%.o: src/%%.c src/greet.h\\n\\t$(CC) $(CFLAGS) -Isrc -c -o $@ $<\\n' >> Makefile
printf 'clean:\\n\\trm -f hello src/*.o\\n' >> Makefile
make -s && ./hello && make -s clean && ls
"""


def test_gcc_and_make(jobs: Jobs) -> None:
    assert "hello, make" in jobs.compare(MAKE)


PIPELINE = """
set -e
echo from-a-pipe | cat /dev/stdin
echo via-proc | cat /proc/self/fd/0
exec 3< <(printf 'fd-three\\n')
cat /dev/fd/3
diff <(printf 'a\\nb\\n') <(printf 'a\\nc\\n') || echo "diff says $?"
paste <(seq 3) <(seq 4 6)
echo to-stdout > /dev/stdout
mkdir -p tree/sub/deeper && echo leaf > tree/sub/deeper/leaf.txt
chmod 640 tree/sub/deeper/leaf.txt
tar czf tree.tgz tree
tar czf - tree | gzip -dc | tar tvf - | awk '{print $1, $NF}' | sort
printf 'squeeze me\\n' | gzip | gzip -d
sort <<< $'b\\na'
"""


def test_a_bash_pipeline_with_dev_stdin_fds_process_substitution_tar_and_gzip(jobs: Jobs) -> None:
    out = jobs.compare(PIPELINE)
    assert "from-a-pipe" in out and "fd-three" in out
    assert "-rw-r----- tree/sub/deeper/leaf.txt" in out


UNTAR = """
set -e
mkdir -p tree/sub/deeper && echo leaf > tree/sub/deeper/leaf.txt
chmod 640 tree/sub/deeper/leaf.txt
tar czf tree.tgz tree && rm -r tree
tar xzf tree.tgz && cat tree/sub/deeper/leaf.txt
stat -c '%a %n' tree tree/sub tree/sub/deeper tree/sub/deeper/leaf.txt
"""


def test_tar_extracts_an_archive_with_directories(jobs: Jobs) -> None:
    assert "755 tree/sub" in jobs.compare(UNTAR)


SQLITE = """
set -e
sqlite3 shop.db 'CREATE TABLE items(name TEXT, price REAL);'
sqlite3 shop.db "INSERT INTO items VALUES ('pen', 1.5), ('book', 12.0);"
printf 'SELECT name, price FROM items ORDER BY price;\\n' | sqlite3 -header -csv shop.db
sqlite3 shop.db 'SELECT count(*), sum(price) FROM items;'
"""


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 CLI is not installed")
def test_the_sqlite3_cli(jobs: Jobs) -> None:
    assert "pen,1.5" in jobs.compare(SQLITE)


def test_import_requests(jobs: Jobs) -> None:
    pytest.importorskip("requests")
    script = "python3 -c 'import requests, urllib3; print(requests.__name__, urllib3.__name__)'"
    assert "requests urllib3" in jobs.compare(script)


NPM = """
set -e
mkdir -p lib/leftpad app
cat > lib/leftpad/package.json <<'J'
{"name": "leftpad-local", "version": "1.0.0", "main": "index.js"}
J
echo 'module.exports = (s, n) => String(s).padStart(n);' > lib/leftpad/index.js
export npm_config_update_notifier=false  # the bare run must not look online either
cd app && npm init -y > /dev/null
npm install --offline --no-audit --no-fund --silent ../lib/leftpad
node -e 'console.log(JSON.stringify(require("leftpad-local")("x", 4)))'
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_npm_install_of_a_local_package(jobs: Jobs) -> None:
    assert '"   x"' in jobs.compare(NPM, timeout=180)


# ---------------------------------------------------------------- secrets

# One or more readable files per secret rule of strict.  {home} and {ws} are
# the job's home and workspace; a rule added to strict without a sample here
# fails test_every_secret_rule_has_a_sample.
SECRET_SAMPLES: dict[str, list[str]] = {
    "secret-ssh": ["{home}/.ssh/id_rsa", "{home}/.ssh/config"],
    "secret-aws": ["{home}/.aws/credentials"],
    "secret-gnupg": ["{home}/.gnupg/private-keys-v1.d/key.key"],
    "secret-gcloud": ["{home}/.config/gcloud/credentials.db"],
    "secret-kube": ["{home}/.kube/config"],
    "secret-docker": ["{home}/.docker/config.json"],
    "secret-netrc": ["{home}/.netrc"],
    "secret-pem": ["{home}/tls/server.pem"],
    "secret-key-file": ["{home}/tls/server.key"],
    "secret-id-rsa": ["{home}/backup/id_rsa.old"],
    "secret-id-ed25519": ["{home}/id_ed25519"],
    "secret-shadow": ["/etc/shadow"],
    "secret-gshadow": ["/etc/gshadow"],
    "secret-sudoers": ["/etc/sudoers"],
    "secret-sudoers-d": ["/etc/sudoers.d/README"],
    "secret-dotenv": ["{ws}/.env"],
    "secret-dotenv-variants": ["{ws}/.env.production"],
    "secret-key-store": ["{home}/certs/client.p12", "{home}/privkey1.pem", "{home}/vault.kdbx"],
    "secret-ssl-private": ["/etc/ssl/private/ssl-cert-snakeoil.key"],
    "secret-home-credentials": [
        "{home}/.config/gh/hosts.yml",
        "{home}/.config/git/credentials",
        "{home}/.pgpass",
        "{home}/.cargo/credentials.toml",
        "{home}/.local/share/keyrings/login.keyring",
        "{home}/.vault-token",
    ],
}


def _secret_paths(jobs: Jobs) -> list[tuple[str, str]]:
    fill = {"home": str(jobs.home), "ws": str(jobs.workspace)}
    return [(rule, p.format(**fill)) for rule, paths in SECRET_SAMPLES.items() for p in paths]


def test_every_secret_rule_has_a_sample() -> None:
    strict = resolve_policy("strict", Path("/nonexistent-policy-dir"))
    secret_rules = {rule.id for rule in strict.rules if rule.id.startswith("secret-")}
    assert secret_rules <= set(SECRET_SAMPLES), secret_rules - set(SECRET_SAMPLES)


# Secrets that ordinary tools read on their own, refused quietly (the tool
# goes on without them) rather than killed: curl, git and requests read
# ~/.netrc on every call where it exists.
QUIET_SECRETS = {"secret-netrc"}


def test_every_sample_is_a_killing_secret_in_the_policy(jobs: Jobs) -> None:
    ctx = RunContext(str(jobs.workspace), str(jobs.home), "job")
    strict = compile_policy(resolve_policy("strict", Path("/nonexistent-policy-dir")), ctx)
    for rule, path in _secret_paths(jobs):
        decision = strict.evaluate(Event(ActionType.FILE_READ, path))
        mode = ViolationMode.BLOCK if rule in QUIET_SECRETS else ViolationMode.SIGKILL
        assert (decision.verdict, decision.on_violation) == (Verdict.DENY, mode)
        assert decision.rule_id.startswith("secret-"), (path, rule, decision)


def test_every_secret_is_still_unreadable_under_strict(jobs: Jobs) -> None:
    """cat of each planted secret kills the agent (a quiet one fails the cat);
    none of its bytes come out."""
    jobs.reset("")
    samples = []
    for rule, path in _secret_paths(jobs):
        target = Path(path)
        if not target.exists():
            if not str(target).startswith((str(jobs.home), str(jobs.workspace))):
                continue  # a system file this host lacks: the policy test covers it
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(FAKE_SECRET)
        samples.append((rule, path))

    def attempt(index: int) -> tuple[str, str, subprocess.CompletedProcess[str]]:
        rule, path = samples[index]
        result = jobs.supervised(f"cat '{path}'; echo survived", 60, agent_id=f"secret-{index}")
        return rule, path, result

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(attempt, range(len(samples))))
    for rule, path, result in outcomes:
        assert "PRIVATE" not in result.stdout, path
        if rule in QUIET_SECRETS:
            assert result.stdout.strip() == "survived", (rule, path, result.stderr)
            continue
        assert result.returncode == 137, (rule, path, result.stdout, result.stderr)
        assert "survived" not in result.stdout, path
        assert f"file_read {path}" in result.stderr, (rule, result.stderr)


# Key and certificate files inside the workspace: a repository's fixtures.
# Written like any file, never read, moved away, made executable or run, and
# refused quietly rather than killed (workspace-key-read).
WORKSPACE_KEY_SAMPLES = [
    "{ws}/tls/server.pem",
    "{ws}/tls/server.key",
    "{ws}/backup/id_rsa.old",
    "{ws}/id_ed25519",
    "{ws}/certs/client.p12",
    "{ws}/privkey1.pem",
]


def test_workspace_key_files_are_written_but_never_read(jobs: Jobs) -> None:
    ctx = RunContext(str(jobs.workspace), str(jobs.home), "job")
    strict = compile_policy(resolve_policy("strict", Path("/nonexistent-policy-dir")), ctx)
    for sample in WORKSPACE_KEY_SAMPLES:
        path = sample.format(ws=jobs.workspace)
        write = strict.evaluate(Event(ActionType.FILE_WRITE, path))
        assert (write.verdict, write.rule_id) == (Verdict.ALLOW, "workspace"), path
        # An exec maps the file (the kernel reads it for the agent): no x bit, no run.
        refusals = (
            ActionType.FILE_READ,
            ActionType.FILE_MOVE,
            ActionType.FILE_CHMOD,
            ActionType.PROCESS_SPAWN,
        )
        for action in refusals:
            refused = strict.evaluate(Event(action, path))
            assert (refused.verdict, refused.on_violation, refused.rule_id) == (
                Verdict.DENY,
                ViolationMode.BLOCK,
                "workspace-key-read",
            ), (action, path)
    bundle = strict.evaluate(Event(ActionType.FILE_READ, f"{jobs.workspace}/.venv/cacert.pem"))
    assert bundle.verdict is Verdict.ALLOW


OWN_TMP_FIXTURES = (
    "d=$(mktemp -d) && printf k > $d/server.key && printf c > $d/cert.pem && "
    "printf A=1 > $d/.env && printf s > $d/id_rsa && "
    "cat $d/server.key $d/cert.pem $d/.env $d/id_rsa && rm -r $d"
)


def test_a_tests_keys_and_env_in_its_private_tmp_are_its_own() -> None:
    """A test suite makes a TLS fixture, a key and a .env in pytest's tmp_path
    (the agent's private /tmp) and reads them back: no one's secret but the
    agent's own, so strict lets it, as bare (it was killed, `secret-pem`).
    The workspace and home lie outside /tmp here, as they usually do."""
    root = locations_root()
    try:
        for sub in ("workspace", "home", "policies", "log", "state", "run"):
            (root / sub).mkdir()
        env = {
            "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(root / "home"),
            "LANG": "C.UTF-8",
            "AGENTSUP_POLICY_DIR": str(root / "policies"),
            "AGENTSUP_AUDIT_LOG": str(root / "log" / "audit.jsonl"),
            "AGENTSUP_STATE_DIR": str(root / "state"),
            "AGENTSUP_RUNTIME_DIR": str(root / "run"),
        }
        command = [sys.executable, "-m", "agentsup", "run", "--policy", "strict"]
        command += ["--workspace", str(root / "workspace"), "--", "bash", "-c", OWN_TMP_FIXTURES]
        done = subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
        )
        assert (done.returncode, done.stdout) == (0, "kcA=1s"), done.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_private_tmp_holding_the_hosts_home_keeps_its_secrets(jobs: Jobs) -> None:
    """The same where the home lies under /tmp (bound back into the private
    /tmp, so not all of it is the agent's own): the secret rules apply there
    as anywhere, and the first key written kills."""
    jobs.reset("")
    done = jobs.supervised(OWN_TMP_FIXTURES, 60, agent_id="own-tmp")
    assert str(jobs.home).startswith("/tmp/"), jobs.home
    assert done.returncode == 137, (done.stdout, done.stderr)
    assert "rule 'secret-key-file' denied file_write" in done.stderr, done.stderr


# ---------------------------------------------------------------- mediator
# Steps ordinary tools take where the mediator must answer as the kernel does,
# before any rule: mkdir -p of what exists, probes for optional files (curl's
# ~/.curlrc, libcurl's ~/.netrc), urllib3's IPv6 probe.

KERNEL_ANSWERS = {
    "mkdir-existing": 'mkdir /usr || echo "mkdir says $?"',
    "read-absent": 'cat /var/log/absent-file || echo "cat says $?"',
    "read-absent-secret": 'cat "$HOME/.ssh/absent" || echo "cat says $?"',
    "bind-loopback-port-0": (
        'python3 -c \'import socket; socket.socket(socket.AF_INET6).bind(("::1", 0)); '
        'print("bound")\''
    ),
}


@pytest.mark.parametrize("script", list(KERNEL_ANSWERS.values()), ids=list(KERNEL_ANSWERS))
def test_steps_the_mediator_must_answer_as_the_kernel_does(jobs: Jobs, script: str) -> None:
    jobs.compare(script)


def test_a_python_with_another_agentsup_installed_gets_this_ones_hook(sandbox: Sandbox) -> None:
    """A Python that has agentsup installed too (an editable checkout, another
    version) loads the audit hook from its own copy through the .pth file:
    where the policy refuses reading that copy (it lies outside the
    workspace), the Python could not start (exit 125).  The hook of the
    supervisor that runs the agent is the one to install: the copy is never read."""
    venv = sandbox.workspace / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    shutil.copy(Path(__file__).parent.parent / "hooks" / "agentsup-hook.pth", site)
    elsewhere = locations_root()  # outside the workspace: strict refuses reading it
    try:
        (elsewhere / "agentsup" / "hooks").mkdir(parents=True)
        for name in ("agentsup/__init__.py", "agentsup/hooks/__init__.py"):
            (elsewhere / name).write_text("")
        (elsewhere / "agentsup" / "hooks" / "_hook.py").write_text("raise SystemExit('stale')\n")
        # As an editable install's: read before agentsup-hook.pth.
        (site / "__editable__.agentsup-0.1.0.pth").write_text(f"{elsewhere}\n")
        code = "import sys; print('_agentsup_hook_installed' in sys.modules)"
        result = sandbox.run(str(venv / "bin" / "python"), "-c", code)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split() == ["True"]
        # The .pth stands back only for the supervisor's hooks/site itself: not
        # for any directory on sys.path an agent names (with -E no
        # sitecustomize runs, and the .pth is the hook's one way in).
        stdlib = sysconfig.get_paths()["stdlib"]
        result = sandbox.run(
            "env", f"AGENTSUP_HOOK_SITE={stdlib}", str(venv / "bin" / "python"), "-E", "-c", code
        )
        assert result.returncode == 125, (result.stdout, result.stderr[-2000:])
        assert "cannot install the audit hook" in result.stderr
    finally:
        shutil.rmtree(elsewhere)


def test_a_toolchain_in_the_home_is_read_under_strict(sandbox: Sandbox) -> None:
    """A version manager's interpreter (~/.pyenv, ~/.nvm, ...) reads its own
    library as the system's reads /usr/lib: a pyenv Python could not start
    without it.  A library elsewhere in the home stays unread."""
    root = locations_root()  # a home outside /tmp, where strict lets the agent read
    home = root / "home"
    for place in (".pyenv/versions/9.9/lib", ".nvm/versions/node/v9/lib", ".elsewhere/lib"):
        (home / place).mkdir(parents=True)
        (home / place / "library.txt").write_text(f"{place.split('/')[0]}\n")
    script = (
        "cat ~/.pyenv/versions/9.9/lib/library.txt ~/.nvm/versions/node/v9/lib/library.txt; "
        "cat ~/.elsewhere/lib/library.txt 2>/dev/null || echo elsewhere refused"
    )
    try:
        result = sandbox.run("/bin/sh", "-c", script, env={"HOME": str(home)})
    finally:
        shutil.rmtree(root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == [".pyenv", ".nvm", "elsewhere refused"]


@pytest.mark.skipif(shutil.which("cargo") is None, reason="cargo not installed")
def test_cargo_builds_a_crate_under_strict(sandbox: Sandbox) -> None:
    """rustup's proxy and cargo read ~/.rustup and ~/.cargo; their credentials stay refused."""
    home = os.environ.get("HOME", "")
    crate = sandbox.workspace / "demo"
    (crate / "src").mkdir(parents=True)
    (crate / "Cargo.toml").write_text(
        '[package]\nname = "demo"\nversion = "0.1.0"\nedition = "2021"\n'
    )
    (crate / "src" / "main.rs").write_text('fn main() { println!("built under agentsup"); }\n')
    env = {"HOME": home, "PATH": os.environ.get("PATH", "")}
    result = sandbox.run(
        "/bin/sh", "-c", "cd demo && cargo build -q --offline && ./target/debug/demo",
        env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "built under agentsup"
