/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "checked-io.h"
#include "qemu-lock.h"
#include "sidecar.h"

#define DIV_ROUND_UP(a, b) (((a) + (b) - 1) / (b))

/* Layout of a sidecar we create: header, refcount table, one refcount
 * block, then the L1 table, as qemu-img create lays out a new image.
 */
#define NEW_REFCOUNT_ORDER 4

static int
sync_directory_of (const char *path)
{
  char *copy = strdup (path);
  int fd, r = 0;

  if (copy == NULL)
    return 0;
  fd = open (dirname (copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    if (fsync (fd) == -1 && errno != EINVAL) {
      nbdkit_error ("%s: flushing the directory entry: %m", path);
      r = -1;
    }
    close (fd);
  }
  free (copy);
  return r;
}

/* Guest bytes one L1 entry of a new sidecar maps: an L2 table of
 * 8-byte entries, each mapping a cluster.
 */
#define NEW_L2_COVERAGE \
  ((UINT64_C(1) << SIDECAR_NEW_CLUSTER_BITS) \
   * ((UINT64_C(1) << SIDECAR_NEW_CLUSTER_BITS) / 8))

int
sidecar_check_creatable (const char *path, uint64_t virtual_size)
{
  /* QEMU's largest L1 table, each entry mapping an L2 table. */
  if (virtual_size > (QCOW2_MAX_L1_BYTES / 8) * NEW_L2_COVERAGE) {
    nbdkit_error ("%s: a qcow2 sidecar with 64 KiB clusters cannot describe "
                  "a disk of %" PRIu64 " bytes (at most 2 PiB); create one "
                  "with larger clusters: 'qemu-img create -f qcow2 -o "
                  "cluster_size=2M %s SIZE'", path, virtual_size, path);
    return -1;
  }
  return 0;
}

int
sidecar_create (const char *path, uint64_t virtual_size)
{
  const uint64_t cs = UINT64_C(1) << SIDECAR_NEW_CLUSTER_BITS;
  const uint64_t block_offset = 2 * cs;
  struct qcow2_header h = {
    .version = 3,
    .cluster_bits = SIDECAR_NEW_CLUSTER_BITS,
    .size = virtual_size,
    .refcount_table_offset = cs,
    .refcount_table_clusters = 1,
    .refcount_order = NEW_REFCOUNT_ORDER,
    .header_length = QCOW2_HEADER_LENGTH_WRITTEN,
    .l1_table_offset = 3 * cs,
  };
  struct qcow2_extension feature_table;
  uint64_t l1_clusters, i;
  uint8_t *buf = NULL;
  char *tmp = NULL;
  int fd = -1;

  if (sidecar_check_creatable (path, virtual_size) == -1)
    return -1;
  h.l1_size = DIV_ROUND_UP (virtual_size, NEW_L2_COVERAGE);
  l1_clusters = DIV_ROUND_UP ((uint64_t) h.l1_size * 8, cs);
  if (l1_clusters == 0)
    l1_clusters = 1;

  /* A private name beside PATH, made with O_EXCL and the usual 0666
   * less the umask (mkstemp would make it 0600, and changing the umask
   * is not safe in a threaded server).
   */
  for (i = 0; fd == -1; ++i) {
    free (tmp);
    if (asprintf (&tmp, "%s.new%ld.%" PRIu64, path, (long) getpid (),
                  ((uint64_t) random () << 16) ^ i) == -1) {
      tmp = NULL;
      nbdkit_error ("asprintf: %m");
      goto err;
    }
    fd = open (tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd == -1 && (errno != EEXIST || i >= 100)) {
      nbdkit_error ("%s: creating a temporary file to build the sidecar: %m",
                    tmp);
      free (tmp);
      tmp = NULL;
      goto err;
    }
  }
  buf = calloc (1, cs);
  if (buf == NULL) {
    nbdkit_error ("calloc: %m");
    goto err;
  }

  /* Cluster 0: header and the feature name table. */
  qcow2_header_encode (&h, buf);
  qcow2_feature_table_build (&feature_table);
  qcow2_extensions_encode (&feature_table, 1, &buf[h.header_length]);
  if (write_fully (fd, tmp, "header", buf, cs, 0) == -1)
    goto err;

  /* Cluster 1: refcount table with one block, at cluster 2. */
  memset (buf, 0, cs);
  qcow2_reftable_encode (&block_offset, 1, buf);
  if (write_fully (fd, tmp, "refcount table", buf, cs, cs) == -1)
    goto err;

  /* Cluster 2: the block, counting clusters 0-2 and the L1 table. */
  memset (buf, 0, cs);
  for (i = 0; i < 3 + l1_clusters; ++i)
    qcow2_refcount_set (buf, NEW_REFCOUNT_ORDER, i, 1);
  if (write_fully (fd, tmp, "refcount block", buf, cs, 2 * cs) == -1)
    goto err;

  /* The L1 table is all zeros: leave it sparse so that even a huge
   * disk's sidecar is created at once.
   */
  if (ftruncate (fd, (3 + l1_clusters) * cs) == -1) {
    nbdkit_error ("%s: extending to hold the L1 table: %m", tmp);
    goto err;
  }
  if (fsync (fd) == -1) {
    nbdkit_error ("%s: fsync: %m", tmp);
    goto err;
  }
  /* link() fails if PATH appeared meanwhile: never clobber a file. */
  if (link (tmp, path) == -1) {
    nbdkit_error ("%s: creating the sidecar: %m", path);
    goto err;
  }
  unlink (tmp);
  close (fd);
  free (tmp);
  free (buf);
  return sync_directory_of (path);

 err:
  if (fd >= 0)
    close (fd);
  if (tmp) {
    unlink (tmp);
    free (tmp);
  }
  free (buf);
  return -1;
}

uint64_t
sidecar_bitmap_granules (const struct sidecar *sc,
                         const struct sidecar_bitmap *bm)
{
  return qcow2_blocks_covering (sc->header.size, bm->entry.granularity_bits);
}

static void
bitmap_free (struct sidecar_bitmap *bm)
{
  if (bm == NULL)
    return;
  free (bm->table);
  free (bm->all_ones);
  dirtymap_free (bm->data);
  free (bm);
}

void
sidecar_close (struct sidecar *sc)
{
  size_t i;

  if (sc == NULL)
    return;
  for (i = 0; i < sc->nr_bitmaps; ++i)
    bitmap_free (sc->bitmaps[i]);
  free (sc->bitmaps);
  bitmap_free (sc->journal);
  bitmap_free (sc->old_journal);
  for (i = 0; i < sc->nr_removed; ++i)
    bitmap_free (sc->removed[i]);
  free (sc->removed);
  refcounts_free (&sc->refcounts);
  free (sc->allocations);
  qcow2_extensions_free (sc->exts, sc->nr_exts);
  free (sc->header_raw);
  free (sc->backing_name);
  if (sc->fd >= 0)
    close (sc->fd);
  free (sc->path);
  free (sc);
}

/* Read cluster 0: header, extensions and backing file name. */
static int
load_header (struct sidecar *sc)
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

  if (sc->header.backing_file_offset) {
    if (sc->header.backing_file_offset + sc->header.backing_file_size
          > cluster_len) {
      nbdkit_error ("%s: qcow2 header: backing file name runs past the end "
                    "of the file", sc->path);
      goto out;
    }
    sc->backing_name = malloc (sc->header.backing_file_size + 1);
    if (sc->backing_name == NULL) {
      nbdkit_error ("%s: malloc: %m", sc->path);
      goto out;
    }
    memcpy (sc->backing_name, &cluster[sc->header.backing_file_offset],
            sc->header.backing_file_size);
    sc->header_area = sc->header.backing_file_offset
      + sc->header.backing_file_size;
  }
  r = 0;

 out:
  free (cluster);
  return r;
}

