/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* nbdkit dirtybitmap filter: the nbdkit callbacks.  Every write, zero
 * and trim is marked in the tracker before it is passed on; the
 * tracking itself lives in common/tracker.  A connection whose export
 * name is a point-in-time view's is served by common/views instead,
 * and writes copy what the views still need before they pass on.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "qmp-commands.h"
#include "qmp-server.h"
#include "tracker.h"
#include "views.h"

/* -D dirtybitmap.writes=1 logs every range marked. */
NBDKIT_DLL_PUBLIC int dirtybitmap_debug_writes;

static struct tracker_config config;
static struct tracker *tracker;
static char *control_path;              /* dirtybitmap-control= */
static struct qmp_server *control;
static struct views_config view_config;
static struct views *views;
static struct tracker_store_timer *store_timer;  /* periodic store */
/* The export's size, seen after nbdkit forked, does not fit the
 * sidecar: every client is refused, and nbdkit exits 1 when stopped.
 */
static bool size_refused;
/* nbdkit's pid at start-up: another one after the fork means nbdkit
 * forked, as a daemon or to run a --run command.
 */
static pid_t startup_pid;
/* The plugin was given dir=: it serves an export per name, which it
 * cannot open outside a client connection (the file plugin of nbdkit
 * 1.32 crashes if asked to).
 */
static bool plugin_serves_names;
/* nbdkit -r: guessed from nbdkit's command line at start-up (a guess
 * that cannot tell counts as read-only), then told by .preconnect.
 */
static bool server_read_only;

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
  bool failed = size_refused || (tracker && tracker_failed (tracker));

  tracker_free (tracker);
  views_free (views);
  views_config_free (&view_config);
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
  if (strcmp (key, "dirtybitmap-resize") == 0)
    return tracker_config_set_resize_policy (&config, value);
  if (strcmp (key, "dirtybitmap-data") == 0)
    return set_path (value, true, tracker_config_set_data);
  if (strcmp (key, "dirtybitmap-data-id") == 0)
    return tracker_config_set_data_id (&config, value);
  if (strcmp (key, "dirtybitmap-export") == 0)
    return tracker_config_set_export (&config, value);
  if (strcmp (key, "dirtybitmap-store-interval") == 0) {
    unsigned seconds;
    if (nbdkit_parse_unsigned ("dirtybitmap-store-interval", value,
                               &seconds) == -1)
      return -1;
    return tracker_config_set_store_interval (&config, seconds);
  }
  /* The file plugin's data (or some other plugin's file=, which the
   * tracker uses only if it is the only one): noted, and passed on.
   */
  if (strcmp (key, "file") == 0 &&
      set_path (value, false, tracker_config_note_plugin_file) == -1)
    return -1;
  /* The file plugin's directory mode (and the like) serves one export
   * per name and needs a client's name to open one at all.
   */
  if (strcmp (key, "dir") == 0)
    plugin_serves_names = true;
  if (strcmp (key, "dirtybitmap-view-scratch") == 0) {
    free (view_config.scratch_dir);
    view_config.scratch_dir = nbdkit_absolute_path (value);
    return view_config.scratch_dir ? 0 : -1;
  }
  if (strcmp (key, "dirtybitmap-view-scratch-limit") == 0) {
    int64_t size = nbdkit_parse_size (value);
    if (size == -1)
      return -1;
    view_config.scratch_limit = size;
    return 0;
  }
  if (strcmp (key, "dirtybitmap-view-on-error") == 0)
    return views_config_set_on_error (&view_config, value);
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
  /* Views' scratch files go beside the sidecar unless told. */
  if (view_config.scratch_dir == NULL) {
    char *copy = strdup (config.sidecar_path);
    view_config.scratch_dir = copy ? strdup (dirname (copy)) : NULL;
    free (copy);
    if (view_config.scratch_dir == NULL) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
  }
  views = views_new (&view_config);
  if (views == NULL)
    return -1;
  tracker_attach_views (tracker, views);
  return next (nxdata);
}

