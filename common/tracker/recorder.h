/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The map every write marks, replaced whole when the set of recording
 * bitmaps changes, so that a write costs the same whatever their
 * number: writes mark one map, and the map is folded into the
 * recording bitmaps only when they are read, stored or changed.
 *
 * Marking takes no lock.  Each writer thread announces itself in a
 * slot of its own (its own cache line) while it marks, and a swap
 * waits until every slot has been seen idle once after the new map
 * was published: from then on no writer can still be marking the old
 * map, which can be folded knowing it holds every earlier write and
 * none later.
 */
#ifndef DIRTYBITMAP_RECORDER_H
#define DIRTYBITMAP_RECORDER_H

#include <stdint.h>

#include "dirtymap.h"

struct recorder;

/* A recorder for a disk of SIZE bytes, marking granules of
 * 1 << BITS bytes.  NULL after nbdkit_error.
 */
extern struct recorder *recorder_new (uint64_t size, unsigned bits);
extern void recorder_free (struct recorder *r);

/* Mark [OFFSET, OFFSET + COUNT).  Lock-free; -1 after nbdkit_error if
 * memory ran out.
 */
extern int recorder_mark (struct recorder *r, uint64_t offset,
                          uint64_t count);

/* recorder_mark in three steps, around other work that a swap must
 * wait for (the journal's durable mark): recorder_hold announces that
 * this thread is marking and returns the map its marks go to, which a
 * swap that publishes a new map afterwards folds only once
 * recorder_release is called; recorder_mark_held marks it.  Lock-free.
 */
struct recorder_generation;
extern const struct recorder_generation *recorder_hold (struct recorder *r);
extern int recorder_mark_held (const struct recorder_generation *g,
                               uint64_t offset, uint64_t count);
extern void recorder_release (struct recorder *r);

/* Publish an empty map of granules of 1 << NEW_BITS bytes and return
 * the old one, with its granularity in *OLD_BITS, once no writer can
 * be marking it.  Callers are serialised by the caller.  NULL after
 * nbdkit_error (the old map stays in place).
 */
extern struct dirtymap *recorder_swap (struct recorder *r, unsigned new_bits,
                                       unsigned *old_bits);

#endif /* DIRTYBITMAP_RECORDER_H */
