/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The scratch file: see scratch.h. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "checked-io.h"
#include "scratch.h"

struct scratch {
  int fd;
  char *path;                   /* the directory, for messages */
  char *name;                   /* the view's */
  struct scratch_budget *budget;
  uint64_t bytes;               /* stored in this file (atomic) */
};

/* An unlinked file in DIR: O_TMPFILE where the file system has it,
 * else a named file unlinked at once.
 */
static int
open_unlinked (const char *dir)
{
  char *tmpl;
  int fd;

#ifdef O_TMPFILE
  fd = open (dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0)
    return fd;
#endif
  if (asprintf (&tmpl, "%s/.dirtybitmap-view-XXXXXX", dir) == -1)
    return -1;
  fd = mkostemp (tmpl, O_CLOEXEC);
  if (fd >= 0)
    unlink (tmpl);
  free (tmpl);
  return fd;
}

struct scratch *
scratch_new (const char *dir, const char *name, struct scratch_budget *budget)
{
  struct scratch *s = calloc (1, sizeof *s);

  if (s == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  s->budget = budget;
  s->path = strdup (dir);
  s->name = strdup (name);
  s->fd = -1;
  if (s->path == NULL || s->name == NULL) {
    nbdkit_error ("strdup: %m");
    goto err;
  }
  s->fd = open_unlinked (dir);
  if (s->fd == -1) {
    nbdkit_error ("view '%s': cannot create a scratch file in %s: %s "
                  "(choose another directory with "
                  "dirtybitmap-view-scratch=)", name, dir,
                  error_text (errno));
    goto err;
  }
  return s;

 err:
  free (s->path);
  free (s->name);
  free (s);
  return NULL;
}

void
scratch_free (struct scratch *s)
{
  if (s == NULL)
    return;
  scratch_release_all (s);
  close (s->fd);
  free (s->path);
  free (s->name);
  free (s);
}

/* Count LEN more bytes against the budget, unless that passes its
 * limit.
 */
static bool
reserve (struct scratch_budget *b, uint64_t len)
{
  uint64_t used = __atomic_load_n (&b->used, __ATOMIC_RELAXED);

  do {
    if (b->limit && (used + len > b->limit || used + len < used))
      return false;
  } while (!__atomic_compare_exchange_n (&b->used, &used, used + len, true,
                                         __ATOMIC_RELAXED,
                                         __ATOMIC_RELAXED));
  return true;
}

static void
uncount (struct scratch *s, uint64_t len)
{
  __atomic_sub_fetch (&s->budget->used, len, __ATOMIC_RELAXED);
  __atomic_sub_fetch (&s->bytes, len, __ATOMIC_RELAXED);
}

int
scratch_store (struct scratch *s, uint64_t offset, const void *buf,
               size_t len)
{
  if (!reserve (s->budget, len)) {
    nbdkit_error ("view '%s': the scratch space would pass its limit of "
                  "%" PRIu64 " bytes (dirtybitmap-view-scratch-limit=); "
                  "trim what the backup has read, or remove views",
                  s->name, s->budget->limit);
    return ENOSPC;
  }
  __atomic_add_fetch (&s->bytes, len, __ATOMIC_RELAXED);
  if (write_fully (s->fd, s->path, "a view's scratch file", buf, len,
                   offset) == -1) {
    uncount (s, len);
    return EIO;
  }
  return 0;
}

int
scratch_load (struct scratch *s, uint64_t offset, void *buf, size_t len)
{
  if (read_fully (s->fd, s->path, "a view's scratch file", buf, len,
                  offset) == -1)
    return EIO;
  return 0;
}

static void
punch (struct scratch *s, uint64_t offset, uint64_t len)
{
  if (fallocate (s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 offset, len) == -1)
    nbdkit_debug ("dirtybitmap: view '%s': cannot punch a hole in the "
                  "scratch file (%s): its space stays until the view is "
                  "removed", s->name, error_text (errno));
}

void
scratch_release (struct scratch *s, uint64_t offset, uint64_t len)
{
  if (len == 0)
    return;
  punch (s, offset, len);
  uncount (s, len);
}

void
scratch_release_all (struct scratch *s)
{
  uint64_t bytes = __atomic_load_n (&s->bytes, __ATOMIC_RELAXED);

  if (ftruncate (s->fd, 0) == -1)
    nbdkit_debug ("dirtybitmap: view '%s': cannot empty the scratch file "
                  "(%s)", s->name, error_text (errno));
  uncount (s, bytes);
}

uint64_t
scratch_bytes (const struct scratch *s)
{
  return __atomic_load_n (&s->bytes, __ATOMIC_RELAXED);
}
