/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Loading a sidecar's bitmaps: the directory, then the tables, then
 * the data, each cluster claimed by one structure (sidecar-claims.c)
 * before it is read.
 */

#include <config.h>

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "checked-io.h"
#include "dirtymap.h"
#include "sidecar-internal.h"

/* Read and check a bitmap's table.  Its data is read only once every
 * cluster is known to belong to one structure (sidecar-claims.c), so
 * that no input can make us read, or allocate for, the same cluster
 * many times.  The table of a bitmap in use may have any size (QEMU
 * never checks it), which only EXACT checks.
 */
int
sidecar_load_bitmap_table (struct sidecar *sc, struct sidecar_bitmap *bm,
                           bool exact)
{
  const struct qcow2_bitmap_entry *e = &bm->entry;
  uint64_t expected = qcow2_bitmap_table_size (sc->header.size,
                                               e->granularity_bits,
                                               sc->header.cluster_bits);
  uint8_t *raw;
  int r = -1;

  if (exact && e->table_size != expected) {
    nbdkit_error ("%s: bitmap '%s': bitmap_table_size %" PRIu32 " does not "
                  "match the virtual size (%" PRIu64 " bytes needs %" PRIu64
                  " entries)", sc->path, e->name, e->table_size,
                  sc->header.size, expected);
    return -1;
  }
  /* The directory decoder bounded table_size by QEMU's limits and the
   * table by the file size.
   */
  raw = malloc ((size_t) e->table_size * 8);
  bm->table = calloc (e->table_size, sizeof bm->table[0]);
  bm->all_ones = calloc (e->table_size, sizeof bm->all_ones[0]);
  if (!raw || !bm->table || !bm->all_ones) {
    nbdkit_error ("%s: bitmap '%s': allocating: %m", sc->path, e->name);
    goto out;
  }
  if (read_fully (sc->fd, sc->path, "bitmap table", raw,
                  (size_t) e->table_size * 8, e->table_offset) == -1 ||
      qcow2_bitmap_table_decode (sc->path, e->name, raw, e->table_size,
                                 sc->header.cluster_bits, sc->file_size,
                                 bm->table, bm->all_ones) == -1)
    goto out;
  r = 0;

 out:
  free (raw);
  return r;
}

/* Read a bitmap's data, its table loaded and its clusters checked.
 * *ALL_ONES_BUDGET is what all-ones table entries may still expand to:
 * they take no room in the file, so without a bound a small file could
 * make us allocate far more memory than it holds.
 */
static int
load_bitmap_bits (struct sidecar *sc, struct sidecar_bitmap *bm,
                  uint64_t *all_ones_budget)
{
  const struct qcow2_bitmap_entry *e = &bm->entry;
  uint8_t *cluster = malloc (sc->cluster_size);
  uint64_t i;
  int r = -1;

  bm->data = dirtymap_new (sidecar_bitmap_granules (sc, bm));
  if (!cluster || !bm->data) {
    nbdkit_error ("%s: bitmap '%s': allocating: %m", sc->path, e->name);
    goto out;
  }
  for (i = 0; i < e->table_size; ++i) {
    uint64_t first_bit = i * sc->cluster_size * 8;

    if (bm->all_ones[i]) {
      if (*all_ones_budget < sc->cluster_size) {
        nbdkit_error ("%s: bitmap '%s': more all-ones table entries than "
                      "the file's size can justify (QEMU never writes "
                      "them); the sidecar is not one QEMU made",
                      sc->path, e->name);
        goto out;
      }
      *all_ones_budget -= sc->cluster_size;
      if (dirtymap_set_range (bm->data, first_bit, sc->cluster_size * 8)
          == -1)
        goto out;
    }
    else if (bm->table[i] != 0) {
      if (read_fully (sc->fd, sc->path, "bitmap data", cluster,
                      sc->cluster_size, bm->table[i]) == -1)
        goto out;
      if (dirtymap_import (bm->data, first_bit, cluster, sc->cluster_size)
          == -1) {
        nbdkit_error ("%s: bitmap '%s': data cluster %" PRIu64 " at 0x%"
                      PRIx64 " has bits set past the end of the disk",
                      sc->path, e->name, i, bm->table[i]);
        goto out;
      }
    }
  }
  r = 0;

 out:
  free (cluster);
  return r;
}

