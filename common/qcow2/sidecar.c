/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The sidecar
 * ===========
 *
 * A sidecar is a qcow2 image that holds no guest data, only persistent
 * dirty bitmaps, stored exactly as QEMU stores them (qcow2.txt,
 * "Bitmaps extension"), so that QEMU's tools read, check and edit it
 * as one of their own.  The filter keeps every bitmap in memory (a
 * struct dirtymap each) and writes the file only at a few moments.
 *
 * Life cycle.  sidecar_open reads and validates the whole file: the
 * header (sidecar-header.c), the refcounts (refcount.c), the bitmap
 * directory, the tables and the data of every consistent bitmap
 * (sidecar-load.c), each cluster claimed by exactly one structure
 * before it is read (sidecar-claims.c).  The caller then says which
 * bitmaps record writes (recording) and may add, reset or remove some;
 * sidecar_begin_tracking flags the recording ones IN_USE on disk, flushed,
 * before any write reaches the plugin; sidecar_commit_live stores
 * changes while the export serves; sidecar_store writes every recording
 * bitmap's data and clears IN_USE at a clean stop.  Everything in the
 * file that we do not know is kept as it was.
 *
 * The commit (sidecar-commit.c).  Every change but one is a
 * copy-on-write commit, as QEMU stores bitmaps: each bitmap written
 * goes into newly allocated clusters (data, then table), then the
 * journal if one is begun, then a new directory; the refcounts are
 * written and everything is flushed; then the header, whose bitmaps
 * extension points to the new directory, is rewritten and flushed.
 * Issuing that header write is the commit point: before it the file
 * on disk is the old one and a failure gives back every cluster it
 * allocated and truncates the file back; after it a failure may leak
 * clusters but never frees one still referenced.  Only then are the
 * old clusters released.  The order of these writes and flushes is
 * what tests/test-crash-power-loss.sh sweeps, call by call, and
 * tests/test-crash-reorder.sh with the unflushed writes reordered and
 * torn.  As a disk writes only a sector whole, a header area longer
 * than a sector is written in two parts, flushed in between, in the
 * order that keeps the state between them the old commit or the new
 * (sidecar-header.c).
 *
 * The exception (sidecar-in-use.c) is QEMU's own way of flagging
 * bitmaps IN_USE when tracking begins and nothing else changes: clear
 * the autoclear bit, rewrite the directory in place, set the bit
 * again, each flushed.
 *
 * Crash safety (sidecar-journal.c).  With journal_bits set, beginning
 * to track also commits a journal: a disabled, in-use bitmap QEMU
 * counts but never reads, every cluster preallocated so that
 * common/tracker/journal.c updates it in place, and a header extension
 * (the record) naming it and the tables of the bitmaps it protects.
 * After a crash, sidecar_open finds the journal, decides whether the
 * record is trusted (its own autoclear bit proves no other program
 * wrote the file since) and rebuilds each protected bitmap as its
 * stored data plus the journal's marks; the next commit stores it and
 * drops the old journal.
 *
 * The data's identity (sidecar-identity.c).  A second record of the
 * filter's, kept across clean stops, holds what the caller says the
 * data looked like: the caller compares it at open and, if the data
 * may have been written without the filter, has every bitmap taken as
 * left in use, so that the in-use policy applies to it.
 *
 * Files:
 *   sidecar.c          this essay; open, close and the public entry
 *                      points, thin callers of the phases below
 *   sidecar-create.c   a new, empty sidecar, complete or not at all
 *   sidecar-header.c   cluster 0: header, extensions, backing name
 *   sidecar-load.c     the directory, the tables, the bitmaps' data
 *   sidecar-claims.c   one structure per cluster; leaks reclaimed
 *   sidecar-journal.c  the on-disk journal: find, trust, recover, write
 *   sidecar-identity.c the data identity record; distrusted bitmaps
 *   sidecar-commit.c   the copy-on-write commit, phase by phase
 *   sidecar-in-use.c   IN_USE flagged in place
 *   sidecar-resize.c   a new virtual size, every bitmap following it
 *   sidecar-internal.h what these files share
 */

