/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The registry of views: its parameters, the list changed through
 * stages, and queries.  See views.h.
 */
#include <config.h>

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <nbdkit-filter.h>

#include "utf8.h"
#include "views-internal.h"

void
views_config_free (struct views_config *cfg)
{
  free (cfg->scratch_dir);
  cfg->scratch_dir = NULL;
}

int
views_config_set_on_error (struct views_config *cfg, const char *policy)
{
  if (strcmp (policy, "break-view") == 0)
    cfg->on_error = VIEWS_BREAK_VIEW;
  else if (strcmp (policy, "fail-write") == 0)
    cfg->on_error = VIEWS_FAIL_WRITE;
  else {
    nbdkit_error ("dirtybitmap-view-on-error=%s: expected break-view or "
                  "fail-write", policy);
    return -1;
  }
  return 0;
}

int
views_fail (char **error, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  if (vasprintf (error, fmt, ap) == -1)
    *error = NULL;
  va_end (ap);
  return -1;
}

struct view *
views_open (struct views *vs, const char *name)
{
  struct view *v = NULL;
  size_t i;

  pthread_mutex_lock (&vs->lock);
  for (i = 0; v == NULL && i < vs->n; ++i)
    if (strcmp (vs->list[i]->name, name) == 0) {
      v = vs->list[i];
      __atomic_add_fetch (&v->refs, 1, __ATOMIC_RELAXED);
    }
  pthread_mutex_unlock (&vs->lock);
  return v;
}

/* The index of NAME among the names of removed views, or -1. */
static ssize_t
find_removed (const struct views *vs, const char *name)
{
  size_t i;

  for (i = 0; i < vs->nr_removed; ++i)
    if (strcmp (vs->removed[i], name) == 0)
      return i;
  return -1;
}

static void
forget_removed (struct views *vs, size_t i)
{
  free (vs->removed[i]);
  memmove (&vs->removed[i], &vs->removed[i + 1],
           (vs->nr_removed - i - 1) * sizeof vs->removed[0]);
  vs->nr_removed--;
}

/* Remember NAME (a view's: at most 1023 bytes), forgetting the oldest
 * when the list is full.  Out of memory it is not remembered: a
 * client may then be served the live disk under that name, as under
 * any name the plugin serves.
 */
static void
remember_removed (struct views *vs, const char *name)
{
  char *copy = strdup (name);

  if (copy == NULL)
    return;
  if (vs->nr_removed == VIEWS_MAX)
    forget_removed (vs, 0);
  vs->removed[vs->nr_removed++] = copy;
}

bool
views_removed (struct views *vs, const char *name)
{
  bool r;

  pthread_mutex_lock (&vs->lock);
  r = find_removed (vs, name) >= 0;
  pthread_mutex_unlock (&vs->lock);
  return r;
}

/* The registry. */

