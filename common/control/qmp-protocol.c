/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* QMP's messages: see qmp-protocol.h.
 *
 * Every request gets exactly one reply.  Before negotiation only
 * qmp_capabilities is accepted (no capability is offered); after it,
 * everything but qmp_capabilities goes to the dispatcher.
 */
#include <config.h>

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include <nbdkit-filter.h>

#include "qmp-protocol.h"
#include "utf8.h"

struct json_object *
qmp_return (struct json_object *value)
{
  struct json_object *reply = json_object_new_object ();

  if (value == NULL)
    value = json_object_new_object ();
  if (reply == NULL || value == NULL ||
      json_object_object_add (reply, "return", value) == -1) {
    json_object_put (reply);
    json_object_put (value);
    return NULL;
  }
  return reply;
}

/* DESC made valid UTF-8, whatever it quotes: a name from a sidecar
 * written by another program, the export's name, a client's text cut
 * by a precision in the middle of a character.  Consumes DESC.
 */
static char *
valid_desc (char *desc)
{
  char *escaped;

  if (desc == NULL || utf8_is_valid (desc, strlen (desc)))
    return desc;
  escaped = utf8_escape_invalid (desc);
  free (desc);
  return escaped;
}

struct json_object *
qmp_verror (const char *class, const char *fmt, va_list args)
{
  struct json_object *reply = json_object_new_object ();
  struct json_object *err = json_object_new_object ();
  char *desc = NULL;

  if (vasprintf (&desc, fmt, args) == -1)
    desc = NULL;
  desc = valid_desc (desc);
  if (reply == NULL || err == NULL || desc == NULL ||
      json_object_object_add (err, "class",
                              json_object_new_string (class)) == -1 ||
      json_object_object_add (err, "desc",
                              json_object_new_string (desc)) == -1 ||
      json_object_object_add (reply, "error", err) == -1) {
    json_object_put (reply);
    json_object_put (err);
    reply = NULL;
  }
  free (desc);
  return reply;
}

struct json_object *
qmp_error (const char *class, const char *fmt, ...)
{
  struct json_object *reply;
  va_list args;

  va_start (args, fmt);
  reply = qmp_verror (class, fmt, args);
  va_end (args);
  return reply;
}

struct json_object *
qmp_greeting (const char *package)
{
  struct json_object *greeting, *qmp, *version, *qemu;

  greeting = json_object_new_object ();
  qmp = json_object_new_object ();
  version = json_object_new_object ();
  qemu = json_object_new_object ();
  if (greeting == NULL || qmp == NULL || version == NULL || qemu == NULL) {
    json_object_put (qemu);
    json_object_put (version);
    json_object_put (qmp);
    json_object_put (greeting);
    return NULL;
  }
  json_object_object_add (greeting, "QMP", qmp);
  json_object_object_add (qmp, "version", version);
  json_object_object_add (version, "qemu", qemu);
  if (json_object_object_add (qemu, "micro", json_object_new_int (0)) == 0 &&
      json_object_object_add (qemu, "minor", json_object_new_int (0)) == 0 &&
      json_object_object_add (qemu, "major", json_object_new_int (0)) == 0 &&
      json_object_object_add (version, "package",
                              json_object_new_string (package)) == 0 &&
      json_object_object_add (qmp, "capabilities",
                              json_object_new_array ()) == 0)
    return greeting;
  json_object_put (greeting);
  return NULL;
}

/* Printable form of a client-chosen name for the debug log. */
static void
log_name (char *dst, size_t size, const char *name)
{
  size_t i;

  for (i = 0; i + 1 < size && name[i] != '\0'; i++)
    dst[i] = (name[i] >= 0x20 && name[i] < 0x7f) ? name[i] : '?';
  dst[i] = '\0';
}

/* Why the JSON value O cannot be echoed in a reply, or NULL if it can:
 * NaN and infinities parse but are not JSON, and json-c's UTF-8 check
 * lets through overlong forms, surrogates and code points past
 * U+10FFFF, which make a string (or a key) that is not UTF-8.
 * Requests holding either are refused, so that no reply (an echoed
 * "id", a name quoted in an error or listed by a query) carries one.
 */
