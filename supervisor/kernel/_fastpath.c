/*
 * The broker's native hot path: plainly allowed file syscalls and execs,
 * answered in C.
 *
 * With this extension the broker (the agent's init, holding exactly the
 * agent's rights) is the one process that receives the agent's seccomp
 * notifications.  An open, openat, unlink, rmdir, unlinkat, mkdir, mkdirat,
 * rename, renameat, renameat2, link, linkat, utimensat, chmod, fchmodat or
 * fchmodat2 whose resolved paths the supervisor's judge plainly allows
 * (allowed, no record due) is done right here: read the paths from the
 * agent's memory, resolve them from the agent's cwd or dirfd with the agent's
 * rights, check what was really reached, then open, create, make, move,
 * link, remove, touch or chmod and answer (an fd with ADDFD); so are fchmod,
 * fchown and futimens on a file the agent holds (see serve_fd_op).  What was reached is known by its real path: read back
 * from the fd, or, for a path with no ".", ".." or empty component, the path
 * itself (a relative one after the real path of the agent's cwd or dirfd),
 * opened with no symlink followed (openat2; a symlink on the way falls back).
 * A path that does not exist gets ENOENT, as the Python path gives it with no
 * rule asked, and so does a create in a missing directory that the judge
 * plainly allows (the Python path asks first, then says ENOENT, with no
 * record); an exec of a missing program whose command line it plainly allows
 * gets ENOENT too.  A plainly allowed exec of an ELF file by a process's leader is
 * let through (see "execs decided here"), and the first syscall after every
 * exec is checked against the image allowed (see "processes whose next
 * notification ...").  Everything else -- a refusal, /proc, most of /dev,
 * another name of a protected file (or any multiply-linked file until the
 * supervisor's walk has answered), an image not the one allowed, any error --
 * is forwarded to the supervisor untouched, with a pidfd of the calling
 * thread so that it knows the thread by its own PID namespace's number.
 * umask and exec are watched on their way: creates get each thread's umask,
 * kept while no umask can have changed it (see "the agent's umask").
 * sched_getaffinity is answered here too: with the CPUs agentsup started
 * with, while CPU placement keeps the agent on fewer (see "the CPUs the
 * agent may use").
 *
 * The decisions here are the supervisor's by construction: the cache only
 * ever holds (action, target) pairs its judge allowed without a record, keyed
 * by the path this code itself resolved (or the command line it read); a
 * miss asks the broker's forked copy of that judge; and a policy reload
 * clears the cache and drops the copy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/fanotify.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#if defined(SYS_openat2) && defined(__has_include)
#if __has_include(<linux/openat2.h>)
#include <linux/openat2.h>
#define HAVE_OPENAT2 1
#endif
#endif

/* Older headers than the kernel (the lane checks the kernel at run time). */
#ifndef FAN_MARK_IGNORE
#define FAN_MARK_IGNORE 0x00000400
#endif
#ifndef FAN_MARK_IGNORE_SURV
#define FAN_MARK_IGNORE_SURV (FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY)
#endif

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif
#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

/* O_TMPFILE's own bit (glibc's __O_TMPFILE includes O_DIRECTORY). */
#define TMPFILE_BIT 020000000
#ifndef O_PATH
#define O_PATH 010000000
#endif

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#define X32_BIT 0x40000000 /* __X32_SYSCALL_BIT: x32's calls share the arch */
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#else
#define NATIVE_ARCH 0
#endif
#ifndef X32_BIT
#define X32_BIT 0
#endif

/* What serve() returns: why it handed control back to Python. */
enum { SERVE_CHANNEL = 0, SERVE_LISTENER_GONE = 1, SERVE_AGENT = 2, SERVE_IDLE = 3, SERVE_BATCH = 4 };

/* Cache bits: the actions a path is plainly allowed for. */
enum {
    ALLOW_READ = 1,
    ALLOW_WRITE = 2,
    ALLOW_DELETE = 4,
    ALLOW_MOVE = 8,
    ALLOW_SPAWN = 16, /* process_spawn of the path */
    ALLOW_SHELL = 32, /* shell_execute of the text (a command line) */
    ALLOW_CHMOD = 64,
};
#define ALLOW_ANY                                                                          \
    (ALLOW_READ | ALLOW_WRITE | ALLOW_DELETE | ALLOW_MOVE | ALLOW_SPAWN | ALLOW_SHELL |    \
     ALLOW_CHMOD)

#define PATH_BYTES 4096
#define BATCH 64 /* notifications between returns to Python (it reaps orphans) */

/* -- the allow cache: open addressing, bounded, cleared when full ----------- */

#define CACHE_SLOTS (1u << 16)
#define CACHE_LIMIT (CACHE_SLOTS / 2)

struct cache_entry {
    uint64_t hash;
    char *path; /* NULL: empty slot */
    uint32_t length;
    uint8_t bits;
};

static struct cache_entry *cache;
static unsigned cache_used;

static uint64_t hash_of(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void cache_reset(void) {
    if (!cache)
        return;
    for (unsigned i = 0; i < CACHE_SLOTS; i++) {
        free(cache[i].path);
        cache[i].path = NULL;
    }
    cache_used = 0;
}

static struct cache_entry *cache_slot(const char *path, size_t n, uint64_t h) {
    unsigned i = (unsigned)h & (CACHE_SLOTS - 1);
    for (;;) {
        struct cache_entry *e = &cache[i];
        if (!e->path || (e->hash == h && e->length == n && memcmp(e->path, path, n) == 0))
            return e;
        i = (i + 1) & (CACHE_SLOTS - 1);
    }
}

static int cache_bits(const char *path, size_t n) {
    if (!cache_used)
        return 0;
    struct cache_entry *e = cache_slot(path, n, hash_of(path, n));
    return e->path ? e->bits : 0;
}

static int cache_add(const char *path, size_t n, int bits) {
    if (!cache) {
        cache = calloc(CACHE_SLOTS, sizeof *cache);
        if (!cache)
            return -1;
    }
    uint64_t h = hash_of(path, n);
    struct cache_entry *e = cache_slot(path, n, h);
    if (e->path) {
        e->bits |= (uint8_t)bits;
        return 0;
    }
    if (cache_used >= CACHE_LIMIT) {
        cache_reset();
        e = cache_slot(path, n, h);
    }
    e->path = malloc(n + 1);
    if (!e->path)
        return -1;
    memcpy(e->path, path, n);
    e->path[n] = '\0';
    e->length = (uint32_t)n;
    e->hash = h;
    e->bits = (uint8_t)bits;
    cache_used++;
    return 0;
}

/* -- processes whose next notification must go to the supervisor ----------
 * After an allowed exec the supervisor holds the new image to what it
 * decided on, at that process's first trapped syscall: so the first one
 * after every exec is forwarded, unless the supervisor told this path what
 * it allowed (the executable's inode and the exact command line) and the
 * image running matches it; the supervisor is then told it was checked. */

#define WATCH_SLOTS 256
/* What tells two images of a process apart (the supervisor's _Image): the
 * executable's inode, the layout fields of /proc/PID/stat and the auxiliary
 * vector, random at each exec. */
struct image {
    dev_t dev;
    ino_t ino;
    size_t layout_length, auxv_length;
    char layout[256];
    char auxv[1024];
};

struct watched_exec {
    pid_t pid;          /* 0: a free slot */
    pid_t exec_tid;     /* the thread that called exec (a thread's exec: not `pid`) */
    uint64_t exec_id;   /* the notification of its exec */
    int expected;       /* what was allowed is known: */
    dev_t dev;
    ino_t ino;
    char *cmdline;      /* argv, each NUL-terminated, as /proc/PID/cmdline gives it */
    size_t cmdline_length;
    int decided_here;   /* this path allowed the exec: the supervisor knows nothing of it */
    struct image *before; /* the image that called exec (decided here, and randomized) */
};
static struct watched_exec watched[WATCH_SLOTS];
static unsigned watched_count;

/* Forwarded notifications not sent yet (see forwarding, below). */
static unsigned queue_head, queue_length;

/* In a forwarded notification's flags (the kernel sets none).  Word, not a
 * syscall to answer: its thread's first syscall after an exec found the image
 * the supervisor allowed (CHECKED); this path let its exec through (DONE).
 * A syscall to answer: the first after an exec this path let through, whose
 * image is not the one allowed, to be judged as an exec (JUDGE). */
#define NOTICE_EXEC_CHECKED (1u << 31)
#define NOTICE_EXEC_DONE (1u << 30)
#define NOTICE_EXEC_JUDGE (1u << 29)
/* A read the kernel let through to fanotify (see "reads the kernel asks
 * about"): the supervisor answers it with FAN_ANSWER, by its event fd. */
#define NOTICE_FAN_READ (1u << 28)

static int lane_on;
static void lane_flush(void);
static void lane_ignore(int fd, int directory);
static int in_own_view(const char *real, size_t length, int pinned);

static struct watched_exec *watched_slot(pid_t pid) {
    if (!watched_count)
        return NULL;
    for (unsigned i = 0; i < WATCH_SLOTS; i++)
        if (watched[i].pid == pid)
            return &watched[i];
    return NULL;
}

static void forget_expected(struct watched_exec *w) {
    free(w->cmdline);
    free(w->before);
    w->cmdline = NULL;
    w->before = NULL;
    w->expected = 0;
    w->decided_here = 0;
}

static void free_slot(struct watched_exec *w) {
    forget_expected(w);
    w->pid = 0;
    watched_count--;
}

/* 0, or -1 when the table is full of live processes: the caller then
 * forwards the exec's process to the supervisor for good (never a weaker check). */
static int watch(pid_t pid, uint64_t exec_id, pid_t exec_tid) {
    if (pid <= 0)
        return -1;
    struct watched_exec *w = watched_slot(pid);
    if (w) { /* another exec before any other syscall: this one is decided now */
        forget_expected(w);
        w->exec_id = exec_id;
        w->exec_tid = exec_tid;
        return 0;
    }
    for (int sweep = 0; sweep < 2; sweep++) {
        for (unsigned i = 0; i < WATCH_SLOTS; i++)
            if (!watched[i].pid) {
                watched[i].pid = pid;
                watched[i].exec_id = exec_id;
                watched[i].exec_tid = exec_tid;
                watched_count++;
                return 0;
            }
        /* Full: drop processes that exited without another trapped syscall. */
        for (unsigned i = 0; i < WATCH_SLOTS; i++)
            if (watched[i].pid && kill(watched[i].pid, 0) < 0 && errno == ESRCH)
                free_slot(&watched[i]);
    }
    return -1;
}

/* The slot of the exec thread `tid` called, when it is not its process's
 * leader: a call of its own means that exec failed. */
static struct watched_exec *exec_thread_slot(pid_t tid) {
    for (unsigned i = 0; i < WATCH_SLOTS && watched_count; i++)
        if (watched[i].pid && watched[i].exec_tid == tid && watched[i].pid != tid)
            return &watched[i];
    return NULL;
}

/* Whether `tid` is still a thread of process `pid` (after a successful exec
 * by it, it is not: it took the leader's id). */
static int in_thread_group(pid_t pid, pid_t tid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d", (int)pid, (int)tid);
    return access(path, F_OK) == 0;
}

/* All of a small file (at most `capacity` bytes) into `out`; its length or -1. */
static ssize_t read_small(const char *path, char *out, size_t capacity) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t got = 0;
    ssize_t n = 1;
    while (got < capacity && (n = read(fd, out + got, capacity - got)) > 0)
        got += (size_t)n;
    close(fd);
    return n < 0 || got >= capacity ? -1 : (ssize_t)got; /* full: maybe more */
}

/* The supervisor's _LAYOUT_FIELDS: /proc/PID/stat's fields once the ones
 * after the ")" are split (start_code, end_code, start_stack, start_data up
 * to env_end). */
static const int layout_fields[] = {23, 24, 25, 42, 43, 44, 45, 46, 47, 48};

/* The image `pid` runs, as the supervisor's _image reads it; 0, or -1 when
 * it cannot be read in full (or all its layout reads 0: unknown). */
static int read_image(pid_t pid, struct image *im) {
    char path[64], stat_text[2048];
    struct stat st;
    snprintf(path, sizeof path, "/proc/%d/exe", (int)pid);
    if (stat(path, &st) != 0)
        return -1;
    im->dev = st.st_dev;
    im->ino = st.st_ino;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    ssize_t length = read_small(path, stat_text, sizeof stat_text - 1);
    if (length <= 0)
        return -1;
    stat_text[length] = '\0';
    char *field = strrchr(stat_text, ')');
    if (!field)
        return -1;
    field++;
    size_t used = 0, wanted = 0, nonzero = 0;
    for (int index = 0; wanted < sizeof layout_fields / sizeof *layout_fields; index++) {
        while (*field == ' ' || *field == '\n')
            field++;
        if (!*field)
            return -1;
        size_t width = strcspn(field, " \n");
        if (index == layout_fields[wanted]) {
            if (used + width + 1 > sizeof im->layout)
                return -1;
            memcpy(im->layout + used, field, width);
            im->layout[used + width] = ' ';
            used += width + 1;
            nonzero |= !(width == 1 && field[0] == '0');
            wanted++;
        }
        field += width;
    }
    im->layout_length = used;
    snprintf(path, sizeof path, "/proc/%d/auxv", (int)pid);
    length = read_small(path, im->auxv, sizeof im->auxv);
    if (length <= 0 || !nonzero)
        return -1;
    im->auxv_length = (size_t)length;
    return 0;
}

static int same_image(const struct image *a, const struct image *b) {
    return a->dev == b->dev && a->ino == b->ino && a->layout_length == b->layout_length &&
           a->auxv_length == b->auxv_length &&
           memcmp(a->layout, b->layout, a->layout_length) == 0 &&
           memcmp(a->auxv, b->auxv, a->auxv_length) == 0;
}

/* Whether an exec by thread `tid` lays the new image out at random (the
 * supervisor's _randomized): else a failed exec cannot be told apart. */
static int randomized(pid_t tid) {
    char path[64], text[32];
    ssize_t length = read_small("/proc/sys/kernel/randomize_va_space", text, sizeof text - 1);
    if (length <= 0)
        return 0;
    text[length] = '\0';
    if (strtol(text, NULL, 10) == 0)
        return 0;
    snprintf(path, sizeof path, "/proc/%d/personality", (int)tid);
    length = read_small(path, text, sizeof text - 1);
    if (length <= 0)
        return 0;
    text[length] = '\0';
    return !(strtoul(text, NULL, 16) & 0x0040000); /* ADDR_NO_RANDOMIZE */
}

/* Whether the image `w->pid` runs is the file and command line allowed. */
static int runs_as_expected(const struct watched_exec *w) {
    char name[64];
    struct stat st;
    snprintf(name, sizeof name, "/proc/%d/exe", (int)w->pid);
    if (stat(name, &st) != 0 || st.st_dev != w->dev || st.st_ino != w->ino)
        return 0;
    snprintf(name, sizeof name, "/proc/%d/cmdline", (int)w->pid);
    /* One byte more than expected: a longer command line reads as -1. */
    char *running = malloc(w->cmdline_length + 1);
    ssize_t got = running ? read_small(name, running, w->cmdline_length + 1) : -1;
    int same = got == (ssize_t)w->cmdline_length && memcmp(running, w->cmdline, w->cmdline_length) == 0;
    free(running);
    return same;
}

/* -- the protected inodes ----------------------------------------------------
 * A hard link is judged under the name of the protected file it is another
 * name of; the supervisor's walk finds those.  Until it has told this path
 * its answer, a multiply-linked file is the supervisor's; then only the
 * protected ones are. */

struct inode_key {
    uint64_t dev, ino;
};
static struct inode_key *protected_keys;
static size_t protected_count;
static int protected_known;

static int compare_keys(const void *a, const void *b) {
    const struct inode_key *x = a, *y = b;
    if (x->dev != y->dev)
        return x->dev < y->dev ? -1 : 1;
    return x->ino < y->ino ? -1 : x->ino > y->ino;
}

#define PROC_MOUNTS 64
static dev_t proc_devices[PROC_MOUNTS];
/* How many; -1: not told (configure() was not called), and then nothing is
 * served (every open is judged by the supervisor, whose broker tells /proc
 * apart).  Set from the broker's one reading of its mountinfo: the agent's
 * /proc, and any other procfs it was not detached from (without a mount
 * namespace, a build chroot's /proc resolves `self` for the broker too: red
 * team 18). */
static int proc_devices_known = -1;

/* Whether `st` is on a procfs.  The broker is PID 1 of the agent's PID
 * namespace: /proc/1 there is the broker's own entry (its environment, its
 * memory, which holds the listener's code), and /proc/self the broker's.
 * Nothing on procfs is served here, whatever name reached it; the
 * supervisor walks such names as the agent's. */
