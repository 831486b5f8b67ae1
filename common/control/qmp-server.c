/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The QMP control socket's transport: see qmp-server.h.
 *
 * One thread polls a wake-up pipe, the listening socket and every
 * client, all non-blocking, so a client that stalls, sends garbage or
 * never reads its replies costs the others nothing.  Each client has
 * an incremental JSON tokener (input may arrive in any pieces) and an
 * output buffer flushed as the socket accepts it.
 *
 * Limits, per client:
 *   - MAX_INPUT bytes without completing a JSON object: an error reply,
 *     then the connection is closed.
 *   - MAX_OUTPUT bytes of replies it has not read: when another reply
 *     is due and that much is still unsent, the connection is closed
 *     (no error reply: it would not be read either).
 *   - MAX_CLIENTS at once: a connection beyond that gets one error line
 *     (no greeting) and is closed.
 *   - NEGOTIATE_TIMEOUT_MS to complete qmp_capabilities: a client still
 *     not negotiated then gets an error reply and is closed, so that
 *     connections left idle (a stuck script, a port scanner) cannot
 *     hold every slot and lock the backup tool out.
 *
 * Input is strict JSON (RFC 8259) in UTF-8: json-c's extensions (NaN,
 * Infinity) are refused, and so are QEMU's (single-quoted strings).
 *
 * Parse errors: after a reply naming the error, the rest of the line
 * the error is on is discarded (up to and including the next '\n'), so
 * a client sending one command per line carries on with the next
 * line whatever the pieces its input arrived in.
 *
 * The socket file itself is made and removed by qmp-socket.c.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

#include <json-c/json.h>

#include <nbdkit-filter.h>

#include "checked-io.h"
#include "qmp-server.h"
#include "qmp-socket.h"

#define MAX_CLIENTS 64
#define MAX_INPUT (1024 * 1024)
#define MAX_OUTPUT (16 * 1024 * 1024)
#define READ_SIZE 65536
#define ACCEPTS_PER_ROUND 64
#define ACCEPT_RETRY_MS 100     /* after EMFILE and the like */
#define NEGOTIATE_TIMEOUT_MS 5000
#define OUT_KEEP 65536          /* output buffer kept allocated when empty */

struct client {
  int fd;
  uint64_t id;                  /* for debug messages */
  struct json_tokener *tok;
  size_t in_object;             /* bytes of the incomplete object so far */
  bool skip_line;               /* after a parse error: drop up to '\n' */
  bool negotiated;
  uint64_t negotiate_by;        /* CLOCK_MONOTONIC ms: closed if not
                                   negotiated by then */
  bool draining;                /* read no more; close once flushed */
  bool dead;                    /* close at the end of this round */
  char *out;                    /* unsent replies: out[out_start..out_end) */
  size_t out_start, out_end, out_cap;
};

struct qmp_server {
  char *path;
  dev_t dev;                    /* identify our socket file at stop */
  ino_t ino;
  qmp_dispatch_fn *dispatch;
  void *opaque;
  int listen_fd;
  int wake_rd, wake_wr;
  pthread_t thread;
  char *greeting;               /* serialized, with CRLF */
  char *too_many;               /* the line for connections over the limit */
  char *inbuf;                  /* READ_SIZE bytes */
  uint64_t next_id;
  size_t nr_clients;
  struct client *clients[MAX_CLIENTS];
  struct pollfd pfds[MAX_CLIENTS + 2];
};

/* JSON text of OBJ (a reference is consumed) followed by CRLF,
 * malloc'd; NULL if out of memory.
 */
static char *
json_line (struct json_object *obj)
{
  const char *s = obj
    ? json_object_to_json_string_ext (obj, QMP_PRINT_FLAGS) : NULL;
  char *line = NULL;
  size_t len;

  if (s != NULL) {
    len = strlen (s);
    line = malloc (len + 3);
    if (line != NULL) {
      memcpy (line, s, len);
      memcpy (line + len, "\r\n", 3);
    }
  }
  json_object_put (obj);
  return line;
}

/* Clients. */

static void
client_free (struct client *c)
{
  if (c->fd >= 0)
    close (c->fd);
  if (c->tok)
    json_tokener_free (c->tok);
  free (c->out);
  free (c);
}

static size_t
pending (const struct client *c)
{
  return c->out_end - c->out_start;
}

/* Send what the socket takes now. */
static void
flush_output (struct client *c)
{
  while (c->out_start < c->out_end) {
    ssize_t r = send (c->fd, c->out + c->out_start, pending (c),
                      MSG_NOSIGNAL | MSG_DONTWAIT);

    if (r == -1) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return;
      nbdkit_debug ("control: client %" PRIu64 ": sending: %s",
                    c->id, error_text (errno));
      c->dead = true;
      return;
    }
    c->out_start += r;
  }
  c->out_start = c->out_end = 0;
  if (c->out_cap > OUT_KEEP) {
    free (c->out);
    c->out = NULL;
    c->out_cap = 0;
  }
  if (c->draining)
    c->dead = true;
}

