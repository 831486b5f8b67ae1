/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The data identity record: what the data the bitmaps describe looked
 * like when the filter last left it.  The sidecar only keeps the
 * record (read at open, written by the next commit) and, when the
 * caller finds that the data changed behind the filter's back, takes
 * every bitmap as left in use.  Computing and comparing identities is
 * the tracker's (common/tracker/data-identity.c).
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "dirtymap.h"
#include "sidecar-internal.h"

int
sidecar_recorded_identity (struct sidecar *sc, struct qcow2_identity_ext *out,
                           const char **why)
{
  const struct qcow2_extension *ext =
    sidecar_find_extension (sc, QCOW2_EXT_IDENTITY);

  if (ext == NULL)
    return 0;
  return qcow2_identity_ext_decode (ext, out, why) == 0 ? 1 : -1;
}

int
sidecar_set_identity (struct sidecar *sc, const struct qcow2_identity_ext *id)
{
  const struct qcow2_extension *old =
    sidecar_find_extension (sc, QCOW2_EXT_IDENTITY);
  uint8_t data[QCOW2_IDENTITY_EXT_FIXED + QCOW2_IDENTITY_MAX_TOKEN];
  size_t len = 0;

  if (id) {
    len = qcow2_identity_ext_size (id);
    qcow2_identity_ext_encode (id, data);
  }
  /* Unchanged: nothing for the next commit to write. */
  if (old ? id && old->length == len && memcmp (old->data, data, len) == 0
      : id == NULL)
    return 0;
  sc->header_changed = true;
  return sidecar_set_extension (sc, QCOW2_EXT_IDENTITY, id ? data : NULL,
                                len);
}

/* Every bitmap that was found consistent, or rebuilt from the journal,
 * becomes one left in use: its data is dropped (its table stays, so
 * that the in-use policy can reset it), and the next commit flags it
 * IN_USE on disk unless the caller resets it.
 */
int
sidecar_distrust_bitmaps (struct sidecar *sc, const char *evidence)
{
  size_t i;

  free (sc->stale_evidence);
  sc->stale_evidence = strdup (evidence);
  if (sc->stale_evidence == NULL) {
    nbdkit_error ("%s: strdup: %m", sc->path);
    return -1;
  }
  for (i = 0; i < sc->nr_bitmaps; ++i) {
    struct sidecar_bitmap *bm = sc->bitmaps[i];

    if (bm->inconsistent || !bm->on_disk)
      continue;
    bm->inconsistent = true;
    bm->recovered = false;
    bm->modified = false;
    bm->entry.flags |= QCOW2_BITMAP_FLAG_IN_USE;
    dirtymap_free (bm->data);
    bm->data = NULL;
    sc->header_changed = true;
  }
  return 0;
}
