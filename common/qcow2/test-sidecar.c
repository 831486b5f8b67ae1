/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Unit tests for the sidecar life cycle: create, begin tracking, store,
 * reopen, with the layout checked structure by structure.
 */
#include <config.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <zlib.h>

#include "byte-order.h"
#include "sidecar-internal.h"
#include "unit-test.h"

static char dir[] = "/tmp/test-sidecar-XXXXXX";
static char path[64];

/* Sum of the refcounts of every cluster up to the end of the file;
 * each store must leave it unchanged once the old clusters are freed.
 */
static uint64_t
total_refcount (struct sidecar *sc)
{
  uint64_t c, total = 0;
  uint64_t clusters = sc->refcounts.table_entries
    * sc->refcounts.entries_per_block;

  for (c = 0; c < clusters; ++c)
    total += refcounts_get (&sc->refcounts, c);
  return total;
}

static void
test_create_begin_store_reopen (void)
{
  const uint64_t size = (UINT64_C(1) << 30) + 12345;   /* odd tail */
  struct sidecar *sc;
  struct sidecar_bitmap *bm, *b2;
  uint64_t refs_after_first_store, granules;

  CHECK (sidecar_create (path, size) == 0);
  CHECK (sidecar_create (path, size) == -1);          /* never clobbers */

  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  CHECK_EQ_U64 (sc->header.size, size);
  CHECK_EQ_U64 (sc->nr_bitmaps, 0);
  CHECK_EQ_U64 (sc->cluster_size, 65536);

  bm = sidecar_add_bitmap (sc, "b0", 16);
  CHECK (bm != NULL);
  CHECK (sidecar_add_bitmap (sc, "b0", 16) == NULL);  /* duplicate */
  CHECK_ERROR_MENTIONS ("already exists");
  b2 = sidecar_add_bitmap (sc, "fine", 9);
  CHECK (b2 != NULL);
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (bm->entry.flags == (QCOW2_BITMAP_FLAG_AUTO | QCOW2_BITMAP_FLAG_IN_USE));
  CHECK (bm->on_disk && b2->on_disk);

  granules = sidecar_bitmap_granules (sc, bm);
  CHECK_EQ_U64 (granules, (size + 65535) / 65536);
  CHECK (dirtymap_set_range (bm->data, 0, 1) == 1);
  CHECK (dirtymap_set_range (bm->data, granules - 1, 1) == 1);
  CHECK (dirtymap_set_range (b2->data, 12345, 100000) == 1);
  CHECK (sidecar_store (sc) == 0);
  CHECK (bm->entry.flags == QCOW2_BITMAP_FLAG_AUTO);
  refs_after_first_store = total_refcount (sc);
  sidecar_close (sc);

  /* Reopened, both bitmaps are consistent with the same bits. */
  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  CHECK_EQ_U64 (sc->nr_bitmaps, 2);
  bm = sidecar_find (sc, "b0");
  b2 = sidecar_find (sc, "fine");
  CHECK (bm && b2 && !bm->inconsistent && !b2->inconsistent);
  CHECK_EQ_U64 (dirtymap_count (bm->data), 2);
  CHECK (dirtymap_test (bm->data, granules - 1));
  CHECK_EQ_U64 (dirtymap_count (b2->data), 100000);
  CHECK_EQ_U64 (dirtymap_next_set (b2->data, 0), 12345);

  /* Track only b0 this time; the in-place IN_USE path is taken. */
  bm->recording = true;
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (dirtymap_set_range (bm->data, 5, 1) == 1);
  CHECK (sidecar_store (sc) == 0);
  /* Freed clusters were reused: no growth in referenced clusters. */
  CHECK_EQ_U64 (total_refcount (sc), refs_after_first_store);
  sidecar_close (sc);

  sc = sidecar_open (path, false);
  CHECK (sc != NULL);
  bm = sidecar_find (sc, "b0");
  CHECK_EQ_U64 (dirtymap_count (bm->data), 3);
  CHECK (sidecar_find (sc, "fine")->entry.flags == QCOW2_BITMAP_FLAG_AUTO);
  sidecar_close (sc);
}

static void
test_in_use_left_behind (void)
{
  struct sidecar *sc = sidecar_open (path, true);
  struct sidecar_bitmap *bm;

  CHECK (sc != NULL);
  sidecar_find (sc, "b0")->recording = true;
  CHECK (sidecar_begin_tracking (sc) == 0);
  sidecar_close (sc);                 /* "crash": no store */

  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  bm = sidecar_find (sc, "b0");
  CHECK (bm->inconsistent && bm->data == NULL);
  CHECK (!sidecar_find (sc, "fine")->inconsistent);
  /* Storing the others writes the inconsistent entry back unchanged. */
  sidecar_find (sc, "fine")->recording = true;
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);

  sc = sidecar_open (path, false);
  CHECK (sc != NULL);
  CHECK (sidecar_find (sc, "b0")->inconsistent);
  CHECK (!sidecar_find (sc, "fine")->inconsistent);
  sidecar_close (sc);
}

/* A table entry aliasing the refcount table must be refused before a
 * store could free that cluster; the file is left untouched.
 */
static void
test_overlap_refused (void)
{
  struct sidecar *sc = sidecar_open (path, false);
  uint64_t table_offset, refcount_table;
  uint8_t entry[8];
  int fd;

  CHECK (sc != NULL);
  table_offset = sidecar_find (sc, "fine")->entry.table_offset;
  refcount_table = sc->header.refcount_table_offset;
  sidecar_close (sc);

  fd = open (path, O_RDWR);
  CHECK (fd >= 0);
  store_be64 (entry, refcount_table);
  CHECK (pwrite (fd, entry, 8, table_offset) == 8);
  close (fd);

  clear_last_error ();
  CHECK (sidecar_open (path, true) == NULL);
  CHECK_ERROR_MENTIONS ("overlaps another structure");
  CHECK_ERROR_MENTIONS ("bitmap 'fine'");
}

static void
test_limits (void)
{
  char name[1100];
  struct sidecar *sc;

  unlink (path);
  CHECK (sidecar_create (path, UINT64_C(1) << 50) == 0);  /* 1 PiB */
  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  /* 64K granularity needs 2 GiB of bitmap: QEMU's limit is 512 MiB. */
  CHECK (sidecar_add_bitmap (sc, "big", 16) == NULL);
  CHECK_ERROR_MENTIONS ("dirtybitmap-granularity=262144");
  CHECK (sidecar_add_bitmap (sc, "big", 18) != NULL);
  memset (name, 'n', 1024);
  name[1024] = '\0';
  CHECK (sidecar_add_bitmap (sc, name, 18) == NULL);
  CHECK_ERROR_MENTIONS ("1 to 1023");
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);
}

