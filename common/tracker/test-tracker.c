/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Unit tests for the tracking logic: parameters, bitmap selection,
 * marking and folding into bitmaps of several granularities.
 */
#include <config.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sidecar.h"
#include "tracker.h"
#include "unit-test.h"

static char dir[] = "/tmp/test-tracker-XXXXXX";
static char path[64];

static void
test_parameters (void)
{
  struct tracker_config cfg;
  char longname[1100];

  tracker_config_init (&cfg);
  CHECK (cfg.granularity_bits == 16);
  CHECK (tracker_config_check (&cfg) == -1);
  CHECK_ERROR_MENTIONS ("dirtybitmap-file=");
  CHECK (tracker_config_set_sidecar (&cfg, "") == -1);
  CHECK (tracker_config_set_sidecar (&cfg, path) == 0);
  CHECK (tracker_config_set_sidecar (&cfg, path) == -1);
  CHECK_ERROR_MENTIONS ("twice");

  CHECK (tracker_config_set_granularity (&cfg, 256) == -1);
  CHECK_ERROR_MENTIONS ("power of two from 512 to 2G");
  CHECK (tracker_config_set_granularity (&cfg, 3 * 4096) == -1);
  CHECK (tracker_config_set_granularity (&cfg, INT64_C(4) << 30) == -1);
  CHECK (tracker_config_set_granularity (&cfg, INT64_C(2) << 30) == 0);
  CHECK (cfg.granularity_bits == 31);
  CHECK (tracker_config_set_granularity (&cfg, 512) == 0);
  CHECK (cfg.granularity_bits == 9);

  memset (longname, 'x', 1024);
  longname[1024] = '\0';
  CHECK (tracker_config_add_name (&cfg, longname) == -1);
  CHECK_ERROR_MENTIONS ("1 to 1023");
  longname[1023] = '\0';
  CHECK (tracker_config_add_name (&cfg, longname) == 0);
  CHECK (tracker_config_add_name (&cfg, "") == -1);
  CHECK (tracker_config_add_name (&cfg, "a") == 0);
  CHECK (tracker_config_add_name (&cfg, "a") == -1);
  CHECK_ERROR_MENTIONS ("twice");
  /* Names must be UTF-8 that QMP clients can send (and are shown
   * escaped when they are not).
   */
  CHECK (tracker_config_add_name (&cfg, "bad\xc0\xaf") == -1);
  CHECK_ERROR_MENTIONS ("dirtybitmap=bad\\xc0\\xaf");
  CHECK_ERROR_MENTIONS ("not valid UTF-8");
  CHECK (tracker_config_add_name (&cfg, "\xed\xa0\x80") == -1);
  CHECK (tracker_config_add_name (&cfg, "\xc3\xa9t\xc3\xa9") == 0);
  CHECK (tracker_config_set_resize_policy (&cfg, "grow") == -1);
  CHECK_ERROR_MENTIONS ("dirtybitmap-resize=grow");
  CHECK (tracker_config_set_resize_policy (&cfg, "adopt") == 0);
  CHECK (cfg.resize_policy == RESIZE_ADOPT);
  CHECK (tracker_config_check (&cfg) == 0);
  tracker_config_free (&cfg);
}

/* ARGS: nbdkit's arguments, NUL-separated as in /proc/self/cmdline,
 * given with "|" for NUL.
 */
static bool
read_only (const char *args)
{
  char buf[256];
  size_t i, len = strlen (args);

  for (i = 0; i <= len; ++i)
    buf[i] = args[i] == '|' ? '\0' : args[i];
  return tracker_config_args_read_only (buf, len + 1);
}

static void
test_server_read_only (void)
{
  struct tracker_config cfg;

  CHECK (!read_only ("nbdkit|-U|-|memory|1G|--run|true"));
  CHECK (read_only ("nbdkit|-r|-U|-|memory|1G"));
  CHECK (read_only ("nbdkit|-fr|memory|1G"));
  CHECK (read_only ("nbdkit|-U|sock|-vr|memory|1G"));
  CHECK (read_only ("nbdkit|memory|1G|--readonly"));
  CHECK (read_only ("nbdkit|--read-only|memory|1G"));
  CHECK (read_only ("nbdkit|--rea|memory|1G"));
  /* Values of options that take one are not options. */
  CHECK (!read_only ("nbdkit|-e|-r|memory|1G"));
  CHECK (!read_only ("nbdkit|-Dr=1|memory|1G"));
  CHECK (!read_only ("nbdkit|--run|-r|memory|1G"));
  CHECK (!read_only ("nbdkit|--run=x|-fv|memory|1G"));
  CHECK (!read_only ("nbdkit|--filter|-r|memory|1G"));
  CHECK (!read_only ("nbdkit|-P|x|memory|1G|dirtybitmap-file=-r"));
  CHECK (!read_only ("nbdkit|--|-r"));

  tracker_config_init (&cfg);
  CHECK (tracker_config_note_plugin_file (&cfg, path) == 0);
  CHECK (!cfg.plugin_file_is_disk);     /* it does not exist yet */
  CHECK (tracker_config_note_plugin_file (&cfg, "/dev/null") == 0);
  CHECK (!cfg.plugin_file_is_disk);     /* two of them, and no disk */
  tracker_config_free (&cfg);
  tracker_config_init (&cfg);
  CHECK (tracker_config_set_data (&cfg, "/proc/self/exe") == 0);
  CHECK (tracker_config_note_plugin_file (&cfg, "/proc/self/exe") == 0);
  CHECK (cfg.plugin_file_is_disk);
  CHECK (tracker_config_note_plugin_file (&cfg, "/proc/self/exe") == 0);
  CHECK (!cfg.plugin_file_is_disk);
  CHECK (tracker_config_set_export (&cfg, "vda") == 0);
  CHECK (tracker_config_set_export (&cfg, "vdb") == -1);
  CHECK_ERROR_MENTIONS ("dirtybitmap-export= given twice");
  tracker_config_free (&cfg);
}

