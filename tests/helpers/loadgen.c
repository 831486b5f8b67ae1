/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* loadgen: random writes, zeroes and trims over NBD, logged so that a
 * crash test can tell afterwards which requests were sent and which
 * were acknowledged.
 *
 * Each connection has its own libnbd handle and thread and keeps up to
 * QUEUE_DEPTH requests in flight.  Every request is logged before it
 * is sent:
 *
 *   S <conn> <id> <write|zero|trim> <offset> <length>
 *
 * and its completion after:
 *
 *   A <conn> <id> <ok|err ERRNO|lost>
 *
 * "err" is an error reply from the server (ESHUTDOWN from a server
 * that is stopping, for example); "lost" means the connection died
 * first, so the server may or may not have seen the request.
 * Each line is one write(2) to a file opened with O_APPEND, so the log
 * is complete up to the moment anything dies, loadgen included.
 *
 * The request stream of each connection depends only on the seed and
 * the connection number.  Exit status: 0 when the load ran to its end
 * or the server went away (which crash tests do on purpose), 1 for any
 * other error.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

enum req_type { REQ_WRITE, REQ_ZERO, REQ_TRIM };
static const char *const type_names[] = { "write", "zero", "trim" };

/* Options. */
static const char *uri;
static unsigned connections = 1;
static unsigned queue_depth = 1;
static uint64_t requests;               /* per connection; 0: no limit */
static double seconds;                  /* 0: no limit */
static uint64_t seed;
static const char *log_path;
static uint64_t max_size = 65536;
static unsigned mix[3] = { 60, 20, 20 }; /* percent of write, zero, trim */

static int log_fd = -1;
static uint64_t export_size;
static char *write_buf;                 /* never changes: shared by all */
static struct timespec deadline;

/* One request in flight.  Slots are owned by their connection, so the
 * completion callback needs no allocation, and a request that libnbd
 * refuses to queue leaves nothing behind.
 */
struct slot {
  struct conn *conn;
  uint64_t id;
  bool busy;
};

struct conn {
  unsigned index;
  pthread_t thread;
  struct nbd_handle *nbd;
  uint64_t rng;
  uint64_t sent;
  unsigned in_flight;
  bool failed;                          /* an error other than the
                                           server going away */
  struct slot *slots;
};

static void
usage (FILE *fp)
{
  fprintf (fp,
"usage: loadgen -u URI -l LOGFILE [-c CONNECTIONS] [-q QUEUE_DEPTH]\n"
"               [-n REQUESTS] [-t SECONDS] [-s SEED]\n"
"               [--max-size BYTES] [--mix WRITE,ZERO,TRIM]\n"
"\n"
"  -n  requests per connection (default: no limit)\n"
"  -t  stop sending after this many seconds (default: no limit)\n"
"  --max-size  largest request, at least 1 byte (default 65536)\n"
"  --mix  percentages of each request type (default 60,20,20)\n"
"Without -n or -t the load runs until the server goes away.\n");
}

static void
log_line (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));

/* One write per line: the lines of several threads never mix, and a
 * line is either wholly in the file or not at all.  A log that cannot
 * be written makes the whole run worthless.
 */
static void
log_line (const char *fmt, ...)
{
  char line[128];
  va_list args;
  int len;
  ssize_t r;

  va_start (args, fmt);
  len = vsnprintf (line, sizeof line, fmt, args);
  va_end (args);
  if (len < 0 || (size_t) len >= sizeof line) {
    fprintf (stderr, "loadgen: log line too long\n");
    exit (EXIT_FAILURE);
  }
  r = write (log_fd, line, len);
  if (r != len) {
    fprintf (stderr, "loadgen: %s: %s\n", log_path,
             r == -1 ? strerror (errno) : "short write");
    exit (EXIT_FAILURE);
  }
}

