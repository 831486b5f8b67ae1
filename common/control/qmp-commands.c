/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The control socket's commands: see qmp-commands.h.
 *
 * qmp_commands_dispatch looks the command up in the table at the end
 * of this file, refuses any argument key the table does not list for
 * it, and runs its handler.  The six block-dirty-bitmap-* commands
 * share one handler: each has a parser that turns its arguments into
 * a struct tracker_action, and a "transaction" runs the same parsers
 * over its actions' "data" before handing them all to the tracker at
 * once.  The two x-dirtybitmap-view-* commands that add and remove
 * point-in-time views are tracker actions of the same kind.
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
#include "utf8.h"
#include "views.h"

/* One command's arguments, checked as QMP checks them: every key must
 * be known (the command table says which are), of the right type, and
 * the required ones present.
 */
struct args {
  struct json_object *obj;
  struct json_object **error;   /* the error reply, once there is one */
};

struct command;

/* A command's handler, called once its keys are checked. */
typedef struct json_object *run_fn (struct args *a, struct tracker *t,
                                    const struct command *cmd);

/* A bitmap command's parser: the arguments (a command's, or the "data"
 * of a transaction action) into *ACT, whose type is already set.
 */
typedef int parse_fn (struct args *a, struct tracker *t,
                      struct tracker_action *act);

struct command {
  const char *name;
  const char *const *keys;      /* the arguments it accepts */
  run_fn *run;
  parse_fn *parse;              /* a bitmap command, valid in a transaction */
  enum tracker_action_type type;        /* ... and its tracker action */
};

static const struct command *find_command (const char *name);

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

static bool
is_known (const char *const *keys, const char *key)
{
  size_t i;

  for (i = 0; keys[i] && strcmp (keys[i], key) != 0; ++i)
    ;
  return keys[i] != NULL;
}

