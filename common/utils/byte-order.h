/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Big-endian loads and stores for on-disk structures.
 *
 * qcow2 stores every integer big-endian.  All encoding and decoding in
 * this project goes through these helpers, so that no caller repeats
 * byte swapping or unaligned-access care.
 */
#ifndef DIRTYBITMAP_BYTE_ORDER_H
#define DIRTYBITMAP_BYTE_ORDER_H

#include <stdint.h>
#include <string.h>
#include <endian.h>

static inline uint16_t
load_be16 (const void *p)
{
  uint16_t v;
  memcpy (&v, p, sizeof v);
  return be16toh (v);
}

static inline uint32_t
load_be32 (const void *p)
{
  uint32_t v;
  memcpy (&v, p, sizeof v);
  return be32toh (v);
}

static inline uint64_t
load_be64 (const void *p)
{
  uint64_t v;
  memcpy (&v, p, sizeof v);
  return be64toh (v);
}

static inline void
store_be16 (void *p, uint16_t v)
{
  v = htobe16 (v);
  memcpy (p, &v, sizeof v);
}

static inline void
store_be32 (void *p, uint32_t v)
{
  v = htobe32 (v);
  memcpy (p, &v, sizeof v);
}

static inline void
store_be64 (void *p, uint64_t v)
{
  v = htobe64 (v);
  memcpy (p, &v, sizeof v);
}

#endif /* DIRTYBITMAP_BYTE_ORDER_H */