static int on_proc(const struct stat *st) {
    if (proc_devices_known < 0)
        return 1;
    for (int i = 0; i < proc_devices_known; i++)
        if (st->st_dev == proc_devices[i])
            return 1;
    return proc_devices_known == PROC_MOUNTS; /* more than it keeps: none is served */
}

/* Whether a file with these numbers may be judged under its own path. */
static int own_name(const struct stat *st) {
    if (on_proc(st))
        return 0;
    if (st->st_nlink <= 1)
        return 1;
    if (!protected_known)
        return 0;
    struct inode_key key = {(uint64_t)st->st_dev, (uint64_t)st->st_ino};
    return !bsearch(&key, protected_keys, protected_count, sizeof key, compare_keys);
}

/* Whether a regular file may be changed here: only one with no other name.
 * Another name may lie where the agent may not write (a `git clone --local`
 * of the operator's repository hard-links its objects): a change through
 * this one would change that one too.  The supervisor refuses it, on record. */
static int sole_name(const struct stat *st) {
    return !on_proc(st) && st->st_nlink <= 1;
}

/* Set when an exec could not be watched: no open is served here any more. */
static int fast_disabled;

/* One number of /proc/TID/status (`field` is "\nTgid:", "\nUmask:", ...); -1 when unread. */
static long status_field(pid_t tid, const char *field, int base) {
    char name[64], buf[1024];
    snprintf(name, sizeof name, "/proc/%d/status", tid);
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *line = strstr(buf, field);
    return line ? strtol(line + strlen(field), NULL, base) : -1;
}

/* -- the agent's umask ---------------------------------------------------------
 * A create gets the mode the kernel would give it: the caller's umask applied
 * (the broker's own is 0).  Reading it from /proc/TID/status costs more than
 * the rest of a create, so it is kept per thread.  The umask lives in the
 * thread's fs_struct, which threads share unless created without CLONE_FS,
 * and which processes may share too (clone with CLONE_FS): who shares it is
 * not known here, so the rules are about every thread at once.
 *
 * - umask(2) is the one call that changes it, and it is trapped: this loop
 *   receives it before it can happen.  Every kept value is dropped then, and
 *   none is kept again while the call may still be in flight: until the
 *   calling thread makes another trapped call (so it returned) or exits.
 *   Meanwhile the value is read for each create, as the kernel would read it.
 * - an exec by a thread that is not its process's leader gives that thread
 *   the leader's TID: it is held the same way.
 * - a TID is reused once its thread is gone: each value is kept with a pidfd
 *   of its thread and used only while that thread lives (the thread whose
 *   notification is being served lives, so it is that very thread).
 * Whatever cannot be tracked (no pidfd, too many calls in flight) turns the
 * cache off for good. */

#define UMASK_SLOTS 32 /* each holds a pidfd, in the broker's share of the agent's fd limit */
#define HELD_SLOTS 32

struct kept_umask {
    pid_t tid; /* 0: empty */
    int pidfd;
    int umask;
};
static struct kept_umask kept_umasks[UMASK_SLOTS];
static unsigned next_victim;

struct held_thread {
    pid_t tid; /* 0: empty */
    int pidfd;
};
static struct held_thread held[HELD_SLOTS];
static unsigned held_count;
static int umask_cache_off;

/* 1 while the pidfd's thread lives, 0 once it exited, -1 unknown. */
static int thread_lives(int pidfd) {
    struct pollfd p = {pidfd, POLLIN, 0};
    int ready = poll(&p, 1, 0);
    if (ready == 0)
        return 1;
    if (ready == 1 && (p.revents & (POLLIN | POLLHUP)) && !(p.revents & POLLNVAL))
        return 0;
    return -1;
}

static void umask_forget(void) {
    for (unsigned i = 0; i < UMASK_SLOTS; i++)
        if (kept_umasks[i].tid) {
            close(kept_umasks[i].pidfd);
            kept_umasks[i].tid = 0;
        }
}

static void release(unsigned i) {
    close(held[i].pidfd);
    held[i].tid = 0;
    held_count--;
}

/* `tid` may be about to change a umask (or its own TID): drop every kept
 * value, and keep none until it is done. */
static void umask_hold(pid_t tid) {
    umask_forget();
    if (umask_cache_off)
        return;
    int pidfd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
    if (pidfd < 0) {
        if (errno != ESRCH) /* ESRCH: it is gone, and its call with it */
            umask_cache_off = 1;
        return;
    }
    for (unsigned i = 0; i < HELD_SLOTS; i++)
        if (!held[i].tid) {
            held[i].tid = tid;
            held[i].pidfd = pidfd;
            held_count++;
            return;
        }
    close(pidfd);
    umask_cache_off = 1;
}

/* Every notification: a held thread that makes another call is done. */
static void umask_done(pid_t tid) {
    for (unsigned i = 0; i < HELD_SLOTS && held_count; i++)
        if (held[i].tid == tid)
            release(i);
}

/* Whether a value read now may be kept: no call is in flight. */
static int umask_settled(void) {
    if (umask_cache_off)
        return 0;
    for (unsigned i = 0; i < HELD_SLOTS && held_count; i++)
        if (held[i].tid && thread_lives(held[i].pidfd) == 0)
            release(i);
    return held_count == 0;
}

/* The umask of thread `tid`, as the kernel would apply it to its create now. */
static int agent_umask(pid_t tid) {
    int keep = umask_settled();
    struct kept_umask *slot = NULL;
    if (keep) {
        for (unsigned i = 0; i < UMASK_SLOTS; i++) {
            struct kept_umask *k = &kept_umasks[i];
            if (k->tid == tid) {
                if (thread_lives(k->pidfd) == 1)
                    return k->umask;
                close(k->pidfd); /* another thread has the TID now */
                k->tid = 0;
            }
            if (!k->tid && !slot)
                slot = k;
        }
    }
    int mask = (int)status_field(tid, "\nUmask:", 8);
    if (mask < 0 || mask > 0777 || !keep)
        return mask > 0777 ? -1 : mask;
    int pidfd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
    if (pidfd < 0)
        return mask;
    if (!slot) {
        slot = &kept_umasks[next_victim++ % UMASK_SLOTS];
        close(slot->pidfd);
    }
    slot->tid = tid;
    slot->pidfd = pidfd;
    slot->umask = mask;
    return mask;
}

/* -- configuration from Python (one definition of the flag sets) ----------- */

static unsigned long valid_open_flags, write_flags, setfl_flags;

/* -- the agent's memory ------------------------------------------------------ */

/* The NUL-terminated string at `addr` in `pid`, page by page (a string may end
 * just before an unmapped page), into `out`: its length without the NUL, or
 * -1 (unreadable, or longer than `capacity`). */
static ssize_t read_string(pid_t pid, uint64_t addr, char *out, size_t capacity) {
    size_t got = 0;
    while (got < capacity) {
        size_t page_left = 4096 - ((addr + got) & 4095);
        size_t want = capacity - got < page_left ? capacity - got : page_left;
        struct iovec local = {out + got, want};
        struct iovec remote = {(void *)(uintptr_t)(addr + got), want};
        ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (n <= 0)
            return -1;
        char *nul = memchr(out + got, '\0', (size_t)n);
        if (nul)
            return nul - out;
        got += (size_t)n;
    }
    return -1; /* longer than `capacity` */
}

static int read_path(pid_t pid, uint64_t addr, char *out) {
    /* -1 too for a path longer than PATH_MAX: the supervisor says ENAMETOOLONG */
    return read_string(pid, addr, out, PATH_BYTES) < 0 ? -1 : 0;
}

/* /proc and /dev name the agent's own fds, processes and devices: the
 * supervisor's rules for them (aliases, device checks) stay in one place. */
static int special_prefix(const char *path) {
    static const char *const prefixes[] = {"/proc", "/dev", "/sys"};
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
        size_t n = strlen(prefixes[i]);
        if (strncmp(path, prefixes[i], n) == 0 && (path[n] == '/' || path[n] == '\0'))
            return 1;
    }
    return 0;
}

/* The devices every program opens (`> /dev/null`, getrandom's fallback):
 * opening them has no effect, so they are served here too, but only when
 * the name and the node both say so: /dev/null is 1:3, /dev/zero 1:5,
 * /dev/full 1:7, /dev/random 1:8 and /dev/urandom 1:9. */
static const char *const harmless_devices[] = {"/dev/null", "/dev/zero", "/dev/full",
                                               "/dev/random", "/dev/urandom"};

static int harmless_device_name(const char *path) {
    for (size_t i = 0; i < sizeof harmless_devices / sizeof *harmless_devices; i++)
        if (strcmp(path, harmless_devices[i]) == 0)
            return 1;
    return 0;
}

static int harmless_device(const struct stat *st) {
    unsigned minor_number = minor(st->st_rdev);
    return S_ISCHR(st->st_mode) && major(st->st_rdev) == 1 &&
           (minor_number == 3 || minor_number == 5 || minor_number == 7 || minor_number == 8 ||
            minor_number == 9);
}

/* -- answering ----------------------------------------------------------------- */

static void respond_error(int listener, uint64_t id, int err) {
    struct seccomp_notif_resp resp = {.id = id, .val = 0, .error = -err, .flags = 0};
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

/* Install `fd` in the agent as the syscall's result (one atomic step). */
static void inject(int listener, uint64_t id, int fd, int cloexec) {
    struct seccomp_notif_addfd addfd = {
        .id = id,
        .flags = SECCOMP_ADDFD_FLAG_SEND,
        .srcfd = (uint32_t)fd,
        .newfd = 0,
        .newfd_flags = cloexec ? O_CLOEXEC : 0,
    };
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd) < 0 && errno == EMFILE)
        respond_error(listener, id, EMFILE);
}

/* -- the policy's tables: plain allows decided here -----------------------------
 * On a cache miss, what the judge would say is worked out here when the
 * program it exported (`Judge.plain_program`, set with set_program) can: RE2's
 * own match over the policy's set, then each action's first matching rule,
 * the judge's guards, agentsup's refusing roots and the floor, all as the
 * judge checks them.  Whatever it cannot tell (no set, a DFA that gave up,
 * agentsup's own code, a name to normalise, non-ASCII text) goes to the judge. */

#define PLAIN_FLAG 1
#define PROCEEDS_FLAG 2
#define PATH_ALLOWS (ALLOW_READ | ALLOW_WRITE | ALLOW_DELETE | ALLOW_MOVE | ALLOW_SPAWN | ALLOW_CHMOD)
#define WRITE_CLASS (ALLOW_WRITE | ALLOW_DELETE | ALLOW_MOVE | ALLOW_CHMOD)
#define NATIVE_BIT_COUNT 7

struct plain_entry {
    unsigned actions, flags;
    Py_ssize_t index, low, high;
};

struct texts {
    Py_ssize_t count;
    const char **text;
    Py_ssize_t *length;
};

struct plain_set {
    PyObject *match; /* borrowed from `program.source`; NULL: no set */
    Py_ssize_t patterns, count;
    struct plain_entry *entries;
    uint64_t *hits; /* one bit per pattern and the catch-all */
};

static struct {
    PyObject *source; /* the tuple set_program was given, which owns everything below */
    struct plain_set paths, shell;
    unsigned default_flags;
    struct texts refusing, write_guards, read_guards, code_dirs;
    struct texts floor[NATIVE_BIT_COUNT];
    int floor_checked[NATIVE_BIT_COUNT];
    Py_ssize_t max_length;
} program;

static int canonical(const char *path);

static void texts_free(struct texts *t) {
    free(t->text);
    free(t->length);
    memset(t, 0, sizeof *t);
}

static void program_free(void) {
    free(program.paths.entries);
    free(program.shell.entries);
    free(program.paths.hits);
    free(program.shell.hits);
    texts_free(&program.refusing);
    texts_free(&program.write_guards);
    texts_free(&program.read_guards);
    texts_free(&program.code_dirs);
    for (int i = 0; i < NATIVE_BIT_COUNT; i++)
        texts_free(&program.floor[i]);
    Py_CLEAR(program.source);
    memset(&program, 0, sizeof program);
}

/* A tuple of bytes into `t` (pointers into the bytes, which `source` keeps). */
static int texts_from(PyObject *tuple, struct texts *t) {
    if (!PyTuple_Check(tuple))
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(tuple);
    t->text = calloc((size_t)n + 1, sizeof *t->text);
    t->length = calloc((size_t)n + 1, sizeof *t->length);
    if (!t->text || !t->length)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (!PyBytes_Check(item))
            return -1;
        t->text[i] = PyBytes_AS_STRING(item);
        t->length[i] = PyBytes_GET_SIZE(item);
    }
    t->count = n;
    return 0;
}

/* (match, patterns, ((actions, index, low, high, flags), ...)) into `set`. */
static int set_from(PyObject *match, PyObject *patterns, PyObject *entries, struct plain_set *set) {
    if (match != Py_None && !PyCallable_Check(match))
        return -1;
    set->match = match == Py_None ? NULL : match;
    set->patterns = PyLong_AsSsize_t(patterns);
    if (set->patterns < 0 || !PyTuple_Check(entries))
        return -1;
    set->hits = calloc((size_t)set->patterns / 64 + 1, sizeof *set->hits);
    set->count = PyTuple_GET_SIZE(entries);
    set->entries = calloc((size_t)set->count + 1, sizeof *set->entries);
    if (!set->entries || !set->hits)
        return -1;
    for (Py_ssize_t i = 0; i < set->count; i++) {
        struct plain_entry *e = &set->entries[i];
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(entries, i), "InnnI", &e->actions, &e->index, &e->low,
                              &e->high, &e->flags) ||
            e->index < 0 || e->index > set->patterns || e->low < 0 || e->low > e->high ||
            e->high > set->patterns)
            return -1;
    }
    return 0;
}

static int starts_with_any(const char *s, size_t n, const struct texts *t) {
    for (Py_ssize_t i = 0; i < t->count; i++)
        if ((size_t)t->length[i] <= n && memcmp(s, t->text[i], (size_t)t->length[i]) == 0)
            return 1;
    return 0;
}

/* Some text of `t` starts with `s` (n bytes). */
static int any_starts_with(const char *s, size_t n, const struct texts *t) {
    for (Py_ssize_t i = 0; i < t->count; i++)
        if ((size_t)t->length[i] >= n && memcmp(t->text[i], s, n) == 0)
            return 1;
    return 0;
}

/* The patterns of `set` that `text` matches, as bits in its `hits`; 0 when RE2
 * gave no answer (its DFA gave up: an answer always holds the catch-all). */
static int match_set(const struct plain_set *set, const char *text, size_t length) {
    uint64_t *hits = set->hits;
    memset(hits, 0, ((size_t)set->patterns / 64 + 1) * sizeof *hits);
    PyObject *data = PyBytes_FromStringAndSize(text, (Py_ssize_t)length);
    PyObject *found = data ? PyObject_CallOneArg(set->match, data) : NULL;
    Py_XDECREF(data);
    int any = 0;
    if (found && PyList_Check(found)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(found); i++) {
            Py_ssize_t index = PyLong_AsSsize_t(PyList_GET_ITEM(found, i));
            if (index < 0 || index > set->patterns) {
                any = 0; /* not what a set of this size says */
                break;
            }
            hits[index / 64] |= 1ULL << (index % 64);
            any = 1;
        }
    }
    Py_XDECREF(found);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return any;
}

static int hit(const uint64_t *hits, Py_ssize_t index) {
    return (hits[index / 64] >> (index % 64)) & 1;
}

/* The flags of `action`'s decision: its first entry that matched, unexcepted. */
static unsigned decision_flags(const struct plain_set *set, unsigned action) {
    const uint64_t *hits = set->hits;
    for (Py_ssize_t i = 0; i < set->count; i++) {
        const struct plain_entry *e = &set->entries[i];
        if (!(e->actions & action) || !hit(hits, e->index))
            continue;
        Py_ssize_t at = e->low;
        while (at < e->high && !hit(hits, at))
            at++;
        if (at == e->high)
            return e->flags;
    }
    return program.default_flags;
}

static int bit_index(unsigned bit) {
    int i = 0;
    while (i < NATIVE_BIT_COUNT && (1u << i) != bit)
        i++;
    return i;
}

/* The bits of `ask` the judge plainly allows on `path`, as its
 * plainly_allowed_bits says; -1 when only the judge can tell. */
