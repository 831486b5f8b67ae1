/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* A transaction takes effect whole or changes nothing, at QEMU's limit
 * of 65,535 bitmaps in one image too: with one place left, adding two
 * persistent bitmaps among other actions fails and leaves the bitmaps
 * and the sidecar as they were; adding one succeeds.
 */
#include <config.h>

#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The fixture alone reaches into the sidecar: filling it through
 * sidecar_add_bitmap, whose duplicate check is linear, would take
 * minutes.
 */
#include "sidecar-internal.h"
#include "tracker.h"
#include "unit-test.h"

#define DISK_SIZE (UINT64_C(1) << 20)
#define FULL (QCOW2_BITMAP_MAX_COUNT - 1)   /* one place left */

static char dir[] = "/tmp/test-transaction-XXXXXX";
static char path[64];

/* A bitmap as qemu-img bitmap --add makes it, straight into the list. */
static void
push_bitmap (struct sidecar *sc, const char *name, bool recording)
{
  struct sidecar_bitmap *bm = calloc (1, sizeof *bm);

  CHECK (bm != NULL);
  bm->entry.type = QCOW2_BITMAP_TYPE_DIRTY;
  bm->entry.granularity_bits = 16;
  bm->entry.flags = recording ? QCOW2_BITMAP_FLAG_AUTO : 0;
  bm->entry.name_size = strlen (name);
  strcpy (bm->entry.name, name);
  bm->entry.table_size = qcow2_bitmap_table_size (DISK_SIZE, 16,
                                                  sc->header.cluster_bits);
  bm->data = dirtymap_new (sidecar_bitmap_granules (sc, bm));
  CHECK (bm->data != NULL);
  sc->bitmaps[sc->nr_bitmaps++] = bm;
}

/* A sidecar holding FULL bitmaps: "a" and "b" recording, the rest
 * not.  1 KiB clusters, so that 65,534 bitmap tables take 64 MiB, and
 * 1-bit refcounts, so that the refcount table qemu-img makes covers
 * them and a 2 MiB directory.
 */
static void
make_full_sidecar (void)
{
  char cmd[256], name[16];
  struct sidecar *sc;
  size_t i;

  snprintf (cmd, sizeof cmd, "qemu-img create -q -f qcow2 -o "
            "cluster_size=1024,refcount_bits=1 '%s' %" PRIu64, path, DISK_SIZE);
  CHECK (system (cmd) == 0);
  sc = sidecar_open (path, SIDECAR_WRITABLE);
  CHECK (sc != NULL);
  sc->bitmaps = calloc (FULL, sizeof sc->bitmaps[0]);
  CHECK (sc->bitmaps != NULL);
  push_bitmap (sc, "a", true);
  push_bitmap (sc, "b", true);
  for (i = 2; i < FULL; ++i) {
    snprintf (name, sizeof name, "%zu", i);
    push_bitmap (sc, name, false);
  }
  CHECK (sidecar_commit_live (sc) == 0);
  sidecar_close (sc);
}

static void
query (struct tracker *t, struct tracker_bitmap_info **infos, size_t *n)
{
  char *error = NULL;

  CHECK (tracker_query (t, infos, n, &error) == 0);
  CHECK (error == NULL);
}

static void
check_same_infos (const struct tracker_bitmap_info *x, size_t nx,
                  const struct tracker_bitmap_info *y, size_t ny)
{
  size_t i;

  CHECK_EQ_U64 (nx, ny);
  for (i = 0; i < nx; ++i) {
    CHECK (strcmp (x[i].name, y[i].name) == 0);
    CHECK_EQ_U64 (x[i].granularity, y[i].granularity);
    CHECK (x[i].recording == y[i].recording);
    CHECK (x[i].persistent == y[i].persistent);
    CHECK (x[i].inconsistent == y[i].inconsistent);
    CHECK_EQ_U64 (x[i].dirty_bytes, y[i].dirty_bytes);
  }
}

static uint8_t *
read_file (size_t *size)
{
  struct stat st;
  uint8_t *buf;
  int fd = open (path, O_RDONLY);

  CHECK (fd >= 0 && fstat (fd, &st) == 0);
  buf = malloc (st.st_size);
  CHECK (buf != NULL);
  CHECK (pread (fd, buf, st.st_size, 0) == st.st_size);
  close (fd);
  *size = st.st_size;
  return buf;
}

static const char *const b_only[] = { "b" };

