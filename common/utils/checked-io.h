/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Whole-buffer pread/pwrite that retry short transfers and EINTR.
 *
 * A short read is reported as an error naming the file, because in a
 * sidecar it always means a structure runs past the end of the file.
 */
#ifndef DIRTYBITMAP_CHECKED_IO_H
#define DIRTYBITMAP_CHECKED_IO_H

#include <stddef.h>
#include <stdint.h>

/* Return 0 on success, -1 after nbdkit_error naming PATH and WHAT. */
extern int read_fully (int fd, const char *path, const char *what,
                       void *buf, size_t len, uint64_t offset);
extern int write_fully (int fd, const char *path, const char *what,
                        const void *buf, size_t len, uint64_t offset);
extern int sync_data (int fd, const char *path, const char *what);

/* The message for errno value ERR, untranslated: glibc's locale
 * machinery is best kept out of nbdkit's worker threads and ours.
 */
extern const char *error_text (int err);

#endif /* DIRTYBITMAP_CHECKED_IO_H */
