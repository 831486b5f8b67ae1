/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Unit tests for the qcow2 structures: each encoder against its
 * decoder, the byte layout where it matters, and every refusal with
 * the field its message must name.
 */
#include <config.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "byte-order.h"
#include "dirtymap.h"
#include "qcow2-format.h"
#include "unit-test.h"

#define PATH "test.qcow2"
#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define TiB (UINT64_C(1) << 40)
#define PiB (UINT64_C(1) << 50)

/*----------------------------------------------------------------------
 * Header
 */

/* A file of 5 clusters of 64 KiB: header, refcount table, refcount
 * block, L1 table, spare.
 */
#define HDR_FILE_SIZE (UINT64_C(5) << 16)
#define HDR_DISK_SIZE (GiB + 12345)   /* 3 L1 entries of 512 MiB */

static uint8_t hbuf[65536];

static void
valid_header (struct qcow2_header *h)
{
  memset (h, 0, sizeof *h);
  h->version = 3;
  h->cluster_bits = 16;
  h->size = HDR_DISK_SIZE;
  h->crypt_method = 0;
  h->l1_size = 3;
  h->l1_table_offset = 0x30000;
  h->refcount_table_offset = 0x10000;
  h->refcount_table_clusters = 1;
  h->nb_snapshots = 0;
  h->snapshots_offset = 0;
  h->incompatible_features = 0;
  h->compatible_features = 1;                   /* lazy refcounts */
  h->autoclear_features = QCOW2_AUTOCLEAR_BITMAPS;
  h->refcount_order = 4;
  h->header_length = QCOW2_HEADER_LENGTH_WRITTEN;
  h->compression_type = 0;
}

/* Encode H into a zeroed hbuf, then decode LEN bytes of it. */
static int
decode_header (const struct qcow2_header *h, size_t len, uint64_t file_size,
               struct qcow2_header *out)
{
  memset (hbuf, 0, sizeof hbuf);
  qcow2_header_encode (h, hbuf);
  clear_last_error ();
  return qcow2_header_decode (PATH, hbuf, len, file_size, out);
}

static int
header_ok (const struct qcow2_header *h, uint64_t file_size)
{
  struct qcow2_header out;

  return decode_header (h, sizeof hbuf, file_size, &out);
}

/* The header must be refused, with a message naming the file and WORD. */
#define CHECK_HEADER_REFUSED(h, file_size, word)                        \
  do {                                                                  \
    CHECK (header_ok (&(h), (file_size)) == -1);                        \
    CHECK_ERROR_MENTIONS (PATH);                                        \
    CHECK_ERROR_MENTIONS (word);                                        \
  } while (0)

static void
check_headers_equal (const struct qcow2_header *a,
                     const struct qcow2_header *b)
{
  CHECK_EQ_U64 (a->version, b->version);
  CHECK_EQ_U64 (a->backing_file_offset, b->backing_file_offset);
  CHECK_EQ_U64 (a->backing_file_size, b->backing_file_size);
  CHECK_EQ_U64 (a->cluster_bits, b->cluster_bits);
  CHECK_EQ_U64 (a->size, b->size);
  CHECK_EQ_U64 (a->crypt_method, b->crypt_method);
  CHECK_EQ_U64 (a->l1_size, b->l1_size);
  CHECK_EQ_U64 (a->l1_table_offset, b->l1_table_offset);
  CHECK_EQ_U64 (a->refcount_table_offset, b->refcount_table_offset);
  CHECK_EQ_U64 (a->refcount_table_clusters, b->refcount_table_clusters);
  CHECK_EQ_U64 (a->nb_snapshots, b->nb_snapshots);
  CHECK_EQ_U64 (a->snapshots_offset, b->snapshots_offset);
  CHECK_EQ_U64 (a->incompatible_features, b->incompatible_features);
  CHECK_EQ_U64 (a->compatible_features, b->compatible_features);
  CHECK_EQ_U64 (a->autoclear_features, b->autoclear_features);
  CHECK_EQ_U64 (a->refcount_order, b->refcount_order);
  CHECK_EQ_U64 (a->header_length, b->header_length);
  CHECK_EQ_U64 (a->compression_type, b->compression_type);
}

static void
test_header_round_trip (void)
{
  struct qcow2_header h, out;

  valid_header (&h);
  CHECK (decode_header (&h, sizeof hbuf, HDR_FILE_SIZE, &out) == 0);
  check_headers_equal (&out, &h);

  /* The fixed layout, big-endian. */
  CHECK (memcmp (hbuf, "QFI\xfb", 4) == 0);
  CHECK_EQ_U64 (load_be32 (&hbuf[4]), 3);
  CHECK_EQ_U64 (load_be32 (&hbuf[20]), 16);
  CHECK_EQ_U64 (load_be64 (&hbuf[24]), HDR_DISK_SIZE);
  CHECK_EQ_U64 (load_be32 (&hbuf[36]), 3);
  CHECK_EQ_U64 (load_be64 (&hbuf[40]), 0x30000);
  CHECK_EQ_U64 (load_be64 (&hbuf[48]), 0x10000);
  CHECK_EQ_U64 (load_be32 (&hbuf[56]), 1);
  CHECK_EQ_U64 (load_be64 (&hbuf[80]), 1);
  CHECK_EQ_U64 (load_be64 (&hbuf[QCOW2_HEADER_AUTOCLEAR_OFFSET]),
                QCOW2_AUTOCLEAR_BITMAPS);
  CHECK_EQ_U64 (load_be32 (&hbuf[96]), 4);
  CHECK_EQ_U64 (load_be32 (&hbuf[100]), 112);

  /* Exactly the header's bytes are enough. */
  CHECK (decode_header (&h, 112, HDR_FILE_SIZE, &out) == 0);

  /* Every field with an unusual but valid value survives. */
  h.size = UINT64_C(3) << 29;                   /* exactly 3 L1 entries */
  h.backing_file_offset = 112;
  h.backing_file_size = 10;
  h.nb_snapshots = 2;
  h.snapshots_offset = 0x40000;
  h.incompatible_features = QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_COMPRESSION;
  h.compression_type = 1;                       /* zstd */
  h.compatible_features = UINT64_C(0x8000000000000001);
  h.autoclear_features = UINT64_C(0xf000000000000003);
  h.refcount_order = 6;
  h.refcount_table_clusters = 2;
  CHECK (decode_header (&h, sizeof hbuf, HDR_FILE_SIZE, &out) == 0);
  check_headers_equal (&out, &h);

  /* A 104-byte header has no compression_type: not written, read as 0. */
  valid_header (&h);
  h.header_length = 104;
  memset (hbuf, 0xaa, sizeof hbuf);
  qcow2_header_encode (&h, hbuf);
  CHECK_EQ_U64 (hbuf[104], 0xaa);
  hbuf[104] = 7;
  CHECK (qcow2_header_decode (PATH, hbuf, sizeof hbuf, HDR_FILE_SIZE,
                              &out) == 0);
  CHECK_EQ_U64 (out.header_length, 104);
  CHECK_EQ_U64 (out.compression_type, 0);

  /* A longer header: the unknown bytes after the known fields are
   * left alone by the encoder.
   */
  valid_header (&h);
  h.header_length = 128;
  memset (hbuf, 0xaa, sizeof hbuf);
  qcow2_header_encode (&h, hbuf);
  CHECK_EQ_U64 (hbuf[104], 0);                  /* compression_type */
  CHECK_EQ_U64 (hbuf[105], 0xaa);
  CHECK_EQ_U64 (hbuf[127], 0xaa);
  CHECK (qcow2_header_decode (PATH, hbuf, sizeof hbuf, HDR_FILE_SIZE,
                              &out) == 0);
  CHECK_EQ_U64 (out.header_length, 128);

  /* The limits themselves are accepted. */
  valid_header (&h);
  h.refcount_order = 0;
  CHECK (header_ok (&h, HDR_FILE_SIZE) == 0);
  h.refcount_order = QCOW2_MAX_REFCOUNT_ORDER;
  CHECK (header_ok (&h, HDR_FILE_SIZE) == 0);

  /* Smallest clusters: 512 bytes, header filling the first cluster. */
  valid_header (&h);
  h.cluster_bits = 9;
  h.size = MiB;                                 /* 32 L1 entries */
  h.l1_size = 32;
  h.header_length = 512;
  CHECK (header_ok (&h, HDR_FILE_SIZE) == 0);

  /* Largest clusters: 2 MiB; one L1 entry maps 512 GiB. */
  valid_header (&h);
  h.cluster_bits = 21;
  h.refcount_table_offset = 2 * MiB;
  h.l1_table_offset = 4 * MiB;
  h.l1_size = 1;
  CHECK (header_ok (&h, 6 * MiB) == 0);

  /* A refcount table of exactly 8 MiB. */
  valid_header (&h);
  h.refcount_table_clusters = 128;
  h.l1_table_offset = 0x10000 + 8 * MiB;
  CHECK (header_ok (&h, 16 * MiB) == 0);

  /* A refcount table ending exactly at the end of the file. */
  valid_header (&h);
  h.refcount_table_offset = HDR_FILE_SIZE - 0x10000;
  CHECK (header_ok (&h, HDR_FILE_SIZE) == 0);

  /* A backing file name ending exactly at the end of the first cluster. */
  valid_header (&h);
  h.backing_file_offset = 0x10000 - 1023;
  h.backing_file_size = 1023;
  CHECK (header_ok (&h, HDR_FILE_SIZE) == 0);
}

/* The header's fields read or written alone: the cluster size of a
 * partial header, and the autoclear field rewritten in place.
 */
