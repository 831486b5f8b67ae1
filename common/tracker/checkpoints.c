/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Bitmaps managed while the export serves: transactions of add,
 * remove, clear, enable, disable and merge, queries, extents, and
 * stores on demand.  Everything runs under the tracker's lock, apart
 * from the write path, which only ever marks the recorder.
 */
#include <config.h>

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "qcow2-format.h"
#include "tracker-internal.h"

static int
fail (char **error, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  if (vasprintf (error, fmt, ap) == -1)
    *error = NULL;
  va_end (ap);
  return -1;
}

/* Control calls may come before any writer: start tracking then. */
static int
ensure_started (struct tracker *t, char **error)
{
  if (t->started)
    return 0;
  if (t->failed)
    return fail (error, "tracking could not start (see nbdkit's log)");
  if (t->probed_size == 0)
    return fail (error, "the export's size is not known until a client "
                 "connects; connect one first");
  if (tracker_start_locked (t, t->probed_size) == -1) {
    t->failed = true;
    return fail (error, "tracking could not start (see nbdkit's log)");
  }
  return 0;
}

/* Before bitmaps are read or stored: every write so far folded in. */
static int
bring_up_to_date (struct tracker *t, char **error)
{
  if (ensure_started (t, error) == -1)
    return -1;
  if (tracker_fold_locked (t, tracker_recording_bits (t)) == -1)
    return fail (error, "out of memory");
  return 0;
}

/* What a transaction sees of a bitmap, before and while it applies:
 * actions are checked one after the other against this model, so that
 * nothing is applied unless all of them can be.
 */
struct model {
  const char *name;
  bool exists, persistent, enabled, inconsistent;
  unsigned granularity_bits;
};

struct models {
  struct model *m;
  size_t n, size;
};

static struct model *
find_model (struct models *ms, const char *name)
{
  size_t i;

  for (i = 0; i < ms->n; ++i)
    if (ms->m[i].exists && strcmp (ms->m[i].name, name) == 0)
      return &ms->m[i];
  return NULL;
}

static struct model *
add_model (struct models *ms)
{
  if (ms->n == ms->size) {
    size_t size = ms->size ? 2 * ms->size : 16;
    struct model *m = realloc (ms->m, size * sizeof *m);
    if (m == NULL)
      return NULL;
    ms->m = m;
    ms->size = size;
  }
  memset (&ms->m[ms->n], 0, sizeof ms->m[0]);
  return &ms->m[ms->n++];
}

static int
build_models (struct tracker *t, struct models *ms, char **error)
{
  struct sidecar *sc = t->sidecar;
  size_t i;

  for (i = 0; i < sc->nr_bitmaps + t->nr_volatiles; ++i) {
    struct model *m = add_model (ms);

    if (m == NULL)
      return fail (error, "out of memory");
    m->exists = true;
    if (i < sc->nr_bitmaps) {
      const struct sidecar_bitmap *bm = sc->bitmaps[i];
      m->name = bm->entry.name;
      m->persistent = true;
      m->enabled = bm->tracked;
      m->inconsistent = bm->inconsistent;
      m->granularity_bits = bm->entry.granularity_bits;
    }
    else {
      const struct volatile_bitmap *vb = &t->volatiles[i - sc->nr_bitmaps];
      m->name = vb->name;
      m->enabled = vb->enabled;
      m->granularity_bits = vb->granularity_bits;
    }
  }
  return 0;
}

static struct model *
usable (struct models *ms, const char *name, char **error)
{
  struct model *m = find_model (ms, name);

  if (m == NULL)
    fail (error, "no bitmap named '%s'", name);
  else if (m->inconsistent) {
    fail (error, "Bitmap '%s' is inconsistent (left in use by a crash it "
          "could not be recovered from): it can only be removed", name);
    m = NULL;
  }
  return m;
}

static int
granularity_of (struct tracker *t, const struct tracker_action *a,
                unsigned *bits, char **error)
{
  int b;

  if (a->granularity == 0) {
    *bits = t->cfg->granularity_bits;
    return 0;
  }
  b = qcow2_granularity_bits (a->granularity);
  if (b == -1)
    return fail (error, "Granularity must be a power of 2 from 512 to "
                 "2147483648, not %" PRIi64, a->granularity);
  *bits = b;
  return 0;
}

