"""Bad policy input gets one PolicyError line, at once: never a traceback, never a hang."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agentsup.policy import PolicyError, load_policy_file, load_policy_text, resolve_policy
from agentsup.policy.loader import MAX_EXTENDS_DEPTH, MAX_YAML_DEPTH
from agentsup.policy.sources import MAX_POLICY_BYTES

# Each case is answered in milliseconds; the bound only catches a hang.
PROMPT_SECONDS = 2.0


def load_error(path: Path, policy_dir: Path) -> PolicyError:
    start = time.perf_counter()
    with pytest.raises(PolicyError) as caught:
        load_policy_file(path, policy_dir)
    assert time.perf_counter() - start < PROMPT_SECONDS
    return caught.value


def text_error(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "p.yaml", Path("/nonexistent-policy-dir"))
    return caught.value


# ---------------------------------------------------------------- extends


def test_diamond_extends_twenty_five_deep_loads_at_once(tmp_path: Path) -> None:
    # Level n extends both files of level n-1: 2^25 paths, 50 files.
    base = "  - {id: base, actions: [file_read], target: /b, decision: allow}\n"
    (tmp_path / "l0a.yaml").write_text("name: l0a\nrules:\n" + base)
    (tmp_path / "l0b.yaml").write_text("name: l0b\nextends: [l0a.yaml]\n")
    for level in range(1, 25):
        below = f"[l{level - 1}a.yaml, l{level - 1}b.yaml]"
        (tmp_path / f"l{level}a.yaml").write_text(f"name: l{level}a\nextends: {below}\n")
        (tmp_path / f"l{level}b.yaml").write_text(f"name: l{level}b\nextends: {below}\n")
    start = time.perf_counter()
    policy = load_policy_file(tmp_path / "l24a.yaml", tmp_path)
    assert time.perf_counter() - start < PROMPT_SECONDS
    assert [rule.id for rule in policy.rules] == ["base"]


def _chain(directory: Path, length: int) -> Path:
    (directory / "c0.yaml").write_text("name: c0\n")
    for index in range(1, length):
        (directory / f"c{index}.yaml").write_text(f"name: c{index}\nextends: [c{index - 1}.yaml]\n")
    return directory / f"c{length - 1}.yaml"


def test_an_extends_chain_of_the_maximum_depth_loads(tmp_path: Path) -> None:
    policy = load_policy_file(_chain(tmp_path, MAX_EXTENDS_DEPTH), tmp_path)
    assert policy.name == f"c{MAX_EXTENDS_DEPTH - 1}"


@pytest.mark.parametrize("length", [MAX_EXTENDS_DEPTH + 1, 1000])
def test_a_deeper_extends_chain_is_refused_where_it_goes_too_deep(
    tmp_path: Path, length: int
) -> None:
    error = load_error(_chain(tmp_path, length), tmp_path)
    assert error.path == str(tmp_path / f"c{length - MAX_EXTENDS_DEPTH}.yaml")
    assert (error.line, error.column) == (2, 11)
    assert f"more than {MAX_EXTENDS_DEPTH}" in error.message


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("x" * 300, "unknown policy"),
        ("x" * 300 + ".yaml", "name too long"),
        ("/" + "x" * 300, "name too long"),
        ("bad\0name.yaml", "null"),
        ("/dev/zero", "not a regular file"),
        (".", "unknown policy"),
    ],
    ids=["long-name", "long-file", "long-path", "nul", "device", "dot"],
)
def test_an_odd_extends_reference_is_one_error_at_its_position(
    tmp_path: Path, reference: str, problem: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f'name: p\nextends:\n  - "{reference.replace(chr(0), chr(92) + "0")}"\n')
    error = load_error(path, tmp_path)
    assert (error.path, error.line, error.column) == (str(path), 3, 5)
    assert problem in error.message.lower()
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    "reference", ["x" * 300, "x" * 300 + ".yaml", "/" + "x" * 300, "/dev/zero", "a\0b"]
)
def test_an_odd_policy_value_is_one_error(tmp_path: Path, reference: str) -> None:
    with pytest.raises(PolicyError) as caught:
        resolve_policy(reference, tmp_path)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- the file itself


def test_a_policy_someone_else_could_change_is_refused(tmp_path: Path) -> None:
    """Red team 25: a sealed policy extended a file in a directory anyone could
    write; user `nobody` rewrote it to allow every read, and the agent read a
    `.env` strict refuses.  A policy file, by `--policy` or `extends`, is
    trusted as agentsup's locations are."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    base = shared / "base.yaml"
    base.write_text("name: base\nextends: [strict]\n")
    sealed = tmp_path / "sealed"
    sealed.mkdir()
    child = sealed / "child.yaml"
    child.write_text(f"name: child\nextends: [{base}]\n")
    error = load_error(child, sealed)
    assert (error.line, error.column) == (2, 11)
    assert f"cannot be trusted: {shared} is writable by anyone" in str(error)
    with pytest.raises(PolicyError, match=f"{base}:1:1: cannot be trusted: "):
        resolve_policy(str(base), sealed)
    shared.chmod(0o755)
    base.chmod(0o666)
    with pytest.raises(PolicyError, match=f"cannot be trusted: {base} is writable by anyone"):
        resolve_policy(str(base), sealed)
    base.chmod(0o644)
    assert resolve_policy(str(child), sealed).name == "child"