struct views *
views_new (const struct views_config *cfg)
{
  struct views *vs = calloc (1, sizeof *vs);

  if (vs == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  vs->cfg = cfg;
  vs->budget.limit = cfg->scratch_limit;
  pthread_mutex_init (&vs->lock, NULL);
  return vs;
}

void
views_free (struct views *vs)
{
  size_t i;

  if (vs == NULL)
    return;
  for (i = 0; i < vs->n; ++i)
    view_unref (vs->list[i]);
  for (i = 0; i < vs->nr_removed; ++i)
    free (vs->removed[i]);
  pthread_mutex_destroy (&vs->lock);
  free (vs);
}

static bool
is_listed (struct view *const *list, size_t n, const struct view *v)
{
  size_t i;

  for (i = 0; i < n; ++i)
    if (list[i] == v)
      return true;
  return false;
}

static ssize_t
find_staged (const struct views_stage *st, const char *name)
{
  size_t i;

  for (i = 0; i < st->n; ++i)
    if (strcmp (st->list[i]->name, name) == 0)
      return i;
  return -1;
}

struct views_stage *
views_stage_new (struct views *vs)
{
  struct views_stage *st = calloc (1, sizeof *st);

  if (st == NULL)
    return NULL;
  st->vs = vs;
  pthread_mutex_lock (&vs->lock);
  memcpy (st->list, vs->list, vs->n * sizeof vs->list[0]);
  st->n = vs->n;
  pthread_mutex_unlock (&vs->lock);
  return st;
}

void
views_stage_free (struct views_stage *st)
{
  size_t i;

  if (st == NULL)
    return;
  if (!st->committed)
    for (i = 0; i < st->n; ++i)
      if (!is_listed (st->vs->list, st->vs->n, st->list[i]))
        view_unref (st->list[i]);
  free (st);
}

int
views_stage_add (struct views_stage *st, const char *name,
                 const char *bitmap, const struct dirtymap *dirty,
                 unsigned bits, uint64_t disk_size, char **error)
{
  size_t len = strlen (name);
  struct view *v;

  if (len == 0 || len > VIEWS_NAME_MAX)
    return views_fail (error, "View name must be 1 to %d bytes long, not "
                       "%zu", VIEWS_NAME_MAX, len);
  if (!utf8_is_valid (name, len))
    return views_fail (error, "View name must be valid UTF-8");
  if (find_staged (st, name) != -1)
    return views_fail (error, "a view named '%s' already exists", name);
  if (st->n == VIEWS_MAX)
    return views_fail (error, "View '%s' cannot be added: there are %d "
                       "views already, the most one server holds; remove "
                       "some first", name, VIEWS_MAX);
  v = view_new (st->vs, name, bitmap, dirty, bits, disk_size, error);
  if (v == NULL)
    return -1;
  st->list[st->n++] = v;
  nbdkit_debug ("dirtybitmap: view '%s' staged: %" PRIu64 " bytes frozen "
                "in granules of %" PRIu64, name, v->frozen_bytes,
                UINT64_C(1) << v->bits);
  return 0;
}

int
views_stage_remove (struct views_stage *st, const char *name, char **error)
{
  ssize_t i = find_staged (st, name);

  if (i == -1)
    return views_fail (error, "no view named '%s'", name);
  /* One added by this stage goes now; one listed, at the commit. */
  if (!is_listed (st->vs->list, st->vs->n, st->list[i]))
    view_unref (st->list[i]);
  memmove (&st->list[i], &st->list[i + 1],
           (st->n - i - 1) * sizeof st->list[0]);
  st->n--;
  return 0;
}

void
views_stage_commit (struct views_stage *st)
{
  struct views *vs = st->vs;
  size_t i;

  pthread_mutex_lock (&vs->lock);
  for (i = 0; i < vs->n; ++i) {
    struct view *v = vs->list[i];

    if (is_listed (st->list, st->n, v))
      continue;
    remember_removed (vs, v->name);
    view_remove (v);
    view_unref (v);
  }
  for (i = 0; i < st->n; ++i) {
    ssize_t j = find_removed (vs, st->list[i]->name);

    if (j >= 0)
      forget_removed (vs, j);   /* a name used again */
  }
  memcpy (vs->list, st->list, st->n * sizeof st->list[0]);
  vs->n = st->n;
  pthread_mutex_unlock (&vs->lock);
  st->committed = true;
}

/* Queries. */

static int
view_info (struct view *v, struct view_info *info)
{
  pthread_mutex_lock (&v->lock);
  info->name = strdup (v->name);
  info->bitmap = v->bitmap ? strdup (v->bitmap) : NULL;
  info->granularity = UINT64_C(1) << v->bits;
  info->frozen_bytes = v->frozen_bytes;
  info->copied_bytes = __atomic_load_n (&v->copied_bytes, __ATOMIC_RELAXED);
  info->scratch_bytes = scratch_bytes (v->scratch);
  info->broken = v->broken;
  info->reason = v->reason ? strdup (v->reason) : NULL;
  pthread_mutex_unlock (&v->lock);
  if (!info->name || (v->bitmap && !info->bitmap) ||
      (v->reason && !info->reason))
    return -1;
  return 0;
}

int
views_query (struct views *vs, struct view_info **infos, size_t *nr_infos)
{
  struct view_info *out;
  size_t i;
  int r = 0;

  pthread_mutex_lock (&vs->lock);
  out = calloc (vs->n + 1, sizeof *out);
  for (i = 0; out && r == 0 && i < vs->n; ++i)
    r = view_info (vs->list[i], &out[i]);
  pthread_mutex_unlock (&vs->lock);
  if (out == NULL || r == -1) {
    views_free_infos (out, i);
    return -1;
  }
  *infos = out;
  *nr_infos = i;
  return 0;
}

void
views_free_infos (struct view_info *infos, size_t n)
{
  size_t i;

  if (infos == NULL)
    return;
  for (i = 0; i < n; ++i) {
    free (infos[i].name);
    free (infos[i].bitmap);
    free (infos[i].reason);
  }
  free (infos);
}
