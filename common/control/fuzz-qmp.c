/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* libFuzzer target for the control socket's command layer.
 *
 * Each input is what a client sends after the greeting: JSON text,
 * usually one request per line.  It is read as the server reads a
 * client's stream (one incremental tokener with the server's flags; a
 * parse error is answered, then the rest of its line is skipped) and
 * every request goes through qmp_reply_to and qmp_commands_dispatch,
 * from an unnegotiated state, to a real tracker on a sidecar of a
 * 2 MiB export.  After each request a write derived from its text is
 * marked, so that bitmaps have something to count, merge and list.
 *
 * Every reply must serialize, as the server sends it, to valid UTF-8
 * that parses back as JSON, with "return" or "error" (and "id" at
 * most: the request's, unless it could not be echoed); an error has a
 * "class" and a "desc" string.  After the
 * input, query-dirty-bitmaps must agree with tracker_query and the
 * bitmaps' invariants hold (names unique, granularity a power of two
 * from 512 to 2^31, counts within the export, inconsistent ones
 * persistent); then the tracker stops, which stores the sidecar, and
 * the sidecar must load again with every persistent bitmap in it,
 * consistent, as it was.  Anything else aborts, which libFuzzer
 * reports as a crash.
 *
 * Every input starts from the same sidecar (made once per process and
 * copied back before each input), so a crash replays from its input
 * alone: it holds a recording bitmap "pristine" with a few bits set,
 * and a bitmap whose name is not valid UTF-8, as another program may
 * write it.  The sidecar lives under FUZZ_QMP_TMPDIR, /dev/shm (so
 * that fdatasync costs nothing), TMPDIR or /tmp, unlinked at once and
 * reached as /proc/self/fd/N, so nothing is left behind.
 *
 * Built with clang -fsanitize=fuzzer,address,undefined by the fuzz-qmp
 * rule in Makefile.am.  FUZZ_QMP_VERBOSE=1 prints every request and
 * reply, and the library's errors and debug messages, when replaying
 * one input: ./fuzz-qmp FILE.
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

#include <json-c/json.h>

#include "checked-io.h"
#include "qmp-commands.h"
#include "qmp-protocol.h"
#include "sidecar.h"
#include "tracker.h"
#include "views.h"
#include "unit-test.h"
#include "utf8.h"

#define EXPORT_SIZE (UINT64_C(2) << 20)
#define MAX_REQUESTS 256        /* per input; the rest is ignored */

/* The bitmaps of the sidecar every input starts from. */
#define PRISTINE_NAME "pristine"
#define FOREIGN_NAME "made-elsewhere-\xff\xc3("

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static bool verbose;
static char proc_path[64];      /* the sidecar, as the tracker opens it */
static int sidecar_fd = -1;
static char *pristine;          /* the sidecar's bytes at the start */
static size_t pristine_size;

/* An invariant does not hold: report it, and let libFuzzer save the
 * input as a crash.
 */
static void __attribute__ ((noreturn, format (printf, 1, 2)))
fail (const char *fs, ...)
{
  va_list args;

  fprintf (stderr, "fuzz-qmp: INVARIANT BROKEN: ");
  va_start (args, fs);
  vfprintf (stderr, fs, args);
  va_end (args);
  fprintf (stderr, "\nfuzz-qmp: last nbdkit_error: %s\n", last_error ());
  abort ();
}

static void __attribute__ ((noreturn))
die (const char *what)
{
  fprintf (stderr, "fuzz-qmp: %s: %s\n", what, strerror (errno));
  exit (EXIT_FAILURE);
}

/* The sidecar every input starts from, made with the sidecar's own
 * calls at PATH: "pristine" recording with a few bits set, and
 * FOREIGN_NAME not recording, empty.
 */
