/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Publishing the control socket's file: a listening Unix socket put in
 * place at a path in one step, and removed only if it is still ours.
 */
#ifndef DIRTYBITMAP_QMP_SOCKET_H
#define DIRTYBITMAP_QMP_SOCKET_H

#include <sys/types.h>

/* Whether PATH can name a Unix socket at all (not empty, short enough
 * for sun_path): 0, or -1 after nbdkit_error.
 */
extern int qmp_socket_check_path (const char *path);

/* Create a listening socket (non-blocking, close-on-exec, mode 0600)
 * at PATH: an existing socket that nobody listens on is replaced,
 * anything else is refused.  Returns its descriptor with *DEV and
 * *INO identifying the file, or -1 after nbdkit_error.
 */
extern int qmp_socket_create (const char *path, dev_t *dev, ino_t *ino);

/* Remove the socket file at PATH, unless it is no longer the one DEV
 * and INO identify (somebody replaced it since).
 */
extern void qmp_socket_remove (const char *path, dev_t dev, ino_t ino);

#endif /* DIRTYBITMAP_QMP_SOCKET_H */
