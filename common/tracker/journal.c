/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "dirtymap.h"
#include "journal.h"
#include "qcow2-format.h"

/* The unit rewritten in place: one page, or one cluster if smaller. */
#define JOURNAL_PAGE 4096

struct journal {
  struct journal_store store;
  char *path;
  unsigned granularity_bits;
  uint64_t nr_bits;
  size_t page_size;             /* never crosses a cluster */
  size_t nr_pages;
  struct dirtymap *durable;     /* bits known to be on stable storage */

  pthread_mutex_t lock;         /* guards everything below */
  pthread_cond_t committed;
  uint8_t *image;               /* the bitmap as the next commit writes it */
  bool *page_queued;
  size_t *queue;                /* pages changed since the last commit */
  size_t nr_queued;
  uint64_t open_batch;          /* the commit new bits will go out in */
  uint64_t done_batch;          /* the last commit made durable */
  bool committing;
  bool failed;
  struct journal_stats stats;

  /* Used by the committing thread alone. */
  uint8_t *out;
  size_t *out_pages;
};

struct journal *
journal_new (const struct journal_store *store, const char *path,
             unsigned granularity_bits, uint64_t nr_bits,
             uint64_t cluster_size)
{
  struct journal *j = calloc (1, sizeof *j);
  uint64_t bytes = (nr_bits + 7) / 8;

  if (j == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  pthread_mutex_init (&j->lock, NULL);
  pthread_cond_init (&j->committed, NULL);
  j->store = *store;
  j->granularity_bits = granularity_bits;
  j->nr_bits = nr_bits;
  j->page_size = cluster_size < JOURNAL_PAGE ? cluster_size : JOURNAL_PAGE;
  j->nr_pages = (bytes + j->page_size - 1) / j->page_size;
  j->path = strdup (path);
  j->image = calloc (j->nr_pages, j->page_size);
  j->out = malloc (j->nr_pages * j->page_size);
  j->page_queued = calloc (j->nr_pages, sizeof *j->page_queued);
  j->queue = calloc (j->nr_pages, sizeof *j->queue);
  j->out_pages = calloc (j->nr_pages, sizeof *j->out_pages);
  j->durable = dirtymap_new (nr_bits);
  if (!j->path || !j->image || !j->out || !j->page_queued ||
      !j->queue || !j->out_pages || !j->durable) {
    nbdkit_error ("%s: allocating the journal: %m", path);
    journal_free (j);
    return NULL;
  }
  j->open_batch = 1;
  return j;
}

void
journal_free (struct journal *j)
{
  if (j == NULL)
    return;
  dirtymap_free (j->durable);
  free (j->out_pages);
  free (j->queue);
  free (j->page_queued);
  free (j->out);
  free (j->image);
  free (j->path);
  pthread_cond_destroy (&j->committed);
  pthread_mutex_destroy (&j->lock);
  free (j);
}

/* Set bits FIRST..LAST in the image, queueing the pages that change.
 * Called with the lock held.
 */
static void
set_bits_locked (struct journal *j, uint64_t first, uint64_t last)
{
  uint64_t bit;

  for (bit = first; bit <= last; ++bit) {
    size_t page = (bit / 8) / j->page_size;

    if (!qcow2_bitmap_data_set (j->image, bit))
      continue;
    if (!j->page_queued[page]) {
      j->page_queued[page] = true;
      j->queue[j->nr_queued++] = page;
    }
  }
}

/* Write the pages taken for this commit, then flush.  Called without
 * the lock: requests go on setting bits for the next commit meanwhile.
 */
static int
write_pages (struct journal *j, size_t n)
{
  size_t i;

  for (i = 0; i < n; ++i)
    if (j->store.write (j->store.opaque,
                        (uint64_t) j->out_pages[i] * j->page_size,
                        &j->out[i * j->page_size], j->page_size) == -1)
      return -1;
  return j->store.sync (j->store.opaque);
}

/* Lead one commit of everything queued.  Called with the lock held;
 * returns with it held.
 */
static void
commit_locked (struct journal *j)
{
  uint64_t batch = j->open_batch++;
  size_t i, n = j->nr_queued;
  int r = 0;

  for (i = 0; i < n; ++i) {
    size_t page = j->queue[i];

    j->out_pages[i] = page;
    memcpy (&j->out[i * j->page_size], &j->image[page * j->page_size],
            j->page_size);
    j->page_queued[page] = false;
  }
  j->nr_queued = 0;
  j->committing = true;
  /* With nothing queued, every bit set so far went out in a commit
   * that has finished: nothing to write.
   */
  if (n > 0) {
    pthread_mutex_unlock (&j->lock);
    r = write_pages (j, n);
    pthread_mutex_lock (&j->lock);
    j->stats.commits++;
    j->stats.pages_written += n;
  }
  j->committing = false;
  if (r == -1)
    j->failed = true;
  else
    j->done_batch = batch;
  pthread_cond_broadcast (&j->committed);
}

int
journal_mark (struct journal *j, uint64_t offset, uint64_t count)
{
  uint64_t first, last, mine;
  int r = 0;

  if (count == 0)
    return 0;
  first = offset >> j->granularity_bits;
  last = (offset + count - 1) >> j->granularity_bits;
  if (last >= j->nr_bits)
    last = j->nr_bits - 1;
  if (first > last ||
      dirtymap_range_set (j->durable, first, last - first + 1))
    return 0;

  pthread_mutex_lock (&j->lock);
  set_bits_locked (j, first, last);
  mine = j->open_batch;
  if (j->done_batch < mine)
    j->stats.waits++;
  while (j->done_batch < mine && !j->failed) {
    if (j->committing)
      pthread_cond_wait (&j->committed, &j->lock);
    else
      commit_locked (j);
  }
  if (j->done_batch < mine) {
    nbdkit_error ("%s: the journal could not be made durable (see the "
                  "first error): the request is refused so that no write "
                  "escapes the bitmaps", j->path);
    r = -1;
  }
  pthread_mutex_unlock (&j->lock);
  if (r == 0 && dirtymap_set_range (j->durable, first, last - first + 1) == -1)
    return -1;
  return r;
}

void
journal_get_stats (struct journal *j, struct journal_stats *s)
{
  pthread_mutex_lock (&j->lock);
  *s = j->stats;
  pthread_mutex_unlock (&j->lock);
}
