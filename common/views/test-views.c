/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Unit tests for views, against a disk in memory: a view shows the
 * disk as it was when added, whatever writes race with its reads;
 * bitmap views refuse unfrozen granules; trims release; the scratch
 * limit and both failure policies; removal while a reader is active;
 * stages all or none.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "unit-test.h"
#include "views.h"

#define DISK_SIZE (UINT64_C(1) << 20)   /* 16 granules of 64 KiB */

static uint8_t disk[DISK_SIZE];
static uint8_t snapshot[DISK_SIZE];
static char dir[] = "/tmp/test-views-XXXXXX";

/* The fake backend: reads the disk, slowly or failing when asked. */
static unsigned read_delay_us;
static int read_failure;
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static int gate_state;          /* 1: readers stop at the gate; 2: open */

static int
read_disk (void *opaque, void *buf, uint32_t count, uint64_t offset,
           int *err)
{
  if (read_failure) {
    *err = read_failure;
    return -1;
  }
  pthread_mutex_lock (&gate_lock);
  if (gate_state == 1) {
    gate_state = 3;             /* a reader arrived */
    pthread_cond_broadcast (&gate_cond);
    while (gate_state != 2)
      pthread_cond_wait (&gate_cond, &gate_lock);
  }
  pthread_mutex_unlock (&gate_lock);
  if (read_delay_us)
    usleep (read_delay_us);
  memcpy (buf, disk + offset, count);
  return 0;
}

/* A write as the filter makes it: copy before write, then the data.
 * Writers are serialised among themselves only (a disk orders them
 * somehow), not against reads, so that ThreadSanitizer sees any read
 * of a granule that a write changes meanwhile.
 */
static pthread_mutex_t writers_lock = PTHREAD_MUTEX_INITIALIZER;

static int
write_disk (struct views *vs, uint64_t offset, uint32_t count, int byte)
{
  int err = 0;

  if (views_copy_before_write (vs, read_disk, NULL, offset, count,
                               &err) == -1)
    return err;
  pthread_mutex_lock (&writers_lock);
  memset (disk + offset, byte, count);
  pthread_mutex_unlock (&writers_lock);
  return 0;
}

static void
fill_pattern (void)
{
  uint64_t i;

  for (i = 0; i < DISK_SIZE; ++i)
    disk[i] = (i * 7 + i / 4096) & 0xff;
  memcpy (snapshot, disk, DISK_SIZE);
}

static struct views_config config;

static struct views *
new_views (uint64_t limit, enum views_on_error on_error)
{
  config.scratch_dir = dir;
  config.scratch_limit = limit;
  config.on_error = on_error;
  return views_new (&config);
}

static void
add (struct views *vs, const char *name, const char *bitmap,
     const struct dirtymap *dirty, unsigned bits)
{
  struct views_stage *st = views_stage_new (vs);
  char *error = NULL;

  CHECK (st != NULL);
  CHECK (views_stage_add (st, name, bitmap, dirty, bits, DISK_SIZE,
                          &error) == 0);
  views_stage_commit (st);
  views_stage_free (st);
}

static void
remove_view (struct views *vs, const char *name)
{
  struct views_stage *st = views_stage_new (vs);
  char *error = NULL;

  CHECK (views_stage_remove (st, name, &error) == 0);
  views_stage_commit (st);
  views_stage_free (st);
}

static int
read_view (struct view *v, uint64_t offset, uint32_t count, uint8_t *buf)
{
  int err = 0;

  return view_read (v, read_disk, NULL, buf, count, offset, &err) == -1
    ? err : 0;
}

static void
check_view_equals_snapshot (struct view *v, uint64_t offset, uint32_t count)
{
  uint8_t *buf = malloc (count);

  CHECK (buf != NULL);
  CHECK (read_view (v, offset, count, buf) == 0);
  CHECK (memcmp (buf, snapshot + offset, count) == 0);
  free (buf);
}

static void
query_one (struct views *vs, struct view_info *out)
{
  struct view_info *infos;
  size_t n;

  CHECK (views_query (vs, &infos, &n) == 0);
  CHECK (n >= 1);
  *out = infos[0];
  out->name = out->bitmap = out->reason = NULL;
  views_free_infos (infos, n);
}

