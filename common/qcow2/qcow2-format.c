/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The header, header extensions, the feature name table, and the
 * refcount table and blocks.  The bitmap structures are in
 * qcow2-bitmap-format.c.
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <inttypes.h>

#include <nbdkit-filter.h>

#include "byte-order.h"
#include "qcow2-format.h"
#include "qcow2-format-internal.h"

/* Header field layout (qcow2.txt, "Header"). */
enum {
  H_MAGIC = 0, H_VERSION = 4, H_BACKING_OFFSET = 8, H_BACKING_SIZE = 16,
  H_CLUSTER_BITS = 20, H_SIZE = 24, H_CRYPT = 32, H_L1_SIZE = 36,
  H_L1_OFFSET = 40, H_REFTABLE_OFFSET = 48, H_REFTABLE_CLUSTERS = 56,
  H_NB_SNAPSHOTS = 60, H_SNAPSHOTS_OFFSET = 64, H_INCOMPAT = 72,
  H_COMPAT = 80, H_AUTOCLEAR = QCOW2_HEADER_AUTOCLEAR_OFFSET,
  H_REFCOUNT_ORDER = 96,
  H_HEADER_LENGTH = 100, H_COMPRESSION_TYPE = 104,
};

uint32_t
qcow2_header_peek_cluster_bits (const uint8_t *buf, size_t len)
{
  return len >= H_CLUSTER_BITS + 4 ? load_be32 (&buf[H_CLUSTER_BITS]) : 0;
}

/* The fields after magic and version, in host order. */
static void
header_read_fields (const uint8_t *buf, struct qcow2_header *h)
{
  h->backing_file_offset = load_be64 (&buf[H_BACKING_OFFSET]);
  h->backing_file_size = load_be32 (&buf[H_BACKING_SIZE]);
  h->cluster_bits = load_be32 (&buf[H_CLUSTER_BITS]);
  h->size = load_be64 (&buf[H_SIZE]);
  h->crypt_method = load_be32 (&buf[H_CRYPT]);
  h->l1_size = load_be32 (&buf[H_L1_SIZE]);
  h->l1_table_offset = load_be64 (&buf[H_L1_OFFSET]);
  h->refcount_table_offset = load_be64 (&buf[H_REFTABLE_OFFSET]);
  h->refcount_table_clusters = load_be32 (&buf[H_REFTABLE_CLUSTERS]);
  h->nb_snapshots = load_be32 (&buf[H_NB_SNAPSHOTS]);
  h->snapshots_offset = load_be64 (&buf[H_SNAPSHOTS_OFFSET]);
  h->incompatible_features = load_be64 (&buf[H_INCOMPAT]);
  h->compatible_features = load_be64 (&buf[H_COMPAT]);
  h->autoclear_features = load_be64 (&buf[H_AUTOCLEAR]);
  h->refcount_order = load_be32 (&buf[H_REFCOUNT_ORDER]);
  h->header_length = load_be32 (&buf[H_HEADER_LENGTH]);
}

/* cluster_bits and header_length, and the compression_type byte that
 * only a long enough header has.
 */
static int
header_check_sizes (const char *path, const uint8_t *buf, size_t len,
                    struct qcow2_header *h)
{
  uint64_t cluster_size;

  if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
      h->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
    nbdkit_error ("%s: qcow2 header: cluster_bits %" PRIu32 " is outside "
                  "%d..%d", path, h->cluster_bits,
                  QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
    return -1;
  }
  cluster_size = UINT64_C(1) << h->cluster_bits;
  if (h->header_length < QCOW2_V3_HEADER_MIN ||
      h->header_length > cluster_size || h->header_length % 8 != 0 ||
      h->header_length > len) {
    nbdkit_error ("%s: qcow2 header: header_length %" PRIu32 " must be a "
                  "multiple of 8 from %d to the cluster size",
                  path, h->header_length, QCOW2_V3_HEADER_MIN);
    return -1;
  }
  if (h->header_length > H_COMPRESSION_TYPE)
    h->compression_type = buf[H_COMPRESSION_TYPE];
  return 0;
}