/* Writes at 512-byte granularity fold into a 64K bitmap and a 512
 * byte one; the stored bitmaps are the union of loaded and written.
 */
static void
test_mark_fold_store (void)
{
  const uint64_t size = 10 * 65536 + 1000;   /* short last granule */
  struct tracker_config cfg;
  struct tracker *t;
  struct sidecar *sc;
  struct sidecar_bitmap *coarse, *fine;
  const struct dirtymap *cmap, *fmap;

  tracker_config_init (&cfg);
  CHECK (tracker_config_set_sidecar (&cfg, path) == 0);

  /* No bitmap named and no sidecar: refused before anything is made. */
  t = tracker_new (&cfg);
  CHECK (tracker_validate (t, size) == -1);
  CHECK_ERROR_MENTIONS ("dirtybitmap=NAME");
  CHECK (access (path, F_OK) == -1);
  tracker_free (t);

  CHECK (tracker_config_add_name (&cfg, "coarse") == 0);
  t = tracker_new (&cfg);
  CHECK (tracker_validate (t, 0) == -1);
  CHECK (tracker_validate (t, size) == 0);
  CHECK (access (path, F_OK) == -1);           /* validate writes nothing */
  CHECK (tracker_start (t, size) == 0);
  CHECK (tracker_start (t, size + 1) == -1);   /* another size: refused */
  CHECK_ERROR_MENTIONS ("changed size");
  CHECK (tracker_mark (t, 65535, 2) == 0);     /* granules 0 and 1 */
  CHECK (tracker_mark (t, size - 1, 1) == 0);  /* the short tail */
  CHECK (tracker_mark (t, 0, 0) == 0);         /* nothing */
  CHECK (tracker_stop (t) == 0);
  tracker_free (t);
  tracker_config_free (&cfg);

  /* Second run: add a fine bitmap; the coarse one keeps its bits. */
  tracker_config_init (&cfg);
  CHECK (tracker_config_set_sidecar (&cfg, path) == 0);
  CHECK (tracker_config_add_name (&cfg, "fine") == 0);
  CHECK (tracker_config_set_granularity (&cfg, 512) == 0);
  t = tracker_new (&cfg);
  CHECK (tracker_validate (t, size + 512) == -1);
  CHECK_ERROR_MENTIONS ("virtual size");
  CHECK_ERROR_MENTIONS ("Only the size differs");
  CHECK_ERROR_MENTIONS ("dirtybitmap-resize=adopt");
  /* QEMU sizes disks in whole sectors: the sidecar is rounded up. */
  sc = sidecar_open (path, false);
  CHECK (sc != NULL);
  CHECK_EQ_U64 (sidecar_virtual_size (sc), (size + 511) / 512 * 512);
  sidecar_close (sc);
  CHECK (tracker_validate (t, size) == 0);
  CHECK (tracker_claim_export (t, "") == 0);
  CHECK (tracker_claim_export (t, "") == 0);
  CHECK (tracker_claim_export (t, "other") == -1);
  CHECK_ERROR_MENTIONS ("'other' is refused");
  CHECK (tracker_start (t, size) == 0);
  CHECK (tracker_mark (t, 5 * 65536 + 511, 2) == 0);   /* fine 640,641 */
  CHECK (tracker_stop (t) == 0);
  tracker_free (t);
  tracker_config_free (&cfg);

  sc = sidecar_open (path, false);
  CHECK (sc != NULL);
  coarse = sidecar_find (sc, "coarse");
  fine = sidecar_find (sc, "fine");
  CHECK (coarse && fine);
  cmap = sidecar_bitmap_data (coarse);
  fmap = sidecar_bitmap_data (fine);
  CHECK_EQ_U64 (dirtymap_count (cmap), 4);
  CHECK (dirtymap_test (cmap, 0) && dirtymap_test (cmap, 1) &&
         dirtymap_test (cmap, 5) && dirtymap_test (cmap, 10));
  CHECK_EQ_U64 (dirtymap_count (fmap), 2);
  CHECK (dirtymap_test (fmap, 640) && dirtymap_test (fmap, 641));
  sidecar_close (sc);
}

static void
test_disabled_named_is_refused (void)
{
  struct tracker_config cfg;
  struct tracker *t;
  struct sidecar *sc = sidecar_open (path, true);

  /* Disable "fine" by hand, as qemu-img bitmap --disable would. */
  CHECK (sc != NULL);
  sidecar_bitmap_set_recording (sidecar_find (sc, "fine"), false);
  sidecar_bitmap_set_recording (sidecar_find (sc, "coarse"), true);
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);

  tracker_config_init (&cfg);
  CHECK (tracker_config_set_sidecar (&cfg, path) == 0);
  CHECK (tracker_config_add_name (&cfg, "fine") == 0);
  t = tracker_new (&cfg);
  CHECK (tracker_validate (t, 10 * 65536 + 1000) == -1);
  CHECK_ERROR_MENTIONS ("qemu-img bitmap --enable");
  tracker_free (t);
  tracker_config_free (&cfg);
}

int
main (void)
{
  CHECK (mkdtemp (dir) != NULL);
  snprintf (path, sizeof path, "%s/sidecar.qcow2", dir);
  test_parameters ();
  test_server_read_only ();
  test_mark_fold_store ();
  test_disabled_named_is_refused ();
  unlink (path);
  rmdir (dir);
  return 0;
}