static void
test_whole_disk (void)
{
  struct views *vs = new_views (0, VIEWS_BREAK_VIEW);
  struct view_info info;
  struct view *v;

  fill_pattern ();
  add (vs, "full", NULL, NULL, 0);
  CHECK (views_exist (vs));
  v = views_open (vs, "full");
  CHECK (v != NULL && strcmp (view_name (v), "full") == 0);
  CHECK (views_open (vs, "other") == NULL);
  CHECK (write_disk (vs, 4096, 100, 'x') == 0);
  CHECK (write_disk (vs, 65536 * 3 - 10, 20, 'y') == 0);
  CHECK (write_disk (vs, 4096, 100, 'z') == 0);    /* copied already */
  check_view_equals_snapshot (v, 0, DISK_SIZE);
  query_one (vs, &info);
  CHECK_EQ_U64 (info.granularity, 65536);
  CHECK_EQ_U64 (info.frozen_bytes, DISK_SIZE);
  CHECK_EQ_U64 (info.copied_bytes, 3 * 65536);
  CHECK_EQ_U64 (info.scratch_bytes, 3 * 65536);
  CHECK (!info.broken);
  view_close (v);
  views_free (vs);
}

/* Granules 1 and 3 of 4 KiB frozen. */
static void
test_bitmap (void)
{
  struct views *vs = new_views (0, VIEWS_BREAK_VIEW);
  struct dirtymap *dirty = dirtymap_new (DISK_SIZE / 4096);
  struct view_info info;
  uint8_t buf[8192];
  struct view *v;

  fill_pattern ();
  CHECK (dirtymap_set_range (dirty, 1, 1) == 1);
  CHECK (dirtymap_set_range (dirty, 3, 1) == 1);
  add (vs, "inc", "cp1", dirty, 12);
  dirtymap_free (dirty);
  v = views_open (vs, "inc");
  CHECK (write_disk (vs, 0, 16384, 'w') == 0);
  check_view_equals_snapshot (v, 4096, 4096);
  check_view_equals_snapshot (v, 3 * 4096 + 5, 100);
  clear_last_error ();
  CHECK (read_view (v, 4096, 8192, buf) == EPERM);
  CHECK_ERROR_MENTIONS ("view 'inc': [4096, 12288) was not frozen");
  CHECK_ERROR_MENTIONS ("not dirty in bitmap 'cp1'");
  query_one (vs, &info);
  CHECK_EQ_U64 (info.granularity, 4096);
  CHECK_EQ_U64 (info.frozen_bytes, 8192);
  CHECK_EQ_U64 (info.copied_bytes, 8192);
  view_close (v);
  views_free (vs);
}

/* A trim releases the granules wholly inside it, and only those. */
static void
test_trim (void)
{
  struct views *vs = new_views (0, VIEWS_BREAK_VIEW);
  struct view_info info;
  uint8_t buf[16];
  struct view *v;
  int err = 0;

  fill_pattern ();
  add (vs, "t", NULL, NULL, 0);
  v = views_open (vs, "t");
  CHECK (write_disk (vs, 0, 3 * 65536, 'a') == 0);
  CHECK (view_trim (v, 65536 + 100, 0, &err) == 0);
  query_one (vs, &info);
  CHECK_EQ_U64 (info.frozen_bytes, DISK_SIZE - 65536);
  CHECK_EQ_U64 (info.scratch_bytes, 2 * 65536);
  CHECK (read_view (v, 0, 16, buf) == EPERM);
  CHECK_ERROR_MENTIONS ("trimmed");
  check_view_equals_snapshot (v, 65536, 65536);
  /* Released granules are not copied again. */
  CHECK (write_disk (vs, 0, 100, 'b') == 0);
  query_one (vs, &info);
  CHECK_EQ_U64 (info.copied_bytes, 3 * 65536);
  /* The disk's last granule, up to the end. */
  CHECK (view_trim (v, 65536, DISK_SIZE - 65536, &err) == 0);
  query_one (vs, &info);
  CHECK_EQ_U64 (info.frozen_bytes, DISK_SIZE - 2 * 65536);
  view_close (v);
  views_free (vs);
}

