/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <inttypes.h>

#include <nbdkit-filter.h>

#include "checked-io.h"
#include "dirtymap.h"
#include "refcount.h"

/* Decode every entry of the refcount table RAW into rc->table, and
 * check that no two share a block.
 */
static int
reftable_decode (struct refcounts *rc, const uint8_t *raw,
                 uint64_t file_size)
{
  struct dirtymap *seen;
  uint64_t i;
  int r = -1;

  seen = dirtymap_new ((file_size >> rc->cluster_bits) + 1);
  if (seen == NULL)
    return -1;
  for (i = 0; i < rc->table_entries; ++i) {
    if (qcow2_reftable_entry_decode (rc->path, i, raw,
                                     rc->cluster_bits, file_size,
                                     &rc->table[i]) == -1)
      goto out;
    if (rc->table[i] == 0)
      continue;
    if (dirtymap_set_range (seen, rc->table[i] >> rc->cluster_bits, 1) != 1) {
      nbdkit_error ("%s: refcount table entry %" PRIu64 " points to the "
                    "refcount block at 0x%" PRIx64 " that another entry "
                    "uses too; the sidecar is corrupt", rc->path, i,
                    rc->table[i]);
      goto out;
    }
  }
  r = 0;
 out:
  dirtymap_free (seen);
  return r;
}

int
refcounts_load (struct refcounts *rc, const char *path, int fd,
                const struct qcow2_header *h, uint64_t file_size)
{
  uint64_t cluster_size = UINT64_C(1) << h->cluster_bits;
  uint64_t table_bytes = (uint64_t) h->refcount_table_clusters << h->cluster_bits;
  uint8_t *raw = NULL;
  uint64_t i;

  memset (rc, 0, sizeof *rc);
  rc->path = path;
  rc->fd = fd;
  rc->cluster_bits = h->cluster_bits;
  rc->order = h->refcount_order;
  rc->entries_per_block = (cluster_size * 8) >> h->refcount_order;
  rc->table_offset = h->refcount_table_offset;
  rc->table_entries = table_bytes / 8;

  /* The header decoder bounded table_bytes by 8 MiB and the file. */
  raw = malloc (table_bytes);
  rc->table = calloc (rc->table_entries, sizeof rc->table[0]);
  rc->blocks = calloc (rc->table_entries, sizeof rc->blocks[0]);
  rc->block_dirty = calloc (rc->table_entries, sizeof (bool));
  rc->table_entry_dirty = calloc (rc->table_entries, sizeof (bool));
  if (!raw || !rc->table || !rc->blocks || !rc->block_dirty ||
      !rc->table_entry_dirty) {
    nbdkit_error ("%s: allocating the refcount table: %m", path);
    goto err;
  }
  if (read_fully (fd, path, "refcount table", raw, table_bytes,
                  rc->table_offset) == -1)
    goto err;

  /* Check every entry, and that no two share a block, before reading
   * any block: aliased entries would make us allocate a cluster of
   * memory per entry for one cluster of the file.
   */
  if (reftable_decode (rc, raw, file_size) == -1)
    goto err;
  for (i = 0; i < rc->table_entries; ++i) {
    if (rc->table[i] == 0)
      continue;
    rc->blocks[i] = malloc (cluster_size);
    if (rc->blocks[i] == NULL) {
      nbdkit_error ("%s: allocating refcount block %" PRIu64 ": %m",
                    path, i);
      goto err;
    }
    if (read_fully (fd, path, "refcount block", rc->blocks[i], cluster_size,
                    rc->table[i]) == -1)
      goto err;
  }
  free (raw);
  return 0;

 err:
  free (raw);
  refcounts_free (rc);
  return -1;
}

void
refcounts_free (struct refcounts *rc)
{
  uint64_t i;

  if (rc->blocks)
    for (i = 0; i < rc->table_entries; ++i)
      free (rc->blocks[i]);
  free (rc->blocks);
  free (rc->table);
  free (rc->block_dirty);
  free (rc->table_entry_dirty);
  memset (rc, 0, sizeof *rc);
}

uint64_t
refcounts_get (const struct refcounts *rc, uint64_t cluster)
{
  uint64_t b = cluster / rc->entries_per_block;

  if (b >= rc->table_entries || rc->blocks[b] == NULL)
    return 0;
  return qcow2_refcount_get (rc->blocks[b], rc->order,
                             cluster % rc->entries_per_block);
}

