/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Unit tests for the crash-safety journal: a mark is in the file when
 * journal_mark returns, at the place qcow2 bitmap data puts it, and
 * nowhere else; marks of durable regions cost no commit; concurrent
 * marks share commits; a failed commit fails every later mark that
 * needs one; epochs truncate the file to the marks made since one
 * began, and only once it is settled.
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
#include <sys/stat.h>
#include <unistd.h>

#include "checked-io.h"
#include "journal.h"
#include "unit-test.h"

static char dir[] = "/tmp/test-journal-XXXXXX";
static char path[64];

/* The file under test: FILE_CLUSTERS clusters of zeros, of which the
 * journal uses those at the offsets in clusters[], out of order and
 * with gaps, so that a write to the wrong cluster, or past the end of
 * one, shows as a byte set where none should be.
 */
struct layout {
  uint64_t cluster_size;
  unsigned granularity_bits;
  uint64_t nr_bits;
  uint64_t nr_clusters;         /* of the journal */
  uint64_t file_clusters;
  uint64_t clusters[8];
  uint8_t *expected;            /* the whole file as it must be */
  uint8_t *actual;
  int fd;
  struct journal *j;
};

/* The journal's store, as the sidecar maps the data to its clusters. */
static int
layout_write (void *opaque, uint64_t offset, const void *buf, size_t len)
{
  struct layout *l = opaque;

  /* A write never crosses a cluster. */
  CHECK (offset / l->cluster_size == (offset + len - 1) / l->cluster_size);
  return write_fully (l->fd, path, "journal", buf, len,
                      l->clusters[offset / l->cluster_size]
                      + offset % l->cluster_size);
}

static int
layout_sync (void *opaque)
{
  struct layout *l = opaque;

  return sync_data (l->fd, path, "journal");
}

static void
layout_init (struct layout *l, uint64_t cluster_size,
             unsigned granularity_bits, uint64_t nr_bits,
             const uint64_t *cluster_index, uint64_t file_clusters)
{
  uint64_t i;

  memset (l, 0, sizeof *l);
  l->cluster_size = cluster_size;
  l->granularity_bits = granularity_bits;
  l->nr_bits = nr_bits;
  l->nr_clusters = ((nr_bits + 7) / 8 + cluster_size - 1) / cluster_size;
  CHECK (l->nr_clusters <= 8);
  l->file_clusters = file_clusters;
  for (i = 0; i < l->nr_clusters; ++i) {
    CHECK (cluster_index[i] < file_clusters);
    l->clusters[i] = cluster_index[i] * cluster_size;
  }
  l->expected = calloc (file_clusters, cluster_size);
  l->actual = malloc (file_clusters * cluster_size);
  CHECK (l->expected && l->actual);
  unlink (path);
  l->fd = open (path, O_RDWR | O_CREAT | O_EXCL, 0600);
  CHECK (l->fd >= 0);
  CHECK (ftruncate (l->fd, file_clusters * cluster_size) == 0);
  clear_last_error ();
  l->j = journal_new (&(struct journal_store) { layout_write, layout_sync, l },
                      path, granularity_bits, nr_bits, cluster_size);
  CHECK (l->j != NULL);
}

static void
layout_free (struct layout *l)
{
  journal_free (l->j);
  close (l->fd);
  free (l->expected);
  free (l->actual);
  unlink (path);
}

/* Byte offset in the file of journal bit BIT. */
static uint64_t
bit_offset (const struct layout *l, uint64_t bit)
{
  uint64_t per_cluster = l->cluster_size * 8;

  return l->clusters[bit / per_cluster] + (bit % per_cluster) / 8;
}

static void
expect_bits (struct layout *l, uint64_t first, uint64_t last)
{
  uint64_t bit;

  for (bit = first; bit <= last; ++bit)
    l->expected[bit_offset (l, bit)] |= 1 << (bit % 8);
}

/* The file, read through a descriptor of its own, is exactly what the
 * marks so far must have made of it.
 */
static void
check_file (struct layout *l, int line)
{
  int fd = open (path, O_RDONLY);
  uint64_t size = l->file_clusters * l->cluster_size, i;

  CHECK (fd >= 0);
  CHECK (pread (fd, l->actual, size, 0) == (ssize_t) size);
  close (fd);
  for (i = 0; i < size; ++i)
    if (l->actual[i] != l->expected[i]) {
      fprintf (stderr, "test-journal.c:%d: byte 0x%" PRIx64 " of the file "
               "is 0x%02x, expected 0x%02x\n", line, i, l->actual[i],
               l->expected[i]);
      exit (EXIT_FAILURE);
    }
}

static struct journal_stats
stats (struct layout *l)
{
  struct journal_stats s;

  journal_get_stats (l->j, &s);
  return s;
}