/* Check one action against the model and update the model. */
static int
check_action (struct tracker *t, struct models *ms,
              const struct tracker_action *a, char **error)
{
  struct sidecar *sc = t->sidecar;
  struct model *m;
  size_t i, len;

  switch (a->type) {
  case TRACKER_ADD:
    len = strlen (a->name);
    if (len == 0 || len > QCOW2_BITMAP_MAX_NAME_SIZE)
      return fail (error, "Bitmap name must be 1 to %d bytes long, not %zu",
                   QCOW2_BITMAP_MAX_NAME_SIZE, len);
    if (strcmp (a->name, QCOW2_JOURNAL_NAME) == 0)
      return fail (error, "Bitmap name '%s' is reserved for the filter's "
                   "crash-safety journal", a->name);
    if (find_model (ms, a->name))
      return fail (error, "a bitmap named '%s' already exists", a->name);
    m = add_model (ms);
    if (m == NULL)
      return fail (error, "out of memory");
    m->name = a->name;
    m->exists = true;
    m->persistent = a->persistent;
    m->enabled = !a->disabled;
    if (granularity_of (t, a, &m->granularity_bits, error) == -1)
      return -1;
    if (qcow2_bitmap_fitting_granularity (sc->header.size,
                                          m->granularity_bits,
                                          sc->header.cluster_bits)
        != m->granularity_bits)
      return fail (error, "Granularity %" PRIu64 " is too fine for a disk "
                   "of %" PRIu64 " bytes (more than QEMU's 512 MiB of "
                   "bitmap data)", UINT64_C(1) << m->granularity_bits,
                   sc->header.size);
    return 0;
  case TRACKER_REMOVE:
    m = find_model (ms, a->name);
    if (m == NULL)
      return fail (error, "no bitmap named '%s'", a->name);
    m->exists = false;
    return 0;
  case TRACKER_CLEAR:
    return usable (ms, a->name, error) ? 0 : -1;
  case TRACKER_ENABLE:
  case TRACKER_DISABLE:
    m = usable (ms, a->name, error);
    if (m == NULL)
      return -1;
    m->enabled = a->type == TRACKER_ENABLE;
    return 0;
  case TRACKER_MERGE:
    if (usable (ms, a->name, error) == NULL)
      return -1;
    for (i = 0; i < a->nr_sources; ++i)
      if (usable (ms, a->sources[i], error) == NULL)
        return -1;
    return 0;
  }
  return fail (error, "unknown action");
}

static unsigned
finest_enabled (struct tracker *t, const struct models *ms)
{
  unsigned finest = QCOW2_BITMAP_MAX_GRAN_BITS + 1;
  size_t i;

  for (i = 0; i < ms->n; ++i)
    if (ms->m[i].exists && ms->m[i].enabled &&
        ms->m[i].granularity_bits < finest)
      finest = ms->m[i].granularity_bits;
  return finest <= QCOW2_BITMAP_MAX_GRAN_BITS ? finest
                                              : t->cfg->granularity_bits;
}

/* A bitmap as the actions see it: persistent, or in memory. */
struct handle {
  struct sidecar_bitmap *bm;
  struct volatile_bitmap *vb;
};

static struct handle
find_bitmap (struct tracker *t, const char *name)
{
  struct handle h = { sidecar_find (t->sidecar, name), NULL };
  size_t i;

  for (i = 0; h.bm == NULL && i < t->nr_volatiles; ++i)
    if (strcmp (t->volatiles[i].name, name) == 0)
      h.vb = &t->volatiles[i];
  return h;
}

static struct dirtymap **
data_of (struct handle h)
{
  return h.bm ? &h.bm->data : &h.vb->data;
}

static unsigned
bits_of (struct handle h)
{
  return h.bm ? h.bm->entry.granularity_bits : h.vb->granularity_bits;
}

static void
set_enabled (struct handle h, bool enabled)
{
  if (h.vb) {
    h.vb->enabled = enabled;
    return;
  }
  h.bm->tracked = enabled;
  if (enabled)
    h.bm->entry.flags |= QCOW2_BITMAP_FLAG_AUTO;
  else
    h.bm->entry.flags &= ~QCOW2_BITMAP_FLAG_AUTO;
  h.bm->modified = true;
}

static int
add_volatile (struct tracker *t, const char *name, unsigned bits,
              bool enabled)
{
  struct volatile_bitmap *v;

  v = realloc (t->volatiles, (t->nr_volatiles + 1) * sizeof *v);
  if (v == NULL)
    return -1;
  t->volatiles = v;
  v = &t->volatiles[t->nr_volatiles];
  v->name = strdup (name);
  v->granularity_bits = bits;
  v->enabled = enabled;
  v->data = dirtymap_new (qcow2_blocks_covering (t->export_size, bits));
  if (v->name == NULL || v->data == NULL) {
    free (v->name);
    dirtymap_free (v->data);
    return -1;
  }
  t->nr_volatiles++;
  return 0;
}

