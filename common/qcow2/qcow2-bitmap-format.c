/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The bitmaps extension, the filter's two records (crash-safety
 * journal, data identity), the bitmap
 * directory, bitmap tables and the bit order of bitmap data, and the
 * granularity and size rules of QEMU's persistent bitmaps.  The
 * header and the refcount structures are in qcow2-format.c.
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <inttypes.h>

#include <nbdkit-filter.h>
#include <zlib.h>

#include "byte-order.h"
#include "qcow2-format.h"
#include "qcow2-format-internal.h"

int
qcow2_bitmaps_ext_decode (const char *path, const struct qcow2_extension *ext,
                          unsigned cluster_bits, uint64_t file_size,
                          struct qcow2_bitmaps_ext *out)
{
  if (ext->length != QCOW2_BITMAP_EXT_SIZE) {
    nbdkit_error ("%s: bitmaps extension: length %" PRIu32 " is not %d",
                  path, ext->length, QCOW2_BITMAP_EXT_SIZE);
    return -1;
  }
  out->nb_bitmaps = load_be32 (&ext->data[0]);
  out->directory_size = load_be64 (&ext->data[8]);
  out->directory_offset = load_be64 (&ext->data[16]);
  if (load_be32 (&ext->data[4]) != 0) {
    nbdkit_error ("%s: bitmaps extension: reserved field is not zero", path);
    return -1;
  }
  if (out->nb_bitmaps == 0 || out->nb_bitmaps > QCOW2_BITMAP_MAX_COUNT) {
    nbdkit_error ("%s: bitmaps extension: nb_bitmaps %" PRIu32 " is outside "
                  "1..%d", path, out->nb_bitmaps, QCOW2_BITMAP_MAX_COUNT);
    return -1;
  }
  if (out->directory_size > QCOW2_BITMAP_MAX_DIR_SIZE ||
      out->directory_size <
        (uint64_t) out->nb_bitmaps * qcow2_bitmap_entry_size (1)) {
    nbdkit_error ("%s: bitmaps extension: bitmap_directory_size %" PRIu64
                  " cannot hold %" PRIu32 " entries or exceeds %" PRIu64,
                  path, out->directory_size, out->nb_bitmaps,
                  QCOW2_BITMAP_MAX_DIR_SIZE);
    return -1;
  }
  if (out->directory_offset == 0 ||
      !IS_ALIGNED (out->directory_offset, cluster_bits) ||
      !inside_file (out->directory_offset, out->directory_size, file_size)) {
    nbdkit_error ("%s: bitmaps extension: bitmap_directory_offset 0x%" PRIx64
                  " is not cluster aligned or the directory lies outside "
                  "the file", path, out->directory_offset);
    return -1;
  }
  return 0;
}

size_t
qcow2_journal_ext_size (uint32_t nr_protected)
{
  return QCOW2_JOURNAL_EXT_FIXED + (size_t) nr_protected * 8;
}

/* Both of the filter's records end with the crc32 of what precedes. */
static uint32_t
record_crc (const uint8_t *data, size_t covered)
{
  return crc32 (crc32 (0, Z_NULL, 0), data, covered);
}

static bool
record_crc_matches (const struct qcow2_extension *ext)
{
  size_t covered = ext->length - 4;

  return load_be32 (&ext->data[covered]) == record_crc (ext->data, covered);
}

int
qcow2_journal_ext_decode (const struct qcow2_extension *ext,
                          unsigned cluster_bits,
                          struct qcow2_journal_ext *out, const char **why)
{
  uint32_t i, n;

