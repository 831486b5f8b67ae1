/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* The data's identity: what Linux's files are parsed into, what a
 * regular file gives, and which differences count as evidence.
 */

#include <config.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data-identity.h"
#include "unit-test.h"

#define CHECK_MENTIONS(text, word)                                      \
  do {                                                                  \
    const char *t_ = (text);                                            \
    CHECK (t_ != NULL);                                                 \
    if (strstr (t_, (word)) == NULL) {                                  \
      fprintf (stderr, "%s:%d: \"%s\" does not mention \"%s\"\n",       \
               __FILE__, __LINE__, t_, (word));                         \
      exit (EXIT_FAILURE);                                              \
    }                                                                   \
  } while (0)

static void
test_parsers (void)
{
  uint64_t c[QCOW2_IDENTITY_COUNTERS];
  uint8_t id[16];

  /* Today's 17 fields, and an old kernel's 11 (no discards). */
  CHECK (data_identity_parse_block_stat
         ("  1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n", c) == 0);
  CHECK (c[0] == 5 && c[1] == 7 && c[2] == 12 && c[3] == 14);
  CHECK (data_identity_parse_block_stat ("1 2 3 4 50 6 70 8 9 10 11\n", c)
         == 0);
  CHECK (c[0] == 50 && c[1] == 70 && c[2] == 0 && c[3] == 0);
  CHECK (data_identity_parse_block_stat ("1 2 3\n", c) == -1);
  CHECK (data_identity_parse_block_stat ("", c) == -1);

  CHECK (data_identity_parse_boot_id
         ("d73facc9-17bb-4cfa-936f-08ae601f9234\n", id) == 0);
  CHECK (id[0] == 0xd7 && id[1] == 0x3f && id[15] == 0x34);
  CHECK (data_identity_parse_boot_id ("d73facc9-17bb\n", id) == -1);
  CHECK (data_identity_parse_boot_id ("x73facc9-17bb-4cfa-936f-08ae601f9234",
                                      id) == -1);
}

static void
test_take (void)
{
  char path[] = "/tmp/test-data-identity-XXXXXX";
  char why[DATA_IDENTITY_MESSAGE_MAX], ev[DATA_IDENTITY_MESSAGE_MAX];
  struct tracker_config cfg;
  struct qcow2_identity_ext a, b;
  int fd = mkstemp (path);

  CHECK (fd >= 0);
  tracker_config_init (&cfg);
  CHECK (data_identity_take (&cfg, &a, why) == 0);      /* nothing named */

  /* A file= that is no local file (vddk's) identifies nothing. */
  CHECK (tracker_config_note_plugin_file (&cfg, "/nonexistent/[ds] x.vmdk")
         == 0);
  CHECK (!data_identity_configured (&cfg));
  tracker_config_free (&cfg);

  /* One file= is the data; two (split, partitioning) are not. */
  CHECK (tracker_config_note_plugin_file (&cfg, path) == 0);
  CHECK (data_identity_take (&cfg, &a, why) == 1);
  CHECK (a.kind == QCOW2_IDENTITY_FILE && a.inode != 0 && a.size == 0);
  CHECK (data_identity_take (&cfg, &b, why) == 1);
  CHECK (data_identity_compare (&a, &b, NULL, ev) == NULL);
  CHECK (write (fd, "x", 1) == 1);
  CHECK (data_identity_take (&cfg, &b, why) == 1);
  CHECK_MENTIONS (data_identity_compare (&a, &b, NULL, ev), "size");
  CHECK (tracker_config_note_plugin_file (&cfg, "/nonexistent") == 0);
  CHECK (data_identity_take (&cfg, &b, why) == 0);

  /* A token given wins over file=; dirtybitmap-data= over both. */
  CHECK (tracker_config_set_data_id (&cfg, "gen-7") == 0);
  CHECK (data_identity_take (&cfg, &b, why) == 1);
  CHECK (b.kind == QCOW2_IDENTITY_TOKEN && strcmp (b.token, "gen-7") == 0);
  CHECK (tracker_config_set_data (&cfg, "/nonexistent/data") == 0);
  CHECK (tracker_config_check (&cfg) == -1);
  CHECK (data_identity_take (&cfg, &b, why) == -1);
  CHECK_MENTIONS (why, "/nonexistent/data");
  CHECK_MENTIONS (data_identity_compare (&a, NULL, why, ev),
                  "cannot be now");
  tracker_config_free (&cfg);
  close (fd);
  unlink (path);
}

static void
test_compare (void)
{
  struct qcow2_identity_ext rec = {
    .kind = QCOW2_IDENTITY_FILE, .device = 8, .inode = 9, .size = 10,
    .ctime_sec = 100, .ctime_nsec = 500,
  }, now = rec;
  char ev[DATA_IDENTITY_MESSAGE_MAX];

  /* A clean stop's record: any change is evidence. */
  CHECK (data_identity_compare (&rec, &now, NULL, ev) == NULL);
  now.ctime_nsec = 501;
  CHECK_MENTIONS (data_identity_compare (&rec, &now, NULL, ev),
                  "ctime) was 100.000000500, is now 100.000000501");
  now.ctime_nsec = 499;
  CHECK (data_identity_compare (&rec, &now, NULL, ev) != NULL);
  /* A session's record (a crash since): later is the filter's own. */
  rec.flags = QCOW2_IDENTITY_SESSION;
  CHECK (data_identity_compare (&rec, &now, NULL, ev) != NULL);
  now.ctime_nsec = 501;
  CHECK (data_identity_compare (&rec, &now, NULL, ev) == NULL);
  now.inode = 11;
  CHECK_MENTIONS (data_identity_compare (&rec, &now, NULL, ev),
                  "inode was 9, is now 11");
  now.inode = 9;
  now.size = 12;
  CHECK_MENTIONS (data_identity_compare (&rec, &now, NULL, ev), "size");
  now.kind = QCOW2_IDENTITY_TOKEN;
  CHECK_MENTIONS (data_identity_compare (&rec, &now, NULL, ev),
                  "is now a dirtybitmap-data-id token");

  /* A block device: the counters, within one boot. */
  memset (&rec, 0, sizeof rec);
  rec.kind = QCOW2_IDENTITY_BLOCK;
  rec.device = 0x700;
  rec.counters[0] = 5;
  rec.boot_id[0] = 1;
  now = rec;
  CHECK (data_identity_compare (&rec, &now, NULL, ev) == NULL);
  now.counters[3] = 1;
  CHECK_MENTIONS (data_identity_compare (&rec, &now, NULL, ev),
                  "discarded sectors counter was 0, is now 1");
  rec.flags = QCOW2_IDENTITY_SESSION;
  CHECK (data_identity_compare (&rec, &now, NULL, ev) == NULL);
  now.boot_id[0] = 2;
  CHECK_MENTIONS (data_identity_compare (&rec, &now, NULL, ev),
                  "restarted");

  /* A token: equal or not. */
  memset (&rec, 0, sizeof rec);
  rec.kind = QCOW2_IDENTITY_TOKEN;
  strcpy (rec.token, "a");
  now = rec;
  CHECK (data_identity_compare (&rec, &now, NULL, ev) == NULL);
  strcpy (now.token, "b");
  CHECK_MENTIONS (data_identity_compare (&rec, &now, NULL, ev),
                  "was 'a', is now 'b'");
}

int
main (void)
{
  test_parsers ();
  test_take ();
  test_compare ();
  return 0;
}
