/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* UTF-8 as RFC 3629 defines it: no overlong forms, no surrogates
 * (U+D800 to U+DFFF), nothing past U+10FFFF.  Bitmap names from the
 * command line and the control socket must be valid UTF-8; a sidecar
 * written by another program may hold any bytes, which replies to
 * clients escape.
 */
#ifndef DIRTYBITMAP_UTF8_H
#define DIRTYBITMAP_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Whether the LEN bytes at S are valid UTF-8 (NUL is valid: U+0000). */
extern bool utf8_is_valid (const char *s, size_t len);

/* A copy of the string S that is valid UTF-8: every byte that is not
 * part of a valid sequence is written as the four characters \xNN
 * (two lowercase hex digits); the rest is copied as it is, so a valid
 * string comes back unchanged.  malloc'd; NULL if out of memory.
 */
extern char *utf8_escape_invalid (const char *s);

#endif /* DIRTYBITMAP_UTF8_H */
