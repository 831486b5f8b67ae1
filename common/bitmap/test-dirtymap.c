/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Unit tests for the sparse lock-free bitmap. */
#include <config.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dirtymap.h"
#include "unit-test.h"

static void
test_ranges_and_edges (void)
{
  /* An odd size, so the last leaf and last word are partial. */
  const uint64_t n = 3 * DIRTYMAP_LEAF_BITS + 77;
  struct dirtymap *m = dirtymap_new (n);

  CHECK (m != NULL);
  CHECK_EQ_U64 (dirtymap_count (m), 0);
  CHECK_EQ_U64 (dirtymap_next_set (m, 0), n);
  CHECK_EQ_U64 (dirtymap_next_clear (m, 0), 0);

  CHECK (dirtymap_set_range (m, 5, 1) == 1);
  CHECK (dirtymap_set_range (m, 5, 1) == 0);          /* already set */
  CHECK (dirtymap_test (m, 5) && !dirtymap_test (m, 4) && !dirtymap_test (m, 6));

  /* A range crossing a word and a leaf boundary. */
  CHECK (dirtymap_set_range (m, DIRTYMAP_LEAF_BITS - 3, 70) == 1);
  CHECK_EQ_U64 (dirtymap_count (m), 71);
  CHECK_EQ_U64 (dirtymap_next_set (m, 6), DIRTYMAP_LEAF_BITS - 3);
  CHECK_EQ_U64 (dirtymap_next_clear (m, DIRTYMAP_LEAF_BITS - 3),
                DIRTYMAP_LEAF_BITS + 67);

  /* Clipped at the end of the map. */
  CHECK (dirtymap_set_range (m, n - 2, 1000) == 1);
  CHECK (dirtymap_test (m, n - 1) && dirtymap_test (m, n - 2));
  CHECK (!dirtymap_test (m, n));
  CHECK_EQ_U64 (dirtymap_count (m), 73);
  CHECK_EQ_U64 (dirtymap_next_clear (m, n - 2), n);
  CHECK (dirtymap_set_range (m, n, 5) == 0);          /* wholly outside */

  /* An untouched leaf in the middle allocates nothing. */
  CHECK_EQ_U64 (dirtymap_next_set (m, DIRTYMAP_LEAF_BITS + 67), n - 2);
  CHECK (dirtymap_memory (m) < 4 * (DIRTYMAP_LEAF_BITS / 8));
  dirtymap_free (m);
}

static void
test_huge_map_is_cheap (void)
{
  /* 2^32 granules: QEMU's largest bitmap.  Only pointers allocated. */
  struct dirtymap *m = dirtymap_new (UINT64_C(1) << 32);

  CHECK (m != NULL);
  CHECK (dirtymap_memory (m) <= (UINT64_C(1) << 32) / DIRTYMAP_LEAF_BITS * 8 + 64);
  CHECK (dirtymap_set_range (m, (UINT64_C(1) << 32) - 1, 1) == 1);
  CHECK_EQ_U64 (dirtymap_next_set (m, 0), (UINT64_C(1) << 32) - 1);
  CHECK_EQ_U64 (dirtymap_count (m), 1);
  dirtymap_free (m);
}

static void
test_import_export (void)
{
  const uint64_t n = 1000;              /* 125 bytes, not a word multiple */
  struct dirtymap *m = dirtymap_new (n);
  uint8_t in[128] = { 0 }, out[128];

  in[0] = 0x01;                          /* bit 0 */
  in[1] = 0x80;                          /* bit 15 */
  in[124] = 0x80;                        /* bit 999, the last one */
  CHECK (dirtymap_import (m, 0, in, sizeof in) == 0);
  CHECK (dirtymap_test (m, 0) && dirtymap_test (m, 15) && dirtymap_test (m, 999));
  CHECK_EQ_U64 (dirtymap_count (m), 3);

  memset (out, 0xff, sizeof out);
  CHECK (dirtymap_export (m, 0, out, sizeof out));
  CHECK (memcmp (in, out, sizeof in) == 0);

  /* A bit past the end of the disk is refused. */
  in[125] = 0x01;
  clear_last_error ();
  CHECK (dirtymap_import (m, 0, in, sizeof in) == -1);
  CHECK_ERROR_MENTIONS ("past the end");

  /* Exporting a region with nothing set reports it as empty. */
  CHECK (!dirtymap_export (m, 64, out, 8));
  dirtymap_free (m);
}

