/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The data's identity.  A regular file: device, inode, size and change
 * time (ctime, to the nanosecond: every write changes it, and no user
 * tool can set it back, unlike mtime).  A block device: its device
 * number, the kernel's write and discard counters, and the boot id
 * (the counters restart at each boot).  Any other plugin: a token the
 * user gives.  Whatever is not proved unchanged is taken as changed.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <nbdkit-filter.h>

#include "data-identity.h"

#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"

/* Read the small text file PATH into BUF (NUL-terminated). */
static int
read_text (const char *path, char *buf, size_t len)
{
  FILE *fp = fopen (path, "re");
  size_t n;

  if (fp == NULL)
    return -1;
  n = fread (buf, 1, len - 1, fp);
  fclose (fp);
  buf[n] = '\0';
  return 0;
}

int
data_identity_parse_block_stat (const char *text,
                                uint64_t counters[QCOW2_IDENTITY_COUNTERS])
{
  /* Fields 5 and 7 (writes), 12 and 14 (discards), counting from 1. */
  static const int wanted[QCOW2_IDENTITY_COUNTERS] = { 5, 7, 12, 14 };
  uint64_t fields[15] = { 0 };
  int n = 0, i;
  const char *p = text;
  char *end;

  while (n < 15) {
    errno = 0;
    fields[n] = strtoull (p, &end, 10);
    if (end == p || errno != 0)
      break;
    p = end;
    n++;
  }
  if (n < 11)
    return -1;
  for (i = 0; i < QCOW2_IDENTITY_COUNTERS; ++i)
    counters[i] = fields[wanted[i] - 1];
  return 0;
}

int
data_identity_parse_boot_id (const char *text, uint8_t id[16])
{
  size_t n = 0;

  for (; *text && *text != '\n' && n < 32; ++text) {
    unsigned v;

    if (*text == '-')
      continue;
    if (sscanf (text, "%1x", &v) != 1)
      return -1;
    id[n / 2] = (n % 2) ? (id[n / 2] | v) : (v << 4);
    n++;
  }
  return n == 32 ? 0 : -1;
}

static int
take_block (const struct stat *st, struct qcow2_identity_ext *out,
            char why[DATA_IDENTITY_MESSAGE_MAX])
{
  char path[64], text[512];

  out->kind = QCOW2_IDENTITY_BLOCK;
  out->device = st->st_rdev;
  snprintf (path, sizeof path, "/sys/dev/block/%u:%u/stat",
            major (st->st_rdev), minor (st->st_rdev));
  if (read_text (path, text, sizeof text) == -1 ||
      data_identity_parse_block_stat (text, out->counters) == -1) {
    snprintf (why, DATA_IDENTITY_MESSAGE_MAX, "%s cannot be read", path);
    return -1;
  }
  if (read_text (BOOT_ID_PATH, text, sizeof text) == -1 ||
      data_identity_parse_boot_id (text, out->boot_id) == -1) {
    snprintf (why, DATA_IDENTITY_MESSAGE_MAX, "%s cannot be read",
              BOOT_ID_PATH);
    return -1;
  }
  return 1;
}

static int
take_path (const char *path, struct qcow2_identity_ext *out,
           char why[DATA_IDENTITY_MESSAGE_MAX])
{
  struct stat st;

  if (stat (path, &st) == -1) {
    snprintf (why, DATA_IDENTITY_MESSAGE_MAX, "%s: stat: %s", path,
              strerror (errno));
    return -1;
  }
  if (S_ISBLK (st.st_mode))
    return take_block (&st, out, why);
  if (!S_ISREG (st.st_mode)) {
    snprintf (why, DATA_IDENTITY_MESSAGE_MAX, "%s is neither a regular "
              "file nor a block device", path);
    return -1;
  }
  out->kind = QCOW2_IDENTITY_FILE;
  out->device = st.st_dev;
  out->inode = st.st_ino;
  out->size = st.st_size;
  out->ctime_sec = st.st_ctim.tv_sec;
  out->ctime_nsec = st.st_ctim.tv_nsec;
  return 1;
}

bool
data_identity_configured (const struct tracker_config *cfg)
{
  return cfg->data_path_given || cfg->data_token ||
    (cfg->data_path && cfg->nr_plugin_files == 1);
}

int
data_identity_take (const struct tracker_config *cfg,
                    struct qcow2_identity_ext *out,
                    char why[DATA_IDENTITY_MESSAGE_MAX])
{
  memset (out, 0, sizeof *out);
  if (cfg->data_path_given)
    return take_path (cfg->data_path, out, why);
  if (cfg->data_token) {
    out->kind = QCOW2_IDENTITY_TOKEN;
    out->token_length = strlen (cfg->data_token);
    memcpy (out->token, cfg->data_token, out->token_length + 1);
    return 1;
  }
  /* Plugins that take several file= (split, partitioning) serve
   * something no one file identifies.
   */
  if (data_identity_configured (cfg))
    return take_path (cfg->data_path, out, why);
  return 0;
}

static const char *
kind_name (uint32_t kind)
{
  switch (kind) {
  case QCOW2_IDENTITY_FILE: return "a regular file";
  case QCOW2_IDENTITY_BLOCK: return "a block device";
  default: return "a dirtybitmap-data-id token";
  }
}

/* EVIDENCE says that FIELD was OLD and is now NEW. */
static const char *
changed (char evidence[DATA_IDENTITY_MESSAGE_MAX], const char *field,
         uint64_t old, uint64_t new)
{
  snprintf (evidence, DATA_IDENTITY_MESSAGE_MAX, "the data may have been "
            "written without this filter: its %s was %" PRIu64 ", is now %"
            PRIu64, field, old, new);
  return evidence;
}

