/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Point-in-time views, by copy-before-write.
 *
 * A view divides the disk into granules (its bitmap's granularity, or
 * 64 KiB) and keeps two bits for each: FROZEN (the view must show this
 * granule as it was at the instant the view was added) and COPIED (its
 * old data is in the view's scratch file, at the granule's own
 * offset).  Nothing is kept per granule beyond these bits.  A frozen
 * granule is released (both bits cleared, its copy punched out) when a
 * client of the view trims it; the bits never go from clear to set
 * otherwise, apart from COPIED after a copy.
 *
 * Writes.  Before a write, zero or trim reaches the disk, every view
 * is asked for the granules it touches that are frozen and not copied.
 * The question is answered from the bits without a lock (loads with
 * acquire: a set COPIED bit means the copy is in the scratch file), so
 * that a write to copied or unfrozen granules costs two loads per
 * granule and view.  Otherwise the writer takes the view's lock and,
 * once no other operation overlaps those granules, registers a COPY
 * over them, reads them from the disk (through its own connection),
 * stores them in scratch, sets COPIED and unregisters.  A second write
 * to the same granules meanwhile waits for the first one's copy and
 * then finds nothing to copy.
 *
 * Reads.  A view read registers a READ over its granules (after any
 * COPY over them has finished) and reads the copied granules from
 * scratch and the others from the live disk: a write to those cannot
 * copy them, and so cannot reach the disk, until the READ is
 * unregistered, which is QEMU's "frozen read".  Writes wait for
 * nothing else: not for reads of other granules, nor for reads of
 * granules already copied.  A READ does not wait for other READs.
 *
 * Trims of the view wait for the operations over their granules, then
 * release the granules.  Every state change is made under the view's
 * lock, and every waiter is woken by one condition variable per view.
 *
 * The instant.  A view shows the disk as the writes that came before
 * its instant left it.  A write counts as before the instant if the
 * bitmaps recorded it before; such a write must have reached the disk
 * before any write after the instant copies a granule, or the copy
 * would miss it.  This library cannot see writes that did not ask it
 * anything, so the caller makes the instant: the tracker closes its
 * gate (common/tracker/recorder.h), which waits until no write is in
 * flight between its mark and the plugin's reply and holds new ones,
 * then folds the bitmaps and commits the stage, then opens the gate.
 * The registry's list is therefore read by writers without a lock.
 *
 * Failures of a copy (the disk not readable, the scratch file not
 * writable, the scratch limit reached) follow the configured policy:
 * the view breaks (its reads fail with EIO from then on, its scratch
 * space is given back, writes no longer copy for it), or the write
 * fails and the view stays as it was.
 *
 * Removal takes the view out of the list; clients still holding it see
 * EIO; it is freed, with its scratch file, when the last one lets go.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "views-internal.h"

/* Largest piece copied or read at once. */
#define COPY_CHUNK (UINT32_C(1) << 20)

/* The bits. */

static bool
test_bit (const uint64_t *map, uint64_t g)
{
  return __atomic_load_n (&map[g / 64], __ATOMIC_ACQUIRE) >> (g % 64) & 1;
}

static void
set_bit (uint64_t *map, uint64_t g)
{
  __atomic_or_fetch (&map[g / 64], UINT64_C(1) << (g % 64),
                     __ATOMIC_RELEASE);
}

static void
clear_bit (uint64_t *map, uint64_t g)
{
  __atomic_and_fetch (&map[g / 64], ~(UINT64_C(1) << (g % 64)),
                      __ATOMIC_RELEASE);
}

/* Frozen and not copied: its old data is still only on the disk. */
static bool
needs_copy (const struct view *v, uint64_t g)
{
  return test_bit (v->frozen, g) && !test_bit (v->copied, g);
}

/* Where granule G starts on the disk. */
static uint64_t
granule_offset (const struct view *v, uint64_t g)
{
  return g << v->bits;
}

/* The bytes of granules [FIRST, LAST]: the disk's last one may be
 * short.
 */
