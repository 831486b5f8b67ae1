/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "data-identity.h"
#include "dirtymap.h"
#include "journal.h"
#include "qcow2-format.h"
#include "sidecar.h"
#include "tracker.h"
#include "tracker-internal.h"

struct tracker *
tracker_new (const struct tracker_config *cfg)
{
  struct tracker *t = calloc (1, sizeof *t);

  if (t == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  t->cfg = cfg;
  if (cfg->export_name && (t->exportname = strdup (cfg->export_name))
      == NULL) {
    nbdkit_error ("strdup: %m");
    free (t);
    return NULL;
  }
  pthread_mutex_init (&t->lock, NULL);
  return t;
}

void
tracker_free (struct tracker *t)
{
  if (t == NULL)
    return;
  journal_free (t->journal);
  sidecar_close (t->sidecar);
  sidecar_close (t->validated);
  recorder_free (t->recorder);
  tracker_free_bitmaps (t->bitmaps, t->nr_bitmaps);
  free (t->exportname);
  pthread_mutex_destroy (&t->lock);
  free (t);
}

static bool
is_named (const struct tracker_config *cfg, const char *name)
{
  size_t i;

  for (i = 0; i < cfg->nr_names; ++i)
    if (strcmp (cfg->names[i], name) == 0)
      return true;
  return false;
}

static const char *
why_in_use (const struct sidecar *sc)
{
  const char *why = sidecar_distrust_reason (sc);

  return why ? why : "it was not protected by this filter's journal";
}

/* A bitmap left in use that the journal cannot rebuild: apply the
 * policy.  Returns 1 if it will record writes, 0 if not, -1 to refuse.
 */
static int
in_use_bitmap (struct tracker *t, struct sidecar *sc,
               struct sidecar_bitmap *bm, bool add)
{
  const struct tracker_config *cfg = t->cfg;
  const char *path = sidecar_path (sc);
  const char *name = sidecar_bitmap_name (bm);
  bool recording = sidecar_bitmap_stored_recording (bm);

  switch (cfg->in_use_policy) {
  case IN_USE_REFUSE:
    nbdkit_error ("%s: bitmap '%s' is marked in use and cannot be recovered "
                  "(%s), so it may miss writes; dirtybitmap-in-use=refuse "
                  "stops here.  Take a full backup, then remove it with "
                  "'qemu-img bitmap --remove %s %s', or start with "
                  "dirtybitmap-in-use=reset to make it all dirty and go on "
                  "recording", path, name, why_in_use (sc), path, name);
    return -1;
  case IN_USE_RESET:
    if (!add)
      return recording;
    if (sidecar_reset_bitmap (sc, bm) == -1)
      return -1;
    nbdkit_error ("warning: %s: bitmap '%s' was marked in use and could not "
                  "be recovered (%s): it is reset to all dirty%s, so the "
                  "next incremental backup from it copies the whole disk",
                  path, name, why_in_use (sc),
                  recording ? " and records writes again" : "");
    return sidecar_bitmap_resume_recording (bm);
  case IN_USE_KEEP:
    /* Not an error: QEMU keeps such bitmaps too, and the others can
     * still record.  Reported once, at the first look.
     */
    if (!t->warned_in_use)
      nbdkit_error ("warning: %s: bitmap '%s' is marked in use and cannot "
                    "be recovered (%s): it may miss writes, so it is neither "
                    "loaded nor recording and stays in use.  Remove it with "
                    "'qemu-img bitmap --remove %s %s' and take a full "
                    "backup%s, or start with dirtybitmap-in-use=reset",
                    path, name, why_in_use (sc), path, name,
                    is_named (cfg, name)
                    ? ", then restart to create it afresh" : "");
    return 0;
  }
  abort ();
}

/* Decide which bitmaps record writes.  With ADD false nothing changes:
 * missing bitmaps are only checked against QEMU's limits.  Returns the
 * number recording, or -1.
 */
int
tracker_select_bitmaps (struct tracker *t, struct sidecar *sc, bool add)
{
  const struct tracker_config *cfg = t->cfg;
  const char *path = sidecar_path (sc);
  int recording = 0;
  size_t i;

  for (i = 0; i < cfg->nr_names; ++i) {
    const char *name = cfg->names[i];
    struct sidecar_bitmap *bm = sidecar_find (sc, name);

    if (bm && !sidecar_bitmap_stored_recording (bm) &&
        sidecar_bitmap_is_consistent (bm)) {
      nbdkit_error ("%s: bitmap '%s' is not recording; make it record "
                    "writes with 'qemu-img bitmap --enable %s %s', or do "
                    "not name it", path, name, path, name);
      return -1;
    }
    if (bm == NULL) {
      if (!add) {
        if (qcow2_bitmap_size_check (path, name, sidecar_virtual_size (sc),
                                     cfg->granularity_bits,
                                     sidecar_cluster_bits (sc)) == -1)
          return -1;
        recording++;
      }
      else if (sidecar_add_bitmap (sc, name, cfg->granularity_bits) == NULL)
        return -1;
    }
  }
  for (i = 0; i < sidecar_nr_bitmaps (sc); ++i) {
    struct sidecar_bitmap *bm = sidecar_bitmap_at (sc, i);

    if (!sidecar_bitmap_is_consistent (bm)) {
      int r = in_use_bitmap (t, sc, bm, add);
      if (r == -1)
        return -1;
      recording += r;
      continue;
    }
    if (sidecar_bitmap_was_recovered (bm) && !t->warned_in_use)
      nbdkit_debug ("dirtybitmap: %s: bitmap '%s' was left in use by a "
                    "crash and is rebuilt from the journal", path,
                    sidecar_bitmap_name (bm));
    recording += sidecar_bitmap_resume_recording (bm);
  }
  t->warned_in_use = true;
  if (recording == 0 && !cfg->allow_no_bitmaps) {
    nbdkit_error ("%s: no recording bitmap to record writes into (bitmaps "
                  "in use cannot record); name one with dirtybitmap=NAME "
                  "(it is created if missing)", path);
    return -1;
  }
  return recording;
}

unsigned
tracker_open_flags (const struct tracker_config *cfg)
{
  return cfg->in_use_policy == IN_USE_RESET ? SIDECAR_LOAD_IN_USE : 0;
}

/* Granularity of the durable marks for a disk of VIRTUAL_SIZE bytes
 * whose finest recording bitmap has granules of 1 << FINEST bytes;
 * 0 after nbdkit_error.
 */
unsigned
tracker_journal_bits (const struct tracker_config *cfg, const char *path,
                      uint64_t virtual_size, unsigned finest,
                      unsigned cluster_bits)
{
  unsigned bits = cfg->crash_granularity_bits
    ? cfg->crash_granularity_bits : TRACKER_DEFAULT_CRASH_GRANULARITY_BITS;
  uint64_t max_bytes = cfg->crash_granularity_bits
    ? TRACKER_JOURNAL_MAX_BYTES : TRACKER_DEFAULT_JOURNAL_MAX_BYTES;

  /* Finer than every bitmap would cost commits and buy nothing. */
  if (bits < finest)
    bits = finest;
  while (!cfg->crash_granularity_bits &&
         qcow2_blocks_covering (virtual_size, bits) / 8 > max_bytes &&
         bits < QCOW2_BITMAP_MAX_GRAN_BITS)
    bits++;
  if (qcow2_blocks_covering (virtual_size, bits) / 8 > max_bytes) {
    nbdkit_error ("dirtybitmap-crash-granularity=%" PRIu64 ": the journal "
                  "of a %" PRIu64 "-byte disk would take more than %" PRIu64
                  " MiB; choose a coarser granularity, or leave the "
                  "parameter out to get one that fits",
                  UINT64_C(1) << bits, virtual_size, max_bytes >> 20);
    return 0;
  }
  if (qcow2_bitmap_size_check (path, QCOW2_JOURNAL_NAME, virtual_size, bits,
                               cluster_bits) == -1)
    return 0;
  return bits;
}

unsigned
tracker_finest_bits (const struct tracker_bitmap *bitmaps, size_t n,
                     unsigned also, unsigned otherwise)
{
  unsigned finest = also ? also : QCOW2_BITMAP_MAX_GRAN_BITS + 1;
  size_t i;

  for (i = 0; i < n; ++i)
    if (bitmaps[i].recording && bitmaps[i].granularity_bits < finest)
      finest = bitmaps[i].granularity_bits;
  return finest <= QCOW2_BITMAP_MAX_GRAN_BITS ? finest : otherwise;
}

void
tracker_free_bitmaps (struct tracker_bitmap *bitmaps, size_t n)
{
  size_t i;

  for (i = 0; i < n; ++i) {
    free (bitmaps[i].name);
    if (bitmaps[i].stored == NULL)
      dirtymap_free (bitmaps[i].data);
  }
  free (bitmaps);
}

/* The sidecar's bitmaps, as the tracker lists them. */
static int
list_stored_bitmaps (struct sidecar *sc, struct tracker_bitmap **bitmaps,
                     size_t *n)
{
  size_t i, nr = sidecar_nr_bitmaps (sc);
  struct tracker_bitmap *list = calloc (nr + 1, sizeof *list);

  if (list == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  for (i = 0; i < nr; ++i) {
    struct sidecar_bitmap *bm = sidecar_bitmap_at (sc, i);

    list[i].name = strdup (sidecar_bitmap_name (bm));
    if (list[i].name == NULL) {
      nbdkit_error ("strdup: %m");
      tracker_free_bitmaps (list, i);
      return -1;
    }
    list[i].granularity_bits = sidecar_bitmap_granularity_bits (bm);
    list[i].recording = sidecar_bitmap_is_recording (bm);
    list[i].stored = bm;
    list[i].data = sidecar_bitmap_data (bm);
  }
  *bitmaps = list;
  *n = nr;
  return 0;
}

/* The finest granularity the bitmaps recording at start-up need,
 * named ones not yet in the sidecar included.  0 after nbdkit_error.
 */
unsigned
tracker_startup_finest_bits (const struct tracker_config *cfg,
                             struct sidecar *sc)
{
  struct tracker_bitmap *list;
  unsigned missing = 0, finest;
  size_t i, n;

  for (i = 0; i < cfg->nr_names; ++i)
    if (sidecar_find (sc, cfg->names[i]) == NULL)
      missing = cfg->granularity_bits;
  if (list_stored_bitmaps (sc, &list, &n) == -1)
    return 0;
  /* None yet: bitmaps added later most likely take the default. */
  finest = tracker_finest_bits (list, n, missing, cfg->granularity_bits);
  tracker_free_bitmaps (list, n);
  return finest;
}

/* The journal's store: the sidecar's journal. */
static int
store_write (void *sc, uint64_t offset, const void *buf, size_t len)
{
  return sidecar_journal_write (sc, offset, buf, len);
}

static int
store_sync (void *sc)
{
  return sidecar_journal_sync (sc);
}

/* With crash safety: the journal's granularity, for the sidecar to
 * create it, and once it has, the journal that writes to it.
 */
static int
set_journal_bits (struct tracker *t, struct sidecar *sc, unsigned finest)
{
  unsigned bits = tracker_journal_bits (t->cfg, sidecar_path (sc),
                                        sidecar_virtual_size (sc), finest,
                                        sidecar_cluster_bits (sc));

  if (bits == 0)
    return -1;
  sidecar_set_journal_granularity (sc, bits);
  return bits;
}

static int
open_journal (struct tracker *t, struct sidecar *sc, unsigned bits)
{
  const struct journal_store store = { store_write, store_sync, sc };

  t->journal = journal_new (&store, sidecar_path (sc), bits,
                            qcow2_blocks_covering (sidecar_virtual_size (sc),
                                                   bits),
                            UINT64_C(1) << sidecar_cluster_bits (sc));
  if (t->journal == NULL)
    return -1;
  nbdkit_debug ("dirtybitmap: crash-safe: marks are made durable in "
                "regions of %" PRIu64 " bytes", UINT64_C(1) << bits);
  return 0;
}

int
tracker_start_locked (struct tracker *t, uint64_t export_size)
{
  const char *path = t->cfg->sidecar_path;
  struct sidecar *sc;
  int bits = 0, resize;
  unsigned finest;
  size_t i;

  /* Our own read locks would make the writable open see a reader. */
  sidecar_close (t->validated);
  t->validated = NULL;
  if (access (path, F_OK) == -1 && errno == ENOENT &&
      sidecar_create (path, qcow2_virtual_size_for (export_size)) == -1)
    return -1;
  sc = sidecar_open (path, SIDECAR_WRITABLE | tracker_open_flags (t->cfg));
  if (sc == NULL)
    return -1;
  /* The size last, as at start-up, and before any bitmap is added. */
  if (data_identity_check (t->cfg, sc) == -1 ||
      (resize = tracker_check_size (t->cfg, sc, export_size)) == -1 ||
      (resize == 1 && tracker_adopt_size (sc, export_size) == -1) ||
      tracker_select_bitmaps (t, sc, true) == -1 ||
      list_stored_bitmaps (sc, &t->bitmaps, &t->nr_bitmaps) == -1)
    goto err;
  finest = tracker_recording_bits (t);
  if (t->cfg->crash_safe && (bits = set_journal_bits (t, sc, finest)) == -1)
    goto err;
  /* The data as the session found it, which only the filter's writes
   * may change until the clean stop records it again.
   */
  if (data_identity_record (t->cfg, sc, QCOW2_IDENTITY_SESSION, true)
      == -1 ||
      sidecar_begin_tracking (sc) == -1)
    goto err;
  if (sidecar_has_journal (sc) && open_journal (t, sc, bits) == -1)
    goto err;

  t->recorder = recorder_new (export_size, finest);
  if (t->recorder == NULL)
    goto err;
  for (i = 0; i < t->nr_bitmaps; ++i)
    if (t->bitmaps[i].recording)
      nbdkit_debug ("dirtybitmap: recording '%s' (granularity %" PRIu64 ")",
                    t->bitmaps[i].name,
                    UINT64_C(1) << t->bitmaps[i].granularity_bits);
  t->sidecar = sc;
  t->export_size = export_size;
  __atomic_store_n (&t->started, true, __ATOMIC_RELEASE);
  return 0;

 err:
  journal_free (t->journal);
  t->journal = NULL;
  tracker_free_bitmaps (t->bitmaps, t->nr_bitmaps);
  t->bitmaps = NULL;
  t->nr_bitmaps = 0;
  sidecar_close (sc);
  return -1;
}

int
tracker_start (struct tracker *t, uint64_t export_size)
{
  int r = 0;

  if (!__atomic_load_n (&t->started, __ATOMIC_ACQUIRE)) {
    pthread_mutex_lock (&t->lock);
    if (t->failed) {
      nbdkit_error ("%s: tracking could not start (see the first error)",
                    t->cfg->sidecar_path);
      r = -1;
    }
    else if (t->read_only) {
      nbdkit_error ("%s: the plugin cannot write, so nothing is tracked and "
                    "the sidecar is left alone; serve a writable disk to "
                    "manage its bitmaps, or manage them with qemu-img "
                    "bitmap", t->cfg->sidecar_path);
      r = -1;
    }
    else if (!t->started &&
             (r = tracker_start_locked (t, export_size)) == -1)
      t->failed = true;
    pthread_mutex_unlock (&t->lock);
    if (r == -1)
      return -1;
  }
  if (export_size != t->export_size) {
    nbdkit_error ("%s: this connection's export is %" PRIu64 " bytes but "
                  "tracking started for %" PRIu64 " bytes; the plugin "
                  "changed size, which the sidecar cannot follow",
                  t->cfg->sidecar_path, export_size, t->export_size);
    return -1;
  }
  return 0;
}

int
tracker_mark (struct tracker *t, uint64_t offset, uint64_t count)
{
  bool views;
  int e = tracker_write_begin (t, offset, count, &views);

  if (e == 0)
    tracker_write_end (t);
  return e;
}

unsigned
tracker_recording_bits (const struct tracker *t)
{
  return tracker_finest_bits (t->bitmaps, t->nr_bitmaps, 0,
                              t->cfg->granularity_bits);
}

int
tracker_fold_locked (struct tracker *t, unsigned new_bits)
{
  struct dirtymap *old;
  unsigned old_bits;
  size_t i;
  int r = 0;

  old = recorder_swap (t->recorder, new_bits, &old_bits);
  if (old == NULL)
    return -1;
  for (i = 0; r == 0 && i < t->nr_bitmaps; ++i)
    if (t->bitmaps[i].recording)
      r = dirtymap_merge_rescaled (t->bitmaps[i].data,
                                   t->bitmaps[i].granularity_bits,
                                   old, old_bits);
  dirtymap_free (old);
  return r;
}

int
tracker_fold_epoch_locked (struct tracker *t, unsigned new_bits)
{
  if (t->journal && journal_begin_epoch (t->journal) == -1)
    return -1;
  if (tracker_fold_locked (t, new_bits) == -1)
    return -1;
  /* The swap waited for every mark under way, so none can still read
   * the last epoch's durable bits.  A write that took the recorder's
   * new map read the journal's durable bits after that (tracker_mark),
   * so after the epoch began (its bits were published before the map,
   * both sequentially consistent): it is in the epoch's marks.  Every
   * other write is folded in.
   */
  if (t->journal)
    journal_epoch_settled (t->journal);
  return 0;
}

bool
tracker_failed (const struct tracker *t)
{
  return t->failed;
}

static bool
has_recovered_bitmaps (const struct sidecar *sc)
{
  size_t i;

  for (i = 0; i < sidecar_nr_bitmaps (sc); ++i)
    if (sidecar_bitmap_was_recovered (sidecar_bitmap_at (sc, i)))
      return true;
  return false;
}

/* Starting is what stores them: it opens the sidecar for writing,
 * rebuilds the bitmaps and makes them recording again, and the stop
 * then stores them as after any run.  Only when there is something to
 * store, so that a server nobody wrote to leaves an undamaged sidecar
 * byte for byte as it was.
 */
int
tracker_start_if_recovered (struct tracker *t)
{
  int r = 0;

  pthread_mutex_lock (&t->lock);
  if (!t->started && !t->failed && t->validated && t->probed_size &&
      has_recovered_bitmaps (t->validated)) {
    nbdkit_debug ("dirtybitmap: no client wrote; storing the bitmaps the "
                  "journal rebuilt after the crash");
    r = tracker_start_locked (t, t->probed_size);
    if (r == -1)
      t->failed = true;
  }
  pthread_mutex_unlock (&t->lock);
  return r;
}

bool
tracker_records_identity (const struct tracker *t)
{
  return data_identity_configured (t->cfg);
}

void
tracker_record_identity (struct tracker *t, bool data_flushed)
{
  if (!t->started || !data_identity_configured (t->cfg))
    return;
  /* The data flushed (as the connections that wrote closed), then the
   * identity, then (tracker_stop) the sidecar: the identity recorded is
   * the one the next start finds.
   */
  if (!data_flushed) {
    nbdkit_error ("warning: %s: the data could not be flushed at the stop: "
                  "its identity is not recorded, and the next start checks "
                  "it as after a crash", t->cfg->sidecar_path);
    return;
  }
  pthread_mutex_lock (&t->lock);
  if (data_identity_record (t->cfg, t->sidecar, 0, false) == -1)
    t->failed = true;
  pthread_mutex_unlock (&t->lock);
}

int
tracker_stop (struct tracker *t)
{
  struct sidecar *sc = t->sidecar;
  int r;

  if (!t->started)
    return 0;
  if (t->journal) {
    struct journal_stats st;

    journal_get_stats (t->journal, &st);
    nbdkit_debug ("dirtybitmap: journal: %" PRIu64 " commits (fdatasync), %"
                  PRIu64 " pages written, %" PRIu64 " requests waited",
                  st.commits, st.pages_written, st.waits);
  }
  pthread_mutex_lock (&t->lock);
  r = tracker_fold_locked (t, tracker_recording_bits (t));
  pthread_mutex_unlock (&t->lock);
  if (r == -1)
    return -1;
  r = sidecar_store (sc);
  if (r == 0)
    nbdkit_debug ("dirtybitmap: stored the bitmaps in %s", sidecar_path (sc));
  else {
    t->failed = true;
    if (sidecar_has_journal (sc))
      nbdkit_error ("%s: the bitmaps could not be stored, so they stay "
                    "marked in use; the journal still protects them: start "
                    "nbdkit with this sidecar again, once the disk is "
                    "healthy, to rebuild and store them", sidecar_path (sc));
    else
      nbdkit_error ("%s: the bitmaps could not be stored, so they stay "
                    "marked in use and no tool will trust them; the writes "
                    "made since nbdkit started are recorded nowhere else: "
                    "take a full backup, then remove the bitmaps with "
                    "'qemu-img bitmap --remove' and reclaim the space with "
                    "'qemu-img check -r leaks'", sidecar_path (sc));
  }
  journal_free (t->journal);
  t->journal = NULL;
  tracker_free_bitmaps (t->bitmaps, t->nr_bitmaps);
  t->bitmaps = NULL;
  t->nr_bitmaps = 0;
  sidecar_close (sc);
  t->sidecar = NULL;
  t->started = false;
  return r;
}