static void
make_pristine (const char *path)
{
  struct sidecar *sc;
  struct sidecar_bitmap *bm, *foreign;

  if (sidecar_create (path, EXPORT_SIZE) == -1 ||
      (sc = sidecar_open (path, SIDECAR_WRITABLE)) == NULL ||
      (bm = sidecar_add_bitmap (sc, PRISTINE_NAME, 16)) == NULL ||
      (foreign = sidecar_add_bitmap (sc, FOREIGN_NAME, 12)) == NULL ||
      sidecar_begin_tracking (sc) == -1)
    fail ("cannot make the first sidecar at %s", path);
  sidecar_bitmap_set_recording (foreign, false);
  if (dirtymap_set_range (sidecar_bitmap_data (bm), 0, 1) == -1 ||
      dirtymap_set_range (sidecar_bitmap_data (bm), 5, 3) == -1 ||
      dirtymap_set_range (sidecar_bitmap_data (bm),
                          sidecar_bitmap_granules (sc, bm) - 1, 1) == -1 ||
      sidecar_store (sc) == -1)
    fail ("cannot store the first sidecar at %s", path);
  sidecar_close (sc);
}

/* In a new directory under BASE: make the first sidecar, keep its
 * bytes, and keep it open, unlinked, as /proc/self/fd/N.
 */
static bool
make_sidecar (const char *base)
{
  char dir[4096], path[4200];
  struct stat st;

  if (base == NULL || *base == '\0' ||
      (size_t) snprintf (dir, sizeof dir, "%s/fuzz-qmp.XXXXXX", base)
      >= sizeof dir || mkdtemp (dir) == NULL)
    return false;
  snprintf (path, sizeof path, "%s/sidecar.qcow2", dir);
  make_pristine (path);
  sidecar_fd = open (path, O_RDWR | O_CLOEXEC);
  if (sidecar_fd == -1 || fstat (sidecar_fd, &st) == -1)
    die (path);
  unlink (path);
  rmdir (dir);
  pristine_size = st.st_size;
  pristine = malloc (pristine_size);
  if (pristine == NULL)
    die ("malloc");
  if (read_fully (sidecar_fd, path, "the first sidecar", pristine,
                  pristine_size, 0) == -1)
    fail ("cannot read the first sidecar back");
  snprintf (proc_path, sizeof proc_path, "/proc/self/fd/%d", sidecar_fd);
  if (access (proc_path, R_OK | W_OK) == -1)
    die (proc_path);
  return true;
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  const char *bases[] = {
    getenv ("FUZZ_QMP_TMPDIR"), "/dev/shm", getenv ("TMPDIR"), "/tmp",
  };
  size_t i;

  verbose = getenv ("FUZZ_QMP_VERBOSE") != NULL;
  /* The stubs print nbdkit_error and nbdkit_debug only with this. */
  if (verbose)
    setenv ("UNIT_TEST_VERBOSE", "1", 1);
  else
    unsetenv ("UNIT_TEST_VERBOSE");
  for (i = 0; i < sizeof bases / sizeof bases[0]; ++i)
    if (make_sidecar (bases[i]))
      return 0;
  die ("cannot create a temporary directory");
}

/* Put the first sidecar back, as it was. */
static void
restore_sidecar (void)
{
  if (ftruncate (sidecar_fd, 0) == -1 ||
      write_fully (sidecar_fd, proc_path, "the first sidecar", pristine,
                   pristine_size, 0) == -1)
    fail ("cannot put the first sidecar back");
}

/* FNV-1a, to derive a write from a request's text. */
static uint64_t
hash_bytes (const char *data, size_t size)
{
  uint64_t h = UINT64_C(0xcbf29ce484222325);
  size_t i;

  for (i = 0; i < size; ++i) {
    h ^= (unsigned char) data[i];
    h *= UINT64_C(0x100000001b3);
  }
  return h;
}

