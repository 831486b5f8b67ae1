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
 *
 * A write announces itself for its whole life, from its mark until
 * the plugin has replied (recorder_hold ... recorder_release),
 * so that waiting for every slot to be idle once is also a drain: no
 * write that began before is still on its way to the plugin.  The
 * gate uses that to make the instant of a view (common/views/views.h):
 * closing it waits for the writes under way and holds new ones at
 * their start, until it opens again.  An open gate also tells writers
 * whether views exist, so that the write path without views costs one
 * more load than without the gate.
 */
#ifndef DIRTYBITMAP_RECORDER_H
#define DIRTYBITMAP_RECORDER_H

#include <stdbool.h>
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

/* Publish an empty map of granules of 1 << NEW_BITS bytes and return
 * the old one, with its granularity in *OLD_BITS, once no writer can
 * be marking it.  Callers are serialised by the caller.  NULL after
 * nbdkit_error (the old map stays in place).
 */
extern struct dirtymap *recorder_swap (struct recorder *r, unsigned new_bits,
                                       unsigned *old_bits);

/* recorder_mark in three steps, around the rest of a write:
 * recorder_hold waits while the gate is closed, announces the writer
 * and returns the map its marks go to (set *VIEWS, unless NULL, to
 * whether views exist: copy before writing); recorder_mark_held marks
 * it; recorder_release, in the same thread, ends the write once the
 * plugin has replied (or the write failed).  A swap publishing a new
 * map folds the held one only after the release, so whatever else the
 * write does while held (the journal's durable mark, the copy before
 * write, the plugin's write) comes before the fold.  Lock-free unless
 * the gate is closed; recorder_mark_held is -1 after nbdkit_error if
 * memory ran out.
 */
struct recorder_generation;
extern const struct recorder_generation *recorder_hold (struct recorder *r,
                                                        bool *views);
extern int recorder_mark_held (const struct recorder_generation *g,
                               uint64_t offset, uint64_t count);
extern void recorder_release (struct recorder *r);

/* Close the gate: return once no write is between its hold and release,
 * holding new writes at their begin until recorder_open_gate, which
 * also says whether VIEWS exist from then on.  Callers are serialised
 * by the caller.
 */
extern void recorder_close_gate (struct recorder *r);
extern void recorder_open_gate (struct recorder *r, bool views);

#endif /* DIRTYBITMAP_RECORDER_H */
