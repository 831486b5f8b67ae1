/* Unit tests for the sidecar life cycle: create, begin tracking, store,
 * reopen, with the layout checked structure by structure.
 */
#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "byte-order.h"
#include "sidecar.h"
#include "unit-test.h"

static char dir[] = "/tmp/test-sidecar-XXXXXX";
static char path[64];

/* Sum of the refcounts of every cluster up to the end of the file;
 * each store must leave it unchanged once the old clusters are freed.
 */
static uint64_t
total_refcount (struct sidecar *sc)
{
  uint64_t c, total = 0;
  uint64_t clusters = sc->refcounts.table_entries
    * sc->refcounts.entries_per_block;

  for (c = 0; c < clusters; ++c)
    total += refcounts_get (&sc->refcounts, c);
  return total;
}

static void
test_create_begin_store_reopen (void)
{
  const uint64_t size = (UINT64_C(1) << 30) + 12345;   /* odd tail */
  struct sidecar *sc;
  struct sidecar_bitmap *bm, *b2;
  uint64_t refs_after_first_store, granules;

  CHECK (sidecar_create (path, size) == 0);
  CHECK (sidecar_create (path, size) == -1);          /* never clobbers */

  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  CHECK_EQ_U64 (sc->header.size, size);
  CHECK_EQ_U64 (sc->nr_bitmaps, 0);
  CHECK_EQ_U64 (sc->cluster_size, 65536);

  bm = sidecar_add_bitmap (sc, "b0", 16);
  CHECK (bm != NULL);
  CHECK (sidecar_add_bitmap (sc, "b0", 16) == NULL);  /* duplicate */
  CHECK_ERROR_MENTIONS ("already exists");
  b2 = sidecar_add_bitmap (sc, "fine", 9);
  CHECK (b2 != NULL);
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (bm->entry.flags == (QCOW2_BITMAP_FLAG_AUTO | QCOW2_BITMAP_FLAG_IN_USE));
  CHECK (bm->on_disk && b2->on_disk);

  granules = sidecar_bitmap_granules (sc, bm);
  CHECK_EQ_U64 (granules, (size + 65535) / 65536);
  CHECK (dirtymap_set_range (bm->data, 0, 1) == 1);
  CHECK (dirtymap_set_range (bm->data, granules - 1, 1) == 1);
  CHECK (dirtymap_set_range (b2->data, 12345, 100000) == 1);
  CHECK (sidecar_store (sc) == 0);
  CHECK (bm->entry.flags == QCOW2_BITMAP_FLAG_AUTO);
  refs_after_first_store = total_refcount (sc);
  sidecar_close (sc);

  /* Reopened, both bitmaps are consistent with the same bits. */
  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  CHECK_EQ_U64 (sc->nr_bitmaps, 2);
  bm = sidecar_find (sc, "b0");
  b2 = sidecar_find (sc, "fine");
  CHECK (bm && b2 && !bm->inconsistent && !b2->inconsistent);
  CHECK_EQ_U64 (dirtymap_count (bm->data), 2);
  CHECK (dirtymap_test (bm->data, granules - 1));
  CHECK_EQ_U64 (dirtymap_count (b2->data), 100000);
  CHECK_EQ_U64 (dirtymap_next_set (b2->data, 0), 12345);

  /* Track only b0 this time; the in-place IN_USE path is taken. */
  bm->tracked = true;
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (dirtymap_set_range (bm->data, 5, 1) == 1);
  CHECK (sidecar_store (sc) == 0);
  /* Freed clusters were reused: no growth in referenced clusters. */
  CHECK_EQ_U64 (total_refcount (sc), refs_after_first_store);
  sidecar_close (sc);

  sc = sidecar_open (path, false);
  CHECK (sc != NULL);
  bm = sidecar_find (sc, "b0");
  CHECK_EQ_U64 (dirtymap_count (bm->data), 3);
  CHECK (sidecar_find (sc, "fine")->entry.flags == QCOW2_BITMAP_FLAG_AUTO);
  sidecar_close (sc);
}

static void
test_in_use_left_behind (void)
{
  struct sidecar *sc = sidecar_open (path, true);
  struct sidecar_bitmap *bm;

  CHECK (sc != NULL);
  sidecar_find (sc, "b0")->tracked = true;
  CHECK (sidecar_begin_tracking (sc) == 0);
  sidecar_close (sc);                 /* "crash": no store */

  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  bm = sidecar_find (sc, "b0");
  CHECK (bm->inconsistent && bm->data == NULL);
  CHECK (!sidecar_find (sc, "fine")->inconsistent);
  /* Storing the others writes the inconsistent entry back unchanged. */
  sidecar_find (sc, "fine")->tracked = true;
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);

  sc = sidecar_open (path, false);
  CHECK (sc != NULL);
  CHECK (sidecar_find (sc, "b0")->inconsistent);
  CHECK (!sidecar_find (sc, "fine")->inconsistent);
  sidecar_close (sc);
}

/* A table entry aliasing the refcount table must be refused before a
 * store could free that cluster; the file is left untouched.
 */
static void
test_overlap_refused (void)
{
  struct sidecar *sc = sidecar_open (path, false);
  uint64_t table_offset, refcount_table;
  uint8_t entry[8];
  int fd;

  CHECK (sc != NULL);
  table_offset = sidecar_find (sc, "fine")->entry.table_offset;
  refcount_table = sc->header.refcount_table_offset;
  sidecar_close (sc);

  fd = open (path, O_RDWR);
  CHECK (fd >= 0);
  store_be64 (entry, refcount_table);
  CHECK (pwrite (fd, entry, 8, table_offset) == 8);
  close (fd);

  clear_last_error ();
  CHECK (sidecar_open (path, true) == NULL);
  CHECK_ERROR_MENTIONS ("overlaps another structure");
  CHECK_ERROR_MENTIONS ("bitmap 'fine'");
}

static void
test_limits (void)
{
  char name[1100];
  struct sidecar *sc;

  unlink (path);
  CHECK (sidecar_create (path, UINT64_C(1) << 50) == 0);  /* 1 PiB */
  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  /* 64K granularity needs 2 GiB of bitmap: QEMU's limit is 512 MiB. */
  CHECK (sidecar_add_bitmap (sc, "big", 16) == NULL);
  CHECK_ERROR_MENTIONS ("dirtybitmap-granularity=262144");
  CHECK (sidecar_add_bitmap (sc, "big", 18) != NULL);
  memset (name, 'n', 1024);
  name[1024] = '\0';
  CHECK (sidecar_add_bitmap (sc, name, 18) == NULL);
  CHECK_ERROR_MENTIONS ("1 to 1023");
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);
}

int
main (void)
{
  CHECK (mkdtemp (dir) != NULL);
  snprintf (path, sizeof path, "%s/sidecar.qcow2", dir);
  test_create_begin_store_reopen ();
  test_in_use_left_behind ();
  test_overlap_refused ();
  test_limits ();
  unlink (path);
  rmdir (dir);
  return 0;
}
