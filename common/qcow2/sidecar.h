/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* A qcow2 sidecar holding persistent dirty bitmaps, read and written
 * the way QEMU does it, so that QEMU's tools cannot tell the
 * difference.
 *
 * Life cycle: sidecar_open validates the whole file and loads every
 * consistent bitmap; the caller says which bitmaps are recording (and
 * may add new ones); sidecar_begin_tracking flags them IN_USE on disk;
 * sidecar_store writes their data and clears IN_USE.  Everything else
 * in the file is kept as it was.
 *
 * Crash safety: with journal_bits set, sidecar_begin_tracking also
 * writes a journal (an in-use, disabled bitmap QEMU counts but never
 * reads, preallocated so that it is updated in place) and a record
 * naming the bitmaps it protects.  A protected bitmap is its stored
 * data plus the journal's marks, so sidecar_open rebuilds it after a
 * crash, and the next commit stores it.
 */
#ifndef DIRTYBITMAP_SIDECAR_H
#define DIRTYBITMAP_SIDECAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dirtymap.h"
#include "qcow2-format.h"
#include "refcount.h"

struct sidecar;
struct sidecar_bitmap;

/* Opaque: the fields are the sidecar's own (sidecar-internal.h);
 * everyone else asks and tells through the functions below.
 */

/* Clusters of the sidecars we create: 64 KiB, as QEMU's default. */
#define SIDECAR_NEW_CLUSTER_BITS 16

/* Whether sidecar_create can make a sidecar for a disk that large. */
extern int sidecar_check_creatable (const char *path, uint64_t virtual_size);

/* Create an empty qcow2 sidecar (version 3, 64 KiB clusters, 16-bit
 * refcounts) of VIRTUAL_SIZE bytes at PATH, which must not exist.  The
 * file appears complete or not at all.
 */
extern int sidecar_create (const char *path, uint64_t virtual_size);

/* Flags of sidecar_open. */
#define SIDECAR_WRITABLE    1
#define SIDECAR_LOAD_IN_USE 2   /* also load the tables of in-use bitmaps
                                   that cannot be recovered, so that
                                   sidecar_reset_bitmap can free them */

/* Open and validate PATH; NULL after nbdkit_error.  Opening for
 * writing refuses a sidecar whose dirty (lazy refcounts) bit is set.
 * Protected bitmaps left in use by a crash come back consistent, with
 * recovered and modified set.
 */
extern struct sidecar *sidecar_open (const char *path, unsigned flags);
extern void sidecar_close (struct sidecar *sc);

extern struct sidecar_bitmap *sidecar_find (struct sidecar *sc,
                                            const char *name);

/* Add a recording bitmap that is written at the next
 * sidecar_begin_tracking; NULL after nbdkit_error (bad name, duplicate,
 * granularity beyond QEMU's limits).
 */
extern struct sidecar_bitmap *sidecar_add_bitmap (struct sidecar *sc,
                                                  const char *name,
                                                  unsigned granularity_bits);

/* Make an in-use bitmap that cannot be recovered all dirty and
 * consistent, to be stored at the next commit (needs
 * SIDECAR_LOAD_IN_USE).
 */
extern int sidecar_reset_bitmap (struct sidecar *sc,
                                 struct sidecar_bitmap *bm);

/* Number of granules of a bitmap: its data's size in bits. */
extern uint64_t sidecar_bitmap_granules (const struct sidecar *sc,
                                         const struct sidecar_bitmap *bm);

/* Flag every recording bitmap IN_USE on disk, flushed, before any write
 * is let through; new bitmaps are written with it, modified ones are
 * stored first, and the journal is created if journal_bits is set.
 */
extern int sidecar_begin_tracking (struct sidecar *sc);

/* Store every recording or modified bitmap's data, clearing IN_USE and
 * dropping the journal.  New clusters are written and flushed, the
 * header is rewritten as the commit point, then the old clusters are
 * freed.  On failure the bitmaps stay IN_USE on disk (and protected).
 */
extern int sidecar_store (struct sidecar *sc);

/* While tracking: write every new or modified bitmap and the flags as
 * they stand (IN_USE on the recording ones only), drop removed bitmaps,
 * and keep the journal, its record naming the recording bitmaps' new
 * tables.
 */
extern int sidecar_commit_live (struct sidecar *sc);

/* Take BM out of the sidecar (freed, with its clusters, at the next
 * commit); BM must not be used afterwards.
 */
extern int sidecar_remove_bitmap (struct sidecar *sc,
                                  struct sidecar_bitmap *bm);

/* A new virtual size NEW_SIZE (a multiple of 512), for an export that
 * grew or shrank (sidecar-resize.c).  Check: whether every bitmap can
 * follow (none in use without data, each within QEMU's limits) and the
 * L1 table has room.  Resize: check, then give every bitmap data for
 * the new size, any granule past the old end dirty; the next commit
 * writes the new size and tables.  A failed resize leaves the sidecar
 * fit only to be closed.
 */
extern int sidecar_check_resize (const struct sidecar *sc, uint64_t new_size);
extern int sidecar_resize (struct sidecar *sc, uint64_t new_size);

