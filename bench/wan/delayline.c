/* delayline: a WAN link between two network namespaces, in user space (the kernel here has no
 * netem). Two TUN devices, one in each namespace; every IP packet read from one is written to
 * the other after the link would have carried it:
 *
 *   serialization: the link sends one packet at a time at --rate-mbit (the packet's IP bytes
 *                  plus --overhead bytes of framing), so packets queue behind each other;
 *   queue:         a packet that would wait behind more than --queue-bytes is dropped (the
 *                  tail drop of a router's buffer at the bottleneck);
 *   propagation:   each packet then takes --delay-ms more (one way; RTT = 2 x delay);
 *   loss:          each packet is dropped with probability --loss (seeded, both directions).
 *
 * Both directions are independent links with the same settings. One thread, ppoll() with
 * nanosecond timeouts and 1 us timer slack; packets wait in a byte ring per direction and are
 * never copied between the read and the write. On SIGTERM or SIGINT it prints one JSON line
 * of counters (packets, drops, how late packets left against their due time) and exits 0.
 *
 *   delayline --a NS:DEV --b NS:DEV --delay-ms 25 --rate-mbit 1000 [--loss 0.001]
 *             [--queue-bytes N] [--overhead 38] [--seed 1]
 *
 * Prints "ready" once both devices exist; the caller then gives them addresses and brings
 * them up. Needs CAP_NET_ADMIN and CAP_SYS_ADMIN (setns). Exit 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define MAX_PACKET 65536u /* a TUN read never returns more than the device's MTU */
#define WRAP UINT32_MAX
#define BATCH 64 /* packets read from one device before due packets are written again */

typedef struct {
  uint64_t due; /* CLOCK_MONOTONIC ns at which the packet leaves the far end */
  uint32_t len;
  uint32_t pad;
} entry_t;

typedef struct {
  const char *name;
  int in, out; /* read from in, write to out */
  uint8_t *buf;
  size_t cap, head, tail, used;
  uint64_t link_free; /* when the link finishes sending the last accepted packet */
  uint64_t packets, bytes, lost, queue_drops, ring_drops, write_errors;
  uint64_t late_sum_ns, late_max_ns;
} dir_t;

typedef struct {
  double delay_ns, ns_per_byte, loss;
  uint64_t queue_bytes, overhead, rng;
} link_t;

static volatile sig_atomic_t stopping;

