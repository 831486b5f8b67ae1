/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* A new virtual size for the sidecar, when the export it describes
 * grew or shrank: what qemu-img resize does to an image holding
 * bitmaps (a new size in the header, every bitmap's table sized for
 * it), except that the area a disk gains is marked dirty in every
 * bitmap, since nothing recorded what it held.  The new size and
 * tables reach the disk at the next commit, whose header write is the
 * commit point.
 */

#include <config.h>

#include <inttypes.h>
#include <stdlib.h>

#include <nbdkit-filter.h>

#include "checked-io.h"
#include "sidecar-internal.h"

/* L1 entries the clusters of the current L1 table hold: the table may
 * grow into them without moving.
 */
static uint64_t
l1_capacity (const struct sidecar *sc)
{
  uint64_t bytes = (uint64_t) sc->header.l1_size * 8;

  return DIV_ROUND_UP (bytes, sc->cluster_size) * sc->cluster_size / 8;
}

int
sidecar_check_resize (const struct sidecar *sc, uint64_t new_size)
{
  size_t i;

  if (qcow2_l1_entries_needed (&sc->header, new_size) > l1_capacity (sc)) {
    nbdkit_error ("%s: a virtual size of %" PRIu64 " bytes needs a larger "
                  "L1 table than the sidecar has room for, which "
                  "dirtybitmap-resize=adopt does not move; resize it with "
                  "'qemu-img resize %s %" PRIu64 "' while nbdkit is stopped",
                  sc->path, new_size, sc->path, new_size);
    return -1;
  }
  for (i = 0; i < sc->nr_bitmaps; ++i) {
    const struct sidecar_bitmap *bm = sc->bitmaps[i];

    if (qcow2_bitmap_size_check (sc->path, bm->entry.name, new_size,
                                 bm->entry.granularity_bits,
                                 sc->header.cluster_bits) == -1)
      return -1;
  }
  return 0;
}

/* BM's data for NEW_SIZE bytes: the old bits up to the new end, and
 * every granule that holds any byte beyond the old end dirty.
 */
static int
resize_data (struct sidecar *sc, struct sidecar_bitmap *bm,
             uint64_t new_size)
{
  unsigned bits = bm->entry.granularity_bits;
  uint64_t granules = qcow2_blocks_covering (new_size, bits);
  uint64_t first_new = sc->header.size >> bits;
  struct dirtymap *data = dirtymap_new (granules);

  if (data == NULL)
    return -1;
  if (dirtymap_merge_rescaled (data, bits, bm->data, bits) == -1 ||
      (first_new < granules &&
       dirtymap_set_range (data, first_new, granules - first_new) == -1)) {
    dirtymap_free (data);
    return -1;
  }
  /* The old table, to free its clusters once the commit is done. */
  if (bm->on_disk && bm->table == NULL &&
      sidecar_load_bitmap_table (sc, bm, false) == -1) {
    dirtymap_free (data);
    return -1;
  }
  dirtymap_free (bm->data);
  bm->data = data;
  bm->modified = true;
  return 0;
}

/* New L1 entries must read as unallocated.  Those bytes lie in the
 * table's own clusters, past its end, where nothing refers to them
 * until the header says so.
 */
static int
zero_l1_tail (struct sidecar *sc, uint64_t entries)
{
  uint64_t first = sc->header.l1_size;
  size_t len = (entries - first) * 8;
  uint8_t *zeros;
  int r;

  if (entries <= first)
    return 0;
  zeros = calloc (1, len);
  if (zeros == NULL) {
    nbdkit_error ("%s: calloc: %m", sc->path);
    return -1;
  }
  r = write_fully (sc->fd, sc->path, "L1 table", zeros, len,
                   sc->header.l1_table_offset + first * 8);
  free (zeros);
  if (r == 0)
    sc->header.l1_size = entries;
  return r;
}

int
sidecar_resize (struct sidecar *sc, uint64_t new_size)
{
  size_t i;

  if (!sc->writable) {
    nbdkit_error ("%s: opened read-only, cannot be resized", sc->path);
    return -1;
  }
  if (sidecar_check_resize (sc, new_size) == -1)
    return -1;
  /* A bitmap in use without data keeps its table: QEMU checks the
   * table's size only for bitmaps not in use, and one reset later gets
   * a table for the new size.
   */
  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (!sc->bitmaps[i]->inconsistent &&
        resize_data (sc, sc->bitmaps[i], new_size) == -1)
      return -1;
  if (zero_l1_tail (sc, qcow2_l1_entries_needed (&sc->header, new_size))
      == -1)
    return -1;
  sc->header.size = new_size;
  sc->header_changed = true;
  return 0;
}
