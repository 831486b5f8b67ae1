/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Unit tests for the QMP transport: greeting, negotiation, framing of
 * JSON objects over any pieces of input, error replies, limits, and
 * the socket file's life cycle.  Clients are plain AF_UNIX sockets.
 * Then the command table, through qmp_commands_dispatch directly, and
 * replies that must stay valid UTF-8 whatever the input or the sidecar
 * holds.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>

#include <json-c/json.h>

#include "qmp-commands.h"
#include "qmp-server.h"
#include "qmp-socket.h"
#include "sidecar.h"
#include "tracker.h"
#include "unit-test.h"

#define BIG_REPLY (1024 * 1024)

static char dir[] = "/tmp/test-qmp-server-XXXXXX";
static char path[256];
static pthread_t main_thread;
static _Atomic int dispatched;

/* The fake commands: echo (returns its arguments), empty (returns
 * nothing), fail (GenericError), big (a 1 MiB string); anything else
 * is CommandNotFound.
 */
static struct json_object *
dispatch (void *opaque, const char *name, struct json_object *args)
{
  CHECK (opaque == &dispatched);
  CHECK (!pthread_equal (pthread_self (), main_thread));
  CHECK (args != NULL && json_object_is_type (args, json_type_object));
  dispatched++;

  if (strcmp (name, "echo") == 0)
    return qmp_return (json_object_get (args));
  if (strcmp (name, "empty") == 0)
    return qmp_return (NULL);
  if (strcmp (name, "fail") == 0)
    return qmp_error (QMP_ERROR_GENERIC, "it failed");
  if (strcmp (name, "big") == 0) {
    char *s = malloc (BIG_REPLY + 1);
    struct json_object *o;

    CHECK (s != NULL);
    memset (s, 'x', BIG_REPLY);
    s[BIG_REPLY] = '\0';
    o = json_object_new_string (s);
    free (s);
    return qmp_return (o);
  }
  return qmp_error (QMP_ERROR_COMMAND_NOT_FOUND, "no command %s", name);
}

static struct qmp_server *
start (const char *p)
{
  return qmp_server_start (p, "test-1.2.3", dispatch, &dispatched);
}

/* A client connection with a line reader. */
struct conn {
  int fd;
  char buf[65536];
  size_t len;
};

