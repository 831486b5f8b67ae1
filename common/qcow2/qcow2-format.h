/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The qcow2 structures a dirty-bitmap sidecar uses: encoding, decoding
 * and validation of each live together here, and nowhere else: the
 * header, its extensions and the refcount structures in qcow2-format.c,
 * the bitmap structures and the filter's two records in
 * qcow2-bitmap-format.c.
 *
 * Validation follows QEMU's docs/interop/qcow2.txt and the limits QEMU
 * enforces when it opens an image, so that whatever we accept QEMU
 * accepts, and whatever we write QEMU reads.  Every decoder reports a
 * failure with nbdkit_error naming the file, the structure and the
 * field, and returns -1.
 */
#ifndef DIRTYBITMAP_QCOW2_FORMAT_H
#define DIRTYBITMAP_QCOW2_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QCOW2_MAGIC                 0x514649fbU
#define QCOW2_V3_HEADER_MIN         104   /* version 3 header, no fields after */
#define QCOW2_HEADER_LENGTH_WRITTEN 112   /* with compression_type, as QEMU */

#define QCOW2_MIN_CLUSTER_BITS      9
#define QCOW2_MAX_CLUSTER_BITS      21
#define QCOW2_MAX_REFTABLE_BYTES    (UINT64_C(8) << 20)
#define QCOW2_MAX_L1_BYTES          (UINT64_C(32) << 20)
#define QCOW2_MAX_REFCOUNT_ORDER    6

/* Feature bits. */
#define QCOW2_INCOMPAT_DIRTY        (UINT64_C(1) << 0)
#define QCOW2_INCOMPAT_CORRUPT      (UINT64_C(1) << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (UINT64_C(1) << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (UINT64_C(1) << 3)
#define QCOW2_INCOMPAT_EXTL2        (UINT64_C(1) << 4)
#define QCOW2_INCOMPAT_KNOWN        (UINT64_C(0x1f))
#define QCOW2_AUTOCLEAR_BITMAPS     (UINT64_C(1) << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW    (UINT64_C(1) << 1)
#define QCOW2_AUTOCLEAR_KNOWN       (UINT64_C(0x3))
/* Ours: set while the journal record below may be trusted.  QEMU
 * clears autoclear bits it does not know whenever it opens the image
 * for writing, so a set bit proves that no other program has written
 * the bitmaps since the filter did.  The top bit, the one QEMU is
 * least likely ever to assign.
 */
#define QCOW2_AUTOCLEAR_JOURNAL     (UINT64_C(1) << 63)

/* Header extension types. */
#define QCOW2_EXT_END               0x00000000U
#define QCOW2_EXT_FEATURE_TABLE     0x6803f857U
#define QCOW2_EXT_BITMAPS           0x23852875U
#define QCOW2_EXT_JOURNAL           0x6e62646aU   /* ours: "nbdj" */
#define QCOW2_EXT_IDENTITY          0x6e626469U   /* ours: "nbdi" */

/* Bitmap limits, as QEMU enforces them on open. */
#define QCOW2_BITMAP_MAX_COUNT      65535
#define QCOW2_BITMAP_MAX_DIR_SIZE   (UINT64_C(1024) * 65535)
#define QCOW2_BITMAP_MAX_TABLE_SIZE UINT32_C(0x8000000)
#define QCOW2_BITMAP_MAX_DATA_BYTES (UINT64_C(512) << 20)
#define QCOW2_BITMAP_MIN_GRAN_BITS  9
#define QCOW2_BITMAP_MAX_GRAN_BITS  31
#define QCOW2_BITMAP_MAX_NAME_SIZE  1023
#define QCOW2_BITMAP_TYPE_DIRTY     1
#define QCOW2_BITMAP_FLAG_IN_USE    (UINT32_C(1) << 0)
#define QCOW2_BITMAP_FLAG_AUTO      (UINT32_C(1) << 1)
#define QCOW2_BITMAP_FLAGS_KNOWN    UINT32_C(0x3)
#define QCOW2_BITMAP_EXT_SIZE       24
#define QCOW2_BITMAP_ENTRY_FIXED    24

