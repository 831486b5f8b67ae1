/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* What the sidecar's users may ask and tell about it and its bitmaps:
 * they never see struct sidecar's fields.  "Recording" (a bitmap
 * records writes) maps to qcow2's AUTO flag here and nowhere else
 * outside the format's codec.  The on-disk journal is written only
 * through sidecar_journal_write and sidecar_journal_sync, so that the
 * sidecar alone knows where its clusters are.
 */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "checked-io.h"
#include "sidecar-internal.h"

const char *
sidecar_path (const struct sidecar *sc)
{
  return sc->path;
}

uint64_t
sidecar_virtual_size (const struct sidecar *sc)
{
  return sc->header.size;
}

unsigned
sidecar_cluster_bits (const struct sidecar *sc)
{
  return sc->header.cluster_bits;
}

size_t
sidecar_nr_bitmaps (const struct sidecar *sc)
{
  return sc->nr_bitmaps;
}

struct sidecar_bitmap *
sidecar_bitmap_at (const struct sidecar *sc, size_t i)
{
  return sc->bitmaps[i];
}

const char *
sidecar_distrust_reason (const struct sidecar *sc)
{
  return sc->stale_evidence ? sc->stale_evidence : sc->journal_distrust;
}

const char *
sidecar_bitmap_name (const struct sidecar_bitmap *bm)
{
  return bm->entry.name;
}

unsigned
sidecar_bitmap_granularity_bits (const struct sidecar_bitmap *bm)
{
  return bm->entry.granularity_bits;
}

bool
sidecar_bitmap_is_consistent (const struct sidecar_bitmap *bm)
{
  return !bm->inconsistent;
}

bool
sidecar_bitmap_was_recovered (const struct sidecar_bitmap *bm)
{
  return bm->recovered;
}

bool
sidecar_bitmap_is_new (const struct sidecar_bitmap *bm)
{
  return !bm->on_disk;
}

bool
sidecar_bitmap_stored_recording (const struct sidecar_bitmap *bm)
{
  return (bm->entry.flags & QCOW2_BITMAP_FLAG_AUTO) != 0;
}

bool
sidecar_bitmap_is_recording (const struct sidecar_bitmap *bm)
{
  return bm->recording;
}

bool
sidecar_bitmap_resume_recording (struct sidecar_bitmap *bm)
{
  bm->recording = sidecar_bitmap_stored_recording (bm);
  return bm->recording;
}

void
sidecar_bitmap_set_recording (struct sidecar_bitmap *bm, bool recording)
{
  bm->recording = recording;
  if (recording)
    bm->entry.flags |= QCOW2_BITMAP_FLAG_AUTO;
  else
    bm->entry.flags &= ~QCOW2_BITMAP_FLAG_AUTO;
  bm->modified = true;
}

struct dirtymap *
sidecar_bitmap_data (const struct sidecar_bitmap *bm)
{
  return bm->data;
}

void
sidecar_bitmap_set_data (struct sidecar_bitmap *bm, struct dirtymap *data)
{
  dirtymap_free (bm->data);
  bm->data = data;
  bm->modified = true;
}

void
sidecar_bitmap_mark_changed (struct sidecar_bitmap *bm)
{
  bm->modified = true;
}

void
sidecar_set_journal_granularity (struct sidecar *sc, unsigned bits)
{
  sc->journal_bits = bits;
}

bool
sidecar_has_journal (const struct sidecar *sc)
{
  return sc->journal != NULL;
}

/* Where byte OFFSET of the journal's data lies in the file. */
static uint64_t
journal_file_offset (const struct sidecar *sc, uint64_t offset)
{
  return sc->journal->table[offset / sc->cluster_size]
    + offset % sc->cluster_size;
}

int
sidecar_journal_write (struct sidecar *sc, uint64_t offset,
                       const void *buf, size_t len)
{
  return write_fully (sc->fd, sc->path, "journal", buf, len,
                      journal_file_offset (sc, offset));
}

int
sidecar_journal_sync (struct sidecar *sc)
{
  return sync_data (sc->fd, sc->path, "journal");
}

/* Position of BM in the list, or nr_bitmaps. */
static size_t
index_of (const struct sidecar *sc, const struct sidecar_bitmap *bm)
{
  size_t i;

  for (i = 0; i < sc->nr_bitmaps && sc->bitmaps[i] != bm; ++i)
    ;
  return i;
}

void
sidecar_detach_bitmap (struct sidecar *sc, struct sidecar_bitmap *bm)
{
  size_t i = index_of (sc, bm);

  if (i == sc->nr_bitmaps || bm->on_disk)
    abort ();
  memmove (&sc->bitmaps[i], &sc->bitmaps[i + 1],
           (sc->nr_bitmaps - i - 1) * sizeof sc->bitmaps[0]);
  sc->nr_bitmaps--;
}

void
sidecar_discard_bitmap (struct sidecar *sc, struct sidecar_bitmap *bm)
{
  if (index_of (sc, bm) < sc->nr_bitmaps)
    sidecar_detach_bitmap (sc, bm);
  sidecar_bitmap_free (bm);
}

void
sidecar_restore_bitmap (struct sidecar *sc, struct sidecar_bitmap *bm,
                        size_t index)
{
  /* Taking it out left the room it needs in both arrays. */
  if (index > sc->nr_bitmaps ||
      (bm->on_disk && (sc->nr_removed == 0 ||
                       sc->removed[sc->nr_removed - 1] != bm)))
    abort ();
  if (bm->on_disk)
    sc->nr_removed--;
  memmove (&sc->bitmaps[index + 1], &sc->bitmaps[index],
           (sc->nr_bitmaps - index) * sizeof sc->bitmaps[0]);
  sc->bitmaps[index] = bm;
  sc->nr_bitmaps++;
}
