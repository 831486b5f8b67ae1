/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "checked-io.h"

/* The message for ERR, untranslated: translating takes glibc's locale
 * lock, which these errors, raised in nbdkit's worker threads, had
 * better not depend on (under ASan it was once found miscounted by
 * library start-up, and nbdkit hung at exit).
 */
const char *
error_text (int err)
{
  const char *text = strerrordesc_np (err);

  return text ? text : "unknown error";
}

int
read_fully (int fd, const char *path, const char *what,
            void *buf, size_t len, uint64_t offset)
{
  char *p = buf;

  while (len > 0) {
    ssize_t r = pread (fd, p, len, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("%s: reading %s at offset %" PRIu64 ": %s",
                    path, what, offset, error_text (errno));
      return -1;
    }
    if (r == 0) {
      nbdkit_error ("%s: %s at offset %" PRIu64 " runs past the end of "
                    "the file (truncated sidecar?)", path, what, offset);
      return -1;
    }
    p += r;
    len -= r;
    offset += r;
  }
  return 0;
}

int
write_fully (int fd, const char *path, const char *what,
             const void *buf, size_t len, uint64_t offset)
{
  const char *p = buf;

  while (len > 0) {
    ssize_t r = pwrite (fd, p, len, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("%s: writing %s at offset %" PRIu64 ": %s",
                    path, what, offset, error_text (errno));
      return -1;
    }
    p += r;
    len -= r;
    offset += r;
  }
  return 0;
}

int
sync_data (int fd, const char *path, const char *what)
{
  if (fdatasync (fd) == -1) {
    nbdkit_error ("%s: flushing %s to stable storage: %s", path, what,
                  error_text (errno));
    return -1;
  }
  return 0;
}
