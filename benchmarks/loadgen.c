/*
 * loadgen: the benchmark's load generator, one epoll loop on one core.
 *
 * Modes (every echoed byte is compared with what was sent):
 *   pingpong  --conns N --size S [--line]: each connection sends an S-byte
 *             message (with --line, S-1 letters and a newline), waits for all
 *             S bytes to come back, checks them, records the latency, repeats.
 *   stream    --conns N --chunk C --window W: each connection sends a
 *             continuous byte stream in C-byte writes, keeping at most W bytes
 *             unechoed, and checks the echo at every position.
 *   idle      --conns N: opens N connections, one 1-byte round trip each (so
 *             the server has accepted and set up every one), prints
 *             {"held": N}, holds them until stdin closes, then closes them.
 *
 * pingpong and stream run a warm-up (--warmup s), then a measured window
 * (--duration s).  At both edges of the window the generator samples its own
 * CPU time (getrusage) and, with --server-pid, the server's (/proc/PID/stat),
 * so both are measured over exactly the same interval.  Every loop is bounded
 * in time (the window plus a drain limit; alarm() as a backstop) and in count
 * (--max-rounds).  Output: one JSON object on stdout; exit 1 with
 * {"error": ...} on any mismatch, reset, early EOF or timeout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define PATLEN 65521            /* prime, so messages start at varied offsets */
#define MAXSLICE 65536          /* longest contiguous slice of the pattern */
#define HIST_US 1000000         /* latency histogram: 1 us buckets up to 1 s */
#define DRAIN_LIMIT_S 5.0

static char pat[PATLEN + MAXSLICE];
static uint32_t hist[HIST_US + 1];

struct conn {
    int fd;
    uint64_t round;
    size_t sent, rcvd;          /* pingpong: within the message; stream: totals */
    double t0;                  /* when the message was sent */
    char *msg;                  /* pingpong: the message in flight */
    int want_out;
    int done;
};

static void fail(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    printf("{\"error\": \"%s\"}\n", buf);
    fflush(stdout);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* utime + stime of a process (all its threads), in seconds; -1 if unknown. */
static double proc_cpu(int pid) {
    if (pid <= 0) return -1;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long long ut = 0, st = 0;
    /* after ')': state(3) ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

/* Seconds a process's main thread spent runnable but waiting for a CPU: time
 * lost to other work on its core; -1 if unknown.  (Only the main thread: the
 * threads of a thread-per-connection server also wait for one another.) */
static double proc_wait(int pid) {
    if (pid <= 0) return -1;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/schedstat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    unsigned long long run = 0, wait = 0;
    int ok = fscanf(f, "%llu %llu", &run, &wait) == 2;
    fclose(f);
    return ok ? wait / 1e9 : -1;
}

static int open_conn(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) fail("socket: %s", strerror(errno));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) fail("connect: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        fail("fcntl: %s", strerror(errno));
}

static uint64_t percentile(uint64_t total, double q) {
    uint64_t target = (uint64_t)(q * total), seen = 0;
    if (target >= total) target = total - 1;
    for (uint64_t i = 0; i <= HIST_US; i++) {
        seen += hist[i];
        if (seen > target) return i;
    }
    return HIST_US;
}

struct opts {
    const char *mode;
    int port, conns, line, server_pid;
    size_t size, chunk, window;
    double warmup, duration;
    uint64_t max_rounds;
};

static void ev_set(int ep, struct conn *c, int want_out) {
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) fail("epoll_ctl: %s", strerror(errno));
    c->want_out = want_out;
}

/* Send what is left of c->msg; 1 when all of it is in the kernel. */
static int pp_send(int ep, struct conn *c, size_t size) {
    while (c->sent < size) {
        ssize_t n = send(c->fd, c->msg + c->sent, size - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                if (!c->want_out) ev_set(ep, c, 1);
                return 0;
            }
            fail("send: %s", strerror(errno));
        }
        c->sent += (size_t)n;
    }
    if (c->want_out) ev_set(ep, c, 0);
    return 1;
}

