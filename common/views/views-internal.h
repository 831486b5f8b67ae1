/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* A view and the registry, shared by views.c (a view's bits, its
 * copies, reads and trims) and views-registry.c (the list, its stages,
 * queries, the parameters).
 */
#ifndef DIRTYBITMAP_VIEWS_INTERNAL_H
#define DIRTYBITMAP_VIEWS_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "scratch.h"
#include "views.h"

/* Bits of a view's map at most (each of its two maps then takes
 * 512 MiB, QEMU's bound for a bitmap's data).
 */
#define MAX_GRANULES (UINT64_C(1) << 32)

enum op_type { OP_READ, OP_COPY };

/* A read or copy under way over granules [FIRST, LAST]. */
struct op {
  enum op_type type;
  uint64_t first, last;
  struct op *next;
};

struct view {
  char *name;
  char *bitmap;                 /* NULL: the whole disk */
  unsigned bits;                /* granule: 1 << bits bytes */
  uint64_t size;                /* of the disk */
  uint64_t nr_granules;
  uint64_t *frozen, *copied;    /* one bit per granule, atomic */
  struct scratch *scratch;
  enum views_on_error on_error;
  unsigned refs;                /* the registry's and clients' (atomic) */
  pthread_mutex_t lock;         /* guards what follows */
  pthread_cond_t changed;       /* an operation ended, or the state */
  struct op *ops;
  uint64_t frozen_bytes, copied_bytes;
  bool broken;                  /* read without the lock by writers */
  bool removed;
  char *reason;                 /* why broken */
};

struct views {
  const struct views_config *cfg;
  pthread_mutex_t lock;         /* guards list changes against lookups */
  struct view *list[VIEWS_MAX];
  size_t n;
  /* The names of the last views removed, oldest first, so that a
   * client asking for one is refused rather than served the live disk
   * under that name.
   */
  char *removed[VIEWS_MAX];
  size_t nr_removed;
  struct scratch_budget budget;
};

struct views_stage {
  struct views *vs;
  struct view *list[VIEWS_MAX]; /* the list as the actions leave it */
  size_t n;
  bool committed;
};

/* A new view (one reference), or NULL with *ERROR set. */
extern struct view *view_new (struct views *vs, const char *name,
                              const char *bitmap,
                              const struct dirtymap *dirty, unsigned bits,
                              uint64_t size, char **error);
extern void view_unref (struct view *v);

/* Mark V removed: its clients' requests fail from now on; its
 * scratch file goes once the reads under way have finished.
 */
extern void view_remove (struct view *v);

/* *ERROR set from FMT, for the client; returns -1. */
extern int views_fail (char **error, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

#endif /* DIRTYBITMAP_VIEWS_INTERNAL_H */
