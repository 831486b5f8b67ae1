/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Unit tests for the recorder: marks land at the recorder's current
 * granularity; a swap hands back a map holding every mark that
 * completed before it, and each mark lands in exactly one of the maps
 * however many threads mark while swaps happen.
 */
#include <config.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "recorder.h"
#include "unit-test.h"

static void
test_granularity (void)
{
  struct recorder *r = recorder_new (10 * 65536 + 100, 16);
  struct dirtymap *old;
  unsigned bits;

  CHECK (r != NULL);
  CHECK (recorder_mark (r, 65535, 2) == 0);     /* granules 0 and 1 */
  CHECK (recorder_mark (r, 10 * 65536 + 99, 1) == 0);  /* partial last */
  CHECK (recorder_mark (r, 0, 0) == 0);
  old = recorder_swap (r, 12, &bits);
  CHECK (old != NULL);
  CHECK_EQ_U64 (bits, 16);
  CHECK_EQ_U64 (dirtymap_nr_bits (old), 11);
  CHECK_EQ_U64 (dirtymap_count (old), 3);
  CHECK (dirtymap_test (old, 0) && dirtymap_test (old, 1) &&
         dirtymap_test (old, 10));
  dirtymap_free (old);

  /* The new map is empty and at the new granularity. */
  CHECK (recorder_mark (r, 4096 * 3, 4096) == 0);
  old = recorder_swap (r, 16, &bits);
  CHECK_EQ_U64 (bits, 12);
  CHECK_EQ_U64 (dirtymap_count (old), 1);
  CHECK (dirtymap_test (old, 3));
  dirtymap_free (old);
  recorder_free (r);
}

#define THREADS 8
#define MARKS_PER_THREAD 20000
#define GENERATIONS 200

static struct recorder *shared;
static uint64_t marks_done[THREADS];   /* published after each mark */

static void *
marker (void *arg)
{
  uint64_t k = (uintptr_t) arg, i;

  /* Thread k marks granules k, k + THREADS, ... each exactly once. */
  for (i = 0; i < MARKS_PER_THREAD; ++i) {
    CHECK (recorder_mark (shared, (k + i * THREADS) * 512, 512) == 0);
    __atomic_store_n (&marks_done[k], i + 1, __ATOMIC_RELEASE);
  }
  return NULL;
}

static void
test_concurrent_swaps (void)
{
  const uint64_t granules = (uint64_t) THREADS * MARKS_PER_THREAD;
  struct dirtymap *maps[GENERATIONS + 1];
  pthread_t threads[THREADS];
  uint64_t g, k;
  unsigned bits;
  size_t i, n = 0;

  shared = recorder_new (granules * 512, 9);
  CHECK (shared != NULL);
  for (k = 0; k < THREADS; ++k)
    CHECK (pthread_create (&threads[k], NULL, marker,
                           (void *) (uintptr_t) k) == 0);
  for (i = 0; i < GENERATIONS; ++i) {
    uint64_t before[THREADS];

    for (k = 0; k < THREADS; ++k)
      before[k] = __atomic_load_n (&marks_done[k], __ATOMIC_ACQUIRE);
    maps[n] = recorder_swap (shared, 9, &bits);
    CHECK (maps[n] != NULL);
    /* Every mark completed before the swap began is in this map or an
     * earlier one.
     */
    for (k = 0; k < THREADS; ++k)
      if (before[k] > 0) {
        uint64_t last = k + (before[k] - 1) * THREADS;
        size_t j;
        bool found = false;
        for (j = 0; j <= n && !found; ++j)
          found = dirtymap_test (maps[j], last);
        CHECK (found);
      }
    n++;
  }
  for (k = 0; k < THREADS; ++k)
    pthread_join (threads[k], NULL);
  maps[n++] = recorder_swap (shared, 9, &bits);

  /* Each mark in exactly one generation. */
  for (g = 0; g < granules; ++g) {
    unsigned in = 0;
    for (i = 0; i < n; ++i)
      in += dirtymap_test (maps[i], g);
    CHECK_EQ_U64 (in, 1);
  }
  for (i = 0; i < n; ++i)
    dirtymap_free (maps[i]);
  recorder_free (shared);
}

int
main (void)
{
  test_granularity ();
  test_concurrent_swaps ();
  return 0;
}