/*----------------------------------------------------------------------
 * Crash safety: the journal, its record, and recovery at open.
 */

#define DISK_SIZE ((UINT64_C(1) << 30) + 12345)     /* odd tail */

static struct qcow2_extension *
find_ext (struct sidecar *sc, uint32_t type)
{
  size_t i;

  for (i = 0; i < sc->nr_exts; ++i)
    if (sc->exts[i].type == type)
      return &sc->exts[i];
  return NULL;
}

/* Where the extension TYPE's data lies in the file's cluster 0, or 0
 * if it is not there (walked on disk, not through the loader).
 */
static uint64_t
ext_offset_on_disk (uint32_t type, uint32_t *length)
{
  uint8_t cluster[65536];
  size_t off;
  int fd = open (path, O_RDONLY);

  CHECK (fd >= 0);
  CHECK (pread (fd, cluster, sizeof cluster, 0) == sizeof cluster);
  close (fd);
  off = load_be32 (&cluster[100]);              /* header_length */
  while (off + 8 <= sizeof cluster) {
    uint32_t t = load_be32 (&cluster[off]), len = load_be32 (&cluster[off + 4]);

    if (t == QCOW2_EXT_END)
      return 0;
    if (t == type) {
      *length = len;
      return off + 8;
    }
    off += 8 + (len + 7) / 8 * 8;
  }
  return 0;
}

static uint64_t
autoclear_on_disk (void)
{
  uint8_t raw[8];
  int fd = open (path, O_RDONLY);

  CHECK (fd >= 0);
  CHECK (pread (fd, raw, 8, QCOW2_HEADER_AUTOCLEAR_OFFSET) == 8);
  close (fd);
  return load_be64 (raw);
}

static void
patch_file (uint64_t offset, const void *buf, size_t len)
{
  int fd = open (path, O_RDWR);

  CHECK (fd >= 0);
  CHECK (pwrite (fd, buf, len, offset) == (ssize_t) len);
  CHECK (fdatasync (fd) == 0);
  close (fd);
}

/* Every cluster's refcount must be exactly the number of structures
 * in it: no leak, no cluster in use at refcount 0.  Needs every
 * bitmap's table loaded (open with SIDECAR_LOAD_IN_USE if some are in
 * use); a sidecar we created has no L2 tables.
 */
static void
check_refcounts_exact (struct sidecar *sc)
{
  const uint64_t cs = sc->cluster_size;
  struct stat st;
  uint64_t nr_clusters, covered, c, i;
  uint8_t *expected;
  const struct sidecar_bitmap *journals[2] = { sc->journal, sc->old_journal };

  CHECK (fstat (sc->fd, &st) == 0);
  nr_clusters = (st.st_size + cs - 1) / cs;
  expected = calloc (nr_clusters, 1);
  CHECK (expected != NULL);

#define COUNT_EXTENT(offset, bytes)                                     \
  do {                                                                  \
    uint64_t o_ = (offset), e_ = o_ + (bytes);                          \
    CHECK (o_ % cs == 0);                                               \
    for (; o_ < e_; o_ += cs) {                                         \
      CHECK (o_ / cs < nr_clusters);                                    \
      expected[o_ / cs]++;                                              \
    }                                                                   \
  } while (0)

  COUNT_EXTENT (0, cs);
  COUNT_EXTENT (sc->header.refcount_table_offset,
                (uint64_t) sc->header.refcount_table_clusters * cs);
  for (i = 0; i < sc->refcounts.table_entries; ++i)
    if (sc->refcounts.table[i])
      COUNT_EXTENT (sc->refcounts.table[i], cs);
  if (sc->header.l1_size)
    COUNT_EXTENT (sc->header.l1_table_offset,
                  ((uint64_t) sc->header.l1_size * 8 + cs - 1) / cs * cs);
  if (sc->dir_size)
    COUNT_EXTENT (sc->dir_offset, (sc->dir_size + cs - 1) / cs * cs);
  for (i = 0; i < sc->nr_bitmaps + 2; ++i) {
    const struct sidecar_bitmap *bm =
      i < sc->nr_bitmaps ? sc->bitmaps[i] : journals[i - sc->nr_bitmaps];
    uint64_t k;

    if (bm == NULL)
      continue;
    CHECK (bm->table != NULL);
    COUNT_EXTENT (bm->entry.table_offset,
                  ((uint64_t) bm->entry.table_size * 8 + cs - 1) / cs * cs);
    for (k = 0; k < bm->entry.table_size; ++k)
      if (bm->table[k])
        COUNT_EXTENT (bm->table[k], cs);
  }
#undef COUNT_EXTENT

  /* Up to the end of the last refcount block: past it every cluster
   * reads as free.
   */
  covered = 0;
  for (i = 0; i < sc->refcounts.table_entries; ++i)
    if (sc->refcounts.table[i])
      covered = (i + 1) * sc->refcounts.entries_per_block;
  for (c = 0; c < (covered > nr_clusters ? covered : nr_clusters); ++c) {
    uint64_t want = c < nr_clusters ? expected[c] : 0;
    uint64_t have = refcounts_get (&sc->refcounts, c);

    if (have != want) {
      fprintf (stderr, "%s:%d: cluster %" PRIu64 " (0x%" PRIx64 ") has "
               "refcount %" PRIu64 ", expected %" PRIu64 "\n", __FILE__,
               __LINE__, c, c * cs, have, want);
      exit (EXIT_FAILURE);
    }
  }
  free (expected);
}

static bool
have_qemu_img (void)
{
  return system ("qemu-img --version >/dev/null 2>&1") == 0;
}

/* A second opinion from QEMU, if qemu-img is installed. */
static void
qemu_img_check (void)
{
  char cmd[256];

  if (!have_qemu_img ())
    return;
  snprintf (cmd, sizeof cmd, "qemu-img check -q '%s'", path);
  if (system (cmd) != 0) {
    fprintf (stderr, "%s:%d: %s failed\n", __FILE__, __LINE__, cmd);
    exit (EXIT_FAILURE);
  }
}

/* ACTUAL must hold exactly the bits of EXPECTED. */
#define CHECK_SAME_BITS(actual, expected)                               \
  do {                                                                  \
    const struct dirtymap *act_ = (actual), *exp_ = (expected);         \
    uint64_t b_;                                                        \
    CHECK (act_ != NULL);                                               \
    CHECK_EQ_U64 (dirtymap_nr_bits (act_), dirtymap_nr_bits (exp_));    \
    CHECK_EQ_U64 (dirtymap_count (act_), dirtymap_count (exp_));        \
    for (b_ = dirtymap_next_set (exp_, 0); b_ < dirtymap_nr_bits (exp_); \
         b_ = dirtymap_next_set (exp_, b_ + 1))                         \
      CHECK_EQ_U64 (dirtymap_next_set (act_, b_), b_);                  \
  } while (0)

