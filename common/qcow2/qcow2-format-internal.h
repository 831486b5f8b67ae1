/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Helpers shared by the files that encode and decode qcow2 structures
 * (qcow2-format.c, qcow2-bitmap-format.c); not for anyone else.
 */

#ifndef DIRTYBITMAP_QCOW2_FORMAT_INTERNAL_H
#define DIRTYBITMAP_QCOW2_FORMAT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "byte-order.h"

#define IS_ALIGNED(x, bits) (((x) & ((UINT64_C(1) << (bits)) - 1)) == 0)
#define ROUND_UP8(x) (((x) + 7) & ~(size_t) 7)

/* True if [offset, offset + len) lies inside a file of FILE_SIZE. */
static inline bool
inside_file (uint64_t offset, uint64_t len, uint64_t file_size)
{
  return offset <= file_size && len <= file_size - offset;
}

/* A table of N big-endian offsets, each with only the bits of MASK. */
static inline void
encode_offset_table (const uint64_t *offsets, uint64_t n, uint64_t mask,
                     uint8_t *buf)
{
  uint64_t i;

  for (i = 0; i < n; ++i)
    store_be64 (&buf[i * 8], offsets[i] & mask);
}

#endif /* DIRTYBITMAP_QCOW2_FORMAT_INTERNAL_H */