static const char *
unsendable (struct json_object *o)
{
  static const char not_utf8[] = "invalid UTF-8 in a string (an overlong "
    "form, a surrogate or a code point past U+10FFFF)";
  const char *why = NULL;
  size_t i, n;

  switch (json_object_get_type (o)) {
  case json_type_double:
    return isfinite (json_object_get_double (o)) ? NULL
      : "NaN and Infinity are not JSON numbers";
  case json_type_string:
    n = json_object_get_string_len (o);
    /* A C string would end at the NUL: "a\u0000b" would name 'a'. */
    if (memchr (json_object_get_string (o), '\0', n) != NULL)
      return "\\u0000 is not supported in a string";
    return utf8_is_valid (json_object_get_string (o), n) ? NULL : not_utf8;
  case json_type_array:
    n = json_object_array_length (o);
    for (i = 0; why == NULL && i < n; i++)
      why = unsendable (json_object_array_get_idx (o, i));
    return why;
  case json_type_object: {
    struct json_object_iterator it = json_object_iter_begin (o);
    struct json_object_iterator end = json_object_iter_end (o);

    for (; why == NULL && !json_object_iter_equal (&it, &end);
         json_object_iter_next (&it)) {
      const char *key = json_object_iter_peek_name (&it);

      if (!utf8_is_valid (key, strlen (key)))
        return not_utf8;
      why = unsendable (json_object_iter_peek_value (&it));
    }
    return why;
  }
  default:
    return NULL;
  }
}

/* qmp_capabilities in negotiation mode, with ARGS (NULL if none). */
static struct json_object *
negotiate (uint64_t client, bool *negotiated, struct json_object *args)
{
  struct json_object_iterator it, end;
  struct json_object *enable = NULL;
  bool has_enable = false;
  size_t i, n;

  if (args != NULL) {
    it = json_object_iter_begin (args);
    end = json_object_iter_end (args);
    for (; !json_object_iter_equal (&it, &end); json_object_iter_next (&it)) {
      const char *key = json_object_iter_peek_name (&it);

      if (strcmp (key, "enable") != 0)
        return qmp_error (QMP_ERROR_GENERIC,
                          "qmp_capabilities: unexpected argument '%.64s' "
                          "(the only one is 'enable')", key);
      has_enable = true;
      enable = json_object_iter_peek_value (&it);
    }
  }
  if (has_enable) {
    if (!json_object_is_type (enable, json_type_array))
      return qmp_error (QMP_ERROR_GENERIC,
                        "qmp_capabilities: 'enable' must be an array of "
                        "capability names");
    n = json_object_array_length (enable);
    for (i = 0; i < n; i++) {
      struct json_object *cap = json_object_array_get_idx (enable, i);

      if (!json_object_is_type (cap, json_type_string))
        return qmp_error (QMP_ERROR_GENERIC,
                          "qmp_capabilities: 'enable' must be an array of "
                          "capability names");
      return qmp_error (QMP_ERROR_GENERIC,
                        "qmp_capabilities: capability '%.64s' is not "
                        "offered by this server (the greeting lists none)",
                        json_object_get_string (cap));
    }
  }
  *negotiated = true;
  nbdkit_debug ("control: client %" PRIu64 ": capabilities negotiated",
                client);
  return qmp_return (NULL);
}

/* The members of request REQ: *NAME to execute, with *ARGS (NULL if
 * absent).  Returns 0, or -1 with the error reply in *REPLY.
 */
static int
read_members (struct json_object *req, const char **name,
              struct json_object **args, struct json_object **reply)
{
  struct json_object_iterator it, end;
  struct json_object *execute = NULL;
  bool has_execute = false, has_args = false;