static struct conn *
try_connect (const char *p)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  struct timeval tv = { .tv_sec = 5 };
  struct conn *c = calloc (1, sizeof *c);

  CHECK (c != NULL);
  c->fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK (c->fd >= 0);
  /* A failing test fails, rather than hangs. */
  CHECK (setsockopt (c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  CHECK (setsockopt (c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
  strcpy (addr.sun_path, p);
  if (connect (c->fd, (struct sockaddr *) &addr, sizeof addr) == -1) {
    close (c->fd);
    free (c);
    return NULL;
  }
  return c;
}

static void
disconnect (struct conn *c)
{
  close (c->fd);
  free (c);
}

static void
send_text (struct conn *c, const char *s, size_t len)
{
  while (len > 0) {
    ssize_t r = send (c->fd, s, len, MSG_NOSIGNAL);

    CHECK (r > 0);
    s += r;
    len -= r;
  }
}

static void
send_str (struct conn *c, const char *s)
{
  send_text (c, s, strlen (s));
}

/* The next line without its CRLF (which must be there), or NULL at
 * the end of the stream.  Valid until the next call.
 */
static char *
read_line (struct conn *c)
{
  static char line[sizeof c->buf];
  char *nl;

  while ((nl = memchr (c->buf, '\n', c->len)) == NULL) {
    ssize_t r;

    CHECK (c->len < sizeof c->buf);
    r = recv (c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (r == 0 || (r == -1 && errno == ECONNRESET)) {
      CHECK (c->len == 0);
      return NULL;
    }
    CHECK (r > 0);
    c->len += r;
  }
  CHECK (nl > c->buf && nl[-1] == '\r');
  memcpy (line, c->buf, nl - 1 - c->buf);
  line[nl - 1 - c->buf] = '\0';
  c->len -= nl + 1 - c->buf;
  memmove (c->buf, nl + 1, c->len);
  return line;
}

static void
expect_line (struct conn *c, const char *expected)
{
  const char *line = read_line (c);

  if (line == NULL || strcmp (line, expected) != 0) {
    fprintf (stderr, "got      %s\nexpected %s\n",
             line ? line : "(end of stream)", expected);
    CHECK (false);
  }
}

/* An error reply of CLASS, with ID (JSON text) or none if NULL. */
static void
expect_error (struct conn *c, const char *class, const char *id)
{
  const char *line = read_line (c);
  struct json_object *reply, *err, *o;

  if (line == NULL) {
    fprintf (stderr, "expected a %s error, got the end of stream\n", class);
    CHECK (false);
  }
  reply = json_tokener_parse (line);
  if (reply == NULL ||
      !json_object_object_get_ex (reply, "error", &err) ||
      !json_object_object_get_ex (err, "class", &o) ||
      strcmp (json_object_get_string (o), class) != 0 ||
      !json_object_object_get_ex (err, "desc", &o) ||
      !json_object_is_type (o, json_type_string) ||
      json_object_object_length (err) != 2 ||
      json_object_object_length (reply) != (id ? 2 : 1)) {
    fprintf (stderr, "expected a %s error, got %s\n", class, line);
    CHECK (false);
  }
  if (id) {
    CHECK (json_object_object_get_ex (reply, "id", &o));
    CHECK (strcmp (json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN),
                   id) == 0);
  }
  json_object_put (reply);
}

static void
expect_eof (struct conn *c)
{
  CHECK (read_line (c) == NULL);
}

#define GREETING \
  "{\"QMP\":{\"version\":{\"qemu\":{\"micro\":0,\"minor\":0,\"major\":0}," \
  "\"package\":\"test-1.2.3\"},\"capabilities\":[]}}"

/* Connected, greeted, negotiated. */
static struct conn *
client (const char *p)
{
  struct conn *c = try_connect (p);

  CHECK (c != NULL);
  expect_line (c, GREETING);
  send_str (c, "{\"execute\":\"qmp_capabilities\"}\r\n");
  expect_line (c, "{\"return\":{}}");
  return c;
}

static void
echo_roundtrip (struct conn *c, int n)
{
  char cmd[128], reply[128];

  snprintf (cmd, sizeof cmd,
            "{\"execute\":\"echo\",\"arguments\":{\"n\":%d}}\n", n);
  snprintf (reply, sizeof reply, "{\"return\":{\"n\":%d}}", n);
  send_str (c, cmd);
  expect_line (c, reply);
}

static void
test_negotiation (void)
{
  struct conn *c = try_connect (path);

  CHECK (c != NULL);
  expect_line (c, GREETING);

  /* Nothing but qmp_capabilities before negotiation. */
  send_str (c, "{\"execute\":\"echo\"}\n");
  expect_error (c, "CommandNotFound", NULL);
  send_str (c, "{\"execute\":\"echo\",\"id\":7}\n");
  expect_error (c, "CommandNotFound", "7");
  send_str (c, "{\"execute\":\"nonesuch\"}\n");
  expect_error (c, "CommandNotFound", NULL);

  /* Capabilities: none offered, so enabling any is an error. */
  send_str (c, "{\"execute\":\"qmp_capabilities\","
            "\"arguments\":{\"enable\":[\"oob\"]},\"id\":\"x\"}\n");
  expect_error (c, "GenericError", "\"x\"");
  send_str (c, "{\"execute\":\"qmp_capabilities\","
            "\"arguments\":{\"enable\":\"oob\"}}\n");
  expect_error (c, "GenericError", NULL);
  send_str (c, "{\"execute\":\"qmp_capabilities\","
            "\"arguments\":{\"enable\":[1]}}\n");
  expect_error (c, "GenericError", NULL);
  send_str (c, "{\"execute\":\"qmp_capabilities\","
            "\"arguments\":{\"enable\":null}}\n");
  expect_error (c, "GenericError", NULL);
  send_str (c, "{\"execute\":\"qmp_capabilities\","
            "\"arguments\":{\"other\":[]}}\n");
  expect_error (c, "GenericError", NULL);
  send_str (c, "{\"execute\":\"echo\"}\n");      /* still not negotiated */
  expect_error (c, "CommandNotFound", NULL);

  send_str (c, "{\"execute\":\"qmp_capabilities\","
            "\"arguments\":{\"enable\":[]},\"id\":1}\n");
  expect_line (c, "{\"return\":{},\"id\":1}");
  send_str (c, "{\"execute\":\"qmp_capabilities\"}\n");
  expect_error (c, "CommandNotFound", NULL);
  echo_roundtrip (c, 1);                         /* still connected */
  disconnect (c);
}

static void
test_replies (void)
{
  struct conn *c = client (path);
  int before;

  /* Ids of any type come back, on success and on error. */
  send_str (c, "{\"execute\":\"empty\",\"id\":42}\n");
  expect_line (c, "{\"return\":{},\"id\":42}");
  send_str (c, "{\"id\":\"abc\",\"execute\":\"echo\","
            "\"arguments\":{\"a\":[1,\"/\",null]}}\n");
  expect_line (c, "{\"return\":{\"a\":[1,\"/\",null]},\"id\":\"abc\"}");
  send_str (c, "{\"execute\":\"empty\",\"id\":{\"k\":[1,2]}}\n");
  expect_line (c, "{\"return\":{},\"id\":{\"k\":[1,2]}}");
  send_str (c, "{\"execute\":\"fail\",\"id\":[3]}\n");
  expect_line (c, "{\"error\":{\"class\":\"GenericError\","
               "\"desc\":\"it failed\"},\"id\":[3]}");
  send_str (c, "{\"execute\":\"nonesuch\",\"id\":null}\n");
  expect_error (c, "CommandNotFound", "null");
  send_str (c, "{\"execute\":\"echo\"}\n");   /* no arguments: {} */
  expect_line (c, "{\"return\":{}}");

  /* Two commands in one write; whitespace of all kinds between. */
  send_str (c, "{\"execute\":\"echo\",\"arguments\":{\"n\":1}}"
            "{\"execute\":\"echo\",\"arguments\":{\"n\":2}}\r\n \t\n");
  expect_line (c, "{\"return\":{\"n\":1}}");
  expect_line (c, "{\"return\":{\"n\":2}}");
  send_str (c, "  \r\n\n{\n  \"execute\": \"echo\",\n  \"arguments\": "
            "{ \"n\": 3 }\n}\n");
  expect_line (c, "{\"return\":{\"n\":3}}");

  /* One command byte by byte, each byte its own read if the server
   * keeps up.
   */
  {
    const char *cmd = "{\"execute\":\"echo\",\"arguments\":{\"n\":4},"
      "\"id\":\"split\"}\n";
    const struct timespec ts = { .tv_nsec = 100000 };
    size_t i;

    for (i = 0; cmd[i] != '\0'; i++) {
      send_text (c, cmd + i, 1);
      nanosleep (&ts, NULL);
    }
    expect_line (c, "{\"return\":{\"n\":4},\"id\":\"split\"}");
  }

  /* Malformed JSON: an error, then the next line is served. */
  send_str (c, "{bad json}\r\n{\"execute\":\"echo\",\"arguments\":{\"n\":5}}\n");
  expect_error (c, "GenericError", NULL);
  expect_line (c, "{\"return\":{\"n\":5}}");
  /* ... with the error and the rest of its line in separate writes. */
  send_str (c, "{\"execute\": x");
  expect_error (c, "GenericError", NULL);
  send_str (c, "yz}\n{\"execute\":\"echo\",\"arguments\":{\"n\":6}}\n");
  expect_line (c, "{\"return\":{\"n\":6}}");
  /* ... one error per bad line. */
  send_text (c, "nonsense\n{\"a\":\n\0\n\xff\n", 19);
  expect_error (c, "GenericError", NULL);
  expect_error (c, "GenericError", NULL);
  expect_error (c, "GenericError", NULL);
  echo_roundtrip (c, 7);
  send_text (c, "\"\xff\"\n\0\n{'execute':'echo'}\n", 25);
  expect_error (c, "GenericError", NULL);
  expect_error (c, "GenericError", NULL);
  expect_error (c, "GenericError", NULL);
  echo_roundtrip (c, 8);

  /* Valid JSON, not a valid command. */
  before = dispatched;
  send_str (c, "[1,2]\n42\n\"s\"\nnull\ntrue\n");
  expect_error (c, "GenericError", NULL);
  expect_error (c, "GenericError", NULL);
  expect_error (c, "GenericError", NULL);
  expect_error (c, "GenericError", NULL);
  expect_error (c, "GenericError", NULL);
  send_str (c, "{\"arguments\":{},\"id\":1}\n");
  expect_error (c, "GenericError", "1");
  send_str (c, "{}\n");
  expect_error (c, "GenericError", NULL);
  send_str (c, "{\"execute\":1}\n");
  expect_error (c, "GenericError", NULL);
  send_str (c, "{\"execute\":\"echo\",\"arguments\":[]}\n");
  expect_error (c, "GenericError", NULL);
  send_str (c, "{\"execute\":\"echo\",\"arguments\":null}\n");
  expect_error (c, "GenericError", NULL);
  send_str (c, "{\"execute\":\"echo\",\"foo\":1,\"id\":2}\n");
  expect_error (c, "GenericError", "2");
  send_str (c, "{\"exec-oob\":\"echo\",\"id\":3}\n");
  expect_error (c, "GenericError", "3");
  send_str (c, "{\"execute\":\"echo\",\"arguments\":{\"x\":NaN},\"id\":4}\n");
  expect_error (c, "GenericError", "4");
  send_str (c, "{\"execute\":\"echo\",\"id\":-Infinity}\n");
  expect_error (c, "GenericError", NULL);
  CHECK (dispatched == before);

  /* A large object within the limit is fine, and comes back whole. */
  {
    const char *head = "{\"execute\":\"echo\",\"arguments\":{\"s\":\"";
    const char *rhead = "{\"return\":{\"s\":\"";
    size_t n = 1000000, want = strlen (rhead) + n + strlen ("\"}}\r\n");
    size_t got;
    char *cmd = malloc (strlen (head) + n + 10), *reply = malloc (want + 1);

    CHECK (cmd != NULL && reply != NULL);
    strcpy (cmd, head);
    memset (cmd + strlen (head), 'a', n);
    strcpy (cmd + strlen (head) + n, "\"}}\n");
    send_str (c, cmd);
    /* Too long for read_line: read it whole. */
    memcpy (reply, c->buf, c->len);
    got = c->len;
    c->len = 0;
    while (got < want) {
      ssize_t r = recv (c->fd, reply + got, want + 1 - got, 0);

      CHECK (r > 0);
      got += r;
    }
    CHECK (got == want);
    CHECK (memcmp (reply, rhead, strlen (rhead)) == 0);
    CHECK (reply[strlen (rhead)] == 'a' && reply[strlen (rhead) + n - 1] == 'a');
    CHECK (memcmp (reply + strlen (rhead) + n, "\"}}\r\n", 5) == 0);
    free (cmd);
    free (reply);
  }
  echo_roundtrip (c, 9);

  /* Half-closed after the last command: the reply still comes. */
  send_str (c, "{\"execute\":\"echo\",\"arguments\":{\"n\":10}}\n");
  CHECK (shutdown (c->fd, SHUT_WR) == 0);
  expect_line (c, "{\"return\":{\"n\":10}}");
  expect_eof (c);
  disconnect (c);
}

/* Oversized input: an error, then that client (only) is closed. */
static void
test_oversized (void)
{
  struct conn *other = client (path), *c = client (path);
  size_t len = 2 * 1024 * 1024, sent = 0;
  char *cmd = malloc (len);

  CHECK (cmd != NULL);
  memset (cmd, 'a', len);
  memcpy (cmd, "{\"execute\":\"echo\",\"arguments\":{\"s\":\"", 36);
  /* The server stops reading past 1 MiB: the rest may not go. */
  while (sent < len) {
    ssize_t r = send (c->fd, cmd + sent, len - sent, MSG_NOSIGNAL);

    if (r == -1) {
      CHECK (errno == EPIPE || errno == ECONNRESET);
      break;
    }
    sent += r;
  }
  CHECK (sent > 1024 * 1024);
  expect_error (c, "GenericError", NULL);
  expect_eof (c);
  disconnect (c);
  free (cmd);
  echo_roundtrip (other, 1);
  disconnect (other);
}

/* Three clients, their commands interleaved in pieces. */
static void
test_interleaved (void)
{
  struct conn *a = client (path), *b = client (path), *c = client (path);

  send_str (a, "{\"execute\":\"echo\",\"argu");
  send_str (b, "{\"execute\":\"echo\",\"arguments\":{\"who\":\"b\"}}\n"
            "{\"execute\":");
  send_str (c, "{\"id\":\"c\",");
  expect_line (b, "{\"return\":{\"who\":\"b\"}}");
  send_str (a, "ments\":{\"who\":\"a\"},\"id\":\"a\"}\n{\"exec");
  expect_line (a, "{\"return\":{\"who\":\"a\"},\"id\":\"a\"}");
  send_str (c, "\"execute\":\"fail\"}\n");
  expect_line (c, "{\"error\":{\"class\":\"GenericError\","
               "\"desc\":\"it failed\"},\"id\":\"c\"}");
  send_str (b, "\"empty\",\"id\":\"b2\"}\n");
  expect_line (b, "{\"return\":{},\"id\":\"b2\"}");
  send_str (a, "ute\":\"empty\",\"id\":\"a2\"}\n");
  expect_line (a, "{\"return\":{},\"id\":\"a2\"}");

  /* One goes away in the middle of an object: the others carry on. */
  send_str (c, "{\"execute\":\"echo\",\"arguments\":{\"x\":");
  disconnect (c);
  echo_roundtrip (a, 1);
  echo_roundtrip (b, 2);
  /* ... and one that goes away before even reading the greeting. */
  c = try_connect (path);
  CHECK (c != NULL);
  disconnect (c);
  echo_roundtrip (a, 3);
  disconnect (a);
  disconnect (b);
}

/* A client that never reads its replies is cut off when too much is
 * waiting for it, without holding anybody else up.
 */
static void
test_not_reading (void)
{
  struct conn *slow = client (path), *other = client (path);
  const char *cmd = "{\"execute\":\"big\"}\n";
  char buf[65536];
  size_t total = 0;
  int i;

  for (i = 0; i < 40; i++)
    send_str (slow, cmd);
  /* The server has answered some and is stuck on none. */
  echo_roundtrip (other, 1);
  for (;;) {
    ssize_t r = recv (slow->fd, buf, sizeof buf, 0);

    if (r == 0 || (r == -1 && errno == ECONNRESET))
      break;
    CHECK (r > 0);
    total += r;
  }
  CHECK (total < 40 * BIG_REPLY);
  disconnect (slow);
  echo_roundtrip (other, 2);
  disconnect (other);
}

/* The 65th client gets an error line instead of a greeting. */
static void
test_too_many (void)
{
  char p[300];
  struct qmp_server *srv;
  struct conn *c[64], *extra;
  int i, tries;

  snprintf (p, sizeof p, "%s/many", dir);
  srv = start (p);
  CHECK (srv != NULL);
  for (i = 0; i < 64; i++) {
    c[i] = try_connect (p);
    CHECK (c[i] != NULL);
    expect_line (c[i], GREETING);
  }
  extra = try_connect (p);
  CHECK (extra != NULL);
  expect_error (extra, "GenericError", NULL);
  expect_eof (extra);
  disconnect (extra);

  /* A slot freed is a slot the next client gets (once the server has
   * seen the hang-up).
   */
  disconnect (c[10]);
  for (tries = 0; ; tries++) {
    const char *line;

    CHECK (tries < 1000);
    extra = try_connect (p);
    CHECK (extra != NULL);
    line = read_line (extra);
    CHECK (line != NULL);
    if (strcmp (line, GREETING) == 0)
      break;
    disconnect (extra);
    usleep (1000);
  }
  send_str (extra, "{\"execute\":\"qmp_capabilities\"}\n");
  expect_line (extra, "{\"return\":{}}");
  echo_roundtrip (extra, 1);
  c[10] = extra;
  qmp_server_stop (srv);
  for (i = 0; i < 64; i++) {
    expect_eof (c[i]);
    disconnect (c[i]);
  }
}

static bool
is_socket (const char *p)
{
  struct stat st;

  return lstat (p, &st) == 0 && S_ISSOCK (st.st_mode);
}

/* Only the sockets we made are in DIR: no private directory left. */
static void
check_dir_clean (void)
{
  DIR *d = opendir (dir);
  struct dirent *e;

  CHECK (d != NULL);
  while ((e = readdir (d)) != NULL)
    CHECK (strncmp (e->d_name, ".qmp-", 5) != 0);
  closedir (d);
}

static void
test_socket_file (void)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  char p[300], longdir[200], longpath[300];
  struct qmp_server *srv, *srv2;
  struct conn *c;
  struct stat st;
  char text[16];
  int fd;

  /* 0600 whatever the umask. */
  CHECK (lstat (path, &st) == 0);
  CHECK (S_ISSOCK (st.st_mode));
  CHECK ((st.st_mode & 07777) == 0600);

  /* A live server's path is refused, and it keeps serving. */
  clear_last_error ();
  CHECK (start (path) == NULL);
  CHECK_ERROR_MENTIONS (path);
  CHECK_ERROR_MENTIONS ("listening");
  c = client (path);
  echo_roundtrip (c, 1);
  disconnect (c);

  /* A regular file is refused and left alone. */
  snprintf (p, sizeof p, "%s/file", dir);
  fd = open (p, O_WRONLY | O_CREAT | O_EXCL, 0644);
  CHECK (fd >= 0 && write (fd, "keep", 4) == 4 && close (fd) == 0);
  clear_last_error ();
  CHECK (start (p) == NULL);
  CHECK_ERROR_MENTIONS (p);
  CHECK_ERROR_MENTIONS ("not a socket");
  fd = open (p, O_RDONLY);
  CHECK (fd >= 0 && read (fd, text, sizeof text) == 4 && close (fd) == 0);
  CHECK (memcmp (text, "keep", 4) == 0);
  CHECK (unlink (p) == 0);

  /* A stale socket (nobody listening) is replaced. */
  snprintf (p, sizeof p, "%s/stale", dir);
  fd = socket (AF_UNIX, SOCK_STREAM, 0);
  strcpy (addr.sun_path, p);
  CHECK (fd >= 0 && bind (fd, (struct sockaddr *) &addr, sizeof addr) == 0);
  CHECK (close (fd) == 0);
  CHECK (is_socket (p));
  srv = start (p);
  CHECK (srv != NULL);
  CHECK (lstat (p, &st) == 0 && (st.st_mode & 07777) == 0600);
  c = client (p);
  echo_roundtrip (c, 1);
  qmp_server_stop (srv);
  expect_eof (c);
  disconnect (c);
  CHECK (access (p, F_OK) == -1 && errno == ENOENT);

  /* Replaced behind our back: stop leaves the newcomer alone. */
  srv = start (p);
  CHECK (srv != NULL);
  CHECK (unlink (p) == 0);
  fd = open (p, O_WRONLY | O_CREAT | O_EXCL, 0644);
  CHECK (fd >= 0 && close (fd) == 0);
  qmp_server_stop (srv);
  CHECK (access (p, F_OK) == 0);
  CHECK (unlink (p) == 0);

  /* Too long for sun_path: refused, naming the limit. */
  memset (longpath, 'x', sizeof addr.sun_path + 5);
  memcpy (longpath, dir, strlen (dir));
  longpath[strlen (dir)] = '/';
  longpath[sizeof addr.sun_path] = '\0';        /* one byte too many */
  clear_last_error ();
  CHECK (start (longpath) == NULL);
  CHECK_ERROR_MENTIONS ("107");
  CHECK (access (longpath, F_OK) == -1);

  /* The longest path that fits works, although the private directory
   * beside it would not fit in sun_path.
   */
  memcpy (longdir, longpath, sizeof addr.sun_path - 3);
  longdir[sizeof addr.sun_path - 3] = '\0';
  CHECK (mkdir (longdir, 0700) == 0);
  snprintf (longpath, sizeof longpath, "%s/s", longdir);
  CHECK (strlen (longpath) == sizeof addr.sun_path - 1);
  srv = start (longpath);
  CHECK (srv != NULL);
  CHECK (lstat (longpath, &st) == 0 && S_ISSOCK (st.st_mode) &&
         (st.st_mode & 07777) == 0600);
  c = client (longpath);
  echo_roundtrip (c, 1);
  disconnect (c);
  srv2 = start (longpath);                     /* and it's live */
  CHECK (srv2 == NULL);
  qmp_server_stop (srv);
  CHECK (access (longpath, F_OK) == -1);
  CHECK (rmdir (longdir) == 0);

  /* A relative path: the private directory is made in ".". */
  {
    char cwd[4096];

    CHECK (getcwd (cwd, sizeof cwd) != NULL);
    CHECK (chdir (dir) == 0);
    srv = start ("rel.sock");
    CHECK (srv != NULL);
    CHECK (is_socket ("rel.sock"));
    check_dir_clean ();
    c = client ("rel.sock");
    echo_roundtrip (c, 1);
    disconnect (c);
    qmp_server_stop (srv);
    CHECK (access ("rel.sock", F_OK) == -1);
    CHECK (chdir (cwd) == 0);
  }

  /* No such directory. */
  snprintf (p, sizeof p, "%s/nonexistent/s", dir);
  clear_last_error ();
  CHECK (start (p) == NULL);
  CHECK_ERROR_MENTIONS (p);

  check_dir_clean ();
}

/* The socket file's functions on their own. */
static void
test_socket_functions (void)
{
  char p[300], longpath[200];
  struct stat st;
  dev_t dev;
  ino_t ino;
  int fd;

  clear_last_error ();
  CHECK (qmp_socket_check_path (NULL) == -1);
  CHECK_ERROR_MENTIONS ("empty");
  CHECK (qmp_socket_check_path ("") == -1);
  memset (longpath, 'x', sizeof longpath - 1);
  longpath[sizeof longpath - 1] = '\0';
  clear_last_error ();
  CHECK (qmp_socket_check_path (longpath) == -1);
  CHECK_ERROR_MENTIONS ("choose a shorter path");
  CHECK (qmp_socket_check_path ("s") == 0);

  snprintf (p, sizeof p, "%s/direct", dir);
  fd = qmp_socket_create (p, &dev, &ino);
  CHECK (fd >= 0);
  CHECK (lstat (p, &st) == 0 && S_ISSOCK (st.st_mode) &&
         (st.st_mode & 07777) == 0600);
  CHECK (st.st_dev == dev && st.st_ino == ino);
  CHECK ((fcntl (fd, F_GETFL) & O_NONBLOCK) != 0);
  CHECK ((fcntl (fd, F_GETFD) & FD_CLOEXEC) != 0);
  clear_last_error ();
  CHECK (qmp_socket_create (p, &dev, &ino) == -1);       /* it listens */
  CHECK_ERROR_MENTIONS ("listening");
  CHECK (st.st_dev == dev && st.st_ino == ino);
  qmp_socket_remove (p, dev, ino + 1);                   /* not ours */
  CHECK (is_socket (p));
  qmp_socket_remove (p, dev, ino);
  CHECK (access (p, F_OK) == -1 && errno == ENOENT);
  CHECK (close (fd) == 0);
  check_dir_clean ();
}

/* REPLY (consumed) is exactly {"error": {"class": CLASS, "desc": DESC}}. */
static void
check_error_reply (struct json_object *reply, const char *class,
                   const char *desc)
{
  char expected[512];
  const char *got;

  snprintf (expected, sizeof expected,
            "{\"error\":{\"class\":\"%s\",\"desc\":\"%s\"}}", class, desc);
  CHECK (reply != NULL);
  got = json_object_to_json_string_ext (reply, JSON_C_TO_STRING_PLAIN);
  if (strcmp (got, expected) != 0) {
    fprintf (stderr, "got      %s\nexpected %s\n", got, expected);
    CHECK (false);
  }
  json_object_put (reply);
}

/* Dispatch NAME with ARGS (JSON text) to no tracker: only replies that
 * come before the tracker is asked anything can be checked.
 */
static struct json_object *
dispatch_text (const char *name, const char *args)
{
  struct json_object *a = json_tokener_parse (args), *reply;

  CHECK (a != NULL);
  reply = qmp_commands_dispatch (NULL, name, a);
  json_object_put (a);
  return reply;
}

/* Every command in the table is dispatched (not CommandNotFound) and
 * refuses a key it does not know, alone and as a transaction action.
 */
static void
test_command_table (void)
{
  const char *name;
  char args[512], desc[256];
  size_t i, j;

  for (i = 0; (name = qmp_commands_name (i)) != NULL; i++) {
    for (j = 0; j < i; j++)
      CHECK (strcmp (qmp_commands_name (j), name) != 0);
    check_error_reply (dispatch_text (name, "{\"no-such-key\":1}"),
                       "GenericError", "unexpected argument 'no-such-key'");

    snprintf (args, sizeof args, "{\"actions\":[{\"type\":\"%s\","
              "\"data\":{\"no-such-key\":1}}]}", name);
    if (strncmp (name, "block-dirty-bitmap-", 19) == 0 ||
        strncmp (name, "x-dirtybitmap-view-", 19) == 0)
      snprintf (desc, sizeof desc, "unexpected argument 'no-such-key'");
    else
      snprintf (desc, sizeof desc,
                "action type '%s' is not a bitmap command", name);
    check_error_reply (dispatch_text ("transaction", args),
                       "GenericError", desc);
  }
  CHECK (i >= 10);

  /* Keys the table lists get past the check. */
  check_error_reply (dispatch_text ("block-dirty-bitmap-add",
                                    "{\"granularity\":512,\"persistent\":true,"
                                    "\"disabled\":false}"),
                     "GenericError", "missing argument 'name'");
  check_error_reply (dispatch_text ("block-dirty-bitmap-merge",
                                    "{\"bitmaps\":[]}"),
                     "GenericError", "missing argument 'target'");
  check_error_reply (dispatch_text ("x-dirtybitmap-extents",
                                    "{\"offset\":0,\"length\":1}"),
                     "GenericError", "missing argument 'name'");
  check_error_reply (dispatch_text ("transaction",
                                    "{\"properties\":{}}"),
                     "GenericError", "missing argument 'actions'");
  check_error_reply (dispatch_text ("transaction",
                                    "{\"actions\":[{\"type\":"
                                    "\"block-dirty-bitmap-clear\","
                                    "\"data\":{}}]}"),
                     "GenericError", "missing argument 'name'");

  check_error_reply (dispatch_text ("nonesuch", "{}"),
                     "CommandNotFound", "no command named nonesuch");
  check_error_reply (dispatch_text ("qmp_capabilities", "{}"),
                     "CommandNotFound", "no command named qmp_capabilities");
}

/* REPLY (consumed) is exactly the JSON text EXPECTED, as sent. */
static void
check_reply_text (struct json_object *reply, const char *expected)
{
  const char *got;

  CHECK (reply != NULL);
  got = json_object_to_json_string_ext (reply, QMP_PRINT_FLAGS);
  if (strcmp (got, expected) != 0) {
    fprintf (stderr, "got      %s\nexpected %s\n", got, expected);
    CHECK (false);
  }
  json_object_put (reply);
}

/* The reply to request TEXT, read as the server reads it. */
static struct json_object *
reply_to_text (const char *text, bool negotiated, struct tracker *t)
{
  struct json_tokener *tok = json_tokener_new ();
  struct json_object *req, *reply;

  CHECK (tok != NULL);
  json_tokener_set_flags (tok, QMP_TOKENER_FLAGS);
  req = json_tokener_parse_ex (tok, text, strlen (text));
  CHECK (json_tokener_get_error (tok) == json_tokener_success);
  json_tokener_free (tok);
  reply = qmp_reply_to (req, 0, &negotiated, qmp_commands_dispatch, t);
  json_object_put (req);
  return reply;
}

#define NOT_UTF8 "{\"error\":{\"class\":\"GenericError\",\"desc\":" \
  "\"JSON parse error, invalid UTF-8 in a string (an overlong form, a " \
  "surrogate or a code point past U+10FFFF)\"}"

/* json-c's UTF-8 check lets overlong forms, surrogates and code points
 * past U+10FFFF through: such requests are refused, and never echoed.
 */
static void
test_utf8_requests (void)
{
  char text[128], expected[256], x62[63];

  check_reply_text (reply_to_text ("{\"execute\":\"block-dirty-bitmap-add\","
                                   "\"arguments\":{\"name\":\"\xc0\xaf\"}}",
                                   true, NULL), NOT_UTF8 "}");
  check_reply_text (reply_to_text ("{\"execute\":\"query-dirty-bitmaps\","
                                   "\"id\":\"\xed\xa0\x80\"}", true, NULL),
                    NOT_UTF8 "}");
  check_reply_text (reply_to_text ("{\"execute\":\"x-dirtybitmap-extents\","
                                   "\"arguments\":{\"\xf4\x90\x80\x80\":1},"
                                   "\"id\":[7]}", true, NULL),
                    NOT_UTF8 ",\"id\":[7]}");
  check_reply_text (reply_to_text ("{\"execute\":\"\xe0\x80\x80\"}", false,
                                   NULL), NOT_UTF8 "}");
  /* U+0000 would cut a name short: "pristine\u0000x" is not
   * "pristine", so it is refused, as QEMU refuses it.
   */
  check_reply_text (reply_to_text ("{\"execute\":\"block-dirty-bitmap-remove\","
                                   "\"arguments\":{\"name\":"
                                   "\"pristine\\u0000x\"}}", true, NULL),
                    "{\"error\":{\"class\":\"GenericError\",\"desc\":"
                    "\"JSON parse error, \\\\u0000 is not supported in a "
                    "string\"}}");

  /* An error quoting 64 bytes of a client's text that end inside a
   * character: the cut bytes are escaped.
   */
  memset (x62, 'x', 62);
  x62[62] = '\0';
  snprintf (text, sizeof text, "{\"execute\":\"qmp_capabilities\","
            "\"arguments\":{\"enable\":[\"%s\xe2\x82\xac\"]}}", x62);
  snprintf (expected, sizeof expected, "{\"error\":{\"class\":"
            "\"GenericError\",\"desc\":\"qmp_capabilities: capability "
            "'%s\\\\xe2\\\\x82' is not offered by this server (the greeting "
            "lists none)\"}}", x62);
  check_reply_text (reply_to_text (text, false, NULL), expected);
  check_reply_text (qmp_error (QMP_ERROR_GENERIC, "no bitmap named '%s'",
                               "bad\xff"),
                    "{\"error\":{\"class\":\"GenericError\",\"desc\":"
                    "\"no bitmap named 'bad\\\\xff'\"}}");
}

/* A sidecar written by another program may name a bitmap with any
 * bytes: it loads, and is listed with the bytes that are not UTF-8
 * escaped.  A name that is not UTF-8 is never added.
 */
static void
test_utf8_sidecar (void)
{
  char sidecar_path[300];
  struct tracker_config cfg;
  struct tracker *t;
  struct sidecar *sc;
  struct json_object *args;

  snprintf (sidecar_path, sizeof sidecar_path, "%s/sidecar.qcow2", dir);
  CHECK (sidecar_create (sidecar_path, 1 << 20) == 0);
  sc = sidecar_open (sidecar_path, SIDECAR_WRITABLE);
  CHECK (sc != NULL);
  CHECK (sidecar_add_bitmap (sc, "bad\xff\xc3(", 16) != NULL);
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);

  tracker_config_init (&cfg);
  cfg.allow_no_bitmaps = true;
  CHECK (tracker_config_set_sidecar (&cfg, sidecar_path) == 0);
  t = tracker_new (&cfg);
  CHECK (t != NULL);
  CHECK (tracker_start (t, 1 << 20) == 0);
  check_reply_text (reply_to_text ("{\"execute\":\"query-dirty-bitmaps\"}",
                                   true, t),
                    "{\"return\":[{\"name\":\"bad\\\\xff\\\\xc3(\","
                    "\"granularity\":65536,\"recording\":true,"
                    "\"persistent\":true,\"inconsistent\":false,"
                    "\"busy\":false,\"count\":0}]}");
  /* Past the protocol's check, the tracker refuses it too. */
  args = json_tokener_parse ("{}");
  CHECK (args != NULL);
  json_object_object_add (args, "name", json_object_new_string ("\xc0\xaf"));
  check_error_reply (qmp_commands_dispatch (t, "block-dirty-bitmap-add", args),
                     "GenericError", "Bitmap name must be valid UTF-8");
  json_object_put (args);
  CHECK (tracker_stop (t) == 0);
  tracker_free (t);
  tracker_config_free (&cfg);
  CHECK (unlink (sidecar_path) == 0);
}

int
main (void)
{
  struct qmp_server *srv;
  struct timespec t0, t1;

  main_thread = pthread_self ();
  clock_gettime (CLOCK_MONOTONIC, &t0);
  umask (0);                    /* the socket is 0600 all the same */
  CHECK (mkdtemp (dir) != NULL);
  snprintf (path, sizeof path, "%s/qmp.sock", dir);

  srv = start (path);
  CHECK (srv != NULL);
  test_negotiation ();
  test_replies ();
  test_oversized ();
  test_interleaved ();
  test_not_reading ();
  test_socket_file ();
  test_socket_functions ();
  check_dir_clean ();
  qmp_server_stop (srv);
  CHECK (access (path, F_OK) == -1 && errno == ENOENT);
  qmp_server_stop (NULL);

  test_too_many ();
  test_command_table ();
  test_utf8_requests ();
  test_utf8_sidecar ();

  CHECK (rmdir (dir) == 0);
  clock_gettime (CLOCK_MONOTONIC, &t1);
  printf ("test-qmp-server: ok (%.2f s)\n",
          (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
  return 0;
}
