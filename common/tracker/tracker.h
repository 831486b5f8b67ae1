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

/* What to do with a bitmap left in use that cannot be recovered. */
enum tracker_in_use_policy {
  IN_USE_KEEP,                  /* leave it in use, as QEMU does */
  IN_USE_REFUSE,                /* refuse to start */
  IN_USE_RESET,                 /* make it all dirty, recording as
                                   before */
};

struct tracker_config {
  char *sidecar_path;
  char **names;                 /* dirtybitmap=NAME, in order */
  size_t nr_names;
  unsigned granularity_bits;    /* for bitmaps the filter creates */
  bool crash_safe;
  unsigned crash_granularity_bits;  /* 0: the default */
  enum tracker_in_use_policy in_use_policy;
  bool allow_no_bitmaps;        /* bitmaps may come later (control socket) */
  char *data_path;              /* the data file or device, absolute */
  bool data_path_given;         /* by dirtybitmap-data=, not file= */
  unsigned nr_plugin_files;     /* file= seen passing to the plugin */
  char *data_token;             /* dirtybitmap-data-id= */
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
 */
extern int tracker_validate (struct tracker *t, uint64_t export_size);

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

/* At the clean stop of a server that may write, before
 * tracker_record_identity: if tracking never started (no client
 * wrote) but the sidecar holds bitmaps that the journal rebuilt after
 * a crash, start tracking now, so that tracker_stop stores them
 * consistent.  Otherwise nothing on disk changes.
 */
extern int tracker_start_if_recovered (struct tracker *t);

/* At the clean stop, after the last request: if tracking started and
 * something identifies the data, flush the data with FLUSH (given the
 * tracked export's name), then take the data's identity for
 * tracker_stop to record.  If the flush fails, a warning says so and
 * the record of the session's start stays.
 */
typedef int tracker_flush_fn (void *opaque, const char *exportname);
extern void tracker_record_identity (struct tracker *t,
                                     tracker_flush_fn *flush, void *opaque);

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
};

struct tracker_action {
  enum tracker_action_type type;
  const char *name;             /* the bitmap; a merge's target */
  int64_t granularity;          /* add: bytes, 0 for the default */
  bool persistent;              /* add: kept in the sidecar */
  bool disabled;                /* add: created not recording (QMP's
                                   "disabled") */
  const char *const *sources;   /* merge: the bitmaps merged in */
  size_t nr_sources;
};

/* Apply ACTIONS at one instant with respect to writes: every write is
 * recorded as if it came entirely before or entirely after all of
 * them.  Either all take effect, or none does and nothing changes,
 * whatever stops one (an invalid action, QEMU's limits, memory).
 * Changes to persistent bitmaps are then committed to the sidecar; if
 * that fails they stay made in memory, and the next store retries.
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
 * recording become consistent on disk.
 */
extern int tracker_store_now (struct tracker *t, char **error);

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