/* Mark [OFFSET, OFFSET + COUNT), which must set bits FIRST..LAST and
 * need one commit writing PAGES pages (0: durable already, no commit).
 */
#define MARK(l, offset, count, first, last, pages)                      \
  do {                                                                  \
    struct journal_stats before_ = stats (l), after_;                   \
    CHECK (journal_mark ((l)->j, (offset), (count)) == 0);              \
    after_ = stats (l);                                                 \
    if ((pages) > 0)                                                    \
      expect_bits ((l), (first), (last));                               \
    check_file ((l), __LINE__);                                         \
    CHECK_EQ_U64 (after_.commits - before_.commits, (pages) > 0);       \
    CHECK_EQ_U64 (after_.waits - before_.waits, (pages) > 0);           \
    CHECK_EQ_U64 (after_.pages_written - before_.pages_written,         \
                  (pages));                                             \
  } while (0)

/* 64 KiB clusters, 64 KiB granules: pages of 4096 bytes, 16 to a
 * cluster; three clusters, the last partly used.
 */
static void
test_marks_64k (void)
{
  const uint64_t g = 65536, per_cluster = 65536 * 8, per_page = 4096 * 8;
  const uint64_t nr_bits = 2 * per_cluster + 1000;
  static const uint64_t where[] = { 5, 2, 9 };
  struct layout l;

  layout_init (&l, 65536, 16, nr_bits, where, 12);
  check_file (&l, __LINE__);
  CHECK_EQ_U64 (stats (&l).commits, 0);

  MARK (&l, 0, 1, 0, 0, 1);
  MARK (&l, 0, 1, 0, 0, 0);                       /* durable: no commit */
  MARK (&l, g - 1, 1, 0, 0, 0);
  /* Rounded out to whole granules: one byte each side of a boundary. */
  MARK (&l, g - 1, 2, 0, 1, 1);
  MARK (&l, 3 * g + 100, g, 3, 4, 1);
  MARK (&l, 3 * g, 2 * g, 3, 4, 0);
  /* Across a page boundary, and across a cluster boundary (two pages,
   * in two clusters far apart in the file).
   */
  MARK (&l, (per_page - 1) * g, 2 * g, per_page - 1, per_page, 2);
  MARK (&l, (per_cluster - 2) * g, 3 * g, per_cluster - 2, per_cluster, 2);
  /* Partly durable: only the page with new bits is written. */
  MARK (&l, (per_cluster - 4) * g, 6 * g, per_cluster - 4, per_cluster + 1,
        2);
  MARK (&l, (per_cluster + 2) * g, 1, per_cluster + 2, per_cluster + 2, 1);
  /* Many pages at once: every page of the second cluster. */
  MARK (&l, per_cluster * g, per_cluster * g, per_cluster, 2 * per_cluster - 1,
        16);
  /* The end: clipped to the last bit; wholly past it, nothing. */
  MARK (&l, (nr_bits - 1) * g + 5, 100 * g, nr_bits - 1, nr_bits - 1, 1);
  MARK (&l, nr_bits * g, g, 0, 0, 0);
  MARK (&l, UINT64_C(1) << 50, 1, 0, 0, 0);
  MARK (&l, 12345, 0, 0, 0, 0);                   /* nothing at all */
  /* The bytes of the last page past the journal's end stay zero, and
   * so does every cluster it does not own (check_file saw to it).
   */
  CHECK_EQ_U64 (stats (&l).commits, 9);
  layout_free (&l);
}

/* 512-byte clusters: a page is one cluster, so a write of 4096 bytes
 * would overwrite the clusters that follow.  512-byte granules, and a
 * coarse journal of 1 MiB granules on the same file afterwards.
 */
static void
test_marks_512 (void)
{
  const uint64_t per_cluster = 512 * 8;
  const uint64_t nr_bits = 5 * per_cluster + 7;
  static const uint64_t where[] = { 7, 3, 11, 1, 9, 5 };
  struct layout l;

  layout_init (&l, 512, 9, nr_bits, where, 13);
  MARK (&l, 0, 512, 0, 0, 1);
  MARK (&l, 511, 2, 0, 1, 1);
  MARK (&l, (per_cluster - 1) * 512, 1024, per_cluster - 1, per_cluster, 2);
  MARK (&l, (3 * per_cluster - 3) * 512, (per_cluster + 6) * 512,
        3 * per_cluster - 3, 4 * per_cluster + 2, 3);
  MARK (&l, (nr_bits - 1) * 512, 512, nr_bits - 1, nr_bits - 1, 1);
  MARK (&l, (nr_bits - 1) * 512 + 511, 1, 0, 0, 0);
  MARK (&l, nr_bits * 512, 512, 0, 0, 0);
  layout_free (&l);

  /* 1 MiB granules in 512-byte clusters: 3 bits in one page. */
  layout_init (&l, 512, 20, 3, where, 13);
  MARK (&l, (UINT64_C(1) << 20) - 512, 1024, 0, 1, 1);
  MARK (&l, 2 << 20, 10 << 20, 2, 2, 1);
  MARK (&l, 0, 3 << 20, 0, 0, 0);
  layout_free (&l);
}