/* A reply must be what a client can read: see the top of the file. */
static void
check_reply (struct json_object *reply)
{
  struct json_object *back, *err, *value;
  const char *text;
  size_t len;
  int nr_keys = 0;

  if (reply == NULL)
    fail ("no reply (out of memory?)");
  text = json_object_to_json_string_length (reply, QMP_PRINT_FLAGS, &len);
  if (text == NULL)
    fail ("the reply does not serialize");
  if (verbose)
    fprintf (stderr, "fuzz-qmp: <- %s\n", text);
  if (!utf8_is_valid (text, len))
    fail ("the reply is not valid UTF-8: %s", text);
  back = json_tokener_parse (text);
  if (back == NULL || !json_object_is_type (back, json_type_object))
    fail ("the reply does not parse back as a JSON object: %s", text);
  json_object_object_foreach (back, key, v) {
    (void) v;
    if (strcmp (key, "return") != 0 && strcmp (key, "error") != 0 &&
        strcmp (key, "id") != 0)
      fail ("the reply has a member '%s': %s", key, text);
    nr_keys += strcmp (key, "id") != 0;
  }
  if (nr_keys != 1)
    fail ("the reply has %d of 'return' and 'error': %s", nr_keys, text);
  if (json_object_object_get_ex (back, "error", &err) &&
      (!json_object_is_type (err, json_type_object) ||
       json_object_object_length (err) != 2 ||
       !json_object_object_get_ex (err, "class", &value) ||
       !json_object_is_type (value, json_type_string) ||
       !json_object_object_get_ex (err, "desc", &value) ||
       !json_object_is_type (value, json_type_string)))
    fail ("the error is not {\"class\": STRING, \"desc\": STRING}: %s", text);
  json_object_put (back);
}

/* REPLY carries REQ's "id", if it has one, unless REQ was refused as
 * one that cannot be echoed (a parse error).
 */
static void
check_id (struct json_object *req, struct json_object *reply)
{
  struct json_object *want = NULL, *got = NULL, *err, *desc;
  bool has_want = json_object_is_type (req, json_type_object) &&
    json_object_object_get_ex (req, "id", &want);
  bool has_got = json_object_object_get_ex (reply, "id", &got);
  const char *text = json_object_to_json_string (reply);

  if (has_got && (!has_want || !json_object_equal (want, got)))
    fail ("the reply's id is not the request's: %s", text);
  if (has_want && !has_got &&
      !(json_object_object_get_ex (reply, "error", &err) &&
        json_object_object_get_ex (err, "desc", &desc) &&
        strncmp (json_object_get_string (desc), "JSON parse error, ", 18)
        == 0))
    fail ("the reply lost the request's id: %s", text);
}

/* One request (REQ, TEXT of LEN bytes), its reply checked, then a
 * write derived from the text.
 */
static void
run_request (struct tracker *t, bool *negotiated, struct json_object *req,
             const char *text, size_t len)
{
  struct json_object *reply;
  uint64_t h = hash_bytes (text, len), offset, count;

  if (verbose)
    fprintf (stderr, "fuzz-qmp: -> %.*s\n", (int) len, text);
  reply = qmp_reply_to (req, 0, negotiated, qmp_commands_dispatch, t);
  check_reply (reply);
  check_id (req, reply);
  json_object_put (reply);

  offset = h % EXPORT_SIZE;
  count = 1 + (h >> 32) % (256 * 1024);
  if (count > EXPORT_SIZE - offset)
    count = EXPORT_SIZE - offset;
  if (tracker_mark (t, offset, count) != 0)
    fail ("tracker_mark (%" PRIu64 ", %" PRIu64 ") failed", offset, count);
}

/* Read the input as the server reads a client's stream, and run each
 * request.
 */
