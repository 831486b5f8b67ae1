/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Publishing the control socket's file: see qmp-socket.h.
 *
 * The socket is bound inside a fresh directory of our own (mkdtemp:
 * mode 0700) next to PATH, chmod'ed 0600 and made to listen there,
 * then renamed onto PATH.  Nobody can connect before the mode is 0600,
 * umask (process-wide) is never touched, and PATH goes in one step
 * from absent or stale to a listening socket.  When the directory's
 * path is too long for sun_path although PATH is not, the bind goes
 * through /proc/self/fd/N/ instead.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <nbdkit-filter.h>

#include "checked-io.h"
#include "qmp-socket.h"

/* Where the socket is made before it is moved into place. */
struct private_dir {
  char *dir;                    /* mkdtemp'ed, or NULL */
  int dirfd;                    /* when sun_path goes through /proc */
  struct sockaddr_un addr;      /* the socket inside DIR */
  bool bound;                   /* the socket file exists in DIR */
};

int
qmp_socket_check_path (const char *path)
{
  struct sockaddr_un addr;

  if (path == NULL || path[0] == '\0') {
    nbdkit_error ("control socket: the path is empty");
    return -1;
  }
  if (strlen (path) >= sizeof addr.sun_path) {
    nbdkit_error ("control socket %s: the path is %zu bytes long, Unix "
                  "sockets allow at most %zu: choose a shorter path",
                  path, strlen (path), sizeof addr.sun_path - 1);
    return -1;
  }
  return 0;
}

/* Whether PATH can be taken: 0 if absent (*REPLACE false) or a stale
 * socket (*REPLACE true), -1 after nbdkit_error otherwise.
 */
static int
check_existing (const char *path, bool *replace)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  struct stat st;
  int fd, r, err;

  *replace = false;
  if (lstat (path, &st) == -1) {
    if (errno == ENOENT)
      return 0;
    nbdkit_error ("control socket %s: %s", path, error_text (errno));
    return -1;
  }
  if (!S_ISSOCK (st.st_mode)) {
    nbdkit_error ("control socket %s: the path exists and is not a socket: "
                  "remove it or choose another path", path);
    return -1;
  }

  /* A socket: is anybody listening?  Non-blocking so that a listener
   * whose backlog is full answers EAGAIN instead of stalling us.
   */
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd == -1) {
    nbdkit_error ("control socket %s: socket: %s", path, error_text (errno));
    return -1;
  }
  strcpy (addr.sun_path, path);
  r = connect (fd, (struct sockaddr *) &addr, sizeof addr);
  err = errno;
  close (fd);
  if (r == -1 && err == ECONNREFUSED) {
    nbdkit_debug ("control: %s: replacing a stale socket", path);
    *replace = true;
    return 0;
  }
  if (r == 0 || err == EAGAIN || err == EINPROGRESS) {
    nbdkit_error ("control socket %s: another process is listening on it: "
                  "stop that process or choose another path", path);
    return -1;
  }
  nbdkit_error ("control socket %s: the path exists and checking whether "
                "it is in use failed: %s: remove it if it is stale, or "
                "choose another path", path, error_text (err));
  return -1;
}

/* Make PD's directory beside PATH and choose the address of the
 * socket inside it.
 */