/* Encryption, feature bits, compression type and refcount width. */
static int
header_check_features (const char *path, const struct qcow2_header *h)
{
  if (h->crypt_method != 0) {
    nbdkit_error ("%s: qcow2 header: crypt_method %" PRIu32 ": encrypted "
                  "sidecars are not supported; use an unencrypted one",
                  path, h->crypt_method);
    return -1;
  }
  if (h->incompatible_features & ~QCOW2_INCOMPAT_KNOWN) {
    nbdkit_error ("%s: qcow2 header: unknown incompatible feature bits "
                  "0x%" PRIx64 " (written by a newer QEMU?); the sidecar "
                  "cannot be used safely", path,
                  h->incompatible_features & ~QCOW2_INCOMPAT_KNOWN);
    return -1;
  }
  if (h->incompatible_features & QCOW2_INCOMPAT_CORRUPT) {
    nbdkit_error ("%s: qcow2 header: the corrupt bit is set; repair it "
                  "with 'qemu-img check -r all %s'", path, path);
    return -1;
  }
  /* compression_type: 0 zlib, 1 zstd; non-zero if and only if the
   * incompatible bit says so.
   */
  if (h->compression_type > 1 ||
      ((h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) != 0) !=
        (h->compression_type != 0)) {
    nbdkit_error ("%s: qcow2 header: compression_type %" PRIu8 " (header_"
                  "length %" PRIu32 ") disagrees with incompatible bit 3 or "
                  "is not 0 (zlib) or 1 (zstd)", path, h->compression_type,
                  h->header_length);
    return -1;
  }
  if ((h->incompatible_features & QCOW2_INCOMPAT_EXTL2) &&
      h->cluster_bits < 14) {
    nbdkit_error ("%s: qcow2 header: extended L2 entries need cluster_bits "
                  "of at least 14, not %" PRIu32, path, h->cluster_bits);
    return -1;
  }
  if (h->refcount_order > QCOW2_MAX_REFCOUNT_ORDER) {
    nbdkit_error ("%s: qcow2 header: refcount_order %" PRIu32 " is above %d",
                  path, h->refcount_order, QCOW2_MAX_REFCOUNT_ORDER);
    return -1;
  }
  return 0;
}

uint64_t
qcow2_l1_entries_needed (const struct qcow2_header *h, uint64_t size)
{
  const uint64_t cluster_size = UINT64_C(1) << h->cluster_bits;
  /* One L1 entry maps an L2 table: cluster_size / 8 clusters of guest
   * data, or half that with 16-byte extended L2 entries.
   */
  uint64_t l2_coverage = cluster_size
    * (cluster_size /
       ((h->incompatible_features & QCOW2_INCOMPAT_EXTL2) ? 16 : 8));

  return size / l2_coverage + (size % l2_coverage != 0);
}

/* The refcount table, the L1 table, the snapshot table and the backing
 * file name must lie where the file can hold them.
 */