#define dirtybitmap_config_help \
  "dirtybitmap-file=<FILE>     (required) qcow2 sidecar holding the bitmaps.\n" \
  "dirtybitmap=<NAME>          Bitmap to record writes in (repeatable).\n" \
  "dirtybitmap-granularity=<SIZE> Granularity of new bitmaps (default 64K).\n" \
  "dirtybitmap-crash-safe=<BOOL>  Keep bitmaps across crashes (default true).\n" \
  "dirtybitmap-crash-granularity=<SIZE> Regions made durable (default 1M).\n" \
  "dirtybitmap-in-use=keep|refuse|reset Bitmaps left in use (default keep).\n" \
  "dirtybitmap-resize=refuse|adopt Export resized (default refuse).\n" \
  "dirtybitmap-data=<FILE|DEVICE> The data the bitmaps describe (default: file=).\n" \
  "dirtybitmap-data-id=<STRING> Identifies the data when no file can.\n" \
  "dirtybitmap-export=<NAME>   The export whose writes are tracked.\n" \
  "dirtybitmap-control=<SOCKET> QMP socket to manage bitmaps while serving.\n" \
  "dirtybitmap-view-scratch=<DIR> Where views keep their copies (default:\n" \
  "                            the sidecar's directory).\n" \
  "dirtybitmap-view-scratch-limit=<SIZE> Views' scratch bytes at most.\n" \
  "dirtybitmap-view-on-error=break-view|fail-write A failed copy (default\n" \
  "                            break-view).\n" \
  "dirtybitmap-store-interval=<SECONDS> Periodic store (default 300, 0: off)."

/* Everything that does not need the plugin is checked here, before
 * nbdkit forks into the background or starts a --run command, so
 * that a refusal reaches stderr and nbdkit's exit status.
 */
static int
dirtybitmap_get_ready (int thread_model)
{
  startup_pid = getpid ();
  return tracker_validate_sidecar (tracker);
}

/* The default export, opened once outside any connection: its size,
 * and whether the plugin can write at all.  -1 if the plugin cannot
 * be opened so (some need a client's export name).  A context that
 * may write is tried first, since one opened read-only never can.
 */
static int64_t
probe_export (nbdkit_backend *backend, int *can_write)
{
  int readonly;

  for (readonly = 0; readonly <= 1; ++readonly) {
    nbdkit_next *next = nbdkit_next_context_open (backend, readonly, "", 1);
    int64_t size = -1;

    if (next == NULL)
      continue;
    if (next->prepare (next) != -1) {
      size = next->get_size (next);
      *can_write = readonly ? -1 : next->can_write (next);
      next->finalize (next);
    }
    nbdkit_next_context_close (next);
    if (size != -1)
      return size;
  }
  return -1;
}

/* The export's size is the one check left for after the fork, the
 * only place nbdkit 1.32 lets a filter open the plugin outside a
 * connection.  In the foreground nbdkit has not forked, and a failure
 * here makes it exit 1 at once.  If it forked, failing would leave a
 * --run command's clients waiting on a socket nobody serves (the
 * command's process keeps it open), and a daemon's pid file and socket
 * pointing at nothing; so nbdkit goes on serving, refusing every
 * client with the error, and exits 1 when it is stopped.  Some plugins
 * can only be opened inside a client connection; for them the size is
 * checked at the first one.
 */
static int
dirtybitmap_after_fork (nbdkit_backend *backend)
{
  int can_write = -1;
  int64_t size = plugin_serves_names ? -1 : probe_export (backend, &can_write);

  if (size == -1)
    nbdkit_debug ("dirtybitmap: the plugin cannot be opened outside a "
                  "connection: the export's size is checked at the first "
                  "one");
  else if (tracker_validate_size (tracker, size) == -1) {
    if (getpid () == startup_pid)
      return -1;
    size_refused = true;
    nbdkit_error ("%s: every client is refused until nbdkit is stopped "
                  "(it then exits with status 1); fix what the error above "
                  "says and start nbdkit again", config.sidecar_path);
    return 0;
  }
  if (can_write == 0)
    tracker_set_read_only (tracker);
  if (control_path) {
    control = qmp_server_start (control_path, PACKAGE_STRING,
                                qmp_commands_dispatch, tracker);
    if (control == NULL)
      return -1;
  }
  return tracker_store_timer_start (tracker, &store_timer);
}

/* The data is flushed before its identity is recorded at the stop:
 * each connection that wrote flushes as it closes (see
 * dirtybitmap_finalize), rather than the stop opening a context of its
 * own once every connection is gone, which some plugins cannot serve
 * outside a connection (they need the client's export name) and
 * others only one at a time (qemu-nbd behind the nbd plugin).
 */