static int
make_private_dir (const char *path, struct private_dir *pd)
{
  const char *slash = strrchr (path, '/');
  /* The directory PATH is in: PARENT_LEN bytes of PARENT ("" for the
   * root directory).
   */
  const char *parent = slash ? path : ".";
  int parent_len = slash ? (int) (slash - path) : 1;

  if (asprintf (&pd->dir, "%.*s/.qmp-XXXXXX", parent_len, parent) == -1) {
    pd->dir = NULL;
    nbdkit_error ("control socket %s: out of memory", path);
    return -1;
  }
  if (mkdtemp (pd->dir) == NULL) {
    nbdkit_error ("control socket %s: creating a private directory in "
                  "%.*s to make the socket in: %s", path,
                  parent_len ? parent_len : 1, parent_len ? parent : "/",
                  error_text (errno));
    free (pd->dir);
    pd->dir = NULL;
    return -1;
  }
  if (strlen (pd->dir) + 2 < sizeof pd->addr.sun_path) {
    snprintf (pd->addr.sun_path, sizeof pd->addr.sun_path, "%s/s", pd->dir);
    return 0;
  }
  pd->dirfd = open (pd->dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (pd->dirfd == -1) {
    nbdkit_error ("control socket %s: opening %s: %s",
                  path, pd->dir, error_text (errno));
    return -1;
  }
  snprintf (pd->addr.sun_path, sizeof pd->addr.sun_path,
            "/proc/self/fd/%d/s", pd->dirfd);
  return 0;
}

/* A socket listening in PD, mode 0600, with its file's identity in
 * *ST; or -1 after nbdkit_error.
 */
static int
listen_in_private_dir (const char *path, struct private_dir *pd,
                       struct stat *st)
{
  int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

  if (fd == -1) {
    nbdkit_error ("control socket %s: socket: %s", path, error_text (errno));
    return -1;
  }
  if (bind (fd, (struct sockaddr *) &pd->addr, sizeof pd->addr) == -1) {
    nbdkit_error ("control socket %s: binding in %s: %s",
                  path, pd->dir, error_text (errno));
    goto err;
  }
  pd->bound = true;
  if (chmod (pd->addr.sun_path, 0600) == -1 ||
      lstat (pd->addr.sun_path, st) == -1) {
    nbdkit_error ("control socket %s: setting its mode to 0600: %s",
                  path, error_text (errno));
    goto err;
  }
  if (listen (fd, SOMAXCONN) == -1) {
    nbdkit_error ("control socket %s: listen: %s", path, error_text (errno));
    goto err;
  }
  return fd;

 err:
  close (fd);
  return -1;
}

/* Rename the socket in PD onto PATH: over a stale socket if REPLACE,
 * else only if PATH is still absent.
 */
static int
move_into_place (const char *path, struct private_dir *pd, bool replace)
{
  int r;

  if (replace)
    r = rename (pd->addr.sun_path, path);
  else {
    r = renameat2 (AT_FDCWD, pd->addr.sun_path, AT_FDCWD, path,
                   RENAME_NOREPLACE);
    if (r == -1 && (errno == EINVAL || errno == ENOSYS ||
                    errno == EOPNOTSUPP)) {
      /* No RENAME_NOREPLACE on this file system: check, then rename. */
      struct stat st;

      if (lstat (path, &st) == 0)
        errno = EEXIST;
      else
        r = rename (pd->addr.sun_path, path);
    }
  }
  if (r == -1) {
    if (errno == EEXIST)
      nbdkit_error ("control socket %s: the path appeared while the socket "
                    "was being created: remove it or choose another path",
                    path);
    else
      nbdkit_error ("control socket %s: moving the socket there from %s: %s",
                    path, pd->dir, error_text (errno));
    return -1;
  }
  pd->bound = false;            /* nothing left in the directory */
  return 0;
}

/* Remove PD, and the socket in it if it is still there. */
static void
remove_private_dir (struct private_dir *pd)
{
  if (pd->bound)
    unlink (pd->addr.sun_path);
  if (pd->dir)
    rmdir (pd->dir);
  if (pd->dirfd >= 0)
    close (pd->dirfd);
  free (pd->dir);
}

int
qmp_socket_create (const char *path, dev_t *dev, ino_t *ino)
{
  struct private_dir pd = { .dirfd = -1,
                            .addr = { .sun_family = AF_UNIX } };
  struct stat st;
  bool replace;
  int fd = -1;

  if (check_existing (path, &replace) == -1)
    return -1;
  if (make_private_dir (path, &pd) == 0) {
    fd = listen_in_private_dir (path, &pd, &st);
    if (fd >= 0 && move_into_place (path, &pd, replace) == -1) {
      close (fd);
      fd = -1;
    }
  }
  remove_private_dir (&pd);
  if (fd >= 0) {
    *dev = st.st_dev;
    *ino = st.st_ino;
  }
  return fd;
}

void
qmp_socket_remove (const char *path, dev_t dev, ino_t ino)
{
  struct stat st;

  if (lstat (path, &st) == 0 && S_ISSOCK (st.st_mode) &&
      st.st_dev == dev && st.st_ino == ino)
    unlink (path);
  else
    nbdkit_debug ("control: %s is no longer our socket: left alone", path);
}
