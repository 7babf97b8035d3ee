"""Running a file runs its interpreters: what the policy does not let the agent
read, it cannot have the kernel load as one either.

The kernel opens and maps a second file for an exec: an ELF's interpreter
(PT_INTERP, relative names resolved from the cwd) and a #! script's
interpreter (and that one's, a few levels deep).  Red team 14 wrote an ELF
header and code over the start of a drop-box file (written, never read),
named it as the interpreter of a copy of /bin/true or in a #! line, and ran
that: the interpreter printed itself.  Each interpreter of a program the agent
may write is now judged as process_spawn and file_read of its real path, on
the native path and the Python one; ordinary programs still run.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import textwrap
from pathlib import Path

import pytest
from conftest import Sandbox, both_paths, fastpath_env, locations_root, read_for, supervisor_stopped
from test_exec_reads_e2e import DROP_BOX

from agentsup.kernel import fastpath

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

SECRET = "".join(f"the-secret-line-{i} TOPSECRET-{i:04d}-XYZZY\n" for i in range(1, 6))

# The attacking agent, run in the workspace: makes drop/secret an ELF that
# writes all of itself to stdout, then runs it as an interpreter (`mode`).
AGENT = textwrap.dedent(
    r'''
    import os, struct, sys

    mode = sys.argv[1]
    secret = os.path.join(os.getcwd(), "drop/secret")
    size = os.stat(secret).st_size  # (stat is not mediated)
    HDR = 64 + 56  # an ELF header and one program header, then the code
    # lea rsi,[start of file]; write(1, rsi, size); exit_group(0)
    code = b"\x48\x8d\x35" + struct.pack("<i", -(HDR + 7))
    code += b"\xbf\x01\x00\x00\x00\xba" + struct.pack("<I", size) + b"\xb8\x01\x00\x00\x00\x0f\x05"
    code += b"\xb8\xe7\x00\x00\x00\x31\xff\x0f\x05"
    ehdr = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    ehdr += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, HDR, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    span = max(size, HDR + len(code))
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, span, span, 0x1000)
    fd = os.open(secret, os.O_WRONLY)
    os.pwrite(fd, ehdr + phdr + code, 0)
    os.close(fd)
    os.chmod(secret, 0o755)


    def with_interpreter(path, name):
        """A copy of /bin/true whose PT_INTERP is `name` (put at its end)."""
        prog = bytearray(open("/bin/true", "rb").read())
        (phoff,) = struct.unpack_from("<Q", prog, 32)
        entsize, count = struct.unpack_from("<HH", prog, 54)
        for at in range(phoff, phoff + entsize * count, entsize):
            if struct.unpack_from("<I", prog, at)[0] == 3:
                struct.pack_into("<Q", prog, at + 8, len(prog))
                struct.pack_into("<Q", prog, at + 32, len(name) + 1)
                break
        prog += name + b"\0"
        with open(path, "wb") as f:
            f.write(prog)
        os.chmod(path, 0o755)


    def script(path, line):
        with open(path, "w") as f:
            f.write(line + "\n")
        os.chmod(path, 0o755)


    if mode == "elf-relative":
        with_interpreter("tools/prog", b"drop/secret")
        run = "tools/prog"
    elif mode == "elf-absolute":
        with_interpreter("tools/prog", os.fsencode(secret))
        run = "tools/prog"
    elif mode == "script-relative":
        script("tools/s.sh", "#!drop/secret")
        run = "tools/s.sh"
    elif mode == "script-chain":
        script("tools/inner", "#!" + secret)
        script("tools/outer", "#! tools/inner -x")
        run = "tools/outer"
    elif mode in ("magic-link", "dev-fd"):
        # through /proc/self/fd/N (or /dev/fd/N, the agent's own alias for
        # it): one dup2 away from another directory once judged
        os.mkdir("tools/a")
        os.symlink("/lib64/ld-linux-x86-64.so.2", "tools/a/ld")
        held = os.open("tools/a", os.O_PATH)
        alias = b"/proc/self/fd" if mode == "magic-link" else b"/dev/fd"
        with_interpreter("tools/prog", b"%s/%d/ld" % (alias, held))
        run = "tools/prog"
    elif mode == "toolchain":
        # a loader of its own (Nix, Linuxbrew) where the policy names nothing
        with_interpreter("tools/prog", os.fsencode(sys.argv[2]))
        run = "tools/prog"
    else:  # a script whose interpreter is an ELF with the secret as its own
        with_interpreter("tools/inner", b"drop/secret")
        script("tools/outer", "#!tools/inner")
        run = "tools/outer"
    sys.stdout.flush()
    try:
        os.execv(run, [run])
    except OSError as exc:
        print("refused", exc.errno)
    '''
)


def _drop_box(sandbox: Sandbox) -> str:
    for name in ("drop", "tools"):
        (sandbox.workspace / name).mkdir()
    (sandbox.workspace / "drop" / "secret").write_text(SECRET)
    (sandbox.workspace / "agent.py").write_text(AGENT)
    return sandbox.policy("drop-box", DROP_BOX)


@both_paths
@pytest.mark.parametrize(
    "mode", ["elf-relative", "elf-absolute", "script-relative", "script-chain", "script-elf"]
)
def test_an_interpreter_the_agent_may_not_read_is_not_run(
    sandbox: Sandbox, native: bool, mode: str
) -> None:
    """Refused, and the agent ended: a crafted interpreter is an attack, and
    the check races the kernel's own open (red team 15 won 23 of 300 tries
    in a second): a quiet refusal would let it try again until it won."""
    policy = _drop_box(sandbox)
    result = sandbox.run("python3", "agent.py", mode, policy=policy, env=fastpath_env(native))
    assert "TOPSECRET" not in result.stdout + result.stderr
    assert result.returncode == 137, result.stderr[-2000:]
    secret = str((sandbox.workspace / "drop" / "secret").resolve())
    assert "rule 'agentsup-interpreter-refused' denied process_spawn " + secret in result.stderr
    refused = [
        (r["action_type"], r["target"], r["rule"])
        for r in sandbox.audit_records()
        if r.get("decision") == "deny"
    ]
    assert refused == [
        ("process_spawn", secret, "drop-box-unread"),
        (None, secret, "agentsup-interpreter-refused"),
    ]


@both_paths
@pytest.mark.parametrize("mode", ["magic-link", "dev-fd"])
def test_an_interpreter_named_through_a_magic_link_is_not_looked_up(
    sandbox: Sandbox, native: bool, mode: str
) -> None:
    """ELOOP: a /proc/PID/fd/N on the way is one dup2 away from another file
    after the check, with no syscall of agentsup's between (red team 16 won
    14 of 20 so, with no try ever refused)."""
    policy = _drop_box(sandbox)
    result = sandbox.run("python3", "agent.py", mode, policy=policy, env=fastpath_env(native))
    assert result.stdout.strip().splitlines()[-1:] == [f"refused {errno.ELOOP}"], result.stderr
    assert result.returncode == 0


@both_paths
def test_a_loader_the_policy_does_not_know_is_refused_quietly(
    sandbox: Sandbox, native: bool
) -> None:
    """Refused by the policy's default, not a rule: a toolchain of its own
    (Nix, Linuxbrew), refused without ending the agent."""
    policy = _drop_box(sandbox)
    toolchain = locations_root()  # in the agent's view (not under /tmp)
    loader = toolchain / "ld.so"
    shutil.copy("/lib64/ld-linux-x86-64.so.2", loader)
    try:
        result = sandbox.run(
            "python3", "agent.py", "toolchain", str(loader), policy=policy, env=fastpath_env(native)
        )
    finally:
        shutil.rmtree(toolchain)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1:] == [f"refused {errno.EACCES}"], result.stderr
    assert "killed" not in result.stderr


@both_paths
def test_ordinary_programs_in_the_workspace_still_run(sandbox: Sandbox, native: bool) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    policy = _drop_box(sandbox)
    (sandbox.workspace / "hello.c").write_text(
        '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'
    )
    script = (
        "set -e; gcc hello.c -o hello && ./hello; "
        "printf '#!/bin/sh\\necho sh-script\\n' > s.sh && chmod +x s.sh && ./s.sh; "
        "printf '#!/usr/bin/env sh\\necho env-script\\n' > e.sh && chmod +x e.sh && ./e.sh; "
        "printf '#!/usr/bin/env python3\\nprint(\"env-python\")\\n' > p.py && chmod +x p.py && "
        "./p.py; "
        "printf '#!%s/s.sh\\n' \"$PWD\" > chained && chmod +x chained && ./chained; "
        "cp /bin/echo tools/echo && tools/echo copied; "
        "python3 -m venv --without-pip v && v/bin/python -c 'print(1)'"
    )
    result = sandbox.run("sh", "-c", script, policy=policy, env=fastpath_env(native), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [
        "hello", "sh-script", "env-script", "env-python", "sh-script", "copied", "1"
    ]  # fmt: skip
    refused = [r for r in sandbox.audit_records() if r.get("decision") == "deny"]
    assert refused == []


@pytest.mark.requires_root
@both_paths
def test_a_program_the_agent_may_write_and_nobody_may_read_is_not_run(
    sandbox: Sandbox, native: bool
) -> None:
    """Mode 0333: the kernel runs it, but what it names next cannot be read."""
    os.chmod(sandbox.root, 0o755)
    os.chmod(sandbox.workspace, 0o777)
    script = (
        "cp /bin/true blind && chmod 333 blind && ./blind; echo blind $?; "
        "cp /bin/true seen && chmod 755 seen && ./seen; echo seen $?"
    )
    result = sandbox.run(
        "sh", "-c", script, policy="strict", env=fastpath_env(native), extra=["--user", "nobody"]
    )
    assert result.stdout.split("\n")[:2] == ["blind 126", "seen 0"], result.stderr[-2000:]
    refused = [
        (r["target"], r["rule"]) for r in sandbox.audit_records() if r.get("decision") == "deny"
    ]
    blind = str((sandbox.workspace / "blind").resolve())
    assert refused == [(blind, "agentsup-unreadable-program")]


# Runs each program named, one by one, once it reads a line.
RUNNER = textwrap.dedent(
    """
    import subprocess, sys

    print("ready", flush=True)
    sys.stdin.readline()
    for prog in sys.argv[1:]:
        print(prog, subprocess.call([prog]), flush=True)
    """
)


def _with_interpreter(path: Path, name: bytes) -> None:
    """A copy of /bin/true at `path` whose PT_INTERP is `name` (put at its end)."""
    prog = bytearray(Path("/bin/true").read_bytes())
    (phoff,) = struct.unpack_from("<Q", prog, 32)
    entsize, count = struct.unpack_from("<HH", prog, 54)
    for at in range(phoff, phoff + entsize * count, entsize):
        if struct.unpack_from("<I", prog, at)[0] == 3:
            struct.pack_into("<Q", prog, at + 8, len(prog))
            struct.pack_into("<Q", prog, at + 32, len(name) + 1)
            break
    path.write_bytes(bytes(prog + name + b"\0"))
    path.chmod(0o755)


@pytest.mark.skipif(not fastpath.enabled(), reason=fastpath.status()[1])
def test_a_workspace_program_runs_natively_unless_its_interpreter_is_relative(
    sandbox: Sandbox,
) -> None:
    """A program the agent may write, whose interpreter is the system's, is
    still let through by the broker alone; a relative PT_INTERP (opened from
    the agent's cwd) waits for the supervisor, which allows this one."""
    ws = sandbox.workspace
    (ws / "tools").mkdir()
    (ws / "lib").mkdir()
    shutil.copy("/bin/true", ws / "tools" / "plain")
    shutil.copy(os.path.realpath("/lib64/ld-linux-x86-64.so.2"), ws / "lib" / "ld.so")
    _with_interpreter(ws / "tools" / "relative", b"lib/ld.so")
    (ws / "runner.py").write_text(RUNNER)
    proc = sandbox.start("python3", "runner.py", "tools/plain", "tools/relative")
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        out = proc.stdout.fileno()
        with supervisor_stopped(proc):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            seen = read_for(out, 3)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen.decode() == "tools/plain 0\n"
    assert seen.decode() + rest == "tools/plain 0\ntools/relative 0\n"


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"#!/bin/sh\n", b"/bin/sh"),
        (b"#! \t/usr/bin/env python3 -u\nprint()", b"/usr/bin/env"),
        (b"#!drop/secret", b"drop/secret"),
        (b"#!a\tb\n", b"a"),
        (b"#!\n/bin/sh", b""),
        (b"#!\0/bin/sh\n", b""),
    ],
)
def test_the_shebang_is_read_as_binfmt_script_reads_it(head: bytes, name: bytes) -> None:
    from agentsup.supervision.broker import shebang_interpreter

    assert shebang_interpreter(head) == name