static void
append_output (struct client *c, const char *data, size_t len)
{
  if (c->out_cap - c->out_end < len && c->out_start > 0) {
    memmove (c->out, c->out + c->out_start, pending (c));
    c->out_end -= c->out_start;
    c->out_start = 0;
  }
  if (c->out_cap - c->out_end < len) {
    size_t cap = c->out_cap ? c->out_cap : 4096;
    char *p;

    while (cap - c->out_end < len)
      cap *= 2;
    p = realloc (c->out, cap);
    if (p == NULL) {
      nbdkit_debug ("control: client %" PRIu64 ": out of memory for replies",
                    c->id);
      c->dead = true;
      return;
    }
    c->out = p;
    c->out_cap = cap;
  }
  memcpy (c->out + c->out_end, data, len);
  c->out_end += len;
}

/* Queue REPLY (a reference is consumed; NULL means out of memory). */
static void
send_reply (struct client *c, struct json_object *reply)
{
  const char *text;
  size_t len;

  if (c->dead)
    goto out;
  if (reply == NULL) {
    nbdkit_debug ("control: client %" PRIu64 ": out of memory for a reply",
                  c->id);
    c->dead = true;
    goto out;
  }
  if (pending (c) >= MAX_OUTPUT) {
    flush_output (c);
    if (!c->dead && pending (c) >= MAX_OUTPUT) {
      nbdkit_debug ("control: client %" PRIu64 ": %zu bytes of replies "
                    "unread, the limit is %d: disconnecting",
                    c->id, pending (c), MAX_OUTPUT);
      c->dead = true;
    }
    if (c->dead)
      goto out;
  }
  text = json_object_to_json_string_length (reply, QMP_PRINT_FLAGS, &len);
  if (text == NULL) {
    nbdkit_debug ("control: client %" PRIu64 ": out of memory for a reply",
                  c->id);
    c->dead = true;
    goto out;
  }
  append_output (c, text, len);
  append_output (c, "\r\n", 2);
 out:
  json_object_put (reply);
}

/* Feed LEN bytes from a client to its tokener, handling each complete
 * object as it ends.
 */
static void
feed (struct qmp_server *srv, struct client *c, const char *buf, size_t len)
{
  size_t off = 0;

  while (off < len && !c->dead && !c->draining) {
    struct json_object *obj;
    enum json_tokener_error err;
    size_t chunk, end;

    if (c->skip_line) {
      const char *nl = memchr (buf + off, '\n', len - off);

      if (nl == NULL)
        return;
      off = nl - buf + 1;
      c->skip_line = false;
      continue;
    }
    if (c->in_object == 0) {
      while (off < len && (buf[off] == ' ' || buf[off] == '\t' ||
                           buf[off] == '\r' || buf[off] == '\n'))
        off++;
      if (off == len)
        return;
    }

    chunk = len - off;
    obj = json_tokener_parse_ex (c->tok, buf + off, chunk);
    err = json_tokener_get_error (c->tok);
    if (err == json_tokener_continue) {
      c->in_object += chunk;
      if (c->in_object > MAX_INPUT) {
        nbdkit_debug ("control: client %" PRIu64 ": more than %d bytes "
                      "without completing an object: disconnecting",
                      c->id, MAX_INPUT);
        send_reply (c, qmp_error (QMP_ERROR_GENERIC,
                                  "QMP input too long: more than %d bytes "
                                  "without completing a JSON object; "
                                  "closing the connection", MAX_INPUT));
        c->draining = true;
      }
      return;
    }

    end = json_tokener_get_parse_end (c->tok);
    if (end > chunk)
      end = chunk;
    json_tokener_reset (c->tok);
    if (err != json_tokener_success) {
      c->in_object = 0;
      send_reply (c, qmp_error (QMP_ERROR_GENERIC, "JSON parse error, %s",
                                json_tokener_error_desc (err)));
      off += end;
      c->skip_line = true;
      continue;
    }
    if (end == 0)               /* cannot happen: be sure to progress */
      end = 1;
    off += end;
    if (c->in_object + end > MAX_INPUT) {
      json_object_put (obj);
      send_reply (c, qmp_error (QMP_ERROR_GENERIC,
                                "QMP input too long: a JSON object of more "
                                "than %d bytes; closing the connection",
                                MAX_INPUT));
      c->draining = true;
      return;
    }
    c->in_object = 0;
    send_reply (c, qmp_reply_to (obj, c->id, &c->negotiated,
                                 srv->dispatch, srv->opaque));
    json_object_put (obj);
  }
}