static uint64_t
run_bytes (const struct view *v, uint64_t first, uint64_t last)
{
  uint64_t end = (last + 1) << v->bits;

  return (end < v->size ? end : v->size) - granule_offset (v, first);
}

/* The view object. */

static void
view_free (struct view *v)
{
  if (v == NULL)
    return;
  scratch_free (v->scratch);
  pthread_mutex_destroy (&v->lock);
  pthread_cond_destroy (&v->changed);
  free (v->frozen);
  free (v->copied);
  free (v->name);
  free (v->bitmap);
  free (v->reason);
  free (v);
}

void
view_unref (struct view *v)
{
  if (v && __atomic_sub_fetch (&v->refs, 1, __ATOMIC_ACQ_REL) == 0)
    view_free (v);
}

/* Freeze the granules DIRTY has set, or all of them. */
static void
freeze (struct view *v, const struct dirtymap *dirty)
{
  uint64_t g, last;

  if (dirty == NULL) {
    /* Nobody sees the view yet: whole words, then the last bits. */
    memset (v->frozen, 0xff, v->nr_granules / 64 * sizeof (uint64_t));
    for (g = v->nr_granules / 64 * 64; g < v->nr_granules; ++g)
      set_bit (v->frozen, g);
    v->frozen_bytes = v->size;
    return;
  }
  for (g = dirtymap_next_set (dirty, 0); g < v->nr_granules;
       g = dirtymap_next_set (dirty, last)) {
    last = dirtymap_next_clear (dirty, g);
    if (last > v->nr_granules)
      last = v->nr_granules;
    v->frozen_bytes += run_bytes (v, g, last - 1);
    for (; g < last; ++g)
      set_bit (v->frozen, g);
  }
}

struct view *
view_new (struct views *vs, const char *name, const char *bitmap,
          const struct dirtymap *dirty, unsigned bits, uint64_t size,
          char **error)
{
  struct view *v = calloc (1, sizeof *v);
  uint64_t words;

  if (v == NULL)
    goto nomem;
  pthread_mutex_init (&v->lock, NULL);
  pthread_cond_init (&v->changed, NULL);
  v->refs = 1;
  v->on_error = vs->cfg->on_error;
  v->bits = bitmap ? bits : VIEWS_DEFAULT_GRANULARITY_BITS;
  v->size = size;
  v->nr_granules = (size + (UINT64_C(1) << v->bits) - 1) >> v->bits;
  if (v->nr_granules > MAX_GRANULES) {
    view_free (v);
    return views_fail (error, "view '%s' would need more than %" PRIu64
                       " granules: use a bitmap of a coarser granularity",
                       name, MAX_GRANULES), NULL;
  }
  words = (v->nr_granules + 63) / 64 + 1;
  v->frozen = calloc (words, sizeof (uint64_t));
  v->copied = calloc (words, sizeof (uint64_t));
  v->name = strdup (name);
  v->bitmap = bitmap ? strdup (bitmap) : NULL;
  if (!v->frozen || !v->copied || !v->name || (bitmap && !v->bitmap))
    goto nomem;
  v->scratch = scratch_new (vs->cfg->scratch_dir, name, &vs->budget);
  if (v->scratch == NULL) {
    view_free (v);
    return views_fail (error, "view '%s': its scratch file could not be "
                       "made (see nbdkit's log)", name), NULL;
  }
  freeze (v, dirty);
  return v;

 nomem:
  view_free (v);
  return views_fail (error, "out of memory"), NULL;
}

void
view_remove (struct view *v)
{
  pthread_mutex_lock (&v->lock);
  v->removed = true;
  /* Its copies go now, not when its last client lets go: once the
   * reads under way have finished, nothing can read them.
   */
  while (v->ops)
    pthread_cond_wait (&v->changed, &v->lock);
  scratch_free (v->scratch);
  v->scratch = NULL;
  pthread_cond_broadcast (&v->changed);
  pthread_mutex_unlock (&v->lock);
  nbdkit_debug ("dirtybitmap: view '%s' removed", v->name);
}