def test_pt_interp_is_read_as_binfmt_elf_reads_it(tmp_path: Path) -> None:
    from agentsup.supervision.broker import elf_interpreters

    def interpreters(path: Path) -> tuple[bytes, ...]:
        fd = os.open(path, os.O_RDONLY)
        try:
            return elf_interpreters(fd, os.pread(fd, 256, 0))
        finally:
            os.close(fd)

    prog = tmp_path / "prog"
    _with_interpreter(prog, b"drop/secret")
    assert interpreters(prog) == (b"drop/secret",)
    _with_interpreter(prog, b"/abs\0ignored")
    assert interpreters(prog) == (b"/abs",)
    data = bytearray(prog.read_bytes())
    data[-1:] = b"x"  # no NUL at the end: the kernel refuses it (ENOEXEC)
    prog.write_bytes(bytes(data))
    assert interpreters(prog) == ()
    # A 32-bit header: e_phoff at 28, e_phentsize 32 at 42; PT_INTERP at 52 + 32.
    ehdr = b"\x7fELF\x01\x01\x01" + b"\0" * 9
    ehdr += struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0, 52, 0, 0, 52, 32, 1, 40, 0, 0)
    phdr = struct.pack("<IIIIIIII", 3, 84, 0, 0, 10, 10, 4, 1)
    prog.write_bytes(ehdr + phdr + b"/lib/ld32\0")
    assert interpreters(prog) == (b"/lib/ld32",)
    assert interpreters(Path(os.path.realpath("/lib64/ld-linux-x86-64.so.2"))) == ()