static long program_bits(const char *path, size_t length, int ask) {
    if (!program.source || (Py_ssize_t)length > program.max_length)
        return -1;
    for (size_t i = 0; i < length; i++)
        if ((unsigned char)path[i] >= 0x80 || path[i] == '\0')
            return -1; /* the judge's text is the name decoded and encoded again; C stops at a NUL */
    long granted_bits = 0;
    unsigned on_path = (unsigned)ask & PATH_ALLOWS;
    if (on_path) {
        if (!program.paths.match || length > PATH_BYTES || !canonical(path))
            return -1;
        char probe[PATH_BYTES + 2]; /* `path/`: a root itself, or beneath it */
        memcpy(probe, path, length);
        probe[length] = '/';
        size_t probe_length = length + 1;
        if (starts_with_any(probe, probe_length, &program.code_dirs) ||
            !match_set(&program.paths, path, length))
            return -1;
        int read_guarded = starts_with_any(probe, probe_length, &program.read_guards);
        int write_guarded = starts_with_any(probe, probe_length, &program.write_guards);
        for (unsigned bit = 1; bit <= ALLOW_CHMOD; bit <<= 1) {
            if (!(on_path & bit))
                continue;
            unsigned flags;
            if (bit & WRITE_CLASS) {
                int guarded = write_guarded ||
                              (bit == ALLOW_MOVE && any_starts_with(probe, probe_length, &program.write_guards));
                flags = guarded ? 0 : decision_flags(&program.paths, bit);
            } else
                flags = read_guarded ? 0 : decision_flags(&program.paths, bit);
            if (bit == ALLOW_MOVE && (flags & PROCEEDS_FLAG)) {
                /* Beneath "/" is "/", not "//" (refused_beneath strips the slash). */
                size_t beneath = length == 1 ? 1 : probe_length;
                for (Py_ssize_t i = 0; i < program.refusing.count; i++) {
                    size_t n = (size_t)program.refusing.length[i];
                    const char *root = program.refusing.text[i];
                    if ((n == length && memcmp(root, path, n) == 0) ||
                        (n >= beneath && memcmp(root, probe, beneath) == 0)) {
                        flags = 0;
                        break;
                    }
                }
            }
            if (bit == ALLOW_SPAWN && (flags & PLAIN_FLAG)) {
                /* Running a file reads it: a read that does not go ahead refuses the run. */
                unsigned read = decision_flags(&program.paths, ALLOW_READ);
                if (!(read & PROCEEDS_FLAG))
                    flags = 0;
            }
            int slot = bit_index(bit);
            if ((flags & PLAIN_FLAG) && program.floor_checked[slot] &&
                !starts_with_any(probe, probe_length, &program.floor[slot]))
                flags = 0;
            if (flags & PLAIN_FLAG)
                granted_bits |= bit;
        }
    }
    if (ask & ALLOW_SHELL) {
        if (!program.shell.match || !match_set(&program.shell, path, length))
            return -1;
        if (decision_flags(&program.shell, ALLOW_SHELL) & PLAIN_FLAG)
            granted_bits |= ALLOW_SHELL;
    }
    return granted_bits;
}