static void
test_limit_break_view (void)
{
  struct views *vs = new_views (65536, VIEWS_BREAK_VIEW);
  struct view_info info;
  uint8_t buf[16];
  struct view *v;

  fill_pattern ();
  add (vs, "b", NULL, NULL, 0);
  v = views_open (vs, "b");
  CHECK (write_disk (vs, 0, 10, 'a') == 0);
  CHECK (write_disk (vs, 65536, 10, 'a') == 0);  /* goes on, view breaks */
  CHECK (disk[65536] == 'a');
  CHECK (read_view (v, 0, 16, buf) == EIO);
  CHECK_ERROR_MENTIONS ("view 'b' is broken");
  query_one (vs, &info);
  CHECK (info.broken);
  CHECK_EQ_U64 (info.scratch_bytes, 0);
  CHECK (write_disk (vs, 3 * 65536, 10, 'a') == 0);
  view_close (v);
  views_free (vs);
}

static void
test_limit_fail_write (void)
{
  struct views *vs = new_views (65536, VIEWS_FAIL_WRITE);
  struct view_info info;
  struct view *v;

  fill_pattern ();
  add (vs, "f", NULL, NULL, 0);
  v = views_open (vs, "f");
  CHECK (write_disk (vs, 0, 10, 'a') == 0);
  CHECK (write_disk (vs, 65536, 10, 'a') == ENOSPC);
  CHECK_ERROR_MENTIONS ("view 'f'");
  CHECK (disk[65536] != 'a');
  /* A failing disk read: EIO. */
  read_failure = EIO;
  CHECK (write_disk (vs, 2 * 65536, 10, 'a') == EIO);
  read_failure = 0;
  query_one (vs, &info);
  CHECK (!info.broken);
  check_view_equals_snapshot (v, 0, DISK_SIZE);
  view_close (v);
  views_free (vs);
}

/* Several threads write random ranges while others read the view. */
#define NR_WRITERS 4
#define NR_READERS 4
static struct views *race_views;
static struct view *race_view;
static int race_stop;

static void *
race_writer (void *arg)
{
  unsigned seed = (uintptr_t) arg;

  while (!__atomic_load_n (&race_stop, __ATOMIC_RELAXED)) {
    uint64_t offset = rand_r (&seed) % DISK_SIZE;
    uint32_t count = 1 + rand_r (&seed) % 20000;

    if (offset + count > DISK_SIZE)
      count = DISK_SIZE - offset;
    CHECK (write_disk (race_views, offset, count, rand_r (&seed)) == 0);
  }
  return NULL;
}

static void *
race_reader (void *arg)
{
  unsigned seed = (uintptr_t) arg;
  uint8_t *buf = malloc (65536 * 3);
  int i;

  for (i = 0; i < 300; ++i) {
    uint64_t offset = rand_r (&seed) % DISK_SIZE;
    uint32_t count = 1 + rand_r (&seed) % (65536 * 3);

    if (offset + count > DISK_SIZE)
      count = DISK_SIZE - offset;
    CHECK (read_view (race_view, offset, count, buf) == 0);
    CHECK (memcmp (buf, snapshot + offset, count) == 0);
  }
  free (buf);
  return NULL;
}

static void
test_race (void)
{
  pthread_t w[NR_WRITERS], r[NR_READERS];
  size_t i;

  fill_pattern ();
  race_views = new_views (0, VIEWS_BREAK_VIEW);
  add (race_views, "race", NULL, NULL, 0);
  race_view = views_open (race_views, "race");
  read_delay_us = 20;
  for (i = 0; i < NR_WRITERS; ++i)
    CHECK (pthread_create (&w[i], NULL, race_writer,
                           (void *) (uintptr_t) (i + 1)) == 0);
  for (i = 0; i < NR_READERS; ++i)
    CHECK (pthread_create (&r[i], NULL, race_reader,
                           (void *) (uintptr_t) (i + 100)) == 0);
  for (i = 0; i < NR_READERS; ++i)
    pthread_join (r[i], NULL);
  __atomic_store_n (&race_stop, 1, __ATOMIC_RELAXED);
  for (i = 0; i < NR_WRITERS; ++i)
    pthread_join (w[i], NULL);
  read_delay_us = 0;
  check_view_equals_snapshot (race_view, 0, DISK_SIZE);
  view_close (race_view);
  views_free (race_views);
}

/* A reader stopped inside its disk read while the view is removed. */
static void *
slow_reader (void *arg)
{
  uint8_t *buf = malloc (4096);

  CHECK (read_view (arg, 0, 4096, buf) == 0);
  CHECK (memcmp (buf, snapshot, 4096) == 0);
  free (buf);
  return NULL;
}

