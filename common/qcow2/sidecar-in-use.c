/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Flagging bitmaps IN_USE in place, as QEMU does when tracking begins
 * and there is nothing else to write: no commit, no new clusters.
 */

#include <config.h>

#include <stdlib.h>

#include <nbdkit-filter.h>

#include "checked-io.h"
#include "sidecar-internal.h"

/* Rewrite the directory where it is, with the entries' current flags. */
static int
write_directory_in_place (struct sidecar *sc)
{
  struct qcow2_bitmap_entry *entries = sidecar_current_entries (sc);
  uint8_t *dir;
  int r;

  if (entries == NULL)
    return -1;
  dir = sidecar_encode_directory (sc, entries, sc->nr_bitmaps, sc->dir_size);
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
int
sidecar_mark_in_use_in_place (struct sidecar *sc)
{
  const uint64_t autoclear = sc->header.autoclear_features;
  size_t i;

  if (sidecar_write_autoclear (sc, autoclear & QCOW2_AUTOCLEAR_KNOWN
                               & ~QCOW2_AUTOCLEAR_BITMAPS) == -1)
    goto undo;
  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (sc->bitmaps[i]->recording)
      sc->bitmaps[i]->entry.flags |= QCOW2_BITMAP_FLAG_IN_USE;
  if (write_directory_in_place (sc) == -1 ||
      sidecar_write_autoclear (sc, (autoclear & QCOW2_AUTOCLEAR_KNOWN)
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
    if (sc->bitmaps[i]->recording)
      sc->bitmaps[i]->entry.flags &= ~QCOW2_BITMAP_FLAG_IN_USE;
  write_directory_in_place (sc);
  sidecar_write_autoclear (sc, autoclear);
  return -1;
}
