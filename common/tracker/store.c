/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Stores while the export serves: the live commit of a transaction or
 * x-dirtybitmap-store, and the periodic store (its timer thread).
 *
 * With crash safety, each of them stores every recording bitmap with
 * the writes folded in, then truncates the journal to the writes made
 * since the fold (journal.h, epochs).  After a crash, recovery thus
 * adds to each bitmap only the regions written since it was last
 * stored, not since nbdkit started: a checkpoint made during the run
 * no longer comes back holding every region written before it existed.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

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

void
tracker_store_if_written (struct tracker *t)
{
  char *error = NULL;

  pthread_mutex_lock (&t->lock);
  /* Never the first to start tracking (nbdkit -r leaves the sidecar
   * alone), and only when the journal holds writes that a store would
   * take out of it.
   */
  if (t->started && !t->failed && t->journal &&
      journal_has_marks (t->journal)) {
    if (tracker_store_locked (t, &error) == -1)
      nbdkit_error ("%s: the periodic store (dirtybitmap-store-interval) "
                    "failed: %s; the journal still protects the bitmaps "
                    "and the next store retries", t->cfg->sidecar_path,
                    error ? error : "out of memory");
    else
      nbdkit_debug ("dirtybitmap: periodic store of the bitmaps in %s",
                    t->cfg->sidecar_path);
  }
  pthread_mutex_unlock (&t->lock);
  free (error);
}

/* The periodic store's thread. */
struct tracker_store_timer {
  struct tracker *tracker;
  unsigned seconds;
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t wake;
  bool stopping;                /* under the lock */
};

static void *
run_timer (void *arg)
{
  struct tracker_store_timer *st = arg;
  struct timespec due;

  pthread_mutex_lock (&st->lock);
  while (!st->stopping) {
    clock_gettime (CLOCK_MONOTONIC, &due);
    due.tv_sec += st->seconds;
    while (!st->stopping &&
           pthread_cond_timedwait (&st->wake, &st->lock, &due) != ETIMEDOUT)
      ;
    if (st->stopping)
      break;
    /* Not holding our lock, so that stopping never waits for a store
     * to finish before it is asked.
     */
    pthread_mutex_unlock (&st->lock);
    tracker_store_if_written (st->tracker);
    pthread_mutex_lock (&st->lock);
  }
  pthread_mutex_unlock (&st->lock);
  return NULL;
}

int
tracker_store_timer_start (struct tracker *t,
                           struct tracker_store_timer **timer)
{
  struct tracker_store_timer *st;
  pthread_condattr_t attr;
  int err;

  *timer = NULL;
  /* Without the journal a store bounds nothing: bitmaps recording at
   * a crash are not trusted whatever was stored.
   */
  if (t->cfg->store_interval == 0 || !t->cfg->crash_safe)
    return 0;
  st = calloc (1, sizeof *st);
  if (st == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  st->tracker = t;
  st->seconds = t->cfg->store_interval;
  pthread_mutex_init (&st->lock, NULL);
  pthread_condattr_init (&attr);
  pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
  pthread_cond_init (&st->wake, &attr);
  pthread_condattr_destroy (&attr);
  err = pthread_create (&st->thread, NULL, run_timer, st);
  if (err != 0) {
    errno = err;
    nbdkit_error ("dirtybitmap-store-interval: cannot start the periodic "
                  "store's thread: %m");
    pthread_cond_destroy (&st->wake);
    pthread_mutex_destroy (&st->lock);
    free (st);
    return -1;
  }
  *timer = st;
  return 0;
}

void
tracker_store_timer_stop (struct tracker_store_timer *st)
{
  if (st == NULL)
    return;
  pthread_mutex_lock (&st->lock);
  st->stopping = true;
  pthread_cond_signal (&st->wake);
  pthread_mutex_unlock (&st->lock);
  pthread_join (st->thread, NULL);
  pthread_cond_destroy (&st->wake);
  pthread_mutex_destroy (&st->lock);
  free (st);
}
