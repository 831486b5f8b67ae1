/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Unit tests for the scratch file: unlinked at once, stores and loads,
 * the byte count, the shared limit, release.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scratch.h"
#include "unit-test.h"

static char dir[] = "/tmp/test-scratch-XXXXXX";

/* Nothing is ever named in the directory. */
static void
check_dir_empty (void)
{
  DIR *d = opendir (dir);
  struct dirent *e;
  int n = 0;

  CHECK (d != NULL);
  while ((e = readdir (d)) != NULL)
    n += e->d_name[0] != '.';
  closedir (d);
  CHECK (n == 0);
}

static void
test_store_load_release (void)
{
  struct scratch_budget budget = { .limit = 3 * 4096 };
  struct scratch *s = scratch_new (dir, "v", &budget);
  char buf[8192], back[8192];

  CHECK (s != NULL);
  check_dir_empty ();
  memset (buf, 'a', sizeof buf);
  CHECK (scratch_store (s, 0, buf, 4096) == 0);
  memset (buf, 'b', sizeof buf);
  CHECK (scratch_store (s, 1 << 30, buf, 4096) == 0);
  CHECK_EQ_U64 (scratch_bytes (s), 8192);
  CHECK_EQ_U64 (budget.used, 8192);
  /* Past the limit: refused, nothing counted. */
  CHECK (scratch_store (s, 8192, buf, 8192) == ENOSPC);
  CHECK_ERROR_MENTIONS ("view 'v'");
  CHECK_ERROR_MENTIONS ("dirtybitmap-view-scratch-limit=");
  CHECK_EQ_U64 (budget.used, 8192);
  CHECK (scratch_load (s, 0, back, 4096) == 0);
  CHECK (back[0] == 'a' && back[4095] == 'a');
  CHECK (scratch_load (s, 1 << 30, back, 4096) == 0);
  CHECK (back[0] == 'b' && back[4095] == 'b');
  scratch_release (s, 0, 4096);
  CHECK_EQ_U64 (scratch_bytes (s), 4096);
  CHECK_EQ_U64 (budget.used, 4096);
  /* Released space may be stored again. */
  CHECK (scratch_store (s, 0, buf, 8192) == 0);
  CHECK_EQ_U64 (budget.used, 3 * 4096);
  scratch_free (s);
  CHECK_EQ_U64 (budget.used, 0);
  check_dir_empty ();
}

/* The limit is over every file of the budget. */
static void
test_shared_limit (void)
{
  struct scratch_budget budget = { .limit = 4096 };
  struct scratch *s1 = scratch_new (dir, "one", &budget);
  struct scratch *s2 = scratch_new (dir, "two", &budget);
  char buf[4096] = { 0 };

  CHECK (s1 && s2);
  CHECK (scratch_store (s1, 0, buf, 4096) == 0);
  CHECK (scratch_store (s2, 0, buf, 512) == ENOSPC);
  CHECK_ERROR_MENTIONS ("view 'two'");
  scratch_release_all (s1);
  CHECK_EQ_U64 (scratch_bytes (s1), 0);
  CHECK (scratch_store (s2, 0, buf, 4096) == 0);
  scratch_free (s1);
  scratch_free (s2);
  CHECK_EQ_U64 (budget.used, 0);
}

static void
test_bad_dir (void)
{
  struct scratch_budget budget = { 0 };

  CHECK (scratch_new ("/nonexistent/dir", "v", &budget) == NULL);
  CHECK_ERROR_MENTIONS ("view 'v'");
  CHECK_ERROR_MENTIONS ("/nonexistent/dir");
  CHECK_ERROR_MENTIONS ("dirtybitmap-view-scratch=");
}

int
main (void)
{
  CHECK (mkdtemp (dir) != NULL);
  test_store_load_release ();
  test_shared_limit ();
  test_bad_dir ();
  rmdir (dir);
  return 0;
}