/* Read and check a bitmap's table.  Its data is read only once every
 * cluster is known to belong to one structure (see check_clusters), so
 * that no input can make us read, or allocate for, the same cluster
 * many times.  The table of a bitmap in use may have any size (QEMU
 * never checks it), which only EXACT checks.
 */
static int
load_bitmap_table (struct sidecar *sc, struct sidecar_bitmap *bm, bool exact)
{
  const struct qcow2_bitmap_entry *e = &bm->entry;
  uint64_t expected = qcow2_bitmap_table_size (sc->header.size,
                                               e->granularity_bits,
                                               sc->header.cluster_bits);
  uint8_t *raw;
  int r = -1;

  if (exact && e->table_size != expected) {
    nbdkit_error ("%s: bitmap '%s': bitmap_table_size %" PRIu32 " does not "
                  "match the virtual size (%" PRIu64 " bytes needs %" PRIu64
                  " entries)", sc->path, e->name, e->table_size,
                  sc->header.size, expected);
    return -1;
  }
  /* The directory decoder bounded table_size by QEMU's limits and the
   * table by the file size.
   */
  raw = malloc ((size_t) e->table_size * 8);
  bm->table = calloc (e->table_size, sizeof bm->table[0]);
  bm->all_ones = calloc (e->table_size, sizeof bm->all_ones[0]);
  if (!raw || !bm->table || !bm->all_ones) {
    nbdkit_error ("%s: bitmap '%s': allocating: %m", sc->path, e->name);
    goto out;
  }
  if (read_fully (sc->fd, sc->path, "bitmap table", raw,
                  (size_t) e->table_size * 8, e->table_offset) == -1 ||
      qcow2_bitmap_table_decode (sc->path, e->name, raw, e->table_size,
                                 sc->header.cluster_bits, sc->file_size,
                                 bm->table, bm->all_ones) == -1)
    goto out;
  r = 0;

 out:
  free (raw);
  return r;
}

/* Read a bitmap's data, its table loaded and its clusters checked.
 * *ALL_ONES_BUDGET is what all-ones table entries may still expand to:
 * they take no room in the file, so without a bound a small file could
 * make us allocate far more memory than it holds.
 */
static int
load_bitmap_bits (struct sidecar *sc, struct sidecar_bitmap *bm,
                  uint64_t *all_ones_budget)
{
  const struct qcow2_bitmap_entry *e = &bm->entry;
  uint8_t *cluster = malloc (sc->cluster_size);
  uint64_t i;
  int r = -1;

  bm->data = dirtymap_new (sidecar_bitmap_granules (sc, bm));
  if (!cluster || !bm->data) {
    nbdkit_error ("%s: bitmap '%s': allocating: %m", sc->path, e->name);
    goto out;
  }
  for (i = 0; i < e->table_size; ++i) {
    uint64_t first_bit = i * sc->cluster_size * 8;

    if (bm->all_ones[i]) {
      if (*all_ones_budget < sc->cluster_size) {
        nbdkit_error ("%s: bitmap '%s': more all-ones table entries than "
                      "the file's size can justify (QEMU never writes "
                      "them); the sidecar is not one QEMU made",
                      sc->path, e->name);
        goto out;
      }
      *all_ones_budget -= sc->cluster_size;
      if (dirtymap_set_range (bm->data, first_bit, sc->cluster_size * 8)
          == -1)
        goto out;
    }
    else if (bm->table[i] != 0) {
      if (read_fully (sc->fd, sc->path, "bitmap data", cluster,
                      sc->cluster_size, bm->table[i]) == -1)
        goto out;
      if (dirtymap_import (bm->data, first_bit, cluster, sc->cluster_size)
          == -1) {
        nbdkit_error ("%s: bitmap '%s': data cluster %" PRIu64 " at 0x%"
                      PRIx64 " has bits set past the end of the disk",
                      sc->path, e->name, i, bm->table[i]);
        goto out;
      }
    }
  }
  r = 0;

 out:
  free (cluster);
  return r;
}

static struct qcow2_extension *
find_extension (struct sidecar *sc, uint32_t type)
{
  size_t i;

  for (i = 0; i < sc->nr_exts; ++i)
    if (sc->exts[i].type == type)
      return &sc->exts[i];
  return NULL;
}