  *args = NULL;
  it = json_object_iter_begin (req);
  end = json_object_iter_end (req);
  for (; !json_object_iter_equal (&it, &end); json_object_iter_next (&it)) {
    const char *key = json_object_iter_peek_name (&it);

    /* (A JSON null is a NULL json_object.) */
    if (strcmp (key, "execute") == 0) {
      has_execute = true;
      execute = json_object_iter_peek_value (&it);
    }
    else if (strcmp (key, "arguments") == 0) {
      has_args = true;
      *args = json_object_iter_peek_value (&it);
    }
    else if (strcmp (key, "id") == 0)
      ;
    else if (strcmp (key, "exec-oob") == 0) {
      *reply = qmp_error (QMP_ERROR_GENERIC,
                          "out-of-band execution ('exec-oob') is not "
                          "supported: use 'execute'");
      return -1;
    }
    else {
      *reply = qmp_error (QMP_ERROR_GENERIC,
                          "QMP input has an unexpected member '%.64s' "
                          "(expected 'execute', 'arguments', 'id')", key);
      return -1;
    }
  }
  if (!has_execute)
    *reply = qmp_error (QMP_ERROR_GENERIC,
                        "QMP input has no 'execute' member");
  else if (!json_object_is_type (execute, json_type_string))
    *reply = qmp_error (QMP_ERROR_GENERIC,
                        "QMP input member 'execute' must be a string");
  else if (has_args && !json_object_is_type (*args, json_type_object))
    *reply = qmp_error (QMP_ERROR_GENERIC,
                        "QMP input member 'arguments' must be an object");
  else {
    *name = json_object_get_string (execute);
    return 0;
  }
  return -1;
}

/* Command NAME from the dispatcher, with ARGS (NULL: none given). */
static struct json_object *
run_command (const char *name, struct json_object *args,
             qmp_dispatch_fn *dispatch, void *opaque)
{
  struct json_object *reply;

  if (args != NULL)
    return dispatch (opaque, name, args);
  args = json_object_new_object ();
  if (args == NULL)
    return NULL;
  reply = dispatch (opaque, name, args);
  json_object_put (args);
  return reply;
}

/* The reply to REQ, an object, without its "id". */
static struct json_object *
execute (struct json_object *req, uint64_t client, bool *negotiated,
         qmp_dispatch_fn *dispatch, void *opaque)
{
  struct json_object *args, *reply;
  const char *name;
  char logged[65];

  if (read_members (req, &name, &args, &reply) == -1)
    return reply;
  log_name (logged, sizeof logged, name);
  nbdkit_debug ("control: client %" PRIu64 ": %s", client, logged);

  if (!*negotiated) {
    if (strcmp (name, "qmp_capabilities") == 0)
      return negotiate (client, negotiated, args);
    return qmp_error (QMP_ERROR_COMMAND_NOT_FOUND,
                      "capabilities negotiation comes first: "
                      "send 'qmp_capabilities'");
  }
  if (strcmp (name, "qmp_capabilities") == 0)
    return qmp_error (QMP_ERROR_COMMAND_NOT_FOUND,
                      "'qmp_capabilities' is valid only before negotiation, "
                      "which is already done");
  return run_command (name, args, dispatch, opaque);
}

struct json_object *
qmp_reply_to (struct json_object *req, uint64_t client, bool *negotiated,
              qmp_dispatch_fn *dispatch, void *opaque)
{
  struct json_object *reply, *id;
  const char *why;

  if (req == NULL || !json_object_is_type (req, json_type_object))
    return qmp_error (QMP_ERROR_GENERIC, "QMP input must be a JSON object");
  why = unsendable (req);
  if (why)
    reply = qmp_error (QMP_ERROR_GENERIC, "JSON parse error, %s", why);
  else
    reply = execute (req, client, negotiated, dispatch, opaque);

  /* Replies to a request carry its id, if any (and if it is JSON). */
  if (reply != NULL && json_object_object_get_ex (req, "id", &id) &&
      unsendable (id) == NULL &&
      json_object_object_add (reply, "id", json_object_get (id)) == -1) {
    json_object_put (reply);
    return NULL;
  }
  return reply;
}
