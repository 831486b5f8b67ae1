/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The tracker's side of point-in-time views (common/views/views.h):
 * the write path's gate, and view actions staged in transactions, so
 * that a view's instant is the instant of the bitmap actions beside
 * it.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "tracker-internal.h"
#include "views.h"

void
tracker_attach_views (struct tracker *t, struct views *vs)
{
  t->views = vs;
}

struct views *
tracker_views (struct tracker *t)
{
  return t->views;
}

int
tracker_write_begin (struct tracker *t, uint64_t offset, uint64_t count,
                     bool *copy)
{
  const struct recorder_generation *map;
  int e = 0;

  /* The recorder's map is taken first, and marked last, under one
   * announcement (see tracker_fold_epoch_locked): a write is then
   * either folded in by the fold that follows a journal epoch's
   * beginning, or marked in that epoch of the journal, never neither.
   * Durable first: a request refused for want of its durable mark
   * never reaches the plugin, so it needs no mark at all.
   */
  map = recorder_hold (t->recorder, copy);
  if (t->journal && journal_mark (t->journal, offset, count) == -1)
    e = EIO;
  else if (recorder_mark_held (map, offset, count) == -1)
    e = ENOMEM;
  if (e)
    recorder_release (t->recorder);
  return e;
}

void
tracker_write_end (struct tracker *t)
{
  recorder_release (t->recorder);
}

bool
tracker_has_view_actions (const struct tracker_action *actions, size_t n)
{
  size_t i;

  for (i = 0; i < n; ++i)
    if (actions[i].type == TRACKER_VIEW_ADD ||
        actions[i].type == TRACKER_VIEW_REMOVE)
      return true;
  return false;
}

void
tracker_open_gate (struct tracker *t)
{
  recorder_open_gate (t->recorder, t->views && views_exist (t->views));
}

static int
fail (char **error, const char *msg)
{
  *error = strdup (msg);
  return -1;
}

int
tracker_stage_view (struct tracker *t, struct views_stage **stage,
                    const struct tracker_action *a,
                    const struct tracker_bitmap *bitmap, char **error)
{
  if (t->views == NULL)
    return fail (error, "views are not available on this server");
  if (*stage == NULL && (*stage = views_stage_new (t->views)) == NULL)
    return fail (error, "out of memory");
  if (a->type == TRACKER_VIEW_REMOVE)
    return views_stage_remove (*stage, a->name, error);
  if (t->exportname && strcmp (a->name, t->exportname) == 0) {
    if (asprintf (error, "View name '%s' is the tracked export's name",
                  a->name) == -1)
      *error = NULL;
    return -1;
  }
  if (bitmap)
    return views_stage_add (*stage, a->name, bitmap->name, bitmap->data,
                            bitmap->granularity_bits, t->export_size,
                            error);
  return views_stage_add (*stage, a->name, NULL, NULL, 0, t->export_size,
                          error);
}
