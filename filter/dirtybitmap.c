/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* nbdkit dirtybitmap filter: the nbdkit callbacks.  Every write, zero
 * and trim is marked in the tracker before it is passed on; the
 * tracking itself lives in common/tracker.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "qmp-commands.h"
#include "qmp-server.h"
#include "tracker.h"

/* -D dirtybitmap.writes=1 logs every range marked. */
NBDKIT_DLL_PUBLIC int dirtybitmap_debug_writes;

static struct tracker_config config;
static struct tracker *tracker;
static char *control_path;              /* dirtybitmap-control= */
static struct qmp_server *control;
static bool server_read_only;           /* nbdkit -r, or not known */

static void
dirtybitmap_load (void)
{
#ifdef WITH_SANITIZERS
  /* The tests preload the sanitizer runtimes into nbdkit, which is not
   * built with them; programs nbdkit starts later (--run commands, the
   * sh and eval plugins' scripts) must not inherit them.
   */
  unsetenv ("LD_PRELOAD");
#endif
  tracker_config_init (&config);
}

static void
dirtybitmap_unload (void)
{
  bool failed = tracker && tracker_failed (tracker);

  tracker_free (tracker);
  tracker_config_free (&config);
  free (control_path);
  /* Unloading is the last thing nbdkit does: make its exit status say
   * that the bitmaps were not kept as asked.  _exit, because running
   * other libraries' destructors from inside nbdkit's teardown, with
   * their threads still alive, can deadlock.
   */
  if (failed) {
    fflush (NULL);
    _exit (EXIT_FAILURE);
  }
}

/* SET takes the path VALUE names, made absolute, since nbdkit changes
 * directory to / once it is ready (resolved, if it MUST_EXIST).
 */
static int
set_path (const char *value, bool must_exist,
          int (*set) (struct tracker_config *, const char *))
{
  char *path = must_exist ? nbdkit_realpath (value)
    : nbdkit_absolute_path (value);
  int r;

  if (path == NULL)
    return -1;
  r = set (&config, path);
  free (path);
  return r;
}

static int
dirtybitmap_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                    const char *key, const char *value)
{
  if (strcmp (key, "dirtybitmap-file") == 0)
    return set_path (value, false, tracker_config_set_sidecar);
  if (strcmp (key, "dirtybitmap") == 0)
    return tracker_config_add_name (&config, value);
  if (strcmp (key, "dirtybitmap-granularity") == 0) {
    int64_t size = nbdkit_parse_size (value);
    if (size == -1)
      return -1;
    return tracker_config_set_granularity (&config, size);
  }
  if (strcmp (key, "dirtybitmap-crash-safe") == 0) {
    int r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    config.crash_safe = r;
    return 0;
  }
  if (strcmp (key, "dirtybitmap-crash-granularity") == 0) {
    int64_t size = nbdkit_parse_size (value);
    if (size == -1)
      return -1;
    return tracker_config_set_crash_granularity (&config, size);
  }
  if (strcmp (key, "dirtybitmap-in-use") == 0)
    return tracker_config_set_in_use_policy (&config, value);
  if (strcmp (key, "dirtybitmap-data") == 0)
    return set_path (value, true, tracker_config_set_data);
  if (strcmp (key, "dirtybitmap-data-id") == 0)
    return tracker_config_set_data_id (&config, value);
  if (strcmp (key, "dirtybitmap-export") == 0)
    return tracker_config_set_export (&config, value);
  /* The file plugin's data (or some other plugin's file=, which the
   * tracker uses only if it is the only one): noted, and passed on.
   */
  if (strcmp (key, "file") == 0 &&
      set_path (value, false, tracker_config_note_plugin_file) == -1)
    return -1;
  if (strcmp (key, "dirtybitmap-control") == 0) {
    if (control_path) {
      nbdkit_error ("dirtybitmap-control= given twice");
      return -1;
    }
    control_path = nbdkit_absolute_path (value);
    if (control_path == NULL)
      return -1;
    /* Bitmaps may then be added while the export serves. */
    config.allow_no_bitmaps = true;
    return 0;
  }
  return next (nxdata, key, value);
}

/* nbdkit 1.32 tells a filter whether the server is read-only (-r)
 * only inside client connections, but the clean stop of a server that
 * no client reached must know it too (see dirtybitmap_cleanup): read
 * it from nbdkit's own command line.  If that cannot be read, the
 * server counts as read-only, the side that changes nothing.
 */
