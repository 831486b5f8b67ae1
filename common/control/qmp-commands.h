/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The control socket's commands, with QMP's names, arguments and
 * defaults, over the tracker's checkpoint calls.
 */
#ifndef DIRTYBITMAP_QMP_COMMANDS_H
#define DIRTYBITMAP_QMP_COMMANDS_H

#include <stddef.h>

#include "qmp-protocol.h"

/* Most extents one x-dirtybitmap-extents reply holds. */
#define QMP_EXTENTS_PER_PAGE 1024

/* The dispatcher for qmp_server_start; OPAQUE is the struct tracker. */
extern qmp_dispatch_fn qmp_commands_dispatch;

/* The name of the Ith command of the table, NULL past the last one. */
extern const char *qmp_commands_name (size_t i);

#endif /* DIRTYBITMAP_QMP_COMMANDS_H */
