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
  /* Bits of this epoch known to be on stable storage: read without
   * the lock (atomically, as journal_begin_epoch replaces it), set
   * with it.
   */
  struct dirtymap *durable;

  pthread_mutex_t lock;         /* guards everything below */
  pthread_cond_t committed;
  uint8_t *image;               /* the bitmap as the next commit writes it */
  uint8_t *epoch_image;         /* the bits set since the epoch began */
  uint64_t epoch;
  struct dirtymap *retired;     /* the last epoch's durable bits, until
                                   no mark can still be reading them */
  bool marked;                  /* a bit was set since the last truncate */
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
  j->epoch_image = calloc (j->nr_pages, j->page_size);
  j->out = malloc (j->nr_pages * j->page_size);
  j->page_queued = calloc (j->nr_pages, sizeof *j->page_queued);
  j->queue = calloc (j->nr_pages, sizeof *j->queue);
  j->out_pages = calloc (j->nr_pages, sizeof *j->out_pages);
  j->durable = dirtymap_new (nr_bits);
  if (!j->path || !j->image || !j->epoch_image || !j->out ||
      !j->page_queued ||
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
  dirtymap_free (j->retired);
  free (j->out_pages);
  free (j->queue);
  free (j->page_queued);
  free (j->out);
  free (j->epoch_image);
  free (j->image);
  free (j->path);
  pthread_cond_destroy (&j->committed);
  pthread_mutex_destroy (&j->lock);
  free (j);
}

static void
queue_page_locked (struct journal *j, size_t page)
{
  if (!j->page_queued[page]) {
    j->page_queued[page] = true;
    j->queue[j->nr_queued++] = page;
  }
}

/* Set bits FIRST..LAST in the image and the epoch's, queueing the
 * pages that change.  Called with the lock held.
 */
static void
set_bits_locked (struct journal *j, uint64_t first, uint64_t last)
{
  uint64_t bit;

  j->marked = true;
  for (bit = first; bit <= last; ++bit) {
    qcow2_bitmap_data_set (j->epoch_image, bit);
    if (qcow2_bitmap_data_set (j->image, bit))
      queue_page_locked (j, (bit / 8) / j->page_size);
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

/* Wait until everything queued so far is durable.  Called with the
 * lock held; returns with it held, -1 if a commit failed.
 */
static int
wait_durable_locked (struct journal *j)
{
  uint64_t mine = j->open_batch;

  while (j->done_batch < mine && !j->failed) {
    if (j->committing)
      pthread_cond_wait (&j->committed, &j->lock);
    else
      commit_locked (j);
  }
  return j->done_batch < mine ? -1 : 0;
}

int
journal_mark (struct journal *j, uint64_t offset, uint64_t count)
{
  struct dirtymap *durable;
  uint64_t first, last, epoch;
  int r = 0;

  if (count == 0)
    return 0;
  first = offset >> j->granularity_bits;
  last = (offset + count - 1) >> j->granularity_bits;
  if (last >= j->nr_bits)
    last = j->nr_bits - 1;
  durable = __atomic_load_n (&j->durable, __ATOMIC_SEQ_CST);
  if (first > last ||
      dirtymap_range_set (durable, first, last - first + 1))
    return 0;

  pthread_mutex_lock (&j->lock);
  set_bits_locked (j, first, last);
  epoch = j->epoch;
  if (j->done_batch < j->open_batch)
    j->stats.waits++;
  if (wait_durable_locked (j) == -1) {
    nbdkit_error ("%s: the journal could not be made durable (see the "
                  "first error): the request is refused so that no write "
                  "escapes the bitmaps", j->path);
    r = -1;
  }
  /* Durable in this epoch only if the epoch's bits hold them: a new
   * epoch began without them while we waited.
   */
  else if (j->epoch == epoch &&
           dirtymap_set_range (j->durable, first, last - first + 1) == -1)
    r = -1;
  pthread_mutex_unlock (&j->lock);
  return r;
}

int
journal_begin_epoch (struct journal *j)
{
  struct dirtymap *fresh;

  pthread_mutex_lock (&j->lock);
  /* The last change is not settled: marks may still read the retired
   * bits, so the epoch goes on (journal_truncate waits for it too).
   */
  if (j->retired) {
    pthread_mutex_unlock (&j->lock);
    return 0;
  }
  fresh = dirtymap_new (j->nr_bits);
  if (fresh == NULL) {
    pthread_mutex_unlock (&j->lock);
    return -1;
  }
  memset (j->epoch_image, 0, j->nr_pages * j->page_size);
  j->epoch++;
  j->retired = __atomic_exchange_n (&j->durable, fresh, __ATOMIC_SEQ_CST);
  pthread_mutex_unlock (&j->lock);
  return 0;
}

void
journal_epoch_settled (struct journal *j)
{
  pthread_mutex_lock (&j->lock);
  dirtymap_free (j->retired);
  j->retired = NULL;
  pthread_mutex_unlock (&j->lock);
}

bool
journal_has_marks (struct journal *j)
{
  bool marked;

  pthread_mutex_lock (&j->lock);
  marked = j->marked;
  pthread_mutex_unlock (&j->lock);
  return marked;
}

int
journal_truncate (struct journal *j)
{
  size_t page, n = 0;
  int r = 0;

  pthread_mutex_lock (&j->lock);
  if (j->retired == NULL) {
    /* Pages go out after any commit under way (commits never
     * overlap), so the disk ends with the epoch's bits.
     */
    for (page = 0; page < j->nr_pages; ++page) {
      size_t at = page * j->page_size;

      if (memcmp (&j->image[at], &j->epoch_image[at], j->page_size) == 0)
        continue;
      memcpy (&j->image[at], &j->epoch_image[at], j->page_size);
      queue_page_locked (j, page);
      n++;
    }
    j->marked = false;
    if (wait_durable_locked (j) == -1) {
      nbdkit_error ("%s: the journal could not be truncated to the writes "
                    "made since the bitmaps were stored (see the first "
                    "error): writes to regions not yet durable are refused "
                    "from now on; stop nbdkit and start it again once the "
                    "disk is healthy", j->path);
      r = -1;
    }
    else
      nbdkit_debug ("%s: journal truncated to the writes of epoch %" PRIu64
                    " (%zu pages rewritten)", j->path, j->epoch, n);
  }
  pthread_mutex_unlock (&j->lock);
  return r;
}

void
journal_get_stats (struct journal *j, struct journal_stats *s)
{
  pthread_mutex_lock (&j->lock);
  *s = j->stats;
  pthread_mutex_unlock (&j->lock);
}