/* Set journal bits FIRST..FIRST+COUNT-1 straight in the data clusters
 * of this session's journal, as the journal engine does (bit j of
 * byte k is bit 8k + j), and flush them.
 */
static void
journal_write_bits (struct sidecar *sc, uint64_t first, uint64_t count)
{
  const uint64_t bits_per_cluster = sc->cluster_size * 8;
  uint64_t bit;

  CHECK (sc->journal != NULL);
  for (bit = first; bit < first + count; ++bit) {
    uint64_t k = bit / bits_per_cluster;
    uint64_t off = sc->journal->table[k] + (bit % bits_per_cluster) / 8;
    uint8_t byte;

    CHECK (k < sc->journal->entry.table_size);
    CHECK (pread (sc->fd, &byte, 1, off) == 1);
    byte |= 1 << (bit % 8);
    CHECK (pwrite (sc->fd, &byte, 1, off) == 1);
  }
  CHECK (fdatasync (sc->fd) == 0);
}

/* What recovery must make of journal bits FIRST..FIRST+COUNT-1 of
 * granularity JBITS in a bitmap of granularity BBITS: set in EXPECTED.
 */
static void
expect_journal_bits (struct dirtymap *expected, unsigned bbits,
                     unsigned jbits, uint64_t first, uint64_t count)
{
  uint64_t bit;

  for (bit = first; bit < first + count; ++bit) {
    if (jbits >= bbits)
      CHECK (dirtymap_set_range (expected, bit << (jbits - bbits),
                                 UINT64_C(1) << (jbits - bbits)) != -1);
    else
      CHECK (dirtymap_set_range (expected, bit >> (bbits - jbits), 1) != -1);
  }
}

/* The record on disk names this session's journal and exactly the
 * recording bitmaps.
 */
static void
check_record (struct sidecar *sc, size_t nr, struct sidecar_bitmap **protected)
{
  struct qcow2_extension *ext = find_ext (sc, QCOW2_EXT_JOURNAL);
  struct qcow2_journal_ext rec;
  const char *why = NULL;
  uint32_t disk_len = 0;
  uint64_t disk_off = ext_offset_on_disk (QCOW2_EXT_JOURNAL, &disk_len);
  uint8_t *disk = malloc (ext ? ext->length : 1);
  size_t i;
  int fd;

  CHECK (ext != NULL && disk != NULL);
  CHECK (disk_off != 0);
  CHECK_EQ_U64 (disk_len, ext->length);
  fd = open (path, O_RDONLY);
  CHECK (fd >= 0);
  CHECK (pread (fd, disk, disk_len, disk_off) == (ssize_t) disk_len);
  close (fd);
  CHECK (memcmp (disk, ext->data, disk_len) == 0);
  free (disk);

  CHECK (qcow2_journal_ext_decode (ext, sc->header.cluster_bits, &rec, &why)
         == 0);
  CHECK_EQ_U64 (rec.journal_table_offset, sc->journal->entry.table_offset);
  CHECK_EQ_U64 (rec.nr_protected, nr);
  for (i = 0; i < nr; ++i)
    CHECK_EQ_U64 (rec.protected_tables[i], protected[i]->entry.table_offset);
  free (rec.protected_tables);
  CHECK ((sc->header.autoclear_features &
          (QCOW2_AUTOCLEAR_JOURNAL | QCOW2_AUTOCLEAR_BITMAPS)) ==
         (QCOW2_AUTOCLEAR_JOURNAL | QCOW2_AUTOCLEAR_BITMAPS));
  CHECK_EQ_U64 (autoclear_on_disk (), sc->header.autoclear_features);
}

/* The journal of this session: in the file, in use, disabled, every
 * cluster preallocated, zeroed and counted, not in the list of
 * bitmaps.
 */
static void
check_journal_layout (struct sidecar *sc, unsigned jbits)
{
  const struct sidecar_bitmap *j = sc->journal;
  uint8_t *buf = malloc (sc->cluster_size), *zero = calloc (1, sc->cluster_size);
  struct stat st;
  uint64_t k;

  CHECK (j != NULL && buf && zero);
  CHECK (fstat (sc->fd, &st) == 0);
  CHECK (strcmp (j->entry.name, QCOW2_JOURNAL_NAME) == 0);
  CHECK_EQ_U64 (j->entry.granularity_bits, jbits);
  CHECK_EQ_U64 (j->entry.flags, QCOW2_BITMAP_FLAG_IN_USE);
  CHECK_EQ_U64 (j->entry.table_size,
                qcow2_bitmap_table_size (DISK_SIZE, jbits, 16));
  CHECK (sidecar_find (sc, QCOW2_JOURNAL_NAME) == NULL);
  for (k = 0; k < j->entry.table_size; ++k) {
    CHECK (j->table[k] != 0);
    CHECK (j->table[k] % sc->cluster_size == 0);
    CHECK (j->table[k] + sc->cluster_size <= (uint64_t) st.st_size);
    CHECK_EQ_U64 (refcounts_get (&sc->refcounts,
                                 j->table[k] / sc->cluster_size), 1);
    CHECK (pread (sc->fd, buf, sc->cluster_size, j->table[k])
           == (ssize_t) sc->cluster_size);
    CHECK (memcmp (buf, zero, sc->cluster_size) == 0);
  }
  free (buf);
  free (zero);
}

/* After the store that follows a recovery: no journal, no record, no
 * journal autoclear bit, on disk as in memory.  (journal_distrust is
 * what the open found, so it is checked after opens only.)
 */
static void
check_no_journal (struct sidecar *sc)
{
  uint32_t len;

  CHECK (sc->journal == NULL && sc->old_journal == NULL);
  CHECK (sidecar_find (sc, QCOW2_JOURNAL_NAME) == NULL);
  CHECK (find_ext (sc, QCOW2_EXT_JOURNAL) == NULL);
  CHECK (ext_offset_on_disk (QCOW2_EXT_JOURNAL, &len) == 0);
  CHECK ((sc->header.autoclear_features & QCOW2_AUTOCLEAR_JOURNAL) == 0);
  CHECK ((autoclear_on_disk () & QCOW2_AUTOCLEAR_JOURNAL) == 0);
}

/* Bitmaps of granularity 16 and 9 protected by a 1 MiB journal (one
 * journal bit covers 16, resp. 2048, of theirs), a bitmap created in
 * the session that crashed, one not recording and one left in use
 * without protection; then a second crash in the session that follows
 * the recovery.
 */
