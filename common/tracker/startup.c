/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The checks at start-up, in the two halves nbdkit allows: what the
 * parameters and the sidecar tell, before nbdkit forks (so that a
 * refusal reaches stderr and the exit status), and the export's size,
 * which needs the plugin, after.  The size's check and the resize
 * policy serve tracker_start too; so does the release of the sidecar
 * held from start-up, when nothing will write through the filter.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "data-identity.h"
#include "qcow2-format.h"
#include "sidecar.h"
#include "tracker.h"
#include "tracker-internal.h"

int
tracker_check_size (const struct tracker_config *cfg,
                    const struct sidecar *sc, uint64_t export_size)
{
  const char *path = sidecar_path (sc);
  uint64_t sidecar_size = sidecar_virtual_size (sc);
  uint64_t new_size = qcow2_virtual_size_for (export_size);

  if (sidecar_size == new_size)
    return 0;
  if (cfg->resize_policy == RESIZE_ADOPT)
    return sidecar_check_resize (sc, new_size) == -1 ? -1 : 1;
  /* Only the size differs unless the sidecar distrusts its bitmaps
   * (the data's identity changed, or an untrusted journal), which a
   * warning has said already.
   */
  nbdkit_error ("%s: the sidecar's virtual size is %" PRIu64 " bytes but "
                "the export is %" PRIu64 " bytes%s: it tracks another "
                "disk, or this disk was %s.  %s: if the disk was resized, "
                "keep the bitmaps with 'qemu-img resize%s %s %" PRIu64 "' "
                "while nbdkit is stopped (QEMU leaves the area added "
                "clean), or start nbdkit with dirtybitmap-resize=adopt (the "
                "area added is dirty in every bitmap); otherwise use the "
                "sidecar made for this export, or a new path",
                path, sidecar_size, export_size,
                export_size % 512 ? " (rounded up to whole 512-byte "
                "sectors, as QEMU sizes disks)" : "",
                new_size > sidecar_size ? "grown" : "shrunk",
                sidecar_distrust_reason (sc) == NULL
                ? "Only the size differs" : "The size differs too",
                new_size > sidecar_size ? "" : " --shrink", path, new_size);
  return -1;
}

int
tracker_adopt_size (struct sidecar *sc, uint64_t export_size)
{
  uint64_t old_size = sidecar_virtual_size (sc);
  uint64_t new_size = qcow2_virtual_size_for (export_size);

  if (sidecar_resize (sc, new_size) == -1)
    return -1;
  nbdkit_error ("warning: %s: the export is %" PRIu64 " bytes, the sidecar "
                "was %" PRIu64 ": it is resized to %" PRIu64 " bytes "
                "(dirtybitmap-resize=adopt)%s", sidecar_path (sc),
                export_size, old_size, new_size,
                new_size > old_size
                ? ", and the area added is dirty in every bitmap"
                : ", and the bitmaps drop the area removed");
  return 0;
}

int
tracker_validate_sidecar (struct tracker *t)
{
  const char *path = t->cfg->sidecar_path;
  struct sidecar *sc;
  int r;

  if (access (path, F_OK) == -1 && errno == ENOENT) {
    if (t->cfg->nr_names == 0 && !t->cfg->allow_no_bitmaps) {
      nbdkit_error ("%s does not exist and no bitmap is named: add "
                    "dirtybitmap=NAME to create the sidecar with a bitmap",
                    path);
      return -1;
    }
    return 0;
  }
  sc = sidecar_open (path, tracker_open_flags (t->cfg));
  if (sc == NULL)
    return -1;
  r = data_identity_check (t->cfg, sc);
  if (r == 0)
    r = tracker_select_bitmaps (t, sc, false) >= 0 ? 0 : -1;
  if (r == 0 && t->cfg->crash_safe) {
    unsigned finest = tracker_startup_finest_bits (t->cfg, sc);

    if (finest == 0 ||
        tracker_journal_bits (t->cfg, path, sidecar_virtual_size (sc),
                              finest, sidecar_cluster_bits (sc)) == 0)
      r = -1;
  }
  if (r == -1) {
    sidecar_close (sc);
    return -1;
  }
  /* Keep it open so that QEMU cannot write it before tracking starts
   * (and never, with nbdkit -r).
   */
  sidecar_close (t->validated);
  t->validated = sc;
  return 0;
}

/* The sidecar that tracking would create for VIRTUAL_SIZE bytes. */
static int
validate_new_sidecar (const struct tracker_config *cfg,
                      uint64_t virtual_size)
{
  const char *path = cfg->sidecar_path;
  size_t i;

  if (sidecar_check_creatable (path, virtual_size) == -1)
    return -1;
  for (i = 0; i < cfg->nr_names; ++i)
    if (qcow2_bitmap_size_check (path, cfg->names[i], virtual_size,
                                 cfg->granularity_bits,
                                 SIDECAR_NEW_CLUSTER_BITS) == -1)
      return -1;
  if (cfg->crash_safe &&
      tracker_journal_bits (cfg, path, virtual_size, cfg->granularity_bits,
                            SIDECAR_NEW_CLUSTER_BITS) == 0)
    return -1;
  return 0;
}

int
tracker_validate_size (struct tracker *t, uint64_t export_size)
{
  struct sidecar *sc = t->validated;
  unsigned finest;
  int r;

  if (export_size == 0) {
    nbdkit_error ("the export is empty (0 bytes): there is nothing to track");
    return -1;
  }
  t->probed_size = export_size;
  if (sc == NULL)
    return validate_new_sidecar (t->cfg, qcow2_virtual_size_for (export_size));
  r = tracker_check_size (t->cfg, sc, export_size);
  if (r != 1 || !t->cfg->crash_safe)
    return r;
  /* Adopting the new size: the journal must fit it too. */
  finest = tracker_startup_finest_bits (t->cfg, sc);
  if (finest == 0 ||
      tracker_journal_bits (t->cfg, sidecar_path (sc),
                            qcow2_virtual_size_for (export_size), finest,
                            sidecar_cluster_bits (sc)) == 0)
    return -1;
  return 0;
}

int
tracker_validate (struct tracker *t, uint64_t export_size)
{
  if (tracker_validate_sidecar (t) == -1)
    return -1;
  return tracker_validate_size (t, export_size);
}

void
tracker_release_sidecar (struct tracker *t)
{
  pthread_mutex_lock (&t->lock);
  if (t->validated)
    nbdkit_debug ("dirtybitmap: nothing writes through the filter: %s is "
                  "released", t->cfg->sidecar_path);
  sidecar_close (t->validated);
  t->validated = NULL;
  pthread_mutex_unlock (&t->lock);
}

void
tracker_set_read_only (struct tracker *t)
{
  pthread_mutex_lock (&t->lock);
  t->read_only = true;
  pthread_mutex_unlock (&t->lock);
  tracker_release_sidecar (t);
}
