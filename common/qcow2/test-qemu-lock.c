/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Unit tests for QEMU-compatible locking, with qemu-img as referee:
 * while a writer holds the sidecar, qemu-img refuses it unless -U is
 * given, and a second writer in any process is refused.
 */
#include <config.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qemu-lock.h"
#include "sidecar.h"
#include "unit-test.h"

static char dir[] = "/tmp/test-qemu-lock-XXXXXX";
static char path[64];

/* Run "qemu-img ARGS SIDECAR AFTER", quietly; returns its status. */
static int
qemu_img (const char *args, const char *after)
{
  char cmd[256];

  snprintf (cmd, sizeof cmd, "qemu-img %s '%s' %s >/dev/null 2>&1",
            args, path, after);
  return system (cmd);
}

int
main (void)
{
  int writer, second, reader;

  if (system ("qemu-img --version >/dev/null 2>&1") != 0) {
    fprintf (stderr, "qemu-img is missing\n");
    return getenv ("CI") && strcmp (getenv ("CI"), "true") == 0 ? 1 : 77;
  }
  CHECK (mkdtemp (dir) != NULL);
  snprintf (path, sizeof path, "%s/sidecar.qcow2", dir);
  CHECK (sidecar_create (path, 1 << 20) == 0);

  writer = open (path, O_RDWR);
  CHECK (writer >= 0);
  CHECK (qemu_lock_image (writer, path, true) == 0);
  /* QEMU sees the writer: plain info and bitmap edits are refused. */
  CHECK (qemu_img ("info", "") != 0);
  CHECK (qemu_img ("bitmap --add", "b0") != 0);
  CHECK (qemu_img ("info -U", "") == 0);

  /* A second writer or a reader, even in this process, is refused. */
  second = open (path, O_RDWR);
  CHECK (qemu_lock_image (second, path, true) == -1);
  CHECK_ERROR_MENTIONS ("in use by another program");
  CHECK (qemu_lock_image (second, path, false) == -1);
  close (second);
  close (writer);

  /* A reader lets qemu-img read but not write. */
  reader = open (path, O_RDONLY);
  CHECK (qemu_lock_image (reader, path, false) == 0);
  CHECK (qemu_img ("info", "") == 0);
  CHECK (qemu_img ("bitmap --add", "b0") != 0);
  second = open (path, O_RDONLY);
  CHECK (qemu_lock_image (second, path, false) == 0);    /* readers share */
  close (second);
  close (reader);

  /* Released: QEMU can write again. */
  CHECK (qemu_img ("bitmap --add", "b0") == 0);
  unlink (path);
  rmdir (dir);
  return 0;
}