static void
test_header_fields_alone (void)
{
  struct qcow2_header h, out;
  uint8_t before[QCOW2_V3_HEADER_MIN];
  size_t i;

  valid_header (&h);
  memset (hbuf, 0, sizeof hbuf);
  qcow2_header_encode (&h, hbuf);
  CHECK_EQ_U64 (qcow2_header_peek_cluster_bits (hbuf, QCOW2_V3_HEADER_MIN),
                16);
  CHECK_EQ_U64 (qcow2_header_peek_cluster_bits (hbuf, 24), 16);
  /* Too short to hold the field: 0, which no valid header has. */
  CHECK_EQ_U64 (qcow2_header_peek_cluster_bits (hbuf, 23), 0);
  CHECK_EQ_U64 (qcow2_header_peek_cluster_bits (hbuf, 0), 0);
  /* Not validated: whatever the bytes say. */
  store_be32 (&hbuf[20], 63);
  CHECK_EQ_U64 (qcow2_header_peek_cluster_bits (hbuf, 24), 63);

  /* The autoclear field alone changes, at its documented offset. */
  qcow2_header_encode (&h, hbuf);
  memcpy (before, hbuf, sizeof before);
  qcow2_header_encode_autoclear (QCOW2_AUTOCLEAR_BITMAPS
                                 | QCOW2_AUTOCLEAR_JOURNAL, hbuf);
  CHECK_EQ_U64 (load_be64 (&hbuf[QCOW2_HEADER_AUTOCLEAR_OFFSET]),
                QCOW2_AUTOCLEAR_BITMAPS | QCOW2_AUTOCLEAR_JOURNAL);
  for (i = 0; i < sizeof before; ++i)
    if (i < QCOW2_HEADER_AUTOCLEAR_OFFSET ||
        i >= QCOW2_HEADER_AUTOCLEAR_OFFSET + 8)
      CHECK_EQ_U64 (hbuf[i], before[i]);
  clear_last_error ();
  CHECK (qcow2_header_decode (PATH, hbuf, sizeof hbuf, HDR_FILE_SIZE,
                              &out) == 0);
  h.autoclear_features = QCOW2_AUTOCLEAR_BITMAPS | QCOW2_AUTOCLEAR_JOURNAL;
  check_headers_equal (&out, &h);
}

static void
test_header_refusals (void)
{
  struct qcow2_header h, out;

  /* Bad magic. */
  valid_header (&h);
  memset (hbuf, 0, sizeof hbuf);
  qcow2_header_encode (&h, hbuf);
  hbuf[3] = 0xfa;
  clear_last_error ();
  CHECK (qcow2_header_decode (PATH, hbuf, sizeof hbuf, HDR_FILE_SIZE,
                              &out) == -1);
  CHECK_ERROR_MENTIONS (PATH);
  CHECK_ERROR_MENTIONS ("not a qcow2 file");
  CHECK_ERROR_MENTIONS ("magic");

  /* Shorter than a version 3 header. */
  CHECK (decode_header (&h, QCOW2_V3_HEADER_MIN - 1, HDR_FILE_SIZE,
                        &out) == -1);
  CHECK_ERROR_MENTIONS ("not a qcow2 file");

  /* Version 2: the message tells how to upgrade. */
  valid_header (&h);
  h.version = 2;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "version 2");
  CHECK_ERROR_MENTIONS ("compat=1.1");
  h.version = 4;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "version 4");

  /* cluster_bits outside 9..21. */
  valid_header (&h);
  h.cluster_bits = 8;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "cluster_bits");
  h.cluster_bits = 22;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "cluster_bits");

  /* header_length too short, not a multiple of 8, beyond the cluster,
   * beyond the bytes given.
   */
  valid_header (&h);
  h.header_length = 100;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "header_length");
  h.header_length = 108;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "header_length");
  h.header_length = 113;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "header_length");
  valid_header (&h);
  h.cluster_bits = 9;
  h.size = MiB;
  h.l1_size = 32;
  h.header_length = 520;                        /* > 512-byte cluster */
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "header_length");
  valid_header (&h);
  h.header_length = 65536 + 8;                  /* > 64 KiB cluster */
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "header_length");
  valid_header (&h);
  CHECK (decode_header (&h, 104, HDR_FILE_SIZE, &out) == -1);
  CHECK_ERROR_MENTIONS ("header_length");

  /* Encryption. */
  valid_header (&h);
  h.crypt_method = 1;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "crypt_method");
  h.crypt_method = 2;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "crypt_method");

  /* Unknown incompatible feature bits (bit 5 is the first one). */
  valid_header (&h);
  h.incompatible_features = UINT64_C(1) << 5;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "incompatible feature");
  CHECK_ERROR_MENTIONS ("0x20");
  h.incompatible_features = UINT64_C(1) << 63;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "incompatible feature");

  /* Corrupt bit: the message says how to repair. */
  valid_header (&h);
  h.incompatible_features = QCOW2_INCOMPAT_CORRUPT;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "corrupt");
  CHECK_ERROR_MENTIONS ("qemu-img check -r all");

  /* Compression type bit without the compression_type field. */
  valid_header (&h);
  h.header_length = 104;
  h.incompatible_features = QCOW2_INCOMPAT_COMPRESSION;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "compression");

  /* refcount_order above 6. */
  valid_header (&h);
  h.refcount_order = 7;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "refcount_order");

  /* Refcount table: misaligned, at 0, empty, outside the file, larger
   * than 8 MiB.
   */
  valid_header (&h);
  h.refcount_table_offset = 0x10200;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "refcount table");
  h.refcount_table_offset = 0;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "refcount table");
  valid_header (&h);
  h.refcount_table_clusters = 0;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "refcount table");
  valid_header (&h);
  h.refcount_table_offset = HDR_FILE_SIZE;      /* starts at the end */
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "refcount table");
  h.refcount_table_offset = HDR_FILE_SIZE - 0x10000;
  h.refcount_table_clusters = 2;                /* runs past the end */
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "refcount table");
  h.refcount_table_offset = UINT64_C(0xffffffffffff0000);  /* wraps */
  h.refcount_table_clusters = 1;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "refcount table");
  valid_header (&h);
  h.refcount_table_clusters = 129;              /* 8 MiB + 64 KiB */
  h.l1_table_offset = 0x10000 + 9 * MiB;
  CHECK_HEADER_REFUSED (h, 16 * MiB, "refcount table");
  CHECK_ERROR_MENTIONS ("8 MiB");

  /* L1 table too small for the virtual size: 1 GiB + 12345 needs 3
   * entries of 512 MiB, and exactly 1.5 GiB + 1 byte needs 4.
   */
  valid_header (&h);
  h.l1_size = 2;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "l1_size");
  h.l1_size = 0;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "l1_size");
  valid_header (&h);
  h.size = (UINT64_C(3) << 29) + 1;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "l1_size");

  /* L1 table misaligned, at 0, outside the file, above 32 MiB. */
  valid_header (&h);
  h.l1_table_offset = 0x30008;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "L1 table");
  h.l1_table_offset = 0;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "L1 table");
  h.l1_table_offset = HDR_FILE_SIZE;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "L1 table");
  valid_header (&h);
  h.l1_size = (QCOW2_MAX_L1_BYTES / 8) + 1;
  CHECK_HEADER_REFUSED (h, 64 * MiB, "L1 table");

  /* Snapshots table misaligned or outside the file. */
  valid_header (&h);
  h.nb_snapshots = 1;
  h.snapshots_offset = 0x40008;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "snapshots_offset");
  h.snapshots_offset = HDR_FILE_SIZE;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "snapshots_offset");

  /* Backing file name outside the first cluster, inside the header,
   * or too long.
   */
  valid_header (&h);
  h.backing_file_offset = 0x10000;              /* second cluster */
  h.backing_file_size = 10;
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "backing file");
  h.backing_file_offset = 0x10000 - 4;          /* runs past the cluster */
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "backing file");
  h.backing_file_offset = 64;                   /* inside the header */
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "backing file");
  h.backing_file_offset = 1024;
  h.backing_file_size = 1024;                   /* longer than 1023 */
  CHECK_HEADER_REFUSED (h, HDR_FILE_SIZE, "backing file");
}

/*----------------------------------------------------------------------
 * Header extensions
 */

