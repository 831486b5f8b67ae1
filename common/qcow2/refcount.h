/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The sidecar's refcount structures, held in memory while it is open,
 * and the cluster allocator built on them.
 *
 * Allocation takes the lowest run of free clusters, so clusters freed
 * by one store are reused by the next and the file does not grow run
 * after run.  Changes stay in memory until refcounts_write; the caller
 * orders that write, and the flush after it, against the metadata that
 * references the clusters, as qcow2 requires: refcounts first, then
 * the references; references dropped first, then the refcounts.
 */
#ifndef DIRTYBITMAP_REFCOUNT_H
#define DIRTYBITMAP_REFCOUNT_H

#include <stdbool.h>
#include <stdint.h>

#include "qcow2-format.h"

struct refcounts {
  const char *path;
  int fd;
  unsigned cluster_bits;
  unsigned order;
  uint64_t entries_per_block;
  uint64_t table_offset;
  uint64_t table_entries;
  uint64_t *table;              /* refcount block offsets, 0 = none */
  uint8_t **blocks;             /* loaded blocks, NULL where table is 0 */
  bool *block_dirty;
  bool *table_entry_dirty;
  uint64_t search_start;        /* no free cluster below this */
};

/* Load the refcount table and every block it points to; the table and
 * blocks are bounded by the file, which bounds the memory used.
 */
extern int refcounts_load (struct refcounts *rc, const char *path, int fd,
                           const struct qcow2_header *h, uint64_t file_size);
extern void refcounts_free (struct refcounts *rc);

extern uint64_t refcounts_get (const struct refcounts *rc, uint64_t cluster);

/* Allocate N contiguous free clusters with refcount 1, creating
 * refcount blocks as needed.  Returns the byte offset, or 0 after
 * nbdkit_error.
 */
extern uint64_t refcounts_alloc (struct refcounts *rc, uint64_t n);

/* Drop one reference from each of N clusters at byte OFFSET. */
extern int refcounts_release (struct refcounts *rc, uint64_t offset,
                              uint64_t n);

/* Set the refcount of CLUSTER to 0, whatever it was. */
extern void refcounts_clear (struct refcounts *rc, uint64_t cluster);

/* Write changed blocks, then changed table entries (no flush). */
extern int refcounts_write (struct refcounts *rc);

#endif /* DIRTYBITMAP_REFCOUNT_H */