static int
header_check_layout (const char *path, uint64_t file_size,
                     const struct qcow2_header *h)
{
  const uint64_t cluster_size = UINT64_C(1) << h->cluster_bits;

  if (h->refcount_table_offset == 0 ||
      !IS_ALIGNED (h->refcount_table_offset, h->cluster_bits) ||
      h->refcount_table_clusters == 0 ||
      (uint64_t) h->refcount_table_clusters * cluster_size >
        QCOW2_MAX_REFTABLE_BYTES ||
      !inside_file (h->refcount_table_offset,
                    (uint64_t) h->refcount_table_clusters * cluster_size,
                    file_size)) {
    nbdkit_error ("%s: qcow2 header: refcount table (offset 0x%" PRIx64
                  ", %" PRIu32 " clusters) is not cluster aligned, empty, "
                  "larger than 8 MiB or outside the file", path,
                  h->refcount_table_offset, h->refcount_table_clusters);
    return -1;
  }
  if ((uint64_t) h->l1_size * 8 > QCOW2_MAX_L1_BYTES ||
      (h->l1_size > 0 &&
       (!IS_ALIGNED (h->l1_table_offset, h->cluster_bits) ||
        h->l1_table_offset == 0 ||
        !inside_file (h->l1_table_offset, (uint64_t) h->l1_size * 8,
                      file_size)))) {
    nbdkit_error ("%s: qcow2 header: L1 table (offset 0x%" PRIx64 ", %"
                  PRIu32 " entries) is not cluster aligned, too large or "
                  "outside the file", path, h->l1_table_offset, h->l1_size);
    return -1;
  }
  if (h->size > (UINT64_C(1) << 62) ||
      qcow2_l1_entries_needed (h, h->size) > h->l1_size) {
    nbdkit_error ("%s: qcow2 header: l1_size %" PRIu32 " cannot map the "
                  "virtual size of %" PRIu64 " bytes", path, h->l1_size,
                  h->size);
    return -1;
  }
  if (h->nb_snapshots > 0 &&
      (!IS_ALIGNED (h->snapshots_offset, h->cluster_bits) ||
       !inside_file (h->snapshots_offset, 1, file_size))) {
    nbdkit_error ("%s: qcow2 header: snapshots_offset 0x%" PRIx64 " is not "
                  "cluster aligned or outside the file",
                  path, h->snapshots_offset);
    return -1;
  }
  if (h->backing_file_offset != 0 &&
      (h->backing_file_size > 1023 ||
       !inside_file (h->backing_file_offset, h->backing_file_size,
                     cluster_size) ||
       h->backing_file_offset < h->header_length)) {
    nbdkit_error ("%s: qcow2 header: backing file name (offset %" PRIu64
                  ", %" PRIu32 " bytes) must lie in the first cluster after "
                  "the header", path, h->backing_file_offset,
                  h->backing_file_size);
    return -1;
  }
  return 0;
}

int
qcow2_header_decode (const char *path, const uint8_t *buf, size_t len,
                     uint64_t file_size, struct qcow2_header *h)
{
  if (len < QCOW2_V3_HEADER_MIN || load_be32 (&buf[H_MAGIC]) != QCOW2_MAGIC) {
    nbdkit_error ("%s: not a qcow2 file (bad magic or shorter than a "
                  "header); point dirtybitmap-file= at a qcow2 sidecar, "
                  "or at a path that does not exist yet to create one",
                  path);
    return -1;
  }
  memset (h, 0, sizeof *h);
  h->version = load_be32 (&buf[H_VERSION]);
  if (h->version != 3) {
    nbdkit_error ("%s: qcow2 header: version %" PRIu32 " is not supported; "
                  "persistent bitmaps need version 3 (compat=1.1): run "
                  "'qemu-img amend -o compat=1.1 %s'",
                  path, h->version, path);
    return -1;
  }
  header_read_fields (buf, h);
  if (header_check_sizes (path, buf, len, h) == -1 ||
      header_check_features (path, h) == -1 ||
      header_check_layout (path, file_size, h) == -1)
    return -1;
  return 0;
}

