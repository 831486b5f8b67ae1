/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* UTF-8 validation and escaping: see utf8.h. */
#include <config.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"

/* The length of the valid sequence that starts the LEN (> 0) bytes at
 * S, or 0 if they do not start with one.  RFC 3629's table: the lead
 * byte sets the length and the range of the second byte (which is
 * what rules out overlong forms, surrogates and code points past
 * U+10FFFF); every other continuation byte is 80 to BF.
 */
static size_t
sequence_length (const unsigned char *s, size_t len)
{
  unsigned char lo = 0x80, hi = 0xbf;
  size_t n, i;

  if (s[0] < 0x80)
    return 1;
  if (s[0] >= 0xc2 && s[0] <= 0xdf)
    n = 2;
  else if (s[0] >= 0xe0 && s[0] <= 0xef) {
    n = 3;
    if (s[0] == 0xe0)
      lo = 0xa0;                /* overlong below U+0800 */
    else if (s[0] == 0xed)
      hi = 0x9f;                /* surrogates */
  }
  else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
    n = 4;
    if (s[0] == 0xf0)
      lo = 0x90;                /* overlong below U+10000 */
    else if (s[0] == 0xf4)
      hi = 0x8f;                /* past U+10FFFF */
  }
  else
    return 0;                   /* 80-C1, F5-FF never lead */
  if (len < n || s[1] < lo || s[1] > hi)
    return 0;
  for (i = 2; i < n; ++i)
    if (s[i] < 0x80 || s[i] > 0xbf)
      return 0;
  return n;
}

bool
utf8_is_valid (const char *s, size_t len)
{
  const unsigned char *p = (const unsigned char *) s;
  size_t i = 0, n;

  while (i < len) {
    n = sequence_length (p + i, len - i);
    if (n == 0)
      return false;
    i += n;
  }
  return true;
}

char *
utf8_escape_invalid (const char *s)
{
  const unsigned char *p = (const unsigned char *) s;
  size_t len = strlen (s), i = 0, o = 0, n;
  char *out = malloc (4 * len + 1);   /* every byte escaped at worst */

  if (out == NULL)
    return NULL;
  while (i < len) {
    n = sequence_length (p + i, len - i);
    if (n == 0) {
      snprintf (out + o, 5, "\\x%02x", p[i]);
      o += 4;
      i++;
    }
    else {
      memcpy (out + o, p + i, n);
      o += n;
      i += n;
    }
  }
  out[o] = '\0';
  return out;
}
