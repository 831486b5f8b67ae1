/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The claims, made while a sidecar is loaded: which structure each
 * cluster belongs to, checked before the cluster is read; and the
 * clusters nothing claims, given back as leaks where every reference
 * in the file is known.
 */

#include <config.h>

#include <inttypes.h>
#include <stdlib.h>

#include <nbdkit-filter.h>

#include "checked-io.h"
#include "dirtymap.h"
#include "sidecar-internal.h"

/* Every cluster the filter may free or that guards its allocations
 * must belong to exactly one structure and be counted as used:
 * otherwise a store could free, or hand out, a cluster that still
 * holds something else.  One bit per cluster of the file.
 */
struct sidecar_claims {
  struct sidecar *sc;
  struct dirtymap *claimed;
};

/* Nothing claimed yet; NULL after nbdkit_error. */
struct sidecar_claims *
sidecar_claims_new (struct sidecar *sc)
{
  struct sidecar_claims *cc = calloc (1, sizeof *cc);

  if (cc == NULL) {
    nbdkit_error ("%s: calloc: %m", sc->path);
    return NULL;
  }
  cc->sc = sc;
  cc->claimed = dirtymap_new ((sc->file_size + sc->cluster_size - 1)
                              / sc->cluster_size);
  if (cc->claimed == NULL) {
    free (cc);
    return NULL;
  }
  return cc;
}

void
sidecar_claims_free (struct sidecar_claims *cc)
{
  if (cc == NULL)
    return;
  dirtymap_free (cc->claimed);
  free (cc);
}

static int
claim (struct sidecar_claims *cc, uint64_t offset, uint64_t bytes,
       const char *what, const char *name)
{
  struct sidecar *sc = cc->sc;
  uint64_t first = offset / sc->cluster_size;
  uint64_t n = (bytes + sc->cluster_size - 1) / sc->cluster_size, i;

  for (i = 0; i < n; ++i) {
    if (dirtymap_test (cc->claimed, first + i)) {
      nbdkit_error ("%s: %s%s%s%s at offset 0x%" PRIx64 " overlaps another "
                    "structure in cluster 0x%" PRIx64 "; the sidecar is "
                    "corrupt: check it with 'qemu-img check %s'", sc->path,
                    what, name ? " of bitmap '" : "", name ? name : "",
                    name ? "'" : "", offset,
                    (first + i) * sc->cluster_size, sc->path);
      return -1;
    }
    if (refcounts_get (&sc->refcounts, first + i) == 0) {
      nbdkit_error ("%s: %s%s%s%s at offset 0x%" PRIx64 " lies in a cluster "
                    "whose refcount is 0; repair the sidecar with "
                    "'qemu-img check -r all %s'", sc->path, what,
                    name ? " of bitmap '" : "", name ? name : "",
                    name ? "'" : "", offset, sc->path);
      return -1;
    }
    if (dirtymap_set_range (cc->claimed, first + i, 1) == -1)
      return -1;
  }
  return 0;
}

/* Claim the metadata and every bitmap table's extent: before any table
 * is read, so that many entries sharing one table cost nothing.
 */
int
sidecar_claim_metadata (struct sidecar_claims *cc)
{
  struct sidecar *sc = cc->sc;
  const struct qcow2_header *h = &sc->header;
  uint64_t i;

  if (claim (cc, 0, sc->cluster_size, "the header", NULL) == -1 ||
      claim (cc, h->refcount_table_offset,
             (uint64_t) h->refcount_table_clusters * sc->cluster_size,
             "the refcount table", NULL) == -1 ||
      (h->l1_size > 0 &&
       claim (cc, h->l1_table_offset, (uint64_t) h->l1_size * 8,
              "the L1 table", NULL) == -1) ||
      (sc->dir_size > 0 &&
       claim (cc, sc->dir_offset, sc->dir_size, "the bitmap directory",
              NULL) == -1))
    return -1;
  for (i = 0; i < sc->refcounts.table_entries; ++i)
    if (sc->refcounts.table[i] != 0 &&
        claim (cc, sc->refcounts.table[i], sc->cluster_size,
               "a refcount block", NULL) == -1)
      return -1;
  for (i = 0; i < sc->nr_bitmaps; ++i)
    if (claim (cc, sc->bitmaps[i]->entry.table_offset,
               (uint64_t) sc->bitmaps[i]->entry.table_size * 8,
               "the bitmap table", sc->bitmaps[i]->entry.name) == -1)
      return -1;
  return 0;
}

/* Claim the data clusters of the loaded tables: before any is read. */
int
sidecar_claim_data (struct sidecar_claims *cc)
{
  struct sidecar *sc = cc->sc;
  uint64_t i, j;

  for (i = 0; i < sc->nr_bitmaps; ++i) {
    const struct sidecar_bitmap *bm = sc->bitmaps[i];

    for (j = 0; bm->table && j < bm->entry.table_size; ++j)
      if (bm->table[j] != 0 &&
          claim (cc, bm->table[j], sc->cluster_size, "a data cluster",
                 bm->entry.name) == -1)
        return -1;
  }
  return 0;
}

/* Whether every reference in the file is known to the claims: no
 * snapshot and no guest data (an all-zero L1 table), as in every
 * sidecar the filter or "qemu-img create" makes.
 */
static bool
references_all_known (struct sidecar *sc)
{
  uint64_t bytes = (uint64_t) sc->header.l1_size * 8, i;
  uint8_t *l1;
  bool known = true;

  if (sc->header.nb_snapshots > 0)
    return false;
  if (bytes == 0)
    return true;
  l1 = malloc (bytes);          /* bounded by the header decoder */
  if (l1 == NULL ||
      read_fully (sc->fd, sc->path, "L1 table", l1, bytes,
                  sc->header.l1_table_offset) == -1) {
    free (l1);
    return false;
  }
  for (i = 0; i < bytes && known; ++i)
    known = l1[i] == 0;
  free (l1);
  return known;
}

/* A crash between a commit's allocations and its header, or between
 * its header and freeing the old clusters, leaves clusters counted
 * that nothing references (as QEMU's own stores do).  Where every
 * reference is known, give them back, in memory: the next commit
 * writes the refcounts.
 */
int
sidecar_reclaim_leaks (struct sidecar_claims *cc)
{
  struct sidecar *sc = cc->sc;
  const struct refcounts *rc = &sc->refcounts;
  uint64_t i, c, reclaimed = 0;

  if (!references_all_known (sc))
    return 0;
  /* Only clusters that a refcount block exists for can be counted;
   * the blocks are bounded by the file's size.
   */
  for (i = 0; i < rc->table_entries; ++i) {
    if (rc->table[i] == 0)
      continue;
    for (c = i * rc->entries_per_block;
         c < (i + 1) * rc->entries_per_block; ++c) {
      if (c < dirtymap_nr_bits (cc->claimed) &&
          dirtymap_test (cc->claimed, c))
        continue;
      if (refcounts_get (rc, c) > 0) {
        refcounts_clear (&sc->refcounts, c);
        reclaimed++;
      }
    }
  }
  if (reclaimed)
    nbdkit_debug ("%s: reclaimed %" PRIu64 " leaked clusters",
                  sc->path, reclaimed);
  return 0;
}