  memset (out, 0, sizeof *out);
  if (ext->length < QCOW2_JOURNAL_EXT_FIXED) {
    *why = "the crash-safety record is truncated";
    return -1;
  }
  n = load_be32 (&ext->data[4]);
  if (n > QCOW2_BITMAP_MAX_COUNT ||
      ext->length != qcow2_journal_ext_size (n)) {
    *why = "the crash-safety record's length does not match its count";
    return -1;
  }
  if (!record_crc_matches (ext)) {
    *why = "the crash-safety record fails its crc32 (torn write)";
    return -1;
  }
  if (load_be32 (&ext->data[0]) != QCOW2_JOURNAL_EXT_VERSION) {
    *why = "the crash-safety record has a version this filter does not know";
    return -1;
  }
  out->journal_table_offset = load_be64 (&ext->data[8]);
  if (out->journal_table_offset == 0 ||
      !IS_ALIGNED (out->journal_table_offset, cluster_bits)) {
    *why = "the crash-safety record names no valid journal";
    return -1;
  }
  out->protected_tables = calloc (n ? n : 1, sizeof (uint64_t));
  if (out->protected_tables == NULL) {
    *why = "out of memory";
    return -1;
  }
  out->nr_protected = n;
  for (i = 0; i < n; ++i)
    out->protected_tables[i] = load_be64 (&ext->data[16 + 8 * (size_t) i]);
  return 0;
}

void
qcow2_journal_ext_encode (const struct qcow2_journal_ext *in, uint8_t *data)
{
  size_t covered = qcow2_journal_ext_size (in->nr_protected) - 4;
  uint32_t i;

  store_be32 (&data[0], QCOW2_JOURNAL_EXT_VERSION);
  store_be32 (&data[4], in->nr_protected);
  store_be64 (&data[8], in->journal_table_offset);
  for (i = 0; i < in->nr_protected; ++i)
    store_be64 (&data[16 + 8 * (size_t) i], in->protected_tables[i]);
  store_be32 (&data[covered], record_crc (data, covered));
}

size_t
qcow2_identity_ext_size (const struct qcow2_identity_ext *id)
{
  return QCOW2_IDENTITY_EXT_FIXED + id->token_length;
}

/* The checks a record must pass beyond its crc32. */
static const char *
identity_ext_check (const struct qcow2_extension *ext,
                    const struct qcow2_identity_ext *id)
{
  if (load_be32 (&ext->data[0]) != QCOW2_IDENTITY_EXT_VERSION)
    return "the data identity record has a version this filter does not "
      "know";
  if (id->kind < QCOW2_IDENTITY_FILE || id->kind > QCOW2_IDENTITY_TOKEN)
    return "the data identity record has an unknown kind";
  if ((id->flags & ~QCOW2_IDENTITY_SESSION) != 0 ||
      load_be32 (&ext->data[52]) != 0)
    return "the data identity record has unknown flags or reserved bits set";
  if (id->ctime_nsec >= 1000000000)
    return "the data identity record's ctime nanoseconds are out of range";
  if (memchr (id->token, '\0', id->token_length) != NULL ||
      (id->kind == QCOW2_IDENTITY_TOKEN) != (id->token_length > 0))
    return "the data identity record's token is malformed";
  return NULL;
}

int
qcow2_identity_ext_decode (const struct qcow2_extension *ext,
                           struct qcow2_identity_ext *out, const char **why)
{
  uint32_t n;
  size_t i;

  memset (out, 0, sizeof *out);
  if (ext->length < QCOW2_IDENTITY_EXT_FIXED) {
    *why = "the data identity record is truncated";
    return -1;
  }
  n = load_be32 (&ext->data[12]);
  if (n > QCOW2_IDENTITY_MAX_TOKEN ||
      ext->length != QCOW2_IDENTITY_EXT_FIXED + n) {
    *why = "the data identity record's length does not match its token";
    return -1;
  }
  if (!record_crc_matches (ext)) {
    *why = "the data identity record fails its crc32 (torn write)";
    return -1;
  }
  out->kind = load_be32 (&ext->data[4]);
  out->flags = load_be32 (&ext->data[8]);
  out->token_length = n;
  out->device = load_be64 (&ext->data[16]);
  out->inode = load_be64 (&ext->data[24]);
  out->size = load_be64 (&ext->data[32]);
  out->ctime_sec = (int64_t) load_be64 (&ext->data[40]);
  out->ctime_nsec = load_be32 (&ext->data[48]);
  for (i = 0; i < QCOW2_IDENTITY_COUNTERS; ++i)
    out->counters[i] = load_be64 (&ext->data[56 + 8 * i]);
  memcpy (out->boot_id, &ext->data[88], sizeof out->boot_id);
  memcpy (out->token, &ext->data[104], n);
  out->token[n] = '\0';
  *why = identity_ext_check (ext, out);
  return *why ? -1 : 0;
}

