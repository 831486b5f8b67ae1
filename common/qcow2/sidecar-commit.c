/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The copy-on-write commit (see the essay in sidecar.c): each bitmap
 * that changes goes into new clusters, then the journal and the
 * directory; then the header, the commit point; only then are the old
 * clusters freed.  Each phase is a function below, called in that
 * order by sidecar_commit; the order of their writes and flushes is
 * what tests/test-crash-power-loss.sh sweeps, call by call, so keep
 * it when changing them.
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "checked-io.h"
#include "dirtymap.h"
#include "sidecar-internal.h"

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

/* Write a bitmap's data and a new table for it.  On success
 * *TABLE_RET holds the new table and the entry's table offset is set
 * in *E.
 */
int
sidecar_write_bitmap (struct sidecar *sc, struct sidecar_bitmap *bm,
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

/* Free a bitmap that the committed directory no longer lists, and its
 * clusters.
 */
static int
drop_bitmap (struct sidecar *sc, struct sidecar_bitmap **bm)
{
  int r = 0;

  if (*bm && (*bm)->table)
    r = release_bitmap_clusters (sc, &(*bm)->entry, (*bm)->table);
  sidecar_bitmap_free (*bm);
  *bm = NULL;
  return r;
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
struct qcow2_bitmap_entry *
sidecar_current_entries (struct sidecar *sc)
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
uint8_t *
sidecar_encode_directory (struct sidecar *sc,
                          const struct qcow2_bitmap_entry *entries,
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

/* One commit under way: the directory it builds, what it wrote, and
 * what it must release once committed or undo if it fails before.
 */
struct commit {
  struct sidecar *sc;
  enum commit_mode mode;
  bool with_journal;            /* BEGIN with journal_bits: a new journal */
  struct qcow2_bitmap_entry *entries;   /* the next directory */
  size_t nr_entries;
  uint64_t **new_tables;        /* per bitmap, if its data was written */
  struct sidecar_bitmap *journal;       /* the new journal, until committed */
  struct qcow2_bitmaps_ext ext;         /* of the next directory */
  uint64_t old_dir_offset, old_dir_size;
  bool old_dir_valid;
  uint64_t old_file_size;       /* what an abort truncates back to */
  bool header_written;          /* the commit point may have passed */
};

/* Write each new or modified bitmap (and, at a store, each recording
 * one) into new clusters, and give every entry its flags.
 */
static int
write_bitmaps (struct commit *c)
{
  struct sidecar *sc = c->sc;
  size_t i;

  for (i = 0; i < sc->nr_bitmaps; ++i) {
    struct sidecar_bitmap *bm = sc->bitmaps[i];
    bool store_data = bm->modified || !bm->on_disk ||
      (c->mode == COMMIT_STORE && bm->recording);

    if (store_data || !bm->on_disk) {
      /* A reset bitmap's old table may have had any size. */
      c->entries[i].table_size =
        qcow2_bitmap_table_size (sc->header.size,
                                 bm->entry.granularity_bits,
                                 sc->header.cluster_bits);
      if (sidecar_write_bitmap (sc, bm, store_data ? DATA_STORED : DATA_NONE,
                                &c->entries[i], &c->new_tables[i]) == -1)
        return -1;
    }
    if (c->mode != COMMIT_STORE && bm->recording)
      c->entries[i].flags |= QCOW2_BITMAP_FLAG_IN_USE;
    else if (store_data)
      c->entries[i].flags &= ~QCOW2_BITMAP_FLAG_IN_USE;
  }
  return 0;
}

/* LIVE keeps this session's journal, with a record naming the new
 * tables; BEGIN with journal_bits writes a new one; anything else
 * drops the record (the journal's entry is left out of the directory).
 */
static int
place_journal (struct commit *c)
{
  struct sidecar *sc = c->sc;

  if (c->mode == COMMIT_LIVE && sc->journal) {
    if (sidecar_set_journal_record (sc, sc->journal, c->entries) == -1)
      return -1;
    c->entries[c->nr_entries++] = sc->journal->entry;
  }
  else if (c->with_journal) {
    c->journal = sidecar_write_journal (sc, c->entries);
    if (c->journal == NULL)
      return -1;
    c->entries[c->nr_entries++] = c->journal->entry;
  }
  else if (sidecar_set_extension (sc, QCOW2_EXT_JOURNAL, NULL, 0) == -1)
    return -1;
  return 0;
}

/* The new directory, in new clusters, and the bitmaps extension that
 * will point to it (none if no bitmap is left).
 */
static int
write_directory (struct commit *c)
{
  struct sidecar *sc = c->sc;
  uint8_t ext_data[QCOW2_BITMAP_EXT_SIZE];
  uint64_t dir_padded;
  uint8_t *dir;

  c->ext.nb_bitmaps = c->nr_entries;
  c->ext.directory_size = directory_size (c->entries, c->nr_entries);
  dir_padded = DIV_ROUND_UP (c->ext.directory_size, sc->cluster_size)
    * sc->cluster_size;
  if (c->nr_entries > 0) {
    dir = sidecar_encode_directory (sc, c->entries, c->nr_entries,
                                    dir_padded);
    if (dir == NULL)
      return -1;
    c->ext.directory_offset = write_new_clusters (sc, "bitmap directory", dir,
                                                  c->ext.directory_size);
    free (dir);
    if (c->ext.directory_offset == 0)
      return -1;
    qcow2_bitmaps_ext_encode (&c->ext, ext_data);
  }
  return sidecar_set_extension (sc, QCOW2_EXT_BITMAPS,
                                c->nr_entries ? ext_data : NULL,
                                sizeof ext_data);
}

/* Flush everything the new header will reference, then write the
 * header: the commit point.
 */
static int
commit_header (struct commit *c)
{
  struct sidecar *sc = c->sc;
  uint64_t old_autoclear = sc->header.autoclear_features;

  if (refcounts_write (&sc->refcounts) == -1 ||
      sync_data (sc->fd, sc->path, "bitmaps") == -1)
    return -1;
  sc->header.autoclear_features =
    (sc->header.autoclear_features & QCOW2_AUTOCLEAR_KNOWN
     & ~QCOW2_AUTOCLEAR_BITMAPS)
    | (c->nr_entries ? QCOW2_AUTOCLEAR_BITMAPS : 0)
    | (c->with_journal || (c->mode == COMMIT_LIVE && sc->journal)
       ? QCOW2_AUTOCLEAR_JOURNAL : 0);
  /* Once the header write is issued the commit may have happened:
   * from here on a failure may leak clusters, never free one that is
   * still referenced.
   */
  c->header_written = true;
  if (sidecar_write_header (sc, old_autoclear) == -1 ||
      sync_data (sc->fd, sc->path, "header") == -1)
    return -1;
  return 0;
}

/* Committed: the bitmaps take their new tables and entries, and the
 * clusters no longer referenced (old tables and data, the old
 * journal, removed bitmaps, the old directory) are freed.
 */
static int
release_old_clusters (struct commit *c)
{
  struct sidecar *sc = c->sc;
  size_t i;

  sc->dir_offset = c->nr_entries ? c->ext.directory_offset : 0;
  sc->dir_size = c->nr_entries ? c->ext.directory_size : 0;
  for (i = 0; i < sc->nr_bitmaps; ++i) {
    struct sidecar_bitmap *bm = sc->bitmaps[i];

    if (c->new_tables[i]) {
      if (bm->on_disk && bm->table &&
          release_bitmap_clusters (sc, &bm->entry, bm->table) == -1)
        return -1;
      free (bm->table);
      free (bm->all_ones);      /* we never write all-ones entries */
      bm->all_ones = NULL;
      bm->table = c->new_tables[i];
      c->new_tables[i] = NULL;
    }
    bm->entry = c->entries[i];
    bm->on_disk = true;
    bm->modified = false;
  }
  sc->header_changed = false;
  if (drop_bitmap (sc, &sc->old_journal) == -1 ||
      (c->mode != COMMIT_LIVE && drop_bitmap (sc, &sc->journal) == -1))
    return -1;
  if (c->journal) {
    sc->journal = c->journal;
    c->journal = NULL;
  }
  for (i = 0; i < sc->nr_removed; ++i)
    if (drop_bitmap (sc, &sc->removed[i]) == -1)
      return -1;
  sc->nr_removed = 0;
  if (c->old_dir_valid &&
      refcounts_release (&sc->refcounts, c->old_dir_offset,
                         DIV_ROUND_UP (c->old_dir_size, sc->cluster_size))
      == -1)
    return -1;
  if (refcounts_write (&sc->refcounts) == -1 ||
      sync_data (sc->fd, sc->path, "refcounts") == -1)
    return -1;
  return 0;
}

/* The commit failed before its header was written: give back what it
 * allocated and the file's size.
 */
static void
abort_commit (struct commit *c)
{
  struct sidecar *sc = c->sc;
  uint64_t keep = c->old_file_size;
  size_t i;

  undo_allocations (sc);
  /* Nothing references what was appended, except refcount blocks
   * the commit created (undo keeps them): give the file back its
   * size, so that a failed commit leaves it as it was.
   */
  for (i = 0; i < sc->refcounts.table_entries; ++i)
    if (sc->refcounts.table[i] + sc->cluster_size > keep)
      keep = sc->refcounts.table[i] + sc->cluster_size;
  if (ftruncate (sc->fd, keep) == -1)
    nbdkit_debug ("%s: ftruncate: %m", sc->path);
}

/* Copy-on-write update of the bitmaps, as QEMU stores them.  BEGIN
 * writes new bitmaps and modified ones, sets IN_USE on every recording
 * one and, with journal_bits set, writes the journal and its record.
 * LIVE does the same while tracking goes on, keeping the journal and
 * clearing IN_USE on the bitmaps it writes that no longer record.
 * STORE writes every recording or modified bitmap's data, clears IN_USE
 * and drops the journal.  Removed bitmaps are dropped.  Nothing
 * already on disk is overwritten before the header commit.
 */
int
sidecar_commit (struct sidecar *sc, enum commit_mode mode)
{
  struct commit c = {
    .sc = sc,
    .mode = mode,
    .with_journal = mode == COMMIT_BEGIN && sc->journal_bits != 0,
    .nr_entries = sc->nr_bitmaps,
    .old_dir_offset = sc->dir_offset,
    .old_dir_size = sc->dir_size,
    .old_dir_valid = sc->dir_size > 0,
  };
  struct stat st;
  size_t i;
  int r = -1;

  sc->nr_allocations = 0;
  if (fstat (sc->fd, &st) == -1) {
    nbdkit_error ("%s: fstat: %m", sc->path);
    return -1;
  }
  c.old_file_size = st.st_size;
  c.entries = sidecar_current_entries (sc);
  c.new_tables = calloc (sc->nr_bitmaps + 1, sizeof *c.new_tables);
  if (!c.entries || !c.new_tables) {
    nbdkit_error ("%s: calloc: %m", sc->path);
    goto out;
  }
  if (write_bitmaps (&c) == -1 ||
      place_journal (&c) == -1 ||
      write_directory (&c) == -1 ||
      commit_header (&c) == -1 ||
      release_old_clusters (&c) == -1)
    goto out;
  r = 0;

 out:
  if (r == -1 && !c.header_written)
    abort_commit (&c);
  sc->nr_allocations = 0;
  if (c.new_tables)
    for (i = 0; i < sc->nr_bitmaps; ++i)
      free (c.new_tables[i]);
  free (c.new_tables);
  sidecar_bitmap_free (c.journal);
  free (c.entries);
  return r;
}
