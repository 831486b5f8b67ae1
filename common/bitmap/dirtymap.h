/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* A sparse bitmap that many threads may set bits in without locks.
 *
 * Memory is spent only on the parts of the bitmap that have bits set:
 * the bitmap is an array of pointers to leaves of LEAF_BITS bits, and
 * a leaf is allocated the first time a bit in it is set.  Setting a
 * bit that is already set is a relaxed load and nothing else, so
 * re-dirtying hot regions costs no atomic read-modify-write and no
 * lock; the cost of setting a range depends only on its length.
 *
 * Bit order matches qcow2 bitmap data when imported or exported: bit
 * j (value 1 << j) of byte k is bit 8k + j.
 */
#ifndef DIRTYBITMAP_DIRTYMAP_H
#define DIRTYBITMAP_DIRTYMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dirtymap;

/* Bits per leaf: 4 KiB of memory covers 32768 granules. */
#define DIRTYMAP_LEAF_BITS (UINT64_C(1) << 15)

/* Create an all-clear map of NR_BITS bits.  Only the leaf pointer
 * array is allocated (8 bytes per DIRTYMAP_LEAF_BITS bits).  Returns
 * NULL after nbdkit_error on failure.
 */
extern struct dirtymap *dirtymap_new (uint64_t nr_bits);
extern void dirtymap_free (struct dirtymap *map);

extern uint64_t dirtymap_nr_bits (const struct dirtymap *map);

/* Bytes of memory held by the map, leaves and leaf pointers included. */
extern uint64_t dirtymap_memory (const struct dirtymap *map);

/* Set COUNT bits starting at FIRST (clipped to the map).  Safe to call
 * from any number of threads at once.  Returns 1 if at least one bit
 * was newly set, 0 if all were set already, -1 (with nbdkit_error) if
 * a leaf could not be allocated; bits set before the failure stay set.
 */
extern int dirtymap_set_range (struct dirtymap *map,
                               uint64_t first, uint64_t count);

extern bool dirtymap_test (const struct dirtymap *map, uint64_t bit);

/* The first set (or clear) bit at or after FROM, or the map's size if
 * there is none.  Unallocated leaves are skipped in one step.
 */
extern uint64_t dirtymap_next_set (const struct dirtymap *map, uint64_t from);
extern uint64_t dirtymap_next_clear (const struct dirtymap *map,
                                     uint64_t from);

/* Whether every bit of [FIRST, FIRST + COUNT) (clipped to the map) is
 * set; the cost depends on COUNT, not on the map's size.
 */
extern bool dirtymap_range_set (const struct dirtymap *map, uint64_t first,
                                uint64_t count);

/* Number of set bits. */
extern uint64_t dirtymap_count (const struct dirtymap *map);

/* OR LEN bytes of qcow2-ordered bitmap data into the map from bit
 * FIRST_BIT (a multiple of 64).  Bits past the end of the map must be
 * zero in BUF; returns -1 with nbdkit_error if they are not, or on
 * allocation failure.
 */
extern int dirtymap_import (struct dirtymap *map, uint64_t first_bit,
                            const uint8_t *buf, size_t len);

/* Write LEN bytes of qcow2-ordered bitmap data for the bits from
 * FIRST_BIT (a multiple of 64) into BUF; bits past the end of the map
 * read as zero.  Returns true if any bit in BUF is set.
 */
extern bool dirtymap_export (const struct dirtymap *map, uint64_t first_bit,
                             uint8_t *buf, size_t len);

/* OR SRC into DST, where one bit of DST covers 1 << SHIFT bits of SRC
 * (DST's granularity is SRC's times 1 << SHIFT).  Returns 0, or -1
 * with nbdkit_error on allocation failure.
 */
extern int dirtymap_merge_scaled (struct dirtymap *dst,
                                  const struct dirtymap *src,
                                  unsigned shift);

/* OR SRC into DST, where one bit of SRC covers 1 << SHIFT bits of DST
 * (SRC is the coarser), clipped to DST.  Returns 0, or -1 with
 * nbdkit_error on allocation failure.
 */
extern int dirtymap_merge_expanded (struct dirtymap *dst,
                                    const struct dirtymap *src,
                                    unsigned shift);

/* OR SRC, of granules of 1 << SRC_BITS bytes, into DST, of granules
 * of 1 << DST_BITS bytes, whichever is the coarser: every byte dirty
 * in SRC ends up in a dirty granule of DST.
 */
extern int dirtymap_merge_rescaled (struct dirtymap *dst, unsigned dst_bits,
                                    const struct dirtymap *src,
                                    unsigned src_bits);

#endif /* DIRTYBITMAP_DIRTYMAP_H */