static void
test_merge_scaled (void)
{
  struct dirtymap *fine = dirtymap_new (1024);
  struct dirtymap *coarse = dirtymap_new (64);

  /* shift 4: one coarse bit covers 16 fine bits. */
  dirtymap_set_range (fine, 15, 2);     /* touches coarse 0 and 1 */
  dirtymap_set_range (fine, 1023, 1);   /* coarse 63 */
  CHECK (dirtymap_merge_scaled (coarse, fine, 4) == 0);
  CHECK_EQ_U64 (dirtymap_count (coarse), 3);
  CHECK (dirtymap_test (coarse, 0) && dirtymap_test (coarse, 1) &&
         dirtymap_test (coarse, 63));
  dirtymap_free (fine);
  dirtymap_free (coarse);
}

/* Every bit of DST must be exactly bit I >> SHIFT of SRC ORed with
 * what DST held before (PRE, which may be NULL for none).
 */
static void
check_expanded (const struct dirtymap *dst, const struct dirtymap *src,
                const struct dirtymap *pre, unsigned shift)
{
  uint64_t i, n = dirtymap_nr_bits (dst), expected = 0;

  for (i = 0; i < n; ++i) {
    bool want = dirtymap_test (src, i >> shift) ||
      (pre && dirtymap_test (pre, i));
    if (dirtymap_test (dst, i) != want) {
      fprintf (stderr, "%s:%d: bit %llu is %d, expected %d (shift %u)\n",
               __FILE__, __LINE__, (unsigned long long) i,
               (int) dirtymap_test (dst, i), (int) want, shift);
      exit (EXIT_FAILURE);
    }
    expected += want;
  }
  CHECK_EQ_U64 (dirtymap_count (dst), expected);
}