static void *
blocked_writer (void *arg)
{
  CHECK (write_disk (arg, 0, 10, 'q') == 0);
  return NULL;
}

static void
test_remove_while_reading (void)
{
  struct views *vs = new_views (65536, VIEWS_FAIL_WRITE);
  pthread_t reader, writer;
  uint8_t buf[16];
  struct view *v;

  fill_pattern ();
  add (vs, "gone", NULL, NULL, 0);
  v = views_open (vs, "gone");
  gate_state = 1;
  CHECK (pthread_create (&reader, NULL, slow_reader, v) == 0);
  pthread_mutex_lock (&gate_lock);
  while (gate_state != 3)
    pthread_cond_wait (&gate_cond, &gate_lock);
  pthread_mutex_unlock (&gate_lock);
  /* A write to the granule being read waits for the read. */
  CHECK (pthread_create (&writer, NULL, blocked_writer, vs) == 0);
  usleep (20000);
  CHECK (disk[0] != 'q');
  pthread_mutex_lock (&gate_lock);
  gate_state = 2;
  pthread_cond_broadcast (&gate_cond);
  pthread_mutex_unlock (&gate_lock);
  pthread_join (writer, NULL);
  pthread_join (reader, NULL);
  CHECK (disk[0] == 'q');
  remove_view (vs, "gone");
  CHECK (!views_exist (vs));
  /* Its scratch space is back before its client lets go. */
  add (vs, "next", NULL, NULL, 0);
  CHECK (write_disk (vs, 5 * 65536, 10, 'n') == 0);
  CHECK (read_view (v, 0, 16, buf) == EIO);
  CHECK_ERROR_MENTIONS ("view 'gone' was removed");
  view_close (v);
  /* Its name stays refused until a view takes it again. */
  CHECK (views_open (vs, "gone") == NULL);
  CHECK (views_removed (vs, "gone"));
  CHECK (!views_removed (vs, "next"));
  add (vs, "gone", NULL, NULL, 0);
  CHECK (!views_removed (vs, "gone"));
  gate_state = 0;
  views_free (vs);
}

static void
test_stage (void)
{
  struct views *vs = new_views (0, VIEWS_BREAK_VIEW);
  struct views_stage *st;
  char *error = NULL, name[16];
  size_t i;

  st = views_stage_new (vs);
  CHECK (views_stage_add (st, "a", NULL, NULL, 0, DISK_SIZE, &error) == 0);
  CHECK (views_stage_add (st, "a", NULL, NULL, 0, DISK_SIZE, &error) == -1);
  CHECK (strstr (error, "already exists") != NULL);
  free (error);
  CHECK (views_stage_add (st, "", NULL, NULL, 0, DISK_SIZE, &error) == -1);
  free (error);
  CHECK (views_stage_add (st, "\xff", NULL, NULL, 0, DISK_SIZE,
                          &error) == -1);
  CHECK (strstr (error, "UTF-8") != NULL);
  free (error);
  CHECK (views_stage_remove (st, "a", &error) == 0);
  CHECK (views_stage_remove (st, "a", &error) == -1);
  free (error);
  CHECK (views_stage_add (st, "b", NULL, NULL, 0, DISK_SIZE, &error) == 0);
  views_stage_free (st);        /* not committed: nothing changes */
  CHECK (!views_exist (vs));

  st = views_stage_new (vs);
  for (i = 0; i < VIEWS_MAX; ++i) {
    snprintf (name, sizeof name, "v%zu", i);
    CHECK (views_stage_add (st, name, NULL, NULL, 0, DISK_SIZE, &error) == 0);
  }
  CHECK (views_stage_add (st, "one-more", NULL, NULL, 0, DISK_SIZE,
                          &error) == -1);
  CHECK (strstr (error, "64") != NULL);
  free (error);
  views_stage_commit (st);
  views_stage_free (st);
  CHECK (views_exist (vs));
  views_free (vs);
}

int
main (void)
{
  CHECK (mkdtemp (dir) != NULL);
  test_whole_disk ();
  test_bitmap ();
  test_trim ();
  test_limit_break_view ();
  test_limit_fail_write ();
  test_race ();
  test_remove_while_reading ();
  test_stage ();
  rmdir (dir);
  return 0;
}
