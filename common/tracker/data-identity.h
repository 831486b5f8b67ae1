/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The identity of the data the bitmaps describe: taken where the
 * filter leaves the data (a clean stop, the start of a session), and
 * compared at the next start, so that writes that bypassed the filter
 * make the bitmaps untrusted instead of silently incomplete.
 */
#ifndef DIRTYBITMAP_DATA_IDENTITY_H
#define DIRTYBITMAP_DATA_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qcow2-format.h"
#include "sidecar.h"
#include "tracker.h"

/* Room for any message these functions write. */
#define DATA_IDENTITY_MESSAGE_MAX 1024

/* The identity the configuration names: the data file or device
 * (dirtybitmap-data=, or the one file= that passed by), else the
 * token (dirtybitmap-data-id=).  Returns 1 with *OUT filled, 0 if the
 * configuration names none, -1 if it cannot be taken now (WHY says
 * why; not logged as an error).
 */
extern int data_identity_take (const struct tracker_config *cfg,
                               struct qcow2_identity_ext *out,
                               char why[DATA_IDENTITY_MESSAGE_MAX]);

/* Whether the configuration names anything that identifies the data. */
extern bool data_identity_configured (const struct tracker_config *cfg);

/* Whether NOW is explained by RECORDED (NOW NULL: none could be taken,
 * for WHY_NONE): equal to a record of a clean stop; for a record taken
 * when a session began (a crash since), the same data that only the
 * filter's writes can have changed.  Returns NULL if explained, else
 * EVIDENCE, filled with which field changed, its old and new value.
 */
extern const char *data_identity_compare
  (const struct qcow2_identity_ext *recorded,
   const struct qcow2_identity_ext *now, const char *why_none,
   char evidence[DATA_IDENTITY_MESSAGE_MAX]);

/* At open: take the identity, compare it with the sidecar's record,
 * and if the data may have been written without the filter, distrust
 * every bitmap.  -1 only if memory ran out.
 */
extern int data_identity_check (const struct tracker_config *cfg,
                                struct sidecar *sc);

/* Take the identity now and make it, with FLAGS, the record the next
 * commit of SC writes.  If none can be taken the record stays as it
 * is (with a warning), or, at the start of a session (FLAGS has
 * QCOW2_IDENTITY_SESSION and REPLACE is true), is removed.  -1 only if
 * memory ran out.
 */
extern int data_identity_record (const struct tracker_config *cfg,
                                 struct sidecar *sc, uint32_t flags,
                                 bool replace);

/* Parsers of what Linux offers, exposed for the unit test: the
 * counters of a /sys/dev/block/MAJ:MIN/stat line (write I/Os, write
 * sectors, discard I/Os, discard sectors; the discard ones 0 on
 * kernels without them), and a boot id's text.  0 or -1.
 */
extern int data_identity_parse_block_stat
  (const char *text, uint64_t counters[QCOW2_IDENTITY_COUNTERS]);
extern int data_identity_parse_boot_id (const char *text, uint8_t id[16]);

#endif /* DIRTYBITMAP_DATA_IDENTITY_H */
