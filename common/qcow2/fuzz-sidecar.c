/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* libFuzzer target for the sidecar loader and writer.
 *
 * Each input is written to a private file and opened read-only with
 * sidecar_open.  When the loader accepts it, the file is opened again
 * for writing and taken through the filter's life cycle: every
 * consistent recording (AUTO) bitmap records, a few bits are set in
 * each, sometimes a new bitmap is added, then sidecar_begin_tracking
 * and sidecar_store; when that succeeds, a second session does it
 * again on the result, reusing the clusters the first one freed.  A
 * file that the loader accepted and the writer wrote must load again,
 * and a bitmap that was stored must hold exactly the bits it held in
 * memory; anything else aborts, which libFuzzer reports as a crash.
 *
 * Built with clang -fsanitize=fuzzer,address,undefined by the
 * fuzz-sidecar rule in Makefile.am.  Errors from the library are
 * silent; FUZZ_SIDECAR_VERBOSE=1 shows them, and what the writer did,
 * when replaying one input.  The private file is
 * created once per process under FUZZ_SIDECAR_TMPDIR, /dev/shm (so
 * that the store's fdatasync calls cost nothing), TMPDIR or /tmp, and
 * unlinked at once: the library reaches it as /proc/self/fd/N, so
 * nothing is left behind when the fuzzer stops on a crash.  Inputs
 * over 1 MiB are ignored unless FUZZ_SIDECAR_MAX_INPUT says more.
 * FUZZ_SIDECAR_KEEP=FILE copies the sidecar as the writer left it to
 * FILE, to check it with qemu-img check when replaying one input.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dirtymap.h"
#include "sidecar-internal.h"
#include "unit-test.h"

/* Inputs beyond this are ignored, whatever -max_len says, to keep
 * each run's I/O and memory small (the loader sizes most of its
 * allocations by the file).  FUZZ_SIDECAR_MAX_INPUT=BYTES raises it,
 * to replay a larger file.
 */
#define FUZZ_MAX_INPUT (UINT64_C(1) << 20)

/* Name of the bitmap that some runs add. */
#define NEW_BITMAP_NAME "fuzz-new"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static char dir_template[4096];
static char file_path[4096];
static char proc_path[64];
static const char *path;        /* what sidecar_open is given */
static int input_fd = -1;       /* ours, for writing each input */
static bool verbose;
static uint64_t max_input = FUZZ_MAX_INPUT;
static const char *keep_path;

static void
remove_temp_files (void)
{
  if (path == file_path) {
    unlink (file_path);
    rmdir (dir_template);
  }
}

static bool
make_temp_file (const char *base)
{
  struct stat a, b;

  if (base == NULL || *base == '\0')
    return false;
  if ((size_t) snprintf (dir_template, sizeof dir_template,
                         "%s/fuzz-sidecar.XXXXXX", base)
      >= sizeof dir_template)
    return false;
  if (mkdtemp (dir_template) == NULL)
    return false;
  snprintf (file_path, sizeof file_path, "%s/input.qcow2", dir_template);
  input_fd = open (file_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (input_fd == -1) {
    rmdir (dir_template);
    return false;
  }

  /* Reach the file through /proc and unlink it now, when /proc shows
   * the same file; otherwise keep the name and remove it at exit.
   */
  snprintf (proc_path, sizeof proc_path, "/proc/self/fd/%d", input_fd);
  if (stat (proc_path, &a) == 0 && fstat (input_fd, &b) == 0 &&
      a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
    unlink (file_path);
    rmdir (dir_template);
    path = proc_path;
  }
  else {
    path = file_path;
    atexit (remove_temp_files);
  }
  return true;
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  const char *bases[] = {
    getenv ("FUZZ_SIDECAR_TMPDIR"), "/dev/shm", getenv ("TMPDIR"), "/tmp",
  };
  size_t i;

  verbose = getenv ("FUZZ_SIDECAR_VERBOSE") != NULL;
  keep_path = getenv ("FUZZ_SIDECAR_KEEP");
  if (getenv ("FUZZ_SIDECAR_MAX_INPUT"))
    max_input = strtoull (getenv ("FUZZ_SIDECAR_MAX_INPUT"), NULL, 0);
  /* The stubs print nbdkit_error and nbdkit_debug only with this. */
  if (verbose)
    setenv ("UNIT_TEST_VERBOSE", "1", 1);
  else
    unsetenv ("UNIT_TEST_VERBOSE");

  for (i = 0; i < sizeof bases / sizeof bases[0]; ++i)
    if (make_temp_file (bases[i]))
      return 0;
  fprintf (stderr, "fuzz-sidecar: cannot create a temporary file: %s\n",
           strerror (errno));
  exit (EXIT_FAILURE);
}

static void
write_input (const uint8_t *data, size_t size)
{
  size_t done = 0;

  if (ftruncate (input_fd, 0) == -1) {
    perror ("fuzz-sidecar: ftruncate");
    exit (EXIT_FAILURE);
  }
  while (done < size) {
    ssize_t r = pwrite (input_fd, data + done, size - done, done);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      perror ("fuzz-sidecar: pwrite");
      exit (EXIT_FAILURE);
    }
    done += r;
  }
}

/* Copy the sidecar as it is now to keep_path. */
static void
keep_sidecar (void)
{
  char buf[65536];
  off_t offset = 0;
  ssize_t r;
  int fd = open (keep_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

  if (fd == -1) {
    perror (keep_path);
    exit (EXIT_FAILURE);
  }
  while ((r = pread (input_fd, buf, sizeof buf, offset)) > 0) {
    if (write (fd, buf, r) != r) {
      perror (keep_path);
      exit (EXIT_FAILURE);
    }
    offset += r;
  }
  close (fd);
}

/* An invariant of the library does not hold: report it, and let
 * libFuzzer save the input as a crash.
 */
static void __attribute__ ((noreturn, format (printf, 1, 2)))
fail (const char *fs, ...)
{
  va_list args;

  fprintf (stderr, "fuzz-sidecar: INVARIANT BROKEN: ");
  va_start (args, fs);
  vfprintf (stderr, fs, args);
  va_end (args);
  fprintf (stderr, "\nfuzz-sidecar: last nbdkit_error: %s\n", last_error ());
  abort ();
}

/* FNV-1a over the input, to pick bits and choices deterministically. */
static uint64_t
hash_input (const uint8_t *data, size_t size)
{
  uint64_t h = UINT64_C(0xcbf29ce484222325);
  size_t i;

  for (i = 0; i < size; ++i) {
    h ^= data[i];
    h *= UINT64_C(0x100000001b3);
  }
  return h;
}

/* What each bitmap should look like after the store. */
struct expect {
  char *name;
  bool inconsistent;            /* IN_USE, data not loaded */
  bool recording;
  uint64_t count;               /* set bits in memory at the store */
  uint64_t bits[4];             /* bits the fuzzer set, if recording */
  size_t nr_bits;
};

static void
free_expect (struct expect *ex, size_t n)
{
  size_t i;

  for (i = 0; i < n; ++i)
    free (ex[i].name);
  free (ex);
}

/* Set a few bits in a recording bitmap: the first, the last, the middle
 * and a short run placed by the hash.
 */
static void
set_some_bits (struct sidecar *sc, struct sidecar_bitmap *bm,
               uint64_t h, struct expect *ex)
{
  uint64_t granules = sidecar_bitmap_granules (sc, bm);
  uint64_t first, count;

  if (granules == 0)
    return;
  first = h % granules;
  count = 1 + (h >> 40) % 300;
  ex->bits[ex->nr_bits++] = 0;
  ex->bits[ex->nr_bits++] = granules - 1;
  ex->bits[ex->nr_bits++] = granules / 2;
  ex->bits[ex->nr_bits++] = first;
  if (dirtymap_set_range (bm->data, 0, 1) == -1 ||
      dirtymap_set_range (bm->data, granules - 1, 1) == -1 ||
      dirtymap_set_range (bm->data, granules / 2, 1) == -1 ||
      dirtymap_set_range (bm->data, first, count) == -1)
    fail ("dirtymap_set_range failed on bitmap '%s' of %" PRIu64 " bits",
          bm->entry.name, granules);
}

/* Check the reloaded file against what was stored. */
static void
verify (struct sidecar *sc, const struct expect *ex, size_t n, bool stored)
{
  size_t i, j;

  if (!stored)
    return;                     /* only loading again is required */
  if (sc->nr_bitmaps != n)
    fail ("%zu bitmaps stored, %zu loaded", n, sc->nr_bitmaps);
  for (i = 0; i < n; ++i) {
    struct sidecar_bitmap *bm = sidecar_find (sc, ex[i].name);

    if (bm == NULL)
      fail ("bitmap '%s' is gone after the store", ex[i].name);
    if (ex[i].recording) {
      if (bm->inconsistent || bm->data == NULL)
        fail ("bitmap '%s' was stored but is still in use", ex[i].name);
      if ((bm->entry.flags & QCOW2_BITMAP_FLAG_AUTO) == 0)
        fail ("bitmap '%s' lost its AUTO flag", ex[i].name);
    }
    else if (bm->inconsistent != ex[i].inconsistent)
      fail ("bitmap '%s' was %sconsistent and is now %sconsistent",
            ex[i].name, ex[i].inconsistent ? "in" : "",
            bm->inconsistent ? "in" : "");
    if (bm->inconsistent)
      continue;
    if (dirtymap_count (bm->data) != ex[i].count)
      fail ("bitmap '%s' has %" PRIu64 " bits set after the store, %"
            PRIu64 " before", ex[i].name, dirtymap_count (bm->data),
            ex[i].count);
    for (j = 0; j < ex[i].nr_bits; ++j)
      if (!dirtymap_test (bm->data, ex[i].bits[j]))
        fail ("bitmap '%s': bit %" PRIu64 " was set and stored but is "
              "clear", ex[i].name, ex[i].bits[j]);
  }
}

/* A crash after tracking began with a journal: opening the file again
 * must rebuild every recording bitmap, and storing must succeed.
 */
static void
crash_and_recover (struct sidecar *sc, const struct expect *ex, size_t n)
{
  size_t i;

  sidecar_close (sc);
  sc = sidecar_open (path, true);
  if (sc == NULL)
    fail ("the file no longer loads after a crash with a journal");
  for (i = 0; i < n; ++i) {
    struct sidecar_bitmap *bm = sidecar_find (sc, ex[i].name);

    if (bm == NULL)
      fail ("bitmap '%s' is gone after a crash", ex[i].name);
    if (ex[i].recording && (bm->inconsistent || !bm->recovered))
      fail ("recording bitmap '%s' was not recovered after a crash",
            ex[i].name);
    bm->recording = ex[i].recording;
  }
  if (sidecar_store (sc) == -1)
    fail ("storing recovered bitmaps failed");
  sidecar_close (sc);
  sc = sidecar_open (path, false);
  if (sc == NULL)
    fail ("the file no longer loads after storing recovered bitmaps");
  if (sidecar_find (sc, QCOW2_JOURNAL_NAME))
    fail ("the journal is still there after the store");
  sidecar_close (sc);
}

/* The data identity record some sessions write. */
static const struct qcow2_identity_ext fuzz_identity = {
  .kind = QCOW2_IDENTITY_TOKEN, .token_length = 4, .token = "fuzz",
};

/* A record found in the file reads back as it was encoded. */
static void
check_identity_round_trip (struct sidecar *sc)
{
  struct qcow2_identity_ext id;
  const struct qcow2_extension *ext;
  const char *why;
  uint8_t buf[QCOW2_IDENTITY_EXT_FIXED + QCOW2_IDENTITY_MAX_TOKEN];

  if (sidecar_recorded_identity (sc, &id, &why) != 1)
    return;
  ext = sidecar_find_extension (sc, QCOW2_EXT_IDENTITY);
  if (qcow2_identity_ext_size (&id) != ext->length)
    fail ("the identity record decodes to another length");
  qcow2_identity_ext_encode (&id, buf);
  if (memcmp (buf, ext->data, ext->length) != 0)
    fail ("the identity record does not encode back to its bytes");
}

/* After a store, the identity record set is the one found. */
static void
check_identity_stored (struct sidecar *sc)
{
  struct qcow2_identity_ext id;
  const char *why;

  if (sidecar_recorded_identity (sc, &id, &why) != 1 ||
      id.kind != fuzz_identity.kind ||
      strcmp (id.token, fuzz_identity.token) != 0)
    fail ("the data identity record was not stored");
}

/* One session of the filter's life cycle on a file that the loader
 * accepted: open for writing, track, set bits, begin, store, close,
 * then load again and compare.  The first session may add a bitmap.
 * Returns true if the store succeeded.
 */
static bool
one_session (uint64_t h, bool dirty, bool first)
{
  struct sidecar *sc;
  struct expect *ex = NULL;
  size_t i, n;
  bool began, stored = false;

  sc = sidecar_open (path, true);
  if (sc == NULL) {
    /* The only reason to refuse writing what reads fine. */
    if (!dirty)
      fail ("sidecar_open accepted the file read-only but refused it "
            "read-write");
    return false;
  }

  /* Sometimes add a bitmap, which takes the copy-on-write path of
   * sidecar_begin_tracking instead of the in-place one.  It may be
   * refused (duplicate name, too large a disk for the granularity).
   */
  if (first && (h & 1))
    sidecar_add_bitmap (sc, NEW_BITMAP_NAME, 9 + (h >> 1) % 23);
  /* Sometimes the data changed behind the filter's back: every bitmap
   * on disk must come back in use.  Sometimes a session records the
   * data's identity.
   */
  if (((h >> 15) & 3) == 0 &&
      sidecar_distrust_bitmaps (sc, "fuzzing") == -1)
    fail ("sidecar_distrust_bitmaps failed");
  if (((h >> 17) & 1) && sidecar_set_identity (sc, &fuzz_identity) == -1)
    fail ("sidecar_set_identity failed");

  n = sc->nr_bitmaps;
  ex = calloc (n ? n : 1, sizeof *ex);
  if (ex == NULL)
    fail ("calloc of %zu expectations", n);
  for (i = 0; i < n; ++i) {
    struct sidecar_bitmap *bm = sc->bitmaps[i];

    if (bm->on_disk)
      bm->recording = !bm->inconsistent
        && (bm->entry.flags & QCOW2_BITMAP_FLAG_AUTO);
    ex[i].name = strdup (bm->entry.name);
    if (ex[i].name == NULL)
      fail ("strdup");
    ex[i].inconsistent = bm->inconsistent;
    ex[i].recording = bm->recording;
    if (verbose)
      fprintf (stderr, "fuzz-sidecar: bitmap '%s': granularity 2^%u, %"
               PRIu64 " granules, %s, %s, %" PRIu64 " bits set\n",
               bm->entry.name, bm->entry.granularity_bits,
               sidecar_bitmap_granules (sc, bm),
               bm->on_disk ? "on disk" : "new",
               bm->inconsistent ? "in use" : bm->recording ? "recording"
                                                         : "not recording",
               bm->data ? dirtymap_count (bm->data) : 0);
    if (bm->recording)
      set_some_bits (sc, bm, h * (i + 1) + i, &ex[i]);
    if (bm->data)
      ex[i].count = dirtymap_count (bm->data);
  }

  /* Sometimes crash-safe: a journal of at most 1 MiB, as the tracker
   * chooses, and sometimes a crash right after tracking began.
   */
  if ((h >> 7) % 3 != 0) {
    unsigned bits = 9 + (h >> 9) % 23;
    while (qcow2_blocks_covering (sc->header.size, bits) / 8 > (1 << 20) &&
           bits < QCOW2_BITMAP_MAX_GRAN_BITS)
      bits++;
    sc->journal_bits = bits;
  }
  began = sidecar_begin_tracking (sc) == 0;
  if (began && sc->journal && ((h >> 14) & 1)) {
    crash_and_recover (sc, ex, n);
    free_expect (ex, n);
    return false;
  }
  if (began)
    stored = sidecar_store (sc) == 0;
  if (verbose)
    fprintf (stderr, "fuzz-sidecar: %zu bitmaps, begin_tracking %s, "
             "store %s\n", n, began ? "ok" : "failed",
             !began ? "skipped" : stored ? "ok" : "failed");
  sidecar_close (sc);

  sc = sidecar_open (path, false);
  if (sc == NULL)
    fail ("the file no longer loads after sidecar_begin_tracking (%s) and "
          "sidecar_store (%s)", began ? "ok" : "failed",
          !began ? "skipped" : stored ? "ok" : "failed");
  verify (sc, ex, n, stored);
  if (stored && ((h >> 17) & 1))
    check_identity_stored (sc);
  sidecar_close (sc);
  free_expect (ex, n);
  return stored;
}

/* Two sessions, as two runs of nbdkit would make: the second reuses
 * the clusters that the first one's store freed.
 */
static void
exercise_writer (uint64_t h, bool dirty)
{
  if (one_session (h, dirty, true))
    one_session (h * UINT64_C(0x9e3779b97f4a7c15) + 1, dirty, false);
  if (keep_path)
    keep_sidecar ();
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct sidecar *sc;
  bool dirty;
  size_t i;

  if (size > max_input)
    return -1;                  /* not added to the corpus */
  write_input (data, size);

  sc = sidecar_open (path, false);
  if (sc == NULL)
    return 0;
  dirty = (sc->header.incompatible_features & QCOW2_INCOMPAT_DIRTY) != 0;
  check_identity_round_trip (sc);
  for (i = 0; i < sc->nr_bitmaps; ++i) {
    const struct sidecar_bitmap *bm = sc->bitmaps[i];

    if (sidecar_find (sc, bm->entry.name) != bm)
      fail ("sidecar_find does not find bitmap %zu '%s'", i, bm->entry.name);
    if (!bm->inconsistent &&
        dirtymap_nr_bits (bm->data) != sidecar_bitmap_granules (sc, bm))
      fail ("bitmap '%s' has %" PRIu64 " bits for %" PRIu64 " granules",
            bm->entry.name, dirtymap_nr_bits (bm->data),
            sidecar_bitmap_granules (sc, bm));
  }
  sidecar_close (sc);

  exercise_writer (hash_input (data, size), dirty);
  return 0;
}