static int
check_keys (struct args *a, const char *const *keys)
{
  json_object_object_foreach (a->obj, key, value) {
    (void) value;
    if (!is_known (keys, key)) {
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

/* Every key of A is one of KEYS, and a "node", where KEYS has one,
 * names the export.
 */
static int
check_args (struct args *a, struct tracker *t, const char *const *keys)
{
  if (check_keys (a, keys) == -1)
    return -1;
  return is_known (keys, "node") ? check_node (a, t) : 0;
}

static int
parse_name (struct args *a, struct tracker *t, struct tracker_action *act)
{
  return get_string (a, "name", true, &act->name);
}

static int
parse_add (struct args *a, struct tracker *t, struct tracker_action *act)
{
  uint64_t g = 0;

  if (get_string (a, "name", true, &act->name) == -1 ||
      get_uint (a, "granularity", &g) == -1 ||
      get_bool (a, "persistent", &act->persistent) == -1 ||
      get_bool (a, "disabled", &act->disabled) == -1)
    return -1;
  if (g > INT64_MAX || (json_object_object_get_ex (a->obj, "granularity",
                                                   NULL) && g == 0)) {
    error (a, "Granularity must be a power of 2 from 512 to 2147483648");
    return -1;
  }
  act->granularity = g;
  return 0;
}

static int
parse_view_add (struct args *a, struct tracker *t, struct tracker_action *act)
{
  if (get_string (a, "name", true, &act->name) == -1 ||
      get_string (a, "bitmap", false, &act->bitmap) == -1)
    return -1;
  return 0;
}

/* SOURCES is allocated and must be freed. */
static int
parse_merge (struct args *a, struct tracker *t, struct tracker_action *act)
{
  static const char *const ref_keys[] = { "node", "name", NULL };
  struct json_object *list;
  const char **sources;
  size_t i, n;

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
      struct args ref = { e, a->error };
      if (check_args (&ref, t, ref_keys) == -1 ||
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
bitmap_command (struct args *a, struct tracker *t, const struct command *cmd)
{
  struct tracker_action act = { .type = cmd->type };
  struct json_object *r = NULL;

  if (cmd->parse (a, t, &act) == 0)
    r = run_actions (a, t, &act, 1);
  free ((void *) act.sources);
  return r;
}

/* Only the default completion mode makes sense without jobs. */
static int
check_properties (struct args *a, struct json_object *props)
{
  json_object_object_foreach (props, key, value) {
    if (strcmp (key, "completion-mode") != 0 ||
        !json_object_is_type (value, json_type_string) ||
        strcmp (json_object_get_string (value), "individual") != 0) {
      error (a, "transaction property '%s' is not supported", key);
      return -1;
    }
  }
  return 0;
}

/* Transaction action I, E, into *ACT: a bitmap command's type and its
 * "data", checked as the command's arguments would be.
 */
static int
parse_transaction_action (struct args *a, struct tracker *t, size_t i,
                          struct json_object *e, struct tracker_action *act)
{
  static const char *const action_keys[] = { "type", "data", NULL };
  struct args action = { e, a->error };
  struct json_object *data;
  const struct command *cmd;
  const char *type;
  int got;

  if (!json_object_is_type (e, json_type_object)) {
    error (a, "argument 'actions[%zu]' must be an object", i);
    return -1;
  }
  if (check_keys (&action, action_keys) == -1 ||
      get_string (&action, "type", true, &type) == -1)
    return -1;
  got = get (&action, "data", json_type_object, "an object", &data);
  if (got == 1)
    error (a, "missing argument 'actions[%zu].data'", i);
  if (got != 0)
    return -1;
  action.obj = data;
  cmd = find_command (type);
  if (cmd == NULL || cmd->parse == NULL) {
    error (a, "action type '%s' is not a bitmap command", type);
    return -1;
  }
  act->type = cmd->type;
  if (check_args (&action, t, cmd->keys) == -1)
    return -1;
  return cmd->parse (&action, t, act);
}

static struct json_object *
transaction (struct args *a, struct tracker *t, const struct command *cmd)
{
  struct json_object *list, *props, *r = NULL;
  struct tracker_action *acts;
  size_t i, n;
  int got;

  got = get (a, "properties", json_type_object, "an object", &props);
  if (got == -1 || (got == 0 && check_properties (a, props) == -1))
    return NULL;
  got = get (a, "actions", json_type_array, "an array", &list);
  if (got == 1)
    error (a, "missing argument 'actions'");
  if (got != 0)
    return NULL;
  n = json_object_array_length (list);
  acts = calloc (n + 1, sizeof *acts);
  if (acts == NULL)
    return error (a, "out of memory");
  for (i = 0; i < n; ++i)
    if (parse_transaction_action (a, t, i, json_object_array_get_idx (list, i),
                                  &acts[i]) == -1)
      break;
  if (i == n)
    r = run_actions (a, t, acts, n);
  for (i = 0; i < n; ++i)
    free ((void *) acts[i].sources);
  free (acts);
  return r;
}

static struct json_object *
query (struct args *a, struct tracker *t, const struct command *cmd)
{
  struct tracker_bitmap_info *infos;
  struct json_object *list;
  char *msg = NULL;
  size_t i, n;

  if (tracker_query (t, &infos, &n, &msg) == -1) {
    struct json_object *r = error (a, "%s", msg ? msg : "out of memory");
    free (msg);
    return r;
  }
  list = json_object_new_array ();
  for (i = 0; i < n; ++i) {
    struct json_object *o = json_object_new_object ();
    /* A name that is not UTF-8 can only come from a sidecar written
     * by another program: shown escaped, as the man page says.
     */
    char *name = utf8_escape_invalid (infos[i].name);

    if (name == NULL) {
      json_object_put (o);
      json_object_put (list);
      tracker_free_infos (infos, n);
      return error (a, "out of memory");
    }
    json_object_object_add (o, "name", json_object_new_string (name));
    free (name);
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
store (struct args *a, struct tracker *t, const struct command *cmd)
{
  char *msg = NULL;

  if (tracker_store_now (t, &msg) == -1) {
    struct json_object *r = error (a, "%s", msg ? msg : "out of memory");
    free (msg);
    return r;
  }
  return json_object_new_object ();
}

/* {"extents": [{"offset": O, "length": L}...], "next": N or null} */
static struct json_object *
extents_page (const struct tracker_extent *ext, size_t n, uint64_t next)
{
  struct json_object *r, *list;
  size_t i;

  list = json_object_new_array ();
  for (i = 0; i < n; ++i) {
    struct json_object *o = json_object_new_object ();
    json_object_object_add (o, "offset", json_object_new_int64 (ext[i].offset));
    json_object_object_add (o, "length", json_object_new_int64 (ext[i].length));
    json_object_array_add (list, o);
  }
  r = json_object_new_object ();
  json_object_object_add (r, "extents", list);
  json_object_object_add (r, "next", next == UINT64_MAX
                          ? NULL : json_object_new_int64 (next));
  return r;
}

static struct json_object *
extents (struct args *a, struct tracker *t, const struct command *cmd)
{
  struct tracker_extent *ext;
  struct json_object *r;
  const char *name;
  uint64_t offset = 0, length = UINT64_MAX, next;
  char *msg = NULL;
  size_t n;

  if (get_string (a, "name", true, &name) == -1 ||
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
  }
  else
    r = extents_page (ext, n, next);
  free (ext);
  return r;
}

/* A string member KEY of O, escaped if not UTF-8 (a bitmap's name
 * from a sidecar written by another program).  -1 if out of memory.
 */
static int
add_name (struct json_object *o, const char *key, const char *name)
{
  char *escaped = utf8_escape_invalid (name);

  if (escaped == NULL)
    return -1;
  json_object_object_add (o, key, json_object_new_string (escaped));
  free (escaped);
  return 0;
}

static struct json_object *
view_json (const struct view_info *info)
{
  struct json_object *o = json_object_new_object ();

  if (add_name (o, "name", info->name) == -1 ||
      (info->bitmap && add_name (o, "bitmap", info->bitmap) == -1)) {
    json_object_put (o);
    return NULL;
  }
  json_object_object_add (o, "granularity",
                          json_object_new_int64 (info->granularity));
  json_object_object_add (o, "frozen-bytes",
                          json_object_new_int64 (info->frozen_bytes));
  json_object_object_add (o, "copied-bytes",
                          json_object_new_int64 (info->copied_bytes));
  json_object_object_add (o, "scratch-bytes",
                          json_object_new_int64 (info->scratch_bytes));
  json_object_object_add (o, "state", json_object_new_string
                          (info->broken ? "broken" : "ok"));
  if (info->broken && info->reason)
    json_object_object_add (o, "reason",
                            json_object_new_string (info->reason));
  return o;
}

static struct json_object *
query_views (struct args *a, struct tracker *t, const struct command *cmd)
{
  struct views *vs = tracker_views (t);
  struct view_info *infos = NULL;
  struct json_object *list, *o;
  size_t i, n = 0;

  if (vs && views_query (vs, &infos, &n) == -1)
    return error (a, "out of memory");
  list = json_object_new_array ();
  for (i = 0; i < n; ++i) {
    o = view_json (&infos[i]);
    if (o == NULL) {
      json_object_put (list);
      views_free_infos (infos, n);
      return error (a, "out of memory");
    }
    json_object_array_add (list, o);
  }
  views_free_infos (infos, n);
  return list;
}

#define KEYS(...) ((const char *const []) { __VA_ARGS__, NULL })
#define NO_KEYS KEYS (NULL)

/* The commands, with QMP's names and the argument keys each accepts
 * (any other key is refused; "node", where accepted, must name the
 * export).  Adding a command takes:
 *   - its handler here (a bitmap command: a parser for bitmap_command,
 *     which makes it valid as a transaction action too);
 *   - its row in this table;
 *   - the tracker function it calls (common/tracker/tracker.h and
 *     checkpoints.c);
 *   - its entry in man/nbdkit-dirtybitmap-filter.pod;
 *   - a test in tests/test-qmp-*.sh (test-qmp-server.c checks every
 *     row is dispatchable and refuses an unknown key by itself).
 */
static const struct command commands[] = {
  { "block-dirty-bitmap-add",
    KEYS ("node", "name", "granularity", "persistent", "disabled"),
    bitmap_command, parse_add, TRACKER_ADD },
  { "block-dirty-bitmap-remove", KEYS ("node", "name"),
    bitmap_command, parse_name, TRACKER_REMOVE },
  { "block-dirty-bitmap-clear", KEYS ("node", "name"),
    bitmap_command, parse_name, TRACKER_CLEAR },
  { "block-dirty-bitmap-enable", KEYS ("node", "name"),
    bitmap_command, parse_name, TRACKER_ENABLE },
  { "block-dirty-bitmap-disable", KEYS ("node", "name"),
    bitmap_command, parse_name, TRACKER_DISABLE },
  { "block-dirty-bitmap-merge", KEYS ("node", "target", "bitmaps"),
    bitmap_command, parse_merge, TRACKER_MERGE },
  { .name = "transaction", .keys = KEYS ("actions", "properties"),
    .run = transaction },
  { .name = "query-dirty-bitmaps", .keys = NO_KEYS, .run = query },
  { .name = "x-dirtybitmap-store", .keys = NO_KEYS, .run = store },
  { .name = "x-dirtybitmap-extents",
    .keys = KEYS ("node", "name", "offset", "length"), .run = extents },
  { "x-dirtybitmap-view-add", KEYS ("name", "bitmap"),
    bitmap_command, parse_view_add, TRACKER_VIEW_ADD },
  { "x-dirtybitmap-view-remove", KEYS ("name"),
    bitmap_command, parse_name, TRACKER_VIEW_REMOVE },
  { .name = "x-dirtybitmap-query-views", .keys = NO_KEYS,
    .run = query_views },
};
#define NR_COMMANDS (sizeof commands / sizeof commands[0])

static const struct command *
find_command (const char *name)
{
  size_t i;

  for (i = 0; i < NR_COMMANDS; ++i)
    if (strcmp (commands[i].name, name) == 0)
      return &commands[i];
  return NULL;
}

const char *
qmp_commands_name (size_t i)
{
  return i < NR_COMMANDS ? commands[i].name : NULL;
}

struct json_object *
qmp_commands_dispatch (void *opaque, const char *name,
                       struct json_object *arguments)
{
  const struct command *cmd = find_command (name);
  struct json_object *failure = NULL, *value = NULL;
  struct args a = { arguments, &failure };

  if (cmd == NULL)
    return qmp_error (QMP_ERROR_COMMAND_NOT_FOUND,
                      "no command named %s", name);
  if (check_args (&a, opaque, cmd->keys) == 0)
    value = cmd->run (&a, opaque, cmd);
  if (value == NULL)
    return failure;             /* NULL if out of memory */
  json_object_put (failure);
  return qmp_return (value);
}
