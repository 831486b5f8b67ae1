/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Stand-ins for the functions nbdkit exports to filters, so that the
 * libraries in common/ can be unit-tested without a server.  Errors
 * are printed and the last one is kept for the tests to inspect.
 */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#include <nbdkit-filter.h>

#include "unit-test.h"

static char last_error_text[4096];

const char *
last_error (void)
{
  return last_error_text;
}

void
clear_last_error (void)
{
  last_error_text[0] = '\0';
}

void
nbdkit_verror (const char *fs, va_list args)
{
  vsnprintf (last_error_text, sizeof last_error_text, fs, args);
  if (getenv ("UNIT_TEST_VERBOSE"))
    fprintf (stderr, "error: %s\n", last_error_text);
}

void
nbdkit_error (const char *fs, ...)
{
  int saved_errno = errno;
  va_list args;

  va_start (args, fs);
  errno = saved_errno;          /* keep %m meaningful */
  nbdkit_verror (fs, args);
  va_end (args);
}

void
nbdkit_vdebug (const char *fs, va_list args)
{
  if (getenv ("UNIT_TEST_VERBOSE")) {
    fprintf (stderr, "debug: ");
    vfprintf (stderr, fs, args);
    fprintf (stderr, "\n");
  }
}

void
nbdkit_debug (const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  nbdkit_vdebug (fs, args);
  va_end (args);
}
