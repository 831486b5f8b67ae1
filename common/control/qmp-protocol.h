/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* QEMU's QMP protocol, its messages only: the greeting, capabilities
 * negotiation, a request ({"execute": NAME, "arguments": {...},
 * "id": ...}) turned into its reply, and the replies themselves
 * ({"return": ...} or {"error": {"class": ..., "desc": ...}}, "id"
 * echoed).  Moving bytes is qmp-server.c's business; what the
 * commands do is the dispatcher's.
 */
#ifndef DIRTYBITMAP_QMP_PROTOCOL_H
#define DIRTYBITMAP_QMP_PROTOCOL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include <json-c/json.h>

/* How requests are read (json_tokener_set_flags: strict JSON in
 * UTF-8, any number of objects in one stream) and replies written.
 */
#define QMP_TOKENER_FLAGS (JSON_TOKENER_STRICT | \
                           JSON_TOKENER_ALLOW_TRAILING_CHARS | \
                           JSON_TOKENER_VALIDATE_UTF8)
#define QMP_PRINT_FLAGS (JSON_C_TO_STRING_PLAIN | \
                         JSON_C_TO_STRING_NOSLASHESCAPE)

/* QMP error classes used in replies. */
#define QMP_ERROR_GENERIC           "GenericError"
#define QMP_ERROR_COMMAND_NOT_FOUND "CommandNotFound"

/* The replies, and the one way to build them: {"return": VALUE}
 * (VALUE consumed; NULL means {}), and {"error": {"class": CLASS,
 * "desc": DESC}} with DESC formatted from FMT.  New references, NULL
 * if out of memory.  The request's "id" is added by qmp_reply_to.
 */
extern struct json_object *qmp_return (struct json_object *value);
extern struct json_object *qmp_error (const char *class, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
extern struct json_object *qmp_verror (const char *class, const char *fmt,
                                       va_list args)
  __attribute__ ((format (printf, 2, 0)));

/* Run command NAME with ARGS (an object, never NULL; borrowed: take a
 * reference to keep any of it).  Returns its reply, made by qmp_return
 * or qmp_error (a new reference; NULL, out of memory, closes the
 * client's connection).  Called from the server's thread, one command
 * at a time whatever the number of clients, so a slow command holds
 * up every client's replies.  qmp_capabilities is handled here and
 * never reaches the dispatcher, nor does anything before negotiation.
 */
typedef struct json_object *qmp_dispatch_fn (void *opaque, const char *name,
                                             struct json_object *args);

/* The greeting: QEMU's shape, version 0.0.0, PACKAGE as the package,
 * no capabilities.  A new reference, NULL if out of memory.
 */
extern struct json_object *qmp_greeting (const char *package);

/* The reply to REQ (any JSON value that was read) from client CLIENT
 * (a number for debug messages), whose negotiation state is
 * *NEGOTIATED: an error, the outcome of qmp_capabilities, or what
 * DISPATCH (with OPAQUE) replies; with REQ's "id" if it has one.  A
 * new reference, NULL if out of memory.
 */
extern struct json_object *qmp_reply_to (struct json_object *req,
                                         uint64_t client, bool *negotiated,
                                         qmp_dispatch_fn *dispatch,
                                         void *opaque);

#endif /* DIRTYBITMAP_QMP_PROTOCOL_H */
