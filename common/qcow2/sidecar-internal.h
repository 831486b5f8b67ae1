/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* What the sidecar's files share, and nothing outside them uses (see
 * the essay at the top of sidecar.c for which file holds what).  These
 * functions are not static, but the filter's version script exports
 * none of them.
 */
#ifndef DIRTYBITMAP_SIDECAR_INTERNAL_H
#define DIRTYBITMAP_SIDECAR_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dirtymap.h"
#include "qcow2-format.h"
#include "refcount.h"
#include "sidecar.h"

#define DIV_ROUND_UP(a, b) (((a) + (b) - 1) / (b))

struct sidecar_bitmap {
  struct qcow2_bitmap_entry entry;  /* as it is, or will be, on disk */
  bool inconsistent;          /* IN_USE when opened: data not trusted */
  bool on_disk;               /* false for a bitmap added this session */
  bool recording;             /* records writes, as the caller says;
                                 mapped to QCOW2_BITMAP_FLAG_AUTO by
                                 sidecar_bitmap_set_recording alone */
  bool modified;              /* data differs from disk: written at the
                                 next commit (recovered, or reset) */
  bool recovered;             /* rebuilt from the journal at open */
  uint64_t *table;            /* data cluster offsets, if loaded */
  bool *all_ones;             /* table entries that read as all ones */
  struct dirtymap *data;      /* NULL for an inconsistent bitmap */
};

struct sidecar {
  char *path;
  int fd;
  bool writable;
  uint64_t file_size;
  uint64_t cluster_size;
  struct qcow2_header header;
  uint8_t *header_raw;        /* header_length bytes, unknown fields kept */
  struct qcow2_extension *exts;
  size_t nr_exts;
  uint8_t *backing_name;
  size_t header_area;         /* bytes of cluster 0 in use on disk */
  uint64_t dir_offset;
  uint64_t dir_size;
  struct sidecar_bitmap **bitmaps;
  size_t nr_bitmaps;
  unsigned journal_bits;      /* set by the caller before
                                 sidecar_begin_tracking: granularity of
                                 the journal, 0 for none */
  struct sidecar_bitmap *journal;     /* this session's, once begun */
  struct sidecar_bitmap *old_journal; /* found on disk: dropped at the
                                         next commit */
  const char *journal_distrust;       /* why a journal record found on
                                         disk is not trusted, or NULL */
  char *stale_evidence;       /* why the data may have been written
                                 without the filter, or NULL */
  bool header_changed;        /* the next commit has more to write than
                                 the bitmaps: the identity record, or
                                 IN_USE on distrusted bitmaps */
  struct sidecar_bitmap **removed;    /* dropped at the next commit */
  size_t nr_removed;
  struct refcounts refcounts;
  struct sidecar_allocation {   /* clusters allocated by the store */
    uint64_t offset, clusters;  /* under way, to undo if it fails */
  } *allocations;
  size_t nr_allocations, allocations_size;
};

/* sidecar.c */
extern void sidecar_bitmap_free (struct sidecar_bitmap *bm);

/* sidecar-header.c: cluster 0, the header and its extensions. */
extern int sidecar_load_header (struct sidecar *sc);
extern struct qcow2_extension *sidecar_find_extension (struct sidecar *sc,
                                                       uint32_t type);
extern int sidecar_set_extension (struct sidecar *sc, uint32_t type,
                                  const void *data, uint32_t length);
extern int sidecar_write_header (struct sidecar *sc, uint64_t old_autoclear);
extern int sidecar_write_autoclear (struct sidecar *sc, uint64_t autoclear);

/* sidecar-load.c: the directory, the tables and the data. */
extern int sidecar_load_directory (struct sidecar *sc);
extern int sidecar_load_bitmaps (struct sidecar *sc, unsigned flags);
extern int sidecar_load_bitmap_table (struct sidecar *sc,
                                      struct sidecar_bitmap *bm, bool exact);

/* sidecar-claims.c: which structure each cluster belongs to. */
struct sidecar_claims;
extern struct sidecar_claims *sidecar_claims_new (struct sidecar *sc);
extern void sidecar_claims_free (struct sidecar_claims *cc);
extern int sidecar_claim_metadata (struct sidecar_claims *cc);
extern int sidecar_claim_data (struct sidecar_claims *cc);
extern int sidecar_reclaim_leaks (struct sidecar_claims *cc);

/* sidecar-journal.c: the on-disk journal and its record. */
extern int sidecar_find_journal (struct sidecar *sc);
extern bool sidecar_journal_trusted (struct sidecar *sc);
extern int sidecar_recover_bitmaps (struct sidecar *sc);
extern void sidecar_set_aside_old_journal (struct sidecar *sc);
extern int
sidecar_set_journal_record (struct sidecar *sc,
                            const struct sidecar_bitmap *journal,
                            const struct qcow2_bitmap_entry *entries);
extern struct sidecar_bitmap *
sidecar_write_journal (struct sidecar *sc,
                       const struct qcow2_bitmap_entry *entries);

/* sidecar-commit.c: the copy-on-write commit. */
enum commit_mode { COMMIT_BEGIN, COMMIT_LIVE, COMMIT_STORE };
extern int sidecar_commit (struct sidecar *sc, enum commit_mode mode);

enum bitmap_data {
  DATA_NONE,                    /* a new, empty bitmap */
  DATA_STORED,                  /* BM's data, all-zero clusters omitted */
  DATA_PREALLOCATED,            /* every cluster allocated, zeroed, so
                                   that it can be updated in place */
};
extern int sidecar_write_bitmap (struct sidecar *sc,
                                 struct sidecar_bitmap *bm,
                                 enum bitmap_data data,
                                 struct qcow2_bitmap_entry *e,
                                 uint64_t **table_ret);
extern struct qcow2_bitmap_entry *sidecar_current_entries (struct sidecar *sc);
extern uint8_t *
sidecar_encode_directory (struct sidecar *sc,
                          const struct qcow2_bitmap_entry *entries,
                          size_t n, uint64_t padded);

/* sidecar-in-use.c: IN_USE flagged in place, as QEMU does. */
extern int sidecar_mark_in_use_in_place (struct sidecar *sc);

#endif /* DIRTYBITMAP_SIDECAR_INTERNAL_H */
