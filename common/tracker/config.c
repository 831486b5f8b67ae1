/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The filter's parameters, checked as nbdkit parses them. */
#include <config.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <nbdkit-filter.h>

#include "qcow2-format.h"
#include "tracker.h"
#include "utf8.h"

/* NBD's limit on the length of a string such as an export name. */
#define NBD_MAX_EXPORT_NAME 4096

void
tracker_config_init (struct tracker_config *cfg)
{
  memset (cfg, 0, sizeof *cfg);
  cfg->granularity_bits = TRACKER_DEFAULT_GRANULARITY_BITS;
  cfg->crash_safe = true;
  cfg->in_use_policy = IN_USE_KEEP;
  cfg->store_interval = TRACKER_DEFAULT_STORE_INTERVAL;
  cfg->resize_policy = RESIZE_REFUSE;
}

void
tracker_config_free (struct tracker_config *cfg)
{
  size_t i;

  free (cfg->sidecar_path);
  for (i = 0; i < cfg->nr_names; ++i)
    free (cfg->names[i]);
  free (cfg->names);
  free (cfg->data_path);
  free (cfg->data_token);
  free (cfg->export_name);
  tracker_config_init (cfg);
}

/* *FIELD becomes a copy of VALUE. */
static int
set_string (char **field, const char *value)
{
  char *copy = strdup (value);

  if (copy == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  free (*field);
  *field = copy;
  return 0;
}

int
tracker_config_set_sidecar (struct tracker_config *cfg, const char *path)
{
  if (cfg->sidecar_path) {
    nbdkit_error ("dirtybitmap-file= given twice: one sidecar per export");
    return -1;
  }
  if (*path == '\0') {
    nbdkit_error ("dirtybitmap-file= is empty: give the path of the qcow2 "
                  "sidecar");
    return -1;
  }
  return set_string (&cfg->sidecar_path, path);
}

int
tracker_config_add_name (struct tracker_config *cfg, const char *name)
{
  char **p;
  size_t i;

  if (qcow2_bitmap_name_check (name, "dirtybitmap=") == -1)
    return -1;
  if (!utf8_is_valid (name, strlen (name))) {
    char *shown = utf8_escape_invalid (name);

    nbdkit_error ("dirtybitmap=%s: the bitmap name is not valid UTF-8 "
                  "(bytes shown as \\xNN), which QMP clients could not "
                  "send; choose another", shown ? shown : "");
    free (shown);
    return -1;
  }
  if (strcmp (name, QCOW2_JOURNAL_NAME) == 0) {
    nbdkit_error ("dirtybitmap=%s: that name is reserved for the filter's "
                  "crash-safety journal; choose another", name);
    return -1;
  }
  for (i = 0; i < cfg->nr_names; ++i) {
    if (strcmp (cfg->names[i], name) == 0) {
      nbdkit_error ("dirtybitmap=%s: bitmap named twice", name);
      return -1;
    }
  }
  p = realloc (cfg->names, (cfg->nr_names + 1) * sizeof *p);
  if (p == NULL) {
    nbdkit_error ("realloc: %m");
    return -1;
  }
  cfg->names = p;
  cfg->names[cfg->nr_names] = strdup (name);
  if (cfg->names[cfg->nr_names] == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  cfg->nr_names++;
  return 0;
}

static int
granularity_bits (const char *key, int64_t granularity, const char *example,
                  unsigned *bits)
{
  int b = qcow2_granularity_bits (granularity);

  if (b == -1) {
    nbdkit_error ("%s=%" PRIi64 ": must be a power of two from 512 to 2G "
                  "(for example %s)", key, granularity, example);
    return -1;
  }
  *bits = b;
  return 0;
}

int
tracker_config_set_granularity (struct tracker_config *cfg,
                                int64_t granularity)
{
  return granularity_bits ("dirtybitmap-granularity", granularity, "64K",
                           &cfg->granularity_bits);
}

int
tracker_config_set_crash_granularity (struct tracker_config *cfg,
                                      int64_t granularity)
{
  return granularity_bits ("dirtybitmap-crash-granularity", granularity,
                           "1M", &cfg->crash_granularity_bits);
}

int
tracker_config_set_in_use_policy (struct tracker_config *cfg,
                                  const char *policy)
{
  if (strcmp (policy, "keep") == 0)
    cfg->in_use_policy = IN_USE_KEEP;
  else if (strcmp (policy, "refuse") == 0)
    cfg->in_use_policy = IN_USE_REFUSE;
  else if (strcmp (policy, "reset") == 0)
    cfg->in_use_policy = IN_USE_RESET;
  else {
    nbdkit_error ("dirtybitmap-in-use=%s: must be keep (leave such bitmaps "
                  "in use, as QEMU does), refuse (do not start) or reset "
                  "(make them all dirty and recording as before)", policy);
    return -1;
  }
  return 0;
}

int
tracker_config_set_resize_policy (struct tracker_config *cfg,
                                  const char *policy)
{
  if (strcmp (policy, "refuse") == 0)
    cfg->resize_policy = RESIZE_REFUSE;
  else if (strcmp (policy, "adopt") == 0)
    cfg->resize_policy = RESIZE_ADOPT;
  else {
    nbdkit_error ("dirtybitmap-resize=%s: must be refuse (do not start when "
                  "the export's size is not the sidecar's) or adopt (resize "
                  "the sidecar to the export, marking any added area dirty "
                  "in every bitmap)", policy);
    return -1;
  }
  return 0;
}

int
tracker_config_set_data (struct tracker_config *cfg, const char *path)
{
  if (cfg->data_path_given) {
    nbdkit_error ("dirtybitmap-data= given twice: it names the one file or "
                  "device the bitmaps describe");
    return -1;
  }
  if (set_string (&cfg->data_path, path) == -1)
    return -1;
  cfg->data_path_given = true;
  return 0;
}

int
tracker_config_note_plugin_file (struct tracker_config *cfg, const char *path)
{
  struct stat st;
  bool is_disk = stat (path, &st) == 0 && (S_ISREG (st.st_mode) ||
                                           S_ISBLK (st.st_mode));

  cfg->nr_plugin_files++;
  /* One such file= is the one disk the plugin serves, whatever the
   * export name (see tracked-export.c).
   */
  cfg->plugin_file_is_disk = cfg->nr_plugin_files == 1 && is_disk;
  if (cfg->data_path_given || cfg->data_path)
    return 0;                   /* the first one, if it is the only one */
  /* Some plugins' file= is no local file (vddk's "[datastore] path"):
   * such a plugin is one without an identity, not a changed one.
   */
  if (!is_disk) {
    nbdkit_debug ("dirtybitmap: file=%s is no local file or block device: "
                  "it does not identify the data", path);
    return 0;
  }
  return set_string (&cfg->data_path, path);
}

int
tracker_config_set_data_id (struct tracker_config *cfg, const char *token)
{
  if (cfg->data_token) {
    nbdkit_error ("dirtybitmap-data-id= given twice");
    return -1;
  }
  if (*token == '\0' || strlen (token) > QCOW2_IDENTITY_MAX_TOKEN) {
    nbdkit_error ("dirtybitmap-data-id=%s: must be 1 to %d bytes", token,
                  QCOW2_IDENTITY_MAX_TOKEN);
    return -1;
  }
  return set_string (&cfg->data_token, token);
}

int
tracker_config_set_store_interval (struct tracker_config *cfg,
                                   unsigned seconds)
{
  cfg->store_interval = seconds;
  cfg->store_interval_given = true;
  return 0;
}

int
tracker_config_set_export (struct tracker_config *cfg, const char *name)
{
  if (cfg->export_name) {
    nbdkit_error ("dirtybitmap-export= given twice: it names the one export "
                  "whose writes the sidecar tracks");
    return -1;
  }
  if (strlen (name) > NBD_MAX_EXPORT_NAME) {
    nbdkit_error ("dirtybitmap-export=: the name is longer than the %d bytes "
                  "NBD allows an export name; give the name clients use",
                  NBD_MAX_EXPORT_NAME);
    return -1;
  }
  return set_string (&cfg->export_name, name);
}

/* nbdkit's options that take a value, short and long (nbdkit 1.32):
 * the value is the next argument unless it is attached.
 */
static const char short_options_with_value[] = "DegiPptuU";
static const char *const long_options_with_value[] = {
  "debug", "export", "export-name", "exportname", "filter", "group",
  "ip-addr", "ipaddr", "log", "mask-handshake", "pid-file", "pidfile",
  "port", "run", "selinux-label", "threads", "tls", "tls-certificates",
  "tls-psk", "unix", "user", NULL
};

/* The first LEN bytes of ARG abbreviate WORD, as getopt_long allows. */
static bool
abbreviates (const char *arg, size_t len, const char *word)
{
  return len > 0 && len <= strlen (word) && strncmp (arg, word, len) == 0;
}

/* A long option ("--NAME" or "--NAME=VALUE"): read-only, or whether
 * its value is the next argument.
 */
static bool
long_option_read_only (const char *name, bool *value_next)
{
  size_t len = strcspn (name, "=");
  size_t i;

  /* "--r" could be --run too; from "--re" on it is read-only. */
  if (len >= 2 &&
      (abbreviates (name, len, "readonly") ||
       abbreviates (name, len, "read-only")))
    return true;
  for (i = 0; name[len] == '\0' && long_options_with_value[i]; ++i)
    if (abbreviates (name, len, long_options_with_value[i]))
      *value_next = true;
  return false;
}

/* Every argument is looked at, not only those before the plugin's
 * name, since getopt lets options follow it; an argument that is an
 * option's value is skipped.  A wrong guess can only make the server
 * look read-only, which is the safe side: the sidecar is then left as
 * it is when no client writes.
 */
bool
tracker_config_args_read_only (const char *args, size_t len)
{
  const char *arg, *end = args + len;
  bool value_next = false;

  for (arg = args; arg < end; arg += strlen (arg) + 1) {
    const char *p;

    if (value_next) {
      value_next = false;
      continue;
    }
    if (strcmp (arg, "--") == 0)
      break;
    if (strncmp (arg, "--", 2) == 0) {
      if (long_option_read_only (arg + 2, &value_next))
        return true;
      continue;
    }
    if (arg[0] != '-')
      continue;
    for (p = arg + 1; *p; ++p) {
      if (*p == 'r')
        return true;
      if (strchr (short_options_with_value, *p)) {
        value_next = p[1] == '\0';
        break;
      }
    }
  }
  return false;
}

int
tracker_config_check (const struct tracker_config *cfg)
{
  if (cfg->store_interval_given && cfg->store_interval > 0 &&
      !cfg->crash_safe) {
    nbdkit_error ("dirtybitmap-store-interval=%u needs crash safety: with "
                  "dirtybitmap-crash-safe=false a bitmap recording at a "
                  "crash is not trusted whatever was stored, so a periodic "
                  "store bounds nothing; leave dirtybitmap-store-interval "
                  "out, or set dirtybitmap-crash-safe=true",
                  cfg->store_interval);
    return -1;
  }
  if (cfg->data_path_given && cfg->data_token) {
    nbdkit_error ("dirtybitmap-data= and dirtybitmap-data-id= both given: "
                  "the data is identified by one of them");
    return -1;
  }
  if (cfg->sidecar_path == NULL) {
    nbdkit_error ("dirtybitmap-file=SIDECAR.qcow2 is required: the qcow2 "
                  "file that holds the bitmaps (created if missing)");
    return -1;
  }
  return 0;
}