static void
test_crash_recovery (void)
{
  struct sidecar *sc;
  struct sidecar_bitmap *b16, *b9, *other, *stale, *nw, *prot[3];
  struct dirtymap *e16, *e9, *enew;
  uint64_t g16, g9;

  unlink (path);
  CHECK (sidecar_create (path, DISK_SIZE) == 0);

  /* Session 1: stored bits, no journal. */
  sc = sidecar_open (path, SIDECAR_WRITABLE);
  CHECK (sc != NULL);
  b16 = sidecar_add_bitmap (sc, "b16", 16);
  b9 = sidecar_add_bitmap (sc, "b9", 9);
  other = sidecar_add_bitmap (sc, "other", 16);
  stale = sidecar_add_bitmap (sc, "stale", 16);
  CHECK (b16 && b9 && other && stale);
  g16 = sidecar_bitmap_granules (sc, b16);
  g9 = sidecar_bitmap_granules (sc, b9);
  CHECK_EQ_U64 (g16, 16385);
  CHECK_EQ_U64 (g9, 2097177);
  e16 = dirtymap_new (g16);
  e9 = dirtymap_new (g9);
  enew = dirtymap_new (g16);
  CHECK (e16 && e9 && enew);
  CHECK (dirtymap_set_range (b16->data, 100, 100) == 1);
  CHECK (dirtymap_set_range (e16, 100, 100) == 1);
  CHECK (dirtymap_set_range (b9->data, 12345, 100000) == 1);
  CHECK (dirtymap_set_range (e9, 12345, 100000) == 1);
  CHECK (dirtymap_set_range (other->data, 7, 1) == 1);
  sc->journal_bits = 0;
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (sc->journal == NULL);
  CHECK (find_ext (sc, QCOW2_EXT_JOURNAL) == NULL);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);

  /* Session 1b: "stale" left in use by a crash without a journal. */
  sc = sidecar_open (path, SIDECAR_WRITABLE);
  CHECK (sc != NULL);
  sidecar_find (sc, "stale")->recording = true;
  CHECK (sidecar_begin_tracking (sc) == 0);
  sidecar_close (sc);

  /* Session 2: a journal of 1 MiB granules; crash. */
  sc = sidecar_open (path, SIDECAR_WRITABLE);
  CHECK (sc != NULL);
  b16 = sidecar_find (sc, "b16");
  b9 = sidecar_find (sc, "b9");
  CHECK (b16 && b9 && !b16->inconsistent && !b9->inconsistent);
  CHECK (sidecar_find (sc, "stale")->inconsistent);
  CHECK (!b16->recovered && !b16->modified);
  CHECK_SAME_BITS (b16->data, e16);
  b16->recording = b9->recording = true;
  nw = sidecar_add_bitmap (sc, "new", 16);
  CHECK (nw != NULL);
  sc->journal_bits = 20;
  CHECK (sidecar_begin_tracking (sc) == 0);
  check_journal_layout (sc, 20);
  CHECK_EQ_U64 (sc->journal->entry.table_size, 1);    /* 1025 bits */
  prot[0] = b16;
  prot[1] = b9;
  prot[2] = nw;
  check_record (sc, 3, prot);
  CHECK (b16->entry.flags & QCOW2_BITMAP_FLAG_IN_USE);
  CHECK (nw->entry.flags & QCOW2_BITMAP_FLAG_IN_USE);
  CHECK (!(sidecar_find (sc, "other")->entry.flags & QCOW2_BITMAP_FLAG_IN_USE));
  /* Bits set only in memory are lost in a crash: the journal is what
   * counts.
   */
  CHECK (dirtymap_set_range (b16->data, 5000, 10) == 1);
  journal_write_bits (sc, 0, 1);        /* b16 0-15, b9 0-2047 */
  journal_write_bits (sc, 3, 1);
  journal_write_bits (sc, 500, 3);      /* a run */
  journal_write_bits (sc, 1024, 1);     /* the last, partial, granule */
  expect_journal_bits (e16, 16, 20, 0, 1);
  expect_journal_bits (e16, 16, 20, 3, 1);
  expect_journal_bits (e16, 16, 20, 500, 3);
  expect_journal_bits (e16, 16, 20, 1024, 1);
  expect_journal_bits (e9, 9, 20, 0, 1);
  expect_journal_bits (e9, 9, 20, 3, 1);
  expect_journal_bits (e9, 9, 20, 500, 3);
  expect_journal_bits (e9, 9, 20, 1024, 1);
  expect_journal_bits (enew, 16, 20, 0, 1);
  expect_journal_bits (enew, 16, 20, 3, 1);
  expect_journal_bits (enew, 16, 20, 500, 3);
  expect_journal_bits (enew, 16, 20, 1024, 1);
  CHECK (dirtymap_test (e16, 16384) && !dirtymap_test (e16, 16383));
  CHECK_EQ_U64 (dirtymap_count (e9), 100000 + 5 * 2048 + 25);
  sidecar_close (sc);                   /* crash: no store */

  /* Read-only, and writable: rebuilt, exactly. */
  for (int writable = 0; writable <= 1; ++writable) {
    sc = sidecar_open (path, writable ? SIDECAR_WRITABLE : 0);
    CHECK (sc != NULL);
    CHECK (sc->journal_distrust == NULL);
    CHECK (sc->old_journal != NULL);
    CHECK (sc->journal == NULL);
    CHECK (sidecar_find (sc, QCOW2_JOURNAL_NAME) == NULL);
    CHECK_EQ_U64 (sc->nr_bitmaps, 5);
    b16 = sidecar_find (sc, "b16");
    b9 = sidecar_find (sc, "b9");
    nw = sidecar_find (sc, "new");
    other = sidecar_find (sc, "other");
    stale = sidecar_find (sc, "stale");
    CHECK (b16->recovered && b16->modified && !b16->inconsistent);
    CHECK (b9->recovered && b9->modified && !b9->inconsistent);
    CHECK (nw->recovered && nw->modified && !nw->inconsistent);
    CHECK (!other->recovered && !other->modified && !other->inconsistent);
    CHECK (!stale->recovered && !stale->modified && stale->inconsistent);
    CHECK (stale->data == NULL);
    CHECK_SAME_BITS (b16->data, e16);
    CHECK_SAME_BITS (b9->data, e9);
    CHECK_SAME_BITS (nw->data, enew);
    CHECK_EQ_U64 (dirtymap_count (other->data), 1);
    CHECK (dirtymap_test (other->data, 7));
    sidecar_close (sc);
  }
  sc = sidecar_open (path, SIDECAR_LOAD_IN_USE);
  CHECK (sc != NULL);
  check_refcounts_exact (sc);
  sidecar_close (sc);
  /* QEMU reading the file leaves the journal trusted. */
  qemu_img_check ();
  sc = sidecar_open (path, 0);
  CHECK (sc != NULL);
  CHECK (sc->journal_distrust == NULL);
  CHECK (sidecar_find (sc, "b16")->recovered);
  CHECK_SAME_BITS (sidecar_find (sc, "b16")->data, e16);
  sidecar_close (sc);

  /* Session 4: track b16 and new again, not b9; crash again.  The
   * begin stores the rebuilt bitmaps, and the new record protects
   * their new tables.
   */
  sc = sidecar_open (path, SIDECAR_WRITABLE);
  CHECK (sc != NULL);
  b16 = sidecar_find (sc, "b16");
  b9 = sidecar_find (sc, "b9");
  nw = sidecar_find (sc, "new");
  b16->recording = nw->recording = true;
  sc->journal_bits = 20;
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (sc->old_journal == NULL);
  check_journal_layout (sc, 20);
  prot[0] = b16;
  prot[1] = nw;
  check_record (sc, 2, prot);
  CHECK (!b9->modified);          /* stored by the begin */
  CHECK (!(b9->entry.flags & QCOW2_BITMAP_FLAG_IN_USE));
  CHECK (!b16->modified && !nw->modified);
  journal_write_bits (sc, 700, 1);
  expect_journal_bits (e16, 16, 20, 700, 1);
  expect_journal_bits (enew, 16, 20, 700, 1);
  sidecar_close (sc);

  sc = sidecar_open (path, SIDECAR_LOAD_IN_USE);
  CHECK (sc != NULL);
  b16 = sidecar_find (sc, "b16");
  b9 = sidecar_find (sc, "b9");
  nw = sidecar_find (sc, "new");
  CHECK (b16->recovered && nw->recovered);
  CHECK (!b9->recovered && !b9->inconsistent && !b9->modified);
  CHECK_SAME_BITS (b16->data, e16);
  CHECK_SAME_BITS (nw->data, enew);
  CHECK_SAME_BITS (b9->data, e9);
  check_refcounts_exact (sc);
  sidecar_close (sc);

  /* Session 5: nothing recording; the store writes the rebuilt bitmaps
   * and drops the journal.
   */
  sc = sidecar_open (path, SIDECAR_WRITABLE);
  CHECK (sc != NULL);
  CHECK (sidecar_store (sc) == 0);
  check_no_journal (sc);
  CHECK (!sidecar_find (sc, "b16")->modified);
  sidecar_close (sc);

  sc = sidecar_open (path, SIDECAR_LOAD_IN_USE);
  CHECK (sc != NULL);
  CHECK (sc->journal_distrust == NULL);
  check_no_journal (sc);
  CHECK_EQ_U64 (sc->nr_bitmaps, 5);
  b16 = sidecar_find (sc, "b16");
  b9 = sidecar_find (sc, "b9");
  nw = sidecar_find (sc, "new");
  CHECK (!b16->inconsistent && !b16->recovered && !b16->modified);
  CHECK (!nw->inconsistent && !nw->recovered && !nw->modified);
  CHECK (b16->entry.flags == QCOW2_BITMAP_FLAG_AUTO);
  CHECK (nw->entry.flags == QCOW2_BITMAP_FLAG_AUTO);
  CHECK_SAME_BITS (b16->data, e16);
  CHECK_SAME_BITS (b9->data, e9);
  CHECK_SAME_BITS (nw->data, enew);
  CHECK (sidecar_find (sc, "stale")->inconsistent);
  check_refcounts_exact (sc);
  sidecar_close (sc);
  qemu_img_check ();

  dirtymap_free (e16);
  dirtymap_free (e9);
  dirtymap_free (enew);
}