static void
run_input (struct tracker *t, const char *data, size_t size)
{
  struct json_tokener *tok = json_tokener_new ();
  bool negotiated = false;
  size_t off = 0, nr = 0;

  if (tok == NULL)
    fail ("json_tokener_new");
  json_tokener_set_flags (tok, QMP_TOKENER_FLAGS);
  while (off < size && nr++ < MAX_REQUESTS) {
    struct json_object *obj;
    const char *nl;
    size_t end;

    while (off < size && strchr (" \t\r\n", data[off]) && data[off])
      off++;
    if (off == size)
      break;
    obj = json_tokener_parse_ex (tok, data + off, size - off);
    end = json_tokener_get_parse_end (tok);
    if (end == 0 || end > size - off)
      end = size - off;
    if (json_tokener_get_error (tok) == json_tokener_success) {
      run_request (t, &negotiated, obj, data + off, end);
      json_object_put (obj);
      off += end;
    }
    else {
      /* Incomplete at the end, or a parse error, which the server
       * answers with json-c's description: on with the next line.
       */
      nl = memchr (data + off, '\n', size - off);
      off = nl ? (size_t) (nl - data) + 1 : size;
    }
    json_tokener_reset (tok);
  }
  json_tokener_free (tok);
}

/* The query's entry E (of a reply) describes INFO. */
static void
check_entry (struct json_object *e, const struct tracker_bitmap_info *info)
{
  struct json_object *v;
  char *name = utf8_escape_invalid (info->name);

  if (name == NULL)
    fail ("out of memory");
#define FIELD(key, type, same)                                          \
  if (!json_object_object_get_ex (e, key, &v) ||                        \
      !json_object_is_type (v, type) || !(same))                        \
    fail ("query-dirty-bitmaps says %s of '%s' is %s",                  \
          key, name, json_object_to_json_string (v));
  FIELD ("name", json_type_string,
         strcmp (json_object_get_string (v), name) == 0);
  FIELD ("granularity", json_type_int,
         (uint64_t) json_object_get_int64 (v) == info->granularity);
  FIELD ("recording", json_type_boolean,
         json_object_get_boolean (v) == info->recording);
  FIELD ("persistent", json_type_boolean,
         json_object_get_boolean (v) == info->persistent);
  FIELD ("inconsistent", json_type_boolean,
         json_object_get_boolean (v) == info->inconsistent);
  FIELD ("busy", json_type_boolean, !json_object_get_boolean (v));
  FIELD ("count", json_type_int,
         (uint64_t) json_object_get_int64 (v) == info->dirty_bytes);
#undef FIELD
  free (name);
}

/* One bitmap's invariants, whatever the commands did. */
static void
check_info (const struct tracker_bitmap_info *infos, size_t i)
{
  const struct tracker_bitmap_info *info = &infos[i];
  size_t j;

  for (j = 0; j < i; ++j)
    if (strcmp (infos[j].name, info->name) == 0)
      fail ("two bitmaps are named '%s'", info->name);
  if (info->granularity < 512 || info->granularity > (UINT64_C(1) << 31) ||
      (info->granularity & (info->granularity - 1)) != 0)
    fail ("bitmap '%s' has granularity %" PRIu64, info->name,
          info->granularity);
  if (info->dirty_bytes > EXPORT_SIZE)
    fail ("bitmap '%s' counts %" PRIu64 " dirty bytes of %" PRIu64,
          info->name, info->dirty_bytes, EXPORT_SIZE);
  if (info->inconsistent && (!info->persistent || info->dirty_bytes != 0))
    fail ("bitmap '%s' is inconsistent, but %s", info->name,
          info->persistent ? "counts dirty bytes" : "not persistent");
}

/* query-dirty-bitmaps agrees with the tracker, whose bitmaps hold their
 * invariants.  Returns what the tracker says, for check_stored.
 */
static void
check_bitmaps (struct tracker *t, struct tracker_bitmap_info **infos,
               size_t *n)
{
  struct json_object *args = json_object_new_object (), *reply, *list;
  char *msg = NULL;
  size_t i;

  if (args == NULL)
    fail ("out of memory");
  reply = qmp_commands_dispatch (t, "query-dirty-bitmaps", args);
  json_object_put (args);
  check_reply (reply);
  if (!json_object_object_get_ex (reply, "return", &list) ||
      !json_object_is_type (list, json_type_array))
    fail ("query-dirty-bitmaps failed: %s",
          json_object_to_json_string (reply));
  if (tracker_query (t, infos, n, &msg) == -1)
    fail ("tracker_query failed: %s", msg ? msg : "out of memory");
  if (json_object_array_length (list) != *n)
    fail ("query-dirty-bitmaps lists %zu bitmaps, the tracker %zu",
          json_object_array_length (list), *n);
  for (i = 0; i < *n; ++i) {
    check_entry (json_object_array_get_idx (list, i), &(*infos)[i]);
    check_info (*infos, i);
  }
  json_object_put (reply);
}