static void
client_read (struct qmp_server *srv, struct client *c)
{
  ssize_t r = recv (c->fd, srv->inbuf, READ_SIZE, MSG_DONTWAIT);

  if (r == -1) {
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
      return;
    nbdkit_debug ("control: client %" PRIu64 ": receiving: %s",
                  c->id, error_text (errno));
    c->dead = true;
    return;
  }
  if (r == 0) {
    nbdkit_debug ("control: client %" PRIu64 ": end of input%s",
                  c->id, c->in_object ? " in the middle of an object" : "");
    c->draining = true;         /* replies already due still go out */
    flush_output (c);
    if (pending (c) == 0)
      c->dead = true;
    return;
  }
  feed (srv, c, srv->inbuf, r);
  if (!c->dead)
    flush_output (c);
}

static uint64_t
now_ms (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
accept_clients (struct qmp_server *srv, bool *paused)
{
  int i;

  for (i = 0; i < ACCEPTS_PER_ROUND; i++) {
    struct client *c;
    int fd = accept4 (srv->listen_fd, NULL, NULL,
                      SOCK_NONBLOCK | SOCK_CLOEXEC);

    if (fd == -1) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        /* EMFILE and the like: wait a little rather than spin. */
        nbdkit_debug ("control: %s: accepting: %s",
                      srv->path, error_text (errno));
        *paused = true;
      }
      return;
    }
    if (srv->nr_clients == MAX_CLIENTS) {
      ssize_t ignored;

      nbdkit_debug ("control: %s: %d clients already: refusing another",
                    srv->path, MAX_CLIENTS);
      ignored = send (fd, srv->too_many, strlen (srv->too_many),
                      MSG_NOSIGNAL | MSG_DONTWAIT);
      (void) ignored;
      close (fd);
      continue;
    }
    c = calloc (1, sizeof *c);
    if (c == NULL || (c->tok = json_tokener_new ()) == NULL) {
      nbdkit_debug ("control: %s: out of memory for a client", srv->path);
      free (c);
      close (fd);
      continue;
    }
    json_tokener_set_flags (c->tok, QMP_TOKENER_FLAGS);
    c->fd = fd;
    c->id = ++srv->next_id;
    c->negotiate_by = now_ms () + NEGOTIATE_TIMEOUT_MS;
    srv->clients[srv->nr_clients++] = c;
    nbdkit_debug ("control: client %" PRIu64 ": connected", c->id);
    append_output (c, srv->greeting, strlen (srv->greeting));
    flush_output (c);
  }
}

static void
remove_dead (struct qmp_server *srv)
{
  size_t i, j;

  for (i = j = 0; i < srv->nr_clients; i++) {
    struct client *c = srv->clients[i];

    if (c->dead) {
      nbdkit_debug ("control: client %" PRIu64 ": disconnected", c->id);
      client_free (c);
    }
    else
      srv->clients[j++] = c;
  }
  srv->nr_clients = j;
}

/* Close the clients that have not negotiated in time; returns how
 * long poll may wait before the next one is due (-1: none is).
 */
static int
close_unnegotiated (struct qmp_server *srv)
{
  const uint64_t now = now_ms ();
  uint64_t next = UINT64_MAX;
  size_t i;

  for (i = 0; i < srv->nr_clients; i++) {
    struct client *c = srv->clients[i];

    if (c->negotiated || c->draining || c->dead)
      continue;
    if (now >= c->negotiate_by) {
      nbdkit_debug ("control: client %" PRIu64 ": no qmp_capabilities "
                    "within %d ms: disconnecting", c->id,
                    NEGOTIATE_TIMEOUT_MS);
      send_reply (c, qmp_error (QMP_ERROR_GENERIC,
                                "no qmp_capabilities within %d seconds of "
                                "connecting; closing the connection",
                                NEGOTIATE_TIMEOUT_MS / 1000));
      c->draining = true;
      flush_output (c);
    }
    else if (c->negotiate_by < next)
      next = c->negotiate_by;
  }
  return next == UINT64_MAX ? -1 : (int) (next - now);
}