struct qcow2_header {
  uint32_t version;
  uint64_t backing_file_offset;
  uint32_t backing_file_size;
  uint32_t cluster_bits;
  uint64_t size;
  uint32_t crypt_method;
  uint32_t l1_size;
  uint64_t l1_table_offset;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  uint64_t incompatible_features;
  uint64_t compatible_features;
  uint64_t autoclear_features;
  uint32_t refcount_order;
  uint32_t header_length;
  uint8_t compression_type;
};

/* The cluster_bits field of a header of which only the first LEN
 * bytes are at BUF, not validated (0 if LEN does not reach it): enough
 * to size the read of the first cluster, which qcow2_header_decode
 * then checks whole.
 */
extern uint32_t qcow2_header_peek_cluster_bits (const uint8_t *buf,
                                                size_t len);

/* Decode and validate the header at the start of BUF (LEN bytes, at
 * least QCOW2_V3_HEADER_MIN) of a file of FILE_SIZE bytes.
 */
extern int qcow2_header_decode (const char *path, const uint8_t *buf,
                                size_t len, uint64_t file_size,
                                struct qcow2_header *h);

/* Encode every known field into BUF, which holds h->header_length
 * bytes; bytes of a longer header that we do not know are untouched.
 */
extern void qcow2_header_encode (const struct qcow2_header *h, uint8_t *buf);

/* Byte offset of the autoclear field, for rewriting it alone. */
#define QCOW2_HEADER_AUTOCLEAR_OFFSET 88

/* Encode AUTOCLEAR alone into the header at BUF (at least
 * QCOW2_HEADER_AUTOCLEAR_OFFSET + 8 bytes).
 */
extern void qcow2_header_encode_autoclear (uint64_t autoclear, uint8_t *buf);

/* A header extension kept as raw bytes, so unknown ones are preserved. */
struct qcow2_extension {
  uint32_t type;
  uint32_t length;
  uint8_t *data;
};

/* Parse the extensions in BUF[START..END) up to the end marker.
 * Returns the number found (stored in *EXTS, to be freed with
 * qcow2_extensions_free) or -1.
 */
extern int qcow2_extensions_decode (const char *path, const uint8_t *buf,
                                    size_t start, size_t end,
                                    struct qcow2_extension **exts);
extern void qcow2_extensions_free (struct qcow2_extension *exts, size_t n);

/* Bytes that N extensions take, end marker included. */
extern size_t qcow2_extensions_encoded_size (const struct qcow2_extension *exts,
                                             size_t n);
/* Encode N extensions and the end marker at BUF. */
extern void qcow2_extensions_encode (const struct qcow2_extension *exts,
                                     size_t n, uint8_t *buf);

/* The bitmaps header extension. */
struct qcow2_bitmaps_ext {
  uint32_t nb_bitmaps;
  uint64_t directory_size;
  uint64_t directory_offset;
};

extern int qcow2_bitmaps_ext_decode (const char *path,
                                     const struct qcow2_extension *ext,
                                     unsigned cluster_bits, uint64_t file_size,
                                     struct qcow2_bitmaps_ext *out);
extern void qcow2_bitmaps_ext_encode (const struct qcow2_bitmaps_ext *in,
                                      uint8_t data[QCOW2_BITMAP_EXT_SIZE]);

/* The filter's crash-safety record (header extension
 * QCOW2_EXT_JOURNAL, unknown to QEMU, which keeps it as it is).  It
 * names the journal, a bitmap the filter keeps in use, and the bitmaps
 * it protects, by their table offsets.  After a crash each protected
 * bitmap is its table's data (stored before tracking began and never
 * touched since) plus the journal's marks.  A crc32 covers the record
 * so that a torn header write is never trusted.
 */
#define QCOW2_JOURNAL_EXT_VERSION   1
#define QCOW2_JOURNAL_EXT_FIXED     20  /* version, count, journal, crc */
#define QCOW2_JOURNAL_NAME          "nbdkit-dirtybitmap-journal"

struct qcow2_journal_ext {
  uint64_t journal_table_offset;
  uint32_t nr_protected;
  uint64_t *protected_tables;   /* table offsets, nr_protected of them */
};

extern size_t qcow2_journal_ext_size (uint32_t nr_protected);
/* Decode EXT into *OUT (its array to be freed by the caller).  A
 * record that fails its checks is not an error in the file (QEMU
 * ignores it): returns -1 with *WHY saying what is wrong.
 */