static void
test_merge_expanded (void)
{
  struct dirtymap *coarse, *fine, *pre;

  /* shift 4: one coarse bit covers 16 fine bits; the fine map is 20
   * coarse bits long less 5 fine ones, so coarse bit 19 is clipped
   * and bit 20 lies wholly past the end.
   */
  coarse = dirtymap_new (64);
  fine = dirtymap_new (20 * 16 - 5);
  pre = dirtymap_new (20 * 16 - 5);
  CHECK (coarse && fine && pre);
  CHECK (dirtymap_set_range (coarse, 0, 1) == 1);
  CHECK (dirtymap_set_range (coarse, 3, 2) == 1);     /* a run of two */
  CHECK (dirtymap_set_range (coarse, 19, 3) == 1);    /* 19 clipped, 20-21 out */
  CHECK (dirtymap_set_range (coarse, 63, 1) == 1);    /* wholly out */
  /* What DST held is kept. */
  CHECK (dirtymap_set_range (fine, 40, 3) == 1);
  CHECK (dirtymap_set_range (pre, 40, 3) == 1);
  CHECK (dirtymap_merge_expanded (fine, coarse, 4) == 0);
  CHECK_EQ_U64 (dirtymap_count (fine), 16 + 32 + 11 + 3);
  CHECK (dirtymap_test (fine, 0) && dirtymap_test (fine, 15));
  CHECK (!dirtymap_test (fine, 16) && !dirtymap_test (fine, 47));
  CHECK_EQ_U64 (dirtymap_next_set (fine, 16), 40);
  CHECK_EQ_U64 (dirtymap_next_set (fine, 43), 48);
  CHECK_EQ_U64 (dirtymap_next_clear (fine, 48), 80);
  CHECK_EQ_U64 (dirtymap_next_set (fine, 80), 19 * 16);
  CHECK_EQ_U64 (dirtymap_next_clear (fine, 19 * 16), 20 * 16 - 5);
  check_expanded (fine, coarse, pre, 4);
  /* Merging again changes nothing. */
  CHECK (dirtymap_merge_expanded (fine, coarse, 4) == 0);
  check_expanded (fine, coarse, pre, 4);
  dirtymap_free (fine);
  dirtymap_free (pre);

  /* shift 0 is a plain OR. */
  fine = dirtymap_new (64);
  CHECK (dirtymap_merge_expanded (fine, coarse, 0) == 0);
  check_expanded (fine, coarse, NULL, 0);
  CHECK_EQ_U64 (dirtymap_count (fine), 7);
  dirtymap_free (fine);
  dirtymap_free (coarse);

  /* An empty source leaves the destination as it was (and allocates
   * nothing in it).
   */
  coarse = dirtymap_new (1000);
  fine = dirtymap_new (1000 << 3);
  CHECK (dirtymap_merge_expanded (fine, coarse, 3) == 0);
  CHECK_EQ_U64 (dirtymap_count (fine), 0);
  CHECK_EQ_U64 (dirtymap_next_set (fine, 0), 1000 << 3);
  CHECK (dirtymap_set_range (fine, 77, 1) == 1);
  CHECK (dirtymap_merge_expanded (fine, coarse, 3) == 0);
  CHECK_EQ_U64 (dirtymap_count (fine), 1);
  dirtymap_free (fine);
  dirtymap_free (coarse);

  /* Runs whose expansion spans several leaves of DST, and a source run
   * crossing one of the source's own leaves: shift 6, so one source
   * bit is 64 destination bits and a leaf of DST is 512 source bits.
   */
  coarse = dirtymap_new (3 * DIRTYMAP_LEAF_BITS);
  fine = dirtymap_new ((3 * DIRTYMAP_LEAF_BITS) << 6);
  CHECK (coarse && fine);
  /* 1000 source bits from 511: destination bits from 511 * 64, across
   * leaf boundaries at 512, 1024 source bits.
   */
  CHECK (dirtymap_set_range (coarse, 511, 1000) == 1);
  CHECK (dirtymap_set_range (coarse, DIRTYMAP_LEAF_BITS - 1, 2) == 1);
  CHECK (dirtymap_set_range (coarse, 3 * DIRTYMAP_LEAF_BITS - 1, 1) == 1);
  CHECK (dirtymap_merge_expanded (fine, coarse, 6) == 0);
  CHECK_EQ_U64 (dirtymap_count (fine), (1000 + 2 + 1) * 64);
  CHECK_EQ_U64 (dirtymap_next_set (fine, 0), 511 * 64);
  CHECK_EQ_U64 (dirtymap_next_clear (fine, 511 * 64), 1511 * 64);
  CHECK_EQ_U64 (dirtymap_next_set (fine, 1511 * 64),
                (DIRTYMAP_LEAF_BITS - 1) * 64);
  CHECK_EQ_U64 (dirtymap_next_clear (fine, (DIRTYMAP_LEAF_BITS - 1) * 64),
                (DIRTYMAP_LEAF_BITS + 1) * 64);
  CHECK_EQ_U64 (dirtymap_next_set (fine, (DIRTYMAP_LEAF_BITS + 1) * 64),
                (3 * DIRTYMAP_LEAF_BITS - 1) * 64);
  CHECK_EQ_U64 (dirtymap_next_clear (fine, (3 * DIRTYMAP_LEAF_BITS - 1) * 64),
                (3 * DIRTYMAP_LEAF_BITS) << 6);
  dirtymap_free (fine);

  /* The same source into a destination that ends in the middle of
   * the first run's expansion: clipped, and nothing past it.
   */
  fine = dirtymap_new (600 * 64 + 7);
  CHECK (dirtymap_merge_expanded (fine, coarse, 6) == 0);
  CHECK_EQ_U64 (dirtymap_count (fine), (600 - 511) * 64 + 7);
  CHECK_EQ_U64 (dirtymap_next_clear (fine, 511 * 64), 600 * 64 + 7);
  check_expanded (fine, coarse, NULL, 6);
  dirtymap_free (fine);
  dirtymap_free (coarse);
}

