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

/* A bitmap added with persistent=false: in memory only. */
struct volatile_bitmap {
  char *name;
  unsigned granularity_bits;
  bool enabled;
  struct dirtymap *data;
};

struct tracker {
  const struct tracker_config *cfg;
  pthread_mutex_t lock;         /* guards everything but the write path */
  char *exportname;             /* the claimed export, or NULL */
  bool started;                 /* read without the lock once set */
  bool warned_in_use;           /* in-use bitmaps reported already */
  bool failed;                  /* starting or storing failed */
  uint64_t probed_size;         /* export size seen at start-up, or 0 */
  uint64_t export_size;
  struct sidecar *sidecar;
  struct sidecar *validated;    /* read-only, holding QEMU's read locks
                                   from start-up until tracking starts */
  struct recorder *recorder;    /* writes since the last fold */
  struct journal *journal;      /* durable marks, with crash safety */
  struct volatile_bitmap *volatiles;
  size_t nr_volatiles;
};

/* Start tracking with the lock held (tracker_start's work). */
extern int tracker_start_locked (struct tracker *t, uint64_t export_size);

/* The finest granularity among the recording bitmaps, or the default
 * when none records.
 */
extern unsigned tracker_recording_bits (const struct tracker *t);

/* Fold what writes marked since the last fold into every recording
 * bitmap, and go on recording in granules of 1 << NEW_BITS bytes (the
 * finest of the bitmaps that record from now on).  Lock held.
 */
extern int tracker_fold_locked (struct tracker *t, unsigned new_bits);

#endif /* DIRTYBITMAP_TRACKER_INTERNAL_H */