/* Stopping the tracker stores the sidecar, which must load again with
 * every persistent bitmap of INFOS in it, consistent, as it was.
 */
static void
check_stored (struct tracker *t, const struct tracker_bitmap_info *infos,
              size_t n)
{
  struct sidecar *sc;
  size_t i, nr_persistent = 0;

  if (tracker_stop (t) == -1)
    fail ("tracker_stop (storing the bitmaps) failed");
  sc = sidecar_open (proc_path, 0);
  if (sc == NULL)
    fail ("the sidecar no longer loads after the store");
  for (i = 0; i < n; ++i) {
    const struct tracker_bitmap_info *info = &infos[i];
    struct sidecar_bitmap *bm;
    uint64_t bits, g = info->granularity;

    if (!info->persistent)
      continue;
    nr_persistent++;
    bm = sidecar_find (sc, info->name);
    if (bm == NULL)
      fail ("persistent bitmap '%s' is not in the sidecar", info->name);
    if ((UINT64_C(1) << sidecar_bitmap_granularity_bits (bm)) != g ||
        sidecar_bitmap_stored_recording (bm) != info->recording ||
        sidecar_bitmap_is_consistent (bm) == info->inconsistent)
      fail ("bitmap '%s' is stored with another granularity, recording "
            "flag or consistency", info->name);
    if (info->inconsistent)
      continue;
    /* Whole granules, but for the last one, which may be partial. */
    bits = dirtymap_count (sidecar_bitmap_data (bm));
    if (info->dirty_bytes > bits * g ||
        (bits > 0 && info->dirty_bytes <= (bits - 1) * g))
      fail ("bitmap '%s' is stored with %" PRIu64 " granules set for %"
            PRIu64 " dirty bytes", info->name, bits, info->dirty_bytes);
  }
  if (sidecar_nr_bitmaps (sc) != nr_persistent)
    fail ("the sidecar holds %zu bitmaps, %zu are persistent",
          sidecar_nr_bitmaps (sc), nr_persistent);
  sidecar_close (sc);
}

static struct tracker *
start_tracker (const struct tracker_config *cfg)
{
  struct tracker *t = tracker_new (cfg);

  /* tracker_validate is the filter's check at start-up, which the
   * control socket never sees: skipped, to save a load per input.
   */
  if (t == NULL || tracker_claim_export (t, "") == -1 ||
      tracker_start (t, EXPORT_SIZE) == -1)
    fail ("the tracker does not start on the first sidecar");
  return t;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct tracker_config cfg;
  /* Views' scratch files are unlinked at once, in memory. */
  struct views_config view_cfg = { .scratch_dir = (char *) "/dev/shm" };
  struct tracker_bitmap_info *infos;
  struct tracker *t;
  struct views *vs;
  size_t n;

  restore_sidecar ();
  tracker_config_init (&cfg);
  cfg.allow_no_bitmaps = true;
  if (tracker_config_set_sidecar (&cfg, proc_path) == -1)
    fail ("tracker_config_set_sidecar");
  t = start_tracker (&cfg);
  vs = views_new (&view_cfg);
  if (vs == NULL)
    fail ("views_new");
  tracker_attach_views (t, vs);
  run_input (t, (const char *) data, size);
  check_bitmaps (t, &infos, &n);
  check_stored (t, infos, n);
  tracker_free_infos (infos, n);
  tracker_free (t);
  views_free (vs);
  tracker_config_free (&cfg);
  return 0;
}
