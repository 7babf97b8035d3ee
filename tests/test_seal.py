"""The sealed policy directory: hashing, the manifest's mac, tamper reasons, seal/unseal, CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sealing import EXTRA_RULE, HAS_CHATTR, TEAM, clear_immutable, fresh_code, team_locations

from agentsup.cli.seal import register_seal_commands
from agentsup.integrity.audit import load_key, read_head, verify_log
from agentsup.integrity.seal import (
    Entry,
    Manifest,
    SealError,
    Snapshot,
    TamperDetected,
    check_sealed,
    compare,
    hash_directory,
    read_manifest,
    seal,
    tamper_marker_path,
    unseal,
    write_tamper_marker,
)
from agentsup.integrity.totp import TotpRefused
from agentsup.paths import Locations
from agentsup.policy import PolicyError, load_policy_file


def chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


def lsattr_immutable(path: Path) -> bool:
    out = subprocess.run(
        ["lsattr", "-d", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return "i" in out.split()[0]


def fs_supports_immutable(directory: Path) -> bool:
    probe = directory / ".probe"
    probe.write_text("x")
    try:
        done = subprocess.run(["chattr", "+i", str(probe)], capture_output=True)
        if done.returncode != 0:
            return False
        chattr("-i", probe)
        return True
    finally:
        probe.unlink()


@pytest.fixture(autouse=True)
def _clear_immutable(tmp_path: Path) -> Iterator[None]:
    # Immutable leftovers would make pytest's tmp_path cleanup fail.
    yield
    clear_immutable(tmp_path)


@pytest.fixture
def loc(locations: Path) -> Locations:
    locs = team_locations()
    (locs.policy_dir / "sub").mkdir()
    (locs.policy_dir / "sub" / "notes.txt").write_text("not a policy\n")
    return locs



def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def audit_records(locs: Locations) -> list[dict[str, object]]:
    if not locs.audit_log.exists():
        return []
    return [json.loads(line) for line in locs.audit_log.read_text().splitlines()]


needs_immutable = pytest.mark.skipif(not HAS_CHATTR, reason="chattr/lsattr not installed")


# ------------------------------------------------------------------ hashing


def test_hash_directory_covers_every_regular_file_recursively(loc: Locations) -> None:
    hashes = hash_directory(loc.policy_dir)
    assert hashes == {
        "team.yaml": hashlib.sha256(TEAM.encode()).hexdigest(),
        "sub/notes.txt": hashlib.sha256(b"not a policy\n").hexdigest(),
    }


def test_hash_directory_refuses_symlinks(loc: Locations) -> None:
    (loc.policy_dir / "link.yaml").symlink_to(loc.policy_dir / "team.yaml")
    with pytest.raises(SealError, match=r"link\.yaml: symlinks are not allowed"):
        hash_directory(loc.policy_dir)


# ------------------------------------------------------------- manifest mac


def _manifest(**changes: object) -> Manifest:
    fields: dict[str, object] = {
        "state": "sealed",
        "directory": "/etc/agentsup/policies",
        "files": {"team.yaml": "ab" * 32},
        "dirs": (".",),
        "immutable": (".", "team.yaml"),
        "owner_uid": 0,
        "generation": 7,
        "sealed_at": "2026-01-01T00:00:00.000000Z",
        "sealed_by_uid": 0,
    }
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


def test_manifest_round_trips_with_its_mac() -> None:
    key = b"k" * 32
    manifest = _manifest().signed(key)
    assert Manifest.from_json(manifest.to_json(), key) == manifest


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["files"].update({"team.yaml": "cd" * 32}), "mac is bad"),
        (lambda d: d.update(state="unsealed"), "mac is bad"),
        (lambda d: d.pop("generation"), "malformed"),
        (lambda d: d.update(owner_uid="0"), "malformed"),
    ],
)
def test_manifest_edits_are_detected(
    edit: Callable[[dict[str, object]], object], message: str
) -> None:
    key = b"k" * 32
    data = json.loads(_manifest().signed(key).to_json())
    edit(data)
    with pytest.raises(TamperDetected, match=message):
        Manifest.from_json(json.dumps(data), key)


def test_manifest_made_with_another_key_is_rejected() -> None:
    text = _manifest().signed(b"a" * 32).to_json()
    with pytest.raises(TamperDetected, match="mac is bad"):
        Manifest.from_json(text, b"b" * 32)


def test_read_manifest_none_when_never_sealed(loc: Locations) -> None:
    assert read_manifest(loc) is None
    assert check_sealed(loc).state == "never_sealed"


# ----------------------------------------------------------- compare (pure)


def _snapshot(**overrides: Entry) -> Snapshot:
    entries = {
        ".": Entry("dir", 0o555, 0, True),
        "team.yaml": Entry("file", 0o444, 0, True, "ab" * 32),
    }
    entries.update(overrides)
    return Snapshot("/etc/agentsup/policies", entries)


@pytest.mark.parametrize(
    ("snapshot", "reason"),
    [
        (_snapshot(), None),
        (
            _snapshot(**{"team.yaml": Entry("file", 0o444, 0, True, "cd" * 32)}),
            "team.yaml: modified",
        ),
        (_snapshot(**{"team.yaml": Entry("file", 0o644, 0, True, "ab" * 32)}), "mode 0644"),
        (_snapshot(**{"team.yaml": Entry("file", 0o444, 1000, True, "ab" * 32)}), "owner uid 1000"),
        (
            _snapshot(**{"team.yaml": Entry("file", 0o444, 0, False, "ab" * 32)}),
            "team.yaml: immutable flag removed",
        ),
        (_snapshot(**{"x.yaml": Entry("file", 0o444, 0, True, "00" * 32)}), "x.yaml: file added"),
        (_snapshot(**{"l.yaml": Entry("symlink", 0o777, 0, None)}), "l.yaml: symlink added"),
        (_snapshot(**{"d": Entry("dir", 0o555, 0, True)}), "policies/d: directory added"),
        (Snapshot("/etc/agentsup/policies", {}, missing=True), "policy directory removed"),
        (Snapshot("/elsewhere", {}), "manifest is for /etc/agentsup/policies"),
    ],
)
def test_compare_names_what_differs(snapshot: Snapshot, reason: str | None) -> None:
    reasons = compare(_manifest(), snapshot)
    if reason is None:
        assert reasons == []
    else:
        assert any(reason in r for r in reasons), reasons


def test_compare_reports_removed_files() -> None:
    snapshot = Snapshot("/etc/agentsup/policies", {".": Entry("dir", 0o555, 0, True)})
    assert compare(_manifest(), snapshot) == ["/etc/agentsup/policies/team.yaml: file removed"]


# -------------------------------------------------------------- seal, unseal


def test_seal_locks_the_directory_and_writes_a_manifest(loc: Locations) -> None:
    manifest = seal(loc, fresh_code(loc), uid=0)
    assert manifest.state == "sealed"
    assert manifest.files.keys() == {"team.yaml", "sub/notes.txt"}
    for path in (loc.policy_dir, loc.policy_dir / "sub"):
        assert mode_of(path) == 0o555
    for path in (loc.policy_dir / "team.yaml", loc.policy_dir / "sub" / "notes.txt"):
        assert mode_of(path) == 0o444
    assert mode_of(loc.policy_manifest) == 0o600
    assert read_manifest(loc) == manifest
    status = check_sealed(loc)
    assert status.state == "ok", status.reasons
    records = [r for r in audit_records(loc) if r["kind"] == "policy"]
    assert [r["event"] for r in records] == ["seal"]
    assert verify_log(loc.audit_log, load_key(loc.audit_key), read_head(loc.audit_head)).ok


@pytest.mark.requires_root
def test_seal_makes_everything_root_owned(loc: Locations) -> None:
    os.chown(loc.policy_dir / "team.yaml", 1000, 1000)
    seal(loc, fresh_code(loc), uid=0)
    for path in (loc.policy_dir, loc.policy_dir / "team.yaml", loc.policy_dir / "sub"):
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (0, 0)


@needs_immutable
@pytest.mark.requires_root
def test_seal_sets_chattr_i_where_supported(loc: Locations) -> None:
    if not fs_supports_immutable(loc.policy_dir):
        pytest.skip("this filesystem does not support chattr +i")
    manifest = seal(loc, fresh_code(loc), uid=0)
    assert set(manifest.immutable) == {".", "sub", "team.yaml", "sub/notes.txt"}
    assert lsattr_immutable(loc.policy_dir / "team.yaml")
    assert lsattr_immutable(loc.policy_dir)
    with pytest.raises(PermissionError):
        (loc.policy_dir / "team.yaml").open("a")  # even root cannot write
    unseal(loc, fresh_code(loc), uid=0)
    assert not lsattr_immutable(loc.policy_dir / "team.yaml")


def test_seal_with_a_wrong_code_changes_nothing(loc: Locations) -> None:
    right = fresh_code(loc)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    with pytest.raises(TotpRefused, match="wrong TOTP code"):
        seal(loc, wrong, uid=0)
    assert read_manifest(loc) is None
    assert mode_of(loc.policy_dir / "team.yaml") != 0o444
    refused = [r for r in audit_records(loc) if r.get("outcome") == "refused"]
    assert [r["event"] for r in refused] == ["seal"]


def test_a_code_is_accepted_once(loc: Locations) -> None:
    code = fresh_code(loc)
    seal(loc, code, uid=0)
    with pytest.raises(TotpRefused, match="already used"):
        unseal(loc, code, uid=0)
    assert check_sealed(loc).state == "ok"


def test_seal_refuses_an_invalid_policy_and_keeps_the_code(loc: Locations) -> None:
    bad = loc.policy_dir / "sub" / "bad.yaml"
    bad.write_text("name: bad\ndefault: alow\n")
    code = fresh_code(loc)
    with pytest.raises(PolicyError) as caught:
        seal(loc, code, uid=0)
    assert str(caught.value).startswith(f"{bad}:2:10:")
    assert read_manifest(loc) is None
    bad.unlink()
    seal(loc, code, uid=0)  # the code was not used up by the refusal


def test_seal_refuses_symlinks_before_using_the_code(loc: Locations) -> None:
    (loc.policy_dir / "evil.yaml").symlink_to("/etc/passwd")
    code = fresh_code(loc)
    with pytest.raises(SealError, match="symlinks are not allowed"):
        seal(loc, code, uid=0)
    (loc.policy_dir / "evil.yaml").unlink()
    seal(loc, code, uid=0)


def test_unseal_makes_it_editable_and_reseal_records_the_edit(loc: Locations) -> None:
    sealed = seal(loc, fresh_code(loc), uid=0)
    opened = unseal(loc, fresh_code(loc), uid=0)
    assert opened.state == "unsealed"
    assert opened.generation > sealed.generation
    assert mode_of(loc.policy_dir) == 0o755
    assert mode_of(loc.policy_dir / "team.yaml") == 0o644
    assert check_sealed(loc).state == "unsealed"
    with (loc.policy_dir / "team.yaml").open("a") as policy:
        policy.write(EXTRA_RULE)
    resealed = seal(loc, fresh_code(loc), uid=0)
    assert resealed.files["team.yaml"] != sealed.files["team.yaml"]
    assert check_sealed(loc).state == "ok"
    rule_ids = [r.id for r in load_policy_file(loc.policy_dir / "team.yaml", loc.policy_dir).rules]
    assert "injected" in rule_ids
    events = [r["event"] for r in audit_records(loc) if r["kind"] == "policy"]
    assert events == ["seal", "unseal", "seal"]


def test_unseal_of_an_unsealed_directory_keeps_the_code(loc: Locations) -> None:
    code = fresh_code(loc)
    with pytest.raises(SealError, match="not sealed"):
        unseal(loc, code, uid=0)
    seal(loc, code, uid=0)


# ------------------------------------------------------------ tamper checks


def _append_rule(locs: Locations) -> None:
    path = locs.policy_dir / "team.yaml"
    if HAS_CHATTR:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    os.chmod(path, 0o644)
    with path.open("a") as policy:
        policy.write(EXTRA_RULE)
    os.chmod(path, 0o444)


def _add_file(locs: Locations) -> None:
    if HAS_CHATTR:
        subprocess.run(["chattr", "-i", str(locs.policy_dir)], capture_output=True)
    os.chmod(locs.policy_dir, 0o755)
    (locs.policy_dir / "extra.yaml").write_text(TEAM.replace("team", "extra"))
    os.chmod(locs.policy_dir, 0o555)


def _remove_file(locs: Locations) -> None:
    if HAS_CHATTR:
        subprocess.run(["chattr", "-i", str(locs.policy_dir / "sub")], capture_output=True)
        subprocess.run(["chattr", "-i", str(locs.policy_dir / "sub" / "notes.txt")])
    os.chmod(locs.policy_dir / "sub", 0o755)
    (locs.policy_dir / "sub" / "notes.txt").unlink()
    os.chmod(locs.policy_dir / "sub", 0o555)


def _chmod(locs: Locations) -> None:
    if HAS_CHATTR:
        subprocess.run(["chattr", "-i", str(locs.policy_dir / "team.yaml")], capture_output=True)
    os.chmod(locs.policy_dir / "team.yaml", 0o666)


def _edit_manifest(locs: Locations) -> None:
    data = json.loads(locs.policy_manifest.read_text())
    data["files"]["team.yaml"] = "00" * 32
    locs.policy_manifest.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_append_rule, "team.yaml: modified"),
        (_add_file, "extra.yaml: file added"),
        (_remove_file, "sub/notes.txt: file removed"),
        (_chmod, "team.yaml: mode 0666"),
        (_edit_manifest, "manifest mac is bad"),
    ],
)
def test_check_sealed_names_the_tampering(
    loc: Locations, tamper: Callable[[Locations], None], reason: str
) -> None:
    seal(loc, fresh_code(loc), uid=0)
    tamper(loc)
    status = check_sealed(loc)
    assert status.state == "tampered"
    assert any(reason in r for r in status.reasons), status.reasons
    assert reason.split(":")[0] in status.describe()


@needs_immutable
@pytest.mark.requires_root
def test_check_sealed_notices_chattr_minus_i_alone(loc: Locations) -> None:
    if not fs_supports_immutable(loc.policy_dir):
        pytest.skip("this filesystem does not support chattr +i")
    seal(loc, fresh_code(loc), uid=0)
    chattr("-i", loc.policy_dir / "sub" / "notes.txt")
    status = check_sealed(loc)
    assert status.reasons == [
        f"{os.path.realpath(loc.policy_dir)}/sub/notes.txt: immutable flag removed (chattr -i)"
    ]


def test_missing_audit_key_means_tampered(loc: Locations) -> None:
    seal(loc, fresh_code(loc), uid=0)
    loc.audit_key.unlink()
    status = check_sealed(loc)
    assert status.state == "tampered"
    assert "no audit key" in status.reasons[0]


def test_tamper_marker_holds_until_a_new_seal(loc: Locations) -> None:
    manifest = seal(loc, fresh_code(loc), uid=0)
    write_tamper_marker(loc, manifest.generation, ["team.yaml: modified"])
    assert check_sealed(loc).reasons == ["team.yaml: modified"]  # files are intact, still refused
    unseal(loc, fresh_code(loc), uid=0)
    assert check_sealed(loc).state == "tampered"  # unsealing does not end it
    seal(loc, fresh_code(loc), uid=0)
    assert check_sealed(loc).state == "ok"
    assert not tamper_marker_path(loc).exists()


# ---------------------------------------------------------------------- CLI


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="agentsup policy")
    register_seal_commands(parser.add_subparsers(dest="policy_command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def test_cli_seal_verify_unseal(loc: Locations, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("verify") == 0
    assert "never sealed" in capsys.readouterr().out
    assert run_cli("seal", "--code", fresh_code(loc)) == 0
    assert "sealed" in capsys.readouterr().out
    assert run_cli("verify") == 0
    assert "sealed and intact (2 files" in capsys.readouterr().out
    assert run_cli("unseal", "--code", fresh_code(loc)) == 0
    assert run_cli("verify", "--json") == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["state"] == "unsealed"


def test_cli_verify_names_the_tampered_file(
    loc: Locations, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("seal", "--code", fresh_code(loc)) == 0
    _append_rule(loc)
    capsys.readouterr()
    assert run_cli("verify") == 1
    assert "team.yaml: modified" in capsys.readouterr().err
    assert run_cli("verify", "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["state"] == "tampered"
    assert any("team.yaml" in reason for reason in report["reasons"])


def test_cli_refusals_exit_1_with_the_reason(
    loc: Locations, capsys: pytest.CaptureFixture[str]
) -> None:
    good = fresh_code(loc)
    assert run_cli("seal", "--code", "000000" if good != "000000" else "111111") == 1
    assert "policy seal refused: wrong TOTP code" in capsys.readouterr().err
    (loc.policy_dir / "bad.yaml").write_text("name: bad\nrules: 3\n")
    assert run_cli("seal", "--code", fresh_code(loc)) == 1
    err = capsys.readouterr().err
    assert f"{loc.policy_dir / 'bad.yaml'}:2:8:" in err
    (loc.policy_dir / "bad.yaml").unlink()
    assert run_cli("unseal", "--code", fresh_code(loc)) == 1
    assert "is not sealed (never sealed)" in capsys.readouterr().err
