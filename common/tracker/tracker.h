/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Changed-block tracking for one export: which bitmaps record writes,
 * the map every write goes to, and the sidecar they end up in.
 *
 * Every write marks one shared recording map, whatever the number of
 * bitmaps; the map is folded into each recording bitmap when the bitmaps
 * are stored.  The recording map has the finest granularity of the
 * recording bitmaps, so folding it loses nothing.
 */
#ifndef DIRTYBITMAP_TRACKER_H
#define DIRTYBITMAP_TRACKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TRACKER_DEFAULT_GRANULARITY_BITS 16

/* The durable marks of crash safety: 1 MiB regions by default, made
 * coarser on disks so large that the journal would pass 1 MiB; never
 * finer than the finest recording bitmap needs.  An explicit
 * granularity may make a journal of up to 64 MiB.
 */
#define TRACKER_DEFAULT_CRASH_GRANULARITY_BITS 20
#define TRACKER_DEFAULT_JOURNAL_MAX_BYTES (UINT64_C(1) << 20)
#define TRACKER_JOURNAL_MAX_BYTES (UINT64_C(64) << 20)

/* Seconds between periodic stores with crash safety: after a crash,
 * the bitmaps are exact but for the writes of the last five minutes,
 * which come back by journal region; a store every five minutes costs
 * little next to that (see the man page, AFTER A CRASH).
 */
#define TRACKER_DEFAULT_STORE_INTERVAL 300

/* What to do with a bitmap left in use that cannot be recovered. */
enum tracker_in_use_policy {
  IN_USE_KEEP,                  /* leave it in use, as QEMU does */
  IN_USE_REFUSE,                /* refuse to start */
  IN_USE_RESET,                 /* make it all dirty, recording as
                                   before */
};

/* What to do when the export's size is not the sidecar's. */
enum tracker_resize_policy {
  RESIZE_REFUSE,                /* refuse to start */
  RESIZE_ADOPT,                 /* resize the sidecar, marking any added
                                   area dirty in every bitmap */
};

struct tracker_config {
  char *sidecar_path;
  char **names;                 /* dirtybitmap=NAME, in order */
  size_t nr_names;
  unsigned granularity_bits;    /* for bitmaps the filter creates */
  bool crash_safe;
  unsigned crash_granularity_bits;  /* 0: the default */
  enum tracker_in_use_policy in_use_policy;
  enum tracker_resize_policy resize_policy;
  bool allow_no_bitmaps;        /* bitmaps may come later (control socket) */
  char *data_path;              /* the data file or device, absolute */
  bool data_path_given;         /* by dirtybitmap-data=, not file= */
  unsigned nr_plugin_files;     /* file= seen passing to the plugin */
  char *data_token;             /* dirtybitmap-data-id= */
  unsigned store_interval;      /* seconds between periodic stores, 0:
                                   none */
  bool store_interval_given;    /* dirtybitmap-store-interval= */
  bool plugin_file_is_disk;     /* the plugin's only file= is a local file
                                   or device: it serves that one disk
                                   whatever the export name */
  char *export_name;            /* dirtybitmap-export=, or NULL */
};

extern void tracker_config_init (struct tracker_config *cfg);
extern void tracker_config_free (struct tracker_config *cfg);
extern int tracker_config_set_sidecar (struct tracker_config *cfg,
                                       const char *path);
extern int tracker_config_add_name (struct tracker_config *cfg,
                                    const char *name);
/* GRANULARITY in bytes, as parsed from the command line. */
extern int tracker_config_set_granularity (struct tracker_config *cfg,
                                           int64_t granularity);
extern int tracker_config_set_crash_granularity (struct tracker_config *cfg,
                                                 int64_t granularity);
/* keep, refuse or reset. */
extern int tracker_config_set_in_use_policy (struct tracker_config *cfg,
                                             const char *policy);
/* adopt or refuse. */
extern int tracker_config_set_resize_policy (struct tracker_config *cfg,
                                             const char *policy);
/* What identifies the data: dirtybitmap-data=PATH (absolute), the
 * plugin's file=PATH (absolute; used only if it is the only one and
 * names a regular file or block device), or
 * dirtybitmap-data-id=TOKEN.
 */
extern int tracker_config_set_data (struct tracker_config *cfg,
                                    const char *path);
extern int tracker_config_note_plugin_file (struct tracker_config *cfg,
                                            const char *path);
extern int tracker_config_set_data_id (struct tracker_config *cfg,
                                       const char *token);
/* dirtybitmap-store-interval=SECONDS, as nbdkit parsed it. */
extern int tracker_config_set_store_interval (struct tracker_config *cfg,
                                              unsigned seconds);
/* dirtybitmap-export=NAME: the export whose writes are tracked. */
extern int tracker_config_set_export (struct tracker_config *cfg,
                                      const char *name);