int
sidecar_load_directory (struct sidecar *sc)
{
  struct qcow2_extension *bitmaps_ext =
    sidecar_find_extension (sc, QCOW2_EXT_BITMAPS);
  struct qcow2_bitmaps_ext ext;
  struct qcow2_bitmap_entry *entries = NULL;
  uint8_t *dir = NULL;
  uint32_t i;
  int r = -1;

  if (bitmaps_ext == NULL)
    return 0;
  if (!(sc->header.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
    /* A program that does not know bitmaps wrote the file after QEMU
     * did, so the bitmaps may be stale: QEMU ignores them, as we do.
     */
    nbdkit_debug ("%s: bitmaps autoclear bit is clear: ignoring the "
                  "bitmaps extension, as QEMU does", sc->path);
    return 0;
  }
  if (qcow2_bitmaps_ext_decode (sc->path, bitmaps_ext,
                                sc->header.cluster_bits, sc->file_size,
                                &ext) == -1)
    return -1;

  /* Both bounded by the format's limits and the file's size. */
  dir = malloc (ext.directory_size);
  entries = calloc (ext.nb_bitmaps, sizeof *entries);
  sc->bitmaps = calloc (ext.nb_bitmaps, sizeof sc->bitmaps[0]);
  if (!dir || !entries || !sc->bitmaps) {
    nbdkit_error ("%s: allocating the bitmap directory: %m", sc->path);
    goto out;
  }
  if (read_fully (sc->fd, sc->path, "bitmap directory", dir,
                  ext.directory_size, ext.directory_offset) == -1 ||
      qcow2_bitmap_directory_decode (sc->path, dir, ext.directory_size,
                                     ext.nb_bitmaps, sc->header.cluster_bits,
                                     sc->file_size, entries) == -1)
    goto out;
  sc->dir_offset = ext.directory_offset;
  sc->dir_size = ext.directory_size;

  for (i = 0; i < ext.nb_bitmaps; ++i) {
    struct sidecar_bitmap *bm = calloc (1, sizeof *bm);

    if (bm == NULL) {
      nbdkit_error ("%s: calloc: %m", sc->path);
      goto out;
    }
    sc->bitmaps[sc->nr_bitmaps++] = bm;
    bm->entry = entries[i];
    bm->on_disk = true;
    bm->inconsistent = (bm->entry.flags & QCOW2_BITMAP_FLAG_IN_USE) != 0;
  }
  r = 0;

 out:
  free (dir);
  free (entries);
  return r;
}

/* Whose data is read: the consistent bitmaps, those the journal
 * protects, and the journal itself when its record is trusted.  QEMU
 * never reads the table or data of any other inconsistent bitmap, and
 * neither do we, unless asked to reset them.
 */
static bool
data_wanted (const struct sidecar *sc, const struct sidecar_bitmap *bm)
{
  return !bm->inconsistent || bm->recovered ||
    (bm == sc->old_journal &&
     sidecar_journal_trusted ((struct sidecar *) sc));
}

static bool
table_wanted (const struct sidecar *sc, const struct sidecar_bitmap *bm,
              unsigned flags)
{
  return data_wanted (sc, bm) || bm == sc->old_journal ||
    (flags & SIDECAR_LOAD_IN_USE);
}

static bool
tables_complete (const struct sidecar *sc)
{
  size_t i;

  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (sc->bitmaps[i]->table == NULL)
      return false;
  return true;
}

/* Load the bitmaps, checking as we go that every cluster belongs to
 * one structure.
 */
int
sidecar_load_bitmaps (struct sidecar *sc, unsigned flags)
{
  struct sidecar_claims *cc = sidecar_claims_new (sc);
  uint64_t all_ones_budget = sc->file_size;
  size_t i;
  int r = -1;

  if (cc == NULL || sidecar_claim_metadata (cc) == -1)
    goto out;
  for (i = 0; i < sc->nr_bitmaps; ++i) {
    struct sidecar_bitmap *bm = sc->bitmaps[i];
    if (table_wanted (sc, bm, flags) &&
        sidecar_load_bitmap_table (sc, bm, data_wanted (sc, bm)) == -1)
      goto out;
  }
  if (sidecar_claim_data (cc) == -1)
    goto out;
  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (data_wanted (sc, sc->bitmaps[i]) &&
        load_bitmap_bits (sc, sc->bitmaps[i], &all_ones_budget) == -1)
      goto out;
  /* Reclaiming needs every table, even those of bitmaps in use that
   * are not otherwise loaded.
   */
  if ((flags & SIDECAR_WRITABLE) && tables_complete (sc) &&
      sidecar_reclaim_leaks (cc) == -1)
    goto out;
  r = 0;

 out:
  sidecar_claims_free (cc);
  return r;
}