void
qcow2_identity_ext_encode (const struct qcow2_identity_ext *in, uint8_t *data)
{
  size_t covered = qcow2_identity_ext_size (in) - 4, i;

  memset (data, 0, covered + 4);
  store_be32 (&data[0], QCOW2_IDENTITY_EXT_VERSION);
  store_be32 (&data[4], in->kind);
  store_be32 (&data[8], in->flags);
  store_be32 (&data[12], in->token_length);
  store_be64 (&data[16], in->device);
  store_be64 (&data[24], in->inode);
  store_be64 (&data[32], in->size);
  store_be64 (&data[40], (uint64_t) in->ctime_sec);
  store_be32 (&data[48], in->ctime_nsec);
  for (i = 0; i < QCOW2_IDENTITY_COUNTERS; ++i)
    store_be64 (&data[56 + 8 * i], in->counters[i]);
  memcpy (&data[88], in->boot_id, sizeof in->boot_id);
  memcpy (&data[104], in->token, in->token_length);
  store_be32 (&data[covered], record_crc (data, covered));
}

void
qcow2_bitmaps_ext_encode (const struct qcow2_bitmaps_ext *in,
                          uint8_t data[QCOW2_BITMAP_EXT_SIZE])
{
  store_be32 (&data[0], in->nb_bitmaps);
  store_be32 (&data[4], 0);
  store_be64 (&data[8], in->directory_size);
  store_be64 (&data[16], in->directory_offset);
}

size_t
qcow2_bitmap_entry_size (uint16_t name_size)
{
  return ROUND_UP8 ((size_t) QCOW2_BITMAP_ENTRY_FIXED + name_size);
}

uint64_t
qcow2_virtual_size_for (uint64_t bytes)
{
  return (bytes + 511) & ~UINT64_C(511);
}

uint64_t
qcow2_blocks_covering (uint64_t size, unsigned bits)
{
  if (bits >= 64)
    return size > 0 ? 1 : 0;
  return (size >> bits) + ((size & ((UINT64_C(1) << bits) - 1)) != 0);
}

uint64_t
qcow2_bitmap_table_size (uint64_t virtual_size, unsigned granularity_bits,
                         unsigned cluster_bits)
{
  /* One cluster of bitmap data covers 8 << cluster_bits granules. */
  return qcow2_blocks_covering (virtual_size,
                                granularity_bits + 3 + cluster_bits);
}

int
qcow2_granularity_bits (int64_t bytes)
{
  if (bytes < (INT64_C(1) << QCOW2_BITMAP_MIN_GRAN_BITS) ||
      bytes > (INT64_C(1) << QCOW2_BITMAP_MAX_GRAN_BITS) ||
      (bytes & (bytes - 1)) != 0)
    return -1;
  return __builtin_ctzll (bytes);
}

unsigned
qcow2_bitmap_fitting_granularity (uint64_t virtual_size,
                                  unsigned granularity_bits,
                                  unsigned cluster_bits)
{
  unsigned g;

  for (g = granularity_bits; g <= QCOW2_BITMAP_MAX_GRAN_BITS; ++g) {
    uint64_t data_bytes = (qcow2_blocks_covering (virtual_size, g) + 7) / 8;
    if (data_bytes <= QCOW2_BITMAP_MAX_DATA_BYTES &&
        qcow2_bitmap_table_size (virtual_size, g, cluster_bits)
          <= QCOW2_BITMAP_MAX_TABLE_SIZE)
      break;
  }
  return g;
}