/* A journal finer than the bitmaps: 512-byte marks over five clusters
 * of journal, folded into bitmaps of 64 KiB and 512 bytes.
 */
static void
test_crash_recovery_fine_journal (void)
{
  struct sidecar *sc;
  struct sidecar_bitmap *b16, *b9, *prot[2];
  struct dirtymap *e16, *e9;
  const uint64_t per_cluster = 65536 * 8;

  unlink (path);
  CHECK (sidecar_create (path, DISK_SIZE) == 0);
  sc = sidecar_open (path, SIDECAR_WRITABLE);
  CHECK (sc != NULL);
  b16 = sidecar_add_bitmap (sc, "b16", 16);
  b9 = sidecar_add_bitmap (sc, "b9", 9);
  CHECK (b16 && b9);
  e16 = dirtymap_new (sidecar_bitmap_granules (sc, b16));
  e9 = dirtymap_new (sidecar_bitmap_granules (sc, b9));
  CHECK (e16 && e9);
  /* Stored by the begin itself: a new bitmap with bits already. */
  CHECK (dirtymap_set_range (b16->data, 3, 2) == 1);
  CHECK (dirtymap_set_range (e16, 3, 2) == 1);
  b16->modified = true;
  sc->journal_bits = 9;
  CHECK (sidecar_begin_tracking (sc) == 0);
  check_journal_layout (sc, 9);
  CHECK_EQ_U64 (sc->journal->entry.table_size, 5);   /* 2097177 bits */
  prot[0] = b16;
  prot[1] = b9;
  check_record (sc, 2, prot);
  journal_write_bits (sc, 1000, 1);
  journal_write_bits (sc, per_cluster - 8, 20);       /* two clusters */
  journal_write_bits (sc, 3 * per_cluster + 5, 1);
  journal_write_bits (sc, 2097176, 1);                /* the last one */
  expect_journal_bits (e16, 16, 9, 1000, 1);
  expect_journal_bits (e16, 16, 9, per_cluster - 8, 20);
  expect_journal_bits (e16, 16, 9, 3 * per_cluster + 5, 1);
  expect_journal_bits (e16, 16, 9, 2097176, 1);
  expect_journal_bits (e9, 9, 9, 1000, 1);
  expect_journal_bits (e9, 9, 9, per_cluster - 8, 20);
  expect_journal_bits (e9, 9, 9, 3 * per_cluster + 5, 1);
  expect_journal_bits (e9, 9, 9, 2097176, 1);
  /* 3, 4 stored; 1000 >> 7; a run across 4095/4096; 12288; 16384. */
  CHECK_EQ_U64 (dirtymap_count (e16), 2 + 1 + 2 + 1 + 1);
  CHECK_EQ_U64 (dirtymap_count (e9), 1 + 20 + 1 + 1);
  sidecar_close (sc);

  sc = sidecar_open (path, 0);
  CHECK (sc != NULL);
  b16 = sidecar_find (sc, "b16");
  b9 = sidecar_find (sc, "b9");
  CHECK (b16->recovered && b9->recovered);
  CHECK_SAME_BITS (b16->data, e16);
  CHECK_SAME_BITS (b9->data, e9);
  check_refcounts_exact (sc);
  sidecar_close (sc);

  sc = sidecar_open (path, SIDECAR_WRITABLE);
  CHECK (sc != NULL);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);
  sc = sidecar_open (path, 0);
  CHECK (sc != NULL);
  CHECK (sc->journal_distrust == NULL);
  check_no_journal (sc);
  CHECK_SAME_BITS (sidecar_find (sc, "b16")->data, e16);
  CHECK_SAME_BITS (sidecar_find (sc, "b9")->data, e9);
  check_refcounts_exact (sc);
  sidecar_close (sc);
  qemu_img_check ();
  dirtymap_free (e16);
  dirtymap_free (e9);
}