static void
test_extensions (void)
{
  static const uint8_t odd[5] = { 'a', 'b', 'c', 'd', 'e' };
  uint8_t bm_data[QCOW2_BITMAP_EXT_SIZE];
  struct qcow2_bitmaps_ext bx = { 1, 32, 0x20000 };
  struct qcow2_extension in[2], two[2], *out = NULL;
  const size_t start = QCOW2_HEADER_LENGTH_WRITTEN;
  size_t size;
  int n;

  qcow2_bitmaps_ext_encode (&bx, bm_data);
  in[0].type = 0x12345678;
  in[0].length = sizeof odd;
  in[0].data = (uint8_t *) odd;
  in[1].type = QCOW2_EXT_BITMAPS;
  in[1].length = sizeof bm_data;
  in[1].data = bm_data;

  /* 8 + 8 (5 bytes padded) + 8 + 24 + end marker 8. */
  size = qcow2_extensions_encoded_size (in, 2);
  CHECK_EQ_U64 (size, 56);
  CHECK_EQ_U64 (qcow2_extensions_encoded_size (in, 0), 8);
  CHECK_EQ_U64 (qcow2_extensions_encoded_size (in, 1), 24);

  memset (hbuf, 0xee, sizeof hbuf);
  qcow2_extensions_encode (in, 2, &hbuf[start]);
  CHECK_EQ_U64 (load_be32 (&hbuf[start]), 0x12345678);
  CHECK_EQ_U64 (load_be32 (&hbuf[start + 4]), 5);
  CHECK (memcmp (&hbuf[start + 8], "abcde", 5) == 0);
  CHECK (hbuf[start + 13] == 0 && hbuf[start + 14] == 0 &&
         hbuf[start + 15] == 0);                /* padding is zeroed */
  CHECK_EQ_U64 (load_be32 (&hbuf[start + 16]), QCOW2_EXT_BITMAPS);
  CHECK_EQ_U64 (load_be32 (&hbuf[start + 20]), 24);
  CHECK_EQ_U64 (load_be64 (&hbuf[start + 48]), 0);   /* end marker */
  CHECK_EQ_U64 (hbuf[start + size], 0xee);      /* nothing written after */

  n = qcow2_extensions_decode (PATH, hbuf, start, sizeof hbuf, &out);
  CHECK_EQ_U64 (n, 2);
  CHECK (out != NULL);
  CHECK_EQ_U64 (out[0].type, 0x12345678);
  CHECK_EQ_U64 (out[0].length, 5);
  CHECK (memcmp (out[0].data, odd, 5) == 0);
  CHECK_EQ_U64 (out[1].type, QCOW2_EXT_BITMAPS);
  CHECK_EQ_U64 (out[1].length, 24);
  CHECK (memcmp (out[1].data, bm_data, 24) == 0);
  qcow2_extensions_free (out, n);

  /* The area may end right after the end marker. */
  out = NULL;
  n = qcow2_extensions_decode (PATH, hbuf, start, start + size, &out);
  CHECK_EQ_U64 (n, 2);
  qcow2_extensions_free (out, n);

  /* Only an end marker: no extensions. */
  memset (&hbuf[start], 0, 8);
  out = NULL;
  n = qcow2_extensions_decode (PATH, hbuf, start, sizeof hbuf, &out);
  CHECK_EQ_U64 (n, 0);
  qcow2_extensions_free (out, 0);

  /* A zero-length extension. */
  two[0].type = 0xabcdef01;
  two[0].length = 0;
  two[0].data = bm_data;                        /* not read */
  CHECK_EQ_U64 (qcow2_extensions_encoded_size (two, 1), 16);
  qcow2_extensions_encode (two, 1, &hbuf[start]);
  out = NULL;
  n = qcow2_extensions_decode (PATH, hbuf, start, sizeof hbuf, &out);
  CHECK_EQ_U64 (n, 1);
  CHECK_EQ_U64 (out[0].type, 0xabcdef01);
  CHECK_EQ_U64 (out[0].length, 0);
  qcow2_extensions_free (out, n);

  /* No end marker before the end of the area. */
  qcow2_extensions_encode (in, 2, &hbuf[start]);
  clear_last_error ();
  CHECK (qcow2_extensions_decode (PATH, hbuf, start, start + size - 8,
                                  &out) == -1);
  CHECK_ERROR_MENTIONS (PATH);
  CHECK_ERROR_MENTIONS ("end marker");
  clear_last_error ();
  CHECK (qcow2_extensions_decode (PATH, hbuf, start, start + size - 1,
                                  &out) == -1);
  CHECK_ERROR_MENTIONS ("end marker");
  /* The padding of the 5-byte extension does not fit either. */
  clear_last_error ();
  CHECK (qcow2_extensions_decode (PATH, hbuf, start, start + 13,
                                  &out) == -1);
  CHECK_ERROR_MENTIONS ("end marker");

  /* A length running past the end of the area. */
  store_be32 (&hbuf[start + 4], 1000);
  clear_last_error ();
  CHECK (qcow2_extensions_decode (PATH, hbuf, start, start + 512,
                                  &out) == -1);
  CHECK_ERROR_MENTIONS (PATH);
  CHECK_ERROR_MENTIONS ("length 1000");
  CHECK_ERROR_MENTIONS ("0x12345678");
  store_be32 (&hbuf[start + 4], UINT32_MAX);
  clear_last_error ();
  CHECK (qcow2_extensions_decode (PATH, hbuf, start, sizeof hbuf,
                                  &out) == -1);
  CHECK_ERROR_MENTIONS ("length");
  /* ... and the second one past the end, after a good first one. */
  qcow2_extensions_encode (in, 2, &hbuf[start]);
  clear_last_error ();
  CHECK (qcow2_extensions_decode (PATH, hbuf, start, start + 16 + 8 + 23,
                                  &out) == -1);
  CHECK_ERROR_MENTIONS ("length 24");

  /* Two bitmaps extensions. */
  two[0] = in[1];
  two[1] = in[1];
  qcow2_extensions_encode (two, 2, &hbuf[start]);
  clear_last_error ();
  CHECK (qcow2_extensions_decode (PATH, hbuf, start, sizeof hbuf,
                                  &out) == -1);
  CHECK_ERROR_MENTIONS (PATH);
  CHECK_ERROR_MENTIONS ("two bitmaps extensions");

  /* Two unknown extensions of the same type are kept. */
  two[0] = in[0];
  two[1] = in[0];
  qcow2_extensions_encode (two, 2, &hbuf[start]);
  out = NULL;
  n = qcow2_extensions_decode (PATH, hbuf, start, sizeof hbuf, &out);
  CHECK_EQ_U64 (n, 2);
  qcow2_extensions_free (out, n);
}

static void
test_feature_table (void)
{
  struct qcow2_extension ext, *out = NULL;
  const size_t start = QCOW2_HEADER_LENGTH_WRITTEN;
  bool found_bitmaps = false;
  size_t i;
  int n;

  qcow2_feature_table_build (&ext);
  CHECK_EQ_U64 (ext.type, QCOW2_EXT_FEATURE_TABLE);
  CHECK (ext.length > 0 && ext.length % 48 == 0);
  for (i = 0; i < ext.length; i += 48) {
    CHECK (ext.data[i] <= 2);                   /* feature type */
    CHECK (ext.data[i + 1] < 64);               /* bit */
    if (ext.data[i] == 2 && ext.data[i + 1] == 0) {
      CHECK (memcmp (&ext.data[i + 2], "bitmaps", 8) == 0);
      found_bitmaps = true;
    }
  }
  CHECK (found_bitmaps);

  /* It goes through the extension encoder and decoder unchanged. */
  memset (hbuf, 0, sizeof hbuf);
  qcow2_extensions_encode (&ext, 1, &hbuf[start]);
  n = qcow2_extensions_decode (PATH, hbuf, start, sizeof hbuf, &out);
  CHECK_EQ_U64 (n, 1);
  CHECK_EQ_U64 (out[0].length, ext.length);
  CHECK (memcmp (out[0].data, ext.data, ext.length) == 0);
  qcow2_extensions_free (out, n);
}

/*----------------------------------------------------------------------
 * Bitmaps extension
 */

static uint8_t bx_data[QCOW2_BITMAP_EXT_SIZE];
static struct qcow2_extension bx_ext = {
  QCOW2_EXT_BITMAPS, QCOW2_BITMAP_EXT_SIZE, bx_data
};

static int
bitmaps_ext_try (uint32_t nb, uint64_t dir_size, uint64_t dir_offset,
                 uint64_t file_size, struct qcow2_bitmaps_ext *out)
{
  struct qcow2_bitmaps_ext in;

  in.nb_bitmaps = nb;
  in.directory_size = dir_size;
  in.directory_offset = dir_offset;
  qcow2_bitmaps_ext_encode (&in, bx_data);
  clear_last_error ();
  return qcow2_bitmaps_ext_decode (PATH, &bx_ext, 16, file_size, out);
}

#define CHECK_BX_REFUSED(nb, size, offset, file_size, word)             \
  do {                                                                  \
    struct qcow2_bitmaps_ext o_;                                        \
    CHECK (bitmaps_ext_try ((nb), (size), (offset), (file_size),        \
                            &o_) == -1);                                \
    CHECK_ERROR_MENTIONS (PATH);                                        \
    CHECK_ERROR_MENTIONS (word);                                        \
  } while (0)

static void
test_bitmaps_ext (void)
{
  struct qcow2_bitmaps_ext out;
  const uint64_t fsize = 0x50000;

  /* Round trip, and the layout. */
  CHECK (bitmaps_ext_try (3, 1112, 0x20000, fsize, &out) == 0);
  CHECK_EQ_U64 (out.nb_bitmaps, 3);
  CHECK_EQ_U64 (out.directory_size, 1112);
  CHECK_EQ_U64 (out.directory_offset, 0x20000);
  CHECK_EQ_U64 (load_be32 (&bx_data[0]), 3);
  CHECK_EQ_U64 (load_be32 (&bx_data[4]), 0);
  CHECK_EQ_U64 (load_be64 (&bx_data[8]), 1112);
  CHECK_EQ_U64 (load_be64 (&bx_data[16]), 0x20000);

  /* Limits accepted: 65535 bitmaps, the largest directory, a
   * directory ending exactly at the end of the file, the smallest
   * directory for its count.
   */
  CHECK (bitmaps_ext_try (65535, 65535 * 32, 0x20000, 16 * MiB, &out) == 0);
  CHECK (bitmaps_ext_try (1, QCOW2_BITMAP_MAX_DIR_SIZE, 0x20000,
                          128 * MiB, &out) == 0);
  CHECK (bitmaps_ext_try (1, 0x10000, 0x40000, fsize, &out) == 0);
  CHECK (bitmaps_ext_try (2, 64, 0x20000, fsize, &out) == 0);

  /* Length other than 24. */
  bitmaps_ext_try (1, 32, 0x20000, fsize, &out);
  bx_ext.length = 23;
  clear_last_error ();
  CHECK (qcow2_bitmaps_ext_decode (PATH, &bx_ext, 16, fsize, &out) == -1);
  CHECK_ERROR_MENTIONS ("length 23");
  bx_ext.length = 32;
  clear_last_error ();
  CHECK (qcow2_bitmaps_ext_decode (PATH, &bx_ext, 16, fsize, &out) == -1);
  CHECK_ERROR_MENTIONS ("length 32");
  bx_ext.length = QCOW2_BITMAP_EXT_SIZE;

  /* Reserved field not zero. */
  bitmaps_ext_try (1, 32, 0x20000, fsize, &out);
  bx_data[7] = 1;
  clear_last_error ();
  CHECK (qcow2_bitmaps_ext_decode (PATH, &bx_ext, 16, fsize, &out) == -1);
  CHECK_ERROR_MENTIONS ("reserved");
  bx_data[7] = 0;
  bx_data[4] = 0x80;
  clear_last_error ();
  CHECK (qcow2_bitmaps_ext_decode (PATH, &bx_ext, 16, fsize, &out) == -1);
  CHECK_ERROR_MENTIONS ("reserved");

  /* nb_bitmaps outside 1..65535. */
  CHECK_BX_REFUSED (0, 32, 0x20000, fsize, "nb_bitmaps");
  CHECK_BX_REFUSED (65536, 65536 * 32, 0x20000, 16 * MiB, "nb_bitmaps");
  CHECK_BX_REFUSED (UINT32_MAX, 32, 0x20000, fsize, "nb_bitmaps");

  /* Directory too large, or too small to hold nb entries of at least
   * 32 bytes each.
   */
  CHECK_BX_REFUSED (1, QCOW2_BITMAP_MAX_DIR_SIZE + 1, 0x20000, 128 * MiB,
                    "bitmap_directory_size");
  CHECK_BX_REFUSED (1, UINT64_MAX, 0x20000, UINT64_MAX,
                    "bitmap_directory_size");
  CHECK_BX_REFUSED (2, 63, 0x20000, fsize, "bitmap_directory_size");
  CHECK_BX_REFUSED (1, 0, 0x20000, fsize, "bitmap_directory_size");

  /* Directory offset: misaligned, 0, outside the file. */
  CHECK_BX_REFUSED (1, 32, 0x20008, fsize, "bitmap_directory_offset");
  CHECK_BX_REFUSED (1, 32, 0x20200, fsize, "bitmap_directory_offset");
  CHECK_BX_REFUSED (1, 32, 0, fsize, "bitmap_directory_offset");
  CHECK_BX_REFUSED (1, 32, fsize, fsize, "bitmap_directory_offset");
  CHECK_BX_REFUSED (1, 0x10008, 0x40000, fsize, "bitmap_directory_offset");
  CHECK_BX_REFUSED (1, 32, UINT64_C(0xffffffffffff0000), fsize,
                    "bitmap_directory_offset");
}

