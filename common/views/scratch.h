/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* A view's scratch file: the old data of the granules copied before a
 * write, each at its own offset (the offset it has on the disk), in a
 * sparse file that is unlinked as soon as it is made, so that nothing
 * is left behind when nbdkit stops or crashes.  A released range is
 * punched out.
 *
 * Every scratch file of a server draws on one budget (struct
 * scratch_budget): the bytes stored and not yet released, counted
 * here rather than asked of the file system, against an optional
 * limit shared by all of them.
 */
#ifndef DIRTYBITMAP_SCRATCH_H
#define DIRTYBITMAP_SCRATCH_H

#include <stddef.h>
#include <stdint.h>

struct scratch_budget {
  uint64_t limit;               /* bytes, 0 for none */
  uint64_t used;                /* bytes stored, over every file
                                   (atomic) */
};

struct scratch;

/* A new empty scratch file in directory DIR, for view NAME (named in
 * errors), drawing on BUDGET.  NULL after nbdkit_error.
 */
extern struct scratch *scratch_new (const char *dir, const char *name,
                                    struct scratch_budget *budget);

/* Close the file (which frees its space) and give its bytes back to
 * the budget.  NULL is ignored.
 */
extern void scratch_free (struct scratch *s);

/* Store LEN bytes of BUF at OFFSET, a range not stored yet.  Returns
 * 0, ENOSPC if the budget's limit would be passed, or EIO if the file
 * could not be written (after nbdkit_error in both cases); nothing is
 * counted then.
 */
extern int scratch_store (struct scratch *s, uint64_t offset,
                          const void *buf, size_t len);

/* Read back LEN bytes stored at OFFSET: 0, or EIO after nbdkit_error. */
extern int scratch_load (struct scratch *s, uint64_t offset,
                         void *buf, size_t len);

/* Give back the space of [OFFSET, OFFSET + LEN), which must have been
 * stored.  The bytes are uncounted even if the file system cannot
 * punch the hole (nbdkit_debug says so).
 */
extern void scratch_release (struct scratch *s, uint64_t offset,
                             uint64_t len);

/* Give back everything stored. */
extern void scratch_release_all (struct scratch *s);

/* The bytes this file holds. */
extern uint64_t scratch_bytes (const struct scratch *s);

#endif /* DIRTYBITMAP_SCRATCH_H */