/* splitmix64: small, and the same stream on every platform. */
static uint64_t
next_random (uint64_t *state)
{
  uint64_t z = (*state += UINT64_C (0x9e3779b97f4a7c15));

  z = (z ^ (z >> 30)) * UINT64_C (0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C (0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static uint64_t
random_below (uint64_t *state, uint64_t n)
{
  return next_random (state) % n;
}

static bool
past_deadline (void)
{
  struct timespec now;

  if (seconds == 0)
    return false;
  clock_gettime (CLOCK_MONOTONIC, &now);
  return now.tv_sec > deadline.tv_sec ||
    (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec);
}

/* The errors an NBD server can send. */
static const char *
error_name (int error)
{
  switch (error) {
  case EPERM: return "EPERM";
  case EIO: return "EIO";
  case ENOMEM: return "ENOMEM";
  case EINVAL: return "EINVAL";
  case ENOSPC: return "ENOSPC";
  case EOVERFLOW: return "EOVERFLOW";
  case ENOTSUP: return "ENOTSUP";
  case ESHUTDOWN: return "ESHUTDOWN";
  default: return "other";
  }
}

static int
completed (void *user_data, int *error)
{
  struct slot *slot = user_data;

  /* libnbd fails every request still in flight with ENOTCONN when the
   * connection dies; the server never replies with that errno.
   */
  if (*error == 0)
    log_line ("A %u %" PRIu64 " ok\n", slot->conn->index, slot->id);
  else if (*error == ENOTCONN)
    log_line ("A %u %" PRIu64 " lost\n", slot->conn->index, slot->id);
  else
    log_line ("A %u %" PRIu64 " err %s\n", slot->conn->index, slot->id,
              error_name (*error));
  slot->busy = false;
  slot->conn->in_flight--;
  return 1;                     /* retire the command */
}

static bool
server_gone (struct conn *c)
{
  return nbd_aio_is_dead (c->nbd) == 1 || nbd_aio_is_closed (c->nbd) == 1;
}

/* Send the next request of the stream.  Returns false if the
 * connection cannot take it.
 */
static bool
send_request (struct conn *c)
{
  uint64_t r = random_below (&c->rng, 100);
  enum req_type type =
    r < mix[0] ? REQ_WRITE : r < mix[0] + mix[1] ? REQ_ZERO : REQ_TRIM;
  uint64_t limit = max_size < export_size ? max_size : export_size;
  uint64_t length = 1 + random_below (&c->rng, limit);
  uint64_t offset = random_below (&c->rng, export_size - length + 1);
  struct slot *slot = NULL;
  nbd_completion_callback cb;
  int64_t cookie;
  unsigned i;

  for (i = 0; i < queue_depth; i++)
    if (!c->slots[i].busy) {
      slot = &c->slots[i];
      break;
    }
  if (slot == NULL)
    abort ();                   /* callers keep in_flight < queue_depth */
  slot->id = ++c->sent;
  slot->busy = true;
  c->in_flight++;
  cb = (nbd_completion_callback) { .callback = completed, .user_data = slot };

  log_line ("S %u %" PRIu64 " %s %" PRIu64 " %" PRIu64 "\n",
            c->index, slot->id, type_names[type], offset, length);
  switch (type) {
  case REQ_WRITE:
    cookie = nbd_aio_pwrite (c->nbd, write_buf, length, offset, cb, 0);
    break;
  case REQ_ZERO:
    cookie = nbd_aio_zero (c->nbd, length, offset, cb, 0);
    break;
  default:
    cookie = nbd_aio_trim (c->nbd, length, offset, cb, 0);
    break;
  }
  if (cookie == -1) {
    /* Not queued, so the callback will not run: this request was
     * never sent.
     */
    slot->busy = false;
    c->in_flight--;
    log_line ("A %u %" PRIu64 " lost\n", c->index, slot->id);
    if (!server_gone (c)) {
      fprintf (stderr, "loadgen: connection %u: %s\n",
               c->index, nbd_get_error ());
      c->failed = true;
    }
    return false;
  }
  return true;
}

static void *
run_connection (void *arg)
{
  struct conn *c = arg;
  bool sending = true;

  for (;;) {
    while (sending && c->in_flight < queue_depth) {
      if (past_deadline () || (requests != 0 && c->sent >= requests))
        sending = false;
      else if (!send_request (c))
        return NULL;
    }
    if (!sending && c->in_flight == 0)
      break;
    /* A timeout, so that -t is honoured even if nothing completes. */
    if (nbd_poll (c->nbd, 100) == -1) {
      if (!server_gone (c)) {
        fprintf (stderr, "loadgen: connection %u: %s\n",
                 c->index, nbd_get_error ());
        c->failed = true;
      }
      return NULL;
    }
    if (server_gone (c))
      return NULL;
  }

  /* A clean end: tell the server we are leaving.  If it has gone in
   * the meantime that is no error either.
   */
  if (nbd_shutdown (c->nbd, 0) == -1 && !server_gone (c)) {
    fprintf (stderr, "loadgen: connection %u: %s\n",
             c->index, nbd_get_error ());
    c->failed = true;
  }
  return NULL;
}

static bool
parse_u64 (const char *s, uint64_t *v)
{
  char *end;

  if (*s < '0' || *s > '9')
    return false;
  errno = 0;
  *v = strtoull (s, &end, 0);
  return errno == 0 && *end == '\0';
}

static bool
parse_unsigned (const char *s, unsigned *v, unsigned max)
{
  uint64_t u;

  if (!parse_u64 (s, &u) || u > max)
    return false;
  *v = u;
  return true;
}

static bool
parse_mix (const char *s, unsigned m[3])
{
  unsigned a, b, c;
  int n;

  if (sscanf (s, "%u,%u,%u%n", &a, &b, &c, &n) != 3 || s[n] != '\0' ||
      a > 100 || b > 100 || c > 100 || a + b + c != 100)
    return false;
  m[0] = a;
  m[1] = b;
  m[2] = c;
  return true;
}

static void
bad_option (const char *what, const char *value)
{
  fprintf (stderr, "loadgen: invalid %s: '%s'\n", what, value);
  usage (stderr);
  exit (EXIT_FAILURE);
}

int
main (int argc, char *argv[])
{
  enum { MAX_SIZE_OPTION = 256, MIX_OPTION };
  static const struct option long_options[] = {
    { "uri",         required_argument, NULL, 'u' },
    { "connections", required_argument, NULL, 'c' },
    { "queue-depth", required_argument, NULL, 'q' },
    { "requests",    required_argument, NULL, 'n' },
    { "time",        required_argument, NULL, 't' },
    { "seed",        required_argument, NULL, 's' },
    { "log",         required_argument, NULL, 'l' },
    { "max-size",    required_argument, NULL, MAX_SIZE_OPTION },
    { "mix",         required_argument, NULL, MIX_OPTION },
    { "help",        no_argument,       NULL, 'h' },
    { NULL }
  };
  struct conn *conns;
  int64_t size;
  unsigned i;
  int opt, status = EXIT_SUCCESS;
  char *end;

  while ((opt = getopt_long (argc, argv, "u:c:q:n:t:s:l:h",
                             long_options, NULL)) != -1) {
    switch (opt) {
    case 'u':
      uri = optarg;
      break;
    case 'c':
      if (!parse_unsigned (optarg, &connections, 1024) || connections == 0)
        bad_option ("number of connections", optarg);
      break;
    case 'q':
      if (!parse_unsigned (optarg, &queue_depth, 65536) || queue_depth == 0)
        bad_option ("queue depth", optarg);
      break;
    case 'n':
      if (!parse_u64 (optarg, &requests))
        bad_option ("number of requests", optarg);
      break;
    case 't':
      errno = 0;
      seconds = strtod (optarg, &end);
      if (errno || *end || end == optarg || !(seconds > 0 && seconds < 1e9))
        bad_option ("time", optarg);
      break;
    case 's':
      if (!parse_u64 (optarg, &seed))
        bad_option ("seed", optarg);
      break;
    case 'l':
      log_path = optarg;
      break;
    case MAX_SIZE_OPTION:
      /* The largest write libnbd sends is 32M. */
      if (!parse_u64 (optarg, &max_size) || max_size == 0 ||
          max_size > 32 * 1024 * 1024)
        bad_option ("maximum size (1 to 33554432)", optarg);
      break;
    case MIX_OPTION:
      if (!parse_mix (optarg, mix))
        bad_option ("mix (three percentages adding up to 100)", optarg);
      break;
    case 'h':
      usage (stdout);
      exit (EXIT_SUCCESS);
    default:
      usage (stderr);
      exit (EXIT_FAILURE);
    }
  }
  if (optind != argc || uri == NULL || log_path == NULL) {
    usage (stderr);
    exit (EXIT_FAILURE);
  }

  /* The server dying under us is expected; its socket must not kill
   * us too.
   */
  signal (SIGPIPE, SIG_IGN);

  log_fd = open (log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd == -1) {
    perror (log_path);
    exit (EXIT_FAILURE);
  }
  write_buf = malloc (max_size);
  conns = calloc (connections, sizeof *conns);
  if (write_buf == NULL || conns == NULL) {
    perror ("malloc");
    exit (EXIT_FAILURE);
  }
  memset (write_buf, 0xa5, max_size);

  /* Every connection is made before any request is sent, so that a
   * server killed early is seen by all connections alike, as a lost
   * connection and not as a failure to connect.
   */
  for (i = 0; i < connections; i++) {
    struct conn *c = &conns[i];

    c->index = i;
    c->rng = seed ^ (UINT64_C (0x5851f42d4c957f2d) * (i + 1));
    c->slots = calloc (queue_depth, sizeof *c->slots);
    c->nbd = nbd_create ();
    if (c->slots == NULL || c->nbd == NULL) {
      fprintf (stderr, "loadgen: %s\n",
               c->nbd == NULL ? nbd_get_error () : strerror (errno));
      exit (EXIT_FAILURE);
    }
    for (unsigned j = 0; j < queue_depth; j++)
      c->slots[j].conn = c;
    if (nbd_connect_uri (c->nbd, uri) == -1) {
      fprintf (stderr, "loadgen: connection %u: %s\n", i, nbd_get_error ());
      exit (EXIT_FAILURE);
    }
  }
  size = nbd_get_size (conns[0].nbd);
  if (size <= 0) {
    fprintf (stderr, "loadgen: %s\n",
             size == 0 ? "the export is empty" : nbd_get_error ());
    exit (EXIT_FAILURE);
  }
  export_size = size;
  if ((mix[1] && nbd_can_zero (conns[0].nbd) != 1) ||
      (mix[2] && nbd_can_trim (conns[0].nbd) != 1) ||
      nbd_is_read_only (conns[0].nbd) != 0) {
    fprintf (stderr, "loadgen: the server cannot take this mix of "
             "requests (read-only, or no zero or trim)\n");
    exit (EXIT_FAILURE);
  }

  if (seconds > 0) {
    clock_gettime (CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t) seconds;
    deadline.tv_nsec += (long) ((seconds - (time_t) seconds) * 1e9);
    if (deadline.tv_nsec >= 1000000000) {
      deadline.tv_sec++;
      deadline.tv_nsec -= 1000000000;
    }
  }

  for (i = 0; i < connections; i++) {
    errno = pthread_create (&conns[i].thread, NULL, run_connection,
                            &conns[i]);
    if (errno != 0) {
      perror ("pthread_create");
      exit (EXIT_FAILURE);
    }
  }
  for (i = 0; i < connections; i++) {
    pthread_join (conns[i].thread, NULL);
    if (conns[i].failed)
      status = EXIT_FAILURE;
    nbd_close (conns[i].nbd);
    free (conns[i].slots);
  }
  free (conns);
  free (write_buf);
  if (close (log_fd) == -1) {
    perror (log_path);
    status = EXIT_FAILURE;
  }
  return status;
}