static bool
read_only_from_command_line (void)
{
  static char args[65536];
  int fd = open ("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
  size_t len = 0;
  ssize_t r = 0;

  if (fd == -1) {
    nbdkit_debug ("dirtybitmap: /proc/self/cmdline: %m: the server counts "
                  "as read-only until a client connects");
    return true;
  }
  while (len < sizeof args - 1 &&
         (r = read (fd, args + len, sizeof args - 1 - len)) > 0)
    len += r;
  close (fd);
  if (r == -1 || len == sizeof args - 1) {
    nbdkit_debug ("dirtybitmap: /proc/self/cmdline could not be read whole: "
                  "the server counts as read-only until a client connects");
    return true;
  }
  args[len] = '\0';
  return tracker_config_args_read_only (args, len);
}

static int
dirtybitmap_config_complete (nbdkit_next_config_complete *next,
                             nbdkit_backend *nxdata)
{
  if (tracker_config_check (&config) == -1)
    return -1;
  server_read_only = read_only_from_command_line ();
  tracker = tracker_new (&config);
  if (tracker == NULL)
    return -1;
  return next (nxdata);
}

#define dirtybitmap_config_help \
  "dirtybitmap-file=<FILE>     (required) qcow2 sidecar holding the bitmaps.\n" \
  "dirtybitmap=<NAME>          Bitmap to record writes in (repeatable).\n" \
  "dirtybitmap-granularity=<SIZE> Granularity of new bitmaps (default 64K).\n" \
  "dirtybitmap-crash-safe=<BOOL>  Keep bitmaps across crashes (default true).\n" \
  "dirtybitmap-crash-granularity=<SIZE> Regions made durable (default 1M).\n" \
  "dirtybitmap-in-use=keep|refuse|reset Bitmaps left in use (default keep).\n" \
  "dirtybitmap-data=<FILE|DEVICE> The data the bitmaps describe (default: file=).\n" \
  "dirtybitmap-data-id=<STRING> Identifies the data when no file can.\n" \
  "dirtybitmap-export=<NAME>   The export whose writes are tracked.\n" \
  "dirtybitmap-control=<SOCKET> QMP socket to manage bitmaps while serving."

/* Open the default export once, before serving anyone, so that a
 * sidecar that does not fit is refused at start-up.  Some plugins can
 * only be opened inside a client connection (they need the client's
 * export name); for them the same checks run at the first connection.
 */
static int
dirtybitmap_after_fork (nbdkit_backend *backend)
{
  nbdkit_next *next = nbdkit_next_context_open (backend, 1, "", 1);
  int64_t size = -1;

  if (next != NULL) {
    if (next->prepare (next) != -1) {
      size = next->get_size (next);
      next->finalize (next);
    }
    nbdkit_next_context_close (next);
  }
  if (size == -1)
    nbdkit_debug ("dirtybitmap: the plugin cannot be opened outside a "
                  "connection: the sidecar is checked at the first one");
  else if (tracker_validate (tracker, size) == -1)
    return -1;
  if (control_path) {
    control = qmp_server_start (control_path, PACKAGE_STRING,
                                qmp_commands_dispatch, tracker);
    if (control == NULL)
      return -1;
  }
  return 0;
}

/* Flush the data of EXPORTNAME through a context of our own: every
 * connection is closed by now, and nbdkit 1.32 lets a filter open one
 * on the backend until .cleanup returns.
 */
static int
flush_data (void *backend, const char *exportname)
{
  nbdkit_next *next = nbdkit_next_context_open (backend, 0, exportname, 1);
  int r = -1, err = 0;

  if (next == NULL)
    return -1;
  if (next->prepare (next) != -1) {
    int can = next->can_flush (next);
    r = can == 0 ? 0 : can == -1 ? -1 : next->flush (next, 0, &err);
    next->finalize (next);
  }
  nbdkit_next_context_close (next);
  return r;
}

static void
dirtybitmap_cleanup (nbdkit_backend *backend)
{
  qmp_server_stop (control);
  control = NULL;
  /* A restart after a crash needs no client: unless the server is
   * read-only, what the journal rebuilt is stored at this clean stop.
   */
  if (!server_read_only)
    tracker_start_if_recovered (tracker);
  tracker_record_identity (tracker, flush_data, backend);
  tracker_stop (tracker);     /* failures are kept for the exit status */
}

struct handle {
  const char *exportname;       /* interned: lives as long as the handle */
  bool claimed;                 /* its writes are tracked (see claim) */
};

static void *
dirtybitmap_open (nbdkit_next_open *next, nbdkit_context *context,
                  int readonly, const char *exportname, int is_tls)
{
  struct handle *h;

  if (next (context, readonly, exportname) == -1)
    return NULL;
  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->exportname = nbdkit_strdup_intern (exportname);
  if (h->exportname == NULL) {
    free (h);
    return NULL;
  }
  return h;
}

static void
dirtybitmap_close (void *handle)
{
  free (handle);
}

/* Start tracking (once; later calls check the size). */
static int
start (int64_t size)
{
  if (tracker_start (tracker, size) == -1) {
    /* Serving writes that no bitmap records would break the promise
     * the bitmaps make: stop instead.
     */
    if (tracker_failed (tracker))
      nbdkit_shutdown ();
    return -1;
  }
  return 0;
}

/* Tracking starts with the first connection that may write, so that a
 * read-only server (nbdkit -r) never touches the sidecar.  Its export
 * is claimed only by its first write (see claim): a connection that
 * never writes, such as a monitoring probe, must not decide which
 * export is tracked.  A connection that may write to an export known
 * not to be the tracked one is refused as it opens.
 */
static int
dirtybitmap_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct handle *h = handle;
  int64_t size;
  int r;

  if (readonly)
    return 0;
  size = next->get_size (next);
  if (size == -1)
    return -1;
  r = tracker_check_export (tracker, h->exportname, size);
  if (r <= 0)
    return r;
  return start (size);
}

