/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Cluster 0: the header, its extensions (kept as raw bytes, so that
 * those we do not know are written back as they were) and the backing
 * file name, read at open and rewritten whole at each commit point, or
 * the autoclear field alone when IN_USE is flagged in place.
 */

#include <config.h>

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "checked-io.h"
#include "sidecar-internal.h"

/* Keep the backing file name found in CLUSTER (CLUSTER_LEN bytes of
 * the file), to be written back as it was.
 */
static int
load_backing_name (struct sidecar *sc, const uint8_t *cluster,
                   size_t cluster_len)
{
  if (sc->header.backing_file_offset + sc->header.backing_file_size
        > cluster_len) {
    nbdkit_error ("%s: qcow2 header: backing file name runs past the end "
                  "of the file", sc->path);
    return -1;
  }
  sc->backing_name = malloc (sc->header.backing_file_size + 1);
  if (sc->backing_name == NULL) {
    nbdkit_error ("%s: malloc: %m", sc->path);
    return -1;
  }
  memcpy (sc->backing_name, &cluster[sc->header.backing_file_offset],
          sc->header.backing_file_size);
  sc->header_area = sc->header.backing_file_offset
    + sc->header.backing_file_size;
  return 0;
}

/* Read cluster 0: header, extensions and backing file name. */
int
sidecar_load_header (struct sidecar *sc)
{
  uint8_t first[QCOW2_V3_HEADER_MIN];
  size_t first_len = sc->file_size < sizeof first ? sc->file_size
                                                   : sizeof first;
  uint32_t cluster_bits;
  size_t cluster_len, ext_end;
  uint8_t *cluster = NULL;
  int n, r = -1;

  if (read_fully (sc->fd, sc->path, "qcow2 header", first, first_len, 0)
      == -1)
    return -1;
  /* Decode what we have first, so a bad cluster size is reported
   * before it sizes an allocation.
   */
  cluster_bits = qcow2_header_peek_cluster_bits (first, first_len);
  if (cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
      cluster_bits > QCOW2_MAX_CLUSTER_BITS)
    return qcow2_header_decode (sc->path, first, first_len, sc->file_size,
                                &sc->header);

  sc->cluster_size = UINT64_C(1) << cluster_bits;
  cluster_len = sc->file_size < sc->cluster_size ? sc->file_size
                                                 : sc->cluster_size;
  cluster = malloc (cluster_len);
  if (cluster == NULL) {
    nbdkit_error ("%s: malloc: %m", sc->path);
    return -1;
  }
  if (read_fully (sc->fd, sc->path, "first cluster", cluster, cluster_len, 0)
      == -1 ||
      qcow2_header_decode (sc->path, cluster, cluster_len, sc->file_size,
                           &sc->header) == -1)
    goto out;

  sc->header_raw = malloc (sc->header.header_length);
  if (sc->header_raw == NULL) {
    nbdkit_error ("%s: malloc: %m", sc->path);
    goto out;
  }
  memcpy (sc->header_raw, cluster, sc->header.header_length);

  ext_end = sc->header.backing_file_offset ? sc->header.backing_file_offset
                                           : cluster_len;
  if (ext_end > cluster_len) {
    nbdkit_error ("%s: qcow2 header: backing file name at offset %" PRIu64
                  " lies past the end of the file", sc->path,
                  sc->header.backing_file_offset);
    goto out;
  }
  n = qcow2_extensions_decode (sc->path, cluster, sc->header.header_length,
                               ext_end, &sc->exts);
  if (n == -1)
    goto out;
  sc->nr_exts = n;
  sc->header_area = sc->header.header_length
    + qcow2_extensions_encoded_size (sc->exts, sc->nr_exts);

  if (sc->header.backing_file_offset &&
      load_backing_name (sc, cluster, cluster_len) == -1)
    goto out;
  r = 0;

 out:
  free (cluster);
  return r;
}

struct qcow2_extension *
sidecar_find_extension (struct sidecar *sc, uint32_t type)
{
  size_t i;

  for (i = 0; i < sc->nr_exts; ++i)
    if (sc->exts[i].type == type)
      return &sc->exts[i];
  return NULL;
}

/* Give extension TYPE the LENGTH bytes at DATA, adding it if missing;
 * DATA NULL removes it.
 */
int
sidecar_set_extension (struct sidecar *sc, uint32_t type, const void *data,
                       uint32_t length)
{
  struct qcow2_extension *e = sidecar_find_extension (sc, type);
  uint8_t *copy = NULL;

  if (data == NULL) {
    if (e) {
      free (e->data);
      memmove (e, e + 1, (&sc->exts[sc->nr_exts] - (e + 1)) * sizeof *e);
      sc->nr_exts--;
    }
    return 0;
  }
  copy = malloc (length ? length : 1);
  if (copy == NULL) {
    nbdkit_error ("%s: malloc: %m", sc->path);
    return -1;
  }
  memcpy (copy, data, length);
  if (e == NULL) {
    e = realloc (sc->exts, (sc->nr_exts + 1) * sizeof *e);
    if (e == NULL) {
      nbdkit_error ("%s: realloc: %m", sc->path);
      free (copy);
      return -1;
    }
    sc->exts = e;
    e = &sc->exts[sc->nr_exts++];
    e->type = type;
    e->data = NULL;
  }
  free (e->data);
  e->data = copy;
  e->length = length;
  return 0;
}