const char *
view_name (const struct view *v)
{
  return v->name;
}

/* Operations under way: the view's lock held. */

static bool
overlaps (const struct view *v, uint64_t first, uint64_t last,
          bool copies_only)
{
  const struct op *op;

  for (op = v->ops; op; op = op->next)
    if (op->first <= last && first <= op->last &&
        (!copies_only || op->type == OP_COPY))
      return true;
  return false;
}

static void
register_op (struct view *v, struct op *op, enum op_type type,
             uint64_t first, uint64_t last)
{
  op->type = type;
  op->first = first;
  op->last = last;
  op->next = v->ops;
  v->ops = op;
}

static void
unregister_op (struct view *v, struct op *op)
{
  struct op **p;

  for (p = &v->ops; *p != op; p = &(*p)->next)
    ;
  *p = op->next;
  pthread_cond_broadcast (&v->changed);
}

/* The view breaks: its reads fail from now on, its copies go.  Lock
 * held, and no operation of ours registered.
 */
static void
break_view (struct view *v, const char *reason)
{
  uint64_t g;

  if (v->broken)
    return;
  nbdkit_error ("view '%s' is broken: %s; its reads fail from now on "
                "(dirtybitmap-view-on-error=break-view): remove it and "
                "start the backup again", v->name, reason);
  v->reason = strdup (reason);
  __atomic_store_n (&v->broken, true, __ATOMIC_RELEASE);
  /* Copies by other writers under way would store after the release. */
  while (v->ops)
    pthread_cond_wait (&v->changed, &v->lock);
  for (g = 0; g < v->nr_granules; ++g)
    clear_bit (v->copied, g);
  scratch_release_all (v->scratch);
  pthread_cond_broadcast (&v->changed);
}

/* Copy-before-write. */

/* Copy granules [FIRST, LAST] to scratch, in pieces of COPY_CHUNK at
 * most.  0, or an errno value; a granule is COPIED only once all of
 * it is stored, and a granule stored in part is given back.
 */
static int
copy_run (struct view *v, views_read_fn *read_disk, void *opaque,
          uint64_t first, uint64_t last)
{
  uint64_t start = granule_offset (v, first);
  uint64_t end = start + run_bytes (v, first, last), at, g = first;
  uint32_t len = end - start < COPY_CHUNK ? end - start : COPY_CHUNK;
  void *buf = malloc (len);
  int err = 0;

  if (buf == NULL) {
    nbdkit_error ("view '%s': malloc: %m", v->name);
    return ENOMEM;
  }
  for (at = start; at < end; at += len) {
    if (end - at < len)
      len = end - at;
    if (read_disk (opaque, buf, len, at, &err) == -1) {
      nbdkit_error ("view '%s': the disk could not be read at [%" PRIu64
                    ", %" PRIu64 ") to copy it before a write", v->name, at,
                    at + len);
      err = EIO;
      break;
    }
    err = scratch_store (v->scratch, at, buf, len);
    if (err)
      break;
    /* The granules wholly stored by now. */
    for (; g <= last && granule_offset (v, g) + run_bytes (v, g, g)
           <= at + len; ++g)
      set_bit (v->copied, g);
  }
  if (err && at > granule_offset (v, g))
    scratch_release (v->scratch, granule_offset (v, g),
                     at - granule_offset (v, g));
  __atomic_add_fetch (&v->copied_bytes,
                      (g > last ? end : granule_offset (v, g)) - start,
                      __ATOMIC_RELAXED);
  free (buf);
  return err;
}

/* Copy the runs of granules in [FIRST, LAST] that need it. */
static int
copy_needed (struct view *v, views_read_fn *read_disk, void *opaque,
             uint64_t first, uint64_t last)
{
  uint64_t g, end;
  int err;

  for (g = first; g <= last; g = end + 1) {
    if (!needs_copy (v, g)) {
      end = g;
      continue;
    }
    for (end = g; end < last && needs_copy (v, end + 1); ++end)
      ;
    err = copy_run (v, read_disk, opaque, g, end);
    if (err)
      return err;
  }
  return 0;
}