int
qcow2_bitmap_size_check (const char *path, const char *name,
                         uint64_t virtual_size, unsigned granularity_bits,
                         unsigned cluster_bits)
{
  unsigned g = qcow2_bitmap_fitting_granularity (virtual_size,
                                                 granularity_bits,
                                                 cluster_bits);

  if (g == granularity_bits)
    return 0;
  if (g > QCOW2_BITMAP_MAX_GRAN_BITS)
    nbdkit_error ("%s: bitmap '%s': a disk of %" PRIu64 " bytes is too "
                  "large for any qcow2 bitmap", path, name, virtual_size);
  else
    nbdkit_error ("%s: bitmap '%s': granularity %" PRIu64 " gives more "
                  "than QEMU's limit of 512 MiB of bitmap data for a disk "
                  "of %" PRIu64 " bytes; use dirtybitmap-granularity=%"
                  PRIu64 " or larger", path, name,
                  UINT64_C(1) << granularity_bits, virtual_size,
                  UINT64_C(1) << g);
  return -1;
}

int
qcow2_bitmap_name_check (const char *name, const char *where)
{
  size_t len = strlen (name);

  if (len == 0 || len > QCOW2_BITMAP_MAX_NAME_SIZE) {
    nbdkit_error ("%s: bitmap name is %zu bytes long; it must be 1 to %d "
                  "bytes", where, len, QCOW2_BITMAP_MAX_NAME_SIZE);
    return -1;
  }
  return 0;
}

enum {
  E_TABLE_OFFSET = 0, E_TABLE_SIZE = 8, E_FLAGS = 12, E_TYPE = 16,
  E_GRAN_BITS = 17, E_NAME_SIZE = 18, E_EXTRA_SIZE = 20,
};

static int
compare_names (const void *a, const void *b)
{
  return strcmp ((*(const struct qcow2_bitmap_entry *const *) a)->name,
                 (*(const struct qcow2_bitmap_entry *const *) b)->name);
}

/* Names must be unique; sorted, so that 65535 entries cost no more
 * than a sort.
 */
static int
check_unique_names (const char *path, const struct qcow2_bitmap_entry *entries,
                    uint32_t nb)
{
  const struct qcow2_bitmap_entry **sorted = malloc (nb * sizeof *sorted);
  uint32_t i;
  int r = 0;

  if (sorted == NULL) {
    nbdkit_error ("%s: malloc: %m", path);
    return -1;
  }
  for (i = 0; i < nb; ++i)
    sorted[i] = &entries[i];
  qsort (sorted, nb, sizeof *sorted, compare_names);
  for (i = 1; i < nb && r == 0; ++i) {
    if (strcmp (sorted[i - 1]->name, sorted[i]->name) == 0) {
      nbdkit_error ("%s: bitmap directory: name '%s' appears twice",
                    path, sorted[i]->name);
      r = -1;
    }
  }
  free (sorted);
  return r;
}

/* Entry I of the directory, at BUF with REMAINING bytes of the
 * directory left: its fixed fields and its name.
 */
static int
bitmap_entry_decode (const char *path, const uint8_t *buf,
                     uint64_t remaining, uint32_t i,
                     struct qcow2_bitmap_entry *e)
{
  uint32_t extra;

  e->table_offset = load_be64 (&buf[E_TABLE_OFFSET]);
  e->table_size = load_be32 (&buf[E_TABLE_SIZE]);
  e->flags = load_be32 (&buf[E_FLAGS]);
  e->type = buf[E_TYPE];
  e->granularity_bits = buf[E_GRAN_BITS];
  e->name_size = load_be16 (&buf[E_NAME_SIZE]);
  extra = load_be32 (&buf[E_EXTRA_SIZE]);