extern int qcow2_journal_ext_decode (const struct qcow2_extension *ext,
                                     unsigned cluster_bits,
                                     struct qcow2_journal_ext *out,
                                     const char **why);
/* Encode into DATA, qcow2_journal_ext_size bytes. */
extern void qcow2_journal_ext_encode (const struct qcow2_journal_ext *in,
                                      uint8_t *data);

/* The filter's record of the data's identity (header extension
 * QCOW2_EXT_IDENTITY, unknown to QEMU, which keeps it as it is): what
 * the data the bitmaps describe looked like when the filter last made
 * them consistent (CLEAN), or when the running session began tracking
 * (SESSION).  It is about the data, not the sidecar, so no autoclear
 * bit guards it.  A crc32 covers it; a record that fails any check is
 * never trusted.  Layout (big-endian):
 *   0 version   4 kind   8 flags   12 token length
 *  16 device   24 inode   32 size   40 ctime seconds   48 ctime ns
 *  52 reserved (0)   56 counters[4]   88 boot id (16 bytes)
 * 104 token (token length bytes)   then the crc32 of everything before.
 */
#define QCOW2_IDENTITY_EXT_VERSION  1
#define QCOW2_IDENTITY_EXT_FIXED    108 /* everything but the token */
#define QCOW2_IDENTITY_MAX_TOKEN    256
#define QCOW2_IDENTITY_COUNTERS     4

enum qcow2_identity_kind {
  QCOW2_IDENTITY_FILE = 1,      /* a regular file: device, inode, size,
                                   ctime */
  QCOW2_IDENTITY_BLOCK = 2,     /* a block device: device, the kernel's
                                   write and discard counters, boot id */
  QCOW2_IDENTITY_TOKEN = 3,     /* a string the user gives */
};
#define QCOW2_IDENTITY_SESSION      UINT32_C(1) /* flags: taken when a
                                                   session began */

struct qcow2_identity_ext {
  uint32_t kind;
  uint32_t flags;
  uint64_t device;              /* st_dev of a file, st_rdev of a device */
  uint64_t inode;
  uint64_t size;
  int64_t ctime_sec;
  uint32_t ctime_nsec;
  uint64_t counters[QCOW2_IDENTITY_COUNTERS];
  uint8_t boot_id[16];
  uint32_t token_length;
  char token[QCOW2_IDENTITY_MAX_TOKEN + 1];   /* NUL-terminated */
};

extern size_t qcow2_identity_ext_size (const struct qcow2_identity_ext *id);
/* Decode EXT into *OUT.  A record that fails its checks is not an
 * error in the file: returns -1 with *WHY saying what is wrong.
 */
extern int qcow2_identity_ext_decode (const struct qcow2_extension *ext,
                                      struct qcow2_identity_ext *out,
                                      const char **why);
/* Encode into DATA, qcow2_identity_ext_size bytes. */
extern void qcow2_identity_ext_encode (const struct qcow2_identity_ext *in,
                                       uint8_t *data);

/* One bitmap directory entry (extra data is never accepted: QEMU
 * refuses any, so a sidecar with some is unusable anyway).
 */
struct qcow2_bitmap_entry {
  uint64_t table_offset;
  uint32_t table_size;
  uint32_t flags;
  uint8_t type;
  uint8_t granularity_bits;
  uint16_t name_size;
  char name[QCOW2_BITMAP_MAX_NAME_SIZE + 1];  /* NUL-terminated copy */
};

/* Bytes one entry takes in the directory, padding included. */
extern size_t qcow2_bitmap_entry_size (uint16_t name_size);

/* Decode NB entries from a directory of DIR_SIZE bytes at BUF; checks
 * each field, unique names, and that the entries fill the directory
 * exactly.  ENTRIES must have room for NB entries.
 */
extern int qcow2_bitmap_directory_decode (const char *path, const uint8_t *buf,
                                          uint64_t dir_size, uint32_t nb,
                                          unsigned cluster_bits,
                                          uint64_t file_size,
                                          struct qcow2_bitmap_entry *entries);

/* Encode NB entries at BUF, which holds the sum of their sizes. */
extern void qcow2_bitmap_directory_encode (const struct qcow2_bitmap_entry *entries,
                                           uint32_t nb, uint8_t *buf);

/* Validate a bitmap name given by a user (not from a file). */
extern int qcow2_bitmap_name_check (const char *name, const char *where);

