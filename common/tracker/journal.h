/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Commit before write: a write may reach the plugin only once the
 * region it touches is marked dirty on stable storage, so that a crash
 * at any instant loses no mark (dm-era's rule).
 *
 * The marks are bits of a coarse bitmap whose data lives in clusters
 * preallocated in the sidecar and is rewritten in place.  A request
 * whose regions are durable already costs one lock-free test.  Others
 * set their bits in memory and wait for a commit: one thread at a time
 * writes every changed page of the bitmap and calls fdatasync, and all
 * the requests whose bits it wrote go on together (group commit).
 * Bits only ever get set, so a torn page write still holds every bit
 * that an earlier commit made durable.
 */
#ifndef DIRTYBITMAP_JOURNAL_H
#define DIRTYBITMAP_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct journal;

struct journal_stats {
  uint64_t commits;             /* fdatasync calls */
  uint64_t pages_written;
  uint64_t waits;               /* requests that waited for a commit */
};

/* Where the marks go: the bitmap data of the sidecar's journal, in
 * qcow2's bit order (sidecar_journal_write and sidecar_journal_sync).
 * WRITE puts LEN bytes at byte OFFSET of the data, never across a
 * cluster; SYNC makes what was written durable.  Both return -1 after
 * nbdkit_error.
 */
struct journal_store {
  int (*write) (void *opaque, uint64_t offset, const void *buf, size_t len);
  int (*sync) (void *opaque);
  void *opaque;
};

/* A journal of NR_BITS bits of 1 << GRANULARITY_BITS bytes each, kept
 * in STORE, whose data is all zero and lies in clusters of
 * CLUSTER_SIZE bytes; PATH names it in messages.  NULL after
 * nbdkit_error.
 */
extern struct journal *journal_new (const struct journal_store *store,
                                    const char *path,
                                    unsigned granularity_bits,
                                    uint64_t nr_bits,
                                    uint64_t cluster_size);
extern void journal_free (struct journal *j);

/* Make [OFFSET, OFFSET + COUNT) durable as dirty before returning 0.
 * Thread-safe.  Returns -1 after nbdkit_error if the marks could not
 * be written or flushed; after a failed flush nothing more is trusted
 * to reach the disk, so every later request that needs a commit fails
 * too.
 */
extern int journal_mark (struct journal *j, uint64_t offset, uint64_t count);

/* Begin an epoch: from now on marks set the epoch's bits, and a region
 * counts as durable only once it is durable in this epoch.  The
 * caller must then make sure that every mark begun before the call
 * has finished (the tracker takes the recorder's map before the durable
 * mark and marks it after, under one announcement, and folds right
 * after beginning an epoch, which waits for them), and say so with
 * journal_epoch_settled; until then a new epoch is not begun and the
 * journal not truncated.  -1 after nbdkit_error (memory), with the
 * epoch unchanged.  Thread-safe.
 */
extern int journal_begin_epoch (struct journal *j);
extern void journal_epoch_settled (struct journal *j);

/* Whether any region was marked since the journal was created or last
 * truncated.
 */
extern bool journal_has_marks (struct journal *j);

/* Once every bitmap the journal protects is durable with every write
 * made before the current epoch began: rewrite the journal in place to
 * hold only the epoch's bits, and make it durable.  Does nothing while
 * the epoch is not settled.  -1 after nbdkit_error if it could not be
 * written or flushed; the journal then fails like after any failed
 * commit.  Thread-safe.
 */
extern int journal_truncate (struct journal *j);

extern void journal_get_stats (struct journal *j, struct journal_stats *s);

#endif /* DIRTYBITMAP_JOURNAL_H */