  if (extra != 0) {
    nbdkit_error ("%s: bitmap directory entry %" PRIu32 ": "
                  "extra_data_size %" PRIu32 " is not zero (QEMU refuses "
                  "such bitmaps too); remove it with 'qemu-img bitmap "
                  "--remove'", path, i, extra);
    return -1;
  }
  if (e->name_size == 0 || e->name_size > QCOW2_BITMAP_MAX_NAME_SIZE ||
      qcow2_bitmap_entry_size (e->name_size) > remaining) {
    nbdkit_error ("%s: bitmap directory entry %" PRIu32 ": name_size %"
                  PRIu16 " is outside 1..%d or runs past the directory",
                  path, i, e->name_size, QCOW2_BITMAP_MAX_NAME_SIZE);
    return -1;
  }
  memcpy (e->name, &buf[QCOW2_BITMAP_ENTRY_FIXED], e->name_size);
  e->name[e->name_size] = '\0';
  if (strlen (e->name) != e->name_size) {
    nbdkit_error ("%s: bitmap directory entry %" PRIu32 ": name contains "
                  "a NUL byte", path, i);
    return -1;
  }
  return 0;
}

/* What QEMU requires of a dirty bitmap's type, granularity, flags and
 * table.
 */
static int
bitmap_entry_check (const char *path, unsigned cluster_bits,
                    uint64_t file_size, const struct qcow2_bitmap_entry *e)
{
  uint64_t table_bytes;

  if (e->type != QCOW2_BITMAP_TYPE_DIRTY) {
    nbdkit_error ("%s: bitmap '%s': type %" PRIu8 " is not 1 (dirty "
                  "tracking bitmap)", path, e->name, e->type);
    return -1;
  }
  if (e->granularity_bits < QCOW2_BITMAP_MIN_GRAN_BITS ||
      e->granularity_bits > QCOW2_BITMAP_MAX_GRAN_BITS) {
    nbdkit_error ("%s: bitmap '%s': granularity_bits %" PRIu8 " is "
                  "outside %d..%d", path, e->name, e->granularity_bits,
                  QCOW2_BITMAP_MIN_GRAN_BITS, QCOW2_BITMAP_MAX_GRAN_BITS);
    return -1;
  }
  if (e->flags & ~QCOW2_BITMAP_FLAGS_KNOWN) {
    nbdkit_error ("%s: bitmap '%s': flags 0x%" PRIx32 " has reserved "
                  "bits set", path, e->name, e->flags);
    return -1;
  }
  table_bytes = (uint64_t) e->table_size * 8;
  if (e->table_size == 0 || e->table_size > QCOW2_BITMAP_MAX_TABLE_SIZE ||
      ((uint64_t) e->table_size << cluster_bits) >
        QCOW2_BITMAP_MAX_DATA_BYTES) {
    nbdkit_error ("%s: bitmap '%s': bitmap_table_size %" PRIu32 " is "
                  "zero or beyond QEMU's limits", path, e->name,
                  e->table_size);
    return -1;
  }
  if (e->table_offset == 0 || !IS_ALIGNED (e->table_offset, cluster_bits) ||
      !inside_file (e->table_offset, table_bytes, file_size)) {
    nbdkit_error ("%s: bitmap '%s': bitmap_table_offset 0x%" PRIx64 " is "
                  "zero, not cluster aligned, or the table lies outside "
                  "the file", path, e->name, e->table_offset);
    return -1;
  }
  return 0;
}

int
qcow2_bitmap_directory_decode (const char *path, const uint8_t *buf,
                               uint64_t dir_size, uint32_t nb,
                               unsigned cluster_bits, uint64_t file_size,
                               struct qcow2_bitmap_entry *entries)
{
  uint64_t offset = 0;
  uint32_t i;

  for (i = 0; i < nb; ++i) {
    struct qcow2_bitmap_entry *e = &entries[i];

    if (dir_size - offset < QCOW2_BITMAP_ENTRY_FIXED) {
      nbdkit_error ("%s: bitmap directory: entry %" PRIu32 " of %" PRIu32
                    " runs past the end of the directory (%" PRIu64
                    " bytes); nb_bitmaps disagrees with the directory",
                    path, i, nb, dir_size);
      return -1;
    }
    if (bitmap_entry_decode (path, &buf[offset], dir_size - offset, i,
                             e) == -1 ||
        bitmap_entry_check (path, cluster_bits, file_size, e) == -1)
      return -1;
    offset += qcow2_bitmap_entry_size (e->name_size);
  }
  if (offset != dir_size) {
    nbdkit_error ("%s: bitmap directory: %" PRIu32 " entries take %" PRIu64
                  " bytes but bitmap_directory_size is %" PRIu64
                  "; nb_bitmaps disagrees with the directory",
                  path, nb, offset, dir_size);
    return -1;
  }
  return check_unique_names (path, entries, nb);
}

