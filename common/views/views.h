/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Point-in-time views: read-only images of the disk as it was at one
 * instant, kept by copy-before-write while the export goes on taking
 * writes, and served as exports of their own.  See views.c for the
 * design.
 *
 * The registry (struct views) holds at most VIEWS_MAX views, in the
 * order they were added.  It changes only through a stage (struct
 * views_stage), which the tracker's transactions drive so that views
 * come and go at the same instant as the bitmap actions; the caller
 * guarantees that no write is between views_copy_before_write and the
 * plugin while a stage commits (the tracker's gate, recorder.h).
 *
 * A view lives in memory and in its scratch file only: nothing of it
 * survives a restart or a crash, and it never touches the sidecar.
 */
#ifndef DIRTYBITMAP_VIEWS_H
#define DIRTYBITMAP_VIEWS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dirtymap.h"

/* Views one server holds at most: each costs two bits per granule
 * (2^32 granules at most, 1 GiB of maps; a whole-disk view of 1 TiB
 * takes 4 MiB) and a scratch file descriptor.
 */
#define VIEWS_MAX 64

/* The granule of a view of the whole disk: 64 KiB. */
#define VIEWS_DEFAULT_GRANULARITY_BITS 16

/* A view's name: 1 to 1023 bytes of UTF-8 (QEMU's bitmap names'
 * bound), as it is also an NBD export name.
 */
#define VIEWS_NAME_MAX 1023

/* What a failed copy before a write does (dirtybitmap-view-on-error=). */
enum views_on_error {
  VIEWS_BREAK_VIEW,             /* the view breaks, the write goes on */
  VIEWS_FAIL_WRITE,             /* the write fails, the view stays ok */
};

struct views_config {
  char *scratch_dir;            /* dirtybitmap-view-scratch=, absolute */
  uint64_t scratch_limit;       /* bytes over every view, 0 for none */
  enum views_on_error on_error;
};

extern void views_config_free (struct views_config *cfg);
/* break-view or fail-write. */
extern int views_config_set_on_error (struct views_config *cfg,
                                      const char *policy);

struct views;
struct view;

/* An empty registry using CFG (kept, not copied).  NULL after
 * nbdkit_error.
 */
extern struct views *views_new (const struct views_config *cfg);
extern void views_free (struct views *vs);

/* Whether the registry holds any view. */
extern bool views_exist (struct views *vs);

/* How the views read the disk (the plugin, through some connection):
 * like nbdkit's pread, 0 or -1 with *ERR set.
 */
typedef int views_read_fn (void *opaque, void *buf, uint32_t count,
                           uint64_t offset, int *err);

/* Before a write, zero or trim of [OFFSET, OFFSET + COUNT) reaches the
 * disk: copy, for every view, the frozen granules it touches that are
 * not copied yet, reading them with READ (OPAQUE).  Waits for a copy
 * or a view read of the same granules under way.  Returns 0 (the
 * write may go on), or -1 with *ERR (ENOSPC or EIO) when a copy failed
 * under VIEWS_FAIL_WRITE.
 */
extern int views_copy_before_write (struct views *vs, views_read_fn *read,
                                    void *opaque, uint64_t offset,
                                    uint64_t count, int *err);

/* The view named NAME, held until view_close (a removed view stays
 * valid, refusing every request), or NULL if there is none.
 */
extern struct view *views_open (struct views *vs, const char *name);

/* Whether NAME is the name of a view removed since (one of the last
 * VIEWS_MAX removed, and not added again).
 */
extern bool views_removed (struct views *vs, const char *name);
extern void view_close (struct view *v);
extern const char *view_name (const struct view *v);

/* Read [OFFSET, OFFSET + COUNT) as it was when the view was added:
 * copied granules from scratch, the others from the disk with READ
 * (OPAQUE), while writes to them wait.  0, or -1 with *ERR: EPERM
 * for a granule not frozen, EIO for a broken or removed view or a
 * failed read (after nbdkit_error naming the view).
 */
extern int view_read (struct view *v, views_read_fn *read, void *opaque,
                      void *buf, uint32_t count, uint64_t offset,
                      int *err);

/* "I have read [OFFSET, OFFSET + COUNT)": the frozen granules wholly
 * inside it are released (their copies dropped, later reads refused,
 * later writes not copied).  0, or -1 with *ERR (EIO: removed).
 */
extern int view_trim (struct view *v, uint32_t count, uint64_t offset,
                      int *err);

/* Changing the registry: a stage starts from the registry as it is,
 * takes adds and removes in order (each one checked against the stage
 * as the earlier ones leave it), and is then committed (which cannot
 * fail) or freed unchanged.  Each call returns 0, or -1 with *ERROR
 * set to a message for the client (malloc'd, not logged).
 */
struct views_stage;

extern struct views_stage *views_stage_new (struct views *vs);
extern void views_stage_free (struct views_stage *st);

/* Add view NAME of a disk of DISK_SIZE bytes.  With BITMAP (its name,
 * for messages), only the granules set in DIRTY (granules of 1 << BITS
 * bytes) are frozen; without (NULL), all of them, in granules of
 * 1 << VIEWS_DEFAULT_GRANULARITY_BITS bytes.  Its scratch file is
 * made now.
 */
extern int views_stage_add (struct views_stage *st, const char *name,
                            const char *bitmap, const struct dirtymap *dirty,
                            unsigned bits, uint64_t disk_size, char **error);
extern int views_stage_remove (struct views_stage *st, const char *name,
                               char **error);
extern void views_stage_commit (struct views_stage *st);

struct view_info {
  char *name;
  char *bitmap;                 /* NULL for a view of the whole disk */
  uint64_t granularity;
  uint64_t frozen_bytes;        /* frozen now (trims release some) */
  uint64_t copied_bytes;        /* copied since the view was added */
  uint64_t scratch_bytes;       /* held in its scratch file now */
  bool broken;
  char *reason;                 /* why, when broken */
};

/* Every view, in the order added.  0, or -1 (out of memory). */
extern int views_query (struct views *vs, struct view_info **infos,
                        size_t *nr_infos);
extern void views_free_infos (struct view_info *infos, size_t n);

#endif /* DIRTYBITMAP_VIEWS_H */