/*----------------------------------------------------------------------
 * Bitmap directory
 */

#define DIR_FILE_SIZE 0x60000
static uint8_t dbuf[8192];
static struct qcow2_bitmap_entry dir_in[4], dir_out[4];

static void
set_entry (struct qcow2_bitmap_entry *e, uint64_t table_offset,
           uint32_t table_size, uint32_t flags, uint8_t granularity_bits,
           const char *name, size_t name_size)
{
  memset (e, 0, sizeof *e);
  e->table_offset = table_offset;
  e->table_size = table_size;
  e->flags = flags;
  e->type = QCOW2_BITMAP_TYPE_DIRTY;
  e->granularity_bits = granularity_bits;
  e->name_size = name_size;
  memcpy (e->name, name, name_size);
}

/* Three entries with names of 1, 7 and 1023 bytes. */
static void
three_entries (void)
{
  char long_name[1023];
  size_t i;

  for (i = 0; i < sizeof long_name; ++i)
    long_name[i] = 'A' + i % 26;
  set_entry (&dir_in[0], 0x30000, 1, QCOW2_BITMAP_FLAG_AUTO, 16, "a", 1);
  set_entry (&dir_in[1], 0x40000, 2,
             QCOW2_BITMAP_FLAG_IN_USE | QCOW2_BITMAP_FLAG_AUTO, 9,
             "bitmap7", 7);
  set_entry (&dir_in[2], 0x50000, 3, 0, 31, long_name, sizeof long_name);
}

/* Sum of the entry sizes of the first NB entries of dir_in. */
static uint64_t
dir_size (uint32_t nb)
{
  uint64_t size = 0;
  uint32_t i;

  for (i = 0; i < nb; ++i)
    size += qcow2_bitmap_entry_size (dir_in[i].name_size);
  return size;
}

/* Encode the first NB entries of dir_in, decode them as NB_DECODE. */
static int
dir_try (uint32_t nb, uint32_t nb_decode)
{
  memset (dbuf, 0xee, sizeof dbuf);
  qcow2_bitmap_directory_encode (dir_in, nb, dbuf);
  clear_last_error ();
  return qcow2_bitmap_directory_decode (PATH, dbuf, dir_size (nb), nb_decode,
                                        16, DIR_FILE_SIZE, dir_out);
}

/* Modify entry 0 of the valid three, which must then be refused. */
#define CHECK_DIR_REFUSED(word)                                         \
  do {                                                                  \
    CHECK (dir_try (3, 3) == -1);                                       \
    CHECK_ERROR_MENTIONS (PATH);                                        \
    CHECK_ERROR_MENTIONS (word);                                        \
    three_entries ();                                                   \
  } while (0)

static void
test_directory (void)
{
  uint32_t i;

  CHECK_EQ_U64 (qcow2_bitmap_entry_size (1), 32);
  CHECK_EQ_U64 (qcow2_bitmap_entry_size (7), 32);
  CHECK_EQ_U64 (qcow2_bitmap_entry_size (8), 32);
  CHECK_EQ_U64 (qcow2_bitmap_entry_size (9), 40);
  CHECK_EQ_U64 (qcow2_bitmap_entry_size (1023), 1048);

  three_entries ();
  CHECK_EQ_U64 (dir_size (3), 32 + 32 + 1048);
  CHECK (dir_try (3, 3) == 0);
  for (i = 0; i < 3; ++i) {
    CHECK_EQ_U64 (dir_out[i].table_offset, dir_in[i].table_offset);
    CHECK_EQ_U64 (dir_out[i].table_size, dir_in[i].table_size);
    CHECK_EQ_U64 (dir_out[i].flags, dir_in[i].flags);
    CHECK_EQ_U64 (dir_out[i].type, dir_in[i].type);
    CHECK_EQ_U64 (dir_out[i].granularity_bits, dir_in[i].granularity_bits);
    CHECK_EQ_U64 (dir_out[i].name_size, dir_in[i].name_size);
    CHECK (memcmp (dir_out[i].name, dir_in[i].name, dir_in[i].name_size)
           == 0);
    CHECK (dir_out[i].name[dir_out[i].name_size] == '\0');
  }
  CHECK (strcmp (dir_out[0].name, "a") == 0);
  CHECK (strcmp (dir_out[1].name, "bitmap7") == 0);
  CHECK_EQ_U64 (strlen (dir_out[2].name), 1023);

  /* The layout of entry 0, and the padding of every entry zeroed. */
  CHECK_EQ_U64 (load_be64 (&dbuf[0]), 0x30000);
  CHECK_EQ_U64 (load_be32 (&dbuf[8]), 1);
  CHECK_EQ_U64 (load_be32 (&dbuf[12]), QCOW2_BITMAP_FLAG_AUTO);
  CHECK_EQ_U64 (dbuf[16], QCOW2_BITMAP_TYPE_DIRTY);
  CHECK_EQ_U64 (dbuf[17], 16);
  CHECK_EQ_U64 (load_be16 (&dbuf[18]), 1);
  CHECK_EQ_U64 (load_be32 (&dbuf[20]), 0);      /* extra_data_size */
  CHECK_EQ_U64 (dbuf[24], 'a');
  for (i = 25; i < 32; ++i)
    CHECK_EQ_U64 (dbuf[i], 0);
  CHECK (memcmp (&dbuf[32 + 24], "bitmap7", 7) == 0);
  CHECK_EQ_U64 (dbuf[63], 0);
  CHECK_EQ_U64 (load_be16 (&dbuf[64 + 18]), 1023);
  CHECK_EQ_U64 (dbuf[64 + 24 + 1022], 'A' + 1022 % 26);
  CHECK_EQ_U64 (dbuf[64 + 1047], 0);
  CHECK_EQ_U64 (dbuf[64 + 1048], 0xee);         /* nothing written after */

  /* A single entry whose name fills the entry exactly (no padding). */
  set_entry (&dir_in[0], 0x30000, 1, 0, 16, "12345678", 8);
  CHECK (dir_try (1, 1) == 0);
  CHECK (strcmp (dir_out[0].name, "12345678") == 0);
  three_entries ();

  /* The largest table: 8192 clusters of 64 KiB is 512 MiB of data. */
  dir_in[0].table_size = 8192;
  CHECK (dir_try (3, 3) == 0);
  three_entries ();

  /* extra_data_size is never accepted. */
  memset (dbuf, 0, sizeof dbuf);
  qcow2_bitmap_directory_encode (dir_in, 3, dbuf);
  store_be32 (&dbuf[20], 8);
  clear_last_error ();
  CHECK (qcow2_bitmap_directory_decode (PATH, dbuf, dir_size (3), 3, 16,
                                        DIR_FILE_SIZE, dir_out) == -1);
  CHECK_ERROR_MENTIONS ("extra_data_size");

  /* name_size 0, above 1023, or running past the directory. */
  dir_in[0].name_size = 0;
  CHECK_DIR_REFUSED ("name_size");
  memset (dbuf, 0, sizeof dbuf);
  qcow2_bitmap_directory_encode (dir_in, 3, dbuf);
  store_be16 (&dbuf[64 + 18], 1024);
  clear_last_error ();
  CHECK (qcow2_bitmap_directory_decode (PATH, dbuf, dir_size (3) + 8, 3, 16,
                                        DIR_FILE_SIZE, dir_out) == -1);
  CHECK_ERROR_MENTIONS ("name_size");
  qcow2_bitmap_directory_encode (dir_in, 3, dbuf);
  clear_last_error ();
  CHECK (qcow2_bitmap_directory_decode (PATH, dbuf, dir_size (3) - 1, 3, 16,
                                        DIR_FILE_SIZE, dir_out) == -1);
  CHECK_ERROR_MENTIONS ("name_size");

  /* Type other than 1. */
  dir_in[0].type = 2;
  CHECK_DIR_REFUSED ("type 2");
  dir_in[0].type = 0;
  CHECK_DIR_REFUSED ("type 0");

  /* granularity_bits outside 9..31. */
  dir_in[0].granularity_bits = 8;
  CHECK_DIR_REFUSED ("granularity_bits");
  dir_in[0].granularity_bits = 32;
  CHECK_DIR_REFUSED ("granularity_bits");

  /* Reserved flags, bit 2 (extra data compatible) included. */
  dir_in[0].flags = UINT32_C(1) << 2;
  CHECK_DIR_REFUSED ("flags");
  dir_in[0].flags = QCOW2_BITMAP_FLAG_AUTO | (UINT32_C(1) << 31);
  CHECK_DIR_REFUSED ("flags");

  /* table_size 0, above QEMU's limits. */
  dir_in[0].table_size = 0;
  CHECK_DIR_REFUSED ("bitmap_table_size");
  dir_in[0].table_size = 8193;                  /* > 512 MiB of data */
  CHECK_DIR_REFUSED ("bitmap_table_size");
  dir_in[0].table_size = QCOW2_BITMAP_MAX_TABLE_SIZE + 1;
  CHECK_DIR_REFUSED ("bitmap_table_size");

  /* Table offset misaligned, 0, outside the file. */
  dir_in[0].table_offset = 0x30200;
  CHECK_DIR_REFUSED ("bitmap_table_offset");
  dir_in[0].table_offset = 0;
  CHECK_DIR_REFUSED ("bitmap_table_offset");
  dir_in[0].table_offset = DIR_FILE_SIZE;
  CHECK_DIR_REFUSED ("bitmap_table_offset");
  dir_in[0].table_offset = UINT64_C(0xffffffffffff0000);
  CHECK_DIR_REFUSED ("bitmap_table_offset");

  /* The table may end exactly at the end of the file, not after it:
   * entry 2's table is 3 entries (24 bytes) at 0x50000.
   */
  dir_in[0].table_offset = DIR_FILE_SIZE - 0x10000;
  dir_in[0].table_size = 8192;
  CHECK (dir_try (3, 3) == 0);
  three_entries ();
  CHECK (dir_try (3, 3) == 0);
  CHECK (qcow2_bitmap_directory_decode (PATH, dbuf, dir_size (3), 3, 16,
                                        0x50000 + 24, dir_out) == 0);
  clear_last_error ();
  CHECK (qcow2_bitmap_directory_decode (PATH, dbuf, dir_size (3), 3, 16,
                                        0x50000 + 23, dir_out) == -1);
  CHECK_ERROR_MENTIONS ("bitmap_table_offset");

  /* Duplicate names. */
  set_entry (&dir_in[1], 0x40000, 2, 0, 16, "a", 1);
  CHECK_DIR_REFUSED ("appears twice");
  CHECK_ERROR_MENTIONS ("'a'");
  /* Names that only share a prefix are different. */
  set_entry (&dir_in[1], 0x40000, 2, 0, 16, "ab", 2);
  CHECK (dir_try (3, 3) == 0);
  three_entries ();

  /* nb_bitmaps disagreeing with the directory, both ways. */
  clear_last_error ();
  memset (dbuf, 0, sizeof dbuf);
  qcow2_bitmap_directory_encode (dir_in, 3, dbuf);
  CHECK (qcow2_bitmap_directory_decode (PATH, dbuf, dir_size (3), 2, 16,
                                        DIR_FILE_SIZE, dir_out) == -1);
  CHECK_ERROR_MENTIONS (PATH);
  CHECK_ERROR_MENTIONS ("nb_bitmaps");
  clear_last_error ();
  CHECK (qcow2_bitmap_directory_decode (PATH, dbuf, dir_size (3), 4, 16,
                                        DIR_FILE_SIZE, dir_out) == -1);
  CHECK_ERROR_MENTIONS ("nb_bitmaps");
  /* The directory continuing with zeros past the last entry. */
  clear_last_error ();
  CHECK (qcow2_bitmap_directory_decode (PATH, dbuf, dir_size (3) + 32, 3, 16,
                                        DIR_FILE_SIZE, dir_out) == -1);
  CHECK_ERROR_MENTIONS ("nb_bitmaps");

  /* A name with a NUL byte inside. */
  set_entry (&dir_in[1], 0x40000, 2, 0, 16, "a\0c", 3);
  CHECK_DIR_REFUSED ("NUL");
  set_entry (&dir_in[1], 0x40000, 2, 0, 16, "ab\0", 3);
  CHECK_DIR_REFUSED ("NUL");
}