/* A disk may tear a write at any sector boundary, and only a sector
 * is written whole.  Cluster 0 often spans two sectors: QEMU's feature
 * name table ends at byte 504, so the bitmaps extension's pointer to
 * the directory and the journal's record lie in the second sector
 * while the autoclear bits lie in the first.  Written at once, a
 * power failure could leave a new record beside old autoclear bits,
 * or the reverse: a record that looks written by another program, and
 * bitmaps in use that cannot be recovered.  So the area is written in
 * two parts, first sector and the rest, with a flush between, in the
 * order that makes the state between them one that opens as the old
 * commit or the new one:
 *  - the rest first when the old header does not reach into it (it is
 *    unused until the first sector, written second, points to it);
 *  - the first sector first when the new header does not reach beyond
 *    it (what follows is then unused);
 *  - otherwise the first sector first when it sets the journal's
 *    autoclear bit (a bit without a record is harmless: no journal),
 *    and second when it clears it, so that the record is gone before
 *    the bit is (a record without the bit is distrusted).
 * A rest that itself spans several sectors (a record for many
 * bitmaps, long unknown extensions) can still be torn; tests/
 * test-crash-reorder.sh says which states this was tested against.
 */
#define SECTOR_SIZE 512

/* Write bytes [FROM, TO) of the header area BUF; then flush if SYNC. */
static int
write_header_part (struct sidecar *sc, const uint8_t *buf, size_t from,
                   size_t to, bool sync)
{
  if (write_fully (sc->fd, sc->path, from ? "header extensions" : "header",
                   &buf[from], to - from, from) == -1)
    return -1;
  return sync ? sync_data (sc->fd, sc->path, "header") : 0;
}

static int
write_header_area (struct sidecar *sc, const uint8_t *buf, size_t len,
                   size_t used, uint64_t old_autoclear)
{
  bool first_sector_first;

  if (len <= SECTOR_SIZE)
    return write_header_part (sc, buf, 0, len, false);
  if (sc->header_area <= SECTOR_SIZE)
    first_sector_first = false;
  else if (used <= SECTOR_SIZE)
    first_sector_first = true;
  else
    first_sector_first =
      (sc->header.autoclear_features & ~old_autoclear
       & QCOW2_AUTOCLEAR_JOURNAL) != 0;
  if (first_sector_first)
    return write_header_part (sc, buf, 0, SECTOR_SIZE, true) == -1 ||
      write_header_part (sc, buf, SECTOR_SIZE, len, false) == -1 ? -1 : 0;
  return write_header_part (sc, buf, SECTOR_SIZE, len, true) == -1 ||
    write_header_part (sc, buf, 0, SECTOR_SIZE, false) == -1 ? -1 : 0;
}

/* Rewrite cluster 0 with the header and the extensions as they stand:
 * the commit point of every change to the bitmaps.  Extensions we do
 * not know, and the backing file name, are written back as they were
 * read.  OLD_AUTOCLEAR: the autoclear bits the header on disk holds.
 */
int
sidecar_write_header (struct sidecar *sc, uint64_t old_autoclear)
{
  size_t used, write_len;
  uint8_t *buf;
  int r = -1;

  used = sc->header.header_length
    + qcow2_extensions_encoded_size (sc->exts, sc->nr_exts);
  if (sc->backing_name) {
    sc->header.backing_file_offset = used;
    used += sc->header.backing_file_size;
  }
  if (used > sc->cluster_size) {
    nbdkit_error ("%s: the header extensions no longer fit in the first "
                  "cluster (%zu bytes needed)%s", sc->path, used,
                  sidecar_find_extension (sc, QCOW2_EXT_JOURNAL)
                  ? "; the crash-safety record lists every recording bitmap: "
                    "track fewer, or set dirtybitmap-crash-safe=false" : "");
    return -1;
  }
  write_len = used > sc->header_area ? used : sc->header_area;
  buf = calloc (1, write_len);
  if (buf == NULL) {
    nbdkit_error ("%s: calloc: %m", sc->path);
    return -1;
  }
  memcpy (buf, sc->header_raw, sc->header.header_length);
  qcow2_header_encode (&sc->header, buf);
  qcow2_extensions_encode (sc->exts, sc->nr_exts,
                           &buf[sc->header.header_length]);
  if (sc->backing_name)
    memcpy (&buf[sc->header.backing_file_offset], sc->backing_name,
            sc->header.backing_file_size);
  if (write_header_area (sc, buf, write_len, used, old_autoclear) == -1)
    goto out;
  memcpy (sc->header_raw, buf, sc->header.header_length);
  sc->header_area = used;
  r = 0;

 out:
  free (buf);
  return r;
}

/* Rewrite the autoclear field alone, and flush it. */
int
sidecar_write_autoclear (struct sidecar *sc, uint64_t autoclear)
{
  sc->header.autoclear_features = autoclear;
  qcow2_header_encode_autoclear (autoclear, sc->header_raw);
  if (write_fully (sc->fd, sc->path, "header autoclear features",
                   &sc->header_raw[QCOW2_HEADER_AUTOCLEAR_OFFSET], 8,
                   QCOW2_HEADER_AUTOCLEAR_OFFSET) == -1 ||
      sync_data (sc->fd, sc->path, "header") == -1)
    return -1;
  return 0;
}
