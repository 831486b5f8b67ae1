/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "qemu-lock.h"

enum {
  PERM_CONSISTENT_READ = 0,
  PERM_WRITE = 1,
  PERM_RESIZE = 3,
};
#define HELD_BASE     100
#define UNSHARED_BASE 200

static int
ofd_lock (int fd, int cmd, short type, off_t byte, struct flock *fl)
{
  memset (fl, 0, sizeof *fl);
  fl->l_type = type;
  fl->l_whence = SEEK_SET;
  fl->l_start = byte;
  fl->l_len = 1;
  return fcntl (fd, cmd, fl);
}

/* Is BYTE locked by another open file description than FD's?  A write
 * lock probe conflicts with any lock another description holds.
 */
static int
locked_elsewhere (int fd, const char *path, off_t byte, bool *locked)
{
  struct flock fl;

  if (ofd_lock (fd, F_OFD_GETLK, F_WRLCK, byte, &fl) == -1) {
    nbdkit_error ("%s: probing QEMU's lock byte %lld: %m", path,
                  (long long) byte);
    return -1;
  }
  *locked = fl.l_type != F_UNLCK;
  return 0;
}

int
qemu_lock_image (int fd, const char *path, bool writable)
{
  /* Bytes whose lock by anybody else means we must not open. */
  const off_t conflicts_rw[] = {
    HELD_BASE + PERM_WRITE,              /* someone writes it */
    HELD_BASE + PERM_RESIZE,             /* someone resizes it */
    UNSHARED_BASE + PERM_WRITE,          /* someone forbids writers */
    UNSHARED_BASE + PERM_RESIZE,
    UNSHARED_BASE + PERM_CONSISTENT_READ,
  };
  const off_t conflicts_ro[] = {
    HELD_BASE + PERM_WRITE,
    UNSHARED_BASE + PERM_CONSISTENT_READ,
  };
  const off_t take_rw[] = {
    HELD_BASE + PERM_CONSISTENT_READ, HELD_BASE + PERM_WRITE,
    HELD_BASE + PERM_RESIZE,
    UNSHARED_BASE + PERM_WRITE, UNSHARED_BASE + PERM_RESIZE,
  };
  const off_t take_ro[] = {
    HELD_BASE + PERM_CONSISTENT_READ, UNSHARED_BASE + PERM_WRITE,
  };
  const off_t *conflicts = writable ? conflicts_rw : conflicts_ro;
  size_t nr_conflicts = writable ? sizeof conflicts_rw / sizeof (off_t)
                                 : sizeof conflicts_ro / sizeof (off_t);
  const off_t *take = writable ? take_rw : take_ro;
  size_t nr_take = writable ? sizeof take_rw / sizeof (off_t)
                            : sizeof take_ro / sizeof (off_t);
  size_t i;

  for (i = 0; i < nr_conflicts; ++i) {
    bool locked;

    if (locked_elsewhere (fd, path, conflicts[i], &locked) == -1)
      return -1;
    if (locked) {
      nbdkit_error ("%s: the sidecar is in use by another program (a QEMU "
                    "process, qemu-img, qemu-nbd or another nbdkit) that "
                    "%s it (lock byte %lld is held); stop that program "
                    "first", path,
                    conflicts[i] == HELD_BASE + PERM_WRITE ? "writes to"
                    : "does not share", (long long) conflicts[i]);
      return -1;
    }
  }
  for (i = 0; i < nr_take; ++i) {
    struct flock fl;

    if (ofd_lock (fd, F_OFD_SETLK, F_RDLCK, take[i], &fl) == -1) {
      if (errno == EAGAIN || errno == EACCES)
        nbdkit_error ("%s: the sidecar was locked by another program just "
                      "now (lock byte %lld); stop it and retry", path,
                      (long long) take[i]);
      else
        nbdkit_error ("%s: taking QEMU's lock byte %lld: %m", path,
                      (long long) take[i]);
      return -1;
    }
  }
  return 0;
}

void
qemu_unlock_image (int fd)
{
  struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET };

  /* l_start 0 and l_len 0: the whole file. */
  if (fcntl (fd, F_OFD_SETLK, &fl) == -1)
    nbdkit_debug ("releasing QEMU's lock bytes: %m");
}