/* The rest is in sidecar-bitmap.c. */

extern const char *sidecar_path (const struct sidecar *sc);
extern uint64_t sidecar_virtual_size (const struct sidecar *sc);
extern unsigned sidecar_cluster_bits (const struct sidecar *sc);

/* The bitmaps, in the directory's order: index 0 to
 * sidecar_nr_bitmaps - 1.
 */
extern size_t sidecar_nr_bitmaps (const struct sidecar *sc);
extern struct sidecar_bitmap *sidecar_bitmap_at (const struct sidecar *sc,
                                                 size_t i);

/* The data identity record (sidecar-identity.c).  Recorded: the one
 * found at open: 1 with *OUT filled, 0 if there is none, -1 if there
 * is one that cannot be trusted (*WHY says why).  Set: the record the
 * next commit writes (NULL: none).
 */
extern int sidecar_recorded_identity (struct sidecar *sc,
                                      struct qcow2_identity_ext *out,
                                      const char **why);
extern int sidecar_set_identity (struct sidecar *sc,
                                 const struct qcow2_identity_ext *id);
/* The data may have been written without the filter: every bitmap
 * found consistent or rebuilt from the journal is taken as left in
 * use, for EVIDENCE (copied; sidecar_distrust_reason returns it).
 */
extern int sidecar_distrust_bitmaps (struct sidecar *sc,
                                     const char *evidence);

/* Why the bitmaps left in use are not trusted (the evidence given to
 * sidecar_distrust_bitmaps, or why a journal record found on disk is
 * not trusted), or NULL.
 */
extern const char *sidecar_distrust_reason (const struct sidecar *sc);

extern const char *sidecar_bitmap_name (const struct sidecar_bitmap *bm);
extern unsigned sidecar_bitmap_granularity_bits
  (const struct sidecar_bitmap *bm);
/* False for a bitmap left in use that could not be recovered: it has
 * no data.
 */
extern bool sidecar_bitmap_is_consistent (const struct sidecar_bitmap *bm);
/* Rebuilt from the journal at open. */
extern bool sidecar_bitmap_was_recovered (const struct sidecar_bitmap *bm);
/* Added this session and never committed. */
extern bool sidecar_bitmap_is_new (const struct sidecar_bitmap *bm);

/* A bitmap is "recording" when it records writes.  Stored recording:
 * what the file says (qcow2's AUTO flag).  Recording: what this
 * session does, false until sidecar_bitmap_resume_recording or
 * sidecar_bitmap_set_recording says otherwise.
 */
extern bool sidecar_bitmap_stored_recording (const struct sidecar_bitmap *bm);
extern bool sidecar_bitmap_is_recording (const struct sidecar_bitmap *bm);
/* Record writes if the file says so, changing nothing on disk;
 * returns whether it records.
 */
extern bool sidecar_bitmap_resume_recording (struct sidecar_bitmap *bm);
/* Record writes or not from now on; the next commit stores it so. */
extern void sidecar_bitmap_set_recording (struct sidecar_bitmap *bm,
                                          bool recording);

/* Its data: one bit per granule, NULL if it is not consistent. */
extern struct dirtymap *sidecar_bitmap_data (const struct sidecar_bitmap *bm);
/* Replace its data with DATA (of as many bits), freeing the old; the
 * next commit stores it.
 */
extern void sidecar_bitmap_set_data (struct sidecar_bitmap *bm,
                                     struct dirtymap *data);
/* Its data changed in place: the next commit stores it. */
extern void sidecar_bitmap_mark_changed (struct sidecar_bitmap *bm);

/* Granularity of the journal that sidecar_begin_tracking creates, 0
 * for none (the default).
 */
extern void sidecar_set_journal_granularity (struct sidecar *sc,
                                             unsigned bits);
/* Whether this session's journal exists (after sidecar_begin_tracking). */
extern bool sidecar_has_journal (const struct sidecar *sc);
/* Write LEN bytes of the journal's bitmap data from byte OFFSET, in
 * place; the range must lie within one cluster.  Then sync, to make
 * what was written durable.  -1 after nbdkit_error.
 */
extern int sidecar_journal_write (struct sidecar *sc, uint64_t offset,
                                  const void *buf, size_t len);
extern int sidecar_journal_sync (struct sidecar *sc);

/* For transactions, none of which can fail.  Detach: take BM (added
 * this session, never committed) out of the list, keeping it.
 * Discard: free such a bitmap, detached or not (undoes
 * sidecar_add_bitmap).  Restore: put back at INDEX the bitmap that the
 * last sidecar_remove_bitmap or sidecar_detach_bitmap took out.
 */
extern void sidecar_detach_bitmap (struct sidecar *sc,
                                   struct sidecar_bitmap *bm);
extern void sidecar_discard_bitmap (struct sidecar *sc,
                                    struct sidecar_bitmap *bm);
extern void sidecar_restore_bitmap (struct sidecar *sc,
                                    struct sidecar_bitmap *bm, size_t index);

#endif /* DIRTYBITMAP_SIDECAR_H */