static const char *
compare_file (const struct qcow2_identity_ext *rec,
              const struct qcow2_identity_ext *now, bool session,
              char evidence[DATA_IDENTITY_MESSAGE_MAX])
{
  bool later = now->ctime_sec > rec->ctime_sec ||
    (now->ctime_sec == rec->ctime_sec && now->ctime_nsec >= rec->ctime_nsec);

  if (rec->device != now->device)
    return changed (evidence, "device (st_dev)", rec->device, now->device);
  if (rec->inode != now->inode)
    return changed (evidence, "inode", rec->inode, now->inode);
  if (rec->size != now->size)
    return changed (evidence, "size", rec->size, now->size);
  if (session ? later
      : now->ctime_sec == rec->ctime_sec && now->ctime_nsec == rec->ctime_nsec)
    return NULL;
  snprintf (evidence, DATA_IDENTITY_MESSAGE_MAX, "the data may have been "
            "written without this filter: its change time (ctime) was %"
            PRIi64 ".%09" PRIu32 ", is now %" PRIi64 ".%09" PRIu32,
            rec->ctime_sec, rec->ctime_nsec, now->ctime_sec, now->ctime_nsec);
  return evidence;
}

static const char *
compare_block (const struct qcow2_identity_ext *rec,
               const struct qcow2_identity_ext *now, bool session,
               char evidence[DATA_IDENTITY_MESSAGE_MAX])
{
  static const char *const names[QCOW2_IDENTITY_COUNTERS] = {
    "write I/Os counter", "written sectors counter",
    "discard I/Os counter", "discarded sectors counter",
  };
  size_t i;

  if (rec->device != now->device)
    return changed (evidence, "device number", rec->device, now->device);
  if (memcmp (rec->boot_id, now->boot_id, sizeof rec->boot_id) != 0) {
    snprintf (evidence, DATA_IDENTITY_MESSAGE_MAX, "the data may have been "
              "written without this filter: the machine restarted since "
              "(another boot id), so the block device's write counters "
              "restarted and cannot tell");
    return evidence;
  }
  for (i = 0; i < QCOW2_IDENTITY_COUNTERS; ++i)
    if (session ? now->counters[i] < rec->counters[i]
        : now->counters[i] != rec->counters[i])
      return changed (evidence, names[i], rec->counters[i], now->counters[i]);
  return NULL;
}

const char *
data_identity_compare (const struct qcow2_identity_ext *recorded,
                       const struct qcow2_identity_ext *now,
                       const char *why_none,
                       char evidence[DATA_IDENTITY_MESSAGE_MAX])
{
  bool session = (recorded->flags & QCOW2_IDENTITY_SESSION) != 0;

  if (now == NULL) {
    snprintf (evidence, DATA_IDENTITY_MESSAGE_MAX, "the data was identified "
              "as %s when the bitmaps were stored, and cannot be now (%s)",
              kind_name (recorded->kind), why_none);
    return evidence;
  }
  if (recorded->kind != now->kind) {
    snprintf (evidence, DATA_IDENTITY_MESSAGE_MAX, "the data was identified "
              "as %s when the bitmaps were stored, and is now %s",
              kind_name (recorded->kind), kind_name (now->kind));
    return evidence;
  }
  switch (now->kind) {
  case QCOW2_IDENTITY_FILE:
    return compare_file (recorded, now, session, evidence);
  case QCOW2_IDENTITY_BLOCK:
    return compare_block (recorded, now, session, evidence);
  default:
    if (strcmp (recorded->token, now->token) == 0)
      return NULL;
    snprintf (evidence, DATA_IDENTITY_MESSAGE_MAX, "the data may have been "
              "written without this filter: dirtybitmap-data-id was '%s', "
              "is now '%s'", recorded->token, now->token);
    return evidence;
  }
}

int
data_identity_check (const struct tracker_config *cfg, struct sidecar *sc)
{
  struct qcow2_identity_ext recorded, now;
  char why[DATA_IDENTITY_MESSAGE_MAX] = "", evidence[DATA_IDENTITY_MESSAGE_MAX];
  const char *bad = NULL, *stale;
  bool have_now;
  int r;

  have_now = data_identity_take (cfg, &now, why) == 1;
  if (!have_now && why[0])
    nbdkit_debug ("dirtybitmap: the data's identity cannot be taken: %s", why);
  r = sidecar_recorded_identity (sc, &recorded, &bad);
  if (r == 0)
    return 0;                   /* nothing to compare: as before */
  if (r == -1) {
    snprintf (evidence, sizeof evidence, "the data may have been written "
              "without this filter: %s", bad);
    stale = evidence;
  }
  else
    stale = data_identity_compare (&recorded, have_now ? &now : NULL,
                                   why[0] ? why : "nothing names the data: "
                                   "give dirtybitmap-data= or "
                                   "dirtybitmap-data-id= as before",
                                   evidence);
  if (stale == NULL)
    return 0;
  nbdkit_debug ("dirtybitmap: %s: %s", sidecar_path (sc), stale);
  return sidecar_distrust_bitmaps (sc, stale);
}

int
data_identity_record (const struct tracker_config *cfg, struct sidecar *sc,
                      uint32_t flags, bool replace)
{
  struct qcow2_identity_ext id;
  char why[DATA_IDENTITY_MESSAGE_MAX];

  switch (data_identity_take (cfg, &id, why)) {
  case 1:
    id.flags = flags;
    return sidecar_set_identity (sc, &id);
  case 0:
    return replace ? sidecar_set_identity (sc, NULL) : 0;
  default:
    if (replace)
      return sidecar_set_identity (sc, NULL);
    nbdkit_error ("warning: %s: the data's identity cannot be taken (%s): "
                  "the next start checks it against the one taken before, "
                  "as after a crash", sidecar_path (sc), why);
    return 0;
  }
}