static void pp_start(int ep, struct conn *c, size_t size, int line, int index) {
    size_t off = ((size_t)index * 131 + c->round * 977) % PATLEN;
    memcpy(c->msg, pat + off, size);
    if (line) c->msg[size - 1] = '\n';
    c->sent = c->rcvd = 0;
    c->t0 = now();
    pp_send(ep, c, size);
}

static void run_pingpong(const struct opts *o) {
    struct conn *cs = calloc(o->conns, sizeof *cs);
    char *rbuf = malloc(o->size);
    int ep = epoll_create1(0);
    for (int i = 0; i < o->conns; i++) {
        cs[i].fd = open_conn(o->port);
        set_nonblocking(cs[i].fd);
        cs[i].msg = malloc(o->size);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    double start = now(), t1 = start + o->warmup, t2 = t1 + o->duration;
    double drain_end = t2 + DRAIN_LIMIT_S;
    double cpu1 = 0, cpu2 = 0, scpu1 = -1, scpu2 = -1, w1 = 0, w2 = 0, sw1 = -1, sw2 = -1, cw1 = 0, cw2 = 0;
    int phase = 0; /* 0 warm-up, 1 measuring, 2 draining */
    uint64_t rounds = 0, total_rounds = 0, verified = 0, lat_n = 0;
    int active = o->conns;
    for (int i = 0; i < o->conns; i++) pp_start(ep, &cs[i], o->size, o->line, i);
    struct epoll_event evs[256];
    while (active > 0) {
        double t = now();
        if (phase == 0 && t >= t1) {
            phase = 1, w1 = t, cpu1 = self_cpu(), scpu1 = proc_cpu(o->server_pid), sw1 = proc_wait(o->server_pid), cw1 = proc_wait(getpid());
        }
        if (phase == 1 && t >= t2) {
            phase = 2, w2 = t, cpu2 = self_cpu(), scpu2 = proc_cpu(o->server_pid), sw2 = proc_wait(o->server_pid), cw2 = proc_wait(getpid());
        }
        if (t >= drain_end) fail("echoes still missing %.0f s after the window", DRAIN_LIMIT_S);
        int n = epoll_wait(ep, evs, 256, 10);
        if (n < 0 && errno != EINTR) fail("epoll_wait: %s", strerror(errno));
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            if (c->done) continue;
            if (evs[k].events & EPOLLOUT) pp_send(ep, c, o->size);
            if (!(evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            ssize_t r = recv(c->fd, rbuf + c->rcvd, o->size - c->rcvd, 0);
            if (r < 0) {
                if (errno == EAGAIN) continue;
                fail("recv: %s", strerror(errno));
            }
            if (r == 0) fail("server closed a connection mid-echo");
            c->rcvd += (size_t)r;
            if (c->rcvd < o->size) continue;
            if (memcmp(rbuf, c->msg, o->size) != 0) fail("echo mismatch");
            double done_at = now();
            verified += o->size;
            total_rounds++;
            if (phase == 1) {
                rounds++;
                uint64_t us = (uint64_t)((done_at - c->t0) * 1e6);
                hist[us > HIST_US ? HIST_US : us]++;
                lat_n++;
            }
            c->round++;
            if (phase == 2 || total_rounds >= o->max_rounds) {
                c->done = 1;
                active--;
                close(c->fd);
            } else {
                pp_start(ep, c, o->size, o->line, (int)(c - cs));
            }
        }
    }
    if (phase < 2) w2 = now(), cpu2 = self_cpu(), scpu2 = proc_cpu(o->server_pid), sw2 = proc_wait(o->server_pid), cw2 = proc_wait(getpid());
    if (phase == 0) fail("max-rounds reached before the measured window");
    if (lat_n == 0) fail("no round trip completed in the measured window");
    printf("{\"mode\": \"pingpong\", \"conns\": %d, \"size\": %zu, \"line\": %s, "
           "\"measure_s\": %.6f, \"round_trips\": %llu, \"verified_bytes\": %llu, "
           "\"p50_us\": %llu, \"p99_us\": %llu, \"client_cpu_s\": %.6f, \"server_cpu_s\": %.6f, "
           "\"server_wait_s\": %.6f, \"client_wait_s\": %.6f}\n",
           o->conns, o->size, o->line ? "true" : "false", w2 - w1, (unsigned long long)rounds,
           (unsigned long long)verified, (unsigned long long)percentile(lat_n, 0.50),
           (unsigned long long)percentile(lat_n, 0.99), cpu2 - cpu1,
           scpu1 < 0 || scpu2 < 0 ? -1.0 : scpu2 - scpu1, sw1 < 0 || sw2 < 0 ? -1.0 : sw2 - sw1, cw2 - cw1);
}

static void st_send(int ep, struct conn *c, const struct opts *o, int stopping, uint64_t seed) {
    while (!stopping && c->sent - c->rcvd < o->window) {
        size_t room = o->window - (c->sent - c->rcvd);
        size_t len = room < o->chunk ? room : o->chunk;
        size_t off = (c->sent + seed) % PATLEN;
        ssize_t n = send(c->fd, pat + off, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) break;
            fail("send: %s", strerror(errno));
        }
        c->sent += (size_t)n;
    }
    int want_out = !stopping && c->sent - c->rcvd < o->window;
    if (want_out != c->want_out) ev_set(ep, c, want_out);
}

static void run_stream(const struct opts *o) {
    struct conn *cs = calloc(o->conns, sizeof *cs);
    char *rbuf = malloc(MAXSLICE);
    int ep = epoll_create1(0);
    for (int i = 0; i < o->conns; i++) {
        cs[i].fd = open_conn(o->port);
        set_nonblocking(cs[i].fd);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    double start = now(), t1 = start + o->warmup, t2 = t1 + o->duration;
    double drain_end = t2 + DRAIN_LIMIT_S;
    double cpu1 = 0, cpu2 = 0, scpu1 = -1, scpu2 = -1, w1 = 0, w2 = 0, sw1 = -1, sw2 = -1, cw1 = 0, cw2 = 0;
    uint64_t bytes1 = 0, bytes2 = 0, rcvd_total = 0;
    int phase = 0;
    for (int i = 0; i < o->conns; i++) st_send(ep, &cs[i], o, 0, (uint64_t)i * 7919);
    struct epoll_event evs[256];
    for (;;) {
        double t = now();
        if (phase == 0 && t >= t1) {
            phase = 1, w1 = t, cpu1 = self_cpu(), scpu1 = proc_cpu(o->server_pid), sw1 = proc_wait(o->server_pid), cw1 = proc_wait(getpid());
            bytes1 = rcvd_total;
        }
        if (phase == 1 && t >= t2) {
            phase = 2, w2 = t, cpu2 = self_cpu(), scpu2 = proc_cpu(o->server_pid), sw2 = proc_wait(o->server_pid), cw2 = proc_wait(getpid());
            bytes2 = rcvd_total;
            for (int i = 0; i < o->conns; i++) st_send(ep, &cs[i], o, 1, 0);
        }
        if (phase == 2) {
            int pending = 0;
            for (int i = 0; i < o->conns; i++) pending |= cs[i].rcvd < cs[i].sent;
            if (!pending) break;
        }
        if (t >= drain_end) fail("echoes still missing %.0f s after the window", DRAIN_LIMIT_S);
        int n = epoll_wait(ep, evs, 256, 10);
        if (n < 0 && errno != EINTR) fail("epoll_wait: %s", strerror(errno));
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            uint64_t seed = (uint64_t)(c - cs) * 7919;
            if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                for (;;) {
                    ssize_t r = recv(c->fd, rbuf, MAXSLICE, 0);
                    if (r < 0) {
                        if (errno == EAGAIN) break;
                        fail("recv: %s", strerror(errno));
                    }
                    if (r == 0) fail("server closed a connection mid-stream");
                    if (c->rcvd + (size_t)r > c->sent) fail("server echoed bytes never sent");
                    if (memcmp(rbuf, pat + (c->rcvd + seed) % PATLEN, (size_t)r) != 0)
                        fail("echo mismatch at byte %zu", c->rcvd);
                    c->rcvd += (size_t)r;
                    rcvd_total += (size_t)r;
                    if ((size_t)r < MAXSLICE) break;
                }
            }
            st_send(ep, c, o, phase == 2, seed);
        }
    }
    for (int i = 0; i < o->conns; i++) close(cs[i].fd);
    printf("{\"mode\": \"stream\", \"conns\": %d, \"chunk\": %zu, \"window\": %zu, "
           "\"measure_s\": %.6f, \"bytes\": %llu, \"verified_bytes\": %llu, "
           "\"client_cpu_s\": %.6f, \"server_cpu_s\": %.6f, \"server_wait_s\": %.6f, \"client_wait_s\": %.6f}\n",
           o->conns, o->chunk, o->window, w2 - w1, (unsigned long long)(bytes2 - bytes1),
           (unsigned long long)rcvd_total, cpu2 - cpu1,
           scpu1 < 0 || scpu2 < 0 ? -1.0 : scpu2 - scpu1, sw1 < 0 || sw2 < 0 ? -1.0 : sw2 - sw1, cw2 - cw1);
}