static bool flush_failed;

static void
dirtybitmap_cleanup (nbdkit_backend *backend)
{
  qmp_server_stop (control);
  control = NULL;
  tracker_store_timer_stop (store_timer);
  store_timer = NULL;
  /* A restart after a crash needs no client: unless the server is
   * read-only, what the journal rebuilt is stored at this clean stop.
   */
  if (!server_read_only)
    tracker_start_if_recovered (tracker);
  tracker_record_identity (tracker,
                           !__atomic_load_n (&flush_failed, __ATOMIC_ACQUIRE));
  tracker_stop (tracker);     /* failures are kept for the exit status */
}

static int
dirtybitmap_preconnect (nbdkit_next_preconnect *next, nbdkit_backend *nxdata,
                        int readonly)
{
  server_read_only = readonly;
  return next (nxdata, readonly);
}

struct handle {
  const char *exportname;       /* interned: lives as long as the handle */
  struct view *view;            /* a view's connection, else NULL */
  bool claimed;                 /* its writes are tracked (see claim) */
};

/* A view's connection reads the plugin's tracked export, read-only:
 * it never claims an export nor starts tracking.
 */
static void *
dirtybitmap_open (nbdkit_next_open *next, nbdkit_context *context,
                  int readonly, const char *exportname, int is_tls)
{
  struct view *view = views ? views_open (views, exportname) : NULL;
  struct handle *h;

  /* Never the live disk under a view's name: a backup would read it
   * as if it were the view.
   */
  if (view == NULL && views && views_removed (views, exportname)) {
    nbdkit_error ("view '%s' was removed (x-dirtybitmap-view-remove): its "
                  "export name is refused; add the view again to read it",
                  exportname);
    return NULL;
  }
  if (view ? next (context, 1, tracker_export_name (tracker)) == -1
      : next (context, readonly, exportname) == -1) {
    view_close (view);
    return NULL;
  }
  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    view_close (view);
    return NULL;
  }
  h->view = view;
  h->exportname = nbdkit_strdup_intern (exportname);
  if (h->exportname == NULL) {
    view_close (view);
    free (h);
    return NULL;
  }
  return h;
}

static void
dirtybitmap_close (void *handle)
{
  struct handle *h = handle;

  view_close (h->view);
  free (h);
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
  int can_write, r;

  if (h->view)
    return 0;                   /* a view's reads claim nothing */
  if (size_refused) {
    /* The error again, for this client, where the log shows it. */
    size = next->get_size (next);
    if (size == -1 || tracker_validate_size (tracker, size) == -1)
      return -1;
  }
  if (readonly) {
    /* Read-only though nbdkit is not (-r): a filter above this one
     * (cow) never writes through it, so the sidecar need not be held.
     */
    if (!server_read_only)
      tracker_release_sidecar (tracker);
    return 0;
  }
  /* A plugin that cannot write never changes the disk: no sidecar is
   * created, opened for writing or locked for it.
   */
  can_write = next->can_write (next);
  if (can_write == -1)
    return -1;
  if (can_write == 0) {
    tracker_release_sidecar (tracker);
    return 0;
  }
  size = next->get_size (next);
  if (size == -1)
    return -1;
  r = tracker_check_export (tracker, h->exportname, size);
  if (r <= 0)
    return r;
  return start (size);
}

/* A connection that wrote flushes as it closes, when the stop records
 * the data's identity (see flush_data).
 */