static void on_signal(int sig) {
  (void)sig;
  stopping = 1;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double uniform(link_t *link) { /* xorshift64*, in [0, 1) */
  link->rng ^= link->rng >> 12;
  link->rng ^= link->rng << 25;
  link->rng ^= link->rng >> 27;
  return (double)((link->rng * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static void usage(const char *why) {
  fprintf(stderr, "delayline: %s\n", why);
  fprintf(stderr, "usage: delayline --a NS:DEV --b NS:DEV --delay-ms MS --rate-mbit MBIT "
                  "[--loss P] [--queue-bytes N] [--overhead BYTES] [--seed N]\n");
  exit(2);
}

static int open_tun(const char *spec) {
  char ns[256], path[300];
  const char *colon = strchr(spec, ':');
  if (colon == NULL || colon == spec || (size_t)(colon - spec) >= sizeof ns ||
      strlen(colon + 1) == 0 || strlen(colon + 1) >= IFNAMSIZ)
    usage("a device is NAMESPACE:DEVICE");
  memcpy(ns, spec, (size_t)(colon - spec));
  ns[colon - spec] = 0;
  snprintf(path, sizeof path, "/run/netns/%s", ns);
  int nsfd = open(path, O_RDONLY | O_CLOEXEC);
  if (nsfd < 0 || setns(nsfd, CLONE_NEWNET) != 0) {
    fprintf(stderr, "delayline: cannot enter namespace %s: %s\n", ns, strerror(errno));
    exit(1);
  }
  close(nsfd);
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  strncpy(ifr.ifr_name, colon + 1, IFNAMSIZ - 1);
  if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) != 0) {
    fprintf(stderr, "delayline: cannot create %s in %s: %s\n", colon + 1, ns, strerror(errno));
    exit(1);
  }
  fcntl(fd, F_SETFL, O_NONBLOCK);
  return fd;
}

static size_t slot_size(size_t len) { return (sizeof(entry_t) + len + 15u) & ~(size_t)15u; }

/* Room for one packet of MAX_PACKET bytes at the ring's tail, wrapping if needed; NULL: full. */
static entry_t *reserve(dir_t *d) {
  size_t need = slot_size(MAX_PACKET);
  if (d->tail + need > d->cap) {
    size_t waste = d->cap - d->tail;
    if (d->used + waste + need > d->cap) return NULL;
    ((entry_t *)(d->buf + d->tail))->len = WRAP;
    d->used += waste;
    d->tail = 0;
  }
  if (d->used + need > d->cap) return NULL;
  return (entry_t *)(d->buf + d->tail);
}

static void commit(dir_t *d, size_t len) {
  size_t size = slot_size(len);
  d->tail += size;
  d->used += size;
  if (d->tail == d->cap) d->tail = 0;
}

static entry_t *peek(dir_t *d) {
  if (d->used == 0) return NULL;
  entry_t *e = (entry_t *)(d->buf + d->head);
  if (e->len == WRAP) {
    d->used -= d->cap - d->head;
    d->head = 0;
    if (d->used == 0) return NULL;
    e = (entry_t *)d->buf;
  }
  return e;
}

static void pop(dir_t *d, entry_t *e) {
  size_t size = slot_size(e->len);
  d->head += size;
  d->used -= size;
  if (d->head == d->cap) d->head = 0;
}

/* Give a packet just read its due time, or drop it; returns 1 if it is to be kept. */
static int admit(dir_t *d, link_t *link, entry_t *e, uint64_t now) {
  if (link->loss > 0 && uniform(link) < link->loss) {
    d->lost++;
    return 0;
  }
  uint64_t start = d->link_free > now ? d->link_free : now;
  if (link->ns_per_byte > 0) {
    double backlog = (double)(start - now) / link->ns_per_byte;
    if (backlog + e->len > (double)link->queue_bytes) {
      d->queue_drops++;
      return 0;
    }
  }
  uint64_t sent = start + (uint64_t)((double)(e->len + link->overhead) * link->ns_per_byte);
  d->link_free = sent;
  e->due = sent + (uint64_t)link->delay_ns;
  return 1;
}

static void read_some(dir_t *d, link_t *link) {
  for (int i = 0; i < BATCH; i++) {
    entry_t *e = reserve(d);
    if (e == NULL) { /* never expected: the ring holds more than the link can */
      static uint8_t sink[MAX_PACKET];
      if (read(d->in, sink, sizeof sink) < 0) return;
      d->ring_drops++;
      continue;
    }
    ssize_t n = read(d->in, (uint8_t *)(e + 1), MAX_PACKET);
    if (n <= 0) return;
    e->len = (uint32_t)n;
    if (admit(d, link, e, now_ns())) commit(d, (size_t)n);
  }
}

static uint64_t write_due(dir_t *d, uint64_t now) {
  entry_t *e;
  while ((e = peek(d)) != NULL && e->due <= now) {
    if (write(d->out, (uint8_t *)(e + 1), e->len) != (ssize_t)e->len) d->write_errors++;
    uint64_t late = now - e->due;
    d->late_sum_ns += late;
    if (late > d->late_max_ns) d->late_max_ns = late;
    d->packets++;
    d->bytes += e->len;
    pop(d, e);
  }
  return e == NULL ? UINT64_MAX : e->due;
}

static void print_dir(const dir_t *d, const char *tail) {
  printf("\"%s\": {\"packets\": %llu, \"bytes\": %llu, \"lost\": %llu, \"queue_drops\": %llu, "
         "\"ring_drops\": %llu, \"write_errors\": %llu, \"late_mean_us\": %.1f, "
         "\"late_max_us\": %.1f}%s",
         d->name, (unsigned long long)d->packets, (unsigned long long)d->bytes,
         (unsigned long long)d->lost, (unsigned long long)d->queue_drops,
         (unsigned long long)d->ring_drops, (unsigned long long)d->write_errors,
         d->packets ? (double)d->late_sum_ns / (double)d->packets / 1e3 : 0.0,
         (double)d->late_max_ns / 1e3, tail);
}

/* SIGTERM and SIGINT are blocked except inside ppoll(), so a stop is never missed. */
static void run(dir_t dirs[2], link_t *link, const sigset_t *waiting) {
  while (!stopping) {
    uint64_t now = now_ns();
    uint64_t next = write_due(&dirs[0], now);
    uint64_t other = write_due(&dirs[1], now);
    if (other < next) next = other;
    struct pollfd fds[2] = {{dirs[0].in, POLLIN, 0}, {dirs[1].in, POLLIN, 0}};
    struct timespec wait, *timeout = NULL;
    if (next != UINT64_MAX) {
      uint64_t left = next > now ? next - now : 0;
      wait.tv_sec = (time_t)(left / 1000000000u);
      wait.tv_nsec = (long)(left % 1000000000u);
      timeout = &wait;
    }
    if (ppoll(fds, 2, timeout, waiting) < 0 && errno != EINTR) {
      perror("delayline: ppoll");
      exit(1);
    }
    for (int i = 0; i < 2; i++)
      if (fds[i].revents & POLLIN) read_some(&dirs[i], link);
  }
}

int main(int argc, char **argv) {
  const char *a = NULL, *b = NULL;
  double delay_ms = -1, rate_mbit = -1, loss = 0;
  long long queue = -1, overhead = 38, seed = 1;
  for (int i = 1; i < argc; i++) {
    if (i + 1 >= argc) usage("every option takes a value");
    const char *k = argv[i], *v = argv[++i];
    char *end = NULL;
    if (!strcmp(k, "--a")) a = v;
    else if (!strcmp(k, "--b")) b = v;
    else if (!strcmp(k, "--delay-ms")) delay_ms = strtod(v, &end);
    else if (!strcmp(k, "--rate-mbit")) rate_mbit = strtod(v, &end);
    else if (!strcmp(k, "--loss")) loss = strtod(v, &end);
    else if (!strcmp(k, "--queue-bytes")) queue = strtoll(v, &end, 10);
    else if (!strcmp(k, "--overhead")) overhead = strtoll(v, &end, 10);
    else if (!strcmp(k, "--seed")) seed = strtoll(v, &end, 10);
    else usage("unknown option");
    if (end != NULL && *end != 0) usage("not a number");
  }
  if (a == NULL || b == NULL) usage("--a and --b are required");
  if (delay_ms < 0 || rate_mbit < 0) usage("--delay-ms and --rate-mbit are required, >= 0");
  if (loss < 0 || loss >= 1 || overhead < 0) usage("--loss in [0, 1), --overhead >= 0");
  link_t link = {.delay_ns = delay_ms * 1e6, .loss = loss, .overhead = (uint64_t)overhead,
                 .rng = (uint64_t)seed * 0x9E3779B97F4A7C15ull + 1};
  link.ns_per_byte = rate_mbit > 0 ? 8e3 / rate_mbit : 0;
  /* default buffer: one bandwidth-delay product of the round trip, at least 64 KiB */
  double bdp = rate_mbit * 1e6 / 8 * 2 * delay_ms / 1e3;
  link.queue_bytes = queue >= 0 ? (uint64_t)queue : (uint64_t)(bdp > 65536 ? bdp : 65536);
  /* the ring holds the queue plus what is in flight, with room for small packets' headers */
  size_t cap = ((size_t)(link.queue_bytes + bdp) * 2 + (16u << 20)) & ~(size_t)15u;
  dir_t dirs[2] = {{.name = "a_to_b"}, {.name = "b_to_a"}};
  int fa = open_tun(a), fb = open_tun(b);
  dirs[0].in = fa, dirs[0].out = fb, dirs[1].in = fb, dirs[1].out = fa;
  for (int i = 0; i < 2; i++) {
    dirs[i].cap = cap;
    dirs[i].buf = aligned_alloc(16, cap);
    if (dirs[i].buf == NULL) usage("cannot allocate the rings");
    memset(dirs[i].buf, 0, cap); /* fault the pages in now, not while packets wait */
  }
  prctl(PR_SET_TIMERSLACK, 1000UL);
  /* A link is hardware: it must not wait behind the box's other work for a CPU. SCHED_FIFO
   * (bounded by the kernel's RT throttling) where allowed; the JSON line says which. */
  struct sched_param param = {.sched_priority = 10};
  int realtime = sched_setscheduler(0, SCHED_FIFO, &param) == 0;
  if (!realtime) fprintf(stderr, "delayline: no SCHED_FIFO (%s); timing may suffer\n", strerror(errno));
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigset_t stops, waiting;
  sigemptyset(&stops);
  sigaddset(&stops, SIGTERM);
  sigaddset(&stops, SIGINT);
  sigprocmask(SIG_BLOCK, &stops, &waiting);
  printf("ready\n");
  fflush(stdout);
  run(dirs, &link, &waiting);
  printf("{\"realtime\": %s, \"queue_bytes\": %llu, ", realtime ? "true" : "false",
         (unsigned long long)link.queue_bytes);
  print_dir(&dirs[0], ", ");
  print_dir(&dirs[1], "}\n");
  fflush(stdout);
  return 0;
}