/* Whether nbdkit's command line, ARGS (LEN bytes of NUL-terminated
 * arguments, as /proc/self/cmdline holds them), makes the server
 * read-only (-r, --readonly, --read-only, or an abbreviation).
 */
extern bool tracker_config_args_read_only (const char *args, size_t len);
/* All required parameters are there. */
extern int tracker_config_check (const struct tracker_config *cfg);

struct tracker;

extern struct tracker *tracker_new (const struct tracker_config *cfg);
extern void tracker_free (struct tracker *t);

/* Check the configuration against the sidecar (if it exists) and an
 * export of EXPORT_SIZE bytes, without changing anything on disk, so
 * that nbdkit refuses to start rather than fail its first client.
 * It is the two halves below, one after the other.
 */
extern int tracker_validate (struct tracker *t, uint64_t export_size);

/* What the parameters and the sidecar tell without the plugin: the
 * sidecar's structure, flags, locks and bitmaps, or, if it is missing,
 * that a bitmap is named for it.  An existing sidecar stays open
 * read-only, holding QEMU's read locks, until tracking starts.
 */
extern int tracker_validate_sidecar (struct tracker *t);

/* What needs the plugin: the export's size, EXPORT_SIZE bytes, against
 * the sidecar that tracker_validate_sidecar found (or the one that
 * would be created).  May be called again, to repeat its error.
 */
extern int tracker_validate_size (struct tracker *t, uint64_t export_size);

/* Close the sidecar tracker_validate_sidecar holds, releasing its
 * locks, when nothing is about to be written through the filter
 * (tracker_start checks the sidecar again).
 */
extern void tracker_release_sidecar (struct tracker *t);

/* The plugin cannot write: tracking never starts (nothing could be
 * recorded), so the sidecar is never created nor opened for writing,
 * and is released.
 */
extern void tracker_set_read_only (struct tracker *t);

/* The tracked export is dirtybitmap-export=NAME, or else the first
 * export written to.  Another name is the same disk if the plugin
 * serves one disk whatever the name (its only file= is a local file
 * or device); otherwise its writes are refused, so two disks never
 * share a bitmap.
 *
 * tracker_check_export, for a connection to EXPORTNAME (EXPORT_SIZE
 * bytes) that may write: -1 (with nbdkit_error) if it is known not to
 * be the tracked export; 1 if it is, or may well be (no export is
 * claimed yet, and its size is the one checked at start-up), so that
 * tracking starts now; 0 to let its first write decide.
 * tracker_claim_export, at a connection's first write: -1 (with
 * nbdkit_error) if EXPORTNAME is not the tracked export; it becomes
 * the tracked one if none is yet.
 */
extern int tracker_check_export (struct tracker *t, const char *exportname,
                                 uint64_t export_size);
extern int tracker_claim_export (struct tracker *t, const char *exportname);

/* Begin tracking, once, before the first write is let through: create
 * the sidecar if needed, load it, add missing bitmaps and flag the
 * recording ones IN_USE on disk.  Later calls only check EXPORT_SIZE.
 * Thread-safe.  Once it has failed it keeps failing.
 */
extern int tracker_start (struct tracker *t, uint64_t export_size);

/* Mark the granules that [OFFSET, OFFSET + COUNT) touches, and with
 * crash safety wait until the region is durable as dirty.  Lock-free
 * once it is.  Returns 0, or an errno value (with nbdkit_error) for
 * the request, which must then not reach the plugin: ENOMEM if memory
 * ran out, EIO if the mark could not be made durable.
 */
extern int tracker_mark (struct tracker *t, uint64_t offset, uint64_t count);

/* The write path with views (common/views/views.h): tracker_mark,
 * and the write announced until tracker_write_end, which must follow
 * in the same thread once the plugin has replied, unless this fails.
 * *COPY says whether views exist (views_copy_before_write is then
 * due).  Returns 0 or an errno value, as tracker_mark.  While a
 * transaction with view actions makes its instant, writes wait here.
 */
extern int tracker_write_begin (struct tracker *t, uint64_t offset,
                                uint64_t count, bool *copy);
extern void tracker_write_end (struct tracker *t);

/* The views that transactions add and remove (owned by the caller;
 * without them, view actions are refused).
 */
struct views;
extern void tracker_attach_views (struct tracker *t, struct views *vs);
extern struct views *tracker_views (struct tracker *t);
/* At the clean stop of a server that may write, before
 * tracker_record_identity: if tracking never started (no client
 * wrote) but the sidecar holds bitmaps that the journal rebuilt after
 * a crash, start tracking now, so that tracker_stop stores them
 * consistent.  Otherwise nothing on disk changes.
 */
extern int tracker_start_if_recovered (struct tracker *t);

/* Whether something identifies the data, so that the stop records
 * its identity: the data must then be flushed first (each connection
 * that wrote flushes as it closes).
 */
