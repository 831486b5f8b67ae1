/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Which export the bitmaps describe: the one dirtybitmap-export=
 * names, or else the first one written to.  Whether another export
 * name is the same disk only the plugin knows, and nbdkit 1.32 gives a
 * filter no way to ask it outside a client's export listing; the one
 * case the filter can tell is a plugin whose only file= is a local
 * file or device, which serves that disk whatever the name.
 */
#include <config.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "tracker.h"
#include "tracker-internal.h"

/* Whether EXPORTNAME's writes may go into the bitmaps; lock held. */
static int
check_export_locked (struct tracker *t, const char *exportname)
{
  if (t->exportname == NULL || strcmp (t->exportname, exportname) == 0 ||
      t->cfg->plugin_file_is_disk)
    return 0;
  nbdkit_error ("%s tracks export '%s'; export '%s' is refused because its "
                "writes would be mixed into the same bitmaps (the tracked "
                "export is %s, and the filter cannot tell that this plugin "
                "serves the same disk under both names): write through "
                "export '%s' only, choose the tracked export with "
                "dirtybitmap-export=NAME, or run one nbdkit with its own "
                "dirtybitmap-file= per export",
                t->cfg->sidecar_path, t->exportname, exportname,
                t->cfg->export_name ? "set by dirtybitmap-export="
                : "the first one written to", t->exportname);
  return -1;
}

int
tracker_check_export (struct tracker *t, const char *exportname,
                      uint64_t export_size)
{
  int r;

  pthread_mutex_lock (&t->lock);
  r = check_export_locked (t, exportname);
  if (r == 0 && t->exportname == NULL)
    /* Not claimed yet: an export of the size checked at start-up is
     * taken to be the one to track, another is left for its first
     * write to decide, so that a probe of another disk cannot fix the
     * sidecar's size.
     */
    r = t->probed_size == 0 || t->probed_size == export_size;
  else if (r == 0)
    r = 1;
  pthread_mutex_unlock (&t->lock);
  return r;
}

int
tracker_claim_export (struct tracker *t, const char *exportname)
{
  int r = 0;

  pthread_mutex_lock (&t->lock);
  if (t->exportname == NULL) {
    t->exportname = strdup (exportname);
    if (t->exportname == NULL) {
      nbdkit_error ("strdup: %m");
      r = -1;
    }
  }
  else
    r = check_export_locked (t, exportname);
  pthread_mutex_unlock (&t->lock);
  return r;
}
