/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Unit tests for utf8.c: RFC 3629's boundaries, one by one, and the
 * escaping of what is not valid.
 */
#include <config.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit-test.h"
#include "utf8.h"

static bool
valid (const char *s)
{
  return utf8_is_valid (s, strlen (s));
}

static void
check_escape (const char *in, const char *expected)
{
  char *out = utf8_escape_invalid (in);

  CHECK (out != NULL);
  if (strcmp (out, expected) != 0) {
    fprintf (stderr, "escaped \"%s\", expected \"%s\"\n", out, expected);
    CHECK (false);
  }
  CHECK (valid (out));
  free (out);
}

static void
test_valid (void)
{
  CHECK (valid (""));
  CHECK (valid ("plain ASCII, with space/and:punct"));
  CHECK (utf8_is_valid ("a\0b", 3));                 /* U+0000 */
  CHECK (valid ("\x7f"));
  CHECK (valid ("\xc2\x80"));                        /* U+0080 */
  CHECK (valid ("\xc3\xa9t\xc3\xa9"));               /* été */
  CHECK (valid ("\xdf\xbf"));                        /* U+07FF */
  CHECK (valid ("\xe0\xa0\x80"));                    /* U+0800 */
  CHECK (valid ("\xe2\x82\xac"));                    /* U+20AC */
  CHECK (valid ("\xed\x9f\xbf"));                    /* U+D7FF */
  CHECK (valid ("\xee\x80\x80"));                    /* U+E000 */
  CHECK (valid ("\xef\xbf\xbd"));                    /* U+FFFD */
  CHECK (valid ("\xef\xbf\xbf"));                    /* U+FFFF */
  CHECK (valid ("\xf0\x90\x80\x80"));                /* U+10000 */
  CHECK (valid ("\xf0\x9f\x98\x80"));                /* U+1F600 */
  CHECK (valid ("\xf4\x8f\xbf\xbf"));                /* U+10FFFF */
}

static void
test_invalid (void)
{
  CHECK (!valid ("\x80"));                           /* lone continuation */
  CHECK (!valid ("\xbf"));
  CHECK (!valid ("\xc0\x80"));                       /* overlong NUL */
  CHECK (!valid ("\xc1\xbf"));                       /* overlong */
  CHECK (!valid ("\xc2"));                           /* truncated */
  CHECK (!valid ("\xc2\x41"));                       /* bad continuation */
  CHECK (!valid ("\xc2\xc0"));
  CHECK (!valid ("\xe0\x9f\xbf"));                   /* overlong U+07FF */
  CHECK (!valid ("\xe2\x82"));                       /* truncated */
  CHECK (!valid ("\xe2\x82\x41"));
  CHECK (!valid ("\xed\xa0\x80"));                   /* U+D800 */
  CHECK (!valid ("\xed\xbf\xbf"));                   /* U+DFFF */
  CHECK (!valid ("\xed\xa0\xbd\xed\xb8\x80"));       /* CESU-8 pair */
  CHECK (!valid ("\xf0\x8f\xbf\xbf"));               /* overlong U+FFFF */
  CHECK (!valid ("\xf4\x90\x80\x80"));               /* U+110000 */
  CHECK (!valid ("\xf5\x80\x80\x80"));
  CHECK (!valid ("\xf0\x9f\x98"));                   /* truncated */
  CHECK (!valid ("\xfe"));
  CHECK (!valid ("\xff"));
  CHECK (!valid ("ok\xff"));
  /* The length given is what counts. */
  CHECK (utf8_is_valid ("\xc3\xa9", 2));
  CHECK (!utf8_is_valid ("\xc3\xa9", 1));
}

static void
test_escape (void)
{
  check_escape ("", "");
  check_escape ("name", "name");
  check_escape ("\xc3\xa9t\xc3\xa9", "\xc3\xa9t\xc3\xa9");
  check_escape ("a\\xff", "a\\xff");                 /* valid: unchanged */
  check_escape ("bad\xff", "bad\\xff");
  check_escape ("\xed\xa0\x80", "\\xed\\xa0\\x80");  /* a lone surrogate */
  check_escape ("\xe2\x82", "\\xe2\\x82");           /* cut in the middle */
  check_escape ("\xe2\x82\xe2\x82\xac", "\\xe2\\x82\xe2\x82\xac");
  check_escape ("\xc0\xaf/", "\\xc0\\xaf/");
  check_escape ("\x80\x80\x80\x80", "\\x80\\x80\\x80\\x80");
}

int
main (void)
{
  test_valid ();
  test_invalid ();
  test_escape ();
  printf ("test-utf8: ok\n");
  return 0;
}
