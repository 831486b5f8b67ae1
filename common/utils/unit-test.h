/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Minimal checking macros for the unit tests in common/.
 *
 * Unlike assert(3) these stay active under NDEBUG, print the failing
 * expression with its location, and make the test exit non-zero.
 */
#ifndef DIRTYBITMAP_UNIT_TEST_H
#define DIRTYBITMAP_UNIT_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(expr)                                                     \
  do {                                                                  \
    if (!(expr)) {                                                      \
      fprintf (stderr, "%s:%d: check failed: %s\n",                     \
               __FILE__, __LINE__, #expr);                              \
      exit (EXIT_FAILURE);                                              \
    }                                                                   \
  } while (0)

#define CHECK_EQ_U64(actual, expected)                                  \
  do {                                                                  \
    unsigned long long a_ = (actual), e_ = (expected);                  \
    if (a_ != e_) {                                                     \
      fprintf (stderr, "%s:%d: %s is %llu, expected %llu\n",            \
               __FILE__, __LINE__, #actual, a_, e_);                    \
      exit (EXIT_FAILURE);                                              \
    }                                                                   \
  } while (0)

/* The text of the last nbdkit_error, captured by nbdkit-stubs.c. */
extern const char *last_error (void);
extern void clear_last_error (void);

/* Check that the last error mentions every one of the given words. */
#define CHECK_ERROR_MENTIONS(word)                                      \
  do {                                                                  \
    if (strstr (last_error (), (word)) == NULL) {                       \
      fprintf (stderr, "%s:%d: error \"%s\" does not mention \"%s\"\n", \
               __FILE__, __LINE__, last_error (), (word));              \
      exit (EXIT_FAILURE);                                              \
    }                                                                   \
  } while (0)

#endif /* DIRTYBITMAP_UNIT_TEST_H */
