/* The floor of user-space mediation, for bench_floor.py: the least a
 * supervisor can do with agentsup's own seccomp filter.
 *
 *     floor_mediator FILTER.bpf COMMAND [ARG...]
 *
 * Runs COMMAND under FILTER (agentsup's program, as `filter_program` builds
 * it) with a listener, on one CPU with this process, and answers every
 * notification with the least work that keeps what the agent sees: an open
 * or openat is opened here and injected with ADDFD, an unlink, unlinkat or
 * rmdir is done here (a relative name from the agent's cwd or dirfd, reached
 * through /proc/PID); everything else is let through (CONTINUE).  No policy, no Landlock, no namespaces, no broker: what
 * is left of agentsup's cost is what mediation itself costs on this machine.
 * Not a sandbox (CONTINUE is not safe against a racing agent).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define PATH_BYTES 4096
#ifndef SYS_open /* arm64 has the *at calls only */
#define SYS_open -1
#define SYS_unlink -1
#define SYS_rmdir -1
#endif

static struct sock_filter program[4096];

/* The NUL-terminated path at `addr` in `pid`, page by page. */
static int read_path(pid_t pid, unsigned long addr, char *out) {
    size_t got = 0;
    while (got < PATH_BYTES) {
        size_t want = 4096 - ((addr + got) & 4095);
        if (want > PATH_BYTES - got)
            want = PATH_BYTES - got;
        struct iovec local = {out + got, want}, remote = {(void *)(addr + got), want};
        ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (n <= 0)
            return -1;
        if (memchr(out + got, 0, (size_t)n))
            return 0;
        got += (size_t)n;
    }
    return -1;
}

static void answer(int listener, __u64 id, int error, int flags) {
    struct seccomp_notif_resp response = {.id = id, .error = error, .flags = (__u32)flags};
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &response);
}

static int act(int listener, const struct seccomp_notif *n, const char *path, int anchor);

/* 1 when answered here. */
static int serve(int listener, const struct seccomp_notif *n, char *path) {
    const __u64 *a = n->data.args;
    int nr = n->data.nr;
    if (nr != SYS_open && nr != SYS_openat && nr != SYS_unlink && nr != SYS_unlinkat &&
        nr != SYS_rmdir)
        return 0;
    int at = nr == SYS_openat || nr == SYS_unlinkat;
    if (read_path(n->pid, at ? a[1] : a[0], path) != 0)
        return 0;
    int anchor = AT_FDCWD;
    if (path[0] != '/') { /* from the agent's cwd or dirfd, as the kernel would */
        char where[64];
        int dirfd = at ? (int)a[0] : AT_FDCWD;
        if (dirfd == AT_FDCWD)
            snprintf(where, sizeof where, "/proc/%u/cwd", n->pid);
        else
            snprintf(where, sizeof where, "/proc/%u/fd/%d", n->pid, dirfd);
        anchor = open(where, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (anchor < 0)
            return 0;
    }
    int answered = act(listener, n, path, anchor);
    if (anchor >= 0)
        close(anchor);
    return answered;
}

static int act(int listener, const struct seccomp_notif *n, const char *path, int anchor) {
    const __u64 *a = n->data.args;
    int nr = n->data.nr;
    if (nr == SYS_open || nr == SYS_openat) {
        int flags = (int)(nr == SYS_open ? a[1] : a[2]);
        mode_t mode = (mode_t)(nr == SYS_open ? a[2] : a[3]);
        int fd = openat(anchor, path, flags | O_CLOEXEC, mode & ~(mode_t)022);
        if (fd < 0) {
            answer(listener, n->id, -errno, 0);
            return 1;
        }
        struct seccomp_notif_addfd addfd = {.id = n->id,
                                            .flags = SECCOMP_ADDFD_FLAG_SEND,
                                            .srcfd = (__u32)fd,
                                            .newfd_flags = (__u32)(flags & O_CLOEXEC)};
        ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd);
        close(fd);
        return 1;
    }
    int done = unlinkat(anchor, path,
                        nr == SYS_rmdir ? AT_REMOVEDIR : nr == SYS_unlinkat ? (int)a[2] : 0);
    answer(listener, n->id, done == 0 ? 0 : -errno, 0);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: floor_mediator FILTER.bpf COMMAND [ARG...]\n");
        return 2;
    }
    FILE *file = fopen(argv[1], "rb");
    size_t count = file ? fread(program, sizeof *program, 4096, file) : 0;
    if (file)
        fclose(file);
    if (!count) {
        fprintf(stderr, "floor_mediator: no filter in %s\n", argv[1]);
        return 2;
    }
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    sched_setaffinity(0, sizeof one, &one); /* the child inherits it: one CPU, as agentsup shares */
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0)
        return 2;
    pid_t child = fork();
    if (child == 0) {
        struct sock_fprog fprog = {(unsigned short)count, program};
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        int listener = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                                    SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog);
        if (listener < 0)
            _exit(125);
        /* write and read are not mediated; sendmsg is (the parent takes the fd itself). */
        char ok;
        if (write(pair[1], &listener, sizeof listener) != sizeof listener ||
            read(pair[1], &ok, 1) != 1)
            _exit(125);
        close(listener);
        execvp(argv[2], argv + 2);
        _exit(127);
    }
    int remote = -1;
    if (read(pair[0], &remote, sizeof remote) != sizeof remote)
        return 2;
    int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
    int listener = (int)syscall(SYS_pidfd_getfd, pidfd, remote, 0);
    if (listener < 0 || write(pair[0], "k", 1) != 1) {
        perror("floor_mediator: the listener");
        return 2;
    }
    umask(0);
    static char path[PATH_BYTES];
    long served = 0;
    for (;;) {
        struct pollfd ready = {listener, POLLIN, 0};
        if (poll(&ready, 1, -1) < 0)
            continue;
        if (!(ready.revents & POLLIN))
            break; /* POLLHUP: no task is left on the filter */
        struct seccomp_notif n;
        memset(&n, 0, sizeof n);
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &n) != 0)
            continue;
        served++;
        if (!serve(listener, &n, path))
            answer(listener, n.id, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
    }
    int status = 0;
    waitpid(child, &status, 0);
    fprintf(stderr, "floor_mediator: %ld notifications\n", served);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