/* A new sidecar, open for writing, with a new bitmap "b16" in *BM. */
static struct sidecar *
new_sidecar_with_b16 (struct sidecar_bitmap **bm)
{
  struct sidecar *sc;

  unlink (path);
  CHECK (sidecar_create (path, DISK_SIZE) == 0);
  sc = sidecar_open (path, SIDECAR_WRITABLE);
  CHECK (sc != NULL);
  *bm = sidecar_add_bitmap (sc, "b16", 16);
  CHECK (*bm != NULL);
  return sc;
}

/* A fresh sidecar whose bitmap "b16" (bits 100-199 stored) was
 * protected by a 1 MiB journal with bit 3 marked when the session
 * crashed.  Returns the journal's table offset.
 */
static uint64_t
crashed_sidecar (void)
{
  struct sidecar *sc;
  struct sidecar_bitmap *bm;
  uint64_t journal_table;

  sc = new_sidecar_with_b16 (&bm);
  CHECK (dirtymap_set_range (bm->data, 100, 100) == 1);
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);

  sc = sidecar_open (path, SIDECAR_WRITABLE);
  CHECK (sc != NULL);
  sidecar_find (sc, "b16")->recording = true;
  sc->journal_bits = 20;
  CHECK (sidecar_begin_tracking (sc) == 0);
  journal_write_bits (sc, 3, 1);
  journal_table = sc->journal->entry.table_offset;
  sidecar_close (sc);

  /* As it is, it is trusted. */
  sc = sidecar_open (path, 0);
  CHECK (sc != NULL);
  CHECK (sc->journal_distrust == NULL);
  bm = sidecar_find (sc, "b16");
  CHECK (bm->recovered && !bm->inconsistent);
  CHECK_EQ_U64 (dirtymap_count (bm->data), 100 + 16);
  sidecar_close (sc);
  return journal_table;
}

/* The journal not trusted: b16 stays in use, WHY says why, and the
 * next store drops the journal and its record, leaving b16 in use.
 */
static void
check_distrusted (const char *why)
{
  struct sidecar *sc;
  struct sidecar_bitmap *bm;

  sc = sidecar_open (path, 0);
  CHECK (sc != NULL);
  CHECK (sc->journal_distrust != NULL);
  if (strstr (sc->journal_distrust, why) == NULL) {
    fprintf (stderr, "%s:%d: \"%s\" does not mention \"%s\"\n", __FILE__,
             __LINE__, sc->journal_distrust, why);
    exit (EXIT_FAILURE);
  }
  bm = sidecar_find (sc, "b16");
  CHECK (bm != NULL);
  CHECK (bm->inconsistent && !bm->recovered && !bm->modified);
  CHECK (bm->data == NULL);
  CHECK (sidecar_find (sc, QCOW2_JOURNAL_NAME) == NULL);
  CHECK (sc->old_journal != NULL);
  CHECK_EQ_U64 (sc->nr_bitmaps, 1);
  sidecar_close (sc);

  sc = sidecar_open (path, SIDECAR_WRITABLE);
  CHECK (sc != NULL);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);
  sc = sidecar_open (path, SIDECAR_LOAD_IN_USE);
  CHECK (sc != NULL);
  CHECK (sc->journal_distrust == NULL);
  check_no_journal (sc);
  CHECK_EQ_U64 (sc->nr_bitmaps, 1);
  bm = sidecar_find (sc, "b16");
  CHECK (bm->inconsistent && bm->data == NULL && bm->table != NULL);
  check_refcounts_exact (sc);
  sidecar_close (sc);
  qemu_img_check ();
}

static void
test_journal_distrusted (void)
{
  uint64_t journal_table, off, autoclear;
  uint32_t len;
  uint8_t raw[8], *rec;
  int fd;

  /* Another program opened the file for writing: our autoclear bit is
   * clear (QEMU's bitmaps bit is kept, as QEMU would).
   */
  crashed_sidecar ();
  autoclear = autoclear_on_disk ();
  CHECK (autoclear & QCOW2_AUTOCLEAR_JOURNAL);
  store_be64 (raw, autoclear & ~QCOW2_AUTOCLEAR_JOURNAL);
  patch_file (QCOW2_HEADER_AUTOCLEAR_OFFSET, raw, 8);
  check_distrusted ("another program");

  /* A torn record: any byte of it changed. */
  crashed_sidecar ();
  off = ext_offset_on_disk (QCOW2_EXT_JOURNAL, &len);
  CHECK (off != 0);
  CHECK_EQ_U64 (len, qcow2_journal_ext_size (1));
  fd = open (path, O_RDWR);
  CHECK (fd >= 0);
  CHECK (pread (fd, raw, 1, off + 17) == 1);   /* the protected table */
  raw[0] ^= 0x04;
  CHECK (pwrite (fd, raw, 1, off + 17) == 1);
  close (fd);
  check_distrusted ("crc32");

  /* A record that names another journal (crc recomputed): "gone". */
  journal_table = crashed_sidecar ();
  off = ext_offset_on_disk (QCOW2_EXT_JOURNAL, &len);
  rec = malloc (len);
  CHECK (rec != NULL);
  fd = open (path, O_RDWR);
  CHECK (fd >= 0);
  CHECK (pread (fd, rec, len, off) == (ssize_t) len);
  CHECK_EQ_U64 (load_be64 (&rec[8]), journal_table);
  store_be64 (&rec[8], journal_table + 65536);
  store_be32 (&rec[len - 4], crc32 (crc32 (0, Z_NULL, 0), rec, len - 4));
  CHECK (pwrite (fd, rec, len, off) == (ssize_t) len);
  close (fd);
  free (rec);
  check_distrusted ("is gone");

  /* QEMU itself writing the file (here adding a bitmap) clears our
   * autoclear bit and keeps the record it does not know.
   */
  if (have_qemu_img ()) {
    char cmd[256];
    struct sidecar *sc;

    crashed_sidecar ();
    snprintf (cmd, sizeof cmd, "qemu-img bitmap --add '%s' byqemu", path);
    CHECK (system (cmd) == 0);
    CHECK ((autoclear_on_disk () & QCOW2_AUTOCLEAR_JOURNAL) == 0);
    CHECK (ext_offset_on_disk (QCOW2_EXT_JOURNAL, &len) != 0);
    sc = sidecar_open (path, 0);
    CHECK (sc != NULL);
    CHECK (sc->journal_distrust != NULL &&
           strstr (sc->journal_distrust, "another program"));
    CHECK (sidecar_find (sc, "b16")->inconsistent);
    CHECK (!sidecar_find (sc, "byqemu")->inconsistent);
    sidecar_close (sc);
  }
}