extern bool tracker_records_identity (const struct tracker *t);

/* At the clean stop, after the last request: if tracking started and
 * something identifies the data, take the data's identity for
 * tracker_stop to record, provided DATA_FLUSHED (every flush of the
 * data written succeeded).  If not, a warning says so and the record
 * of the session's start stays.
 */
extern void tracker_record_identity (struct tracker *t, bool data_flushed);

/* Fold what was recorded into the recording bitmaps and store them,
 * clearing IN_USE.  Called once, after the last request.
 */
extern int tracker_stop (struct tracker *t);

/* Whether starting or storing failed: the bitmaps could not be kept
 * as the user asked, which nbdkit's exit status must say.
 */
extern bool tracker_failed (const struct tracker *t);

/* Bitmaps managed while the export serves (the control socket).  Each
 * call returns 0, or -1 with *ERROR set to a message for the client
 * (malloc'd, not logged).  Calls before any writer connected start
 * tracking first, with the export size seen at start-up.
 */
enum tracker_action_type {
  TRACKER_ADD, TRACKER_REMOVE, TRACKER_CLEAR,
  TRACKER_ENABLE,               /* start recording (QMP's name) */
  TRACKER_DISABLE,              /* stop recording (QMP's name) */
  TRACKER_MERGE,
  TRACKER_VIEW_ADD,             /* x-dirtybitmap-view-add */
  TRACKER_VIEW_REMOVE,          /* x-dirtybitmap-view-remove */
};

struct tracker_action {
  enum tracker_action_type type;
  const char *name;             /* the bitmap; a merge's target; the
                                   view */
  int64_t granularity;          /* add: bytes, 0 for the default */
  bool persistent;              /* add: kept in the sidecar */
  bool disabled;                /* add: created not recording (QMP's
                                   "disabled") */
  const char *const *sources;   /* merge: the bitmaps merged in */
  size_t nr_sources;
  const char *bitmap;           /* view add: freeze only the granules
                                   dirty in it (NULL: the whole disk) */
};

/* Apply ACTIONS at one instant with respect to writes: every write is
 * recorded as if it came entirely before or entirely after all of
 * them.  Either all take effect, or none does and nothing changes,
 * whatever stops one (an invalid action, QEMU's limits, memory).
 * With view actions, the instant also waits until no write is on its
 * way to the plugin, and holds new writes until the views are in
 * place: a view shows every write the bitmaps record before the
 * instant, and none after.
 * Changes to persistent bitmaps are then committed to the sidecar
 * (with crash safety, with every recording bitmap, and the journal
 * truncated); if that fails they stay made in memory, and the next
 * store retries.
 */
extern int tracker_transaction (struct tracker *t,
                                const struct tracker_action *actions,
                                size_t nr_actions, char **error);

struct tracker_bitmap_info {
  char *name;
  uint64_t granularity;
  bool recording, persistent, inconsistent;
  uint64_t dirty_bytes;
};
extern int tracker_query (struct tracker *t, struct tracker_bitmap_info **infos,
                          size_t *nr_infos, char **error);
extern void tracker_free_infos (struct tracker_bitmap_info *infos, size_t n);

/* Make every persistent bitmap durable in the sidecar now; those not
 * recording become consistent on disk.  With crash safety the journal
 * is then truncated to the writes made since.
 */
extern int tracker_store_now (struct tracker *t, char **error);

/* The periodic store (dirtybitmap-store-interval): if tracking has
 * started and something was written since the last store, store every
 * persistent bitmap, as tracker_store_now, and truncate the journal;
 * errors are logged.  tracker_store_timer_start runs it every
 * interval in a thread of its own, with crash safety only (*TIMER
 * stays NULL otherwise); -1 after nbdkit_error.
 * tracker_store_timer_stop stops it, waiting for a store under way.
 */
extern void tracker_store_if_written (struct tracker *t);
struct tracker_store_timer;
extern int tracker_store_timer_start (struct tracker *t,
                                      struct tracker_store_timer **timer);
extern void tracker_store_timer_stop (struct tracker_store_timer *timer);

struct tracker_extent {
  uint64_t offset, length;
};
/* The dirty ranges of bitmap NAME within [OFFSET, OFFSET + LENGTH), at
 * most MAX of them into EXTENTS; *NEXT is where to continue, or
 * UINT64_MAX when the window is done.
 */
extern int tracker_extents (struct tracker *t, const char *name,
                            uint64_t offset, uint64_t length,
                            struct tracker_extent *extents, size_t max,
                            size_t *nr_extents, uint64_t *next,
                            char **error);

/* The export the bitmaps describe, for the control socket's "node",
 * and the name to open the plugin with: dirtybitmap-export=, else the
 * first export written to, else "".
 */
extern const char *tracker_export_name (struct tracker *t);

#endif /* DIRTYBITMAP_TRACKER_H */
