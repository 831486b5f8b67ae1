/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* A QMP-compatible control socket: QEMU's wire protocol (greeting,
 * capabilities negotiation, one JSON object per command, "return" or
 * "error" replies, "id" echoed: see qmp-protocol.h) on a Unix socket,
 * serving any number of clients at once from one thread.  What the
 * commands do is the dispatcher's business.
 */
#ifndef DIRTYBITMAP_QMP_SERVER_H
#define DIRTYBITMAP_QMP_SERVER_H

#include "qmp-protocol.h"

struct qmp_server;

/* Create SOCKET_PATH (mode 0600; an existing socket that nobody
 * listens on is replaced, anything else is refused) and start serving
 * from a new thread (start it after nbdkit forks into the background,
 * as threads do not survive fork).  VERSION (NULL for "") is the
 * greeting's "package".  A relative path is relative to the current
 * directory at start and at stop alike.  NULL after nbdkit_error.
 *
 * Per client: 1 MiB of input without a complete JSON object, or
 * 16 MiB of replies left unread, close the connection; at most 64
 * clients at once (more are sent an error line and closed).
 */
extern struct qmp_server *qmp_server_start (const char *socket_path,
                                            const char *version,
                                            qmp_dispatch_fn *dispatch,
                                            void *opaque);

/* Disconnect every client, stop the thread, remove the socket file
 * (unless it has been replaced by another since).  NULL does nothing.
 */
extern void qmp_server_stop (struct qmp_server *srv);

#endif /* DIRTYBITMAP_QMP_SERVER_H */