/* The virtual size a qcow2 image needs to cover a disk of BYTES bytes:
 * QEMU counts whole 512-byte sectors, rounding a header's size down
 * when it opens an image and up when qemu-img creates one.
 */
extern uint64_t qcow2_virtual_size_for (uint64_t bytes);

/* How many L1 entries the image of header H needs to map a virtual
 * size of SIZE bytes.
 */
extern uint64_t qcow2_l1_entries_needed (const struct qcow2_header *h,
                                         uint64_t size);

/* How many blocks of 1 << BITS bytes cover SIZE bytes (the last one
 * may be partial): granules of a bitmap, clusters of its data.
 */
extern uint64_t qcow2_blocks_covering (uint64_t size, unsigned bits);

/* Table size a bitmap must have for a disk of VIRTUAL_SIZE bytes. */
extern uint64_t qcow2_bitmap_table_size (uint64_t virtual_size,
                                         unsigned granularity_bits,
                                         unsigned cluster_bits);

/* log2 of a bitmap granularity of BYTES, or -1 unless BYTES is a power
 * of two QEMU accepts (512 to 2G); logs nothing.
 */
extern int qcow2_granularity_bits (int64_t bytes);

/* The smallest granularity from GRANULARITY_BITS up whose bitmap fits
 * QEMU's limits for that disk (QCOW2_BITMAP_MAX_GRAN_BITS + 1 if
 * none), without logging anything.
 */
extern unsigned qcow2_bitmap_fitting_granularity (uint64_t virtual_size,
                                                  unsigned granularity_bits,
                                                  unsigned cluster_bits);

/* Whether a bitmap of that granularity fits QEMU's limits; on failure
 * the error says which limit and what granularity would fit.
 */
extern int qcow2_bitmap_size_check (const char *path, const char *name,
                                    uint64_t virtual_size,
                                    unsigned granularity_bits,
                                    unsigned cluster_bits);

/* One bitmap table entry.  *OFFSET is 0 for a cluster that reads as
 * all zeros, or as all ones if *ALL_ONES.
 */
extern int qcow2_bitmap_table_entry_decode (const char *path, const char *name,
                                            uint64_t index, uint64_t raw,
                                            unsigned cluster_bits,
                                            uint64_t file_size,
                                            uint64_t *offset, bool *all_ones);
extern uint64_t qcow2_bitmap_table_entry_encode (uint64_t offset);

/* A whole bitmap table: N entries of 8 bytes at BUF, decoded into
 * OFFSETS and ALL_ONES (N each) with the checks of
 * qcow2_bitmap_table_entry_decode, or encoded from OFFSETS.
 */
extern int qcow2_bitmap_table_decode (const char *path, const char *name,
                                      const uint8_t *buf, uint32_t n,
                                      unsigned cluster_bits,
                                      uint64_t file_size,
                                      uint64_t *offsets, bool *all_ones);
extern void qcow2_bitmap_table_encode (const uint64_t *offsets, uint32_t n,
                                       uint8_t *buf);

/* Set bit BIT of qcow2 bitmap data at DATA: bit i of the data is the
 * bit of value 1 << (i % 8) in byte i / 8.  Returns true if it was
 * clear.
 */
extern bool qcow2_bitmap_data_set (uint8_t *data, uint64_t bit);

/* Refcount table entry INDEX of the table at TABLE. */
extern int qcow2_reftable_entry_decode (const char *path, uint64_t index,
                                        const uint8_t *table,
                                        unsigned cluster_bits,
                                        uint64_t file_size, uint64_t *offset);
/* N refcount table entries (refcount block offsets) at BUF. */
extern void qcow2_reftable_encode (const uint64_t *offsets, uint64_t n,
                                   uint8_t *buf);

/* Refcount block entries of 1 << ORDER bits, big-endian within the
 * block as the spec lays them out.
 */
extern uint64_t qcow2_refcount_get (const uint8_t *block, unsigned order,
                                    uint64_t index);
extern void qcow2_refcount_set (uint8_t *block, unsigned order,
                                uint64_t index, uint64_t value);

/* The feature name table QEMU writes into new images. */
extern void qcow2_feature_table_build (struct qcow2_extension *ext);

#endif /* DIRTYBITMAP_QCOW2_FORMAT_H */