/* A bitmap left in use beyond recovery, reset to all dirty. */
static void
test_reset_in_use (void)
{
  struct sidecar *sc;
  struct sidecar_bitmap *bm;
  uint64_t granules, autoclear, old_table;
  uint8_t raw[8];

  crashed_sidecar ();
  autoclear = autoclear_on_disk ();
  store_be64 (raw, autoclear & ~QCOW2_AUTOCLEAR_JOURNAL);
  patch_file (QCOW2_HEADER_AUTOCLEAR_OFFSET, raw, 8);

  /* Its table is needed, and only loaded on demand. */
  sc = sidecar_open (path, SIDECAR_WRITABLE);
  CHECK (sc != NULL);
  bm = sidecar_find (sc, "b16");
  CHECK (bm->inconsistent && bm->table == NULL);
  clear_last_error ();
  CHECK (sidecar_reset_bitmap (sc, bm) == -1);
  CHECK_ERROR_MENTIONS ("not loaded");
  CHECK (bm->inconsistent && !bm->modified && bm->data == NULL);
  sidecar_close (sc);

  sc = sidecar_open (path, SIDECAR_WRITABLE | SIDECAR_LOAD_IN_USE);
  CHECK (sc != NULL);
  bm = sidecar_find (sc, "b16");
  CHECK (bm->inconsistent && bm->table != NULL && bm->data == NULL);
  old_table = bm->entry.table_offset;
  CHECK (sidecar_reset_bitmap (sc, bm) == 0);
  granules = sidecar_bitmap_granules (sc, bm);
  CHECK (!bm->inconsistent && bm->modified && !bm->recovered);
  CHECK_EQ_U64 (dirtymap_count (bm->data), granules);
  CHECK (sidecar_store (sc) == 0);
  CHECK (!bm->modified);
  CHECK (bm->entry.table_offset != old_table);
  CHECK (!(bm->entry.flags & QCOW2_BITMAP_FLAG_IN_USE));
  check_no_journal (sc);
  sidecar_close (sc);

  sc = sidecar_open (path, 0);
  CHECK (sc != NULL);
  bm = sidecar_find (sc, "b16");
  CHECK (!bm->inconsistent && !bm->modified);
  CHECK_EQ_U64 (dirtymap_count (bm->data), granules);
  CHECK_EQ_U64 (dirtymap_next_clear (bm->data, 0), granules);
  CHECK (sc->journal_distrust == NULL);
  check_no_journal (sc);
  check_refcounts_exact (sc);
  /* A consistent bitmap is left as it is. */
  CHECK (sidecar_reset_bitmap (sc, bm) == 0);
  CHECK (!bm->modified);
  sidecar_close (sc);
  qemu_img_check ();

  /* Reset and recording with a journal: stored all dirty at the begin,
   * so a crash then rebuilds it all dirty.
   */
  crashed_sidecar ();
  patch_file (QCOW2_HEADER_AUTOCLEAR_OFFSET, raw, 8);
  sc = sidecar_open (path, SIDECAR_WRITABLE | SIDECAR_LOAD_IN_USE);
  CHECK (sc != NULL);
  bm = sidecar_find (sc, "b16");
  CHECK (sidecar_reset_bitmap (sc, bm) == 0);
  bm->recording = true;
  sc->journal_bits = 20;
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (bm->entry.flags & QCOW2_BITMAP_FLAG_IN_USE);
  CHECK (!bm->modified);
  sidecar_close (sc);
  sc = sidecar_open (path, SIDECAR_LOAD_IN_USE);
  CHECK (sc != NULL);
  bm = sidecar_find (sc, "b16");
  CHECK (bm->recovered && !bm->inconsistent);
  CHECK_EQ_U64 (dirtymap_count (bm->data), granules);
  check_refcounts_exact (sc);
  sidecar_close (sc);
  qemu_img_check ();
}

/* The data identity record lives across clean stops, and distrusted
 * bitmaps are stored in use, their data gone, while new ones are not.
 */
static void
test_identity_and_distrust (void)
{
  struct qcow2_identity_ext id = {
    .kind = QCOW2_IDENTITY_FILE, .device = 1, .inode = 2, .size = 3,
    .ctime_sec = 4, .ctime_nsec = 5,
  }, got;
  struct sidecar *sc;
  struct sidecar_bitmap *bm;
  const char *why;

  unlink (path);
  CHECK (sidecar_create (path, UINT64_C(1) << 24) == 0);
  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  CHECK (sidecar_recorded_identity (sc, &got, &why) == 0);
  bm = sidecar_add_bitmap (sc, "b0", 16);
  CHECK (bm != NULL);
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (dirtymap_set_range (bm->data, 7, 1) == 1);
  CHECK (sidecar_set_identity (sc, &id) == 0);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);

  /* Found again; setting the same record changes nothing on disk. */
  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  CHECK (sidecar_recorded_identity (sc, &got, &why) == 1);
  CHECK (got.kind == id.kind && got.inode == id.inode &&
         got.ctime_nsec == id.ctime_nsec);
  CHECK (sidecar_set_identity (sc, &id) == 0);
  CHECK (!sc->header_changed);

  /* Distrusted: in use with the evidence, and so stored. */
  CHECK (sidecar_distrust_bitmaps (sc, "the evidence") == 0);
  bm = sidecar_find (sc, "b0");
  CHECK (!sidecar_bitmap_is_consistent (bm) && bm->data == NULL);
  CHECK (strcmp (sidecar_distrust_reason (sc), "the evidence") == 0);
  CHECK (sidecar_add_bitmap (sc, "fresh", 16) != NULL);
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);

  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  CHECK (sidecar_find (sc, "b0")->inconsistent);
  CHECK (!sidecar_find (sc, "fresh")->inconsistent);
  CHECK (sidecar_recorded_identity (sc, &got, &why) == 1);
  /* Removed by a store with none. */
  CHECK (sidecar_set_identity (sc, NULL) == 0);
  CHECK (sc->header_changed);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);
  sc = sidecar_open (path, false);
  CHECK (sc != NULL);
  CHECK (sidecar_recorded_identity (sc, &got, &why) == 0);
  sidecar_close (sc);
}

