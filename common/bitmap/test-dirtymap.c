/* Unit tests for the sparse lock-free bitmap. */
#include <config.h>

#include <pthread.h>
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

/* Threads set interleaved and overlapping ranges; the result must be
 * exactly the union, whoever allocated each leaf.
 */
#define THREADS 8
static struct dirtymap *shared_map;

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
  test_concurrent_exact ();
  return 0;
}