void
qcow2_bitmap_directory_encode (const struct qcow2_bitmap_entry *entries,
                               uint32_t nb, uint8_t *buf)
{
  size_t offset = 0;
  uint32_t i;

  for (i = 0; i < nb; ++i) {
    const struct qcow2_bitmap_entry *e = &entries[i];
    size_t size = qcow2_bitmap_entry_size (e->name_size);

    memset (&buf[offset], 0, size);
    store_be64 (&buf[offset + E_TABLE_OFFSET], e->table_offset);
    store_be32 (&buf[offset + E_TABLE_SIZE], e->table_size);
    store_be32 (&buf[offset + E_FLAGS], e->flags);
    buf[offset + E_TYPE] = e->type;
    buf[offset + E_GRAN_BITS] = e->granularity_bits;
    store_be16 (&buf[offset + E_NAME_SIZE], e->name_size);
    store_be32 (&buf[offset + E_EXTRA_SIZE], 0);
    memcpy (&buf[offset + QCOW2_BITMAP_ENTRY_FIXED], e->name, e->name_size);
    offset += size;
  }
}

#define BME_OFFSET_MASK   UINT64_C(0x00fffffffffffe00)
#define BME_RESERVED_MASK UINT64_C(0xff000000000001fe)
#define BME_ALL_ONES      UINT64_C(1)

int
qcow2_bitmap_table_entry_decode (const char *path, const char *name,
                                 uint64_t index, uint64_t raw,
                                 unsigned cluster_bits, uint64_t file_size,
                                 uint64_t *offset, bool *all_ones)
{
  *offset = raw & BME_OFFSET_MASK;
  *all_ones = *offset == 0 && (raw & BME_ALL_ONES);
  if ((raw & BME_RESERVED_MASK) ||
      (*offset != 0 &&
       ((raw & BME_ALL_ONES) || !IS_ALIGNED (*offset, cluster_bits) ||
        !inside_file (*offset, UINT64_C(1) << cluster_bits, file_size)))) {
    nbdkit_error ("%s: bitmap '%s': table entry %" PRIu64 " (0x%016" PRIx64
                  ") has reserved bits set, or points to a cluster that is "
                  "not aligned or lies outside the file",
                  path, name, index, raw);
    return -1;
  }
  return 0;
}

uint64_t
qcow2_bitmap_table_entry_encode (uint64_t offset)
{
  return offset & BME_OFFSET_MASK;
}

int
qcow2_bitmap_table_decode (const char *path, const char *name,
                           const uint8_t *buf, uint32_t n,
                           unsigned cluster_bits, uint64_t file_size,
                           uint64_t *offsets, bool *all_ones)
{
  uint32_t i;

  for (i = 0; i < n; ++i)
    if (qcow2_bitmap_table_entry_decode (path, name, i,
                                         load_be64 (&buf[(size_t) i * 8]),
                                         cluster_bits, file_size,
                                         &offsets[i], &all_ones[i]) == -1)
      return -1;
  return 0;
}

void
qcow2_bitmap_table_encode (const uint64_t *offsets, uint32_t n, uint8_t *buf)
{
  encode_offset_table (offsets, n, BME_OFFSET_MASK, buf);
}

bool
qcow2_bitmap_data_set (uint8_t *data, uint64_t bit)
{
  uint8_t mask = 1 << (bit % 8);

  if (data[bit / 8] & mask)
    return false;
  data[bit / 8] |= mask;
  return true;
}