static void
remove_volatile (struct tracker *t, struct volatile_bitmap *vb)
{
  size_t i = vb - t->volatiles;

  free (vb->name);
  dirtymap_free (vb->data);
  memmove (&t->volatiles[i], &t->volatiles[i + 1],
           (t->nr_volatiles - i - 1) * sizeof t->volatiles[0]);
  t->nr_volatiles--;
}

static int
merge_bitmaps (struct handle dst, struct handle src)
{
  if (dst.bm)
    dst.bm->modified = true;
  return dirtymap_merge_rescaled (*data_of (dst), bits_of (dst),
                                  *data_of (src), bits_of (src));
}

/* Apply one checked action; fails only when memory runs out. */
static int
apply_action (struct tracker *t, const struct tracker_action *a,
              bool *persistent_changed)
{
  struct handle h = find_bitmap (t, a->name);
  unsigned bits;
  size_t i;

  *persistent_changed |= h.bm != NULL;
  switch (a->type) {
  case TRACKER_ADD:
    bits = a->granularity ? (unsigned) qcow2_granularity_bits (a->granularity)
                          : t->cfg->granularity_bits;
    if (!a->persistent)
      return add_volatile (t, a->name, bits, !a->disabled);
    *persistent_changed = true;
    h.bm = sidecar_add_bitmap (t->sidecar, a->name, bits);
    if (h.bm == NULL)
      return -1;
    if (a->disabled)
      set_enabled (h, false);
    return 0;
  case TRACKER_REMOVE:
    if (h.bm)
      return sidecar_remove_bitmap (t->sidecar, h.bm);
    remove_volatile (t, h.vb);
    return 0;
  case TRACKER_CLEAR: {
    struct dirtymap *empty =
      dirtymap_new (dirtymap_nr_bits (*data_of (h)));
    if (empty == NULL)
      return -1;
    dirtymap_free (*data_of (h));
    *data_of (h) = empty;
    if (h.bm)
      h.bm->modified = true;
    return 0;
  }
  case TRACKER_ENABLE:
  case TRACKER_DISABLE:
    set_enabled (h, a->type == TRACKER_ENABLE);
    return 0;
  case TRACKER_MERGE:
    for (i = 0; i < a->nr_sources; ++i) {
      struct handle src = find_bitmap (t, a->sources[i]);
      if (merge_bitmaps (h, src) == -1)
        return -1;
    }
    return 0;
  }
  return -1;
}

static int
commit_live (struct tracker *t, char **error)
{
  if (sidecar_commit_live (t->sidecar) == -1)
    return fail (error, "the change is made in memory but could not be "
                 "stored in %s (see nbdkit's log); the next store retries",
                 t->sidecar->path);
  return 0;
}

int
tracker_transaction (struct tracker *t, const struct tracker_action *actions,
                     size_t nr_actions, char **error)
{
  struct models ms = { 0 };
  bool persistent_changed = false;
  size_t i;
  int r = -1;

  pthread_mutex_lock (&t->lock);
  if (ensure_started (t, error) == -1 || build_models (t, &ms, error) == -1)
    goto out;
  for (i = 0; i < nr_actions; ++i)
    if (check_action (t, &ms, &actions[i], error) == -1)
      goto out;
  /* The instant of the transaction: writes before it go to the bitmaps
   * recording until now, writes after it to those recording from now
   * on, at their finest granularity.
   */
  if (tracker_fold_locked (t, finest_enabled (t, &ms)) == -1) {
    fail (error, "out of memory");
    goto out;
  }
  for (i = 0; i < nr_actions; ++i)
    if (apply_action (t, &actions[i], &persistent_changed) == -1) {
      fail (error, "out of memory while applying the change (see nbdkit's "
            "log)");
      goto out;
    }
  r = persistent_changed ? commit_live (t, error) : 0;

 out:
  free (ms.m);
  pthread_mutex_unlock (&t->lock);
  return r;
}

/* Bytes of the disk that the set granules of MAP cover. */
static uint64_t
dirty_bytes (const struct dirtymap *map, unsigned bits, uint64_t size)
{
  uint64_t n = dirtymap_nr_bits (map);
  uint64_t bytes = dirtymap_count (map) << bits;

  if (n > 0 && dirtymap_test (map, n - 1))
    bytes -= (n << bits) - size;   /* the last granule is partial */
  return bytes;
}