#include <config.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "dirtymap.h"
#include "qemu-lock.h"
#include "sidecar-internal.h"

uint64_t
sidecar_bitmap_granules (const struct sidecar *sc,
                         const struct sidecar_bitmap *bm)
{
  return qcow2_blocks_covering (sc->header.size, bm->entry.granularity_bits);
}

void
sidecar_bitmap_free (struct sidecar_bitmap *bm)
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
    sidecar_bitmap_free (sc->bitmaps[i]);
  free (sc->bitmaps);
  sidecar_bitmap_free (sc->journal);
  sidecar_bitmap_free (sc->old_journal);
  for (i = 0; i < sc->nr_removed; ++i)
    sidecar_bitmap_free (sc->removed[i]);
  free (sc->removed);
  refcounts_free (&sc->refcounts);
  free (sc->allocations);
  qcow2_extensions_free (sc->exts, sc->nr_exts);
  free (sc->header_raw);
  free (sc->backing_name);
  free (sc->stale_evidence);
  if (sc->fd >= 0) {
    qemu_unlock_image (sc->fd);
    close (sc->fd);
  }
  free (sc->path);
  free (sc);
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

  if (sidecar_load_header (sc) == -1)
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
  if (sidecar_load_directory (sc) == -1 ||
      sidecar_find_journal (sc) == -1 ||
      sidecar_load_bitmaps (sc, flags) == -1 ||
      sidecar_recover_bitmaps (sc) == -1)
    goto err;
  sidecar_set_aside_old_journal (sc);
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
  bm->entry.name_size = strlen (name);
  memcpy (bm->entry.name, name, bm->entry.name_size + 1);
  bm->entry.table_size = qcow2_bitmap_table_size (sc->header.size,
                                                  granularity_bits,
                                                  sc->header.cluster_bits);
  sidecar_bitmap_set_recording (bm, true);
  bm->data = dirtymap_new (sidecar_bitmap_granules (sc, bm));
  if (bm->data == NULL) {
    free (bm);
    return NULL;
  }
  sc->bitmaps[sc->nr_bitmaps++] = bm;
  return bm;
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
    sc->old_journal == NULL &&
    sidecar_find_extension (sc, QCOW2_EXT_JOURNAL) == NULL &&
    !any_modified (sc) && !sc->header_changed;
  for (i = 0; i < sc->nr_bitmaps; ++i) {
    if (!sc->bitmaps[i]->recording)
      continue;
    any = true;
    if (!sc->bitmaps[i]->on_disk)
      in_place = false;
  }
  if (!any && sc->journal_bits == 0 && !sc->header_changed)
    return 0;
  if (!sc->writable) {
    nbdkit_error ("%s: opened read-only, cannot track writes", sc->path);
    return -1;
  }
  if (in_place)
    return sidecar_mark_in_use_in_place (sc);
  return sidecar_commit (sc, COMMIT_BEGIN);
}

int
sidecar_store (struct sidecar *sc)
{
  size_t i;

  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (sc->bitmaps[i]->recording)
      return sidecar_commit (sc, COMMIT_STORE);
  if (any_modified (sc) || sc->journal || sc->old_journal || sc->nr_removed ||
      sc->header_changed)
    return sidecar_commit (sc, COMMIT_STORE);
  return 0;
}

int
sidecar_commit_live (struct sidecar *sc)
{
  if (!sc->writable) {
    nbdkit_error ("%s: opened read-only, cannot store bitmaps", sc->path);
    return -1;
  }
  return sidecar_commit (sc, COMMIT_LIVE);
}

int
sidecar_remove_bitmap (struct sidecar *sc, struct sidecar_bitmap *bm)
{
  struct sidecar_bitmap **p;
  size_t i;

  /* Its clusters are freed once a commit has dropped its entry. */
  if (bm->on_disk && bm->table == NULL &&
      sidecar_load_bitmap_table (sc, bm, false) == -1)
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
    sidecar_bitmap_free (bm);
    return 0;
  }
  sc->removed[sc->nr_removed++] = bm;
  return 0;
}