/*----------------------------------------------------------------------
 * Bitmap table entries and refcount table entries
 */

#define TE_FILE_SIZE 0x60000

static int
table_entry_try (uint64_t raw, uint64_t *offset, bool *all_ones)
{
  clear_last_error ();
  return qcow2_bitmap_table_entry_decode (PATH, "bm", 42, raw, 16,
                                          TE_FILE_SIZE, offset, all_ones);
}

#define CHECK_TE_REFUSED(raw)                                           \
  do {                                                                  \
    uint64_t o_;                                                        \
    bool a_;                                                            \
    CHECK (table_entry_try ((raw), &o_, &a_) == -1);                    \
    CHECK_ERROR_MENTIONS (PATH);                                        \
    CHECK_ERROR_MENTIONS ("'bm'");                                      \
    CHECK_ERROR_MENTIONS ("table entry 42");                            \
  } while (0)

static void
test_table_entries (void)
{
  uint64_t offset;
  bool all_ones;

  /* 0: the cluster reads as zeros. */
  CHECK (table_entry_try (0, &offset, &all_ones) == 0);
  CHECK_EQ_U64 (offset, 0);
  CHECK (!all_ones);

  /* Bit 0 with offset 0: all ones. */
  CHECK (table_entry_try (1, &offset, &all_ones) == 0);
  CHECK_EQ_U64 (offset, 0);
  CHECK (all_ones);

  /* Aligned offsets inside the file. */
  CHECK (table_entry_try (0x30000, &offset, &all_ones) == 0);
  CHECK_EQ_U64 (offset, 0x30000);
  CHECK (!all_ones);
  CHECK (table_entry_try (TE_FILE_SIZE - 0x10000, &offset, &all_ones) == 0);
  CHECK_EQ_U64 (offset, TE_FILE_SIZE - 0x10000);

  /* Reserved bits 1-8 and 56-63. */
  CHECK_TE_REFUSED (0x30000 | 2);
  CHECK_TE_REFUSED (2);
  CHECK_TE_REFUSED (0x30000 | 0x100);
  CHECK_TE_REFUSED (0x30000 | (UINT64_C(1) << 56));
  CHECK_TE_REFUSED (0x30000 | (UINT64_C(1) << 63));
  CHECK_TE_REFUSED (UINT64_C(1) << 63);
  CHECK_TE_REFUSED (1 | (UINT64_C(1) << 63));

  /* Misaligned (to 512 bytes, not to the 64 KiB cluster). */
  CHECK_TE_REFUSED (0x30200);

  /* Outside the file. */
  CHECK_TE_REFUSED (TE_FILE_SIZE);
  CHECK_TE_REFUSED (UINT64_C(0x00ffffffffff0000));

  /* Bit 0 with a non-zero offset. */
  CHECK_TE_REFUSED (0x30000 | 1);

  /* Encoding: the offset alone; round trip. */
  CHECK_EQ_U64 (qcow2_bitmap_table_entry_encode (0), 0);
  CHECK_EQ_U64 (qcow2_bitmap_table_entry_encode (0x30000), 0x30000);
  CHECK_EQ_U64 (qcow2_bitmap_table_entry_encode (UINT64_C(0xfedcba9876540000)),
                UINT64_C(0x00dcba9876540000));
  CHECK (table_entry_try (qcow2_bitmap_table_entry_encode (0x50000),
                          &offset, &all_ones) == 0);
  CHECK_EQ_U64 (offset, 0x50000);
  CHECK (!all_ones);
}

/* Whole tables: the layout (big-endian, one entry per 8 bytes), each
 * entry checked as above, and the failing entry named by its index.
 */
static void
test_tables (void)
{
  const uint64_t offsets[4] = {
    0x30000, 0, 0x50000, UINT64_C(0xff00000000040000)
  };
  uint64_t decoded[4], blocks[2] = { 0x20000, 0x40000 | 0x1ff };
  bool all_ones[4];
  uint8_t raw[32];

  qcow2_bitmap_table_encode (offsets, 4, raw);
  CHECK_EQ_U64 (load_be64 (&raw[0]), 0x30000);
  CHECK_EQ_U64 (load_be64 (&raw[8]), 0);
  CHECK_EQ_U64 (load_be64 (&raw[16]), 0x50000);
  CHECK_EQ_U64 (load_be64 (&raw[24]), 0x40000);   /* reserved bits dropped */
  clear_last_error ();
  CHECK (qcow2_bitmap_table_decode (PATH, "bm", raw, 4, 16, TE_FILE_SIZE,
                                    decoded, all_ones) == 0);
  CHECK_EQ_U64 (decoded[0], 0x30000);
  CHECK_EQ_U64 (decoded[1], 0);
  CHECK_EQ_U64 (decoded[2], 0x50000);
  CHECK_EQ_U64 (decoded[3], 0x40000);
  CHECK (!all_ones[0] && !all_ones[1] && !all_ones[2] && !all_ones[3]);

  /* An all-ones entry; then a bad one, named by its index. */
  store_be64 (&raw[8], 1);
  CHECK (qcow2_bitmap_table_decode (PATH, "bm", raw, 4, 16, TE_FILE_SIZE,
                                    decoded, all_ones) == 0);
  CHECK (all_ones[1]);
  CHECK_EQ_U64 (decoded[1], 0);
  store_be64 (&raw[16], 0x50200);
  clear_last_error ();
  CHECK (qcow2_bitmap_table_decode (PATH, "bm", raw, 4, 16, TE_FILE_SIZE,
                                    decoded, all_ones) == -1);
  CHECK_ERROR_MENTIONS ("'bm'");
  CHECK_ERROR_MENTIONS ("table entry 2");
  /* No entry: nothing read. */
  CHECK (qcow2_bitmap_table_decode (PATH, "bm", NULL, 0, 16, TE_FILE_SIZE,
                                    NULL, NULL) == 0);

  qcow2_reftable_encode (blocks, 2, raw);
  CHECK_EQ_U64 (load_be64 (&raw[0]), 0x20000);
  CHECK_EQ_U64 (load_be64 (&raw[8]), 0x40000);    /* reserved bits dropped */
}

static int
reftable_entry_try (uint64_t raw, uint64_t *offset)
{
  uint8_t table[8 * 8] = { 0 };

  store_be64 (&table[7 * 8], raw);
  clear_last_error ();
  return qcow2_reftable_entry_decode (PATH, 7, table, 16, TE_FILE_SIZE,
                                      offset);
}

#define CHECK_RT_REFUSED(raw)                                           \
  do {                                                                  \
    uint64_t o_;                                                        \
    CHECK (reftable_entry_try ((raw), &o_) == -1);                      \
    CHECK_ERROR_MENTIONS (PATH);                                        \
    CHECK_ERROR_MENTIONS ("refcount table entry 7");                    \
  } while (0)

static void
test_reftable_entries (void)
{
  uint64_t offset;

  CHECK (reftable_entry_try (0, &offset) == 0);
  CHECK_EQ_U64 (offset, 0);
  CHECK (reftable_entry_try (0x20000, &offset) == 0);
  CHECK_EQ_U64 (offset, 0x20000);
  CHECK (reftable_entry_try (TE_FILE_SIZE - 0x10000, &offset) == 0);
  CHECK_EQ_U64 (offset, TE_FILE_SIZE - 0x10000);

  /* Reserved bits 0-8. */
  CHECK_RT_REFUSED (0x20000 | 1);
  CHECK_RT_REFUSED (0x20000 | 0x100);
  CHECK_RT_REFUSED (1);
  /* Misaligned. */
  CHECK_RT_REFUSED (0x20200);
  /* Outside the file. */
  CHECK_RT_REFUSED (TE_FILE_SIZE);
  CHECK_RT_REFUSED (UINT64_C(1) << 63);
}

/*----------------------------------------------------------------------
 * Refcount blocks
 */

static uint64_t
refcount_max (unsigned order)
{
  unsigned bits = 1u << order;

  return bits == 64 ? UINT64_MAX : (UINT64_C(1) << bits) - 1;
}

/* A value that differs between neighbours, within the width. */
static uint64_t
pattern (unsigned order, uint64_t i)
{
  return ((i + 1) * UINT64_C(0x9e3779b97f4a7c15) >> 7) & refcount_max (order);
}