/* The first write, zero or trim of a connection claims its export,
 * and starts tracking if its connection did not.
 */
static int
claim (nbdkit_next *next, struct handle *h, int *err)
{
  int64_t size = next->get_size (next);

  if (size == -1) {
    *err = EIO;
    return -1;
  }
  if (tracker_claim_export (tracker, h->exportname) == -1) {
    *err = EPERM;
    return -1;
  }
  if (start (size) == -1) {
    *err = EIO;
    return -1;
  }
  __atomic_store_n (&h->claimed, true, __ATOMIC_RELEASE);
  return 0;
}

/* Once the connection has claimed, one load more than marking. */
static int
mark (nbdkit_next *next, struct handle *h, uint64_t offset, uint32_t count,
      const char *what, int *err)
{
  int e;

  if (!__atomic_load_n (&h->claimed, __ATOMIC_ACQUIRE) &&
      claim (next, h, err) == -1)
    return -1;
  if (dirtybitmap_debug_writes)
    nbdkit_debug ("dirtybitmap: %s offset %" PRIu64 " count %" PRIu32,
                  what, offset, count);
  e = tracker_mark (tracker, offset, count);
  if (e != 0) {
    *err = e;
    return -1;
  }
  return 0;
}

static int
dirtybitmap_pwrite (nbdkit_next *next, void *handle, const void *buf,
                    uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  if (mark (next, handle, offset, count, "write", err) == -1)
    return -1;
  return next->pwrite (next, buf, count, offset, flags, err);
}

static int
dirtybitmap_zero (nbdkit_next *next, void *handle,
                  uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  if (mark (next, handle, offset, count, "zero", err) == -1)
    return -1;
  return next->zero (next, count, offset, flags, err);
}

static int
dirtybitmap_trim (nbdkit_next *next, void *handle,
                  uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  if (mark (next, handle, offset, count, "trim", err) == -1)
    return -1;
  return next->trim (next, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name              = "dirtybitmap",
  /* nbdkit 1.32 gives filters no version of their own (_version must
   * equal nbdkit's, or nbdkit refuses to load the filter), so the
   * project's version travels in the name shown by --help.
   */
  .longname          = "nbdkit dirtybitmap filter " PACKAGE_VERSION,
  .load              = dirtybitmap_load,
  .unload            = dirtybitmap_unload,
  .config            = dirtybitmap_config,
  .config_complete   = dirtybitmap_config_complete,
  .config_help       = dirtybitmap_config_help,
  .after_fork        = dirtybitmap_after_fork,
  .cleanup           = dirtybitmap_cleanup,
  .open              = dirtybitmap_open,
  .close             = dirtybitmap_close,
  .prepare           = dirtybitmap_prepare,
  .pwrite            = dirtybitmap_pwrite,
  .zero              = dirtybitmap_zero,
  .trim              = dirtybitmap_trim,
};

NBDKIT_REGISTER_FILTER (filter)