static int
load_directory (struct sidecar *sc)
{
  struct qcow2_extension *bitmaps_ext = find_extension (sc, QCOW2_EXT_BITMAPS);
  struct qcow2_bitmaps_ext ext;
  struct qcow2_bitmap_entry *entries = NULL;
  uint8_t *dir = NULL;
  uint32_t i;
  int r = -1;

  if (bitmaps_ext == NULL)
    return 0;
  if (!(sc->header.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
    /* A program that does not know bitmaps wrote the file after QEMU
     * did, so the bitmaps may be stale: QEMU ignores them, as we do.
     */
    nbdkit_debug ("%s: bitmaps autoclear bit is clear: ignoring the "
                  "bitmaps extension, as QEMU does", sc->path);
    return 0;
  }
  if (qcow2_bitmaps_ext_decode (sc->path, bitmaps_ext,
                                sc->header.cluster_bits, sc->file_size,
                                &ext) == -1)
    return -1;

  /* Both bounded by the format's limits and the file's size. */
  dir = malloc (ext.directory_size);
  entries = calloc (ext.nb_bitmaps, sizeof *entries);
  sc->bitmaps = calloc (ext.nb_bitmaps, sizeof sc->bitmaps[0]);
  if (!dir || !entries || !sc->bitmaps) {
    nbdkit_error ("%s: allocating the bitmap directory: %m", sc->path);
    goto out;
  }
  if (read_fully (sc->fd, sc->path, "bitmap directory", dir,
                  ext.directory_size, ext.directory_offset) == -1 ||
      qcow2_bitmap_directory_decode (sc->path, dir, ext.directory_size,
                                     ext.nb_bitmaps, sc->header.cluster_bits,
                                     sc->file_size, entries) == -1)
    goto out;
  sc->dir_offset = ext.directory_offset;
  sc->dir_size = ext.directory_size;

  for (i = 0; i < ext.nb_bitmaps; ++i) {
    struct sidecar_bitmap *bm = calloc (1, sizeof *bm);

    if (bm == NULL) {
      nbdkit_error ("%s: calloc: %m", sc->path);
      goto out;
    }
    sc->bitmaps[sc->nr_bitmaps++] = bm;
    bm->entry = entries[i];
    bm->on_disk = true;
    bm->inconsistent = (bm->entry.flags & QCOW2_BITMAP_FLAG_IN_USE) != 0;
  }
  r = 0;

 out:
  free (dir);
  free (entries);
  return r;
}

static bool
is_journal_entry (const struct qcow2_bitmap_entry *e)
{
  return strcmp (e->name, QCOW2_JOURNAL_NAME) == 0 &&
    (e->flags & QCOW2_BITMAP_FLAG_IN_USE) &&
    !(e->flags & QCOW2_BITMAP_FLAG_AUTO);
}

/* Find the journal a crashed session left and decide whether its
 * record can be trusted; if so, mark the bitmaps it protected as
 * recovered (their tables and data are loaded with the journal's).
 */
static int
find_journal (struct sidecar *sc)
{
  struct qcow2_extension *ext = find_extension (sc, QCOW2_EXT_JOURNAL);
  struct qcow2_journal_ext rec;
  size_t i, j;

  /* The name is reserved: an in-use, disabled bitmap of that name is
   * a journal, trusted or not, and dropped at the next commit.
   */
  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (is_journal_entry (&sc->bitmaps[i]->entry))
      sc->old_journal = sc->bitmaps[i];
  if (ext == NULL)
    return 0;
  if (qcow2_journal_ext_decode (ext, sc->header.cluster_bits, &rec,
                                &sc->journal_distrust) == -1)
    return 0;
  if (!(sc->header.autoclear_features & QCOW2_AUTOCLEAR_JOURNAL) ||
      !(sc->header.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
    sc->journal_distrust = "another program opened the sidecar for writing "
      "after the filter (it cleared the filter's autoclear bit)";
  else if (sc->old_journal == NULL ||
           sc->old_journal->entry.table_offset != rec.journal_table_offset)
    sc->journal_distrust = "the journal bitmap '" QCOW2_JOURNAL_NAME
      "' the record names is gone";
  else {
    for (j = 0; j < rec.nr_protected; ++j)
      for (i = 0; i < sc->nr_bitmaps; ++i) {
        struct sidecar_bitmap *bm = sc->bitmaps[i];
        if (bm != sc->old_journal && bm->inconsistent &&
            bm->entry.table_offset == rec.protected_tables[j])
          bm->recovered = true;
      }
  }
  free (rec.protected_tables);
  return 0;
}

/* Every cluster the filter may free or that guards its allocations
 * must belong to exactly one structure and be counted as used:
 * otherwise a store could free, or hand out, a cluster that still
 * holds something else.  One bit per cluster of the file.
 */
struct cluster_claims {
  struct sidecar *sc;
  struct dirtymap *claimed;
};

static int
claim (struct cluster_claims *cc, uint64_t offset, uint64_t bytes,
       const char *what, const char *name)
{
  struct sidecar *sc = cc->sc;
  uint64_t first = offset / sc->cluster_size;
  uint64_t n = (bytes + sc->cluster_size - 1) / sc->cluster_size, i;

  for (i = 0; i < n; ++i) {
    if (dirtymap_test (cc->claimed, first + i)) {
      nbdkit_error ("%s: %s%s%s%s at offset 0x%" PRIx64 " overlaps another "
                    "structure in cluster 0x%" PRIx64 "; the sidecar is "
                    "corrupt: check it with 'qemu-img check %s'", sc->path,
                    what, name ? " of bitmap '" : "", name ? name : "",
                    name ? "'" : "", offset,
                    (first + i) * sc->cluster_size, sc->path);
      return -1;
    }
    if (refcounts_get (&sc->refcounts, first + i) == 0) {
      nbdkit_error ("%s: %s%s%s%s at offset 0x%" PRIx64 " lies in a cluster "
                    "whose refcount is 0; repair the sidecar with "
                    "'qemu-img check -r all %s'", sc->path, what,
                    name ? " of bitmap '" : "", name ? name : "",
                    name ? "'" : "", offset, sc->path);
      return -1;
    }
    if (dirtymap_set_range (cc->claimed, first + i, 1) == -1)
      return -1;
  }
  return 0;
}

/* Claim the metadata and every bitmap table's extent: before any table
 * is read, so that many entries sharing one table cost nothing.
 */
static int
claim_metadata (struct cluster_claims *cc)
{
  struct sidecar *sc = cc->sc;
  const struct qcow2_header *h = &sc->header;
  uint64_t i;

  if (claim (cc, 0, sc->cluster_size, "the header", NULL) == -1 ||
      claim (cc, h->refcount_table_offset,
             (uint64_t) h->refcount_table_clusters * sc->cluster_size,
             "the refcount table", NULL) == -1 ||
      (h->l1_size > 0 &&
       claim (cc, h->l1_table_offset, (uint64_t) h->l1_size * 8,
              "the L1 table", NULL) == -1) ||
      (sc->dir_size > 0 &&
       claim (cc, sc->dir_offset, sc->dir_size, "the bitmap directory",
              NULL) == -1))
    return -1;
  for (i = 0; i < sc->refcounts.table_entries; ++i)
    if (sc->refcounts.table[i] != 0 &&
        claim (cc, sc->refcounts.table[i], sc->cluster_size,
               "a refcount block", NULL) == -1)
      return -1;
  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (claim (cc, sc->bitmaps[i]->entry.table_offset,
               (uint64_t) sc->bitmaps[i]->entry.table_size * 8,
               "the bitmap table", sc->bitmaps[i]->entry.name) == -1)
      return -1;
  return 0;
}

/* Claim the data clusters of the loaded tables: before any is read. */
static int
claim_data (struct cluster_claims *cc)
{
  struct sidecar *sc = cc->sc;
  uint64_t i, j;

  for (i = 0; i < sc->nr_bitmaps; ++i) {
    const struct sidecar_bitmap *bm = sc->bitmaps[i];

    for (j = 0; bm->table && j < bm->entry.table_size; ++j)
      if (bm->table[j] != 0 &&
          claim (cc, bm->table[j], sc->cluster_size, "a data cluster",
                 bm->entry.name) == -1)
        return -1;
  }
  return 0;
}

/* Whose data is read: the consistent bitmaps, those the journal
 * protects, and the journal itself when its record is trusted.  QEMU
 * never reads the table or data of any other inconsistent bitmap, and
 * neither do we, unless asked to reset them.
 */
static bool
data_wanted (const struct sidecar *sc, const struct sidecar_bitmap *bm)
{
  return !bm->inconsistent || bm->recovered ||
    (bm == sc->old_journal && sc->journal_distrust == NULL &&
     find_extension ((struct sidecar *) sc, QCOW2_EXT_JOURNAL) != NULL);
}

static bool
table_wanted (const struct sidecar *sc, const struct sidecar_bitmap *bm,
              unsigned flags)
{
  return data_wanted (sc, bm) || bm == sc->old_journal ||
    (flags & SIDECAR_LOAD_IN_USE);
}

/* A protected bitmap is what it held when tracking began plus what the
 * journal marked since; the journal may be coarser or finer.
 */
static int
recover_bitmaps (struct sidecar *sc)
{
  const struct sidecar_bitmap *journal = sc->old_journal;
  size_t i;

  for (i = 0; i < sc->nr_bitmaps; ++i) {
    struct sidecar_bitmap *bm = sc->bitmaps[i];

    if (!bm->recovered)
      continue;
    if (dirtymap_merge_rescaled (bm->data, bm->entry.granularity_bits,
                                 journal->data,
                                 journal->entry.granularity_bits) == -1)
      return -1;
    bm->inconsistent = false;
    bm->modified = true;
    nbdkit_debug ("%s: bitmap '%s' recovered from the journal (%" PRIu64
                  " dirty granules)", sc->path, bm->entry.name,
                  dirtymap_count (bm->data));
  }
  return 0;
}

/* Whether every reference in the file is known to the claims: no
 * snapshot and no guest data (an all-zero L1 table), as in every
 * sidecar the filter or "qemu-img create" makes.
 */
static bool
references_all_known (struct sidecar *sc)
{
  uint64_t bytes = (uint64_t) sc->header.l1_size * 8, i;
  uint8_t *l1;
  bool known = true;

  if (sc->header.nb_snapshots > 0)
    return false;
  if (bytes == 0)
    return true;
  l1 = malloc (bytes);          /* bounded by the header decoder */
  if (l1 == NULL ||
      read_fully (sc->fd, sc->path, "L1 table", l1, bytes,
                  sc->header.l1_table_offset) == -1) {
    free (l1);
    return false;
  }
  for (i = 0; i < bytes && known; ++i)
    known = l1[i] == 0;
  free (l1);
  return known;
}

/* A crash between a commit's allocations and its header, or between
 * its header and freeing the old clusters, leaves clusters counted
 * that nothing references (as QEMU's own stores do).  Where every
 * reference is known, give them back, in memory: the next commit
 * writes the refcounts.
 */
static int
reclaim_leaks (struct cluster_claims *cc)
{
  struct sidecar *sc = cc->sc;
  const struct refcounts *rc = &sc->refcounts;
  uint64_t i, c, reclaimed = 0;

  if (!references_all_known (sc))
    return 0;
  /* Only clusters that a refcount block exists for can be counted;
   * the blocks are bounded by the file's size.
   */
  for (i = 0; i < rc->table_entries; ++i) {
    if (rc->table[i] == 0)
      continue;
    for (c = i * rc->entries_per_block;
         c < (i + 1) * rc->entries_per_block; ++c) {
      if (c < dirtymap_nr_bits (cc->claimed) &&
          dirtymap_test (cc->claimed, c))
        continue;
      if (refcounts_get (rc, c) > 0) {
        refcounts_clear (&sc->refcounts, c);
        reclaimed++;
      }
    }
  }
  if (reclaimed)
    nbdkit_debug ("%s: reclaimed %" PRIu64 " leaked clusters",
                  sc->path, reclaimed);
  return 0;
}

static bool
tables_complete (const struct sidecar *sc)
{
  size_t i;

  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (sc->bitmaps[i]->table == NULL)
      return false;
  return true;
}

/* Load the bitmaps, checking as we go that every cluster belongs to
 * one structure.
 */
static int
load_bitmaps (struct sidecar *sc, unsigned flags)
{
  struct cluster_claims cc = { .sc = sc };
  uint64_t all_ones_budget = sc->file_size;
  size_t i;
  int r = -1;

  cc.claimed = dirtymap_new ((sc->file_size + sc->cluster_size - 1)
                             / sc->cluster_size);
  if (cc.claimed == NULL || claim_metadata (&cc) == -1)
    goto out;
  for (i = 0; i < sc->nr_bitmaps; ++i) {
    struct sidecar_bitmap *bm = sc->bitmaps[i];
    if (table_wanted (sc, bm, flags) &&
        load_bitmap_table (sc, bm, data_wanted (sc, bm)) == -1)
      goto out;
  }
  if (claim_data (&cc) == -1)
    goto out;
  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (data_wanted (sc, sc->bitmaps[i]) &&
        load_bitmap_bits (sc, sc->bitmaps[i], &all_ones_budget) == -1)
      goto out;
  /* Reclaiming needs every table, even those of bitmaps in use that
   * are not otherwise loaded.
   */
  if ((flags & SIDECAR_WRITABLE) && tables_complete (sc) &&
      reclaim_leaks (&cc) == -1)
    goto out;
  r = 0;

 out:
  dirtymap_free (cc.claimed);
  return r;
}

/* The journal is the filter's, not the user's: out of the list of
 * bitmaps, kept only to be dropped at the next commit.
 */
static void
set_aside_old_journal (struct sidecar *sc)
{
  size_t i;

  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (sc->bitmaps[i] == sc->old_journal) {
      memmove (&sc->bitmaps[i], &sc->bitmaps[i + 1],
               (sc->nr_bitmaps - i - 1) * sizeof sc->bitmaps[0]);
      sc->nr_bitmaps--;
      break;
    }
}

struct sidecar *
sidecar_open (const char *path, unsigned flags)
{
  const bool writable = (flags & SIDECAR_WRITABLE) != 0;
  struct sidecar *sc;
  struct stat st;

  sc = calloc (1, sizeof *sc);
  if (sc == NULL || (sc->path = strdup (path)) == NULL) {
    nbdkit_error ("calloc: %m");
    free (sc);
    return NULL;
  }
  sc->writable = writable;
  sc->fd = open (path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (sc->fd == -1) {
    nbdkit_error ("%s: cannot open the sidecar%s: %m", path,
                  writable ? " for writing" : "");
    goto err;
  }
  if (qemu_lock_image (sc->fd, path, writable) == -1)
    goto err;
  if (fstat (sc->fd, &st) == -1) {
    nbdkit_error ("%s: fstat: %m", path);
    goto err;
  }
  if (!S_ISREG (st.st_mode)) {
    nbdkit_error ("%s: the sidecar must be a regular file", path);
    goto err;
  }
  sc->file_size = st.st_size;

  if (load_header (sc) == -1)
    goto err;
  if (writable &&
      (sc->header.incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
    nbdkit_error ("%s: qcow2 header: the dirty bit is set (lazy refcounts "
                  "were not written back); repair the sidecar with "
                  "'qemu-img check -r all %s' before using it", path, path);
    goto err;
  }
  if (refcounts_load (&sc->refcounts, sc->path, sc->fd, &sc->header,
                      sc->file_size) == -1)
    goto err;
  if (load_directory (sc) == -1 || find_journal (sc) == -1 ||
      load_bitmaps (sc, flags) == -1 || recover_bitmaps (sc) == -1)
    goto err;
  set_aside_old_journal (sc);
  return sc;

 err:
  sidecar_close (sc);
  return NULL;
}

struct sidecar_bitmap *
sidecar_find (struct sidecar *sc, const char *name)
{
  size_t i;

  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (strcmp (sc->bitmaps[i]->entry.name, name) == 0)
      return sc->bitmaps[i];
  return NULL;
}

struct sidecar_bitmap *
sidecar_add_bitmap (struct sidecar *sc, const char *name,
                    unsigned granularity_bits)
{
  struct sidecar_bitmap *bm, **p;

  if (qcow2_bitmap_name_check (name, sc->path) == -1)
    return NULL;
  if (sidecar_find (sc, name)) {
    nbdkit_error ("%s: bitmap '%s' already exists", sc->path, name);
    return NULL;
  }
  if (sc->nr_bitmaps >= QCOW2_BITMAP_MAX_COUNT) {
    nbdkit_error ("%s: already holds %d bitmaps, QEMU's limit; remove "
                  "some with 'qemu-img bitmap --remove'", sc->path,
                  QCOW2_BITMAP_MAX_COUNT);
    return NULL;
  }
  if (granularity_bits < QCOW2_BITMAP_MIN_GRAN_BITS ||
      granularity_bits > QCOW2_BITMAP_MAX_GRAN_BITS) {
    nbdkit_error ("%s: bitmap '%s': granularity 2^%u is outside 512 "
                  "bytes to 2G", sc->path, name, granularity_bits);
    return NULL;
  }
  if (qcow2_bitmap_size_check (sc->path, name, sc->header.size,
                               granularity_bits, sc->header.cluster_bits)
      == -1)
    return NULL;

  bm = calloc (1, sizeof *bm);
  p = realloc (sc->bitmaps, (sc->nr_bitmaps + 1) * sizeof *p);
  if (bm == NULL || p == NULL) {
    nbdkit_error ("%s: allocating bitmap '%s': %m", sc->path, name);
    free (bm);
    if (p)
      sc->bitmaps = p;
    return NULL;
  }
  sc->bitmaps = p;
  bm->entry.type = QCOW2_BITMAP_TYPE_DIRTY;
  bm->entry.granularity_bits = granularity_bits;
  bm->entry.flags = QCOW2_BITMAP_FLAG_AUTO;
  bm->entry.name_size = strlen (name);
  memcpy (bm->entry.name, name, bm->entry.name_size + 1);
  bm->entry.table_size = qcow2_bitmap_table_size (sc->header.size,
                                                  granularity_bits,
                                                  sc->header.cluster_bits);
  bm->tracked = true;
  bm->data = dirtymap_new (sidecar_bitmap_granules (sc, bm));
  if (bm->data == NULL) {
    free (bm);
    return NULL;
  }
  sc->bitmaps[sc->nr_bitmaps++] = bm;
  return bm;
}

/* Give extension TYPE the LENGTH bytes at DATA, adding it if missing;
 * DATA NULL removes it.
 */
static int
set_extension (struct sidecar *sc, uint32_t type, const void *data,
               uint32_t length)
{
  struct qcow2_extension *e = find_extension (sc, type);
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

/* Rewrite cluster 0 with the header and the extensions as they stand:
 * the commit point of every change to the bitmaps.  Extensions we do
 * not know, and the backing file name, are written back as they were
 * read.
 */
static int
write_header (struct sidecar *sc)
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
                  find_extension (sc, QCOW2_EXT_JOURNAL)
                  ? "; the crash-safety record lists every tracked bitmap: "
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
  if (write_fully (sc->fd, sc->path, "header", buf, write_len, 0) == -1)
    goto out;
  memcpy (sc->header_raw, buf, sc->header.header_length);
  sc->header_area = used;
  r = 0;

 out:
  free (buf);
  return r;
}

static int
write_autoclear (struct sidecar *sc, uint64_t autoclear)
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

static uint64_t
directory_size (const struct qcow2_bitmap_entry *entries, size_t n)
{
  uint64_t size = 0;
  size_t i;

  for (i = 0; i < n; ++i)
    size += qcow2_bitmap_entry_size (entries[i].name_size);
  return size;
}

/* A copy of every bitmap's entry as it stands, to be edited into the
 * next directory, with room for the journal's.
 */
static struct qcow2_bitmap_entry *
current_entries (struct sidecar *sc)
{
  struct qcow2_bitmap_entry *entries = calloc (sc->nr_bitmaps + 1,
                                               sizeof *entries);
  size_t i;

  if (entries == NULL) {
    nbdkit_error ("%s: calloc: %m", sc->path);
    return NULL;
  }
  for (i = 0; i < sc->nr_bitmaps; ++i)
    entries[i] = sc->bitmaps[i]->entry;
  return entries;
}

/* The directory for N ENTRIES, zero-padded to PADDED bytes. */
static uint8_t *
encode_directory (struct sidecar *sc, const struct qcow2_bitmap_entry *entries,
                  size_t n, uint64_t padded)
{
  uint8_t *buf = calloc (1, padded);

  if (buf == NULL) {
    nbdkit_error ("%s: allocating the bitmap directory: %m", sc->path);
    return NULL;
  }
  qcow2_bitmap_directory_encode (entries, n, buf);
  return buf;
}

/* Allocate N clusters for the commit under way, remembered so that
 * a failure before the commit point gives them back; returns the
 * offset, or 0 after nbdkit_error.
 */
static uint64_t
alloc_clusters (struct sidecar *sc, uint64_t n)
{
  uint64_t offset;
  struct sidecar_allocation *a;

  if (sc->nr_allocations == sc->allocations_size) {
    size_t size = sc->allocations_size ? 2 * sc->allocations_size : 64;
    a = realloc (sc->allocations, size * sizeof *a);
    if (a == NULL) {
      nbdkit_error ("%s: realloc: %m", sc->path);
      return 0;
    }
    sc->allocations = a;
    sc->allocations_size = size;
  }
  a = sc->allocations;
  offset = refcounts_alloc (&sc->refcounts, n);
  if (offset == 0)
    return 0;
  a[sc->nr_allocations].offset = offset;
  a[sc->nr_allocations].clusters = n;
  sc->nr_allocations++;
  return offset;
}

/* Write BYTES bytes from BUF into newly allocated clusters; returns
 * the offset, or 0 after nbdkit_error.  BUF holds whole clusters.
 */
static uint64_t
write_new_clusters (struct sidecar *sc, const char *what,
                    const void *buf, uint64_t bytes)
{
  uint64_t n = DIV_ROUND_UP (bytes, sc->cluster_size);
  uint64_t offset = alloc_clusters (sc, n);

  if (offset == 0)
    return 0;
  if (write_fully (sc->fd, sc->path, what, buf, n * sc->cluster_size, offset)
      == -1)
    return 0;
  return offset;
}

enum bitmap_data {
  DATA_NONE,                    /* a new, empty bitmap */
  DATA_STORED,                  /* BM's data, all-zero clusters omitted */
  DATA_PREALLOCATED,            /* every cluster allocated, zeroed, so
                                   that it can be updated in place */
};

/* Write a bitmap's data and a new table for it.  On success
 * *TABLE_RET holds the new table and the entry's table offset is set
 * in *E.
 */
static int
write_bitmap (struct sidecar *sc, struct sidecar_bitmap *bm,
              enum bitmap_data data, struct qcow2_bitmap_entry *e,
              uint64_t **table_ret)
{
  uint64_t table_bytes = (uint64_t) e->table_size * 8;
  uint64_t padded = DIV_ROUND_UP (table_bytes, sc->cluster_size)
    * sc->cluster_size;
  uint64_t *table = calloc (e->table_size, sizeof *table);
  uint8_t *raw = calloc (1, padded);
  uint8_t *cluster = malloc (sc->cluster_size);
  uint64_t i;
  int r = -1;

  if (!table || !raw || !cluster) {
    nbdkit_error ("%s: bitmap '%s': allocating: %m", sc->path, e->name);
    goto out;
  }
  if (data == DATA_PREALLOCATED) {
    uint64_t first = alloc_clusters (sc, e->table_size);

    if (first == 0)
      goto out;
    memset (cluster, 0, sc->cluster_size);
    for (i = 0; i < e->table_size; ++i) {
      table[i] = first + i * sc->cluster_size;
      if (write_fully (sc->fd, sc->path, "journal", cluster,
                       sc->cluster_size, table[i]) == -1)
        goto out;
    }
  }
  for (i = 0; data == DATA_STORED && i < e->table_size; ++i) {
    /* All-zero clusters stay unallocated (table entry 0), as QEMU
     * stores them.
     */
    if (!dirtymap_export (bm->data, i * sc->cluster_size * 8, cluster,
                          sc->cluster_size))
      continue;
    table[i] = write_new_clusters (sc, "bitmap data", cluster,
                                   sc->cluster_size);
    if (table[i] == 0)
      goto out;
  }
  qcow2_bitmap_table_encode (table, e->table_size, raw);
  e->table_offset = write_new_clusters (sc, "bitmap table", raw, table_bytes);
  if (e->table_offset == 0)
    goto out;
  *table_ret = table;
  table = NULL;
  r = 0;

 out:
  free (table);
  free (raw);
  free (cluster);
  return r;
}

static int
release_bitmap_clusters (struct sidecar *sc, const struct qcow2_bitmap_entry *e,
                         const uint64_t *table)
{
  uint64_t i;

  for (i = 0; i < e->table_size; ++i)
    if (table[i] != 0 && refcounts_release (&sc->refcounts, table[i], 1) == -1)
      return -1;
  return refcounts_release (&sc->refcounts, e->table_offset,
                            DIV_ROUND_UP ((uint64_t) e->table_size * 8,
                                          sc->cluster_size));
}

/* A commit failed before its header was written: nothing references
 * the clusters it allocated, so give them back rather than leave them
 * leaked.  Best effort, as the failure may be the disk's.
 */
static void
undo_allocations (struct sidecar *sc)
{
  size_t i;

  for (i = 0; i < sc->nr_allocations; ++i)
    refcounts_release (&sc->refcounts, sc->allocations[i].offset,
                       sc->allocations[i].clusters);
  sc->nr_allocations = 0;
  refcounts_write (&sc->refcounts);
}

enum commit_mode { COMMIT_BEGIN, COMMIT_LIVE, COMMIT_STORE };

/* This session's journal, not yet on disk: disabled and in use, so
 * that QEMU counts its clusters but never reads or writes them.
 */
static struct sidecar_bitmap *
new_journal (struct sidecar *sc)
{
  struct sidecar_bitmap *j = calloc (1, sizeof *j);

  if (j == NULL) {
    nbdkit_error ("%s: calloc: %m", sc->path);
    return NULL;
  }
  j->entry.type = QCOW2_BITMAP_TYPE_DIRTY;
  j->entry.granularity_bits = sc->journal_bits;
  j->entry.flags = QCOW2_BITMAP_FLAG_IN_USE;
  j->entry.name_size = strlen (QCOW2_JOURNAL_NAME);
  strcpy (j->entry.name, QCOW2_JOURNAL_NAME);
  j->entry.table_size = qcow2_bitmap_table_size (sc->header.size,
                                                 sc->journal_bits,
                                                 sc->header.cluster_bits);
  return j;
}

/* The record naming the journal and the bitmaps it protects: those
 * that record writes, by the table offsets ENTRIES give them.
 */
static int
set_journal_record (struct sidecar *sc, const struct sidecar_bitmap *journal,
                    const struct qcow2_bitmap_entry *entries)
{
  struct qcow2_journal_ext rec = {
    .journal_table_offset = journal->entry.table_offset,
  };
  uint8_t *data = NULL;
  size_t i;
  int r = -1;

  rec.protected_tables = calloc (sc->nr_bitmaps + 1, sizeof (uint64_t));
  if (rec.protected_tables == NULL) {
    nbdkit_error ("%s: calloc: %m", sc->path);
    return -1;
  }
  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (sc->bitmaps[i]->tracked)
      rec.protected_tables[rec.nr_protected++] = entries[i].table_offset;
  data = malloc (qcow2_journal_ext_size (rec.nr_protected));
  if (data == NULL) {
    nbdkit_error ("%s: malloc: %m", sc->path);
    goto out;
  }
  qcow2_journal_ext_encode (&rec, data);
  r = set_extension (sc, QCOW2_EXT_JOURNAL, data,
                     qcow2_journal_ext_size (rec.nr_protected));

 out:
  free (data);
  free (rec.protected_tables);
  return r;
}

/* Free a bitmap that the committed directory no longer lists, and its
 * clusters.
 */
static int
drop_bitmap (struct sidecar *sc, struct sidecar_bitmap **bm)
{
  int r = 0;

  if (*bm && (*bm)->table)
    r = release_bitmap_clusters (sc, &(*bm)->entry, (*bm)->table);
  bitmap_free (*bm);
  *bm = NULL;
  return r;
}

/* Copy-on-write update of the bitmaps, as QEMU stores them.  BEGIN
 * writes new bitmaps and modified ones, sets IN_USE on every tracked
 * one and, with journal_bits set, writes the journal and its record.
 * LIVE does the same while tracking goes on, keeping the journal and
 * clearing IN_USE on the bitmaps it writes that no longer record.
 * STORE writes every tracked or modified bitmap's data, clears IN_USE
 * and drops the journal.  Removed bitmaps are dropped.  Nothing
 * already on disk is overwritten before the header commit.
 */
static int
commit (struct sidecar *sc, enum commit_mode mode)
{
  const bool with_journal = mode == COMMIT_BEGIN && sc->journal_bits != 0;
  struct qcow2_bitmap_entry *entries = NULL;
  uint64_t **new_tables = NULL;
  struct sidecar_bitmap *journal = NULL;
  struct qcow2_bitmaps_ext ext;
  uint8_t ext_data[QCOW2_BITMAP_EXT_SIZE];
  uint64_t dir_padded, old_dir_offset = sc->dir_offset;
  uint64_t old_dir_size = sc->dir_size;
  bool old_dir_valid = sc->dir_size > 0;
  size_t nr_entries = sc->nr_bitmaps;
  uint8_t *dir = NULL;
  size_t i;
  bool header_written = false;
  struct stat st;
  int r = -1;

  sc->nr_allocations = 0;
  if (fstat (sc->fd, &st) == -1) {
    nbdkit_error ("%s: fstat: %m", sc->path);
    return -1;
  }
  entries = current_entries (sc);
  new_tables = calloc (sc->nr_bitmaps + 1, sizeof *new_tables);
  if (!entries || !new_tables) {
    nbdkit_error ("%s: calloc: %m", sc->path);
    goto out;
  }
  for (i = 0; i < sc->nr_bitmaps; ++i) {
    struct sidecar_bitmap *bm = sc->bitmaps[i];
    bool store_data = bm->modified || !bm->on_disk ||
      (mode == COMMIT_STORE && bm->tracked);

    if (store_data || !bm->on_disk) {
      /* A reset bitmap's old table may have had any size. */
      entries[i].table_size =
        qcow2_bitmap_table_size (sc->header.size,
                                 bm->entry.granularity_bits,
                                 sc->header.cluster_bits);
      if (write_bitmap (sc, bm, store_data ? DATA_STORED : DATA_NONE,
                        &entries[i], &new_tables[i]) == -1)
        goto out;
    }
    if (mode != COMMIT_STORE && bm->tracked)
      entries[i].flags |= QCOW2_BITMAP_FLAG_IN_USE;
    else if (store_data)
      entries[i].flags &= ~QCOW2_BITMAP_FLAG_IN_USE;
  }
  if (mode == COMMIT_LIVE && sc->journal) {
    if (set_journal_record (sc, sc->journal, entries) == -1)
      goto out;
    entries[nr_entries++] = sc->journal->entry;
  }
  else if (with_journal) {
    if (sidecar_find (sc, QCOW2_JOURNAL_NAME)) {
      nbdkit_error ("%s: a bitmap named '%s' exists; that name is reserved "
                    "for the filter's crash-safety journal: remove it with "
                    "'qemu-img bitmap --remove %s %s', or set "
                    "dirtybitmap-crash-safe=false", sc->path,
                    QCOW2_JOURNAL_NAME, sc->path, QCOW2_JOURNAL_NAME);
      goto out;
    }
    if (qcow2_bitmap_size_check (sc->path, QCOW2_JOURNAL_NAME,
                                 sc->header.size, sc->journal_bits,
                                 sc->header.cluster_bits) == -1)
      goto out;
    journal = new_journal (sc);
    if (journal == NULL ||
        write_bitmap (sc, journal, DATA_PREALLOCATED, &journal->entry,
                      &journal->table) == -1 ||
        set_journal_record (sc, journal, entries) == -1)
      goto out;
    entries[nr_entries++] = journal->entry;
  }
  else if (set_extension (sc, QCOW2_EXT_JOURNAL, NULL, 0) == -1)
    goto out;

  ext.nb_bitmaps = nr_entries;
  ext.directory_size = directory_size (entries, nr_entries);
  dir_padded = DIV_ROUND_UP (ext.directory_size, sc->cluster_size)
    * sc->cluster_size;
  if (nr_entries > 0) {
    dir = encode_directory (sc, entries, nr_entries, dir_padded);
    if (dir == NULL)
      goto out;
    ext.directory_offset = write_new_clusters (sc, "bitmap directory", dir,
                                               ext.directory_size);
    if (ext.directory_offset == 0)
      goto out;
    qcow2_bitmaps_ext_encode (&ext, ext_data);
  }
  if (set_extension (sc, QCOW2_EXT_BITMAPS, nr_entries ? ext_data : NULL,
                     sizeof ext_data) == -1)
    goto out;

  if (refcounts_write (&sc->refcounts) == -1 ||
      sync_data (sc->fd, sc->path, "bitmaps") == -1)
    goto out;
  sc->header.autoclear_features =
    (sc->header.autoclear_features & QCOW2_AUTOCLEAR_KNOWN
     & ~QCOW2_AUTOCLEAR_BITMAPS)
    | (nr_entries ? QCOW2_AUTOCLEAR_BITMAPS : 0)
    | (with_journal || (mode == COMMIT_LIVE && sc->journal)
       ? QCOW2_AUTOCLEAR_JOURNAL : 0);
  /* Once the header write is issued the commit may have happened:
   * from here on a failure may leak clusters, never free one that is
   * still referenced.
   */
  header_written = true;
  if (write_header (sc) == -1 ||
      sync_data (sc->fd, sc->path, "header") == -1)
    goto out;

  /* Committed: the old clusters are no longer referenced. */
  sc->dir_offset = nr_entries ? ext.directory_offset : 0;
  sc->dir_size = nr_entries ? ext.directory_size : 0;
  for (i = 0; i < sc->nr_bitmaps; ++i) {
    struct sidecar_bitmap *bm = sc->bitmaps[i];

    if (new_tables[i]) {
      if (bm->on_disk && bm->table &&
          release_bitmap_clusters (sc, &bm->entry, bm->table) == -1)
        goto out;
      free (bm->table);
      free (bm->all_ones);      /* we never write all-ones entries */
      bm->all_ones = NULL;
      bm->table = new_tables[i];
      new_tables[i] = NULL;
    }
    bm->entry = entries[i];
    bm->on_disk = true;
    bm->modified = false;
  }
  if (drop_bitmap (sc, &sc->old_journal) == -1 ||
      (mode != COMMIT_LIVE && drop_bitmap (sc, &sc->journal) == -1))
    goto out;
  if (journal) {
    sc->journal = journal;
    journal = NULL;
  }
  for (i = 0; i < sc->nr_removed; ++i)
    if (drop_bitmap (sc, &sc->removed[i]) == -1)
      goto out;
  sc->nr_removed = 0;
  if (old_dir_valid &&
      refcounts_release (&sc->refcounts, old_dir_offset,
                         DIV_ROUND_UP (old_dir_size, sc->cluster_size)) == -1)
    goto out;
  if (refcounts_write (&sc->refcounts) == -1 ||
      sync_data (sc->fd, sc->path, "refcounts") == -1)
    goto out;
  r = 0;

 out:
  if (r == -1 && !header_written) {
    undo_allocations (sc);
    /* Nothing references what was appended, except refcount blocks
     * the commit created (undo keeps them): give the file back its
     * size, so that a failed commit leaves it as it was.
     */
    uint64_t keep = st.st_size;
    for (i = 0; i < sc->refcounts.table_entries; ++i)
      if (sc->refcounts.table[i] + sc->cluster_size > keep)
        keep = sc->refcounts.table[i] + sc->cluster_size;
    if (ftruncate (sc->fd, keep) == -1)
      nbdkit_debug ("%s: ftruncate: %m", sc->path);
  }
  sc->nr_allocations = 0;
  if (new_tables)
    for (i = 0; i < sc->nr_bitmaps; ++i)
      free (new_tables[i]);
  free (new_tables);
  bitmap_free (journal);
  free (entries);
  free (dir);
  return r;
}

/* Rewrite the directory where it is, with the entries' current flags. */
static int
write_directory_in_place (struct sidecar *sc)
{
  struct qcow2_bitmap_entry *entries = current_entries (sc);
  uint8_t *dir;
  int r;

  if (entries == NULL)
    return -1;
  dir = encode_directory (sc, entries, sc->nr_bitmaps, sc->dir_size);
  free (entries);
  if (dir == NULL)
    return -1;
  r = write_fully (sc->fd, sc->path, "bitmap directory", dir, sc->dir_size,
                   sc->dir_offset);
  free (dir);
  if (r == -1)
    return -1;
  return sync_data (sc->fd, sc->path, "bitmap directory");
}

/* QEMU's way of flagging bitmaps in use: with the autoclear bit clear,
 * a crash in the middle leaves a file whose bitmaps every reader
 * ignores, never a torn directory that is trusted.
 */
static int
mark_in_use_in_place (struct sidecar *sc)
{
  const uint64_t autoclear = sc->header.autoclear_features;
  size_t i;

  if (write_autoclear (sc, autoclear & QCOW2_AUTOCLEAR_KNOWN
                       & ~QCOW2_AUTOCLEAR_BITMAPS) == -1)
    goto undo;
  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (sc->bitmaps[i]->tracked)
      sc->bitmaps[i]->entry.flags |= QCOW2_BITMAP_FLAG_IN_USE;
  if (write_directory_in_place (sc) == -1 ||
      write_autoclear (sc, (autoclear & QCOW2_AUTOCLEAR_KNOWN)
                       | QCOW2_AUTOCLEAR_BITMAPS) == -1)
    goto undo;
  return 0;

 undo:
  /* Put back what was there, so that a failure never costs the user
   * the bitmaps (an autoclear bit left clear would make every reader
   * drop them).  Best effort: even when the disk refuses a flush, the
   * page cache holds the restored bytes.
   */
  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (sc->bitmaps[i]->tracked)
      sc->bitmaps[i]->entry.flags &= ~QCOW2_BITMAP_FLAG_IN_USE;
  write_directory_in_place (sc);
  write_autoclear (sc, autoclear);
  return -1;
}

int
sidecar_reset_bitmap (struct sidecar *sc, struct sidecar_bitmap *bm)
{
  uint64_t granules = sidecar_bitmap_granules (sc, bm);

  if (!bm->inconsistent)
    return 0;
  if (bm->table == NULL) {
    nbdkit_error ("%s: bitmap '%s': its table was not loaded, so it cannot "
                  "be reset", sc->path, bm->entry.name);
    return -1;
  }
  if (qcow2_bitmap_size_check (sc->path, bm->entry.name, sc->header.size,
                               bm->entry.granularity_bits,
                               sc->header.cluster_bits) == -1)
    return -1;
  bm->data = dirtymap_new (granules);
  if (bm->data == NULL || dirtymap_set_range (bm->data, 0, granules) == -1)
    return -1;
  bm->inconsistent = false;
  bm->modified = true;
  return 0;
}

static bool
any_modified (const struct sidecar *sc)
{
  size_t i;

  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (sc->bitmaps[i]->modified)
      return true;
  return false;
}

int
sidecar_begin_tracking (struct sidecar *sc)
{
  bool any = false, in_place;
  size_t i;

  /* QEMU's in-place flagging, when there is nothing else to write. */
  in_place = sc->dir_size > 0 && sc->journal_bits == 0 &&
    sc->old_journal == NULL && find_extension (sc, QCOW2_EXT_JOURNAL) == NULL
    && !any_modified (sc);
  for (i = 0; i < sc->nr_bitmaps; ++i) {
    if (!sc->bitmaps[i]->tracked)
      continue;
    any = true;
    if (!sc->bitmaps[i]->on_disk)
      in_place = false;
  }
  if (!any && sc->journal_bits == 0)
    return 0;
  if (!sc->writable) {
    nbdkit_error ("%s: opened read-only, cannot track writes", sc->path);
    return -1;
  }
  return in_place ? mark_in_use_in_place (sc) : commit (sc, COMMIT_BEGIN);
}

int
sidecar_store (struct sidecar *sc)
{
  size_t i;

  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (sc->bitmaps[i]->tracked)
      return commit (sc, COMMIT_STORE);
  if (any_modified (sc) || sc->journal || sc->old_journal || sc->nr_removed)
    return commit (sc, COMMIT_STORE);
  return 0;
}

int
sidecar_commit_live (struct sidecar *sc)
{
  if (!sc->writable) {
    nbdkit_error ("%s: opened read-only, cannot store bitmaps", sc->path);
    return -1;
  }
  return commit (sc, COMMIT_LIVE);
}

int
sidecar_remove_bitmap (struct sidecar *sc, struct sidecar_bitmap *bm)
{
  struct sidecar_bitmap **p;
  size_t i;

  /* Its clusters are freed once a commit has dropped its entry. */
  if (bm->on_disk && bm->table == NULL &&
      load_bitmap_table (sc, bm, false) == -1)
    return -1;
  p = realloc (sc->removed, (sc->nr_removed + 1) * sizeof *p);
  if (p == NULL) {
    nbdkit_error ("%s: realloc: %m", sc->path);
    return -1;
  }
  sc->removed = p;
  for (i = 0; i < sc->nr_bitmaps && sc->bitmaps[i] != bm; ++i)
    ;
  memmove (&sc->bitmaps[i], &sc->bitmaps[i + 1],
           (sc->nr_bitmaps - i - 1) * sizeof sc->bitmaps[0]);
  sc->nr_bitmaps--;
  if (!bm->on_disk) {
    bitmap_free (bm);
    return 0;
  }
  sc->removed[sc->nr_removed++] = bm;
  return 0;
}