/* Every fdatasync the sidecar's code makes, while watched: how many
 * 512-byte sectors of the header area changed since the previous one.
 * A disk may tear a write between sectors, so the header area must
 * never change in more than one sector between two flushes (see
 * sidecar-header.c).
 */
#define HEADER_AREA 4096
static int watched_fd = -1;
static uint8_t header_then[HEADER_AREA];
static unsigned header_flushes, torn_header_flushes;

static void
read_header_area (int fd, uint8_t *buf)
{
  memset (buf, 0, HEADER_AREA);
  CHECK (pread (fd, buf, HEADER_AREA, 0) > 0);
}

int
fdatasync (int fd)
{
  if (fd == watched_fd) {
    uint8_t now[HEADER_AREA];
    unsigned i, changed = 0;

    read_header_area (fd, now);
    for (i = 0; i < HEADER_AREA / 512; ++i)
      changed += memcmp (&now[i * 512], &header_then[i * 512], 512) != 0;
    header_flushes += changed > 0;
    torn_header_flushes += changed > 1;
    memcpy (header_then, now, HEADER_AREA);
  }
  return syscall (SYS_fdatasync, fd);
}

/* Beginning with a journal, a live commit and the store, on a header
 * area longer than a sector: no flush encloses a change to two
 * sectors of it.  (Found by tests/test-crash-reorder.sh: a torn header
 * write paired a journal record with old autoclear bits.)
 */
static void
test_header_changes_one_sector_per_flush (void)
{
  struct sidecar *sc;
  struct sidecar_bitmap *bm;

  sc = new_sidecar_with_b16 (&bm);
  CHECK (sidecar_add_bitmap (sc, "a-bitmap-with-a-long-name", 16) != NULL);
  sc->journal_bits = 20;
  watched_fd = sc->fd;
  read_header_area (sc->fd, header_then);
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (sc->header_area > 512);
  CHECK (sidecar_add_bitmap (sc, "live", 9) != NULL);
  CHECK (sidecar_commit_live (sc) == 0);
  CHECK (dirtymap_set_range (bm->data, 7, 1) == 1);
  CHECK (sidecar_store (sc) == 0);
  watched_fd = -1;
  sidecar_close (sc);
  CHECK (header_flushes >= 3);
  CHECK_EQ_U64 (torn_header_flushes, 0);
  qemu_img_check ();
}

/* An export that grew, then shrank: the sidecar follows, keeping the
 * bits it had, the area added dirty, the L1 table grown in place.
 */
static void
test_resize (void)
{
  const uint64_t mib = UINT64_C(1) << 20, old_size = mib + 512;
  struct sidecar *sc;
  struct sidecar_bitmap *coarse, *fine;

  unlink (path);
  CHECK (sidecar_create (path, old_size) == 0);
  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  coarse = sidecar_add_bitmap (sc, "coarse", 16);
  fine = sidecar_add_bitmap (sc, "fine", 9);
  CHECK (coarse && fine);
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (dirtymap_set_range (coarse->data, 0, 1) == 1);
  CHECK (dirtymap_set_range (fine->data, 10, 2) == 1);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);

  /* Grow to 3 MiB: granules from the one holding the old end dirty. */
  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  CHECK (sidecar_check_resize (sc, UINT64_C(8) << 40) == -1);
  CHECK_ERROR_MENTIONS ("qemu-img resize");
  CHECK_EQ_U64 (sc->header.l1_size, 1);
  CHECK (sidecar_resize (sc, 3 * mib) == 0);
  CHECK_EQ_U64 (sc->header.l1_size, 1);         /* 512 MiB per entry */
  CHECK (sidecar_begin_tracking (sc) == 0);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);
  qemu_img_check ();
  sc = sidecar_open (path, false);
  CHECK (sc != NULL);
  CHECK_EQ_U64 (sc->header.size, 3 * mib);
  coarse = sidecar_find (sc, "coarse");
  fine = sidecar_find (sc, "fine");
  CHECK_EQ_U64 (dirtymap_nr_bits (coarse->data), 48);
  CHECK_EQ_U64 (dirtymap_count (coarse->data), 1 + (48 - 16));
  CHECK (dirtymap_test (coarse->data, 0) && !dirtymap_test (coarse->data, 15));
  CHECK_EQ_U64 (dirtymap_count (fine->data), 2 + (6144 - 2049));
  CHECK_EQ_U64 (dirtymap_next_set (fine->data, 12), 2049);
  sidecar_close (sc);

  /* Shrink to 512 KiB: the tail goes, and with it the area added. */
  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  CHECK (sidecar_resize (sc, mib / 2) == 0);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);
  qemu_img_check ();
  sc = sidecar_open (path, false);
  CHECK (sc != NULL);
  CHECK_EQ_U64 (sc->header.size, mib / 2);
  CHECK_EQ_U64 (dirtymap_count (sidecar_find (sc, "coarse")->data), 1);
  CHECK_EQ_U64 (dirtymap_count (sidecar_find (sc, "fine")->data), 2);
  sidecar_close (sc);

  /* Grown to 2 GiB: four L1 entries, in the table's cluster. */
  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  CHECK (sidecar_resize (sc, UINT64_C(2) << 30) == 0);
  CHECK_EQ_U64 (sc->header.l1_size, 4);
  CHECK (sidecar_store (sc) == 0);
  sidecar_close (sc);
  qemu_img_check ();

  /* Grown past what one L1 cluster maps (4 TiB): refused. */
  sc = sidecar_open (path, true);
  CHECK (sc != NULL);
  CHECK (sidecar_resize (sc, (UINT64_C(4) << 40) + 512) == -1);
  CHECK_ERROR_MENTIONS ("larger L1 table");
  sidecar_close (sc);
}

int
main (void)
{
  CHECK (mkdtemp (dir) != NULL);
  snprintf (path, sizeof path, "%s/sidecar.qcow2", dir);
  test_create_begin_store_reopen ();
  test_in_use_left_behind ();
  test_overlap_refused ();
  test_limits ();
  test_crash_recovery ();
  test_crash_recovery_fine_journal ();
  test_journal_distrusted ();
  test_reset_in_use ();
  test_identity_and_distrust ();
  test_header_changes_one_sector_per_flush ();
  test_resize ();
  unlink (path);
  rmdir (dir);
  return 0;
}
