/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Views in transactions: a view added beside bitmap actions freezes
 * what its bitmap holds at the transaction's instant, after the
 * earlier actions; a failing action leaves no view and no bitmap
 * behind; the instant waits for a write on its way to the plugin,
 * and holds new writes until the views are in place.
 */
#include <config.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tracker.h"
#include "unit-test.h"
#include "views.h"

#define DISK_SIZE (UINT64_C(1) << 20)

static char dir[] = "/tmp/test-view-transaction-XXXXXX";
static char path[64];
static struct tracker *t;
static struct views *vs;

static int
transact (const struct tracker_action *acts, size_t n, char **error)
{
  *error = NULL;
  return tracker_transaction (t, acts, n, error);
}

static void
write_range (uint64_t offset, uint64_t count)
{
  bool copy;

  CHECK (tracker_write_begin (t, offset, count, &copy) == 0);
  tracker_write_end (t);
}

static uint64_t
dirty_bytes (const char *name)
{
  struct tracker_bitmap_info *infos;
  char *error = NULL;
  uint64_t bytes = UINT64_MAX;
  size_t i, n;

  CHECK (tracker_query (t, &infos, &n, &error) == 0);
  for (i = 0; i < n; ++i)
    if (strcmp (infos[i].name, name) == 0)
      bytes = infos[i].dirty_bytes;
  tracker_free_infos (infos, n);
  CHECK (bytes != UINT64_MAX);
  return bytes;
}

static size_t
nr_views (struct view_info **infos)
{
  size_t n;

  CHECK (views_query (vs, infos, &n) == 0);
  return n;
}

/* QEMU's fleecing sequence: next checkpoint, previous one frozen, the
 * view of it, in one transaction.
 */
static void
test_checkpoint_view (void)
{
  const struct tracker_action acts[] = {
    { .type = TRACKER_ADD, .name = "cp2" },
    { .type = TRACKER_DISABLE, .name = "cp1" },
    { .type = TRACKER_VIEW_ADD, .name = "v1", .bitmap = "cp1" },
  };
  struct view_info *infos;
  char *error;
  bool copy;

  write_range (0, 4096);
  write_range (3 * 65536, 65536);
  CHECK (transact (acts, 3, &error) == 0);
  CHECK (nr_views (&infos) == 1);
  CHECK (strcmp (infos[0].name, "v1") == 0);
  CHECK (strcmp (infos[0].bitmap, "cp1") == 0);
  CHECK_EQ_U64 (infos[0].frozen_bytes, 2 * 65536);
  views_free_infos (infos, 1);
  /* From now on writes copy first and go to cp2 only. */
  CHECK (tracker_write_begin (t, 65536, 512, &copy) == 0);
  CHECK (copy);
  tracker_write_end (t);
  CHECK_EQ_U64 (dirty_bytes ("cp1"), 2 * 65536);
  CHECK_EQ_U64 (dirty_bytes ("cp2"), 65536);
}

/* All or none. */
static void
test_all_or_none (void)
{
  const struct tracker_action bad_bitmap[] = {
    { .type = TRACKER_VIEW_ADD, .name = "v2" },
    { .type = TRACKER_ADD, .name = "cp3", .granularity = 3 },
  };
  const struct tracker_action bad_view[] = {
    { .type = TRACKER_ADD, .name = "cp3" },
    { .type = TRACKER_VIEW_REMOVE, .name = "v1" },
    { .type = TRACKER_VIEW_ADD, .name = "v1", .bitmap = "cp3" },
    { .type = TRACKER_VIEW_ADD, .name = "v1" },
  };
  const struct tracker_action no_bitmap[] = {
    { .type = TRACKER_VIEW_ADD, .name = "v3", .bitmap = "nope" },
  };
  const struct tracker_action export_name[] = {
    { .type = TRACKER_VIEW_ADD, .name = "tracked" },
  };
  struct view_info *infos;
  char *error;

  CHECK (transact (bad_bitmap, 2, &error) == -1);
  CHECK (strstr (error, "Granularity") != NULL);
  free (error);
  CHECK (transact (bad_view, 4, &error) == -1);
  CHECK (strstr (error, "a view named 'v1' already exists") != NULL);
  free (error);
  CHECK (transact (no_bitmap, 1, &error) == -1);
  CHECK (strstr (error, "no bitmap named 'nope'") != NULL);
  free (error);
  CHECK (transact (export_name, 1, &error) == -1);
  CHECK (strstr (error, "tracked export") != NULL);
  free (error);
  CHECK (nr_views (&infos) == 1);
  CHECK (strcmp (infos[0].name, "v1") == 0);
  CHECK_EQ_U64 (infos[0].frozen_bytes, 2 * 65536);
  views_free_infos (infos, 1);
  CHECK_EQ_U64 (dirty_bytes ("cp1"), 2 * 65536);
  /* Remove, and add again under the same name in one transaction. */
  CHECK (transact (bad_view, 3, &error) == 0);
  CHECK (nr_views (&infos) == 1);
  CHECK_EQ_U64 (infos[0].frozen_bytes, 0);      /* cp3 is empty */
  views_free_infos (infos, 1);
}

/* The instant waits for a write under way, and holds new ones. */
static int write_ended;

static void *
slow_writer (void *arg)
{
  bool copy;

  CHECK (tracker_write_begin (t, 0, 512, &copy) == 0);
  __atomic_store_n ((int *) arg, 1, __ATOMIC_SEQ_CST);
  usleep (200000);
  __atomic_store_n (&write_ended, 1, __ATOMIC_SEQ_CST);
  tracker_write_end (t);
  return NULL;
}

static void
test_drain (void)
{
  const struct tracker_action acts[] = {
    { .type = TRACKER_VIEW_REMOVE, .name = "v1" },
  };
  int begun = 0;
  pthread_t th;
  char *error;
  bool copy;

  CHECK (pthread_create (&th, NULL, slow_writer, &begun) == 0);
  while (!__atomic_load_n (&begun, __ATOMIC_SEQ_CST))
    usleep (1000);
  CHECK (transact (acts, 1, &error) == 0);
  CHECK (__atomic_load_n (&write_ended, __ATOMIC_SEQ_CST) == 1);
  pthread_join (th, NULL);
  /* No view left: writes need no copy. */
  CHECK (tracker_write_begin (t, 0, 512, &copy) == 0);
  CHECK (!copy);
  tracker_write_end (t);
}

int
main (void)
{
  struct tracker_config cfg;
  struct views_config vcfg = { 0 };

  CHECK (mkdtemp (dir) != NULL);
  snprintf (path, sizeof path, "%s/sidecar.qcow2", dir);
  vcfg.scratch_dir = dir;
  tracker_config_init (&cfg);
  CHECK (tracker_config_set_sidecar (&cfg, path) == 0);
  CHECK (tracker_config_add_name (&cfg, "cp1") == 0);
  cfg.crash_safe = false;
  t = tracker_new (&cfg);
  vs = views_new (&vcfg);
  CHECK (t && vs);
  tracker_attach_views (t, vs);
  CHECK (tracker_claim_export (t, "tracked") == 0);
  CHECK (tracker_start (t, DISK_SIZE) == 0);

  test_checkpoint_view ();
  test_all_or_none ();
  test_drain ();

  CHECK (tracker_stop (t) == 0);
  tracker_free (t);
  views_free (vs);
  tracker_config_free (&cfg);
  unlink (path);
  rmdir (dir);
  return 0;
}