def test_a_device_is_not_read(tmp_path: Path) -> None:
    error = load_error(Path("/dev/zero"), tmp_path)
    assert "not a regular file" in error.message


def test_a_fifo_is_not_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)
    error = load_error(fifo, tmp_path)
    assert "not a regular file" in error.message


def test_a_directory_is_not_a_policy(tmp_path: Path) -> None:
    assert "not a regular file" in load_error(tmp_path, tmp_path).message


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n# " + "x" * MAX_POLICY_BYTES + "\n")
    error = load_error(big, tmp_path)
    assert str(MAX_POLICY_BYTES) in error.message


def test_a_file_that_is_not_utf8_names_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"name: p\ndescription: caf\xe9\n")
    error = load_error(path, tmp_path)
    assert (error.line, error.column) == (2, 17)
    assert "UTF-8" in error.message


# ---------------------------------------------------------------- the YAML


@pytest.mark.parametrize(
    "text",
    [
        "name: x\nrules: " + "[" * 100_000,
        "name: x\nrules: " + "[" * 10_000 + "]" * 10_000,
        "name: x\nrules:\n" + "".join("  " * i + "- \n" for i in range(5_000)),
        "name: x\nrules: " + "{a: " * 10_000 + "b" + "}" * 10_000,
    ],
    ids=["unclosed", "balanced", "block", "mappings"],
)
def test_deeply_nested_yaml_is_refused_without_recursing(text: str) -> None:
    start = time.perf_counter()
    error = text_error(text)
    assert time.perf_counter() - start < PROMPT_SECONDS
    assert error.line >= 2


def test_nesting_up_to_the_limit_reads_as_usual() -> None:
    depth = MAX_YAML_DEPTH - 1  # the top-level mapping is one level
    text = "name: x\ndescription: " + "[" * depth + "]" * depth + "\n"
    assert "must be a string" in text_error(text).message


RULE = "name: x\nrules:\n  - {{id: r, actions: [file_read], target: /x, decision: allow, {}}}\n"
HUGE = "1" + "0" * 5000


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (RULE.format("priority: " + HUGE), HUGE),
        (RULE.format("priority: !!int abc"), "!!int"),
        (RULE.format("rate_limit: {max: 1, per_seconds: " + HUGE[:400] + "}"), HUGE[:400]),
        ("name: x\napproval: {timeout_seconds: !!float abc}\n", "!!float"),
        ("name: x\napproval: {timeout_seconds: " + HUGE[:400] + "}\n", HUGE[:400]),
        ("name: x\nlimits: {memory_mb: " + HUGE + "}\n", HUGE),
    ],
    ids=["huge-int", "bad-int-tag", "huge-period", "bad-float-tag", "huge-float", "huge-limit"],
)
def test_a_number_python_cannot_read_is_one_error_at_it(text: str, value: str) -> None:
    error = text_error(text)
    line = text.splitlines()[error.line - 1]
    assert error.column == line.index(value) + 1


def test_text_that_cannot_be_encoded_is_one_error() -> None:
    assert text_error("name: \udc80\n").line == 1
