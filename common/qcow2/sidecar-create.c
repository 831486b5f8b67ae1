/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* Creating a sidecar: an empty qcow2, complete or not there at all. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "checked-io.h"
#include "sidecar-internal.h"

/* Layout of a sidecar we create: header, refcount table, one refcount
 * block, then the L1 table, as qemu-img create lays out a new image.
 */
#define NEW_REFCOUNT_ORDER 4

static int
sync_directory_of (const char *path)
{
  char *copy = strdup (path);
  int fd, r = 0;

  if (copy == NULL)
    return 0;
  fd = open (dirname (copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    if (fsync (fd) == -1 && errno != EINVAL) {
      nbdkit_error ("%s: flushing the directory entry: %m", path);
      r = -1;
    }
    close (fd);
  }
  free (copy);
  return r;
}

/* Guest bytes one L1 entry of a new sidecar maps: an L2 table of
 * 8-byte entries, each mapping a cluster.
 */
#define NEW_L2_COVERAGE \
  ((UINT64_C(1) << SIDECAR_NEW_CLUSTER_BITS) \
   * ((UINT64_C(1) << SIDECAR_NEW_CLUSTER_BITS) / 8))

int
sidecar_check_creatable (const char *path, uint64_t virtual_size)
{
  /* QEMU's largest L1 table, each entry mapping an L2 table. */
  if (virtual_size > (QCOW2_MAX_L1_BYTES / 8) * NEW_L2_COVERAGE) {
    nbdkit_error ("%s: a qcow2 sidecar with 64 KiB clusters cannot describe "
                  "a disk of %" PRIu64 " bytes (at most 2 PiB); create one "
                  "with larger clusters: 'qemu-img create -f qcow2 -o "
                  "cluster_size=2M %s SIZE'", path, virtual_size, path);
    return -1;
  }
  return 0;
}

/* A private name beside PATH, made with O_EXCL and the usual 0666
 * less the umask (mkstemp would make it 0600, and changing the umask
 * is not safe in a threaded server).  Returns its descriptor, *TMP its
 * name, or -1 after nbdkit_error.
 */
static int
create_private_file (const char *path, char **tmp)
{
  uint64_t i;
  int fd = -1;

  *tmp = NULL;
  for (i = 0; fd == -1; ++i) {
    free (*tmp);
    if (asprintf (tmp, "%s.new%ld.%" PRIu64, path, (long) getpid (),
                  ((uint64_t) random () << 16) ^ i) == -1) {
      *tmp = NULL;
      nbdkit_error ("asprintf: %m");
      return -1;
    }
    fd = open (*tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd == -1 && (errno != EEXIST || i >= 100)) {
      nbdkit_error ("%s: creating a temporary file to build the sidecar: %m",
                    *tmp);
      free (*tmp);
      *tmp = NULL;
      return -1;
    }
  }
  return fd;
}

/* Write the empty image H describes into FD (the file TMP), its L1
 * table of L1_CLUSTERS clusters left sparse.
 */
static int
write_empty_image (int fd, const char *tmp, const struct qcow2_header *h,
                   uint64_t l1_clusters)
{
  const uint64_t cs = UINT64_C(1) << SIDECAR_NEW_CLUSTER_BITS;
  const uint64_t block_offset = 2 * cs;
  struct qcow2_extension feature_table;
  uint8_t *buf = calloc (1, cs);
  uint64_t i;
  int r = -1;

  if (buf == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }

  /* Cluster 0: header and the feature name table. */
  qcow2_header_encode (h, buf);
  qcow2_feature_table_build (&feature_table);
  qcow2_extensions_encode (&feature_table, 1, &buf[h->header_length]);
  if (write_fully (fd, tmp, "header", buf, cs, 0) == -1)
    goto out;

  /* Cluster 1: refcount table with one block, at cluster 2. */
  memset (buf, 0, cs);
  qcow2_reftable_encode (&block_offset, 1, buf);
  if (write_fully (fd, tmp, "refcount table", buf, cs, cs) == -1)
    goto out;

  /* Cluster 2: the block, counting clusters 0-2 and the L1 table. */
  memset (buf, 0, cs);
  for (i = 0; i < 3 + l1_clusters; ++i)
    qcow2_refcount_set (buf, NEW_REFCOUNT_ORDER, i, 1);
  if (write_fully (fd, tmp, "refcount block", buf, cs, block_offset) == -1)
    goto out;

  /* The L1 table is all zeros: leave it sparse so that even a huge
   * disk's sidecar is created at once.
   */
  if (ftruncate (fd, (3 + l1_clusters) * cs) == -1) {
    nbdkit_error ("%s: extending to hold the L1 table: %m", tmp);
    goto out;
  }
  r = 0;

 out:
  free (buf);
  return r;
}

int
sidecar_create (const char *path, uint64_t virtual_size)
{
  const uint64_t cs = UINT64_C(1) << SIDECAR_NEW_CLUSTER_BITS;
  struct qcow2_header h = {
    .version = 3,
    .cluster_bits = SIDECAR_NEW_CLUSTER_BITS,
    .size = virtual_size,
    .refcount_table_offset = cs,
    .refcount_table_clusters = 1,
    .refcount_order = NEW_REFCOUNT_ORDER,
    .header_length = QCOW2_HEADER_LENGTH_WRITTEN,
    .l1_table_offset = 3 * cs,
  };
  uint64_t l1_clusters;
  char *tmp;
  int fd;

  if (sidecar_check_creatable (path, virtual_size) == -1)
    return -1;
  h.l1_size = DIV_ROUND_UP (virtual_size, NEW_L2_COVERAGE);
  l1_clusters = DIV_ROUND_UP ((uint64_t) h.l1_size * 8, cs);
  if (l1_clusters == 0)
    l1_clusters = 1;

  fd = create_private_file (path, &tmp);
  if (fd == -1)
    return -1;
  if (write_empty_image (fd, tmp, &h, l1_clusters) == -1)
    goto err;
  if (fsync (fd) == -1) {
    nbdkit_error ("%s: fsync: %m", tmp);
    goto err;
  }
  /* link() fails if PATH appeared meanwhile: never clobber a file. */
  if (link (tmp, path) == -1) {
    nbdkit_error ("%s: creating the sidecar: %m", path);
    goto err;
  }
  unlink (tmp);
  close (fd);
  free (tmp);
  return sync_directory_of (path);

 err:
  close (fd);
  unlink (tmp);
  free (tmp);
  return -1;
}
