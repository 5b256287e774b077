/* Short TCP connections, one after another, as a function talking to a database would open them.
 *
 * Contract (compiled by tests/e2e/test_lifecycle_traffic.py with the system's cc; no library but libc):
 *   shortconn serve ADDR PORT
 *       answers each connection's first byte with one byte and closes once the client has
 *       closed; connections are served at once (epoll). Runs until killed.
 *   shortconn connect DST PORT N PORT_LO PROGRESS_FILE SRC [SRC...]
 *       opens N connections in turn; connection i comes from SRC[i % nsrc] port
 *       PORT_LO + i / nsrc (bound explicitly, so all N environment tuples are distinct and none
 *       reuses a port in TIME_WAIT), sends one byte, reads the answer, closes normally (FIN).
 *       Every 100 connections it writes "done failed" to PROGRESS_FILE (pwrite at offset 0), so
 *       a test can follow it. Each step is bounded by a 3 s socket timeout. A failed connection
 *       is counted and reported on stderr (its index and errno), and the run goes on, until
 *       MAX_FAILED have failed (a broken path would otherwise take 3 s per connection).
 *       Prints one JSON line: {"ok": .., "failed": .., "seconds": .., "first_failure": ..};
 *       exits 0 only when none failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_FAILED 200

static int serve(const char *addr, int port)
{
    /* Every connection at once, with epoll: one that never sends its byte or never closes
     * (its client gave up) must not hold the next ones back, as a blocking loop would. */
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, addr, &sa.sin_addr);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 4096)) {
        perror("serve");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[64];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            char b[16];
            ssize_t r = read(fd, b, sizeof(b));
            if (r > 0 && write(fd, b, 1) == 1)
                continue; /* answered: wait for the client's close */
            if (r < 0 && errno == EAGAIN)
                continue;
            close(fd); /* closed by the client, reset, or the answer failed */
        }
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int one_conn(const struct sockaddr_in *src, const struct sockaddr_in *dst)
{
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1, err = 0;
    struct timeval tv = {.tv_sec = 3};
    char b = 'q';
    if (s < 0)
        return errno;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)); /* bounds connect() too */
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (bind(s, (const struct sockaddr *)src, sizeof(*src)) ||
        connect(s, (const struct sockaddr *)dst, sizeof(*dst)) || write(s, &b, 1) != 1)
        err = errno ? errno : EIO;
    else {
        ssize_t n = read(s, &b, 1);
        if (n != 1)
            err = n < 0 ? errno : ECONNABORTED;
    }
    close(s);
    return err;
}

static void progress(int fd, long done, long failed)
{
    char line[64];
    int n = snprintf(line, sizeof(line), "%ld %ld\n", done, failed);
    if (pwrite(fd, line, n, 0) < 0 || ftruncate(fd, n) < 0)
        perror("progress");
}

static int client(int argc, char **argv)
{
    if (argc < 8) {
        fprintf(stderr, "usage: shortconn connect DST PORT N PORT_LO PROGRESS_FILE SRC...\n");
        return 2;
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &dst.sin_addr);
    long n = atol(argv[4]), port_lo = atol(argv[5]), failed = 0, first = -1;
    int pf = open(argv[6], O_WRONLY | O_CREAT | O_TRUNC, 0644), nsrc = argc - 7;
    struct sockaddr_in src[16];
    if (pf < 0 || nsrc > 16) {
        fprintf(stderr, "shortconn: bad progress file or too many sources\n");
        return 2;
    }
    for (int k = 0; k < nsrc; k++) {
        src[k] = (struct sockaddr_in){.sin_family = AF_INET};
        inet_pton(AF_INET, argv[7 + k], &src[k].sin_addr);
    }
    double t0 = now();
    for (long i = 0; i < n; i++) {
        struct sockaddr_in s = src[i % nsrc];
        s.sin_port = htons(port_lo + i / nsrc);
        int err = one_conn(&s, &dst);
        if (err) {
            if (first < 0)
                first = i;
            if (failed++ < 20)
                fprintf(stderr, "connection %ld from %s:%ld: %s\n", i, argv[7 + i % nsrc],
                        port_lo + i / nsrc, strerror(err));
        }
        if (failed >= MAX_FAILED) {
            n = i + 1;
            break;
        }
        if (i % 100 == 99)
            progress(pf, i + 1, failed);
    }
    progress(pf, n, failed);
    printf("{\"ok\": %ld, \"failed\": %ld, \"seconds\": %.3f, \"first_failure\": %ld}\n",
           n - failed, failed, now() - t0, first);
    return failed != 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && !strcmp(argv[1], "serve"))
        return serve(argv[2], atoi(argv[3]));
    if (argc >= 2 && !strcmp(argv[1], "connect"))
        return client(argc, argv);
    fprintf(stderr, "usage: shortconn serve ADDR PORT | connect DST PORT N PORT_LO FILE SRC...\n");
    return 2;
}