void
qcow2_header_encode (const struct qcow2_header *h, uint8_t *buf)
{
  store_be32 (&buf[H_MAGIC], QCOW2_MAGIC);
  store_be32 (&buf[H_VERSION], h->version);
  store_be64 (&buf[H_BACKING_OFFSET], h->backing_file_offset);
  store_be32 (&buf[H_BACKING_SIZE], h->backing_file_size);
  store_be32 (&buf[H_CLUSTER_BITS], h->cluster_bits);
  store_be64 (&buf[H_SIZE], h->size);
  store_be32 (&buf[H_CRYPT], h->crypt_method);
  store_be32 (&buf[H_L1_SIZE], h->l1_size);
  store_be64 (&buf[H_L1_OFFSET], h->l1_table_offset);
  store_be64 (&buf[H_REFTABLE_OFFSET], h->refcount_table_offset);
  store_be32 (&buf[H_REFTABLE_CLUSTERS], h->refcount_table_clusters);
  store_be32 (&buf[H_NB_SNAPSHOTS], h->nb_snapshots);
  store_be64 (&buf[H_SNAPSHOTS_OFFSET], h->snapshots_offset);
  store_be64 (&buf[H_INCOMPAT], h->incompatible_features);
  store_be64 (&buf[H_COMPAT], h->compatible_features);
  store_be64 (&buf[H_AUTOCLEAR], h->autoclear_features);
  store_be32 (&buf[H_REFCOUNT_ORDER], h->refcount_order);
  store_be32 (&buf[H_HEADER_LENGTH], h->header_length);
  if (h->header_length > H_COMPRESSION_TYPE)
    buf[H_COMPRESSION_TYPE] = h->compression_type;
}

void
qcow2_header_encode_autoclear (uint64_t autoclear, uint8_t *buf)
{
  store_be64 (&buf[H_AUTOCLEAR], autoclear);
}

int
qcow2_extensions_decode (const char *path, const uint8_t *buf,
                         size_t start, size_t end,
                         struct qcow2_extension **exts_ret)
{
  struct qcow2_extension *exts = NULL;
  size_t n = 0, offset = start;
  bool seen_bitmaps = false;

  for (;;) {
    struct qcow2_extension ext, *p;

    if (offset + 8 > end || offset + 8 < offset) {
      nbdkit_error ("%s: qcow2 header extensions: no end marker before "
                    "offset %zu", path, end);
      goto err;
    }
    ext.type = load_be32 (&buf[offset]);
    ext.length = load_be32 (&buf[offset + 4]);
    if (ext.type == QCOW2_EXT_END)
      break;
    if (ext.length > end - offset - 8) {
      nbdkit_error ("%s: qcow2 header extension 0x%08" PRIx32 " at offset "
                    "%zu: length %" PRIu32 " runs past offset %zu",
                    path, ext.type, offset, ext.length, end);
      goto err;
    }
    if (ext.type == QCOW2_EXT_BITMAPS) {
      if (seen_bitmaps) {
        nbdkit_error ("%s: qcow2 header: two bitmaps extensions", path);
        goto err;
      }
      seen_bitmaps = true;
    }
    ext.data = malloc (ext.length ? ext.length : 1);
    p = realloc (exts, (n + 1) * sizeof *exts);
    if (ext.data == NULL || p == NULL) {
      nbdkit_error ("%s: allocating header extension: %m", path);
      free (ext.data);
      if (p)
        exts = p;
      goto err;
    }
    exts = p;
    memcpy (ext.data, &buf[offset + 8], ext.length);
    exts[n++] = ext;
    offset += 8 + ROUND_UP8 ((size_t) ext.length);
  }
  *exts_ret = exts;
  return n;

 err:
  qcow2_extensions_free (exts, n);
  return -1;
}

void
qcow2_extensions_free (struct qcow2_extension *exts, size_t n)
{
  size_t i;

  for (i = 0; i < n; ++i)
    free (exts[i].data);
  free (exts);
}

size_t
qcow2_extensions_encoded_size (const struct qcow2_extension *exts, size_t n)
{
  size_t i, size = 8;           /* end marker */

  for (i = 0; i < n; ++i)
    size += 8 + ROUND_UP8 ((size_t) exts[i].length);
  return size;
}

void
qcow2_extensions_encode (const struct qcow2_extension *exts, size_t n,
                         uint8_t *buf)
{
  size_t i, offset = 0;

  for (i = 0; i < n; ++i) {
    size_t padded = ROUND_UP8 ((size_t) exts[i].length);
    store_be32 (&buf[offset], exts[i].type);
    store_be32 (&buf[offset + 4], exts[i].length);
    memcpy (&buf[offset + 8], exts[i].data, exts[i].length);
    memset (&buf[offset + 8 + exts[i].length], 0, padded - exts[i].length);
    offset += 8 + padded;
  }
  store_be32 (&buf[offset], QCOW2_EXT_END);
  store_be32 (&buf[offset + 4], 0);
}