static void
test_limit (struct tracker *t)
{
  const struct tracker_action too_many[] = {
    { .type = TRACKER_CLEAR, .name = "a" },
    { .type = TRACKER_MERGE, .name = "a", .sources = b_only,
      .nr_sources = 1 },
    { .type = TRACKER_DISABLE, .name = "b" },
    { .type = TRACKER_ADD, .name = "v", .persistent = false },
    { .type = TRACKER_ADD, .name = "p1", .persistent = true },
    { .type = TRACKER_ADD, .name = "p2", .persistent = true },
  };
  const struct tracker_action fits[] = {
    { .type = TRACKER_CLEAR, .name = "a" },
    { .type = TRACKER_DISABLE, .name = "b" },
    { .type = TRACKER_ADD, .name = "v", .persistent = false },
    { .type = TRACKER_ADD, .name = "p1", .persistent = true },
  };
  struct tracker_bitmap_info *before, *after;
  size_t nb, na, size_before, size_after;
  uint8_t *bytes_before, *bytes_after;
  char *error = NULL;

  CHECK (tracker_mark (t, 0, 1) == 0);          /* a and b: granule 0 */
  query (t, &before, &nb);
  CHECK_EQ_U64 (nb, FULL);
  CHECK_EQ_U64 (before[0].dirty_bytes, 65536);
  bytes_before = read_file (&size_before);

  CHECK (tracker_transaction (t, too_many, 6, &error) == -1);
  CHECK (error && strstr (error, "'p2'") && strstr (error, "65535") &&
         strstr (error, "QEMU's limit"));
  free (error);
  error = NULL;
  query (t, &after, &na);
  check_same_infos (before, nb, after, na);
  tracker_free_infos (after, na);
  bytes_after = read_file (&size_after);
  CHECK_EQ_U64 (size_after, size_before);
  CHECK (memcmp (bytes_before, bytes_after, size_before) == 0);
  free (bytes_after);

  /* Still recording where it was: granule 2 of a and b. */
  CHECK (tracker_mark (t, 2 * 65536, 1) == 0);
  query (t, &after, &na);
  CHECK_EQ_U64 (after[0].dirty_bytes, 2 * 65536);
  CHECK_EQ_U64 (after[1].dirty_bytes, 2 * 65536);
  tracker_free_infos (after, na);

  CHECK (tracker_transaction (t, fits, 4, &error) == 0);
  CHECK (error == NULL);
  query (t, &after, &na);
  CHECK_EQ_U64 (na, FULL + 2);
  CHECK (strcmp (after[0].name, "a") == 0 && after[0].dirty_bytes == 0 &&
         after[0].recording);
  CHECK (strcmp (after[1].name, "b") == 0 && !after[1].recording &&
         after[1].dirty_bytes == 2 * 65536);
  CHECK (strcmp (after[FULL].name, "p1") == 0 && after[FULL].persistent);
  CHECK (strcmp (after[FULL + 1].name, "v") == 0 &&
         !after[FULL + 1].persistent);
  tracker_free_infos (after, na);
  tracker_free_infos (before, nb);
  free (bytes_before);
}

/* Names reused in one transaction: removed, then added again at the
 * end of their list, the persistent one not recording and holding
 * what was merged into it.
 */
static void
test_reuse (struct tracker *t)
{
  static const char *const a_only[] = { "a" };
  const struct tracker_action reuse[] = {
    { .type = TRACKER_REMOVE, .name = "p1" },
    { .type = TRACKER_ADD, .name = "p1", .persistent = true,
      .disabled = true },
    { .type = TRACKER_REMOVE, .name = "v" },
    { .type = TRACKER_ADD, .name = "v", .persistent = false },
    { .type = TRACKER_REMOVE, .name = "2" },
    { .type = TRACKER_MERGE, .name = "p1", .sources = b_only,
      .nr_sources = 1 },
    { .type = TRACKER_MERGE, .name = "v", .sources = a_only,
      .nr_sources = 1 },
  };
  struct tracker_bitmap_info *infos;
  size_t n;
  char *error = NULL;

  CHECK (tracker_transaction (t, reuse, 7, &error) == 0);
  CHECK (error == NULL);
  query (t, &infos, &n);
  CHECK_EQ_U64 (n, FULL + 1);
  CHECK (strcmp (infos[2].name, "3") == 0);
  CHECK (strcmp (infos[FULL - 1].name, "p1") == 0 && infos[FULL - 1].persistent
         && !infos[FULL - 1].recording &&
         infos[FULL - 1].dirty_bytes == 2 * 65536);
  CHECK (strcmp (infos[FULL].name, "v") == 0 && !infos[FULL].persistent &&
         infos[FULL].recording && infos[FULL].dirty_bytes == 0);
  tracker_free_infos (infos, n);
}

/* What the transactions stored, as the sidecar reads it back. */
static void
check_stored (void)
{
  struct sidecar *sc = sidecar_open (path, 0);
  struct sidecar_bitmap *p1;

  CHECK (sc != NULL);
  CHECK_EQ_U64 (sidecar_nr_bitmaps (sc), FULL);
  CHECK (sidecar_find (sc, "2") == NULL && sidecar_find (sc, "v") == NULL);
  p1 = sidecar_bitmap_at (sc, FULL - 1);
  CHECK (strcmp (sidecar_bitmap_name (p1), "p1") == 0);
  CHECK (!sidecar_bitmap_stored_recording (p1));
  CHECK_EQ_U64 (dirtymap_count (sidecar_bitmap_data (p1)), 2);
  CHECK (!sidecar_bitmap_stored_recording (sidecar_bitmap_at (sc, 1)));
  CHECK_EQ_U64 (dirtymap_count (sidecar_bitmap_data (sidecar_bitmap_at (sc, 0))),
                0);
  sidecar_close (sc);
}

int
main (void)
{
  struct tracker_config cfg;
  struct tracker *t;
  time_t start = time (NULL);

  if (system ("qemu-img --version >/dev/null 2>&1") != 0) {
    fprintf (stderr, "test-transaction: qemu-img is not installed: "
             "skipped\n");
    return 77;
  }
  CHECK (mkdtemp (dir) != NULL);
  snprintf (path, sizeof path, "%s/sidecar.qcow2", dir);
  make_full_sidecar ();

  tracker_config_init (&cfg);
  CHECK (tracker_config_set_sidecar (&cfg, path) == 0);
  cfg.crash_safe = false;       /* no room for its record in cluster 0 */
  cfg.allow_no_bitmaps = true;
  t = tracker_new (&cfg);
  CHECK (tracker_validate (t, DISK_SIZE) == 0);
  CHECK (tracker_start (t, DISK_SIZE) == 0);
  test_limit (t);
  test_reuse (t);
  CHECK (tracker_stop (t) == 0);
  tracker_free (t);
  tracker_config_free (&cfg);
  check_stored ();
  fprintf (stderr, "test-transaction: %d s\n", (int) (time (NULL) - start));

  unlink (path);
  rmdir (dir);
  return 0;
}
