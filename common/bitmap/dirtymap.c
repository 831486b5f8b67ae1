/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <endian.h>

#include <nbdkit-filter.h>

#include "dirtymap.h"

#define WORD_BITS 64
#define LEAF_WORDS (DIRTYMAP_LEAF_BITS / WORD_BITS)
#define LEAF_BYTES (DIRTYMAP_LEAF_BITS / 8)

struct dirtymap {
  uint64_t nr_bits;
  uint64_t nr_leaves;
  /* Leaves are published with a release compare-and-swap and read
   * with acquire loads; bits inside a leaf use relaxed atomics because
   * a reader that must see every write (a store at shutdown, a query)
   * is ordered after the writers by other means.
   */
  uint64_t **leaves;
};

struct dirtymap *
dirtymap_new (uint64_t nr_bits)
{
  struct dirtymap *map;

  map = calloc (1, sizeof *map);
  if (map == NULL) {
    nbdkit_error ("dirtymap: calloc: %m");
    return NULL;
  }
  map->nr_bits = nr_bits;
  map->nr_leaves = (nr_bits + DIRTYMAP_LEAF_BITS - 1) / DIRTYMAP_LEAF_BITS;
  if (map->nr_leaves > 0) {
    map->leaves = calloc (map->nr_leaves, sizeof map->leaves[0]);
    if (map->leaves == NULL) {
      nbdkit_error ("dirtymap: allocating %" PRIu64 " leaf pointers: %m",
                    map->nr_leaves);
      free (map);
      return NULL;
    }
  }
  return map;
}

void
dirtymap_free (struct dirtymap *map)
{
  uint64_t i;

  if (map == NULL)
    return;
  for (i = 0; i < map->nr_leaves; ++i)
    free (map->leaves[i]);
  free (map->leaves);
  free (map);
}

uint64_t
dirtymap_nr_bits (const struct dirtymap *map)
{
  return map->nr_bits;
}

static uint64_t *
leaf_if_present (const struct dirtymap *map, uint64_t leaf)
{
  return __atomic_load_n (&map->leaves[leaf], __ATOMIC_ACQUIRE);
}