/* Threads set interleaved and overlapping ranges; the result must be
 * exactly the union, whoever allocated each leaf.
 */
#define THREADS 8
static struct dirtymap *shared_map;

/* Ranges entirely set, in a huge map: the answer must not depend on
 * bits past the range (a scan to the end would take seconds here).
 */
static void
test_range_set (void)
{
  const uint64_t n = UINT64_C(1) << 40;
  struct dirtymap *m = dirtymap_new (n);
  uint64_t i;

  CHECK (m != NULL);
  CHECK (!dirtymap_range_set (m, 0, 1));
  CHECK (dirtymap_set_range (m, 100, 200) == 1);
  CHECK (dirtymap_range_set (m, 100, 200));
  CHECK (dirtymap_range_set (m, 150, 1));
  CHECK (dirtymap_range_set (m, 299, 1));
  CHECK (!dirtymap_range_set (m, 99, 2));
  CHECK (!dirtymap_range_set (m, 299, 2));
  CHECK (!dirtymap_range_set (m, 100, 201));
  /* Across a leaf boundary. */
  CHECK (dirtymap_set_range (m, DIRTYMAP_LEAF_BITS - 5, 10) == 1);
  CHECK (dirtymap_range_set (m, DIRTYMAP_LEAF_BITS - 5, 10));
  CHECK (!dirtymap_range_set (m, DIRTYMAP_LEAF_BITS - 5, 11));
  /* Clipped at the end of the map. */
  CHECK (dirtymap_set_range (m, n - 3, 3) == 1);
  CHECK (dirtymap_range_set (m, n - 3, 100));
  CHECK (dirtymap_range_set (m, n - 1, UINT64_MAX));
  for (i = 0; i < 100000; ++i)
    CHECK (dirtymap_range_set (m, 100 + i % 200, 1));
  dirtymap_free (m);
}

static void *
setter (void *arg)
{
  uint64_t t = (uintptr_t) arg, i;

  for (i = 0; i < 20000; ++i) {
    uint64_t first = (i * 7919 + t * 104729) % (8 * DIRTYMAP_LEAF_BITS);
    if (dirtymap_set_range (shared_map, first, 1 + i % 9) == -1)
      abort ();
  }
  return NULL;
}

static void
test_concurrent_exact (void)
{
  struct dirtymap *expected = dirtymap_new (8 * DIRTYMAP_LEAF_BITS);
  pthread_t th[THREADS];
  uint64_t t, i;

  shared_map = dirtymap_new (8 * DIRTYMAP_LEAF_BITS);
  for (t = 0; t < THREADS; ++t)
    CHECK (pthread_create (&th[t], NULL, setter, (void *) (uintptr_t) t) == 0);
  for (t = 0; t < THREADS; ++t)
    pthread_join (th[t], NULL);

  for (t = 0; t < THREADS; ++t)
    for (i = 0; i < 20000; ++i)
      dirtymap_set_range (expected,
                          (i * 7919 + t * 104729) % (8 * DIRTYMAP_LEAF_BITS),
                          1 + i % 9);
  CHECK_EQ_U64 (dirtymap_count (shared_map), dirtymap_count (expected));
  for (i = 0; i < 8 * DIRTYMAP_LEAF_BITS; ++i)
    CHECK (dirtymap_test (shared_map, i) == dirtymap_test (expected, i));
  dirtymap_free (shared_map);
  dirtymap_free (expected);
}

int
main (void)
{
  test_ranges_and_edges ();
  test_huge_map_is_cheap ();
  test_import_export ();
  test_merge_scaled ();
  test_merge_expanded ();
  test_range_set ();
  test_concurrent_exact ();
  return 0;
}