/* The first and last granules of [FIRST, LAST] that need a copy;
 * false if none does.
 */
static bool
find_needed (const struct view *v, uint64_t *first, uint64_t *last)
{
  uint64_t f = *first, l = *last;

  if (__atomic_load_n (&v->broken, __ATOMIC_ACQUIRE))
    return false;
  while (f <= l && !needs_copy (v, f))
    f++;
  if (f > l)
    return false;
  while (!needs_copy (v, l))
    l--;
  *first = f;
  *last = l;
  return true;
}

static int
copy_one (struct view *v, views_read_fn *read_disk, void *opaque,
          uint64_t offset, uint64_t count, int *err)
{
  uint64_t first = offset >> v->bits, last;
  struct op op;
  int e;

  if (first >= v->nr_granules)
    return 0;
  last = (offset + count - 1) >> v->bits;
  if (last >= v->nr_granules)
    last = v->nr_granules - 1;
  if (!find_needed (v, &first, &last))
    return 0;                   /* the common case, without a lock */
  pthread_mutex_lock (&v->lock);
  while (find_needed (v, &first, &last) && overlaps (v, first, last, false))
    pthread_cond_wait (&v->changed, &v->lock);
  if (!find_needed (v, &first, &last)) {
    pthread_mutex_unlock (&v->lock);
    return 0;
  }
  register_op (v, &op, OP_COPY, first, last);
  pthread_mutex_unlock (&v->lock);

  e = copy_needed (v, read_disk, opaque, first, last);

  pthread_mutex_lock (&v->lock);
  unregister_op (v, &op);
  if (e && v->on_error == VIEWS_BREAK_VIEW)
    break_view (v, e == ENOSPC ? "the scratch space reached its limit"
                : "a copy before a write failed");
  pthread_mutex_unlock (&v->lock);
  if (e && v->on_error == VIEWS_FAIL_WRITE) {
    nbdkit_error ("view '%s': the write is refused because its old data "
                  "could not be kept for the view "
                  "(dirtybitmap-view-on-error=fail-write)", v->name);
    *err = e == ENOSPC ? ENOSPC : EIO;
    return -1;
  }
  return 0;
}

bool
views_exist (struct views *vs)
{
  return vs->n > 0;
}

int
views_copy_before_write (struct views *vs, views_read_fn *read_disk, void *opaque,
                         uint64_t offset, uint64_t count, int *err)
{
  size_t i;

  if (count == 0)
    return 0;
  for (i = 0; i < vs->n; ++i)
    if (copy_one (vs->list[i], read_disk, opaque, offset, count, err) == -1)
      return -1;
  return 0;
}

/* Clients of a view. */

void
view_close (struct view *v)
{
  view_unref (v);
}

/* Whether the view can serve a request at all; lock held. */
static int
check_usable (struct view *v, int *err)
{
  if (v->removed) {
    nbdkit_error ("view '%s' was removed", v->name);
    *err = EIO;
    return -1;
  }
  if (v->broken) {
    nbdkit_error ("view '%s' is broken: %s", v->name, v->reason);
    *err = EIO;
    return -1;
  }
  return 0;
}

static bool
all_frozen (const struct view *v, uint64_t first, uint64_t last)
{
  uint64_t g;

  for (g = first; g <= last; ++g)
    if (!test_bit (v->frozen, g))
      return false;
  return true;
}

/* Read [OFFSET, OFFSET + COUNT), within granules under our READ: the
 * copied runs from scratch, the others from the disk.
 */
