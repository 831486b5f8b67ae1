/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* QEMU-compatible image locking for the sidecar.
 *
 * QEMU advertises, with one-byte open-file-description read locks, the
 * permissions it holds (byte 100 + i) and those it refuses to share
 * (byte 200 + i), i being 0 consistent read, 1 write, 3 resize.  A
 * process that takes the same locks is seen by QEMU as one more user
 * of the image, so qemu-img, qemu-nbd and QEMU guests refuse to write
 * to the sidecar while the filter holds it, and the filter refuses to
 * open a sidecar that one of them is writing.  qemu-img info -U, which
 * takes no locks, keeps working.
 */
#ifndef DIRTYBITMAP_QEMU_LOCK_H
#define DIRTYBITMAP_QEMU_LOCK_H

#include <stdbool.h>

/* Check that no other process writes PATH (or, when WRITABLE, forbids
 * others to write it), then take the locks on FD: consistent read,
 * write and resize held and write and resize unshared when WRITABLE;
 * consistent read held and write unshared otherwise.  Returns -1 after
 * nbdkit_error naming the conflict and the remedy.
 */
extern int qemu_lock_image (int fd, const char *path, bool writable);

/* Drop the locks FD's open file description holds, before FD is
 * closed: a process forked since the locks were taken (nbdkit forks
 * after its start-up checks, into the background or to run a --run
 * command) shares the description, and would otherwise keep them.
 */
extern void qemu_unlock_image (int fd);

#endif /* DIRTYBITMAP_QEMU_LOCK_H */
