"""Which syscalls of the agent the seccomp filter sends to the supervisor,
refuses outright, or answers with ENOSYS (mediator.py serves the first).

Apart from the mediator so that `run` builds its filter before it imports
the mediator, which it needs only once the agent runs.
"""

# Syscalls that go to the supervisor for a decision.
MEDIATED = (
    "open", "openat", "openat2", "creat",
    "execve", "execveat",
    "unlink", "unlinkat", "rmdir",
    "rename", "renameat", "renameat2",
    "mkdir", "mkdirat", "mknod", "mknodat",
    "link", "linkat", "symlink", "symlinkat",
    "truncate",
    "chmod", "fchmod", "fchmodat", "fchmodat2",
    "chown", "lchown", "fchown", "fchownat",
    "connect", "bind", "sendto", "sendmsg", "sendmmsg", "listen", "socket",
    "process_vm_readv",
    "umask",
    # Metadata: extended attributes and inode flags are decided as file_chmod,
    # times as file_write (ioctl only for the flag requests, in BPF).
    "setxattr", "lsetxattr", "fsetxattr", "setxattrat",
    "removexattr", "lremovexattr", "fremovexattr", "removexattrat",
    "utime", "utimes", "futimesat", "utimensat",
    "ioctl",
    # Calls that can name another process: only the agent's own tree (the
    # filter lets "the caller itself" through in BPF).
    "prlimit64", "setpriority", "ioprio_set",
    "sched_setscheduler", "sched_setparam", "sched_setattr", "sched_setaffinity",
    "migrate_pages", "move_pages", "kcmp", "process_madvise",
    # Answered with the CPUs agentsup started with while CPU placement keeps
    # the agent on fewer (placement.py): nproc and `make -j` see what they
    # would bare.  Every call: BPF cannot see where placement put the caller.
    "sched_getaffinity",
    # The start of a new image (only brk(NULL) and arch_prctl(ARCH_SET_FS), in
    # BPF): where its exec is checked, before it can run anything.
    "brk", "arch_prctl",
)  # fmt: skip

# Refused for every policy (DESIGN.md 1.2) and recorded as critical.  The
# new mount API, chroot and namespace-creating clone flags are refused too:
# each is a way around the path decisions above.
ALWAYS_REFUSED = (
    "ptrace", "process_vm_writev",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "bpf", "mount", "umount2", "pivot_root", "chroot",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    "setns", "unshare", "clone",
    "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module",
    "perf_event_open", "userfaultfd", "open_by_handle_at",
    "keyctl", "add_key", "request_key",
    "fanotify_init", "fanotify_mark", "open_tree_attr",
    # Takes an fd out of another process: ptrace's power, refused with it.
    "pidfd_getfd",
)  # fmt: skip

# clone3 keeps its flags in memory that BPF cannot read: ENOSYS makes glibc
# fall back to clone, whose namespace flags the filter does see.
# file_setattr (Linux 6.17) sets the inode flags FS_IOC_FSSETXATTR sets:
# ENOSYS sends tools back to that ioctl, which is decided.
# Landlock: a domain the agent nests would bind the agent, but the broker does
# its opens with the domain it started with.  A sandboxing tool is told that
# Landlock is not there, rather than left to believe it sandboxes anything.
FORCED_ENOSYS = (
    "clone3", "file_setattr",
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
)  # fmt: skip
