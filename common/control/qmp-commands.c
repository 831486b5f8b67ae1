/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

#include <config.h>

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "qmp-commands.h"
#include "tracker.h"

/* One command's arguments, checked as QMP checks them: every key must
 * be known, of the right type, and the required ones present.
 */
struct args {
  struct json_object *obj;
  const char *const *known;
  struct json_object **error;   /* the error reply, once there is one */
};

/* A GenericError reply in *A->ERROR; returns NULL, for the handlers. */
static struct json_object *
error (struct args *a, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static struct json_object *
error (struct args *a, const char *fmt, ...)
{
  va_list ap;

  json_object_put (*a->error);
  va_start (ap, fmt);
  *a->error = qmp_verror (QMP_ERROR_GENERIC, fmt, ap);
  va_end (ap);
  return NULL;
}

static int
check_keys (struct args *a)
{
  json_object_object_foreach (a->obj, key, value) {
    size_t i;
    (void) value;
    for (i = 0; a->known[i] && strcmp (a->known[i], key) != 0; ++i)
      ;
    if (a->known[i] == NULL) {
      error (a, "unexpected argument '%s'", key);
      return -1;
    }
  }
  return 0;
}

/* Each getter returns 0 with the value, 1 if absent (value untouched),
 * or -1 with the error set.
 */
static int
get (struct args *a, const char *key, json_type type, const char *what,
     struct json_object **value)
{
  struct json_object *v;

  if (!json_object_object_get_ex (a->obj, key, &v))
    return 1;
  if (!json_object_is_type (v, type)) {
    error (a, "argument '%s' must be %s", key, what);
    return -1;
  }
  *value = v;
  return 0;
}

static int
get_string (struct args *a, const char *key, bool required, const char **s)
{
  struct json_object *v;
  int r = get (a, key, json_type_string, "a string", &v);

  if (r == 0)
    *s = json_object_get_string (v);
  else if (r == 1 && required) {
    error (a, "missing argument '%s'", key);
    return -1;
  }
  return r == -1 ? -1 : 0;
}

static int
get_bool (struct args *a, const char *key, bool *b)
{
  struct json_object *v;
  int r = get (a, key, json_type_boolean, "a boolean", &v);

  if (r == 0)
    *b = json_object_get_boolean (v);
  return r == -1 ? -1 : 0;
}

static int
get_uint (struct args *a, const char *key, uint64_t *u)
{
  struct json_object *v;
  int r = get (a, key, json_type_int, "an integer", &v);

  if (r == 0) {
    int64_t i = json_object_get_int64 (v);
    if (i < 0) {
      error (a, "argument '%s' must not be negative", key);
      return -1;
    }
    *u = i;
  }
  return r == -1 ? -1 : 0;
}

/* "node" may be omitted or name the one export. */
static int
check_node (struct args *a, struct tracker *t)
{
  const char *node = NULL;

  if (get_string (a, "node", false, &node) == -1)
    return -1;
  if (node && strcmp (node, tracker_export_name (t)) != 0) {
    error (a, "Cannot find node '%s': this server has one export, '%s'; "
           "give its name or omit \"node\"", node, tracker_export_name (t));
    return -1;
  }
  return 0;
}

static const struct {
  const char *name;
  enum tracker_action_type type;
} actions[] = {
  { "block-dirty-bitmap-add", TRACKER_ADD },
  { "block-dirty-bitmap-remove", TRACKER_REMOVE },
  { "block-dirty-bitmap-clear", TRACKER_CLEAR },
  { "block-dirty-bitmap-enable", TRACKER_ENABLE },
  { "block-dirty-bitmap-disable", TRACKER_DISABLE },
  { "block-dirty-bitmap-merge", TRACKER_MERGE },
};
#define NR_ACTIONS (sizeof actions / sizeof actions[0])

static size_t
action_index (const char *name)
{
  size_t i;

  for (i = 0; i < NR_ACTIONS && strcmp (actions[i].name, name) != 0; ++i)
    ;
  return i;
}

static bool
is_bitmap_action (const char *name)
{
  return action_index (name) < NR_ACTIONS;
}

/* Parse one bitmap action's arguments (a command, or the "data" of a
 * transaction action) into *ACT.  SOURCES, for a merge, is allocated
 * and must be freed.
 */
static int
parse_action (struct args *a, struct tracker *t, const char *type,
              struct tracker_action *act)
{
  static const char *const add_keys[] =
    { "node", "name", "granularity", "persistent", "disabled", NULL };
  static const char *const name_keys[] = { "node", "name", NULL };
  static const char *const merge_keys[] =
    { "node", "target", "bitmaps", NULL };
  size_t i = action_index (type);

  memset (act, 0, sizeof *act);
  if (i == NR_ACTIONS) {
    error (a, "action type '%s' is not a bitmap command", type);
    return -1;
  }
  act->type = actions[i].type;
  a->known = act->type == TRACKER_ADD ? add_keys
    : act->type == TRACKER_MERGE ? merge_keys : name_keys;
  if (check_keys (a) == -1 || check_node (a, t) == -1)
    return -1;

  if (act->type == TRACKER_MERGE) {
    struct json_object *list;
    const char **sources;
    size_t n;

    if (get_string (a, "target", true, &act->name) == -1)
      return -1;
    if (get (a, "bitmaps", json_type_array, "an array", &list) != 0) {
      if (!json_object_object_get_ex (a->obj, "bitmaps", &list))
        error (a, "missing argument 'bitmaps'");
      return -1;
    }
    n = json_object_array_length (list);
    sources = calloc (n + 1, sizeof *sources);
    if (sources == NULL) {
      error (a, "out of memory");
      return -1;
    }
    act->sources = sources;
    act->nr_sources = n;
    for (i = 0; i < n; ++i) {
      struct json_object *e = json_object_array_get_idx (list, i);
      /* A name, or {"node": N, "name": B} as QMP allows. */
      if (json_object_is_type (e, json_type_string))
        sources[i] = json_object_get_string (e);
      else if (json_object_is_type (e, json_type_object)) {
        static const char *const ref_keys[] = { "node", "name", NULL };
        struct args ref = { e, ref_keys, a->error };
        if (check_keys (&ref) == -1 || check_node (&ref, t) == -1 ||
            get_string (&ref, "name", true, &sources[i]) == -1)
          return -1;
      }
      else {
        error (a, "argument 'bitmaps[%zu]' must be a "
               "string or object", i);
        return -1;
      }
    }
    return 0;
  }
  if (get_string (a, "name", true, &act->name) == -1)
    return -1;
  if (act->type == TRACKER_ADD) {
    uint64_t g = 0;
    if (get_uint (a, "granularity", &g) == -1 ||
        get_bool (a, "persistent", &act->persistent) == -1 ||
        get_bool (a, "disabled", &act->disabled) == -1)
      return -1;
    if (g > INT64_MAX || (json_object_object_get_ex (a->obj, "granularity",
                                                     NULL) && g == 0)) {
      error (a, "Granularity must be a power of 2 from 512 to 2147483648");
      return -1;
    }
    act->granularity = g;
  }
  return 0;
}

static struct json_object *
run_actions (struct args *a, struct tracker *t,
             struct tracker_action *acts, size_t n)
{
  char *msg = NULL;

  if (tracker_transaction (t, acts, n, &msg) == -1) {
    struct json_object *r = error (a, "%s", msg ? msg : "out of memory");
    free (msg);
    return r;
  }
  return json_object_new_object ();
}

static struct json_object *
bitmap_command (struct args *a, struct tracker *t, const char *name)
{
  struct tracker_action act;
  struct json_object *r = NULL;

  if (parse_action (a, t, name, &act) == 0)
    r = run_actions (a, t, &act, 1);
  free ((void *) act.sources);
  return r;
}

static struct json_object *
transaction (struct args *a, struct tracker *t)
{
  static const char *const keys[] = { "actions", "properties", NULL };
  struct json_object *list, *props, *r = NULL;
  struct tracker_action *acts = NULL;
  size_t i, n = 0;
  int got;

  a->known = keys;
  if (check_keys (a) == -1)
    return NULL;
  got = get (a, "properties", json_type_object, "an object", &props);
  if (got == -1)
    return NULL;
  if (got == 0) {
    /* Only the default completion mode makes sense without jobs. */
    json_object_object_foreach (props, key, value) {
      if (strcmp (key, "completion-mode") != 0 ||
          !json_object_is_type (value, json_type_string) ||
          strcmp (json_object_get_string (value), "individual") != 0)
        return error (a, "transaction property '%s' is not supported", key);
    }
  }
  got = get (a, "actions", json_type_array, "an array", &list);
  if (got == 1)
    error (a, "missing argument 'actions'");
  if (got != 0)
    return NULL;
  n = json_object_array_length (list);
  acts = calloc (n + 1, sizeof *acts);
  if (acts == NULL)
    return error (a, "out of memory");
  for (i = 0; i < n; ++i) {
    static const char *const action_keys[] = { "type", "data", NULL };
    struct json_object *e = json_object_array_get_idx (list, i);
    struct args action = { e, action_keys, a->error };
    struct json_object *data;
    const char *type;

    if (!json_object_is_type (e, json_type_object)) {
      error (a, "argument 'actions[%zu]' must be an "
             "object", i);
      goto out;
    }
    if (check_keys (&action) == -1 ||
        get_string (&action, "type", true, &type) == -1)
      goto out;
    got = get (&action, "data", json_type_object, "an object", &data);
    if (got == 1)
      error (a, "missing argument 'actions[%zu].data'", i);
    if (got != 0)
      goto out;
    action.obj = data;
    if (parse_action (&action, t, type, &acts[i]) == -1)
      goto out;
  }
  r = run_actions (a, t, acts, n);

 out:
  for (i = 0; i < n; ++i)
    free ((void *) acts[i].sources);
  free (acts);
  return r;
}

static struct json_object *
query (struct args *a, struct tracker *t)
{
  static const char *const keys[] = { NULL };
  struct tracker_bitmap_info *infos;
  struct json_object *list;
  char *msg = NULL;
  size_t i, n;

  a->known = keys;
  if (check_keys (a) == -1)
    return NULL;
  if (tracker_query (t, &infos, &n, &msg) == -1) {
    struct json_object *r = error (a, "%s", msg ? msg : "out of memory");
    free (msg);
    return r;
  }
  list = json_object_new_array ();
  for (i = 0; i < n; ++i) {
    struct json_object *o = json_object_new_object ();
    json_object_object_add (o, "name", json_object_new_string (infos[i].name));
    json_object_object_add (o, "granularity",
                            json_object_new_int64 (infos[i].granularity));
    json_object_object_add (o, "recording",
                            json_object_new_boolean (infos[i].recording));
    json_object_object_add (o, "persistent",
                            json_object_new_boolean (infos[i].persistent));
    json_object_object_add (o, "inconsistent",
                            json_object_new_boolean (infos[i].inconsistent));
    json_object_object_add (o, "busy", json_object_new_boolean (false));
    json_object_object_add (o, "count",
                            json_object_new_int64 (infos[i].dirty_bytes));
    json_object_array_add (list, o);
  }
  tracker_free_infos (infos, n);
  return list;
}

static struct json_object *
store (struct args *a, struct tracker *t)
{
  static const char *const keys[] = { NULL };
  char *msg = NULL;

  a->known = keys;
  if (check_keys (a) == -1)
    return NULL;
  if (tracker_store_now (t, &msg) == -1) {
    struct json_object *r = error (a, "%s", msg ? msg : "out of memory");
    free (msg);
    return r;
  }
  return json_object_new_object ();
}

static struct json_object *
extents (struct args *a, struct tracker *t)
{
  static const char *const keys[] =
    { "node", "name", "offset", "length", NULL };
  struct tracker_extent *ext;
  struct json_object *r, *list;
  const char *name;
  uint64_t offset = 0, length = UINT64_MAX, next;
  char *msg = NULL;
  size_t i, n;

  a->known = keys;
  if (check_keys (a) == -1 || check_node (a, t) == -1 ||
      get_string (a, "name", true, &name) == -1 ||
      get_uint (a, "offset", &offset) == -1 ||
      get_uint (a, "length", &length) == -1)
    return NULL;
  ext = calloc (QMP_EXTENTS_PER_PAGE, sizeof *ext);
  if (ext == NULL)
    return error (a, "out of memory");
  if (tracker_extents (t, name, offset, length, ext, QMP_EXTENTS_PER_PAGE,
                       &n, &next, &msg) == -1) {
    r = error (a, "%s", msg ? msg : "out of memory");
    free (msg);
    free (ext);
    return r;
  }
  list = json_object_new_array ();
  for (i = 0; i < n; ++i) {
    struct json_object *o = json_object_new_object ();
    json_object_object_add (o, "offset", json_object_new_int64 (ext[i].offset));
    json_object_object_add (o, "length", json_object_new_int64 (ext[i].length));
    json_object_array_add (list, o);
  }
  free (ext);
  r = json_object_new_object ();
  json_object_object_add (r, "extents", list);
  json_object_object_add (r, "next", next == UINT64_MAX
                          ? NULL : json_object_new_int64 (next));
  return r;
}

static struct json_object *
run (struct args *a, struct tracker *t, const char *name)
{
  if (is_bitmap_action (name))
    return bitmap_command (a, t, name);
  if (strcmp (name, "transaction") == 0)
    return transaction (a, t);
  if (strcmp (name, "query-dirty-bitmaps") == 0)
    return query (a, t);
  if (strcmp (name, "x-dirtybitmap-store") == 0)
    return store (a, t);
  if (strcmp (name, "x-dirtybitmap-extents") == 0)
    return extents (a, t);
  *a->error = qmp_error (QMP_ERROR_COMMAND_NOT_FOUND,
                         "no command named %s", name);
  return NULL;
}

struct json_object *
qmp_commands_dispatch (void *opaque, const char *name,
                       struct json_object *arguments)
{
  struct json_object *error = NULL, *value;
  struct args a = { arguments, NULL, &error };

  value = run (&a, opaque, name);
  if (value == NULL)
    return error;               /* NULL if out of memory */
  json_object_put (error);
  return qmp_return (value);
}
