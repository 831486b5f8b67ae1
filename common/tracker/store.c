/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Stores while the export serves: the live commit of a transaction or
 * x-dirtybitmap-store.
 *
 * With crash safety, each of them stores every recording bitmap with
 * the writes folded in, then truncates the journal to the writes made
 * since the fold (journal.h, epochs).  After a crash, recovery thus
 * adds to each bitmap only the regions written since it was last
 * stored, not since nbdkit started: a checkpoint made during the run
 * no longer comes back holding every region written before it existed.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>

#include <nbdkit-filter.h>

#include "data-identity.h"
#include "qcow2-format.h"
#include "tracker-internal.h"

/* Every recording bitmap is stored, not only those that changed: the
 * journal may be truncated only once all the bitmaps it protects are
 * durable with the writes folded in.
 */
static void
mark_recording_changed (struct tracker *t)
{
  size_t i;

  for (i = 0; i < t->nr_bitmaps; ++i)
    if (t->bitmaps[i].stored && t->bitmaps[i].data && t->bitmaps[i].recording)
      sidecar_bitmap_mark_changed (t->bitmaps[i].stored);
}

int
tracker_commit_live_locked (struct tracker *t, char **error)
{
  const char *path = sidecar_path (t->sidecar);

  if (t->journal)
    mark_recording_changed (t);
  /* A heartbeat: after a crash, the data must be no older than this. */
  if (data_identity_record (t->cfg, t->sidecar, QCOW2_IDENTITY_SESSION,
                            false) == -1 ||
      sidecar_commit_live (t->sidecar) == -1) {
    if (asprintf (error, "the change is made in memory but could not be "
                  "stored in %s (see nbdkit's log); the next store retries",
                  path) == -1)
      *error = NULL;
    return -1;
  }
  if (t->journal && journal_truncate (t->journal) == -1) {
    if (asprintf (error, "the bitmaps are stored in %s, but its "
                  "crash-safety journal could not be truncated (see "
                  "nbdkit's log)", path) == -1)
      *error = NULL;
    return -1;
  }
  return 0;
}

int
tracker_store_locked (struct tracker *t, char **error)
{
  size_t i;

  if (tracker_fold_epoch_locked (t, tracker_recording_bits (t)) == -1) {
    if (asprintf (error, "out of memory") == -1)
      *error = NULL;
    return -1;
  }
  for (i = 0; i < t->nr_bitmaps; ++i)
    if (t->bitmaps[i].stored && t->bitmaps[i].data)
      sidecar_bitmap_mark_changed (t->bitmaps[i].stored);
  return tracker_commit_live_locked (t, error);
}