#define REFT_OFFSET_MASK UINT64_C(0xfffffffffffffe00)

int
qcow2_reftable_entry_decode (const char *path, uint64_t index,
                             const uint8_t *table, unsigned cluster_bits,
                             uint64_t file_size, uint64_t *offset)
{
  const uint64_t raw = load_be64 (&table[index * 8]);

  *offset = raw & REFT_OFFSET_MASK;
  if ((raw & ~REFT_OFFSET_MASK) ||
      (*offset != 0 &&
       (!IS_ALIGNED (*offset, cluster_bits) ||
        !inside_file (*offset, UINT64_C(1) << cluster_bits, file_size)))) {
    nbdkit_error ("%s: refcount table entry %" PRIu64 " (0x%016" PRIx64
                  ") has reserved bits set, or points to a refcount block "
                  "that is not aligned or lies outside the file",
                  path, index, raw);
    return -1;
  }
  return 0;
}

void
qcow2_reftable_encode (const uint64_t *offsets, uint64_t n, uint8_t *buf)
{
  encode_offset_table (offsets, n, REFT_OFFSET_MASK, buf);
}

uint64_t
qcow2_refcount_get (const uint8_t *block, unsigned order, uint64_t index)
{
  switch (order) {
  case 4: return load_be16 (&block[index * 2]);
  case 5: return load_be32 (&block[index * 4]);
  case 6: return load_be64 (&block[index * 8]);
  case 3: return block[index];
  default: {
    /* Sub-byte refcounts pack least significant entry first. */
    unsigned bits = 1u << order, per_byte = 8 / bits;
    return (block[index / per_byte] >> (bits * (index % per_byte)))
      & ((1u << bits) - 1);
  }
  }
}

void
qcow2_refcount_set (uint8_t *block, unsigned order, uint64_t index,
                    uint64_t value)
{
  switch (order) {
  case 4: store_be16 (&block[index * 2], value); break;
  case 5: store_be32 (&block[index * 4], value); break;
  case 6: store_be64 (&block[index * 8], value); break;
  case 3: block[index] = value; break;
  default: {
    unsigned bits = 1u << order, per_byte = 8 / bits;
    unsigned shift = bits * (index % per_byte);
    uint8_t mask = ((1u << bits) - 1) << shift;
    block[index / per_byte] = (block[index / per_byte] & ~mask)
      | ((value << shift) & mask);
  }
  }
}

/* Feature names, so that tools can describe bits they do not know. */
static const struct { uint8_t type, bit; const char *name; } features[] = {
  { 0, 0, "dirty bit" },
  { 0, 1, "corrupt bit" },
  { 0, 2, "external data file" },
  { 0, 3, "compression type" },
  { 0, 4, "extended L2 entries" },
  { 1, 0, "lazy refcounts" },
  { 2, 0, "bitmaps" },
  { 2, 1, "raw external data" },
};
#define FEATURE_ENTRY_SIZE 48

void
qcow2_feature_table_build (struct qcow2_extension *ext)
{
  static uint8_t table[sizeof features / sizeof features[0]
                       * FEATURE_ENTRY_SIZE];
  size_t i;

  memset (table, 0, sizeof table);
  for (i = 0; i < sizeof features / sizeof features[0]; ++i) {
    uint8_t *e = &table[i * FEATURE_ENTRY_SIZE];
    e[0] = features[i].type;
    e[1] = features[i].bit;
    memcpy (&e[2], features[i].name, strlen (features[i].name));
  }
  ext->type = QCOW2_EXT_FEATURE_TABLE;
  ext->length = sizeof table;
  ext->data = table;
}
