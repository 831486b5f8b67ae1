/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Unit test for stores under load: writer threads mark small ranges
 * over and over (most of them in regions already durable, so they
 * take the journal's lock-free path), while the main thread stores the
 * bitmaps, which truncates the journal each time, and between stores
 * copies the sidecar as a crash would leave it.  Every copy, opened
 * and recovered as after kill -9, must hold in each recording bitmap
 * every range whose mark returned before the copy began: a mark that
 * found its region durable in the last epoch must not escape both the
 * stored bitmaps and the truncated journal.
 */
#include <config.h>

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checked-io.h"
#include "sidecar.h"
#include "tracker.h"
#include "unit-test.h"

#define NR_WRITERS 4
#define MAX_MARKS 200000
#define NR_STORES 60
#define SIZE (UINT64_C(16) << 20)
#define GRANULE 4096

static char dir[] = "/tmp/test-store-epochs-XXXXXX";
static char path[64], copy[64];

struct writer {
  pthread_t thread;
  struct tracker *t;
  unsigned seed;
  uint64_t offsets[MAX_MARKS];
  uint64_t nr_done;             /* marks returned, published with release */
};

static bool stopping;
static int nr_stored;          /* for messages */

static void *
write_loop (void *arg)
{
  struct writer *w = arg;

  while (!__atomic_load_n (&stopping, __ATOMIC_ACQUIRE) &&
         w->nr_done < MAX_MARKS) {
    uint64_t offset = (rand_r (&w->seed) % (SIZE / GRANULE)) * GRANULE;

    CHECK (tracker_mark (w->t, offset, GRANULE) == 0);
    w->offsets[w->nr_done] = offset;
    __atomic_store_n (&w->nr_done, w->nr_done + 1, __ATOMIC_RELEASE);
  }
  return NULL;
}

/* The sidecar as a crash now would leave it: only journal bits are
 * written meanwhile (stores run in this thread), and those only ever
 * add bits.
 */
static void
copy_sidecar (void)
{
  int in = open (path, O_RDONLY), out;
  off_t size = lseek (in, 0, SEEK_END);
  char *buf = malloc (size);

  CHECK (in >= 0 && buf != NULL);
  CHECK (read_fully (in, path, "copy", buf, size, 0) == 0);
  close (in);
  out = open (copy, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  CHECK (out >= 0);
  CHECK (write_fully (out, copy, "copy", buf, size, 0) == 0);
  close (out);
  free (buf);
}

static void
check_recovered (struct writer *w, const uint64_t *done)
{
  struct sidecar *sc = sidecar_open (copy, 0);
  const char *names[] = { "b", "checkpoint" };
  size_t i, k;
  uint64_t m;

  CHECK (sc != NULL);
  for (k = 0; k < 2; ++k) {
    struct sidecar_bitmap *bm = sidecar_find (sc, names[k]);
    const struct dirtymap *map;

    if (bm == NULL)
      continue;
    CHECK (sidecar_bitmap_is_consistent (bm));
    map = sidecar_bitmap_data (bm);
    /* "checkpoint" holds only what came after its creation: consistent
     * is all that is checked of it here.
     */
    for (i = 0; k == 0 && i < NR_WRITERS; ++i)
      for (m = 0; m < done[i]; ++m)
        if (!dirtymap_test (map, w[i].offsets[m] >> 16)) {
          fprintf (stderr, "test-store-epochs: mark %" PRIu64 " of %" PRIu64
                   " of writer %zu (offset %" PRIu64 ") lost in '%s' after "
                   "store %d\n", m, done[i], i, w[i].offsets[m], names[k],
                   nr_stored);
          exit (EXIT_FAILURE);
        }
  }
  sidecar_close (sc);
}

int
main (void)
{
  static struct writer w[NR_WRITERS];
  uint64_t done[NR_WRITERS];
  struct tracker_config cfg;
  struct tracker *t;
  char *error = NULL;
  const struct tracker_action add = {
    .type = TRACKER_ADD, .name = "checkpoint", .persistent = true,
  };
  size_t i, n;

  CHECK (mkdtemp (dir) != NULL);
  snprintf (path, sizeof path, "%s/sidecar.qcow2", dir);
  snprintf (copy, sizeof copy, "%s/crashed.qcow2", dir);
  tracker_config_init (&cfg);
  CHECK (tracker_config_set_sidecar (&cfg, path) == 0);
  CHECK (tracker_config_add_name (&cfg, "b") == 0);
  CHECK (tracker_config_set_crash_granularity (&cfg, 65536) == 0);
  t = tracker_new (&cfg);
  CHECK (t != NULL);
  CHECK (tracker_validate (t, SIZE) == 0);
  CHECK (tracker_start (t, SIZE) == 0);

  for (i = 0; i < NR_WRITERS; ++i) {
    w[i].t = t;
    w[i].seed = i + 1;
    CHECK (pthread_create (&w[i].thread, NULL, write_loop, &w[i]) == 0);
  }
  for (n = 0; n < NR_STORES; ++n) {
    if (n == NR_STORES / 2)
      CHECK (tracker_transaction (t, &add, 1, &error) == 0);
    else
      CHECK (tracker_store_now (t, &error) == 0);
    nr_stored = n;
    for (i = 0; i < NR_WRITERS; ++i)
      done[i] = __atomic_load_n (&w[i].nr_done, __ATOMIC_ACQUIRE);
    copy_sidecar ();
    check_recovered (w, done);
  }
  __atomic_store_n (&stopping, true, __ATOMIC_RELEASE);
  for (i = 0; i < NR_WRITERS; ++i)
    CHECK (pthread_join (w[i].thread, NULL) == 0);
  CHECK (tracker_stop (t) == 0);
  tracker_free (t);
  tracker_config_free (&cfg);
  unlink (copy);
  unlink (path);
  rmdir (dir);
  return 0;
}