static void
test_refcounts (void)
{
  uint8_t block[256];
  unsigned order;
  uint64_t i, n;

  for (order = 0; order <= 6; ++order) {
    const uint64_t max = refcount_max (order);

    n = sizeof block * 8 >> order;

    /* Every entry set to its own value reads back. */
    memset (block, 0, sizeof block);
    for (i = 0; i < n; ++i)
      qcow2_refcount_set (block, order, i, pattern (order, i));
    for (i = 0; i < n; ++i)
      CHECK_EQ_U64 (qcow2_refcount_get (block, order, i), pattern (order, i));

    /* Setting one entry to max, then 0, then 1 leaves the others. */
    for (i = 0; i < n; i += 5) {
      uint64_t j;

      qcow2_refcount_set (block, order, i, max);
      CHECK_EQ_U64 (qcow2_refcount_get (block, order, i), max);
      qcow2_refcount_set (block, order, i, 0);
      CHECK_EQ_U64 (qcow2_refcount_get (block, order, i), 0);
      qcow2_refcount_set (block, order, i, 1);
      CHECK_EQ_U64 (qcow2_refcount_get (block, order, i), 1);
      for (j = 0; j < n; ++j)
        if (j != i)
          CHECK_EQ_U64 (qcow2_refcount_get (block, order, j),
                        pattern (order, j));
      qcow2_refcount_set (block, order, i, pattern (order, i));
    }

    /* Neighbours of a max entry in a zeroed block stay zero. */
    memset (block, 0, sizeof block);
    qcow2_refcount_set (block, order, 9, max);
    CHECK_EQ_U64 (qcow2_refcount_get (block, order, 8), 0);
    CHECK_EQ_U64 (qcow2_refcount_get (block, order, 9), max);
    CHECK_EQ_U64 (qcow2_refcount_get (block, order, 10), 0);
    for (i = 0; i < n; ++i)
      if (i != 9)
        CHECK_EQ_U64 (qcow2_refcount_get (block, order, i), 0);
    /* ... and an all-ones block keeps its ones around a zero entry. */
    memset (block, 0xff, sizeof block);
    qcow2_refcount_set (block, order, 9, 0);
    CHECK_EQ_U64 (qcow2_refcount_get (block, order, 8), max);
    CHECK_EQ_U64 (qcow2_refcount_get (block, order, 9), 0);
    CHECK_EQ_U64 (qcow2_refcount_get (block, order, 10), max);
  }

  /* Raw layout.  Sub-byte widths: entry 0 in the least significant
   * bits of byte 0 (the spec: "bit 0 means the least significant bit").
   */
  memset (block, 0, sizeof block);
  qcow2_refcount_set (block, 0, 0, 1);
  CHECK_EQ_U64 (block[0], 0x01);
  qcow2_refcount_set (block, 0, 7, 1);
  CHECK_EQ_U64 (block[0], 0x81);
  qcow2_refcount_set (block, 0, 8, 1);
  CHECK_EQ_U64 (block[1], 0x01);

  memset (block, 0, sizeof block);
  qcow2_refcount_set (block, 1, 1, 3);
  CHECK_EQ_U64 (block[0], 0x0c);
  qcow2_refcount_set (block, 1, 0, 2);
  CHECK_EQ_U64 (block[0], 0x0e);
  qcow2_refcount_set (block, 1, 3, 1);
  CHECK_EQ_U64 (block[0], 0x4e);
  qcow2_refcount_set (block, 1, 4, 1);
  CHECK_EQ_U64 (block[1], 0x01);

  memset (block, 0, sizeof block);
  qcow2_refcount_set (block, 2, 0, 0xa);
  qcow2_refcount_set (block, 2, 1, 0x5);
  CHECK_EQ_U64 (block[0], 0x5a);
  qcow2_refcount_set (block, 2, 3, 0xc);
  CHECK_EQ_U64 (block[1], 0xc0);

  memset (block, 0, sizeof block);
  qcow2_refcount_set (block, 3, 3, 0xab);
  CHECK_EQ_U64 (block[3], 0xab);
  CHECK (block[2] == 0 && block[4] == 0);

  /* 16, 32 and 64 bits: big-endian. */
  memset (block, 0, sizeof block);
  qcow2_refcount_set (block, 4, 1, 0x1234);
  CHECK (block[2] == 0x12 && block[3] == 0x34);
  CHECK (block[0] == 0 && block[1] == 0 && block[4] == 0);
  block[4] = 0xab;
  block[5] = 0xcd;
  CHECK_EQ_U64 (qcow2_refcount_get (block, 4, 2), 0xabcd);

  memset (block, 0, sizeof block);
  qcow2_refcount_set (block, 5, 1, 0x12345678);
  CHECK (block[4] == 0x12 && block[5] == 0x34 &&
         block[6] == 0x56 && block[7] == 0x78);
  CHECK (block[3] == 0 && block[8] == 0);
  memcpy (&block[8], "\x01\x02\x03\x04", 4);
  CHECK_EQ_U64 (qcow2_refcount_get (block, 5, 2), 0x01020304);

  memset (block, 0, sizeof block);
  qcow2_refcount_set (block, 6, 1, UINT64_C(0x0102030405060708));
  CHECK (memcmp (&block[8], "\x01\x02\x03\x04\x05\x06\x07\x08", 8) == 0);
  CHECK (block[7] == 0 && block[16] == 0);
  memcpy (&block[16], "\xf0\xe0\xd0\xc0\xb0\xa0\x90\x80", 8);
  CHECK_EQ_U64 (qcow2_refcount_get (block, 6, 2),
                UINT64_C(0xf0e0d0c0b0a09080));
}

/*----------------------------------------------------------------------
 * Bitmap sizes and names
 */

static void
test_bitmap_sizes (void)
{
  /* One table entry covers granularity * 8 * cluster_size bytes:
   * 64 KiB * 8 * 64 KiB = 32 GiB.
   */
  CHECK_EQ_U64 (qcow2_bitmap_table_size (GiB, 16, 16), 1);
  CHECK_EQ_U64 (qcow2_bitmap_table_size (0, 16, 16), 0);
  CHECK_EQ_U64 (qcow2_bitmap_table_size (1, 16, 16), 1);
  CHECK_EQ_U64 (qcow2_bitmap_table_size (32 * GiB, 16, 16), 1);
  CHECK_EQ_U64 (qcow2_bitmap_table_size (32 * GiB + 1, 16, 16), 2);
  CHECK_EQ_U64 (qcow2_bitmap_table_size (64 * GiB, 16, 16), 2);
  CHECK_EQ_U64 (qcow2_bitmap_table_size (64 * GiB + 1, 16, 16), 3);
  /* 512 bytes * 8 * 512 bytes = 2 MiB per entry. */
  CHECK_EQ_U64 (qcow2_bitmap_table_size (2 * MiB, 9, 9), 1);
  CHECK_EQ_U64 (qcow2_bitmap_table_size (2 * MiB + 1, 9, 9), 2);
  /* 1 PiB at 256 KiB: 2^50 / 2^37 = 8192 entries. */
  CHECK_EQ_U64 (qcow2_bitmap_table_size (PiB, 18, 16), 8192);
  /* The widest shift possible, 31 + 3 + 21. */
  CHECK_EQ_U64 (qcow2_bitmap_table_size (UINT64_MAX, 31, 21), 512);

  /* QEMU's limit: at most 512 MiB of bitmap data. */
  clear_last_error ();
  CHECK (qcow2_bitmap_size_check (PATH, "bm", GiB, 16, 16) == 0);
  CHECK (qcow2_bitmap_size_check (PATH, "bm", GiB, 9, 16) == 0);
  CHECK (qcow2_bitmap_size_check (PATH, "bm", PiB, 18, 16) == 0);
  CHECK (qcow2_bitmap_size_check (PATH, "bm", PiB, 31, 16) == 0);
  CHECK (qcow2_bitmap_size_check (PATH, "bm", 0, 9, 16) == 0);

  /* 1 PiB at 64 KiB: 2 GiB of bitmap, 256 KiB is the finest that fits. */
  clear_last_error ();
  CHECK (qcow2_bitmap_size_check (PATH, "bm", PiB, 16, 16) == -1);
  CHECK_ERROR_MENTIONS (PATH);
  CHECK_ERROR_MENTIONS ("'bm'");
  CHECK_ERROR_MENTIONS ("dirtybitmap-granularity=262144");
  clear_last_error ();
  CHECK (qcow2_bitmap_size_check (PATH, "bm", PiB, 17, 16) == -1);
  CHECK_ERROR_MENTIONS ("dirtybitmap-granularity=262144");

  /* Exactly 512 MiB of data: 2^29 bytes * 8 * 64 KiB = 256 TiB. */
  CHECK (qcow2_bitmap_size_check (PATH, "bm", 256 * TiB, 16, 16) == 0);
  clear_last_error ();
  CHECK (qcow2_bitmap_size_check (PATH, "bm", 256 * TiB + 1, 16, 16) == -1);
  CHECK_ERROR_MENTIONS ("dirtybitmap-granularity=131072");
  /* The same boundary with 512-byte granules and clusters: 2 TiB. */
  CHECK (qcow2_bitmap_size_check (PATH, "bm", 2 * TiB, 9, 9) == 0);
  clear_last_error ();
  CHECK (qcow2_bitmap_size_check (PATH, "bm", 2 * TiB + 1, 9, 9) == -1);
  CHECK_ERROR_MENTIONS ("dirtybitmap-granularity=1024");

  /* Too large for any granularity: 2^64 - 1 bytes at 2 GiB is 1 GiB
   * of bitmap.
   */
  clear_last_error ();
  CHECK (qcow2_bitmap_size_check (PATH, "bm", UINT64_MAX, 16, 16) == -1);
  CHECK_ERROR_MENTIONS ("too large for any qcow2 bitmap");
  /* While 2^63 bytes at 2 GiB granules is exactly 512 MiB. */
  CHECK (qcow2_bitmap_size_check (PATH, "bm", UINT64_C(1) << 63, 31, 16)
         == 0);
}

