/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The tracker's state, shared by tracker.c (start, mark, stop) and
 * checkpoints.c (bitmaps managed while the export serves).
 */
#ifndef DIRTYBITMAP_TRACKER_INTERNAL_H
#define DIRTYBITMAP_TRACKER_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "dirtymap.h"
#include "journal.h"
#include "recorder.h"
#include "sidecar.h"
#include "tracker.h"

/* One bitmap of the tracker, persistent (kept in the sidecar) or in
 * memory only.  The list holds the persistent ones first, in the
 * sidecar's order, then the others in the order they were added.
 */
struct tracker_bitmap {
  char *name;
  unsigned granularity_bits;
  bool recording;               /* records writes */
  struct sidecar_bitmap *stored;  /* a persistent one's, else NULL */
  struct dirtymap *data;        /* the sidecar's for a persistent one;
                                   NULL if it is not consistent */
};

struct tracker {
  const struct tracker_config *cfg;
  pthread_mutex_t lock;         /* guards everything but the write path */
  char *exportname;             /* the claimed export, or NULL */
  bool started;                 /* read without the lock once set */
  bool warned_in_use;           /* in-use bitmaps reported already */
  bool failed;                  /* starting or storing failed */
  bool read_only;               /* the plugin cannot write: never start */
  uint64_t probed_size;         /* export size seen at start-up, or 0 */
  uint64_t export_size;
  struct sidecar *sidecar;
  struct sidecar *validated;    /* read-only, holding QEMU's read locks
                                   from start-up until tracking starts */
  struct recorder *recorder;    /* writes since the last fold */
  struct journal *journal;      /* durable marks, with crash safety */
  struct tracker_bitmap *bitmaps;
  size_t nr_bitmaps;
  struct views *views;          /* NULL: no views */
};

/* Decide which bitmaps record writes.  With ADD false nothing changes:
 * missing bitmaps are only checked against QEMU's limits.  Returns the
 * number recording, or -1.
 */
extern int tracker_select_bitmaps (struct tracker *t, struct sidecar *sc,
                                   bool add);

/* The flags to open the sidecar with, as the in-use policy needs. */
extern unsigned tracker_open_flags (const struct tracker_config *cfg);

/* Granularity (log2) of the durable marks for a disk of VIRTUAL_SIZE
 * bytes whose finest recording bitmap has granules of 1 << FINEST
 * bytes; 0 after nbdkit_error.
 */
extern unsigned tracker_journal_bits (const struct tracker_config *cfg,
                                      const char *path,
                                      uint64_t virtual_size, unsigned finest,
                                      unsigned cluster_bits);

/* The finest granularity the bitmaps recording at start-up need,
 * named ones not yet in the sidecar included.  0 after nbdkit_error.
 */
extern unsigned tracker_startup_finest_bits (const struct tracker_config *cfg,
                                             struct sidecar *sc);

/* startup.c: the sidecar SC against an export of EXPORT_SIZE bytes: 0
 * if its virtual size fits, 1 if it does not but
 * dirtybitmap-resize=adopt lets SC follow, -1 after nbdkit_error.
 * Called once everything else about SC has been checked, so the error
 * can say that only the size tells the two apart.  Adopt: SC follows
 * the export's new size (dirtybitmap-resize=adopt), with a warning.
 */
extern int tracker_check_size (const struct tracker_config *cfg,
                               const struct sidecar *sc,
                               uint64_t export_size);
extern int tracker_adopt_size (struct sidecar *sc, uint64_t export_size);

/* Start tracking with the lock held (tracker_start's work). */
extern int tracker_start_locked (struct tracker *t, uint64_t export_size);

/* The finest granularity (log2 of bytes) among the recording bitmaps
 * of the list and ALSO (that of bitmaps about to be created, 0 for
 * none), or OTHERWISE when there are none.
 */
extern unsigned tracker_finest_bits (const struct tracker_bitmap *bitmaps,
                                     size_t n, unsigned also,
                                     unsigned otherwise);

/* The finest granularity of the tracker's recording bitmaps, or the
 * default when none records.
 */
extern unsigned tracker_recording_bits (const struct tracker *t);

/* Free the names of a list, and the data of the bitmaps in memory
 * only (the sidecar owns the others').
 */
extern void tracker_free_bitmaps (struct tracker_bitmap *bitmaps, size_t n);

/* Fold what writes marked since the last fold into every recording
 * bitmap, and go on recording in granules of 1 << NEW_BITS bytes (the
 * finest of the bitmaps that record from now on).  Lock held.
 */
extern int tracker_fold_locked (struct tracker *t, unsigned new_bits);

/* Views in transactions (tracker-views.c).  Whether ACTIONS hold a
 * view action, which makes the transaction close the gate.
 */
extern bool tracker_has_view_actions (const struct tracker_action *actions,
                                      size_t n);

/* Stage view action A into *STAGE (made at the first one), with
 * BITMAP, the staged bitmap a view add names (NULL for none), as the
 * earlier actions leave it.  0, or -1 with *ERROR set.
 */
struct views_stage;
extern int tracker_stage_view (struct tracker *t, struct views_stage **stage,
                               const struct tracker_action *a,
                               const struct tracker_bitmap *bitmap,
                               char **error);

/* Open the gate closed for a transaction's instant. */
extern void tracker_open_gate (struct tracker *t);
/* The same, beginning a new journal epoch first (see journal.h): after
 * it, the writes the bitmaps do not hold are all in the epoch's marks,
 * so that once the bitmaps are stored the journal can be truncated to
 * them.  Lock held.
 */
extern int tracker_fold_epoch_locked (struct tracker *t, unsigned new_bits);

/* store.c: the live commit of a change to persistent bitmaps (with
 * crash safety: every recording bitmap stored, then the journal
 * truncated), and a store of every persistent bitmap with the writes
 * folded in.  Tracking started, lock held; 0, or -1 with *ERROR set.
 */
extern int tracker_commit_live_locked (struct tracker *t, char **error);
extern int tracker_store_locked (struct tracker *t, char **error);

#endif /* DIRTYBITMAP_TRACKER_INTERNAL_H */