static int
read_frozen (struct view *v, views_read_fn *read_disk, void *opaque,
             char *buf, uint32_t count, uint64_t offset, int *err)
{
  uint64_t end = offset + count;

  while (offset < end) {
    uint64_t g = offset >> v->bits;
    bool copied = test_bit (v->copied, g);
    uint64_t stop = granule_offset (v, g + 1);
    uint32_t len;

    while (stop < end && test_bit (v->copied, stop >> v->bits) == copied)
      stop += UINT64_C(1) << v->bits;
    len = (stop < end ? stop : end) - offset;
    if (copied) {
      *err = scratch_load (v->scratch, offset, buf, len);
      if (*err)
        return -1;
    }
    else if (read_disk (opaque, buf, len, offset, err) == -1) {
      nbdkit_error ("view '%s': the disk could not be read at [%" PRIu64
                    ", %" PRIu64 ")", v->name, offset, offset + len);
      return -1;
    }
    buf += len;
    offset += len;
  }
  return 0;
}

int
view_read (struct view *v, views_read_fn *read_disk, void *opaque,
           void *buf, uint32_t count, uint64_t offset, int *err)
{
  uint64_t first = offset >> v->bits, last;
  struct op op;
  int r;

  if (count == 0)
    return 0;
  last = (offset + count - 1) >> v->bits;
  pthread_mutex_lock (&v->lock);
  for (;;) {
    if (check_usable (v, err) == -1)
      goto refused;
    if (last >= v->nr_granules || !all_frozen (v, first, last)) {
      if (v->bitmap)
        nbdkit_error ("view '%s': [%" PRIu64 ", %" PRIu64 ") was not frozen "
                      "(not dirty in bitmap '%s' when the view was added, "
                      "or trimmed since)", v->name, offset, offset + count,
                      v->bitmap);
      else
        nbdkit_error ("view '%s': [%" PRIu64 ", %" PRIu64 ") was not frozen "
                      "(trimmed since the view was added)", v->name, offset,
                      offset + count);
      *err = EPERM;             /* QEMU says EACCES, which NBD has no code for */
      goto refused;
    }
    if (!overlaps (v, first, last, true))
      break;
    pthread_cond_wait (&v->changed, &v->lock);
  }
  register_op (v, &op, OP_READ, first, last);
  pthread_mutex_unlock (&v->lock);

  r = read_frozen (v, read_disk, opaque, buf, count, offset, err);

  pthread_mutex_lock (&v->lock);
  unregister_op (v, &op);
  pthread_mutex_unlock (&v->lock);
  return r;

 refused:
  pthread_mutex_unlock (&v->lock);
  return -1;
}

/* Release frozen granules [FIRST, LAST]; lock held, no operation over
 * them.
 */
static void
release (struct view *v, uint64_t first, uint64_t last)
{
  uint64_t g, run = UINT64_MAX;

  for (g = first; g <= last + 1; ++g) {
    bool copied = g <= last && test_bit (v->frozen, g) &&
      test_bit (v->copied, g);

    if (g <= last && test_bit (v->frozen, g)) {
      v->frozen_bytes -= run_bytes (v, g, g);
      clear_bit (v->frozen, g);
    }
    if (copied) {
      clear_bit (v->copied, g);
      if (run == UINT64_MAX)
        run = g;
    }
    else if (run != UINT64_MAX) {
      scratch_release (v->scratch, granule_offset (v, run),
                       run_bytes (v, run, g - 1));
      run = UINT64_MAX;
    }
  }
}

int
view_trim (struct view *v, uint32_t count, uint64_t offset, int *err)
{
  uint64_t granule = UINT64_C(1) << v->bits;
  uint64_t first = (offset + granule - 1) >> v->bits;
  uint64_t end = offset + count, stop;

  /* Granules wholly inside; the disk's last one may be short. */
  stop = end >= v->size ? v->nr_granules : end >> v->bits;
  pthread_mutex_lock (&v->lock);
  if (v->removed) {
    nbdkit_error ("view '%s' was removed", v->name);
    pthread_mutex_unlock (&v->lock);
    *err = EIO;
    return -1;
  }
  if (first < stop) {
    while (overlaps (v, first, stop - 1, false))
      pthread_cond_wait (&v->changed, &v->lock);
    if (!v->broken)
      release (v, first, stop - 1);
  }
  pthread_mutex_unlock (&v->lock);
  return 0;
}