/* Many threads marking at once: each mark is in the file when it
 * returns, and the file ends up as the union of all of them.
 */
#define THREADS 8
#define MARKS_PER_THREAD 300

struct worker {
  struct layout *l;
  unsigned seed;
  uint64_t offsets[MARKS_PER_THREAD], counts[MARKS_PER_THREAD];
  int failed_line;
};

static bool
bit_in_file (int fd, const struct layout *l, uint64_t bit)
{
  uint8_t byte;

  if (pread (fd, &byte, 1, bit_offset (l, bit)) != 1)
    return false;
  return (byte >> (bit % 8)) & 1;
}

static void *
worker_run (void *arg)
{
  struct worker *w = arg;
  struct layout *l = w->l;
  int fd = open (path, O_RDONLY);
  int i;

  if (fd == -1) {
    w->failed_line = __LINE__;
    return NULL;
  }
  for (i = 0; i < MARKS_PER_THREAD; ++i) {
    uint64_t bits = l->nr_bits << l->granularity_bits;
    uint64_t offset = rand_r (&w->seed) % bits;
    uint64_t count = 1 + rand_r (&w->seed) % (4 << l->granularity_bits);
    uint64_t first = offset >> l->granularity_bits;
    uint64_t last = (offset + count - 1) >> l->granularity_bits, b;

    if (last >= l->nr_bits)
      last = l->nr_bits - 1;
    w->offsets[i] = offset;
    w->counts[i] = count;
    if (journal_mark (l->j, offset, count) != 0) {
      w->failed_line = __LINE__;
      break;
    }
    for (b = first; b <= last; ++b)
      if (!bit_in_file (fd, l, b)) {
        w->failed_line = __LINE__;
        break;
      }
    if (w->failed_line)
      break;
  }
  close (fd);
  return NULL;
}

static void
test_concurrent (void)
{
  static const uint64_t where[] = { 3, 0, 2 };
  static struct worker w[THREADS];
  pthread_t th[THREADS];
  struct layout l;
  struct journal_stats s;
  int t, i;

  /* 4096-byte clusters and 4 KiB granules: 3 * 32768 - 100 bits. */
  layout_init (&l, 4096, 12, 3 * 4096 * 8 - 100, where, 5);
  for (t = 0; t < THREADS; ++t) {
    w[t].l = &l;
    w[t].seed = 1000 + t;
    w[t].failed_line = 0;
    CHECK (pthread_create (&th[t], NULL, worker_run, &w[t]) == 0);
  }
  for (t = 0; t < THREADS; ++t)
    CHECK (pthread_join (th[t], NULL) == 0);
  for (t = 0; t < THREADS; ++t) {
    if (w[t].failed_line) {
      fprintf (stderr, "test-journal.c:%d: failed in thread %d: %s\n",
               w[t].failed_line, t, last_error ());
      exit (EXIT_FAILURE);
    }
    for (i = 0; i < MARKS_PER_THREAD; ++i) {
      uint64_t first = w[t].offsets[i] >> l.granularity_bits;
      uint64_t last = (w[t].offsets[i] + w[t].counts[i] - 1)
        >> l.granularity_bits;

      if (last >= l.nr_bits)
        last = l.nr_bits - 1;
      expect_bits (&l, first, last);
    }
  }
  check_file (&l, __LINE__);
  s = stats (&l);
  if (getenv ("UNIT_TEST_VERBOSE"))
    fprintf (stderr, "concurrent: %" PRIu64 " commits, %" PRIu64 " pages, %"
             PRIu64 " waits for %d marks\n", s.commits, s.pages_written,
             s.waits, THREADS * MARKS_PER_THREAD);
  CHECK (s.commits >= 1);
  CHECK (s.waits <= THREADS * MARKS_PER_THREAD);
  /* A commit is led by a mark that waits, and a leader whose pages
   * others wrote already writes nothing: never more commits than
   * waits; each commit writes one page at least.
   */
  CHECK (s.commits <= s.waits);
  CHECK (s.pages_written >= s.commits);
  layout_free (&l);
}

/* The file stops taking writes: the mark that needs a commit fails,
 * naming the file; every later mark that needs one fails too, even
 * for pages the failed commit did not touch; marks of regions durable
 * before the failure still succeed.
 */