static void *
server_thread (void *arg)
{
  struct qmp_server *srv = arg;
  bool paused = false;

  for (;;) {
    nfds_t n = 2;
    size_t i;
    int r, timeout;

    timeout = close_unnegotiated (srv);
    remove_dead (srv);
    srv->pfds[0] = (struct pollfd) { .fd = srv->wake_rd, .events = POLLIN };
    srv->pfds[1] = (struct pollfd) { .fd = paused ? -1 : srv->listen_fd,
                                     .events = POLLIN };
    for (i = 0; i < srv->nr_clients; i++) {
      struct client *c = srv->clients[i];
      short events = 0;

      if (!c->draining)
        events |= POLLIN;
      if (pending (c) > 0)
        events |= POLLOUT;
      srv->pfds[n++] = (struct pollfd) { .fd = c->fd, .events = events };
    }

    if (paused && (timeout == -1 || timeout > ACCEPT_RETRY_MS))
      timeout = ACCEPT_RETRY_MS;
    r = poll (srv->pfds, n, timeout);
    paused = false;
    if (r == -1) {
      const struct timespec ts = { .tv_nsec = ACCEPT_RETRY_MS * 1000000L };

      if (errno != EINTR) {
        nbdkit_debug ("control: %s: poll: %s", srv->path, error_text (errno));
        nanosleep (&ts, NULL);
      }
      continue;
    }
    if (srv->pfds[0].revents != 0)
      break;                    /* qmp_server_stop */

    for (i = 0; i < srv->nr_clients; i++) {
      struct client *c = srv->clients[i];
      short revents = srv->pfds[2 + i].revents;

      if (revents & POLLIN)
        client_read (srv, c);
      else if (revents & (POLLERR | POLLHUP | POLLNVAL)) {
        nbdkit_debug ("control: client %" PRIu64 ": hung up", c->id);
        c->dead = true;
      }
      if (!c->dead && (revents & POLLOUT))
        flush_output (c);
    }
    remove_dead (srv);
    if (srv->pfds[1].revents & POLLIN) {
      accept_clients (srv, &paused);
      remove_dead (srv);
    }
  }
  return NULL;
}

static void
free_server (struct qmp_server *srv)
{
  if (srv->listen_fd >= 0)
    close (srv->listen_fd);
  if (srv->wake_rd >= 0)
    close (srv->wake_rd);
  if (srv->wake_wr >= 0)
    close (srv->wake_wr);
  free (srv->path);
  free (srv->greeting);
  free (srv->too_many);
  free (srv->inbuf);
  free (srv);
}

struct qmp_server *
qmp_server_start (const char *socket_path, const char *version,
                  qmp_dispatch_fn *dispatch, void *opaque)
{
  struct qmp_server *srv;
  sigset_t all, old;
  int fds[2], err;

  if (qmp_socket_check_path (socket_path) == -1)
    return NULL;

  srv = calloc (1, sizeof *srv);
  if (srv == NULL) {
    nbdkit_error ("control socket %s: out of memory", socket_path);
    return NULL;
  }
  srv->listen_fd = srv->wake_rd = srv->wake_wr = -1;
  srv->dispatch = dispatch;
  srv->opaque = opaque;
  srv->path = strdup (socket_path);
  srv->greeting = json_line (qmp_greeting (version ? version : ""));
  srv->too_many = json_line (qmp_error (QMP_ERROR_GENERIC,
                                        "too many clients on this control "
                                        "socket (the limit is %d): try again "
                                        "later", MAX_CLIENTS));
  srv->inbuf = malloc (READ_SIZE);
  if (srv->path == NULL || srv->greeting == NULL || srv->too_many == NULL ||
      srv->inbuf == NULL) {
    nbdkit_error ("control socket %s: out of memory", socket_path);
    goto err;
  }
  if (pipe2 (fds, O_CLOEXEC | O_NONBLOCK) == -1) {
    nbdkit_error ("control socket %s: pipe: %s",
                  socket_path, error_text (errno));
    goto err;
  }
  srv->wake_rd = fds[0];
  srv->wake_wr = fds[1];

  srv->listen_fd = qmp_socket_create (socket_path, &srv->dev, &srv->ino);
  if (srv->listen_fd == -1)
    goto err;

  /* The thread takes no signals: they are the main program's. */
  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &old);
  err = pthread_create (&srv->thread, NULL, server_thread, srv);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  if (err != 0) {
    nbdkit_error ("control socket %s: starting its thread: %s",
                  socket_path, error_text (err));
    qmp_socket_remove (srv->path, srv->dev, srv->ino);
    goto err;
  }
  nbdkit_debug ("control: listening on %s", socket_path);
  return srv;

 err:
  free_server (srv);
  return NULL;
}

void
qmp_server_stop (struct qmp_server *srv)
{
  size_t i;

  if (srv == NULL)
    return;
  while (write (srv->wake_wr, "x", 1) == -1 && errno == EINTR)
    ;
  pthread_join (srv->thread, NULL);
  for (i = 0; i < srv->nr_clients; i++)
    client_free (srv->clients[i]);
  srv->nr_clients = 0;
  close (srv->listen_fd);
  srv->listen_fd = -1;
  qmp_socket_remove (srv->path, srv->dev, srv->ino);
  nbdkit_debug ("control: %s: stopped", srv->path);
  free_server (srv);
}
