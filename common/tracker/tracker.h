/* Changed-block tracking for one export: which bitmaps record writes,
 * the map every write goes to, and the sidecar they end up in.
 *
 * Every write marks one shared recording map, whatever the number of
 * bitmaps; the map is folded into each tracked bitmap when the bitmaps
 * are stored.  The recording map has the finest granularity of the
 * tracked bitmaps, so folding it loses nothing.
 */
#ifndef DIRTYBITMAP_TRACKER_H
#define DIRTYBITMAP_TRACKER_H

#include <stdbool.h>
#include <stdint.h>

#define TRACKER_DEFAULT_GRANULARITY_BITS 16

/* The durable marks of crash safety: 1 MiB regions by default, made
 * coarser on disks so large that the journal would pass 1 MiB; never
 * finer than the finest tracked bitmap needs.  An explicit
 * granularity may make a journal of up to 64 MiB.
 */
#define TRACKER_DEFAULT_CRASH_GRANULARITY_BITS 20
#define TRACKER_DEFAULT_JOURNAL_MAX_BYTES (UINT64_C(1) << 20)
#define TRACKER_JOURNAL_MAX_BYTES (UINT64_C(64) << 20)

/* What to do with a bitmap left in use that cannot be recovered. */
enum tracker_in_use_policy {
  IN_USE_KEEP,                  /* leave it in use, as QEMU does */
  IN_USE_REFUSE,                /* refuse to start */
  IN_USE_RESET,                 /* make it all dirty and track it */
};

struct tracker_config {
  char *sidecar_path;
  char **names;                 /* dirtybitmap=NAME, in order */
  size_t nr_names;
  unsigned granularity_bits;    /* for bitmaps the filter creates */
  bool crash_safe;
  unsigned crash_granularity_bits;  /* 0: the default */
  enum tracker_in_use_policy in_use_policy;
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

/* Claim EXPORTNAME as the tracked export: the first name claimed wins
 * and any other is refused, so two exports never share a bitmap.
 */
extern int tracker_claim_export (struct tracker *t, const char *exportname);

/* Begin tracking, once, before the first write is let through: create
 * the sidecar if needed, load it, add missing bitmaps and flag the
 * tracked ones IN_USE on disk.  Later calls only check EXPORT_SIZE.
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

/* Fold what was recorded into the tracked bitmaps and store them,
 * clearing IN_USE.  Called once, after the last request.
 */
extern int tracker_stop (struct tracker *t);

/* Whether starting or storing failed: the bitmaps could not be kept
 * as the user asked, which nbdkit's exit status must say.
 */
extern bool tracker_failed (const struct tracker *t);

#endif /* DIRTYBITMAP_TRACKER_H */