static int
dirtybitmap_finalize (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;
  int can, err = 0;

  /* A view's connection never claims, so never flushes. */
  if (!__atomic_load_n (&h->claimed, __ATOMIC_ACQUIRE) ||
      !tracker_records_identity (tracker))
    return 0;
  can = next->can_flush (next);
  if (can == -1 || (can == 1 && next->flush (next, 0, &err) == -1)) {
    nbdkit_debug ("dirtybitmap: the data could not be flushed as a "
                  "connection that wrote closed");
    __atomic_store_n (&flush_failed, true, __ATOMIC_RELEASE);
  }
  return 0;
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

/* How views read the disk: through the plugin of some connection. */
static int
read_next (void *opaque, void *buf, uint32_t count, uint64_t offset,
           int *err)
{
  nbdkit_next *next = opaque;

  return next->pread (next, buf, count, offset, 0, err);
}

/* Before a write, zero or trim passes on: claim the export (once the
 * connection has, one load), mark the range, and copy what the views
 * still need of it, reading through this connection.  Unless this
 * fails, end_write must follow once the plugin has replied.
 */
static int
begin_write (nbdkit_next *next, struct handle *h, uint64_t offset,
             uint32_t count, const char *what, int *err)
{
  bool copy = false;
  int e;

  if (!__atomic_load_n (&h->claimed, __ATOMIC_ACQUIRE) &&
      claim (next, h, err) == -1)
    return -1;
  if (dirtybitmap_debug_writes)
    nbdkit_debug ("dirtybitmap: %s offset %" PRIu64 " count %" PRIu32,
                  what, offset, count);
  e = tracker_write_begin (tracker, offset, count, &copy);
  if (e != 0) {
    *err = e;
    return -1;
  }
  if (copy && views_copy_before_write (views, read_next, next, offset, count,
                                       err) == -1) {
    tracker_write_end (tracker);
    return -1;
  }
  return 0;
}

static int
end_write (int r)
{
  tracker_write_end (tracker);
  return r;
}

/* A view is read-only, but says it is writable so that its clients may
 * trim what they have read.
 */
static int
refuse_view_write (struct handle *h, const char *what, int *err)
{
  nbdkit_error ("view '%s' is read-only: %s refused", view_name (h->view),
                what);
  *err = EROFS;
  return -1;
}

static int
dirtybitmap_pread (nbdkit_next *next, void *handle, void *buf,
                   uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (h->view)
    return view_read (h->view, read_next, next, buf, count, offset, err);
  return next->pread (next, buf, count, offset, flags, err);
}

static int
dirtybitmap_pwrite (nbdkit_next *next, void *handle, const void *buf,
                    uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (h->view)
    return refuse_view_write (h, "write", err);
  if (begin_write (next, h, offset, count, "write", err) == -1)
    return -1;
  return end_write (next->pwrite (next, buf, count, offset, flags, err));
}

static int
dirtybitmap_zero (nbdkit_next *next, void *handle,
                  uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (h->view)
    return refuse_view_write (h, "zero", err);
  if (begin_write (next, h, offset, count, "zero", err) == -1)
    return -1;
  return end_write (next->zero (next, count, offset, flags, err));
}

/* A trim of a view releases what its client has read. */
static int
dirtybitmap_trim (nbdkit_next *next, void *handle,
                  uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (h->view)
    return view_trim (h->view, count, offset, err);
  if (begin_write (next, h, offset, count, "trim", err) == -1)
    return -1;
  return end_write (next->trim (next, count, offset, flags, err));
}

/* What a view's connection may do: read, trim, and be refused writes;
 * its block status is all data, whatever the plugin's holes.
 */
static int
dirtybitmap_can_write (nbdkit_next *next, void *handle)
{
  return ((struct handle *) handle)->view ? 1 : next->can_write (next);
}

static int
dirtybitmap_can_trim (nbdkit_next *next, void *handle)
{
  return ((struct handle *) handle)->view ? 1 : next->can_trim (next);
}

static int
dirtybitmap_can_zero (nbdkit_next *next, void *handle)
{
  return ((struct handle *) handle)->view ? NBDKIT_ZERO_NATIVE
    : next->can_zero (next);
}

static int
dirtybitmap_can_extents (nbdkit_next *next, void *handle)
{
  return ((struct handle *) handle)->view ? 0 : next->can_extents (next);
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
  .get_ready         = dirtybitmap_get_ready,
  .after_fork        = dirtybitmap_after_fork,
  .cleanup           = dirtybitmap_cleanup,
  .preconnect        = dirtybitmap_preconnect,
  .open              = dirtybitmap_open,
  .close             = dirtybitmap_close,
  .prepare           = dirtybitmap_prepare,
  .finalize          = dirtybitmap_finalize,
  .can_write         = dirtybitmap_can_write,
  .can_trim          = dirtybitmap_can_trim,
  .can_zero          = dirtybitmap_can_zero,
  .can_extents       = dirtybitmap_can_extents,
  .pread             = dirtybitmap_pread,
  .pwrite            = dirtybitmap_pwrite,
  .zero              = dirtybitmap_zero,
  .trim              = dirtybitmap_trim,
};

NBDKIT_REGISTER_FILTER (filter)