static void
test_bitmap_names (void)
{
  char name[1025];

  clear_last_error ();
  CHECK (qcow2_bitmap_name_check ("", "dirtybitmap=") == -1);
  CHECK_ERROR_MENTIONS ("dirtybitmap=");
  CHECK_ERROR_MENTIONS ("1 to 1023");

  memset (name, 'n', 1024);
  name[1024] = '\0';
  clear_last_error ();
  CHECK (qcow2_bitmap_name_check (name, "dirtybitmap=") == -1);
  CHECK_ERROR_MENTIONS ("1024 bytes");
  CHECK_ERROR_MENTIONS ("1 to 1023");

  name[1023] = '\0';
  CHECK (qcow2_bitmap_name_check (name, "dirtybitmap=") == 0);
  CHECK (qcow2_bitmap_name_check ("a", "dirtybitmap=") == 0);
  CHECK (qcow2_bitmap_name_check ("with space/and:punct", "x") == 0);
}

/*----------------------------------------------------------------------
 * Header combinations the qcow2 specification forbids and QEMU refuses
 * to open, which an earlier decoder let through.
 */
static void
test_feature_combinations (void)
{
  struct qcow2_header h;
  int r;

  /* compression_type must be 0 (zlib) or 1 (zstd).
   * qcow2.txt lists only these; QEMU's validate_compression_type
   * fails with "unknown compression type".
   */
  valid_header (&h);
  h.incompatible_features = QCOW2_INCOMPAT_COMPRESSION;
  h.compression_type = 2;
  r = header_ok (&h, HDR_FILE_SIZE);
  CHECK (r == -1 && strstr (last_error (), "compression_type"));

  /* A non-zero compression_type without incompatible bit
   * 3.  qcow2.txt: without the bit "this field must not be present or
   * must be zero"; QEMU: "Compression type incompatible feature bit
   * must be set".
   */
  valid_header (&h);
  h.compression_type = 1;
  r = header_ok (&h, HDR_FILE_SIZE);
  CHECK (r == -1 && strstr (last_error (), "compression"));

  /* Incompatible bit 3 with compression_type 0 in a
   * header long enough to have the field.  qcow2.txt: with the bit the
   * field "must be present and non-zero"; QEMU: "Compression type
   * incompatible feature bit must not be set".
   */
  valid_header (&h);
  h.incompatible_features = QCOW2_INCOMPAT_COMPRESSION;
  h.compression_type = 0;
  r = header_ok (&h, HDR_FILE_SIZE);
  CHECK (r == -1 && strstr (last_error (), "compression"));

  /* Extended L2 entries (incompatible bit 4) with clusters
   * below 16 KiB.  qcow2.txt: "if the image has Extended L2 Entries
   * then cluster_bits must be at least 14"; QEMU: "Unsupported
   * subcluster size" (32 subclusters must be at least 512 bytes).
   */
  valid_header (&h);
  h.incompatible_features = QCOW2_INCOMPAT_EXTL2;
  h.cluster_bits = 13;
  h.refcount_table_offset = 0x10000;            /* aligned to 8 KiB too */
  h.l1_table_offset = 0x30000;
  h.size = MiB;
  h.l1_size = 1;         /* 8 KiB clusters * 512 extended L2 entries */
  r = header_ok (&h, HDR_FILE_SIZE);
  CHECK (r == -1 && strstr (last_error (), "cluster_bits"));

  /* with Extended L2 entries an L2 entry is 16 bytes, so
   * one L1 entry maps cluster_size / 16 clusters, half as many (the
   * spec's "Extended L2 Entries" section; QEMU sets l2_bits from the
   * entry size and fails with "L1 table is too small").  The decoder
   * always divides by 8: 1 GiB + 12345 at 64 KiB needs 5 L1 entries
   * of 256 MiB, but 3 are accepted.
   */
  valid_header (&h);
  h.incompatible_features = QCOW2_INCOMPAT_EXTL2;
  h.l1_size = 3;
  r = header_ok (&h, HDR_FILE_SIZE);
  CHECK (r == -1 && strstr (last_error (), "l1_size"));
  h.l1_size = 5;                                /* and 5 are enough */
  CHECK (header_ok (&h, HDR_FILE_SIZE) == 0);
}

/*----------------------------------------------------------------------
 * The crash-safety record (QCOW2_EXT_JOURNAL)
 */

#define JX_MAX 300
static uint8_t jx_data[QCOW2_JOURNAL_EXT_FIXED + 8 * JX_MAX + 8];

/* Encode a record naming the journal at JOURNAL and N protected
 * tables (0x100000 + i * 0x10000) into jx_data; returns its size.
 */
static size_t
journal_ext_build (uint64_t journal, uint32_t n)
{
  uint64_t tables[JX_MAX];
  struct qcow2_journal_ext in = { journal, n, tables };
  uint32_t i;

  for (i = 0; i < n; ++i)
    tables[i] = 0x100000 + (uint64_t) i * 0x10000;
  memset (jx_data, 0xee, sizeof jx_data);
  qcow2_journal_ext_encode (&in, jx_data);
  return qcow2_journal_ext_size (n);
}

static int
journal_ext_try (size_t length, unsigned cluster_bits,
                 struct qcow2_journal_ext *out, const char **why)
{
  struct qcow2_extension ext = { QCOW2_EXT_JOURNAL, length, jx_data };

  *why = NULL;
  return qcow2_journal_ext_decode (&ext, cluster_bits, out, why);
}

/* Recompute the crc32 of a record of LENGTH bytes in jx_data, as a
 * writer that got every other field wrong would.
 */
static void
journal_ext_recrc (size_t length)
{
  store_be32 (&jx_data[length - 4],
              crc32 (crc32 (0, Z_NULL, 0), jx_data, length - 4));
}

#define CHECK_JX_REFUSED(length, cluster_bits, word)                    \
  do {                                                                  \
    struct qcow2_journal_ext o_;                                        \
    const char *why_;                                                   \
    CHECK (journal_ext_try ((length), (cluster_bits), &o_, &why_)       \
           == -1);                                                      \
    CHECK (why_ != NULL);                                               \
    if (strstr (why_, (word)) == NULL) {                                \
      fprintf (stderr, "%s:%d: \"%s\" does not mention \"%s\"\n",       \
               __FILE__, __LINE__, why_, (word));                       \
      exit (EXIT_FAILURE);                                              \
    }                                                                   \
    CHECK (o_.protected_tables == NULL);                                \
  } while (0)

static void
test_journal_ext (void)
{
  static const uint32_t counts[] = { 0, 1, 2, 7, JX_MAX };
  struct qcow2_journal_ext out;
  const char *why;
  size_t len, i, k;
  uint8_t saved;

  /* The constants: our extension type is "nbdj", and our autoclear
   * bit is the top one, not one QEMU knows (so QEMU clears it when it
   * writes the file, which is the point).
   */
  CHECK_EQ_U64 (QCOW2_EXT_JOURNAL, 0x6e62646a);
  CHECK (QCOW2_EXT_JOURNAL != QCOW2_EXT_BITMAPS &&
         QCOW2_EXT_JOURNAL != QCOW2_EXT_FEATURE_TABLE &&
         QCOW2_EXT_JOURNAL != QCOW2_EXT_END);
  CHECK_EQ_U64 (QCOW2_AUTOCLEAR_JOURNAL, UINT64_C(1) << 63);
  CHECK ((QCOW2_AUTOCLEAR_JOURNAL & QCOW2_AUTOCLEAR_KNOWN) == 0);
  CHECK_EQ_U64 (qcow2_journal_ext_size (0), 20);
  CHECK_EQ_U64 (qcow2_journal_ext_size (3), 44);
  CHECK_EQ_U64 (qcow2_journal_ext_size (65535), 20 + 65535 * 8);

  /* Round trips, and the layout. */
  for (k = 0; k < sizeof counts / sizeof counts[0]; ++k) {
    const uint32_t n = counts[k];

    len = journal_ext_build (0x7770000, n);
    CHECK_EQ_U64 (len, 20 + 8 * (uint64_t) n);
    CHECK_EQ_U64 (load_be32 (&jx_data[0]), QCOW2_JOURNAL_EXT_VERSION);
    CHECK_EQ_U64 (load_be32 (&jx_data[4]), n);
    CHECK_EQ_U64 (load_be64 (&jx_data[8]), 0x7770000);
    if (n > 0)
      CHECK_EQ_U64 (load_be64 (&jx_data[16 + 8 * (n - 1)]),
                    0x100000 + (uint64_t) (n - 1) * 0x10000);
    CHECK_EQ_U64 (load_be32 (&jx_data[len - 4]),
                  crc32 (crc32 (0, Z_NULL, 0), jx_data, len - 4));
    CHECK (jx_data[len] == 0xee);               /* nothing written past */

    CHECK (journal_ext_try (len, 16, &out, &why) == 0);
    CHECK_EQ_U64 (out.journal_table_offset, 0x7770000);
    CHECK_EQ_U64 (out.nr_protected, n);
    CHECK (out.protected_tables != NULL);
    for (i = 0; i < n; ++i)
      CHECK_EQ_U64 (out.protected_tables[i], 0x100000 + i * 0x10000);
    free (out.protected_tables);
  }

  /* The record survives the extension encoder and decoder, with its
   * length not a multiple of 8 (padded on disk).
   */
  {
    struct qcow2_extension in = { QCOW2_EXT_JOURNAL, 0, jx_data }, *exts;
    const size_t start = QCOW2_HEADER_LENGTH_WRITTEN;
    int n;

    in.length = journal_ext_build (0x30000, 3);
    CHECK_EQ_U64 (qcow2_extensions_encoded_size (&in, 1), 8 + 48 + 8);
    memset (hbuf, 0xee, sizeof hbuf);
    qcow2_extensions_encode (&in, 1, &hbuf[start]);
    n = qcow2_extensions_decode (PATH, hbuf, start, sizeof hbuf, &exts);
    CHECK (n == 1);
    CHECK_EQ_U64 (exts[0].type, QCOW2_EXT_JOURNAL);
    CHECK_EQ_U64 (exts[0].length, 44);
    CHECK (qcow2_journal_ext_decode (&exts[0], 16, &out, &why) == 0);
    CHECK_EQ_U64 (out.journal_table_offset, 0x30000);
    CHECK_EQ_U64 (out.nr_protected, 3);
    CHECK_EQ_U64 (out.protected_tables[2], 0x120000);
    free (out.protected_tables);
    qcow2_extensions_free (exts, n);
  }

  /* Truncated: shorter than the fixed part, down to nothing. */
  len = journal_ext_build (0x30000, 0);
  CHECK_JX_REFUSED (19, 16, "truncated");
  CHECK_JX_REFUSED (4, 16, "truncated");
  CHECK_JX_REFUSED (0, 16, "truncated");

  /* The count does not match the length: one table short, one too
   * many, and a count beyond QEMU's limit.
   */
  len = journal_ext_build (0x30000, 2);
  CHECK_JX_REFUSED (len - 8, 16, "does not match its count");
  CHECK_JX_REFUSED (len + 8, 16, "does not match its count");
  CHECK_JX_REFUSED (len - 1, 16, "does not match its count");
  store_be32 (&jx_data[4], 3);
  journal_ext_recrc (len);
  CHECK_JX_REFUSED (len, 16, "does not match its count");
  store_be32 (&jx_data[4], QCOW2_BITMAP_MAX_COUNT + 1);
  journal_ext_recrc (len);
  CHECK_JX_REFUSED (len, 16, "does not match its count");

  /* Any one byte changed fails the crc32, the crc itself included
   * (except in the count, which the length check catches first).
   */
  len = journal_ext_build (0x30000, 2);
  for (i = 0; i < len; ++i) {
    if (i >= 4 && i < 8)
      continue;
    saved = jx_data[i];
    jx_data[i] ^= 0x10;
    CHECK_JX_REFUSED (len, 16, "crc32");
    jx_data[i] = saved;
  }
  for (i = 4; i < 8; ++i) {
    saved = jx_data[i];
    jx_data[i] ^= 0x10;
    CHECK_JX_REFUSED (len, 16, "does not match its count");
    jx_data[i] = saved;
  }
  CHECK (journal_ext_try (len, 16, &out, &why) == 0);
  free (out.protected_tables);

  /* A version we do not know, with a valid crc. */
  store_be32 (&jx_data[0], QCOW2_JOURNAL_EXT_VERSION + 1);
  journal_ext_recrc (len);
  CHECK_JX_REFUSED (len, 16, "version");
  store_be32 (&jx_data[0], 0);
  journal_ext_recrc (len);
  CHECK_JX_REFUSED (len, 16, "version");

  /* No journal, or one not on a cluster boundary; the alignment
   * follows the cluster size given.
   */
  len = journal_ext_build (0, 1);
  CHECK_JX_REFUSED (len, 16, "no valid journal");
  len = journal_ext_build (0x30200, 1);
  CHECK_JX_REFUSED (len, 16, "no valid journal");
  CHECK (journal_ext_try (len, 9, &out, &why) == 0);
  CHECK_EQ_U64 (out.journal_table_offset, 0x30200);
  free (out.protected_tables);
  len = journal_ext_build (0x38000, 1);
  CHECK_JX_REFUSED (len, 16, "no valid journal");
  CHECK (journal_ext_try (len, 15, &out, &why) == 0);
  free (out.protected_tables);

  /* QEMU's bitmap limit bounds the count even when the length
   * matches: 65535 protected tables are accepted, 65536 are not.
   */
  {
    const uint32_t max = QCOW2_BITMAP_MAX_COUNT;
    uint64_t *tables = calloc (max + 1, sizeof *tables);
    uint8_t *big = malloc (qcow2_journal_ext_size (max + 1));
    struct qcow2_journal_ext in = { 0x30000, max, tables };
    struct qcow2_extension ext = { QCOW2_EXT_JOURNAL, 0, big };

    CHECK (tables && big);
    for (i = 0; i <= max; ++i)
      tables[i] = 0x40000 + i * 0x10000;
    qcow2_journal_ext_encode (&in, big);
    ext.length = qcow2_journal_ext_size (max);
    CHECK (qcow2_journal_ext_decode (&ext, 16, &out, &why) == 0);
    CHECK_EQ_U64 (out.nr_protected, max);
    CHECK_EQ_U64 (out.protected_tables[max - 1], 0x40000 + (uint64_t) (max - 1) * 0x10000);
    free (out.protected_tables);
    in.nr_protected = max + 1;
    qcow2_journal_ext_encode (&in, big);
    ext.length = qcow2_journal_ext_size (max + 1);
    why = NULL;
    CHECK (qcow2_journal_ext_decode (&ext, 16, &out, &why) == -1);
    CHECK (why != NULL && strstr (why, "does not match its count"));
    CHECK (out.protected_tables == NULL);
    free (big);
    free (tables);
  }
}

