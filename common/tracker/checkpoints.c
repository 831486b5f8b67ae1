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
#include "utf8.h"
#include "views.h"

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

/* A transaction, as QEMU's blockdev.c runs one: each action is
 * prepared in turn against the bitmaps as the earlier actions leave
 * them (the stage), doing everything that can fail; then either every
 * action is committed, which cannot fail, or every one is aborted,
 * which leaves the bitmaps and the sidecar as they were.
 *
 * The stage is the new list of bitmaps: persistent ones first, as in
 * the tracker's list.  A dry run (no data) comes first, to learn the
 * finest granularity recording afterwards; writes so far are folded
 * in at the transaction's instant; then the real preparation builds
 * the new data (cleared and merged maps) from the folded bitmaps.
 */
struct staged {
  struct tracker_bitmap *orig;  /* in the tracker's list; NULL if added */
  bool persistent, inconsistent;
  bool owns_data;               /* the stage's data is new */
  bool changed;                 /* persistent: store its data anew */
  bool set_recording;           /* persistent: store its recording flag */
};

struct stage {
  bool prepare;                 /* false: a dry run, no data */
  struct tracker_bitmap *b;     /* the new list */
  struct staged *info;          /* b's companions */
  size_t n, size, nr_persistent;
  struct tracker_bitmap **gone; /* removed from the tracker's list */
  size_t nr_gone;
  size_t nr_unlinked;           /* gone[] taken out of the sidecar */
  bool persistent_changed;
  struct views_stage *views;    /* the views, once an action changes them */
};

static ssize_t
find_staged (const struct stage *st, const char *name)
{
  size_t i;

  for (i = 0; i < st->n; ++i)
    if (strcmp (st->b[i].name, name) == 0)
      return i;
  return -1;
}

static int
stage_init (struct tracker *t, struct stage *st, bool prepare, char **error)
{
  size_t i;

  memset (st, 0, sizeof *st);
  st->prepare = prepare;
  st->size = t->nr_bitmaps + 16;
  st->b = calloc (st->size, sizeof *st->b);
  st->info = calloc (st->size, sizeof *st->info);
  st->gone = calloc (t->nr_bitmaps + 1, sizeof *st->gone);
  if (!st->b || !st->info || !st->gone)
    return fail (error, "out of memory");
  for (i = 0; i < t->nr_bitmaps; ++i) {
    st->b[i] = t->bitmaps[i];
    st->info[i].orig = &t->bitmaps[i];
    st->info[i].persistent = t->bitmaps[i].stored != NULL;
    st->info[i].inconsistent = t->bitmaps[i].stored &&
      !sidecar_bitmap_is_consistent (t->bitmaps[i].stored);
    st->nr_persistent += st->info[i].persistent;
  }
  st->n = t->nr_bitmaps;
  return 0;
}

/* Free what the stage made and the tracker's list does not hold. */
static void
stage_free (struct stage *st)
{
  size_t i;

  for (i = 0; i < st->n; ++i) {
    if (st->info[i].orig == NULL)
      free (st->b[i].name);
    if (st->info[i].owns_data)
      dirtymap_free (st->b[i].data);
  }
  free (st->b);
  free (st->info);
  free (st->gone);
  views_stage_free (st->views);
}

/* Room for a new bitmap at AT (persistent ones go after the others
 * persistent), returned cleared.
 */
static ssize_t
stage_insert (struct stage *st, bool persistent)
{
  size_t at = persistent ? st->nr_persistent : st->n;

  if (st->n == st->size) {
    size_t size = 2 * st->size;
    struct tracker_bitmap *b = realloc (st->b, size * sizeof *b);
    struct staged *info;

    if (b == NULL)
      return -1;
    st->b = b;
    info = realloc (st->info, size * sizeof *info);
    if (info == NULL)
      return -1;
    st->info = info;
    st->size = size;
  }
  memmove (&st->b[at + 1], &st->b[at], (st->n - at) * sizeof st->b[0]);
  memmove (&st->info[at + 1], &st->info[at],
           (st->n - at) * sizeof st->info[0]);
  memset (&st->b[at], 0, sizeof st->b[0]);
  memset (&st->info[at], 0, sizeof st->info[0]);
  st->n++;
  st->nr_persistent += persistent;
  st->info[at].persistent = persistent;
  return at;
}