/* set_program(tuple | None): see `agent.native_program` for the layout. */
static PyObject *fp_set_program(PyObject *self, PyObject *source) {
    program_free();
    if (source == Py_None)
        Py_RETURN_NONE;
    PyObject *path_match, *path_patterns, *path_entries, *shell_match, *shell_patterns,
        *shell_entries, *refusing, *write_guards, *read_guards, *code_dirs, *floor;
    unsigned default_flags;
    Py_ssize_t max_length;
    if (!PyArg_ParseTuple(source, "OOOOOOIOOOOOn", &path_match, &path_patterns, &path_entries,
                          &shell_match, &shell_patterns, &shell_entries, &default_flags, &refusing,
                          &write_guards, &read_guards, &code_dirs, &floor, &max_length))
        return NULL;
    Py_INCREF(source);
    program.source = source;
    program.default_flags = default_flags;
    program.max_length = max_length;
    int bad = set_from(path_match, path_patterns, path_entries, &program.paths) ||
              set_from(shell_match, shell_patterns, shell_entries, &program.shell) ||
              texts_from(refusing, &program.refusing) ||
              texts_from(write_guards, &program.write_guards) ||
              texts_from(read_guards, &program.read_guards) ||
              texts_from(code_dirs, &program.code_dirs) || !PyTuple_Check(floor) ||
              PyTuple_GET_SIZE(floor) != NATIVE_BIT_COUNT;
    for (int i = 0; !bad && i < NATIVE_BIT_COUNT; i++) {
        PyObject *prefixes = PyTuple_GET_ITEM(floor, i);
        program.floor_checked[i] = prefixes != Py_None;
        bad = prefixes != Py_None && texts_from(prefixes, &program.floor[i]);
    }
    if (bad) {
        program_free();
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "not a program of plain allows");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* plain_bits(target: bytes, bits: int) -> int: what the program says, -1: the judge's. */
static PyObject *fp_plain_bits(PyObject *self, PyObject *args) {
    const char *path;
    Py_ssize_t length;
    int bits;
    if (!PyArg_ParseTuple(args, "y#i", &path, &length, &bits))
        return NULL;
    return PyLong_FromLong(program_bits(path, (size_t)length, bits & ALLOW_ANY));
}

/* -- deciding ------------------------------------------------------------------
 * The cache answers first.  On a miss, the judge's program (above) does, and
 * where it cannot tell, the broker's own copy of the supervisor's judge
 * (forked with it, and dropped when the policy is reloaded) says which of the
 * actions it plainly allows: allowed, with no record, no rate limit, no
 * approval.  Anything else is forwarded. */

static PyObject *decider; /* callable(path: bytes, bits: int) -> int, or NULL */

/* Whether every action of `need` is plainly allowed on `path`.  On a miss the
 * judge is asked for `need` and, when `all` is set, for every other action
 * too: a file created or written is most often read and removed later, and
 * those then find their answer in the cache.  A read asks for reading only:
 * most files read are never written (each action costs the judge as much).
 * Only allows are kept. */
static int granted(const char *path, size_t length, int need, int all) {
    int have = cache_bits(path, length);
    if ((have & need) == need)
        return 1;
    if (!decider)
        return 0;
    int ask = ((all ? ALLOW_READ | ALLOW_WRITE | ALLOW_DELETE : 0) | need) & ~have;
    long bits = program_bits(path, length, ask);
    if (bits < 0) {
        PyObject *answer = PyObject_CallFunction(decider, "y#i", path, (Py_ssize_t)length, ask);
        bits = answer ? PyLong_AsLong(answer) : -1;
        Py_XDECREF(answer);
    }
    if (bits < 0 || PyErr_Occurred()) {
        PyErr_Clear(); /* a failed decision is no decision: the supervisor takes it */
        return 0;
    }
    bits &= ALLOW_ANY;
    if (bits && cache_add(path, length, (int)bits) != 0)
        return 0;
    return ((have | (int)bits) & need) == need;
}

/* -- the fast path ------------------------------------------------------------ */

static int id_valid(int listener, uint64_t id) {
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0;
}

/* A pidfd of the thread that made `n`, or -1 (gone, or `n` answered meanwhile).
 * The pid could have been reused between RECV and pidfd_open: while the
 * notification is still pending, the thread it names is the one held. */
static int pidfd_of_caller(int listener, const struct seccomp_notif *n) {
    int pidfd = (int)syscall(SYS_pidfd_open, n->pid, PIDFD_THREAD);
    if (pidfd >= 0 && !id_valid(listener, n->id)) {
        close(pidfd);
        return -1;
    }
    return pidfd;
}

static void respond_value(int listener, uint64_t id, int64_t value) {
    struct seccomp_notif_resp resp = {.id = id, .val = value, .error = 0, .flags = 0};
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

/* The agent's path argument, if it is one this path may take: 0 when not. */
static int agent_path(const struct seccomp_notif *n, uint64_t ptr, char *raw) {
    return read_path((pid_t)n->pid, ptr, raw) == 0 && raw[0] != '\0' &&
           (!special_prefix(raw) || harmless_device_name(raw));
}

/* Where a path is resolved from: AT_FDCWD (the broker's root is the agent's)
 * for an absolute path, else the agent's cwd or dirfd.  -2 when unreachable. */
static int open_anchor(pid_t pid, int dirfd, const char *raw) {
    if (raw[0] == '/')
        return AT_FDCWD;
    char link[64];
    if (dirfd == AT_FDCWD)
        snprintf(link, sizeof link, "/proc/%d/cwd", pid);
    else
        snprintf(link, sizeof link, "/proc/%d/fd/%d", pid, dirfd);
    int fd = open(link, O_PATH | O_CLOEXEC);
    return fd < 0 ? -2 : fd;
}

static void close_anchor(int anchor) {
    if (anchor >= 0)
        close(anchor);
}

/* Whether `path` is absolute and canonical: no empty, "." or ".." component
 * (so no "//" and no trailing slash).  Reached with no symlink followed, such
 * a path is itself the real path of what it names. */
static int canonical(const char *path) {
    if (path[0] != '/')
        return 0;
    if (path[1] == '\0')
        return 1;
    const char *c = path + 1;
    for (;;) {
        size_t length = 0;
        while (c[length] && c[length] != '/')
            length++;
        if (length == 0 || (c[0] == '.' && (length == 1 || (length == 2 && c[1] == '.'))))
            return 0;
        if (!c[length])
            return 1;
        c += length + 1;
    }
}

/* openat2 from the root with no symlink (nor magic link) followed, for a
 * canonical path: what it opens is then at that very path, and no readlink is
 * needed to know its real path.  -1 with errno: ENOENT is what any open would
 * say (a missing component comes before any symlink), every other error means
 * "resolve as before" (ELOOP: a symlink on the way). */
static int open_exact(const char *path, unsigned long flags) {
#ifdef HAVE_OPENAT2
    struct open_how how = {.flags = flags, .mode = 0, .resolve = RESOLVE_NO_SYMLINKS};
    return (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
#else
    errno = ENOSYS;
    return -1;
#endif
}

/* openat, refusing magic links on the way (ELOOP): a symlink into
 * /proc/self would be the broker's own entry, not the agent's.  Such a name
 * is the supervisor's, which walks it as the agent's (agentpath.py). */
static int open_followed(int anchor, const char *raw, unsigned long flags) {
#ifdef HAVE_OPENAT2
    struct open_how how = {.flags = flags, .mode = 0, .resolve = RESOLVE_NO_MAGICLINKS};
    return (int)syscall(SYS_openat2, anchor, raw, &how, sizeof how);
#else
    return openat(anchor, raw, (int)flags);
#endif
}

/* The real path of what `fd` is, NUL-terminated in `out`; its length, or -1
 * when it is nothing this path judges (not absolute, /proc, /dev, deleted). */
static int own_fds = -1; /* /proc/self/fd, opened once: one path step per lookup */

static int own_fd_dir(void) {
    if (own_fds < 0)
        own_fds = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
    return own_fds;
}

static int deleted(const char *path, size_t length) {
    return length > 10 && strcmp(path + length - 10, " (deleted)") == 0;
}

/* The path of what `fd` holds, as this process's /proc names it; -1 for none. */
static ssize_t fd_path(int fd, char *out) {
    char name[16];
    snprintf(name, sizeof name, "%d", fd);
    ssize_t length = own_fd_dir() >= 0 ? readlinkat(own_fds, name, out, PATH_BYTES) : -1;
    if (length <= 0 || length >= PATH_BYTES)
        return -1;
    out[length] = '\0';
    return length;
}

static ssize_t real_path(int fd, char *out) {
    ssize_t length = fd_path(fd, out);
    if (length < 0 || out[0] != '/' || (special_prefix(out) && !harmless_device_name(out)) ||
        deleted(out, (size_t)length))
        return -1;
    return length;
}

/* The directory that would hold `raw`'s last component, split as the
 * supervisor splits it; 0 when it is a case the supervisor keeps
 * (a trailing slash, ".", "..", the root). */
static int split_parent(const char *raw, char *parent, const char **name) {
    const char *slash = strrchr(raw, '/');
    *name = slash ? slash + 1 : raw;
    if (**name == '\0' || strcmp(*name, ".") == 0 || strcmp(*name, "..") == 0)
        return 0;
    if (!slash)
        strcpy(parent, ".");
    else if (slash == raw)
        strcpy(parent, "/");
    else {
        memcpy(parent, raw, (size_t)(slash - raw));
        parent[slash - raw] = '\0';
    }
    return 1;
}

/* `base` + "/" + name into `target` (one slash between them); its length, or -1. */
static ssize_t join(const char *base, size_t length, const char *name, char *target) {
    while (length > 0 && base[length - 1] == '/')
        length--;
    size_t rest = strlen(name);
    if (length + 1 + rest >= PATH_BYTES)
        return -1;
    memmove(target, base, length);
    target[length] = '/';
    memcpy(target + length + 1, name, rest + 1);
    return (ssize_t)(length + 1 + rest);
}

/* The directory `raw`'s last component is in, pinned (O_PATH), and the path
 * the supervisor judges for that component (its real path + "/" + name) in
 * `target`.  -1 (errno set) when the directory cannot be opened; -2 when it
 * is not one this path judges. */
static int pin_parent(int anchor, int exact, const char *parent,
                      const char *name, char *target, ssize_t *length) {
    int dir = -1;
    if (exact) {
        dir = open_exact(parent, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dir < 0 && errno != ENOENT)
            exact = 0;
    }
    if (!exact)
        dir = open_followed(anchor, parent, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return -1;
    if (exact)
        *length = join(parent, strlen(parent), name, target);
    else {
        ssize_t base = real_path(dir, target);
        *length = base < 0 ? -1 : join(target, (size_t)base, name, target);
    }
    if (*length < 0) {
        close(dir);
        return -2;
    }
    return dir;
}

/* Whether `raw` is relative and canonical (see canonical()). */
static int canonical_relative(const char *raw) {
    char rooted[PATH_BYTES + 1];
    size_t length = strlen(raw);
    if (raw[0] == '/' || length >= PATH_BYTES)
        return 0;
    rooted[0] = '/';
    memcpy(rooted + 1, raw, length + 1);
    return canonical(rooted);
}

/* The real path of the agent's cwd or `dirfd` in `base` (one readlink of
 * /proc/PID/cwd or /proc/PID/fd/N): its length, or -1 when it is not a path
 * this code judges (not canonical: a pipe; /proc; a removed directory).
 * Only a name looked up from it, or a parent that is opened O_DIRECTORY, may
 * stand on it: a dirfd can be a file. */
static ssize_t real_base(pid_t pid, int dirfd, char *base) {
    char link[64];
    if (dirfd == AT_FDCWD)
        snprintf(link, sizeof link, "/proc/%d/cwd", (int)pid);
    else
        snprintf(link, sizeof link, "/proc/%d/fd/%d", (int)pid, dirfd);
    ssize_t got = readlink(link, base, PATH_BYTES);
    if (got <= 0 || got >= PATH_BYTES)
        return -1;
    base[got] = '\0';
    if (!canonical(base) || special_prefix(base) || deleted(base, (size_t)got))
        return -1;
    return got;
}

/* `raw`, relative to the agent's cwd or `dirfd` and canonical (no ".", ".."
 * or empty component), made absolute in `out` after the real path of that
 * directory: 1 when done.  Such a path is then opened exactly, as an absolute
 * one is, with no anchor to open and close and no readlink after; a dirfd
 * that is no directory makes that lookup fail with ENOTDIR, as the kernel's
 * does.  0: the caller anchors as before. */
static int absolute_from(pid_t pid, int dirfd, const char *raw, char *out) {
    char base[PATH_BYTES + 1];
    ssize_t got = canonical_relative(raw) ? real_base(pid, dirfd, base) : -1;
    /* The joined name is held to what an absolute one is (agent_path): from
     * "/", "proc/1/mem" is the broker's own memory. */
    return got > 0 && join(base, (size_t)got, raw, out) > 0 &&
           (!special_prefix(out) || harmless_device_name(out));
}

/* The path to open exactly for the agent's `raw`: `raw` itself when it is
 * absolute and canonical, or `raw` made absolute in `joined`; NULL when it
 * is to be resolved from an anchor, as before. */
static const char *exact_path(pid_t pid, int dirfd, const char *raw, char *joined) {
    if (canonical(raw))
        return raw;
    return absolute_from(pid, dirfd, raw, joined) ? joined : NULL;
}

/* pin_parent for the agent's `raw`, resolved from its cwd or `dirfd`: -2
 * also when that is out of reach. */
static int pin_parent_of(const struct seccomp_notif *n, int dirfd, const char *raw,
                         const char *parent, const char *name, char *target, ssize_t *length) {
    char absolute[PATH_BYTES + 1];
    int exact = canonical(raw);
    if (!exact && (strcmp(parent, ".") == 0
                       ? real_base((pid_t)n->pid, dirfd, absolute) > 0 /* pinned O_DIRECTORY */
                       : absolute_from((pid_t)n->pid, dirfd, parent, absolute))) {
        parent = absolute;
        exact = 1;
    }
    int anchor = exact ? AT_FDCWD : open_anchor((pid_t)n->pid, dirfd, raw);
    if (anchor == -2)
        return -2;
    int dir = pin_parent(anchor, exact, parent, name, target, length);
    int err = errno;
    close_anchor(anchor);
    errno = err;
    return dir;
}

/* A create whose directory is missing: the supervisor would judge the
 * lexical path (its `_lexical`: the cwd or dirfd it reads in /proc, "/" and
 * the path, normalised) and, if every check is a plain allow, just answer
 * ENOENT, with no record.  So that is answered here when the path needs no
 * normalising and the cache or the judge's copy plainly allows it; anything
 * else is the supervisor's, which records a refusal. */
static int missing_parent(int listener, const struct seccomp_notif *n, int dirfd, const char *raw,
                          int need) {
    char lexical[PATH_BYTES + 1];
    ssize_t length;
    if (raw[0] == '/') {
        if (!canonical(raw))
            return 0;
        length = (ssize_t)strlen(raw);
        memcpy(lexical, raw, (size_t)length + 1);
    } else {
        if (!absolute_from((pid_t)n->pid, dirfd, raw, lexical))
            return 0;
        length = (ssize_t)strlen(lexical);
    }
    if (!granted(lexical, (size_t)length, need, 1))
        return 0;
    respond_error(listener, n->id, ENOENT);
    return 1;
}

/* open(O_CREAT) of a name that is not there: created in its directory. */
static int serve_create(int listener, const struct seccomp_notif *n, int dirfd, int anchor,
                        const char *raw, int exact, unsigned long flags, unsigned long mode,
                        int reads) {
    char parent[PATH_BYTES], target[PATH_BYTES + 1];
    const char *name;
    if (!split_parent(raw, parent, &name))
        return 0;
    int need = ALLOW_WRITE | (reads ? ALLOW_READ : 0);
    ssize_t length;
    int dir = pin_parent(anchor, exact, parent, name, target, &length);
    if (dir == -1 && errno == ENOENT)
        return missing_parent(listener, n, dirfd, raw, need);
    if (dir < 0)
        return 0; /* the supervisor decides on the lexical path */
    int umask = -1;
    if (!granted(target, (size_t)length, need, 1) || (umask = agent_umask((pid_t)n->pid)) < 0) {
        close(dir);
        return 0;
    }
    if (id_valid(listener, n->id)) { /* interrupted: nothing may be created */
        mode_t created = (mode_t)(mode & 07777 & ~(unsigned long)umask & ~(unsigned long)(S_ISUID | S_ISGID));
        /* Where the agent may read it back, made through the broker's own
         * view of the same directory: the kernel does not ask about it. */
        int readable = lane_on && (cache_bits(target, (size_t)length) & ALLOW_READ);
        size_t parent_length = (size_t)(strrchr(target, '/') - target);
        int view_dir = readable ? in_own_view(target, parent_length ? parent_length : 1, dir) : -1;
        /* O_EXCL: only a new file is what was decided on.  A name that
         * appeared since the lookup (a racing mkfifo, whose open for writing
         * would block this broker for good; a hard link) goes to the
         * supervisor like any existing object. */
        int fd = openat(view_dir >= 0 ? view_dir : dir, name,
                        (int)((flags & ~(unsigned long)O_NOFOLLOW) | O_NOFOLLOW | O_EXCL | O_CLOEXEC), created);
        if (view_dir >= 0)
            close(view_dir);
        if (fd < 0 && errno == EEXIST && !(flags & O_EXCL)) {
            close(dir);
            return 0;
        }
        if (fd < 0)
            respond_error(listener, n->id, errno);
        else {
            /* Read back later without asking, when reading it is plainly
             * allowed too (granted() asked for every action). */
            if (readable)
                lane_ignore(fd, 0);
            inject(listener, n->id, fd, (flags & O_CLOEXEC) != 0);
            close(fd);
        }
    }
    close(dir);
    return 1;
}

/* Whether a name the broker found missing, through a symlink on the way,
 * may be there for the agent: it ends in a symlink (`hi -> /proc/self/fd/40`,
 * the broker's /proc/self lacking the agent's fd), or its directory is in
 * /proc or cannot be looked at.  Such a name is the supervisor's, which
 * walks it as the agent's. */
static int missing_in_proc(int anchor, const char *raw) {
    static dev_t proc_device;
    struct stat st;
    if (!proc_device && stat("/proc", &st) == 0)
        proc_device = st.st_dev;
    if (fstatat(anchor, raw, &st, AT_SYMLINK_NOFOLLOW) == 0)
        return 1; /* there, so a symlink leading nowhere here */
    char parent[PATH_BYTES];
    const char *name;
    if (!split_parent(raw, parent, &name))
        return 1;
    return fstatat(anchor, parent, &st, 0) != 0 || st.st_dev == proc_device;
}

/* Set while a FIFO writer of the agent's waits for a reader, in a helper of
 * the broker's (broker.py, `Broker._rendezvous`): a read is then pinned
 * (O_PATH) before it is opened, as a write always is.  Opening that FIFO
 * here, even for a moment, would let the writer go on with no reader left
 * (EPIPE).  Otherwise a read is opened at once: one path walk, not two.
 * Exact, as the broker has one thread: its Python sets this before serve()
 * runs again. */
static int pin_reads;

static int serve_open(int listener, const struct seccomp_notif *n, int dirfd, uint64_t ptr,
                      unsigned long flags, unsigned long mode) {
    flags &= valid_open_flags;
    if (flags & (O_PATH | TMPFILE_BIT))
        return 0;
    char raw[PATH_BYTES];
    if (!agent_path(n, ptr, raw))
        return 0;
    int writes = (flags & write_flags) != 0;
    int reads = (flags & O_ACCMODE) != O_WRONLY;
    /* Writes are pinned first, and opened once decided (through the pinned
     * fd): nothing is truncated or appended before the decision.  So are
     * reads while a FIFO writer waits (`pin_reads`), and reads through a
     * symlink (below): it may lead to a device, whose opening alone is an
     * act (a watchdog is armed, a tape rewinds), while an exact name is
     * never under /dev. */
    int pinned_first = writes || pin_reads;
    unsigned long how = !pinned_first ? flags | O_CLOEXEC | O_NONBLOCK | O_NOCTTY
                        : O_PATH | O_CLOEXEC | (flags & O_NOFOLLOW) | (writes ? 0 : flags & O_DIRECTORY);
    char joined[PATH_BYTES + 1];
    const char *path = exact_path((pid_t)n->pid, dirfd, raw, joined); /* what is opened */
    int fd = -1, exact = path != NULL, anchor = AT_FDCWD;
    if (exact) {
        fd = open_exact(path, how);
        if (fd < 0 && errno != ENOENT)
            exact = 0; /* a symlink on the way (ELOOP), ...: resolved as before */
    }
    if (!exact) {
        anchor = open_anchor((pid_t)n->pid, dirfd, raw);
        if (anchor == -2)
            return 0;
        if (!pinned_first) {
            pinned_first = 1;
            how = O_PATH | O_CLOEXEC | (flags & (O_NOFOLLOW | O_DIRECTORY));
        }
        fd = open_followed(anchor, raw, how);
    }
    if (fd < 0) {
        int err = errno, answered = 0;
        if (err == ENOENT && (flags & O_CREAT))
            answered = serve_create(listener, n, dirfd, anchor, exact ? path : raw, exact, flags,
                                    mode, reads);
        else if (err == ENOENT && (exact || !missing_in_proc(anchor, raw))) {
            /* Nothing there: what the kernel would say, no rule asked. */
            respond_error(listener, n->id, ENOENT);
            answered = 1;
        }
        close_anchor(anchor);
        return answered; /* EACCES, ELOOP, ...: the policy still decides */
    }
    close_anchor(anchor);

    struct stat st;
    char real_buffer[PATH_BYTES + 1];
    const char *real = exact ? path : real_buffer;
    ssize_t length = fstat(fd, &st) != 0 ? -1 : exact ? (ssize_t)strlen(path) : real_path(fd, real_buffer);
    int plain = length > 0 && !on_proc(&st) &&
                ((S_ISREG(st.st_mode) && (writes ? sole_name(&st) : own_name(&st))) ||
                 (S_ISDIR(st.st_mode) && !writes) ||
                 (harmless_device(&st) && harmless_device_name(real)));
    int need = (reads || !writes ? ALLOW_READ : 0) | (writes ? ALLOW_WRITE : 0);
    if (!plain || !granted(real, (size_t)length, need, writes)) {
        close(fd);
        return 0;
    }
    int cloexec = (flags & O_CLOEXEC) != 0;
    if (pinned_first) {
        if ((flags & O_TRUNC) && !id_valid(listener, n->id)) {
            close(fd); /* interrupted: nothing may be truncated */
            return 1;
        }
        char name[16];
        snprintf(name, sizeof name, "%d", fd);
        if (own_fd_dir() < 0) {
            close(fd);
            return 0;
        }
        /* Reopened through the magic link: the very file that was decided on
         * (a read as it would have been opened above); where the agent may
         * read it, the same file in the broker's own view. */
        /* A regular file only: a directory of that view would let the agent
         * open what lies beneath it unasked. */
        int view = lane_on && S_ISREG(st.st_mode) && (cache_bits(real, (size_t)length) & ALLOW_READ)
                       ? in_own_view(real, (size_t)length, fd)
                       : -1;
        if (view >= 0)
            snprintf(name, sizeof name, "%d", view);
        unsigned long own = (flags & ~(unsigned long)(O_NOFOLLOW | O_CLOEXEC)) | O_CLOEXEC;
        int reopened = openat(own_fds, name, (int)(writes ? own : own | O_NONBLOCK | O_NOCTTY));
        if (view >= 0) {
            int kept = errno;
            close(view);
            errno = kept;
        }
        int reopen_errno = errno;
        close(fd);
        if (reopened < 0) {
            respond_error(listener, n->id, reopen_errno);
            return 1;
        }
        fd = reopened;
    }
    if (!writes && !(flags & O_NONBLOCK)) {
        /* O_NONBLOCK was only for our open; the agent gets the flags it asked for. */
        fcntl(fd, F_SETFL, (int)(flags & setfl_flags));
    }
    inject(listener, n->id, fd, cloexec);
    close(fd);
    return 1;
}

/* unlink, rmdir, unlinkat: the name is removed from its pinned directory.
 * A name with trailing slashes (`rmdir dir/`) is judged as the name without
 * them (dir), and removed as spelled: to the kernel they say "a directory",
 * so `rm file/` and `unlink("symlink/")` fail with ENOTDIR, as bare. */
static int serve_unlink(int listener, const struct seccomp_notif *n, int dirfd, uint64_t ptr,
                        int remove_dir) {
    char raw[PATH_BYTES], stripped[PATH_BYTES], parent[PATH_BYTES], target[PATH_BYTES + 1];
    const char *name;
    if (!agent_path(n, ptr, raw))
        return 0;
    size_t length = strlen(raw);
    memcpy(stripped, raw, length + 1);
    while (length > 0 && stripped[length - 1] == '/')
        stripped[--length] = '\0';
    if (length == 0 || !split_parent(stripped, parent, &name))
        return 0;
    const char *spelled = raw + (name - stripped); /* the same name, its slashes kept */
    ssize_t target_length;
    int dir = pin_parent_of(n, dirfd, stripped, parent, name, target, &target_length);
    if (dir < 0)
        return 0;
    if (!granted(target, (size_t)target_length, ALLOW_DELETE, 0)) {
        close(dir);
        return 0;
    }
    if (id_valid(listener, n->id)) { /* interrupted: nothing may be removed */
        if (unlinkat(dir, spelled, remove_dir ? AT_REMOVEDIR : 0) == 0)
            respond_value(listener, n->id, 0);
        else
            respond_error(listener, n->id, errno);
    }
    close(dir);
    return 1;
}

/* utimensat's times argument into `times`: 1 when it is NULL (now), 2 when
 * read and in range, 0 when it is the supervisor's (unreadable, out of range,
 * or both UTIME_OMIT, which it answers with no lookup). */
static int agent_times(const struct seccomp_notif *n, uint64_t times_ptr, struct timespec *times) {
    if (!times_ptr)
        return 1;
    struct iovec local = {times, 2 * sizeof *times};
    struct iovec remote = {(void *)(uintptr_t)times_ptr, 2 * sizeof *times};
    if (process_vm_readv((pid_t)n->pid, &local, 1, &remote, 1, 0) != (ssize_t)(2 * sizeof *times))
        return 0;
    for (int i = 0; i < 2; i++)
        if ((times[i].tv_nsec < 0 || times[i].tv_nsec >= 1000000000) &&
            times[i].tv_nsec != UTIME_NOW && times[i].tv_nsec != UTIME_OMIT)
            return 0;
    return times[0].tv_nsec == UTIME_OMIT && times[1].tv_nsec == UTIME_OMIT ? 0 : 2;
}

/* The object a call names by path (utimensat, chmod), pinned (O_PATH) with
 * `st` filled and its real path in `path`: a regular file with no other name,
 * or a directory, reached by a canonical path (a relative one after the real
 * path of the agent's cwd or dirfd) with no symlink followed.  -1: the
 * supervisor's (symlinks, other files, special paths); -2: nothing there
 * (ENOENT before any symlink). */
static int pin_object(const struct seccomp_notif *n, int dirfd, uint64_t path_ptr, int nofollow,
                      char *path, struct stat *st) {
    char raw[PATH_BYTES];
    const char *exact = agent_path(n, path_ptr, raw) ? exact_path((pid_t)n->pid, dirfd, raw, path)
                                                      : NULL;
    if (!exact)
        return -1;
    if (exact == raw)
        memcpy(path, raw, strlen(raw) + 1);
    int fd = open_exact(path, O_PATH | O_CLOEXEC | (nofollow ? O_NOFOLLOW : 0));
    if (fd < 0)
        return errno == ENOENT ? -2 : -1;
    if (fstat(fd, st) != 0 || on_proc(st) ||
        !((S_ISREG(st->st_mode) && sole_name(st)) || S_ISDIR(st->st_mode))) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A call on a name `pin_object` pinned, decided as `need` on its path; 1 when
 * answered.  `act` does it on the pinned descriptor (0 or -1 with errno).  A
 * name not there fails with ENOENT where `need` is plainly allowed: the
 * supervisor decides before it answers that. */
static int serve_object(int listener, const struct seccomp_notif *n, int fd, const char *path,
                        int need, int (*act)(int fd, const struct stat *st, const void *how),
                        const struct stat *st, const void *how) {
    size_t length = strlen(path);
    if (fd == -2) {
        if (!granted(path, length, need, 0))
            return 0;
        respond_error(listener, n->id, ENOENT);
        return 1;
    }
    if (fd < 0)
        return 0;
    if (!granted(path, length, need, 1)) {
        close(fd);
        return 0;
    }
    if (id_valid(listener, n->id)) { /* interrupted: nothing may change */
        if (act(fd, st, how) == 0)
            respond_value(listener, n->id, 0);
        else
            respond_error(listener, n->id, errno);
    }
    close(fd);
    return 1;
}

static int set_times(int fd, const struct stat *st, const void *how) {
    (void)st;
    return utimensat(fd, "", (const struct timespec *)how, AT_EMPTY_PATH);
}

/* utimensat with a path and no flag but AT_SYMLINK_NOFOLLOW (tar, pip and
 * git's object freshening set times by name): decided as a write to the
 * object, whose times are changed through its pinned descriptor, as the
 * supervisor's broker changes them.  Times out of range, both UTIME_OMIT and
 * futimens (below) are the supervisor's. */
static int serve_utimensat(int listener, const struct seccomp_notif *n, int dirfd,
                           uint64_t path_ptr, uint64_t times_ptr, unsigned long flags) {
    struct timespec times[2];
    if (!path_ptr || (flags & ~(unsigned long)AT_SYMLINK_NOFOLLOW))
        return 0;
    int read = agent_times(n, times_ptr, times);
    if (!read)
        return 0;
    char path[PATH_BYTES + 1];
    struct stat st;
    int fd = pin_object(n, dirfd, path_ptr, (flags & AT_SYMLINK_NOFOLLOW) != 0, path, &st);
    return serve_object(listener, n, fd, path, ALLOW_WRITE, set_times, &st,
                        read == 2 ? times : NULL);
}

/* A mode as the supervisor sets it: a set-user-ID or set-group-ID file the
 * agent made would run with its owner's rights for everyone else, so the
 * bits are dropped (a directory keeps set-group-ID, which only passes its
 * group on). */
static mode_t kept_mode(uint64_t mode, mode_t file_type) {
    mode_t dropped = S_ISDIR(file_type) ? S_ISUID : S_ISUID | S_ISGID;
    return (mode_t)(mode & 07777) & ~dropped;
}

static int set_mode(int fd, const struct stat *st, const void *how) {
    char name[16];
    snprintf(name, sizeof name, "%d", fd);
    if (own_fd_dir() < 0)
        return -1;
    /* Through the magic link: the pinned object itself (fchmod takes no O_PATH fd). */
    return fchmodat(own_fds, name, kept_mode(*(const uint64_t *)how, st->st_mode), 0);
}

/* chmod, fchmodat and fchmodat2 with no flag (pip sets every file's mode by
 * name): decided as file_chmod on the object, changed through its pinned
 * descriptor.  A symlink (fchmodat2's AT_SYMLINK_NOFOLLOW) is the supervisor's. */
static int serve_chmod(int listener, const struct seccomp_notif *n, int dirfd, uint64_t path_ptr,
                       uint64_t mode, uint64_t flags) {
    if (!path_ptr || (flags & 0xFFFFFFFFu))
        return 0;
    char path[PATH_BYTES + 1];
    struct stat st;
    int fd = pin_object(n, dirfd, path_ptr, 0, path, &st);
    return serve_object(listener, n, fd, path, ALLOW_CHMOD, set_mode, &st, &mode);
}

/* fchmod, fchown and futimens (utimensat with no path: tar and npm restore
 * each file's mode, owner and times on the fd they wrote it through) act on
 * a file the agent holds.  They are decided on what that fd is: a copy of it
 * is taken (pidfd_getfd, through a pidfd of the calling thread, held while
 * its notification pends), and its real path judged, as the supervisor's
 * _fd_object judges it: file_chmod for mode and owner (set-ID bits dropped,
 * as the supervisor drops them), file_write for times.  Only a regular file
 * with no other name; the rest (pipes, directories, removed files, fds it
 * cannot copy) is the supervisor's. */
enum fd_op { FD_CHMOD, FD_CHOWN, FD_TIMES };

static int serve_fd_op(int listener, const struct seccomp_notif *n, enum fd_op op) {
#ifdef SYS_pidfd_getfd
    const __u64 *args = n->data.args;
    struct timespec times[2];
    int read = op == FD_TIMES ? agent_times(n, args[2], times) : 1;
    if (!read || (op == FD_TIMES && (args[3] & 0xFFFFFFFFu)))
        return 0;
    int pidfd = pidfd_of_caller(listener, n);
    if (pidfd < 0)
        return 0;
    int fd = (int)syscall(SYS_pidfd_getfd, pidfd, (int)(int32_t)args[0], 0);
    close(pidfd);
    if (fd < 0)
        return 0;
    struct stat st;
    char real[PATH_BYTES + 1];
    ssize_t length = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && sole_name(&st)
                         ? real_path(fd, real) : -1;
    /* The file at that path in the agent's view (this broker's), or the
     * supervisor's to refuse: a file handed in from the host's /tmp reads
     * as a path of the agent's own private /tmp. */
    struct stat there;
    if (length > 0 && st.st_nlink > 0 &&
        (stat(real, &there) != 0 || there.st_dev != st.st_dev || there.st_ino != st.st_ino))
        length = -1;
    if (length < 0 || !granted(real, (size_t)length, op == FD_TIMES ? ALLOW_WRITE : ALLOW_CHMOD, 0)) {
        close(fd);
        return 0;
    }
    if (id_valid(listener, n->id)) { /* interrupted: nothing may change */
        int done;
        if (op == FD_CHMOD)
            done = fchmod(fd, kept_mode(args[1], st.st_mode));
        else if (op == FD_CHOWN)
            done = fchown(fd, (uid_t)(args[1] & 0xFFFFFFFFu), (gid_t)(args[2] & 0xFFFFFFFFu));
        else
            done = futimens(fd, read == 2 ? times : NULL);
        if (done == 0)
            respond_value(listener, n->id, 0);
        else
            respond_error(listener, n->id, errno);
    }
    close(fd);
    return 1;
#else
    (void)listener, (void)n, (void)op;
    return 0;
#endif
}

/* mkdir, mkdirat: the directory is made in its pinned parent, as the
 * supervisor's _mkdir makes it (the agent's umask applied, set-user-ID
 * dropped).  A name already there fails with EEXIST from mkdirat itself,
 * before any permission check, as the supervisor answers it before any rule;
 * a name with a trailing slash, ".", ".." or "/" is the supervisor's. */
static int serve_mkdir(int listener, const struct seccomp_notif *n, int dirfd, uint64_t ptr,
                       unsigned long mode) {
    char raw[PATH_BYTES], parent[PATH_BYTES], target[PATH_BYTES + 1];
    const char *name;
    if (!agent_path(n, ptr, raw) || !split_parent(raw, parent, &name))
        return 0;
    ssize_t length;
    int dir = pin_parent_of(n, dirfd, raw, parent, name, target, &length);
    if (dir == -1 && errno == ENOENT)
        return missing_parent(listener, n, dirfd, raw, ALLOW_WRITE);
    if (dir < 0)
        return 0;
    int umask = -1;
    if (!granted(target, (size_t)length, ALLOW_WRITE, 0) ||
        (umask = agent_umask((pid_t)n->pid)) < 0) {
        close(dir);
        return 0;
    }
    if (id_valid(listener, n->id)) { /* interrupted: nothing may be made */
        mode_t made = (mode_t)(mode & 07777 & ~(unsigned long)umask & ~(unsigned long)S_ISUID);
        if (mkdirat(dir, name, made) == 0)
            respond_value(listener, n->id, 0);
        else
            respond_error(listener, n->id, errno);
    }
    close(dir);
    return 1;
}

/* Both names of a rename or link, each split and its directory pinned as
 * pin_parent_of pins it; 0 (nothing held) when either is the supervisor's. */
struct two_names {
    const char *name[2];
    int dir[2];
    ssize_t length[2];
    char raw[2][PATH_BYTES], parent[2][PATH_BYTES], target[2][PATH_BYTES + 1];
};

static int pin_two(const struct seccomp_notif *n, const int dirfd[2], const uint64_t ptr[2],
                   struct two_names *t) {
    t->dir[0] = t->dir[1] = -1;
    for (int i = 0; i < 2; i++) {
        if (!agent_path(n, ptr[i], t->raw[i]) || !split_parent(t->raw[i], t->parent[i], &t->name[i]))
            break;
        t->dir[i] = pin_parent_of(n, dirfd[i], t->raw[i], t->parent[i], t->name[i], t->target[i],
                                  &t->length[i]);
        if (t->dir[i] < 0)
            break;
        if (i == 1)
            return 1;
    }
    if (t->dir[0] >= 0)
        close(t->dir[0]);
    return 0;
}

static void release_two(struct two_names *t) {
    close(t->dir[0]);
    close(t->dir[1]);
}

/* rename, renameat, renameat2 (no flags, or RENAME_NOREPLACE): the
 * supervisor's checks (file_move and file_read at the old name: the new one
 * may be readable; file_write at the new, and more where a name holds a file,
 * below), then renameat2 between the pinned directories.  The rules follow
 * names: a name that refuses nothing (every file action and process_spawn
 * plainly allowed) gives no new name anything it did not have; any other is
 * the supervisor's to compare, and so is a directory, whose tree the
 * supervisor has listed and judged under both names. */
static int serve_rename(int listener, const struct seccomp_notif *n, int olddirfd,
                        uint64_t old_ptr, int newdirfd, uint64_t new_ptr, uint64_t flags) {
    if (flags & ~(uint64_t)RENAME_NOREPLACE)
        return 0; /* an exchange checks both ways; anything else is the supervisor's */
    struct two_names t;
    const int dirfd[2] = {olddirfd, newdirfd};
    const uint64_t ptr[2] = {old_ptr, new_ptr};
    if (!pin_two(n, dirfd, ptr, &t))
        return 0;
    /* What each name holds, only looked at: a file with other names moves
     * out with them still on it (its writes and mode changes reach them: the
     * checks of a link; another name of a protected file is the
     * supervisor's); a file at the new name goes (deleted, and its name gets
     * another file's mode). */
    struct stat held[2];
    int there[2];
    for (int i = 0; i < 2; i++)
        there[i] = fstatat(t.dir[i], t.name[i], &held[i], AT_SYMLINK_NOFOLLOW) == 0;
    int linked = there[0] && S_ISREG(held[0].st_mode) && held[0].st_nlink > 1;
    int need_old = ALLOW_MOVE | ALLOW_READ | ALLOW_WRITE | ALLOW_DELETE | ALLOW_CHMOD | ALLOW_SPAWN;
    int need_new = ALLOW_WRITE | (there[1] && !(flags & RENAME_NOREPLACE) ? ALLOW_DELETE | ALLOW_CHMOD : 0);
    if ((there[0] && S_ISDIR(held[0].st_mode)) || (linked && !own_name(&held[0])) ||
        !granted(t.target[0], (size_t)t.length[0], need_old, 0) ||
        !granted(t.target[1], (size_t)t.length[1], need_new, 0)) {
        release_two(&t);
        return 0;
    }
    if (id_valid(listener, n->id)) { /* interrupted: nothing may be moved */
        /* Before the move: what the kernel lets be read unasked may get a new
         * name, and no mark is added while this thread moves it. */
        lane_flush();
#ifdef SYS_renameat2
        long moved = syscall(SYS_renameat2, t.dir[0], t.name[0], t.dir[1], t.name[1], (unsigned)flags);
#else
        long moved = flags ? (errno = ENOSYS, -1) : renameat(t.dir[0], t.name[0], t.dir[1], t.name[1]);
#endif
        if (moved == 0)
            respond_value(listener, n->id, 0);
        else
            respond_error(listener, n->id, errno);
    }
    release_two(&t);
    return 1;
}

/* link, linkat (no flags): the supervisor's checks (at the old name,
 * everything the new name would allow: file_read, file_write and file_chmod;
 * file_write at the new), for a regular file that is no hard link to a
 * protected file (which must be judged as that file): one with no other
 * name, or not among the protected inodes.  The very inode looked at is
 * linked (through its magic link), never the name again. */
static int serve_link(int listener, const struct seccomp_notif *n, int olddirfd, uint64_t old_ptr,
                      int newdirfd, uint64_t new_ptr, uint64_t flags) {
    if (flags)
        return 0; /* AT_SYMLINK_FOLLOW, AT_EMPTY_PATH: the supervisor's */
    struct two_names t;
    const int dirfd[2] = {olddirfd, newdirfd};
    const uint64_t ptr[2] = {old_ptr, new_ptr};
    if (!pin_two(n, dirfd, ptr, &t))
        return 0;
    struct stat st;
    int object = openat(t.dir[0], t.name[0], O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (object < 0 || fstat(object, &st) != 0 || !S_ISREG(st.st_mode) || !own_name(&st) ||
        own_fd_dir() < 0 ||
        !granted(t.target[0], (size_t)t.length[0], ALLOW_READ | ALLOW_WRITE | ALLOW_CHMOD, 0) ||
        !granted(t.target[1], (size_t)t.length[1], ALLOW_WRITE, 0)) {
        if (object >= 0)
            close(object);
        release_two(&t);
        return 0;
    }
    if (id_valid(listener, n->id)) { /* interrupted: nothing may be linked */
        char name[16];
        snprintf(name, sizeof name, "%d", object);
        lane_flush(); /* before: a new name may judge it otherwise */
        if (linkat(own_fds, name, t.dir[1], t.name[1], AT_SYMLINK_FOLLOW) == 0)
            respond_value(listener, n->id, 0);
        else
            respond_error(listener, n->id, errno);
    }
    close(object);
    release_two(&t);
    return 1;
}

/* 1 when the notification was answered here, 0 when it must be forwarded. */
static int send_forward(int forward_fd, const struct seccomp_notif *n, int pidfd, const char *path,
                        size_t path_length);


/* A notice for `n`'s thread (`flag` in its flags), sent now with a pidfd of
 * it; 0 when sent.  Never queued: when it cannot go now, the syscall itself
 * is forwarded, and the supervisor checks or decides as it always did. */
static int tell(int listener, int forward_fd, const struct seccomp_notif *n, unsigned flag) {
    int pidfd = pidfd_of_caller(listener, n);
    if (pidfd < 0)
        return -1;
    struct seccomp_notif notice = *n;
    notice.flags |= flag;
    int sent = send_forward(forward_fd, &notice, pidfd, NULL, 0);
    close(pidfd);
    return sent == 0 ? 0 : -1;
}

/* -- execs decided here --------------------------------------------------------
 * An exec of an ELF file that the policy plainly allows, both as
 * process_spawn of its real path and as shell_execute of its command line, is
 * let through here (CONTINUE: only the kernel can run an exec), once the
 * supervisor was told (NOTICE_EXEC_DONE: it forgets what it kept of the old
 * image).  Its first syscall is then checked here against what was allowed;
 * a failed exec is told by the image that called it, kept where execs are
 * randomized; anything else is forwarded to be judged as an exec
 * (NOTICE_EXEC_JUDGE).  Scripts, fds, long command lines, files with other
 * names: the supervisor's, as before.
 *
 * The kernel also maps the program's interpreter (PT_INTERP), which can then
 * read itself, so it is judged too (process_spawn and file_read of its real
 * path) when the agent could have crafted the program (`agent_may_write`).
 * An absolute PT_INTERP the policy plainly allows goes on here; a relative
 * one (the kernel opens it from the agent's cwd), one not plainly allowed,
 * and a header that does not read plainly are the supervisor's, which
 * decides.  A program nobody can read is the supervisor's too: it refuses
 * one the agent may write. */

#define ARGV_BYTES 32768
#define ARGV_COUNT 4096

/* argv's strings, each NUL-terminated, one after another in `out`: their
 * length, or -1 (unreadable, empty, too long or too many: the supervisor's). */
static ssize_t read_argv(pid_t pid, uint64_t at, char *out, size_t capacity) {
    size_t used = 0;
    unsigned count = 0;
    if (!at || at % 8)
        return -1;
    for (;;) {
        uint64_t pointers[64];
        size_t page_left = 4096 - (at & 4095);
        size_t want = page_left < sizeof pointers ? page_left : sizeof pointers;
        struct iovec local = {pointers, want};
        struct iovec remote = {(void *)(uintptr_t)at, want};
        ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (n < 8)
            return -1;
        for (size_t i = 0; i < (size_t)n / 8; i++) {
            if (!pointers[i])
                return count ? (ssize_t)used : -1;
            if (++count > ARGV_COUNT || used >= capacity)
                return -1;
            ssize_t length = read_string(pid, pointers[i], out + used, capacity - used);
            if (length < 0)
                return -1;
            used += (size_t)length + 1;
        }
        at += (uint64_t)n - (uint64_t)n % 8;
    }
}

/* Whether the agent could have written the file `path_fd` (O_PATH) holds:
 * it owns it (and may chmod it writable), or the kernel lets the broker, which
 * has the agent's rights, write it.  A file it could not write it did not
 * craft: what that names next is the system's, as it was installed.  (The
 * supervisor asks the policy instead; here the cache keeps only allows, and a
 * "never written" would cost a call into Python on every exec of a system
 * program.)  Any answer but a plain refusal counts as "could". */
static int agent_may_write(int path_fd, const struct stat *st) {
    char name[16];
    if (st->st_uid == geteuid() || own_fd_dir() < 0)
        return 1;
    snprintf(name, sizeof name, "%d", path_fd);
    if (faccessat(own_fds, name, W_OK, 0) == 0)
        return 1;
    return errno != EACCES && errno != EROFS && errno != EPERM;
}

#define PT_INTERP_TYPE 3
#define ELF64_PHDR 56
#define ELF32_PHDR 32
#define ELF_PHDRS_MAX 65536 /* the kernel's bound on a program header table */

static unsigned char phdrs[ELF_PHDRS_MAX];

/* The interpreter the ELF program `fd` names, as binfmt_elf reads it (the
 * first PT_INTERP, 2 to PATH_MAX bytes ending in a NUL), into `out` (at least
 * PATH_BYTES): its length; 0 when there is none (a static program); -1 when
 * the header is anything but plain 64-bit (one compat_binfmt_elf could read
 * as 32-bit too) or does not read whole: the supervisor reads it. */
static ssize_t elf_interpreter(int fd, const unsigned char *head, char *out) {
    uint64_t phoff;
    uint16_t size, count, size32;
    memcpy(&phoff, head + 32, sizeof phoff);
    memcpy(&size, head + 54, sizeof size);
    memcpy(&count, head + 56, sizeof count);
    memcpy(&size32, head + 42, sizeof size32);
    size_t table = (size_t)count * ELF64_PHDR;
    if (size != ELF64_PHDR || size32 == ELF32_PHDR || table == 0 || table > ELF_PHDRS_MAX ||
        phoff > INT64_MAX || pread(fd, phdrs, table, (off_t)phoff) != (ssize_t)table)
        return -1;
    for (size_t at = 0; at < table; at += ELF64_PHDR) {
        uint32_t type;
        uint64_t offset, length;
        memcpy(&type, phdrs + at, sizeof type);
        if (type != PT_INTERP_TYPE)
            continue;
        memcpy(&offset, phdrs + at + 8, sizeof offset);
        memcpy(&length, phdrs + at + 32, sizeof length);
        if (length < 2 || length > PATH_BYTES || offset > INT64_MAX ||
            pread(fd, out, (size_t)length, (off_t)offset) != (ssize_t)length ||
            out[length - 1] != '\0' || out[0] == '\0')
            return -1;
        return (ssize_t)strlen(out);
    }
    return 0;
}

/* Whether the interpreter the ELF program `fd` names (none, or an absolute
 * path) is plainly allowed to be run and read, by its real path. */
static int interpreter_granted(int fd, const unsigned char *head) {
    char interp[PATH_BYTES], real[PATH_BYTES + 1];
    ssize_t length = elf_interpreter(fd, head, interp);
    if (length <= 0 || interp[0] != '/')
        return length == 0; /* relative: from the agent's cwd, the supervisor's */
    int found = open_followed(AT_FDCWD, interp, O_PATH | O_CLOEXEC);
    if (found < 0)
        return 0;
    struct stat st;
    ssize_t real_length = fstat(found, &st) == 0 && S_ISREG(st.st_mode) && own_name(&st)
                              ? real_path(found, real)
                              : -1;
    close(found);
    return real_length > 0 &&
           granted(real, (size_t)real_length, ALLOW_SPAWN | ALLOW_READ, 0);
}

/* Whether the file `path_fd` (O_PATH) starts as an ELF executable does, and
 * what the kernel loads with it may go on here (see above).  A file the
 * broker cannot read is the supervisor's. */
static int elf_runs_here(int path_fd, const struct stat *st) {
    char name[16];
    unsigned char head[64]; /* an ELF64 header */
    snprintf(name, sizeof name, "%d", path_fd);
    int fd = own_fd_dir() < 0 ? -1 : openat(own_fds, name, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return 0;
    int runs = pread(fd, head, sizeof head, 0) == (ssize_t)sizeof head &&
               memcmp(head, "\177ELF", 4) == 0;
    if (runs && agent_may_write(path_fd, st))
        runs = interpreter_granted(fd, head);
    close(fd);
    return runs;
}

static void respond_continue(int listener, uint64_t id) {
    struct seccomp_notif_resp resp = {
        .id = id, .val = 0, .error = 0, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

static char argv[ARGV_BYTES]; /* one exec's strings at a time: the broker has one thread */

/* The command line of an exec, as shell_execute's target: the arguments
 * joined by spaces, as the supervisor joins them.  Its length (without the
 * NUL), or -1 when it is the supervisor's to read.  `argv` gets the strings as
 * /proc/PID/cmdline gives them, `*argv_length` their length. */

static ssize_t command_line(pid_t tid, uint64_t argv_ptr, ssize_t *argv_length, char *command) {
    *argv_length = read_argv(tid, argv_ptr, argv, sizeof argv);
    if (*argv_length <= 0 || *argv_length > PATH_BYTES)
        return -1;
    memcpy(command, argv, (size_t)*argv_length);
    for (ssize_t i = 0; i < *argv_length - 1; i++)
        if (command[i] == '\0')
            command[i] = ' ';
    return *argv_length - 1;
}

/* An exec of a canonical path that names nothing (ENOENT before any symlink):
 * a shell or execvp trying each PATH entry in turn.  The supervisor judges
 * only its command line (there is no file to spawn) and answers ENOENT;
 * where that command line is plainly allowed, the same answer is given here,
 * and nothing is watched (no image changes).  Anything else is the
 * supervisor's, which records it. */
static int missing_program(int listener, const struct seccomp_notif *n, uint64_t argv_ptr,
                           struct watched_exec *w) {
    char command[PATH_BYTES];
    ssize_t argv_length, length = command_line((pid_t)n->pid, argv_ptr, &argv_length, command);
    if (length < 0 || !granted(command, (size_t)length, ALLOW_SHELL, 0))
        return 0;
    free_slot(w);
    respond_error(listener, n->id, ENOENT);
    return 1;
}

static int serve_exec(int listener, int forward_fd, const struct seccomp_notif *n, int dirfd,
                      uint64_t path_ptr, uint64_t argv_ptr, struct watched_exec *w) {
    char raw[PATH_BYTES], target[PATH_BYTES + 1], command[PATH_BYTES];
    pid_t tid = (pid_t)n->pid;
    if (queue_length || !agent_path(n, path_ptr, raw))
        return 0;
    char joined[PATH_BYTES + 1];
    const char *path = exact_path(tid, dirfd, raw, joined); /* what is looked at */
    int exact = path != NULL, fd = -1;
    if (exact) {
        fd = open_exact(path, O_PATH | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT)
            return missing_program(listener, n, argv_ptr, w);
        if (fd < 0)
            exact = 0; /* a symlink on the way (the exec follows it) */
    }
    if (!exact) {
        int anchor = open_anchor(tid, dirfd, raw);
        if (anchor == -2)
            return 0;
        fd = open_followed(anchor, raw, O_PATH | O_CLOEXEC);
        close_anchor(anchor);
    }
    if (fd < 0)
        return 0; /* ENOENT, EACCES, ...: the supervisor's answer */
    struct stat st;
    ssize_t length = fstat(fd, &st) != 0 ? -1 : exact ? (ssize_t)strlen(path) : real_path(fd, target);
    if (exact && length > 0)
        memcpy(target, path, (size_t)length + 1);
    int runnable = length > 0 && S_ISREG(st.st_mode) && own_name(&st) && elf_runs_here(fd, &st);
    close(fd);
    ssize_t argv_length;
    if (!runnable ||
        command_line(tid, argv_ptr, &argv_length, command) < 0 ||
        !granted(target, (size_t)length, ALLOW_SPAWN, 0) ||
        !granted(command, (size_t)argv_length - 1, ALLOW_SHELL, 0))
        return 0;
    struct image *before = NULL;
    if (randomized(tid) && (before = malloc(sizeof *before)) && read_image(w->pid, before) != 0) {
        free(before);
        before = NULL;
    }
    char *cmdline = malloc((size_t)argv_length);
    if (!cmdline || tell(listener, forward_fd, n, NOTICE_EXEC_DONE) != 0) {
        free(cmdline);
        free(before);
        return 0;
    }
    memcpy(cmdline, argv, (size_t)argv_length);
    w->expected = 1;
    w->decided_here = 1;
    w->dev = st.st_dev;
    w->ino = st.st_ino;
    w->cmdline = cmdline;
    w->cmdline_length = (size_t)argv_length;
    w->before = before;
    respond_continue(listener, n->id);
    return 1;
}

/* The first syscall after an exec: 1 when the image running is the one
 * allowed (or the exec failed), else 0, with `n` marked for the supervisor
 * to judge when this path allowed the exec. */
/* Whether the image `w`'s process runs is the one allowed, or the one that
 * called exec (the exec failed); 0 when unknown here. */
static int image_checked(const struct watched_exec *w) {
    if (!w->expected)
        return 0;
    if (runs_as_expected(w))
        return 1;
    struct image now;
    return w->before && read_image(w->pid, &now) == 0 && same_image(&now, w->before);
}

static int first_after_exec(int listener, int forward_fd, struct seccomp_notif *n,
                            struct watched_exec *w) {
    if (w->exec_tid != w->pid && in_thread_group(w->pid, w->exec_tid))
        return 0; /* a thread's exec not done (or failed): the old image still runs */
    int here = w->decided_here, checked = image_checked(w);
    free_slot(w);
    if (checked && !here) /* the supervisor holds it to the exec it allowed: it is told */
        checked = !queue_length && tell(listener, forward_fd, n, NOTICE_EXEC_CHECKED) == 0;
    if (!checked && here)
        n->flags |= NOTICE_EXEC_JUDGE;
    return checked;
}

/* -- the CPUs the agent may use ------------------------------------------------
 * CPU placement (placement.py) keeps the agent's tree on one CPU while it
 * makes many mediated syscalls: an affinity agentsup set, not the agent.
 * Bare, a process would have the CPUs agentsup itself started with, and it
 * sizes its parallelism from them (nproc, make -j, os.sched_getaffinity,
 * the Go, Java and Rust runtimes): so that is what sched_getaffinity answers
 * about the caller itself while placement keeps it on fewer.  Placement is
 * known by the broker's own CPUs (it is placed with the tree, and never by
 * the agent: PID 1 is out of its reach).  A thread whose CPUs are not the
 * broker's chose its own (taskset, sched_setaffinity) and gets the kernel's
 * answer, as does every call about another thread and every call the kernel
 * refuses (EINVAL for a length too small, ESRCH).  The mask is written with
 * process_vm_writev, which as copy_to_user respects the page's protection:
 * where it cannot write (a bad or read-only address, a process the broker
 * may not write to), the kernel answers instead, EFAULT included. */

#define MASK_BYTES 8192 /* cpumask_size() is at most NR_CPUS / 8 = 1024 */
static unsigned char started_mask[MASK_BYTES]; /* captured at import, in the supervisor */
static long started_length = -1;                /* this kernel's cpumask_size(), or -1 */

static int serve_getaffinity(int listener, const struct seccomp_notif *n) {
    static unsigned char own[MASK_BYTES], theirs[MASK_BYTES];
    pid_t pid = (pid_t)(int32_t)n->data.args[0];
    unsigned int length = (unsigned int)n->data.args[1];
    if (started_length <= 0 || (pid != 0 && pid != (pid_t)n->pid))
        goto kernel;
    long placed = syscall(SYS_sched_getaffinity, 0, MASK_BYTES, own);
    if (placed != started_length || memcmp(own, started_mask, (size_t)placed) == 0)
        goto kernel; /* not placed on fewer CPUs than agentsup started with */
    /* The agent's own length: the kernel checks it as for the agent (EINVAL),
     * and writes min(length, cpumask_size()) bytes. */
    long got = syscall(SYS_sched_getaffinity, (pid_t)n->pid, length, theirs);
    if (got <= 0 || got > placed || memcmp(theirs, own, (size_t)got) != 0)
        goto kernel; /* refused, gone, or CPUs of its own choosing */
    if (!id_valid(listener, n->id))
        return 1; /* interrupted or gone: nothing is owed, nothing written */
    struct iovec local = {started_mask, (size_t)got};
    struct iovec remote = {(void *)(uintptr_t)n->data.args[2], (size_t)got};
    if (process_vm_writev((pid_t)n->pid, &local, 1, &remote, 1, 0) != (ssize_t)got)
        goto kernel;
    respond_value(listener, n->id, got);
    return 1;
kernel:
    respond_continue(listener, n->id);
    return 1;
}

static int serve_fast(int listener, int forward_fd, struct seccomp_notif *n) {
    const __u64 *args = n->data.args;
    pid_t tid = (pid_t)n->pid;
    if (held_count)
        umask_done(tid);
    if (n->data.arch != NATIVE_ARCH || (n->data.nr & X32_BIT)) {
        umask_cache_off = 1; /* never trapped (the filter kills it), but its umask is unseen */
        umask_forget();
        return 0;
    }
    /* Forwarded (after the watching below): the supervisor checks the image first. */
    int forward_now = 0;
    struct watched_exec *w = watched_count ? exec_thread_slot(tid) : NULL;
    if (w && in_thread_group(w->pid, tid)) {
        free_slot(w); /* that thread's exec failed: the supervisor drops its check too */
        forward_now = 1;
    } else if (w) {
        /* Not a thread of that process: its exec went through, and this is
         * another thread with its old id (red team 30).  The check stays. */
        w->exec_tid = w->pid;
    }
    w = watched_slot(tid);
    if (w && !forward_now && !first_after_exec(listener, forward_fd, n, w))
        forward_now = 1;
    switch (n->data.nr) {
    case __NR_umask:
        umask_hold(tid);
        return 0;
    case __NR_execve:
    case __NR_execveat: {
        long tgid = status_field(tid, "\nTgid:", 10);
        if (tgid != tid)
            umask_hold(tid); /* a thread's exec: it takes its leader's TID */
        /* After exec the process runs as its thread group leader. */
        pid_t leader = tgid > 0 ? (pid_t)tgid : tid;
        struct watched_exec *pending = watched_slot(leader);
        if (pending && pending->exec_tid != tid)
            return 0; /* another thread's exec is not done: the supervisor refuses this one */
        if (watch(leader, n->id, tid) < 0)
            fast_disabled = 1;
        /* A thread's exec is the supervisor's: until it is done, the
         * leader's calls are the old image's, which it tells apart. */
        if (forward_now || fast_disabled || leader != tid || !(w = watched_slot(leader)))
            return 0;
        if (n->data.nr == __NR_execve)
            return serve_exec(listener, forward_fd, n, AT_FDCWD, args[0], args[1], w);
        if (args[4] & 0xFFFFFFFFu)
            return 0; /* AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW: the supervisor's */
        return serve_exec(listener, forward_fd, n, (int)(int32_t)args[0], args[1], args[2], w);
    }
    }
    if (forward_now || fast_disabled)
        return 0;
    switch (n->data.nr) {
#ifdef __NR_open
    case __NR_open:
        return serve_open(listener, n, AT_FDCWD, args[0], (unsigned long)args[1], (unsigned long)args[2]);
#endif
    case __NR_openat:
        return serve_open(listener, n, (int)(int32_t)args[0], args[1], (unsigned long)args[2],
                          (unsigned long)args[3]);
#ifdef __NR_unlink
    case __NR_unlink:
        return serve_unlink(listener, n, AT_FDCWD, args[0], 0);
#endif
#ifdef __NR_rmdir
    case __NR_rmdir:
        return serve_unlink(listener, n, AT_FDCWD, args[0], 1);
#endif
#ifdef __NR_mkdir
    case __NR_mkdir:
        return serve_mkdir(listener, n, AT_FDCWD, args[0], (unsigned long)args[1]);
#endif
    case __NR_mkdirat:
        return serve_mkdir(listener, n, (int)(int32_t)args[0], args[1], (unsigned long)args[2]);
#ifdef __NR_rename
    case __NR_rename:
        return serve_rename(listener, n, AT_FDCWD, args[0], AT_FDCWD, args[1], 0);
#endif
    case __NR_renameat:
        return serve_rename(listener, n, (int)(int32_t)args[0], args[1], (int)(int32_t)args[2],
                            args[3], 0);
#ifdef __NR_renameat2
    case __NR_renameat2:
        return serve_rename(listener, n, (int)(int32_t)args[0], args[1], (int)(int32_t)args[2],
                            args[3], args[4] & 0xFFFFFFFFu);
#endif
#ifdef __NR_link
    case __NR_link:
        return serve_link(listener, n, AT_FDCWD, args[0], AT_FDCWD, args[1], 0);
#endif
    case __NR_linkat:
        return serve_link(listener, n, (int)(int32_t)args[0], args[1], (int)(int32_t)args[2],
                          args[3], args[4] & 0xFFFFFFFFu);
    case __NR_utimensat:
        if (!args[1] && (int32_t)args[0] != AT_FDCWD)
            return serve_fd_op(listener, n, FD_TIMES); /* futimens */
        return serve_utimensat(listener, n, (int)(int32_t)args[0], args[1], args[2],
                               args[3] & 0xFFFFFFFFu);
    case __NR_fchmod:
        return serve_fd_op(listener, n, FD_CHMOD);
#ifdef __NR_chmod
    case __NR_chmod:
        return serve_chmod(listener, n, AT_FDCWD, args[0], args[1], 0);
#endif
    case __NR_fchmodat:
        return serve_chmod(listener, n, (int)(int32_t)args[0], args[1], args[2], 0);
#ifdef __NR_fchmodat2
    case __NR_fchmodat2:
        return serve_chmod(listener, n, (int)(int32_t)args[0], args[1], args[2], args[3]);
#endif
    case __NR_fchown:
        return serve_fd_op(listener, n, FD_CHOWN);
    case __NR_sched_getaffinity:
        return serve_getaffinity(listener, n);
    case __NR_brk:
    case __NR_arch_prctl:
        /* Trapped only as a new image's first call (brk(NULL), ARCH_SET_FS):
         * its exec was checked above. */
        respond_continue(listener, n->id);
        return 1;
    case __NR_unlinkat:
        if (args[2] & ~(uint64_t)AT_REMOVEDIR)
            return 0; /* EINVAL is the supervisor's to give */
        return serve_unlink(listener, n, (int)(int32_t)args[0], args[1], (args[2] & AT_REMOVEDIR) != 0);
    default:
        return 0;
    }
}

/* -- forwarding --------------------------------------------------------------
 * The forward socket never blocks the broker: the supervisor may be waiting
 * for a reply on the channel while its forward queue is full, so what cannot
 * be sent now waits here, in order, and the channel is served meanwhile. */

struct queued {
    struct seccomp_notif notif;
    int pidfd;
    char *path; /* a read to judge (NOTICE_FAN_READ): its path, sent after the notification */
    size_t path_length;
};

#define QUEUE_SLOTS (1u << 16) /* more than the agent can have threads in syscalls */
static struct queued *queue;

/* 0 sent, 1 would block, -1 the supervisor is gone. */
static int send_forward(int forward_fd, const struct seccomp_notif *n, int pidfd, const char *path,
                        size_t path_length) {
    char control[CMSG_SPACE(sizeof(int))];
    memset(control, 0, sizeof control);
    struct iovec iov[2] = {{(void *)n, sizeof *n}, {(void *)path, path_length}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = path ? 2 : 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &pidfd, sizeof(int));
    for (;;) {
        if (sendmsg(forward_fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0)
            return 0;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS ? 1 : -1;
    }
}

/* A notification the supervisor will not see, failed with `err`.  One that
 * carries an image to judge (NOTICE_EXEC_JUDGE: not the one allowed) takes
 * its process with it: its watch is spent, and no later call would be
 * checked.  While the notification was pending its thread was held, so the
 * pid is still its own (or it is gone, and the kill is a no-op). */
static void lane_refuse(int fd);

static void not_forwarded(int listener, const struct seccomp_notif *n, int err) {
    if (n->flags & NOTICE_FAN_READ) {
        lane_refuse((int)n->id); /* no supervisor to judge it: refused */
        return;
    }
    if (n->flags & NOTICE_EXEC_JUDGE)
        kill((pid_t)n->pid, SIGKILL);
    respond_error(listener, n->id, err);
}

static void flush_queue(int listener, int forward_fd) {
    while (queue_length) {
        struct queued *q = &queue[queue_head];
        int sent = send_forward(forward_fd, &q->notif, q->pidfd, q->path, q->path_length);
        if (sent == 1)
            return;
        if (sent < 0)
            not_forwarded(listener, &q->notif, EPERM); /* no supervisor: fail closed */
        close(q->pidfd);
        free(q->path);
        q->path = NULL;
        queue_head = (queue_head + 1) & (QUEUE_SLOTS - 1);
        queue_length--;
    }
}

/* Send now or queue: `n` with `pidfd` (closed here) and, for a read to judge, its path. */
static void forward_with(int listener, int forward_fd, const struct seccomp_notif *n, int pidfd,
                         const char *path, size_t path_length) {
    if (!queue_length) {
        int sent = send_forward(forward_fd, n, pidfd, path, path_length);
        if (sent != 1) {
            if (sent < 0)
                not_forwarded(listener, n, EPERM);
            close(pidfd);
            return;
        }
    }
    if (!queue)
        queue = calloc(QUEUE_SLOTS, sizeof *queue);
    char *kept = NULL;
    if (path && (kept = malloc(path_length ? path_length : 1)) != NULL)
        memcpy(kept, path, path_length);
    if (!queue || queue_length == QUEUE_SLOTS || (path && !kept)) {
        not_forwarded(listener, n, EAGAIN);
        close(pidfd);
        free(kept);
        return;
    }
    struct queued *q = &queue[(queue_head + queue_length) & (QUEUE_SLOTS - 1)];
    q->notif = *n;
    q->pidfd = pidfd;
    q->path = kept;
    q->path_length = path_length;
    queue_length++;
}

/* Hand the notification to the supervisor, with a pidfd of the calling thread. */
static void forward(int listener, int forward_fd, const struct seccomp_notif *n) {
    int pidfd = pidfd_of_caller(listener, n);
    if (pidfd < 0) {
        /* Gone, interrupted (it will call again, unwatched) or out of fds. */
        not_forwarded(listener, n, EPERM);
        return;
    }
    forward_with(listener, forward_fd, n, pidfd, NULL, 0);
}

/* -- reads the kernel asks about (fanotify) ------------------------------------
 * With the read lane on, the seccomp filter lets a plain read-only open or
 * openat through, and the kernel asks here instead: the supervisor made a
 * fanotify group with FAN_OPEN_PERM marks on every mount of the agent's
 * mount namespace (procfs takes none: the lane is on only where the policy
 * plainly allows every read there) and handed it to this process.
 *
 * A reader thread takes the events.  The kernel opens each event's file in
 * the reader, so the reader runs under a Landlock layer of its own that
 * reads no device but the harmless ones: where a kernel asks about devices
 * (Linux 6.18 asks about regular files and directories only; the floor
 * keeps the devices the policy does not allow out of reach), any other
 * device the agent opens is refused by the kernel itself (EPERM), before
 * its driver runs.  Opens of this process's main thread (the broker's own,
 * done for the agent after a decision) and of processes outside the
 * agent's PID namespace are let through at once; the rest wait for this
 * thread, which decides them in serve() as it decides an open: a plainly
 * allowed read of a regular file, a directory or a harmless device, by its
 * real path, is allowed, and its inode marked so that the kernel does not
 * ask again (an ignore mark, on a file with one name only).  Everything
 * else goes to the supervisor, which answers by the event's id
 * (FAN_ANSWER).  The marks go whenever a name may change under them
 * (before a rename or link served, on a policy change, and every
 * LANE_FLUSH_MS: a rename on the host is not seen).  A read never checks
 * a new image's exec: that is its first trapped syscall's (every common
 * start-up makes one, brk or arch_prctl, before it opens anything).  Reads
 * the kernel raises inside execve, for the program and its interpreter,
 * belong to the image calling it, and a process can hide that it is in
 * execve (non-dumpable, its /proc/PID/syscall is not the broker's to read:
 * red team 31).  A read let by before that check is judged as a read. */

#define LANE_FLUSH_MS 1000
#define LANE_BATCH 32768

struct lane_event {
    struct lane_event *next;
    int fd;      /* the event's file, opened by the kernel in the reader; -1: none */
    int error;   /* why the kernel could not open it (the open is already refused) */
    pid_t tid;   /* the opener, as this PID namespace numbers it */
};

static int lane_fan = -1;   /* the fanotify group */
static int lane_view = -1;  /* the broker's own view: a copy of the agent's mount tree */
static int lane_wake = -1;  /* eventfd: events wait for the main thread */
static int lane_ruleset = -1;
static pid_t lane_own_pid;
static pthread_mutex_t lane_lock = PTHREAD_MUTEX_INITIALIZER;
static struct lane_event *lane_head, **lane_tail = &lane_head;
static unsigned lane_marks; /* ignore marks added since the last flush */
static struct timespec lane_flushed;
/* By fd: the number of the event the supervisor has yet to answer there (0:
 * none).  An answer names both, so that no answer can reach a later event
 * that got the same fd. */
static uint32_t *lane_pending;
static size_t lane_pending_size;
static uint32_t lane_asked;
#define LANE_HELPERS 64
static pid_t lane_helpers[LANE_HELPERS]; /* the broker's FIFO helpers (Broker._rendezvous) */

static void lane_respond(int fd, unsigned response) {
    struct fanotify_response r = {.fd = fd, .response = response};
    while (write(lane_fan, &r, sizeof r) < 0 && errno == EINTR)
        ;
}

static void lane_refuse(int fd) {
    lane_respond(fd, FAN_DENY);
    if (fd >= 0 && (size_t)fd < lane_pending_size)
        lane_pending[fd] = 0;
    close(fd);
}

/* Marks are added by this (the main) thread alone, so a flush before a
 * rename or link leaves none on what it moves. */
static void lane_flush(void) {
    if (!lane_on || !lane_marks)
        return;
    /* FAN_MARK_FLUSH with no mark type: every inode mark (the ignore marks);
     * the mount marks stay. */
    if (fanotify_mark(lane_fan, FAN_MARK_FLUSH, 0, AT_FDCWD, NULL) == 0)
        lane_marks = 0;
    clock_gettime(CLOCK_MONOTONIC, &lane_flushed);
}

static void lane_ignore(int fd, int directory) {
    unsigned long long mask = FAN_OPEN_PERM | (directory ? FAN_ONDIR : 0);
    if (fanotify_mark(lane_fan, FAN_MARK_ADD | FAN_MARK_INODE | FAN_MARK_IGNORE_SURV, mask, fd,
                      NULL) == 0)
        lane_marks++;
}

static int lane_helper(pid_t pid) {
    for (int i = 0; i < LANE_HELPERS; i++)
        if (lane_helpers[i] == pid)
            return 1;
    return 0;
}

static void lane_queue(int fd, int error, pid_t tid) {
    struct lane_event *e = malloc(sizeof *e);
    if (!e) {
        if (fd >= 0) {
            lane_respond(fd, FAN_DENY);
            close(fd);
        }
        return;
    }
    e->next = NULL;
    e->fd = fd;
    e->error = error;
    e->tid = tid;
    pthread_mutex_lock(&lane_lock);
    *lane_tail = e;
    lane_tail = &e->next;
    pthread_mutex_unlock(&lane_lock);
    uint64_t one = 1;
    while (write(lane_wake, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

/* No more answers can come: nothing of the agent's may wait for good.  Only
 * as the init of the agent's PID namespace (the lane is never on without
 * one): there, kill(-1) is every process of the agent's, and no other. */
static void lane_end(void) {
    if (getpid() == 1)
        kill(-1, SIGKILL);
}

static void *lane_reader(void *unused) {
    (void)unused;
    /* This thread alone: the events' files are opened here, with no device
     * but the harmless ones readable.  Without that layer no event is read
     * (a driver would run before any decision): the namespace is ended. */
    if (syscall(SYS_landlock_restrict_self, lane_ruleset, 0) != 0) {
        lane_end();
        return NULL;
    }
    close(lane_ruleset);
    static char buffer[LANE_BATCH] __attribute__((aligned(8)));
    for (;;) {
        ssize_t n = read(lane_fan, buffer, sizeof buffer);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            lane_end();
            return NULL;
        }
        struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buffer;
        for (; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
            if (m->vers != FANOTIFY_METADATA_VERSION) {
                lane_end();
                return NULL;
            }
            if (!(m->mask & FAN_OPEN_PERM)) {
                if (m->fd >= 0)
                    close(m->fd);
                continue;
            }
            if (m->fd < 0) {
                /* Not opened here (FAN_REPORT_FD_ERROR): the kernel refused it
                 * already; the supervisor records it. */
                lane_queue(-1, -m->fd, m->pid);
                continue;
            }
            if (m->pid == 0 || m->pid == lane_own_pid) {
                lane_respond(m->fd, FAN_ALLOW);
                close(m->fd);
                continue;
            }
            lane_queue(m->fd, 0, m->pid);
        }
    }
}

/* The broker's own view.  A copy of the agent's mount tree, made before the
 * marks and held by this process alone (namespaces.clone_tree): the same
 * files, through mounts with no mark, so that the broker's own opens for
 * the agent (a create, a write) are not asked about, which would cost a
 * round trip to the reader each.  Only for a file the agent may read
 * plainly: a file the broker hands over from this view can be read again
 * through /proc/self/fd unasked.  `in_own_view` finds the object `pinned`
 * (found in the agent's view, at `real`, its first `length` bytes) in it:
 * an O_PATH fd of the very same inode, or -1. */
static int in_own_view(const char *real, size_t length, int pinned) {
#ifdef HAVE_OPENAT2
    char relative[PATH_BYTES + 1];
    if (lane_view < 0 || length == 0 || length > PATH_BYTES || real[0] != '/')
        return -1;
    memcpy(relative, real + 1, length - 1);
    relative[length - 1] = '\0';
    struct open_how how = {.flags = O_PATH | O_CLOEXEC | O_NOFOLLOW, .mode = 0,
                           .resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_BENEATH};
    int fd = (int)syscall(SYS_openat2, lane_view, relative[0] ? relative : ".", &how, sizeof how);
    struct stat mine, theirs;
    if (fd >= 0 && (fstat(fd, &mine) != 0 || fstat(pinned, &theirs) != 0 ||
                    mine.st_dev != theirs.st_dev || mine.st_ino != theirs.st_ino)) {
        close(fd);
        fd = -1;
    }
    return fd;
#else
    return -1;
#endif
}

/* Tell the supervisor: a read to judge (the fd stays pending until it answers). */
static void lane_forward(int listener, int forward_fd, struct lane_event *e, const char *path,
                         ssize_t length, const struct stat *st) {
    int pidfd = (int)syscall(SYS_pidfd_open, e->tid, PIDFD_THREAD);
    if (pidfd < 0) {
        if (e->fd >= 0)
            lane_refuse(e->fd); /* its opener is gone */
        return;
    }
    struct seccomp_notif n;
    memset(&n, 0, sizeof n);
    n.id = (uint64_t)(int64_t)e->fd; /* (a record only: all ones) */
    n.pid = (uint32_t)e->tid;
    n.flags = NOTICE_FAN_READ;
    n.data.nr = -1;
    n.data.arch = NATIVE_ARCH;
    if (st) {
        n.data.args[0] = (uint64_t)st->st_dev;
        n.data.args[1] = (uint64_t)st->st_ino;
        n.data.args[2] = (uint64_t)st->st_mode;
        n.data.args[3] = (uint64_t)st->st_nlink;
    }
    n.data.args[4] = (uint64_t)e->error;
    if (e->fd >= 0) {
        if ((size_t)e->fd >= lane_pending_size) {
            size_t size = ((size_t)e->fd + 1024) & ~(size_t)1023;
            uint32_t *grown = realloc(lane_pending, size * sizeof *grown);
            if (!grown) {
                close(pidfd);
                lane_refuse(e->fd);
                return;
            }
            memset(grown + lane_pending_size, 0, (size - lane_pending_size) * sizeof *grown);
            lane_pending = grown;
            lane_pending_size = size;
        }
        if (++lane_asked == 0)
            lane_asked = 1;
        lane_pending[e->fd] = lane_asked;
        n.id = ((uint64_t)lane_asked << 32) | (uint32_t)e->fd;
    }
    forward_with(listener, forward_fd, &n, pidfd, length > 0 ? path : "", length > 0 ? (size_t)length : 0);
}

/* One event, in the main thread: allowed here (and marked), or forwarded. */
static int lane_decide(int listener, int forward_fd, struct lane_event *e) {
    if (e->fd < 0) {
        lane_forward(listener, forward_fd, e, NULL, 0, NULL); /* on record only */
        return 0;
    }
    if (lane_helper(e->tid)) {
        lane_respond(e->fd, FAN_ALLOW); /* the broker's own FIFO open, decided already */
        close(e->fd);
        return 0;
    }
    struct stat st;
    char path[PATH_BYTES + 1];
    /* Its path in the agent's view: the broker's /proc sees the same mounts. */
    ssize_t length = fstat(e->fd, &st) != 0 ? -1 : fd_path(e->fd, path);
    if (length < 0) {
        lane_forward(listener, forward_fd, e, NULL, 0, NULL);
        return 0;
    }
    int regular = S_ISREG(st.st_mode), directory = S_ISDIR(st.st_mode);
    int plain = !fast_disabled && path[0] == '/' && !deleted(path, (size_t)length) && !on_proc(&st) &&
                ((regular && own_name(&st) && !special_prefix(path)) ||
                 (directory && !special_prefix(path)) ||
                 (harmless_device(&st) && harmless_device_name(path)));
    if (!plain || !granted(path, (size_t)length, ALLOW_READ, 0)) {
        lane_forward(listener, forward_fd, e, path, length, &st);
        return 0;
    }
    if ((regular && st.st_nlink == 1) || directory)
        lane_ignore(e->fd, directory);
    lane_respond(e->fd, FAN_ALLOW);
    close(e->fd);
    return 1;
}

/* The events the reader queued; how many were allowed here. */
static int lane_serve(int listener, int forward_fd) {
    uint64_t count;
    while (read(lane_wake, &count, sizeof count) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&lane_lock);
    struct lane_event *e = lane_head;
    lane_head = NULL;
    lane_tail = &lane_head;
    pthread_mutex_unlock(&lane_lock);
    int allowed = 0;
    while (e) {
        struct lane_event *next = e->next;
        allowed += lane_decide(listener, forward_fd, e);
        free(e);
        e = next;
    }
    return allowed;
}

static void lane_maybe_flush(void) {
    if (!lane_marks)
        return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long spent = (now.tv_sec - lane_flushed.tv_sec) * 1000LL +
                      (now.tv_nsec - lane_flushed.tv_nsec) / 1000000;
    if (spent < LANE_FLUSH_MS)
        return;
    lane_flush();
    lane_flushed = now;
}

/* lane_start(group_fd, ruleset_fd, own_view_fd): take the kernel's questions from now on. */
static PyObject *fp_lane_start(PyObject *self, PyObject *args) {
    int group, ruleset, view;
    if (!PyArg_ParseTuple(args, "iii", &group, &ruleset, &view))
        return NULL;
    if (lane_on)
        return PyErr_Format(PyExc_RuntimeError, "the read lane is already on");
    lane_wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (lane_wake < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    lane_fan = group;
    lane_ruleset = ruleset;
    lane_view = view;
    lane_own_pid = getpid();
    clock_gettime(CLOCK_MONOTONIC, &lane_flushed);
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int err = pthread_create(&thread, &attr, lane_reader, NULL);
    pthread_attr_destroy(&attr);
    if (err) {
        close(lane_wake);
        lane_wake = -1;
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    lane_on = 1;
    Py_RETURN_NONE;
}

/* lane_answer(id, allow) -> bool: the supervisor's answer to a read it was
 * sent, by the id it came with (the event's number and its fd). */
static PyObject *fp_lane_answer(PyObject *self, PyObject *args) {
    unsigned long long id;
    int allow;
    if (!PyArg_ParseTuple(args, "Kp", &id, &allow))
        return NULL;
    int fd = (int)(id & 0x7fffffff);
    uint32_t asked = (uint32_t)(id >> 32);
    if (!lane_on || (id & 0x80000000u) || (size_t)fd >= lane_pending_size || !asked ||
        lane_pending[fd] != asked)
        Py_RETURN_FALSE; /* no such question pending: nothing is closed */
    lane_pending[fd] = 0;
    lane_respond(fd, allow ? FAN_ALLOW : FAN_DENY);
    close(fd);
    Py_RETURN_TRUE;
}

static PyObject *fp_lane_flush(PyObject *self, PyObject *noargs) {
    lane_flush();
    Py_RETURN_NONE;
}

/* lane_helper(pid, on): a FIFO helper of the broker's, whose opens are its own. */
static PyObject *fp_lane_helper(PyObject *self, PyObject *args) {
    int pid, on;
    if (!PyArg_ParseTuple(args, "ip", &pid, &on))
        return NULL;
    for (int i = 0; i < LANE_HELPERS; i++) {
        if (on ? lane_helpers[i] == 0 : lane_helpers[i] == pid) {
            lane_helpers[i] = on ? pid : 0;
            Py_RETURN_TRUE;
        }
    }
    Py_RETURN_FALSE;
}

/* Milliseconds left of `timeout_ms` since `start` (at least 0); -1: no limit. */
static int time_left(const struct timespec *start, int timeout_ms) {
    if (timeout_ms < 0)
        return -1;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long spent = (now.tv_sec - start->tv_sec) * 1000LL + (now.tv_nsec - start->tv_nsec) / 1000000;
    return spent >= timeout_ms ? 0 : (int)(timeout_ms - spent);
}

/* serve(listener, forward, channel, agent_pidfd, timeout_ms, counter) -> why it returned
 * `counter`: a writable buffer (a page shared with the supervisor); its first
 * 8 bytes count the notifications answered here, for CPU placement.
 * `timeout_ms` bounds the whole call, not one wait: the broker checks its
 * waiting FIFO opens that often, however busy the agent (SERVE_IDLE). */
static PyObject *fp_serve(PyObject *self, PyObject *args) {
    int listener, forward_fd, channel, agent, timeout_ms;
    Py_buffer counter;
    if (!PyArg_ParseTuple(args, "iiiiiw*", &listener, &forward_fd, &channel, &agent, &timeout_ms,
                          &counter))
        return NULL;
    if (counter.len < (Py_ssize_t)sizeof(uint64_t)) {
        PyBuffer_Release(&counter);
        return PyErr_Format(PyExc_ValueError, "the counter needs 8 bytes");
    }
    volatile uint64_t *answered = (volatile uint64_t *)counter.buf;
    int why = SERVE_IDLE;
    int handled = 0;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    /* The GIL stays held: the decider is Python, and the broker has one thread. */
    for (;;) {
        struct pollfd fds[5] = {{channel, POLLIN, 0},
                                {agent, POLLIN, 0},
                                {listener, POLLIN, 0},
                                {lane_wake, POLLIN, 0},
                                {forward_fd, POLLOUT, 0}};
        int wait = time_left(&start, timeout_ms);
        if (lane_on && lane_marks) {
            lane_maybe_flush();
            if (lane_marks && (wait < 0 || wait > LANE_FLUSH_MS))
                wait = LANE_FLUSH_MS;
        }
        int ready = wait == 0 ? 0 : poll(fds, queue_length ? 5 : 4, wait);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready == 0) {
            if (time_left(&start, timeout_ms) != 0)
                continue; /* a flush's wake-up */
            why = SERVE_IDLE;
            break;
        }
        if (queue_length && fds[4].revents)
            flush_queue(listener, forward_fd);
        if (fds[3].revents) {
            *answered += (uint64_t)lane_serve(listener, forward_fd);
            if (ready == 1)
                continue;
        }
        if (ready < 0 || fds[0].revents) {
            why = SERVE_CHANNEL;
            break;
        }
        if (fds[1].revents) {
            why = SERVE_AGENT;
            break;
        }
        if (!fds[2].revents)
            continue; /* only the forward socket was ready */
        if (!(fds[2].revents & POLLIN)) {
            why = SERVE_LISTENER_GONE; /* POLLHUP: no task is left on the filter */
            break;
        }
        struct seccomp_notif n;
        memset(&n, 0, sizeof n);
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &n) == 0) {
            if (serve_fast(listener, forward_fd, &n))
                *answered += 1;
            else
                forward(listener, forward_fd, &n);
        }
        if (++handled >= BATCH) {
            why = SERVE_BATCH;
            break;
        }
    }
    PyBuffer_Release(&counter);
    return PyLong_FromLong(why);
}

static PyObject *fp_configure(PyObject *self, PyObject *args) {
    PyObject *devices;
    if (!PyArg_ParseTuple(args, "kkkO!", &valid_open_flags, &write_flags, &setfl_flags,
                          &PyTuple_Type, &devices))
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(devices);
    int known = 0;
    for (Py_ssize_t i = 0; i < count && known < PROC_MOUNTS; i++) {
        unsigned long long device = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(devices, i));
        if (device == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
        proc_devices[known++] = (dev_t)device;
    }
    /* More than it keeps: on_proc says yes to everything, and none is served. */
    proc_devices_known = count > PROC_MOUNTS ? PROC_MOUNTS : known;
    Py_RETURN_NONE;
}

static PyObject *fp_allow(PyObject *self, PyObject *args) {
    const char *path;
    Py_ssize_t length;
    int bits;
    if (!PyArg_ParseTuple(args, "y#i", &path, &length, &bits))
        return NULL;
    if (length <= 0 || length >= PATH_BYTES || path[0] != '/' || memchr(path, '\0', (size_t)length))
        Py_RETURN_FALSE; /* never a path this code looks up */
    if (cache_add(path, (size_t)length, bits & ALLOW_ANY) != 0)
        return PyErr_NoMemory();
    Py_RETURN_TRUE;
}

/* expect_exec(exec_id, dev, ino, cmdline) -> whether that exec is still watched:
 * what the supervisor allowed it to run, to check its first syscall with. */
static PyObject *fp_expect_exec(PyObject *self, PyObject *args) {
    unsigned long long exec_id, dev, ino;
    const char *cmdline;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "KKKy#", &exec_id, &dev, &ino, &cmdline, &length))
        return NULL;
    for (unsigned i = 0; i < WATCH_SLOTS && watched_count; i++) {
        struct watched_exec *w = &watched[i];
        if (!w->pid || w->exec_id != exec_id)
            continue;
        forget_expected(w);
        if (length <= 0 || !(w->cmdline = malloc((size_t)length)))
            Py_RETURN_FALSE;
        memcpy(w->cmdline, cmdline, (size_t)length);
        w->cmdline_length = (size_t)length;
        w->dev = (dev_t)dev;
        w->ino = (ino_t)ino;
        w->expected = 1;
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

/* protect(keys: bytes) -> None: the protected inodes, as (st_dev, st_ino)
 * pairs of native 64-bit numbers, all of them: the walk's whole answer. */
static PyObject *fp_protect(PyObject *self, PyObject *args) {
    const char *data;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "y#", &data, &length))
        return NULL;
    if (length % (Py_ssize_t)sizeof(struct inode_key))
        return PyErr_Format(PyExc_ValueError, "keys come in pairs of 64-bit numbers");
    struct inode_key *keys = length ? malloc((size_t)length) : NULL;
    if (length && !keys)
        return PyErr_NoMemory();
    if (length)
        memcpy(keys, data, (size_t)length);
    size_t count = (size_t)length / sizeof *keys;
    qsort(keys, count, sizeof *keys, compare_keys);
    free(protected_keys);
    protected_keys = keys;
    protected_count = count;
    protected_known = 1;
    Py_RETURN_NONE;
}

/* unprotect(): the protected inodes are unknown again (a policy reload walks
 * anew): every file with other names goes to the supervisor until told. */
static PyObject *fp_unprotect(PyObject *self, PyObject *noargs) {
    free(protected_keys);
    protected_keys = NULL;
    protected_count = 0;
    protected_known = 0;
    Py_RETURN_NONE;
}

static PyObject *fp_set_decider(PyObject *self, PyObject *callable) {
    if (callable != Py_None && !PyCallable_Check(callable))
        return PyErr_Format(PyExc_TypeError, "the decider must be callable or None");
    Py_XDECREF(decider);
    decider = callable == Py_None ? NULL : Py_NewRef(callable);
    if (!decider)
        program_free(); /* the judge's own tables go with it (a reload, a stop) */
    Py_RETURN_NONE;
}

static PyObject *fp_pin_reads(PyObject *self, PyObject *flag) {
    int on = PyObject_IsTrue(flag);
    if (on < 0)
        return NULL;
    pin_reads = on;
    Py_RETURN_NONE;
}

static PyObject *fp_forget(PyObject *self, PyObject *noargs) {
    cache_reset();
    lane_flush();
    Py_RETURN_NONE;
}

static PyObject *fp_allowed(PyObject *self, PyObject *args) {
    const char *path;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "y#", &path, &length))
        return NULL;
    return PyLong_FromLong(cache_bits(path, (size_t)length));
}

/* started_on() -> tuple[int, ...]: the CPUs this process had when the module
 * was imported (in the supervisor, before any placement): the agent's, bare. */
static PyObject *fp_started_on(PyObject *self, PyObject *noargs) {
    PyObject *cpus = PyList_New(0);
    for (long i = 0; cpus && i < started_length * 8; i++) {
        if (!(started_mask[i / 8] & (1u << (i % 8))))
            continue;
        PyObject *cpu = PyLong_FromLong(i);
        if (!cpu || PyList_Append(cpus, cpu) != 0)
            Py_CLEAR(cpus);
        Py_XDECREF(cpu);
    }
    if (!cpus)
        return NULL;
    PyObject *result = PyList_AsTuple(cpus);
    Py_DECREF(cpus);
    return result;
}

static PyMethodDef methods[] = {
    {"serve", fp_serve, METH_VARARGS,
     "serve(listener, forward, channel, agent_pidfd, timeout_ms, counter) -> int: answer "
     "plainly allowed opens, forward the rest; returns why it stopped (channel readable, ...)."},
    {"configure", fp_configure, METH_VARARGS,
     "configure(valid_open_flags, write_flags, setfl_flags, procfs_devices: tuple[int, ...])"},
    {"allow", fp_allow, METH_VARARGS,
     "allow(path: bytes, bits: int) -> bool: the supervisor allowed these actions on path"},
    {"forget", fp_forget, METH_NOARGS, "forget() -> None: clear the allow cache"},
    {"pin_reads", fp_pin_reads, METH_O,
     "pin_reads(on: bool) -> None: pin reads before opening them (a FIFO writer waits)"},
    {"set_decider", fp_set_decider, METH_O,
     "set_decider(callable(path: bytes, bits: int) -> int | None): asked on a cache miss"},
    {"allowed", fp_allowed, METH_VARARGS, "allowed(path: bytes) -> int: the cached bits"},
    {"set_program", fp_set_program, METH_O,
     "set_program(program: tuple | None): the judge's plain allows as tables, asked on a miss "
     "before the decider (dropped with it)"},
    {"plain_bits", fp_plain_bits, METH_VARARGS,
     "plain_bits(target: bytes, bits: int) -> int: the bits the program plainly allows; -1 when "
     "only the decider can tell"},
    {"protect", fp_protect, METH_VARARGS,
     "protect(keys: bytes) -> None: the protected inodes, as native (st_dev, st_ino) u64 pairs"},
    {"expect_exec", fp_expect_exec, METH_VARARGS,
     "expect_exec(exec_id, dev, ino, cmdline: bytes) -> bool: what that exec was allowed to "
     "run, to check its first syscall with"},
    {"lane_start", fp_lane_start, METH_VARARGS,
     "lane_start(group_fd, ruleset_fd, own_view_fd) -> None: answer the fanotify group's open permission "
     "events from now on (a reader thread under the Landlock ruleset; decisions in serve())"},
    {"lane_answer", fp_lane_answer, METH_VARARGS,
     "lane_answer(id, allow) -> bool: the supervisor's answer to a forwarded read"},
    {"unprotect", fp_unprotect, METH_NOARGS,
     "unprotect() -> None: the protected inodes are unknown until protect() again"},
    {"lane_flush", fp_lane_flush, METH_NOARGS,
     "lane_flush() -> None: drop every ignore mark (a name may have changed)"},
    {"lane_helper", fp_lane_helper, METH_VARARGS,
     "lane_helper(pid, on) -> bool: a FIFO helper of the broker's (its opens are the broker's)"},
    {"started_on", fp_started_on, METH_NOARGS,
     "started_on() -> tuple[int, ...]: the CPUs this process had when the module was imported"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastpath",
    .m_doc = "The broker's native hot path for plainly allowed opens (see _fastpath.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    started_length = syscall(SYS_sched_getaffinity, 0, MASK_BYTES, started_mask);
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "SERVE_CHANNEL", SERVE_CHANNEL) ||
        PyModule_AddIntConstant(m, "SERVE_LISTENER_GONE", SERVE_LISTENER_GONE) ||
        PyModule_AddIntConstant(m, "SERVE_AGENT", SERVE_AGENT) ||
        PyModule_AddIntConstant(m, "SERVE_IDLE", SERVE_IDLE) ||
        PyModule_AddIntConstant(m, "SERVE_BATCH", SERVE_BATCH) ||
        PyModule_AddIntConstant(m, "ALLOW_READ", ALLOW_READ) ||
        PyModule_AddIntConstant(m, "ALLOW_WRITE", ALLOW_WRITE) ||
        PyModule_AddIntConstant(m, "ALLOW_DELETE", ALLOW_DELETE) ||
        PyModule_AddIntConstant(m, "ALLOW_MOVE", ALLOW_MOVE) ||
        PyModule_AddIntConstant(m, "NOTICE_EXEC_CHECKED", (long)NOTICE_EXEC_CHECKED) ||
        PyModule_AddIntConstant(m, "NOTICE_EXEC_DONE", (long)NOTICE_EXEC_DONE) ||
        PyModule_AddIntConstant(m, "NOTICE_EXEC_JUDGE", (long)NOTICE_EXEC_JUDGE) ||
        PyModule_AddIntConstant(m, "ALLOW_SPAWN", ALLOW_SPAWN) ||
        PyModule_AddIntConstant(m, "ALLOW_SHELL", ALLOW_SHELL) ||
        PyModule_AddIntConstant(m, "ALLOW_CHMOD", ALLOW_CHMOD) ||
        PyModule_AddIntConstant(m, "NATIVE_ARCH", (long)NATIVE_ARCH)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