/* Bit i of bitmap data is 1 << (i % 8) of byte i / 8, the order the
 * dirty map exports.
 */
static void
test_bitmap_data_bits (void)
{
  static const uint64_t bits[] = { 0, 7, 8, 13, 63, 64, 100, 255 };
  uint8_t data[32] = { 0 }, exported[32];
  struct dirtymap *map = dirtymap_new (256);
  size_t i;

  CHECK (map != NULL);
  for (i = 0; i < sizeof bits / sizeof bits[0]; ++i) {
    CHECK (qcow2_bitmap_data_set (data, bits[i]));
    CHECK (!qcow2_bitmap_data_set (data, bits[i]));
    CHECK (dirtymap_set_range (map, bits[i], 1) == 1);
  }
  CHECK (data[0] == 0x81 && data[1] == 0x21 && data[31] == 0x80);
  CHECK (dirtymap_export (map, 0, exported, sizeof exported));
  CHECK (memcmp (data, exported, sizeof data) == 0);
  dirtymap_free (map);
}

/*----------------------------------------------------------------------
 * The data identity record (QCOW2_EXT_IDENTITY)
 */

static uint8_t ix_data[QCOW2_IDENTITY_EXT_FIXED + QCOW2_IDENTITY_MAX_TOKEN];

static const char *
identity_ext_refusal (size_t length)
{
  struct qcow2_extension ext = { QCOW2_EXT_IDENTITY, length, ix_data };
  struct qcow2_identity_ext out;
  const char *why = NULL;

  CHECK (qcow2_identity_ext_decode (&ext, &out, &why) == -1);
  CHECK (why != NULL);
  return why;
}

static void
identity_ext_check_refused (size_t length, const char *word)
{
  const char *why = identity_ext_refusal (length);

  if (strstr (why, word) == NULL) {
    fprintf (stderr, "\"%s\" does not mention \"%s\"\n", why, word);
    exit (EXIT_FAILURE);
  }
}

static void
test_identity_ext (void)
{
  struct qcow2_identity_ext in = {
    .kind = QCOW2_IDENTITY_FILE, .flags = QCOW2_IDENTITY_SESSION,
    .device = 0x801, .inode = 1234567, .size = UINT64_C(1) << 40,
    .ctime_sec = 1764600000, .ctime_nsec = 999999999,
    .counters = { 1, 2, 3, UINT64_MAX }, .boot_id = { 0xde, 0xad },
  }, out;
  struct qcow2_extension ext = { QCOW2_EXT_IDENTITY, 0, ix_data };
  const char *why;
  size_t len, i;

  CHECK_EQ_U64 (QCOW2_EXT_IDENTITY, 0x6e626469);
  CHECK (QCOW2_EXT_IDENTITY != QCOW2_EXT_JOURNAL);

  /* Round trip, every field, without a token and with one. */
  len = qcow2_identity_ext_size (&in);
  CHECK_EQ_U64 (len, QCOW2_IDENTITY_EXT_FIXED);
  qcow2_identity_ext_encode (&in, ix_data);
  ext.length = len;
  CHECK (qcow2_identity_ext_decode (&ext, &out, &why) == 0);
  CHECK (out.kind == in.kind && out.flags == in.flags &&
         out.device == in.device && out.inode == in.inode &&
         out.size == in.size && out.ctime_sec == in.ctime_sec &&
         out.ctime_nsec == in.ctime_nsec && out.token_length == 0);
  CHECK (memcmp (out.counters, in.counters, sizeof in.counters) == 0);
  CHECK (memcmp (out.boot_id, in.boot_id, sizeof in.boot_id) == 0);

  memset (&in, 0, sizeof in);
  in.kind = QCOW2_IDENTITY_TOKEN;
  in.token_length = QCOW2_IDENTITY_MAX_TOKEN;
  memset (in.token, 'x', in.token_length);
  len = qcow2_identity_ext_size (&in);
  qcow2_identity_ext_encode (&in, ix_data);
  ext.length = len;
  CHECK (qcow2_identity_ext_decode (&ext, &out, &why) == 0);
  CHECK (out.token_length == in.token_length &&
         strcmp (out.token, in.token) == 0);

  /* Every byte flipped is refused (crc32), as is every length. */
  for (i = 0; i < len; ++i) {
    ix_data[i] ^= 0x40;
    identity_ext_refusal (len);
    ix_data[i] ^= 0x40;
  }
  identity_ext_check_refused (len - 1, "length");
  identity_ext_check_refused (QCOW2_IDENTITY_EXT_FIXED - 1, "truncated");

  /* A valid crc32 does not make a bad record good. */
#define RECRC(l) \
  store_be32 (&ix_data[(l) - 4], crc32 (crc32 (0, Z_NULL, 0), ix_data, (l) - 4))
  store_be32 (&ix_data[0], 2);
  RECRC (len);
  identity_ext_check_refused (len, "version");
  store_be32 (&ix_data[0], 1);
  store_be32 (&ix_data[4], 4);
  RECRC (len);
  identity_ext_check_refused (len, "kind");
  store_be32 (&ix_data[4], QCOW2_IDENTITY_TOKEN);
  store_be32 (&ix_data[8], 2);
  RECRC (len);
  identity_ext_check_refused (len, "flags");
  store_be32 (&ix_data[8], 0);
  store_be32 (&ix_data[48], 1000000000);
  RECRC (len);
  identity_ext_check_refused (len, "nanoseconds");
  store_be32 (&ix_data[48], 0);
  ix_data[104 + 7] = '\0';
  RECRC (len);
  identity_ext_check_refused (len, "token");
  store_be32 (&ix_data[4], QCOW2_IDENTITY_FILE);
  ix_data[104 + 7] = 'x';
  RECRC (len);
  identity_ext_check_refused (len, "token");
#undef RECRC
}

int
main (void)
{
  test_header_round_trip ();
  test_header_fields_alone ();
  test_header_refusals ();
  test_extensions ();
  test_feature_table ();
  test_bitmaps_ext ();
  test_directory ();
  test_table_entries ();
  test_tables ();
  test_reftable_entries ();
  test_refcounts ();
  test_bitmap_sizes ();
  test_bitmap_names ();
  test_feature_combinations ();
  test_journal_ext ();
  test_identity_ext ();
  test_bitmap_data_bits ();
  return EXIT_SUCCESS;
}