static int
refcounts_adjust (struct refcounts *rc, uint64_t cluster, int delta)
{
  uint64_t b = cluster / rc->entries_per_block;
  uint64_t max = rc->order == 6 ? UINT64_MAX
                                : (UINT64_C(1) << (1u << rc->order)) - 1;
  uint64_t v = refcounts_get (rc, cluster);

  if (b >= rc->table_entries || rc->blocks[b] == NULL ||
      (delta < 0 && v == 0) || (delta > 0 && v == max)) {
    nbdkit_error ("%s: refcount of cluster %" PRIu64 " is %" PRIu64
                  " and cannot be %s; repair the sidecar with "
                  "'qemu-img check -r all %s'", rc->path, cluster, v,
                  delta < 0 ? "decreased" : "increased", rc->path);
    return -1;
  }
  qcow2_refcount_set (rc->blocks[b], rc->order,
                      cluster % rc->entries_per_block, v + delta);
  rc->block_dirty[b] = true;
  return 0;
}

/* Give refcount block B a home: the first cluster of the range it
 * describes, which is free because nothing can be counted in a range
 * without a block.  The block then counts itself.
 */
static int
create_block (struct refcounts *rc, uint64_t b)
{
  uint64_t first = b * rc->entries_per_block;

  if (b >= rc->table_entries) {
    nbdkit_error ("%s: the refcount table is full (%" PRIu64 " blocks) and "
                  "growing it is not supported; copy the bitmaps to a new "
                  "sidecar with larger clusters", rc->path, rc->table_entries);
    return -1;
  }
  rc->blocks[b] = calloc (1, UINT64_C(1) << rc->cluster_bits);
  if (rc->blocks[b] == NULL) {
    nbdkit_error ("%s: allocating a refcount block: %m", rc->path);
    return -1;
  }
  rc->table[b] = first << rc->cluster_bits;
  rc->table_entry_dirty[b] = true;
  rc->block_dirty[b] = true;
  qcow2_refcount_set (rc->blocks[b], rc->order, 0, 1);
  return 0;
}

uint64_t
refcounts_alloc (struct refcounts *rc, uint64_t n)
{
  uint64_t start = rc->search_start, c = start, i;
  uint64_t first_free = UINT64_MAX;

  if (n == 0) {
    nbdkit_error ("%s: allocating no clusters (an empty table?)", rc->path);
    return 0;
  }
  /* Invariant: [start, c) are free clusters. */
  while (c - start < n) {
    uint64_t b = c / rc->entries_per_block;

    if (b >= rc->table_entries || rc->blocks[b] == NULL) {
      /* C is the first cluster of its range we look at, so the new
       * block lands either on C (seen as used next time round) or
       * below START.
       */
      if (create_block (rc, b) == -1)
        return 0;
      continue;
    }
    if (refcounts_get (rc, c) != 0)
      start = c + 1;
    else if (first_free == UINT64_MAX)
      first_free = c;
    ++c;
  }
  for (i = 0; i < n; ++i)
    if (refcounts_adjust (rc, start + i, +1) == -1)
      return 0;
  /* Everything below the first free cluster seen is in use, so the
   * next search starts there (or past this run if it began there):
   * without this every allocation would rescan from cluster 0.
   */
  rc->search_start = first_free == start ? start + n : first_free;
  return start << rc->cluster_bits;
}

void
refcounts_clear (struct refcounts *rc, uint64_t cluster)
{
  uint64_t b = cluster / rc->entries_per_block;

  if (refcounts_get (rc, cluster) == 0)
    return;
  qcow2_refcount_set (rc->blocks[b], rc->order,
                      cluster % rc->entries_per_block, 0);
  rc->block_dirty[b] = true;
  if (cluster < rc->search_start)
    rc->search_start = cluster;
}

int
refcounts_release (struct refcounts *rc, uint64_t offset, uint64_t n)
{
  uint64_t first = offset >> rc->cluster_bits, i;

  for (i = 0; i < n; ++i) {
    if (refcounts_adjust (rc, first + i, -1) == -1)
      return -1;
    if (refcounts_get (rc, first + i) == 0 && first + i < rc->search_start)
      rc->search_start = first + i;
  }
  return 0;
}

int
refcounts_write (struct refcounts *rc)
{
  uint64_t i;

  for (i = 0; i < rc->table_entries; ++i) {
    if (!rc->block_dirty[i])
      continue;
    if (write_fully (rc->fd, rc->path, "refcount block", rc->blocks[i],
                     UINT64_C(1) << rc->cluster_bits, rc->table[i]) == -1)
      return -1;
    rc->block_dirty[i] = false;
  }
  for (i = 0; i < rc->table_entries; ++i) {
    uint8_t raw[8];

    if (!rc->table_entry_dirty[i])
      continue;
    qcow2_reftable_encode (&rc->table[i], 1, raw);
    if (write_fully (rc->fd, rc->path, "refcount table entry", raw, 8,
                     rc->table_offset + i * 8) == -1)
      return -1;
    rc->table_entry_dirty[i] = false;
  }
  return 0;
}