static void run_idle(const struct opts *o) {
    int *fds = calloc(o->conns, sizeof *fds);
    const int batch = 200;
    double deadline = now() + o->duration;
    for (int base = 0; base < o->conns; base += batch) {
        int end = base + batch < o->conns ? base + batch : o->conns;
        for (int i = base; i < end; i++) {
            if (now() > deadline) fail("could not open %d connections in time", o->conns);
            fds[i] = open_conn(o->port);
            if (send(fds[i], "x", 1, MSG_NOSIGNAL) != 1) fail("send: %s", strerror(errno));
        }
        for (int i = base; i < end; i++) {
            char b;
            ssize_t r = recv(fds[i], &b, 1, 0);
            if (r != 1 || b != 'x') fail("no echo on connection %d: %s", i, strerror(errno));
        }
    }
    printf("{\"held\": %d}\n", o->conns);
    fflush(stdout);
    char line[64];
    alarm((unsigned)(o->duration + 60)); /* the parent must release us in time */
    while (fgets(line, sizeof line, stdin)) {
    }
    for (int i = 0; i < o->conns; i++) close(fds[i]);
    printf("{\"mode\": \"idle\", \"conns\": %d, \"verified_bytes\": %d}\n", o->conns, o->conns);
}

int main(int argc, char **argv) {
    struct opts o = {.mode = "pingpong", .conns = 50, .size = 1024, .chunk = 65536,
                     .window = 262144, .warmup = 1, .duration = 3, .max_rounds = 1000000000ULL};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && v && (i++, 1))
        if (ARG("--mode")) o.mode = v;
        else if (ARG("--port")) o.port = atoi(v);
        else if (ARG("--conns")) o.conns = atoi(v);
        else if (ARG("--size")) o.size = strtoull(v, NULL, 10);
        else if (ARG("--chunk")) o.chunk = strtoull(v, NULL, 10);
        else if (ARG("--window")) o.window = strtoull(v, NULL, 10);
        else if (ARG("--warmup")) o.warmup = atof(v);
        else if (ARG("--duration")) o.duration = atof(v);
        else if (ARG("--server-pid")) o.server_pid = atoi(v);
        else if (ARG("--max-rounds")) o.max_rounds = strtoull(v, NULL, 10);
        else if (strcmp(a, "--line") == 0) o.line = 1;
        else fail("unknown argument %s", a);
#undef ARG
    }
    if (o.port <= 0 || o.conns <= 0 || o.size < 1 + (size_t)o.line || o.size > MAXSLICE ||
        o.chunk < 1 || o.chunk > MAXSLICE || o.window < 1 || o.duration <= 0)
        fail("bad arguments");
    uint32_t x = 2463534242u; /* xorshift: letters only, so no newline in raw data */
    for (size_t i = 0; i < PATLEN; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        pat[i] = (char)('a' + x % 26);
    }
    for (size_t i = PATLEN; i < sizeof pat; i++) pat[i] = pat[i - PATLEN]; /* wrap-around */
    if (strcmp(o.mode, "idle") != 0) alarm((unsigned)(o.warmup + o.duration + DRAIN_LIMIT_S + 30));
    if (strcmp(o.mode, "pingpong") == 0) run_pingpong(&o);
    else if (strcmp(o.mode, "stream") == 0) run_stream(&o);
    else if (strcmp(o.mode, "idle") == 0) run_idle(&o);
    else fail("unknown mode %s", o.mode);
    return 0;
}