static void
stage_remove (struct stage *st, size_t i)
{
  if (st->info[i].orig)
    st->gone[st->nr_gone++] = st->info[i].orig;
  else
    free (st->b[i].name);
  if (st->info[i].owns_data)
    dirtymap_free (st->b[i].data);
  st->nr_persistent -= st->info[i].persistent;
  memmove (&st->b[i], &st->b[i + 1], (st->n - i - 1) * sizeof st->b[0]);
  memmove (&st->info[i], &st->info[i + 1],
           (st->n - i - 1) * sizeof st->info[0]);
  st->n--;
}

/* Give staged bitmap I the new data MAP. */
static void
stage_set_data (struct stage *st, size_t i, struct dirtymap *map)
{
  if (st->info[i].owns_data)
    dirtymap_free (st->b[i].data);
  st->b[i].data = map;
  st->info[i].owns_data = true;
  st->info[i].changed = st->info[i].persistent;
}

static ssize_t
usable (const struct stage *st, const char *name, char **error)
{
  ssize_t i = find_staged (st, name);

  if (i == -1)
    fail (error, "no bitmap named '%s'", name);
  else if (st->info[i].inconsistent) {
    fail (error, "Bitmap '%s' is inconsistent (left in use by a crash it "
          "could not be recovered from): it can only be removed", name);
    i = -1;
  }
  return i;
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

static int
prepare_add (struct tracker *t, struct stage *st,
             const struct tracker_action *a, char **error)
{
  struct sidecar *sc = t->sidecar;
  size_t len = strlen (a->name);
  unsigned bits = 0;
  ssize_t i;

  if (len == 0 || len > QCOW2_BITMAP_MAX_NAME_SIZE)
    return fail (error, "Bitmap name must be 1 to %d bytes long, not %zu",
                 QCOW2_BITMAP_MAX_NAME_SIZE, len);
  if (!utf8_is_valid (a->name, len))
    return fail (error, "Bitmap name must be valid UTF-8");
  if (strcmp (a->name, QCOW2_JOURNAL_NAME) == 0)
    return fail (error, "Bitmap name '%s' is reserved for the filter's "
                 "crash-safety journal", a->name);
  if (find_staged (st, a->name) != -1)
    return fail (error, "a bitmap named '%s' already exists", a->name);
  if (granularity_of (t, a, &bits, error) == -1)
    return -1;
  if (qcow2_bitmap_fitting_granularity (sidecar_virtual_size (sc), bits,
                                        sidecar_cluster_bits (sc)) != bits)
    return fail (error, "Granularity %" PRIu64 " is too fine for a disk "
                 "of %" PRIu64 " bytes (more than QEMU's 512 MiB of "
                 "bitmap data)", UINT64_C(1) << bits,
                 sidecar_virtual_size (sc));
  if (a->persistent && st->nr_persistent >= QCOW2_BITMAP_MAX_COUNT)
    return fail (error, "Bitmap '%s' cannot be added: %s would hold more "
                 "than %d persistent bitmaps, QEMU's limit; remove some "
                 "first", a->name, sidecar_path (sc),
                 QCOW2_BITMAP_MAX_COUNT);
  i = stage_insert (st, a->persistent);
  if (i == -1)
    return fail (error, "out of memory");
  st->b[i].name = strdup (a->name);
  st->b[i].granularity_bits = bits;
  st->b[i].recording = !a->disabled;
  if (st->b[i].name == NULL)
    return fail (error, "out of memory");
  if (st->prepare) {
    st->b[i].data = dirtymap_new (qcow2_blocks_covering (t->export_size,
                                                         bits));
    if (st->b[i].data == NULL)
      return fail (error, "out of memory");
    st->info[i].owns_data = true;
  }
  st->persistent_changed |= a->persistent;
  return 0;
}

static int
prepare_merge (struct stage *st, const struct tracker_action *a,
               char **error)
{
  ssize_t dst = usable (st, a->name, error), src;
  struct dirtymap *map = NULL;
  unsigned bits;
  size_t i;

  if (dst == -1)
    return -1;
  bits = st->b[dst].granularity_bits;
  if (st->prepare) {
    map = dirtymap_new (dirtymap_nr_bits (st->b[dst].data));
    if (map == NULL ||
        dirtymap_merge_rescaled (map, bits, st->b[dst].data, bits) == -1)
      goto nomem;
  }
  for (i = 0; i < a->nr_sources; ++i) {
    src = usable (st, a->sources[i], error);
    if (src == -1) {
      dirtymap_free (map);
      return -1;
    }
    if (map && dirtymap_merge_rescaled (map, bits, st->b[src].data,
                                        st->b[src].granularity_bits) == -1)
      goto nomem;
  }
  /* Merging nothing changes nothing. */
  if (map && a->nr_sources > 0)
    stage_set_data (st, dst, map);
  else
    dirtymap_free (map);
  return 0;

 nomem:
  dirtymap_free (map);
  return fail (error, "out of memory");
}

/* A view action, in the real preparation only: views do not change
 * the granularity the dry run is for.
 */
static int
prepare_view (struct tracker *t, struct stage *st,
              const struct tracker_action *a, char **error)
{
  ssize_t i = -1;

  if (!st->prepare)
    return 0;
  if (a->type == TRACKER_VIEW_ADD && a->bitmap &&
      (i = usable (st, a->bitmap, error)) == -1)
    return -1;
  return tracker_stage_view (t, &st->views, a, i == -1 ? NULL : &st->b[i],
                             error);
}

/* Check one action against the stage and stage its effect. */
static int
prepare_action (struct tracker *t, struct stage *st,
                const struct tracker_action *a, char **error)
{
  struct dirtymap *map;
  ssize_t i;

  if (a->type != TRACKER_ADD && a->type != TRACKER_VIEW_ADD &&
      a->type != TRACKER_VIEW_REMOVE &&
      (i = find_staged (st, a->name)) != -1)
    st->persistent_changed |= st->info[i].persistent;
  switch (a->type) {
  case TRACKER_ADD:
    return prepare_add (t, st, a, error);
  case TRACKER_REMOVE:
    i = find_staged (st, a->name);
    if (i == -1)
      return fail (error, "no bitmap named '%s'", a->name);
    stage_remove (st, i);
    return 0;
  case TRACKER_CLEAR:
    i = usable (st, a->name, error);
    if (i == -1)
      return -1;
    if (st->prepare) {
      map = dirtymap_new (dirtymap_nr_bits (st->b[i].data));
      if (map == NULL)
        return fail (error, "out of memory");
      stage_set_data (st, i, map);
    }
    return 0;
  case TRACKER_ENABLE:
  case TRACKER_DISABLE:
    i = usable (st, a->name, error);
    if (i == -1)
      return -1;
    st->b[i].recording = a->type == TRACKER_ENABLE;
    st->info[i].set_recording = st->info[i].persistent;
    return 0;
  case TRACKER_MERGE:
    return prepare_merge (st, a, error);
  case TRACKER_VIEW_ADD:
  case TRACKER_VIEW_REMOVE:
    return prepare_view (t, st, a, error);
  }
  return fail (error, "unknown action");
}

/* Persistent bitmaps first, the highest position first of them, so
 * that as they are taken out of the sidecar in that order, each one's
 * position there is still its position in the tracker's list.
 */
static int
unlink_order (const void *a, const void *b)
{
  const struct tracker_bitmap *x = *(const struct tracker_bitmap *const *) a;
  const struct tracker_bitmap *y = *(const struct tracker_bitmap *const *) b;

  if ((x->stored == NULL) != (y->stored == NULL))
    return x->stored ? -1 : 1;
  return x < y ? 1 : x > y ? -1 : 0;
}

/* The sidecar's part of the preparation: persistent bitmaps taken
 * out, then those added (so that a name may be reused).
 */
static int
prepare_sidecar (struct tracker *t, struct stage *st, char **error)
{
  struct sidecar *sc = t->sidecar;
  size_t i;

  qsort (st->gone, st->nr_gone, sizeof st->gone[0], unlink_order);
  for (i = 0; i < st->nr_gone && st->gone[i]->stored; ++i) {
    struct sidecar_bitmap *bm = st->gone[i]->stored;

    if (sidecar_bitmap_is_new (bm))
      sidecar_detach_bitmap (sc, bm);
    else if (sidecar_remove_bitmap (sc, bm) == -1)
      return fail (error, "Bitmap '%s' could not be removed from %s (see "
                   "nbdkit's log)", st->gone[i]->name, sidecar_path (sc));
    st->nr_unlinked++;
  }
  for (i = 0; i < st->nr_persistent; ++i) {
    if (st->info[i].orig)
      continue;
    st->b[i].stored = sidecar_add_bitmap (sc, st->b[i].name,
                                          st->b[i].granularity_bits);
    if (st->b[i].stored == NULL)
      return fail (error, "Bitmap '%s' could not be added to %s (see "
                   "nbdkit's log)", st->b[i].name, sidecar_path (sc));
  }
  return 0;
}

static void
abort_sidecar (struct tracker *t, struct stage *st)
{
  size_t i;

  for (i = 0; i < st->nr_persistent; ++i)
    if (st->info[i].orig == NULL && st->b[i].stored)
      sidecar_discard_bitmap (t->sidecar, st->b[i].stored);
  while (st->nr_unlinked > 0) {
    struct tracker_bitmap *b = st->gone[--st->nr_unlinked];

    sidecar_restore_bitmap (t->sidecar, b->stored, b - t->bitmaps);
  }
}

/* Make the stage the tracker's list; cannot fail. */
static void
commit_stage (struct tracker *t, struct stage *st)
{
  size_t i;

  for (i = 0; i < st->n; ++i) {
    struct tracker_bitmap *b = &st->b[i];
    struct staged *in = &st->info[i];

    if (in->owns_data && in->orig && b->stored == NULL)
      dirtymap_free (in->orig->data);
    if (in->owns_data && b->stored)
      sidecar_bitmap_set_data (b->stored, b->data);
    if (in->orig == NULL && b->stored && !b->recording)
      in->set_recording = true;
    if (in->set_recording)
      sidecar_bitmap_set_recording (b->stored, b->recording);
    if (in->changed)
      sidecar_bitmap_mark_changed (b->stored);
  }
  for (i = 0; i < st->nr_gone; ++i) {
    struct tracker_bitmap *b = st->gone[i];

    if (b->stored == NULL)
      dirtymap_free (b->data);
    else if (sidecar_bitmap_is_new (b->stored))
      sidecar_discard_bitmap (t->sidecar, b->stored);   /* detached */
    free (b->name);
  }
  free (t->bitmaps);
  t->bitmaps = st->b;
  t->nr_bitmaps = st->n;
  st->b = NULL;
  st->n = 0;
  if (st->views)
    views_stage_commit (st->views);
}

/* Stage every action; 0 or -1 with *ERROR set. */
static int
prepare_actions (struct tracker *t, struct stage *st, bool prepare,
                 const struct tracker_action *actions, size_t nr_actions,
                 char **error)
{
  size_t i;

  if (stage_init (t, st, prepare, error) == -1)
    return -1;
  for (i = 0; i < nr_actions; ++i)
    if (prepare_action (t, st, &actions[i], error) == -1)
      return -1;
  return prepare ? prepare_sidecar (t, st, error) : 0;
}

int
tracker_transaction (struct tracker *t, const struct tracker_action *actions,
                     size_t nr_actions, char **error)
{
  struct stage st = { 0 };
  unsigned before, after;
  bool persistent_changed;
  bool gate = tracker_has_view_actions (actions, nr_actions);
  int r = -1;

  pthread_mutex_lock (&t->lock);
  if (ensure_started (t, error) == -1)
    goto out;
  if (prepare_actions (t, &st, false, actions, nr_actions, error) == -1)
    goto out;
  after = tracker_finest_bits (st.b, st.n, 0, t->cfg->granularity_bits);
  stage_free (&st);
  memset (&st, 0, sizeof st);
  /* The instant of the transaction: writes before it go to the bitmaps
   * recording until now, writes after it to those recording from now
   * on.  Until it commits or aborts, writes are recorded finely enough
   * for either.  With views, no write is on its way to the plugin
   * meanwhile (views.c explains why).
   */
  before = tracker_recording_bits (t);
  if (gate)
    recorder_close_gate (t->recorder);
  if (tracker_fold_epoch_locked (t, before < after ? before : after) == -1) {
    fail (error, "out of memory");
    goto out;
  }
  if (prepare_actions (t, &st, true, actions, nr_actions, error) == -1) {
    abort_sidecar (t, &st);
    goto out;
  }
  persistent_changed = st.persistent_changed;
  commit_stage (t, &st);
  if (gate)
    tracker_open_gate (t);
  gate = false;
  if (after > before && tracker_fold_locked (t, after) == -1)
    nbdkit_debug ("dirtybitmap: out of memory: writes are recorded at a "
                  "finer granularity than needed until the next change");
  r = persistent_changed ? tracker_commit_live_locked (t, error) : 0;

 out:
  if (gate && t->started)
    tracker_open_gate (t);
  stage_free (&st);
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
  struct tracker_bitmap_info *out = NULL;
  size_t n = 0;
  int r = -1;

  pthread_mutex_lock (&t->lock);
  if (bring_up_to_date (t, error) == -1)
    goto out;
  out = calloc (t->nr_bitmaps + 1, sizeof *out);
  if (out == NULL) {
    fail (error, "out of memory");
    goto out;
  }
  for (n = 0; n < t->nr_bitmaps; ++n) {
    const struct tracker_bitmap *b = &t->bitmaps[n];
    struct tracker_bitmap_info *info = &out[n];

    info->persistent = b->stored != NULL;
    info->inconsistent = b->data == NULL;
    info->recording = b->recording;
    info->name = strdup (b->name);
    if (info->name == NULL) {
      fail (error, "out of memory");
      goto out;
    }
    info->granularity = UINT64_C(1) << b->granularity_bits;
    if (b->data)
      info->dirty_bytes = dirty_bytes (b->data, b->granularity_bits,
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
  int r = -1;

  pthread_mutex_lock (&t->lock);
  if (ensure_started (t, error) == 0)
    r = tracker_store_locked (t, error);
  pthread_mutex_unlock (&t->lock);
  return r;
}

int
tracker_extents (struct tracker *t, const char *name, uint64_t offset,
                 uint64_t length, struct tracker_extent *extents, size_t max,
                 size_t *nr_extents, uint64_t *next, char **error)
{
  const struct tracker_bitmap *b = NULL;
  const struct dirtymap *map;
  uint64_t end, g;
  unsigned bits;
  size_t i, n = 0;
  int r = -1;

  pthread_mutex_lock (&t->lock);
  if (bring_up_to_date (t, error) == -1)
    goto out;
  for (i = 0; b == NULL && i < t->nr_bitmaps; ++i)
    if (strcmp (t->bitmaps[i].name, name) == 0)
      b = &t->bitmaps[i];
  if (b == NULL) {
    fail (error, "no bitmap named '%s'", name);
    goto out;
  }
  if (b->data == NULL) {
    fail (error, "Bitmap '%s' is inconsistent: its dirty ranges are not "
          "known", name);
    goto out;
  }
  if (offset > t->export_size) {
    fail (error, "offset %" PRIu64 " is past the end of the export (%"
          PRIu64 " bytes)", offset, t->export_size);
    goto out;
  }
  map = b->data;
  bits = b->granularity_bits;
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
