/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The on-disk journal: finding the one a crashed session left,
 * deciding whether its record is trusted, rebuilding the bitmaps it
 * protected; and writing this session's journal and its record at a
 * commit.  The journal's clusters are updated in place, while the
 * export serves, by common/tracker/journal.c.
 */

#include <config.h>

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "dirtymap.h"
#include "sidecar-internal.h"

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
int
sidecar_find_journal (struct sidecar *sc)
{
  struct qcow2_extension *ext = sidecar_find_extension (sc, QCOW2_EXT_JOURNAL);
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

/* Whether the journal found on disk is to be read: its record is
 * there and trusted.
 */
bool
sidecar_journal_trusted (struct sidecar *sc)
{
  return sc->journal_distrust == NULL &&
    sidecar_find_extension (sc, QCOW2_EXT_JOURNAL) != NULL;
}

/* A protected bitmap is what it held when tracking began plus what the
 * journal marked since; the journal may be coarser or finer.
 */
int
sidecar_recover_bitmaps (struct sidecar *sc)
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

/* The journal is the filter's, not the user's: out of the list of
 * bitmaps, kept only to be dropped at the next commit.
 */
void
sidecar_set_aside_old_journal (struct sidecar *sc)
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
int
sidecar_set_journal_record (struct sidecar *sc,
                            const struct sidecar_bitmap *journal,
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
    if (sc->bitmaps[i]->recording)
      rec.protected_tables[rec.nr_protected++] = entries[i].table_offset;
  data = malloc (qcow2_journal_ext_size (rec.nr_protected));
  if (data == NULL) {
    nbdkit_error ("%s: malloc: %m", sc->path);
    goto out;
  }
  qcow2_journal_ext_encode (&rec, data);
  r = sidecar_set_extension (sc, QCOW2_EXT_JOURNAL, data,
                             qcow2_journal_ext_size (rec.nr_protected));

 out:
  free (data);
  free (rec.protected_tables);
  return r;
}

/* Write this session's journal, every cluster preallocated, and the
 * record naming it and the bitmaps that record writes, by the table
 * offsets ENTRIES give them; NULL after nbdkit_error.
 */
struct sidecar_bitmap *
sidecar_write_journal (struct sidecar *sc,
                       const struct qcow2_bitmap_entry *entries)
{
  struct sidecar_bitmap *journal;

  if (sidecar_find (sc, QCOW2_JOURNAL_NAME)) {
    nbdkit_error ("%s: a bitmap named '%s' exists; that name is reserved "
                  "for the filter's crash-safety journal: remove it with "
                  "'qemu-img bitmap --remove %s %s', or set "
                  "dirtybitmap-crash-safe=false", sc->path,
                  QCOW2_JOURNAL_NAME, sc->path, QCOW2_JOURNAL_NAME);
    return NULL;
  }
  if (qcow2_bitmap_size_check (sc->path, QCOW2_JOURNAL_NAME,
                               sc->header.size, sc->journal_bits,
                               sc->header.cluster_bits) == -1)
    return NULL;
  journal = new_journal (sc);
  if (journal == NULL ||
      sidecar_write_bitmap (sc, journal, DATA_PREALLOCATED, &journal->entry,
                            &journal->table) == -1 ||
      sidecar_set_journal_record (sc, journal, entries) == -1) {
    sidecar_bitmap_free (journal);
    return NULL;
  }
  return journal;
}
