"""`agentpath.open_as_agent` resolves a name as the kernel would for the agent.

Run in this very process with /proc/self meaning this process, the walk
must open what the kernel itself opens for each name, and fail with the
kernel's errno where it fails.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from agentsup.kernel.agentpath import open_as_agent

OWN_SELF = b"%d" % os.getpid()
OWN_THREAD = b"%d/task/%d" % (os.getpid(), threading.get_native_id())
NO_BROKER = 0  # this process plays the agent: no /proc entry is the broker's


def _kernel(anchor: int, raw: bytes, how: int) -> tuple[int, int] | int:
    try:
        fd = os.open(raw, how, dir_fd=anchor)
    except OSError as exc:
        return exc.errno or 0
    try:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino
    finally:
        os.close(fd)


def _walked(anchor: int, raw: bytes, how: int) -> tuple[int, int] | int:
    try:
        fd, _held = open_as_agent(anchor, raw, how, OWN_SELF, OWN_THREAD, broker=NO_BROKER)
    except OSError as exc:
        return exc.errno or 0
    try:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino
    finally:
        os.close(fd)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / "file").write_text("file\n")
    (tmp_path / "link-dir").symlink_to("dir")
    (tmp_path / "link-abs").symlink_to(tmp_path / "dir" / "file")
    (tmp_path / "link-up").symlink_to("dir/sub/..")
    (tmp_path / "loop-a").symlink_to("loop-b")
    (tmp_path / "loop-b").symlink_to("loop-a")
    (tmp_path / "dangling").symlink_to("nowhere")
    (tmp_path / "cwd").symlink_to("/proc/self/cwd")
    (tmp_path / "fd-dir").symlink_to("/dev/fd")
    (tmp_path / "mounts").symlink_to("/proc/mounts")
    (tmp_path / "status").symlink_to("/proc/thread-self/status")
    return tmp_path


NAMES = [
    b"dir/file",
    b"dir/./sub/../file",
    b"link-dir/file",
    b"link-dir/sub/..",
    b"link-abs",
    b"link-up/file",
    b"loop-a",
    b"dangling",
    b"dir/file/",
    b"dir/missing/x",
    b"dir/file/x",
    b"cwd",
    b"fd-dir",
    b"mounts",
    b"status",
    b"/",
    b"..",
    b"cwd/.",
    b"cwd/",
    b"link-dir/.",
    b"link-abs/",
    b"link-abs/.",
    b"status/",
]


@pytest.mark.parametrize("raw", NAMES, ids=[name.decode() for name in NAMES])
@pytest.mark.parametrize(
    "how",
    [os.O_RDONLY, os.O_PATH, os.O_PATH | os.O_NOFOLLOW, os.O_PATH | os.O_DIRECTORY],
    ids=["read", "path", "nofollow", "directory"],
)
def test_the_walk_opens_what_the_kernel_opens(tree: Path, raw: bytes, how: int) -> None:
    anchor = os.open(tree, os.O_PATH | os.O_DIRECTORY)
    previous = os.getcwd()
    os.chdir(tree)  # /proc/self/cwd, for the kernel and the walk alike
    try:
        assert _walked(anchor, raw, how | os.O_CLOEXEC) == _kernel(anchor, raw, how | os.O_CLOEXEC)
    finally:
        os.chdir(previous)
        os.close(anchor)


def test_a_held_fd_reached_through_a_symlink_is_marked_held(tree: Path) -> None:
    fd = os.open(tree / "dir" / "file", os.O_RDONLY)
    try:
        (tree / "mine").symlink_to(f"/proc/self/fd/{fd}")
        anchor = os.open(tree, os.O_PATH | os.O_DIRECTORY)
        opened, held = open_as_agent(
            anchor, b"mine", os.O_RDONLY, OWN_SELF, OWN_THREAD, broker=NO_BROKER
        )
        os.close(anchor)
        assert held and os.read(opened, 10) == b"file\n"
        os.close(opened)
    finally:
        os.close(fd)


def test_the_broker_never_walks_into_its_own_entry(tree: Path) -> None:
    """The walk runs in the broker: its own /proc entry (here, this
    process's, named by number) is never the agent's to enter, even where
    the agent's own is meant."""
    (tree / "broker-cwd").symlink_to(f"/proc/{os.getpid()}/cwd")
    anchor = os.open(tree, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as caught:
            open_as_agent(anchor, b"broker-cwd", os.O_PATH, OWN_SELF, OWN_THREAD)
        assert caught.value.errno == errno.EACCES
    finally:
        os.close(anchor)