/* Return the leaf, allocating it if needed; NULL only on ENOMEM. */
static uint64_t *
leaf_for_writing (struct dirtymap *map, uint64_t leaf)
{
  uint64_t *p = leaf_if_present (map, leaf);
  uint64_t *expected = NULL;

  if (p != NULL)
    return p;
  p = calloc (LEAF_WORDS, sizeof (uint64_t));
  if (p == NULL) {
    nbdkit_error ("dirtymap: allocating a %d byte leaf: %m", (int) LEAF_BYTES);
    return NULL;
  }
  if (__atomic_compare_exchange_n (&map->leaves[leaf], &expected, p, false,
                                   __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    return p;
  /* Another thread published the leaf first: use theirs. */
  free (p);
  return expected;
}

uint64_t
dirtymap_memory (const struct dirtymap *map)
{
  uint64_t bytes = sizeof *map + map->nr_leaves * sizeof map->leaves[0];
  uint64_t i;

  for (i = 0; i < map->nr_leaves; ++i)
    if (leaf_if_present (map, i))
      bytes += LEAF_BYTES;
  return bytes;
}

/* Mask of bits [lo, hi] within one word, 0 <= lo <= hi < 64. */
static inline uint64_t
word_mask (unsigned lo, unsigned hi)
{
  uint64_t upto_hi = hi == 63 ? UINT64_MAX : (UINT64_C(1) << (hi + 1)) - 1;
  return upto_hi & ~((UINT64_C(1) << lo) - 1);
}

int
dirtymap_set_range (struct dirtymap *map, uint64_t first, uint64_t count)
{
  uint64_t last, bit;
  int newly_set = 0;

  if (first >= map->nr_bits || count == 0)
    return 0;
  if (count > map->nr_bits - first)
    count = map->nr_bits - first;
  last = first + count - 1;

  for (bit = first; bit <= last; ) {
    uint64_t leaf = bit / DIRTYMAP_LEAF_BITS;
    uint64_t in_leaf = bit % DIRTYMAP_LEAF_BITS;
    uint64_t *words = leaf_for_writing (map, leaf);
    uint64_t leaf_last = leaf * DIRTYMAP_LEAF_BITS + DIRTYMAP_LEAF_BITS - 1;
    uint64_t stop = last < leaf_last ? last : leaf_last;

    if (words == NULL)
      return -1;
    while (bit <= stop) {
      uint64_t *w = &words[in_leaf / WORD_BITS];
      unsigned lo = bit % WORD_BITS;
      unsigned hi = stop - bit < WORD_BITS - 1 - lo ? lo + (stop - bit)
                                                    : WORD_BITS - 1;
      uint64_t mask = word_mask (lo, hi);

      /* The common case on a busy disk: already dirty, no RMW. */
      if ((__atomic_load_n (w, __ATOMIC_RELAXED) & mask) != mask) {
        __atomic_fetch_or (w, mask, __ATOMIC_RELAXED);
        newly_set = 1;
      }
      bit += hi - lo + 1;
      in_leaf += hi - lo + 1;
    }
  }
  return newly_set;
}

bool
dirtymap_test (const struct dirtymap *map, uint64_t bit)
{
  const uint64_t *words;

  if (bit >= map->nr_bits)
    return false;
  words = leaf_if_present (map, bit / DIRTYMAP_LEAF_BITS);
  if (words == NULL)
    return false;
  return (__atomic_load_n (&words[(bit % DIRTYMAP_LEAF_BITS) / WORD_BITS],
                           __ATOMIC_RELAXED) >> (bit % WORD_BITS)) & 1;
}

/* Shared scan for next_set / next_clear: WANT_SET selects which. */
/* The first bit at or after FROM and before END (at most the map's
 * size) that is set (or clear); END if none.
 */
static uint64_t
next_bit (const struct dirtymap *map, uint64_t from, uint64_t end,
          bool want_set)
{
  if (end > map->nr_bits)
    end = map->nr_bits;
  while (from < end) {
    uint64_t leaf = from / DIRTYMAP_LEAF_BITS;
    const uint64_t *words = leaf_if_present (map, leaf);
    uint64_t leaf_end = (leaf + 1) * DIRTYMAP_LEAF_BITS;

    if (words == NULL) {
      if (!want_set)
        return from;
      from = leaf_end;
      continue;
    }
    while (from < leaf_end && from < end) {
      uint64_t w = __atomic_load_n (&words[(from % DIRTYMAP_LEAF_BITS)
                                           / WORD_BITS], __ATOMIC_RELAXED);
      if (!want_set)
        w = ~w;
      w &= ~((UINT64_C(1) << (from % WORD_BITS)) - 1);
      if (w != 0) {
        uint64_t found = (from & ~(uint64_t) (WORD_BITS - 1))
          + __builtin_ctzll (w);
        return found < end ? found : end;
      }
      from = (from | (WORD_BITS - 1)) + 1;
    }
  }
  return end;
}

uint64_t
dirtymap_next_set (const struct dirtymap *map, uint64_t from)
{
  return next_bit (map, from, map->nr_bits, true);
}

uint64_t
dirtymap_next_clear (const struct dirtymap *map, uint64_t from)
{
  return next_bit (map, from, map->nr_bits, false);
}

bool
dirtymap_range_set (const struct dirtymap *map, uint64_t first,
                    uint64_t count)
{
  uint64_t end = first + count < first ? UINT64_MAX : first + count;

  return next_bit (map, first, end, false) >= (end < map->nr_bits
                                               ? end : map->nr_bits);
}

uint64_t
dirtymap_count (const struct dirtymap *map)
{
  uint64_t total = 0, leaf;
  size_t i;

  /* Bits past nr_bits are never set, so whole words can be counted. */
  for (leaf = 0; leaf < map->nr_leaves; ++leaf) {
    const uint64_t *words = leaf_if_present (map, leaf);
    if (words == NULL)
      continue;
    for (i = 0; i < LEAF_WORDS; ++i)
      total += __builtin_popcountll (__atomic_load_n (&words[i],
                                                      __ATOMIC_RELAXED));
  }
  return total;
}

/* Byte K of the qcow2 ordering is byte K % 8 of word K / 8 when the
 * word is stored little-endian; going through le64 keeps this true on
 * any host.
 */
int
dirtymap_import (struct dirtymap *map, uint64_t first_bit,
                 const uint8_t *buf, size_t len)
{
  size_t i;

  for (i = 0; i < len; i += 8) {
    uint64_t bit = first_bit + i * 8;
    uint64_t word = 0;
    size_t n = len - i < 8 ? len - i : 8;
    uint64_t *words;

    memcpy (&word, &buf[i], n);
    word = le64toh (word);
    if (word == 0)
      continue;
    if (bit >= map->nr_bits ||
        (map->nr_bits - bit < 64 &&
         (word >> (map->nr_bits - bit)) != 0)) {
      nbdkit_error ("bitmap data has bits set past the end of the disk "
                    "(bit %" PRIu64 " of %" PRIu64 ")",
                    bit + __builtin_ctzll (word), map->nr_bits);
      return -1;
    }
    words = leaf_for_writing (map, bit / DIRTYMAP_LEAF_BITS);
    if (words == NULL)
      return -1;
    __atomic_fetch_or (&words[(bit % DIRTYMAP_LEAF_BITS) / WORD_BITS], word,
                       __ATOMIC_RELAXED);
  }
  return 0;
}

bool
dirtymap_export (const struct dirtymap *map, uint64_t first_bit,
                 uint8_t *buf, size_t len)
{
  bool any = false;
  size_t i;

  for (i = 0; i < len; i += 8) {
    uint64_t bit = first_bit + i * 8;
    uint64_t word = 0;
    size_t n = len - i < 8 ? len - i : 8;

    if (bit < map->nr_bits) {
      const uint64_t *words = leaf_if_present (map, bit / DIRTYMAP_LEAF_BITS);
      if (words)
        word = __atomic_load_n (&words[(bit % DIRTYMAP_LEAF_BITS) / WORD_BITS],
                                __ATOMIC_RELAXED);
    }
    any |= word != 0;
    word = htole64 (word);
    memcpy (&buf[i], &word, n);
  }
  return any;
}

int
dirtymap_merge_scaled (struct dirtymap *dst, const struct dirtymap *src,
                       unsigned shift)
{
  uint64_t start = dirtymap_next_set (src, 0);

  while (start < src->nr_bits) {
    uint64_t end = dirtymap_next_clear (src, start);
    uint64_t dst_first = start >> shift;
    uint64_t dst_last = (end - 1) >> shift;

    if (dirtymap_set_range (dst, dst_first, dst_last - dst_first + 1) == -1)
      return -1;
    start = dirtymap_next_set (src, end);
  }
  return 0;
}

int
dirtymap_merge_expanded (struct dirtymap *dst, const struct dirtymap *src,
                         unsigned shift)
{
  uint64_t start = dirtymap_next_set (src, 0);

  while (start < src->nr_bits) {
    uint64_t end = dirtymap_next_clear (src, start);
    uint64_t dst_first = start << shift;

    if (dst_first >= dst->nr_bits)
      break;
    if (dirtymap_set_range (dst, dst_first, (end - start) << shift) == -1)
      return -1;
    start = dirtymap_next_set (src, end);
  }
  return 0;
}

int
dirtymap_merge_rescaled (struct dirtymap *dst, unsigned dst_bits,
                         const struct dirtymap *src, unsigned src_bits)
{
  return dst_bits >= src_bits
    ? dirtymap_merge_scaled (dst, src, dst_bits - src_bits)
    : dirtymap_merge_expanded (dst, src, src_bits - dst_bits);
}