int
tracker_query (struct tracker *t, struct tracker_bitmap_info **infos,
               size_t *nr_infos, char **error)
{
  struct sidecar *sc;
  struct tracker_bitmap_info *out = NULL;
  size_t i, n = 0;
  int r = -1;

  pthread_mutex_lock (&t->lock);
  if (bring_up_to_date (t, error) == -1)
    goto out;
  sc = t->sidecar;
  out = calloc (sc->nr_bitmaps + t->nr_volatiles + 1, sizeof *out);
  if (out == NULL) {
    fail (error, "out of memory");
    goto out;
  }
  for (i = 0; i < sc->nr_bitmaps + t->nr_volatiles; ++i, ++n) {
    struct tracker_bitmap_info *info = &out[n];
    struct handle h;

    if (i < sc->nr_bitmaps) {
      h.bm = sc->bitmaps[i];
      h.vb = NULL;
      info->persistent = true;
      info->inconsistent = h.bm->inconsistent;
      info->recording = h.bm->tracked;
    }
    else {
      h.bm = NULL;
      h.vb = &t->volatiles[i - sc->nr_bitmaps];
      info->recording = h.vb->enabled;
    }
    info->name = strdup (h.bm ? h.bm->entry.name : h.vb->name);
    if (info->name == NULL) {
      fail (error, "out of memory");
      goto out;
    }
    info->granularity = UINT64_C(1) << bits_of (h);
    if (!info->inconsistent)
      info->dirty_bytes = dirty_bytes (*data_of (h), bits_of (h),
                                       t->export_size);
  }
  *infos = out;
  *nr_infos = n;
  out = NULL;
  r = 0;

 out:
  tracker_free_infos (out, n);
  pthread_mutex_unlock (&t->lock);
  return r;
}

void
tracker_free_infos (struct tracker_bitmap_info *infos, size_t n)
{
  size_t i;

  if (infos == NULL)
    return;
  for (i = 0; i < n; ++i)
    free (infos[i].name);
  free (infos);
}

int
tracker_store_now (struct tracker *t, char **error)
{
  struct sidecar *sc;
  size_t i;
  int r = -1;

  pthread_mutex_lock (&t->lock);
  if (bring_up_to_date (t, error) == -1)
    goto out;
  sc = t->sidecar;
  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (!sc->bitmaps[i]->inconsistent)
      sc->bitmaps[i]->modified = true;
  r = commit_live (t, error);

 out:
  pthread_mutex_unlock (&t->lock);
  return r;
}

int
tracker_extents (struct tracker *t, const char *name, uint64_t offset,
                 uint64_t length, struct tracker_extent *extents, size_t max,
                 size_t *nr_extents, uint64_t *next, char **error)
{
  struct handle h;
  const struct dirtymap *map;
  uint64_t end, g;
  unsigned bits;
  size_t n = 0;
  int r = -1;

  pthread_mutex_lock (&t->lock);
  if (bring_up_to_date (t, error) == -1)
    goto out;
  h = find_bitmap (t, name);
  if (h.bm == NULL && h.vb == NULL) {
    fail (error, "no bitmap named '%s'", name);
    goto out;
  }
  if (h.bm && h.bm->inconsistent) {
    fail (error, "Bitmap '%s' is inconsistent: its dirty ranges are not "
          "known", name);
    goto out;
  }
  if (offset > t->export_size) {
    fail (error, "offset %" PRIu64 " is past the end of the export (%"
          PRIu64 " bytes)", offset, t->export_size);
    goto out;
  }
  map = *data_of (h);
  bits = bits_of (h);
  end = length > t->export_size - offset ? t->export_size : offset + length;
  *next = UINT64_MAX;
  for (g = offset >> bits; offset < end; ) {
    uint64_t first = dirtymap_next_set (map, g), last, start, stop;

    if ((first << bits) >= end || first >= dirtymap_nr_bits (map))
      break;
    if (n == max) {
      *next = first << bits > offset ? first << bits : offset;
      break;
    }
    last = dirtymap_next_clear (map, first);
    start = first << bits > offset ? first << bits : offset;
    stop = last << bits < end ? last << bits : end;
    extents[n].offset = start;
    extents[n].length = stop - start;
    n++;
    offset = stop;
    g = last;
  }
  *nr_extents = n;
  r = 0;

 out:
  pthread_mutex_unlock (&t->lock);
  return r;
}

const char *
tracker_export_name (struct tracker *t)
{
  return t->exportname ? t->exportname : "";
}