static void
test_failure (void)
{
  static const uint64_t where[] = { 1, 0 };
  struct layout l;
  struct journal_stats s;
  int ro;

  layout_init (&l, 65536, 16, 65536 * 8 * 2, where, 3);
  MARK (&l, 0, 65536, 0, 0, 1);
  MARK (&l, 100 * 65536, 65536, 100, 100, 1);

  /* The journal's descriptor now refers to the file opened read-only. */
  ro = open (path, O_RDONLY);
  CHECK (ro >= 0);
  CHECK (dup2 (ro, l.fd) == l.fd);
  close (ro);

  clear_last_error ();
  CHECK (journal_mark (l.j, 5 * 65536, 1) == -1);
  CHECK_ERROR_MENTIONS (path);
  s = stats (&l);
  /* A mark of the same region, of another page, of another cluster:
   * all refused without trying the disk again.
   */
  clear_last_error ();
  CHECK (journal_mark (l.j, 5 * 65536, 1) == -1);
  CHECK_ERROR_MENTIONS (path);
  CHECK_ERROR_MENTIONS ("durable");
  clear_last_error ();
  CHECK (journal_mark (l.j, 6 * 65536, 1) == -1);
  CHECK_ERROR_MENTIONS (path);
  CHECK (journal_mark (l.j, (65536 * 8 + 3) * UINT64_C(65536), 1) == -1);
  CHECK (journal_mark (l.j, 99 * 65536, 3 * 65536) == -1);  /* partly */
  CHECK_EQ_U64 (stats (&l).commits, s.commits);
  /* Durable before the failure: still fine, and no error. */
  clear_last_error ();
  CHECK (journal_mark (l.j, 0, 1) == 0);
  CHECK (journal_mark (l.j, 100 * 65536 + 7, 65536 - 7) == 0);
  CHECK (journal_mark (l.j, 5 * 65536, 0) == 0);
  CHECK (strcmp (last_error (), "") == 0);
  /* Nothing of the failed marks reached the file. */
  check_file (&l, __LINE__);
  layout_free (&l);
}

/* Epochs: after one begins, a region durable before goes through the
 * lock once but writes no page (its bit is on disk already); nothing
 * is truncated until the epoch is settled, and then the file holds
 * exactly the epoch's bits, written in one commit of the pages that
 * change; regions of the epoch are durable, the others need a commit
 * again.
 */
static void
test_epochs (void)
{
  static const uint64_t where[] = { 3, 1 };
  const uint64_t g = 65536, per_cluster = 65536 * 8;
  struct layout l;
  struct journal_stats s;

  layout_init (&l, 65536, 16, 2 * per_cluster, where, 5);
  CHECK (!journal_has_marks (l.j));
  MARK (&l, 0, 1, 0, 0, 1);
  MARK (&l, 10 * g, 1, 10, 10, 1);
  MARK (&l, per_cluster * g, 1, per_cluster, per_cluster, 1);
  CHECK (journal_has_marks (l.j));

  CHECK (journal_begin_epoch (l.j) == 0);
  /* Not settled yet: no new epoch, no truncation. */
  CHECK (journal_begin_epoch (l.j) == 0);
  CHECK (journal_truncate (l.j) == 0);
  check_file (&l, __LINE__);
  s = stats (&l);
  CHECK (journal_mark (l.j, 10 * g + 5, 1) == 0);
  CHECK_EQ_U64 (stats (&l).pages_written, s.pages_written);
  CHECK_EQ_U64 (stats (&l).commits, s.commits);
  MARK (&l, 20 * g, 1, 20, 20, 1);

  journal_epoch_settled (l.j);
  s = stats (&l);
  CHECK (journal_truncate (l.j) == 0);
  CHECK_EQ_U64 (stats (&l).commits - s.commits, 1);
  CHECK_EQ_U64 (stats (&l).pages_written - s.pages_written, 2);
  memset (l.expected, 0, l.file_clusters * l.cluster_size);
  expect_bits (&l, 10, 10);
  expect_bits (&l, 20, 20);
  check_file (&l, __LINE__);
  CHECK (!journal_has_marks (l.j));
  MARK (&l, 10 * g, 1, 10, 10, 0);
  MARK (&l, 20 * g, 1, 20, 20, 0);
  MARK (&l, 0, 1, 0, 0, 1);
  CHECK (journal_has_marks (l.j));
  /* Truncating again to the same epoch changes nothing on disk. */
  s = stats (&l);
  CHECK (journal_truncate (l.j) == 0);
  CHECK_EQ_U64 (stats (&l).pages_written, s.pages_written);
  check_file (&l, __LINE__);
  layout_free (&l);
}

int
main (void)
{
  CHECK (mkdtemp (dir) != NULL);
  snprintf (path, sizeof path, "%s/journal.img", dir);
  test_marks_64k ();
  test_marks_512 ();
  test_concurrent ();
  test_failure ();
  test_epochs ();
  unlink (path);
  rmdir (dir);
  return 0;
}
