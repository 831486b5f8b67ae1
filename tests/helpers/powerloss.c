/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

/* powerloss.so: an LD_PRELOAD library that simulates a power failure
 * on one file (or a few), for the crash tests.
 *
 * Environment:
 *
 *   POWERLOSS_FILE=PATH  the file whose writes may be lost (required;
 *                        without it the library does nothing); several
 *                        files may be given, separated by ':' (at
 *                        most 8), and all lose their unsynced writes.
 *   POWERLOSS_AFTER=K    the power fails at the K-th counted call on
 *                        the file; 0 or unset: never (count only).
 *   POWERLOSS_LOG=PATH   optional; lines are appended here: the call
 *                        at which the power failed, and at exit of a
 *                        process that saw the file, "calls N", the
 *                        number of counted calls (a process killed by
 *                        other means writes no such line).
 *   POWERLOSS_TRACE=1    optional; also log every counted call.
 *   POWERLOSS_RECORD=PATH  optional; every counted call is recorded
 *                        here, in order, with the bytes each write
 *                        left in the file, for
 *                        tests/helpers/crash-states.py to replay (the
 *                        format is below, at record_call).
 *   POWERLOSS_EIO_FLAG=PATH  optional; while a file exists at PATH,
 *                        fsync and fdatasync of the file fail with EIO
 *                        without syncing (the disk's failure, with no
 *                        library of threads to drive it).
 *
 * Counted calls are those on a descriptor of the file that change it
 * (pwrite, write, pwritev, writev, ftruncate, fallocate,
 * posix_fallocate and their 64-bit variants) or make it durable
 * (fsync, fdatasync).  Both kinds count, so a power failure can fall
 * between a write and the sync that follows it.  sync_file_range is
 * counted too, but makes nothing durable: it neither flushes the
 * disk's cache nor writes the file's metadata.
 *
 * Model: what a write changes is volatile until fsync or fdatasync
 * of the file (through any descriptor) succeeds; the worst case is
 * assumed, in which every volatile change is lost.  Before each write
 * the bytes it will overwrite and the file size are saved in an undo
 * log; a successful sync empties the log.  At the K-th call that call
 * is not made: the undo log is applied in reverse, which leaves the
 * file exactly as it was at its last sync, the result is synced, and
 * the process kills itself with SIGKILL.
 *
 * The file is recognised by device and inode: a descriptor is
 * followed when open, open64, openat, openat64 (or their fortified
 * forms, __open_2...), creat or creat64 returns one for the file that
 * PATH names at that moment, or when link or rename (or their *at
 * variants) makes an open file appear as PATH.  close stops following
 * it.  open with O_TRUNC on the file is made as an open followed by a
 * counted ftruncate to 0.
 *
 * Not modelled: what was written before the file was followed, the
 * directory entries (creation, link, rename, unlink) and writes the
 * library does not see (through memory maps, copy_file_range,
 * sendfile or splice, or descriptors made by dup or fcntl(F_DUPFD))
 * count as durable at once; writes through a descriptor opened with
 * O_SYNC or O_DSYNC count as volatile until a sync, like any other.
 *
 * Calls on the file are serialised by one mutex (the real call is made
 * while it is held, so the undo log matches the file).  Other
 * descriptors pass straight through, without taking it.
 *
 * Built without the sanitizers; in a sanitizer build the runtimes come
 * first in LD_PRELOAD and this library after them.
 */

#undef _FORTIFY_SOURCE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FDS 65536           /* descriptors that can be followed */
#define MAX_FILES 16            /* inodes that the paths may name */
#define MAX_TARGETS 8           /* paths in POWERLOSS_FILE */

/* The real functions, found lazily: calls may arrive before the
 * constructor runs.
 */
#define REAL(name) \
  ((__typeof__ (&name)) real_symbol (#name, &real_##name))
#define DECLARE_REAL(name) static void *real_##name

/* What callers built with _FORTIFY_SOURCE call for open with flags
 * that are not constant.
 */
extern int __open_2 (const char *path, int flags);
extern int __open64_2 (const char *path, int flags);
extern int __openat_2 (int dirfd, const char *path, int flags);
extern int __openat64_2 (int dirfd, const char *path, int flags);

DECLARE_REAL (open);
DECLARE_REAL (open64);
DECLARE_REAL (openat);
DECLARE_REAL (openat64);
DECLARE_REAL (__open_2);
DECLARE_REAL (__open64_2);
DECLARE_REAL (__openat_2);
DECLARE_REAL (__openat64_2);
DECLARE_REAL (close);
DECLARE_REAL (link);
DECLARE_REAL (linkat);
DECLARE_REAL (rename);
DECLARE_REAL (renameat);
DECLARE_REAL (renameat2);
DECLARE_REAL (pread);
DECLARE_REAL (pwrite);
DECLARE_REAL (pwrite64);
DECLARE_REAL (write);
DECLARE_REAL (pwritev);
DECLARE_REAL (pwritev64);
DECLARE_REAL (writev);
DECLARE_REAL (ftruncate);
DECLARE_REAL (ftruncate64);
DECLARE_REAL (fallocate);
DECLARE_REAL (fallocate64);
DECLARE_REAL (posix_fallocate);
DECLARE_REAL (posix_fallocate64);
DECLARE_REAL (fsync);
DECLARE_REAL (fdatasync);
DECLARE_REAL (sync_file_range);

static void *
real_symbol (const char *name, void **slot)
{
  void *p = __atomic_load_n (slot, __ATOMIC_ACQUIRE);

  if (p == NULL) {
    p = dlsym (RTLD_NEXT, name);
    if (p == NULL)
      abort ();                 /* this libc lacks NAME */
    __atomic_store_n (slot, p, __ATOMIC_RELEASE);
  }
  return p;
}

/* One change since the last sync: to undo it, truncate the file to
 * SIZE_BEFORE, then write back the LEN bytes of OLD at OFFSET.
 */
struct undo {
  off_t size_before;
  off_t offset;
  size_t len;
  unsigned char *old;
};

struct file {
  dev_t dev;
  ino_t ino;
  int private_fd;               /* ours, read-write, never closed */
  struct undo *log;
  size_t log_len, log_cap;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct file files[MAX_FILES];
static size_t nr_files;
/* 0: not followed; otherwise an index into files, plus 1. */
static unsigned char followed[MAX_FDS];
static uint64_t calls;          /* counted calls so far */
static uint64_t fail_at;        /* POWERLOSS_AFTER */
static char *targets[MAX_TARGETS]; /* POWERLOSS_FILE, split at ':' */
static size_t nr_targets;
static const char *log_path;    /* POWERLOSS_LOG */
static const char *eio_flag;    /* POWERLOSS_EIO_FLAG */
static bool trace;              /* POWERLOSS_TRACE */
static const char *record_path; /* POWERLOSS_RECORD */
static int record_fd = -1;      /* open on record_path once used */
static bool seen;               /* a descriptor was ever followed */
static pid_t owner;             /* the process the constructor ran in */

__attribute__ ((format (printf, 1, 2)))
static void
log_line (const char *fmt, ...)
{
  char buf[512];
  va_list ap;
  int n, fd;

  if (log_path == NULL)
    return;
  va_start (ap, fmt);
  n = vsnprintf (buf, sizeof buf, fmt, ap);
  va_end (ap);
  if (n < 0)
    return;
  if ((size_t) n >= sizeof buf)
    n = sizeof buf - 1;
  fd = REAL (open) (log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
                    0666);
  if (fd == -1)
    return;
  (void) REAL (write) (fd, buf, n);
  REAL (close) (fd);
}

__attribute__ ((noreturn))
static void
die (const char *what)
{
  char msg[256];

  snprintf (msg, sizeof msg, "powerloss: %s: %s\n", what, strerror (errno));
  (void) REAL (write) (2, msg, strlen (msg));
  log_line ("%s", msg);
  abort ();
}

__attribute__ ((constructor))
static void
powerloss_init (void)
{
  const char *s;

  owner = getpid ();
  s = getenv ("POWERLOSS_FILE");
  if (s && *s) {
    char *copy = strdup (s), *save = NULL, *p;
    if (copy == NULL)
      abort ();
    for (p = strtok_r (copy, ":", &save); p && nr_targets < MAX_TARGETS;
         p = strtok_r (NULL, ":", &save))
      targets[nr_targets++] = p;
  }
  log_path = getenv ("POWERLOSS_LOG");
  if (log_path && *log_path == '\0')
    log_path = NULL;
  s = getenv ("POWERLOSS_AFTER");
  if (s && *s) {
    char *end;
    errno = 0;
    fail_at = strtoull (s, &end, 10);
    if (errno || *end || *s == '-') {
      static const char msg[] = "powerloss: POWERLOSS_AFTER is not a number\n";
      (void) REAL (write) (2, msg, sizeof msg - 1);
      abort ();
    }
  }
  s = getenv ("POWERLOSS_TRACE");
  trace = s && *s && strcmp (s, "0") != 0;
  record_path = getenv ("POWERLOSS_RECORD");
  if (record_path && *record_path == '\0')
    record_path = NULL;
  eio_flag = getenv ("POWERLOSS_EIO_FLAG");
  if (eio_flag && *eio_flag == '\0')
    eio_flag = NULL;
}

__attribute__ ((destructor))
static void
powerloss_fini (void)
{
  pthread_mutex_lock (&lock);
  if (seen && getpid () == owner)
    log_line ("calls %" PRIu64 "\n", calls);
  pthread_mutex_unlock (&lock);
}

/* Is FD followed?  Lock-free, so that descriptors of other files
 * (and signal handlers writing to pipes) never wait for the lock.
 */
static inline bool
is_followed (int fd)
{
  return fd >= 0 && fd < MAX_FDS &&
    __atomic_load_n (&followed[fd], __ATOMIC_ACQUIRE) != 0;
}

/* Device and inode of each target file that exists now; returns how
 * many.
 */
static size_t
stat_targets (struct stat *want)
{
  size_t i, n = 0;

  for (i = 0; i < nr_targets; ++i)
    if (stat (targets[i], &want[n]) == 0)
      n++;
  return n;
}

static bool
is_one_of (const struct stat *have, const struct stat *want, size_t n)
{
  size_t i;

  for (i = 0; i < n; ++i)
    if (want[i].st_dev == have->st_dev && want[i].st_ino == have->st_ino)
      return true;
  return false;
}

/* Start following FD if it is a descriptor of one of the N files WANT
 * describes (the targets).  Called with the lock held.
 */
static void
follow_if (int fd, const struct stat *want, size_t n)
{
  struct stat have;
  size_t i;

  if (fd < 0 || fstat (fd, &have) == -1 || !is_one_of (&have, want, n))
    return;
  if (fd >= MAX_FDS) {
    errno = EMFILE;
    die ("descriptor of the followed file is too large");
  }
  for (i = 0; i < nr_files; ++i)
    if (files[i].dev == have.st_dev && files[i].ino == have.st_ino)
      break;
  if (i == nr_files) {
    if (nr_files == MAX_FILES) {
      errno = ENFILE;
      die ("too many inodes named by POWERLOSS_FILE");
    }
    files[i].dev = have.st_dev;
    files[i].ino = have.st_ino;
    files[i].private_fd = -1;
    nr_files++;
  }
  seen = true;
  __atomic_store_n (&followed[fd], (unsigned char) (i + 1), __ATOMIC_RELEASE);
}

static void
follow_if_target (int fd)
{
  struct stat want[MAX_TARGETS];
  size_t n = stat_targets (want);

  if (n > 0)
    follow_if (fd, want, n);
}

/* After a link or rename: an open file may now be a target. */
static void
rescan_descriptors (void)
{
  struct rlimit rl;
  struct stat want[MAX_TARGETS];
  size_t n = stat_targets (want);
  int fd, max = MAX_FDS;

  if (n == 0)
    return;
  if (getrlimit (RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t) max)
    max = rl.rlim_cur;
  for (fd = 0; fd < max; ++fd)
    if (!is_followed (fd))
      follow_if (fd, want, n);
}

static struct file *
file_of (int fd)
{
  return &files[__atomic_load_n (&followed[fd], __ATOMIC_ACQUIRE) - 1];
}

/* Our own read-write descriptor of the file, to save old bytes and to
 * restore them whatever the caller's access mode.  It is never closed:
 * closing a descriptor would drop the process's POSIX locks.
 */
static int
private_fd (struct file *f, int fd)
{
  char path[64];

  if (f->private_fd == -1) {
    snprintf (path, sizeof path, "/proc/self/fd/%d", fd);
    f->private_fd = REAL (open) (path, O_RDWR | O_CLOEXEC);
    if (f->private_fd == -1)
      die ("reopening the followed file");
  }
  return f->private_fd;
}

static void
pread_all (int fd, unsigned char *buf, size_t len, off_t offset)
{
  while (len > 0) {
    ssize_t r = REAL (pread) (fd, buf, len, offset);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      die ("saving the old contents");
    buf += r;
    len -= r;
    offset += r;
  }
}

static void
pwrite_all (int fd, const unsigned char *buf, size_t len, off_t offset)
{
  while (len > 0) {
    ssize_t r = REAL (pwrite) (fd, buf, len, offset);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      die ("restoring the old contents");
    buf += r;
    len -= r;
    offset += r;
  }
}

/* Save what a change of [OFFSET, OFFSET+LEN) will destroy: the bytes
 * of that range inside the file, and the size.  LEN may be -1: up to
 * the end of the file.
 */
static void
save_range (int fd, off_t offset, off_t len)
{
  struct file *f = file_of (fd);
  int pfd = private_fd (f, fd);
  struct stat st;
  struct undo u;
  off_t end;

  if (fstat (pfd, &st) == -1)
    die ("fstat");
  u.size_before = st.st_size;
  u.offset = offset < 0 ? 0 : offset;
  end = len < 0 || offset + len > st.st_size ? st.st_size : offset + len;
  u.len = end > u.offset ? (size_t) (end - u.offset) : 0;
  u.old = NULL;
  if (u.len > 0) {
    u.old = malloc (u.len);
    if (u.old == NULL)
      die ("malloc");
    pread_all (pfd, u.old, u.len, u.offset);
  }
  if (f->log_len == f->log_cap) {
    size_t cap = f->log_cap ? 2 * f->log_cap : 64;
    struct undo *p = realloc (f->log, cap * sizeof *p);
    if (p == NULL)
      die ("realloc");
    f->log = p;
    f->log_cap = cap;
  }
  f->log[f->log_len++] = u;
}

static void
drop_log (struct file *f)
{
  size_t i;

  for (i = 0; i < f->log_len; ++i)
    free (f->log[i].old);
  f->log_len = 0;
}

/* The record (POWERLOSS_RECORD): one text line per counted call,

 *   CALL WHAT FILE OFFSET LENGTH RESULT SIZE

 * CALL the call's number, WHAT its name, FILE the followed file
 * (0 for the first), OFFSET and LENGTH as in the trace (-1 where they
 * do not apply; for ftruncate OFFSET is the new size), RESULT what
 * the call returned, SIZE the file's size after it.  A write that
 * wrote N > 0 bytes is followed by those N bytes, read back from the
 * file under the lock (so they are what the file holds), and a
 * newline.  A power
 * failure appends the line "crash CALL", CALL being the call that was
 * not made.  Called with the lock held.
 */
static void
record_bytes (const void *buf, size_t len)
{
  const char *p = buf;

  if (record_fd == -1) {
    record_fd = REAL (open) (record_path,
                             O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (record_fd == -1)
      die ("opening POWERLOSS_RECORD");
  }
  while (len > 0) {
    ssize_t r = REAL (write) (record_fd, p, len);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      die ("writing POWERLOSS_RECORD");
    p += r;
    len -= r;
  }
}

static void
record_call (const char *what, int fd, long long offset, long long len,
             long long result, bool data)
{
  struct file *f = file_of (fd);
  char line[256];
  struct stat st;
  int pfd, n;

  if (record_path == NULL)
    return;
  pfd = private_fd (f, fd);
  if (fstat (pfd, &st) == -1)
    die ("fstat");
  n = snprintf (line, sizeof line, "%" PRIu64 " %s %td %lld %lld %lld %lld\n",
                calls, what, f - files, offset, len, result,
                (long long) st.st_size);
  record_bytes (line, n);
  if (data && result > 0) {
    unsigned char *buf = malloc (result);
    if (buf == NULL)
      die ("malloc");
    pread_all (pfd, buf, result, offset);
    record_bytes (buf, result);
    record_bytes ("\n", 1);
    free (buf);
  }
}

/* The power fails: every file loses what was not synced, then the
 * process dies.  Called with the lock held; never returns.
 */
__attribute__ ((noreturn))
static void
power_failure (const char *what, int fd)
{
  size_t i, j, undone = 0;

  for (i = 0; i < nr_files; ++i) {
    struct file *f = &files[i];

    if (f->log_len == 0)
      continue;
    for (j = f->log_len; j-- > 0; ) {
      struct undo *u = &f->log[j];
      if (REAL (ftruncate) (f->private_fd, u->size_before) == -1)
        die ("restoring the old size");
      pwrite_all (f->private_fd, u->old, u->len, u->offset);
    }
    if (REAL (fsync) (f->private_fd) == -1)
      die ("fsync after restoring");
    undone += f->log_len;
  }
  log_line ("power failed at call %" PRIu64 " (%s on fd %d): "
            "%zu unsynced changes lost\n", calls, what, fd, undone);
  if (record_path) {
    char line[64];
    int n = snprintf (line, sizeof line, "crash %" PRIu64 "\n", calls);
    record_bytes (line, n);
  }
  kill (getpid (), SIGKILL);
  for (;;)
    pause ();
}

/* Count a call on a followed descriptor; at the K-th the power fails
 * instead of the call.  OFFSET and LEN are for the trace: a range,
 * or with LEN < 0 a new size, or with OFFSET < 0 nothing (a sync).
 * Called with the lock held.
 */
static void
count_call (const char *what, int fd, long long offset, long long len)
{
  calls++;
  if (trace && offset < 0)
    log_line ("call %" PRIu64 ": %s fd %d\n", calls, what, fd);
  else if (trace && len < 0)
    log_line ("call %" PRIu64 ": %s fd %d size %lld\n",
              calls, what, fd, offset);
  else if (trace)
    log_line ("call %" PRIu64 ": %s fd %d offset %lld length %lld\n",
              calls, what, fd, offset, len);
  if (fail_at != 0 && calls == fail_at)
    power_failure (what, fd);
}

static size_t
iov_length (const struct iovec *iov, int iovcnt)
{
  size_t n = 0;
  int i;

  for (i = 0; i < iovcnt; ++i)
    n += iov[i].iov_len;
  return n;
}

/* Where write(2) on FD will write. */
static off_t
current_offset (int fd)
{
  int fl = fcntl (fd, F_GETFL);
  struct stat st;

  if (fl != -1 && (fl & O_APPEND)) {
    if (fstat (fd, &st) == -1)
      die ("fstat");
    return st.st_size;
  }
  return lseek (fd, 0, SEEK_CUR);
}

/* The wrappers.  Each takes the fast path unless FD is followed. */

/* A change of [OFFSET, OFFSET+LEN), or with LEN = -1 of everything
 * from OFFSET on; LOGLEN is the length for the trace.  DATA: the call
 * returns how many bytes it wrote at OFFSET, which the record keeps.
 * OFFSET is evaluated once, before the call (write moves the file
 * offset).
 */
#define WRITE_LIKE3(what, fd, offset, len, loglen, data, call)  \
  do {                                                          \
    __typeof__ (call) r_;                                       \
    int e_;                                                     \
    off_t off_;                                                 \
    pthread_mutex_lock (&lock);                                 \
    if (!is_followed (fd)) {                                    \
      pthread_mutex_unlock (&lock);                             \
      return call;                                              \
    }                                                           \
    off_ = (offset);                                            \
    count_call (what, fd, off_, loglen);                        \
    save_range (fd, off_, len);                                 \
    r_ = call;                                                  \
    e_ = errno;                                                 \
    record_call (what, fd, off_, loglen, r_, data);             \
    pthread_mutex_unlock (&lock);                               \
    errno = e_;                                                 \
    return r_;                                                  \
  } while (0)
#define WRITE_LIKE2(what, fd, offset, len, loglen, call) \
  WRITE_LIKE3 (what, fd, offset, len, loglen, false, call)
#define WRITE_LIKE(what, fd, offset, len, call) \
  WRITE_LIKE3 (what, fd, offset, len, len, false, call)
#define WRITE_DATA(what, fd, offset, len, call) \
  WRITE_LIKE3 (what, fd, offset, len, len, true, call)

ssize_t
pwrite (int fd, const void *buf, size_t n, off_t offset)
{
  if (!is_followed (fd))
    return REAL (pwrite) (fd, buf, n, offset);
  WRITE_DATA ("pwrite", fd, offset, (off_t) n,
              REAL (pwrite) (fd, buf, n, offset));
}

ssize_t
pwrite64 (int fd, const void *buf, size_t n, off64_t offset)
{
  if (!is_followed (fd))
    return REAL (pwrite64) (fd, buf, n, offset);
  WRITE_DATA ("pwrite64", fd, offset, (off_t) n,
              REAL (pwrite64) (fd, buf, n, offset));
}

ssize_t
pwritev (int fd, const struct iovec *iov, int iovcnt, off_t offset)
{
  if (!is_followed (fd))
    return REAL (pwritev) (fd, iov, iovcnt, offset);
  WRITE_DATA ("pwritev", fd, offset, (off_t) iov_length (iov, iovcnt),
              REAL (pwritev) (fd, iov, iovcnt, offset));
}

ssize_t
pwritev64 (int fd, const struct iovec *iov, int iovcnt, off64_t offset)
{
  if (!is_followed (fd))
    return REAL (pwritev64) (fd, iov, iovcnt, offset);
  WRITE_DATA ("pwritev64", fd, offset, (off_t) iov_length (iov, iovcnt),
              REAL (pwritev64) (fd, iov, iovcnt, offset));
}

ssize_t
write (int fd, const void *buf, size_t n)
{
  if (!is_followed (fd))
    return REAL (write) (fd, buf, n);
  WRITE_DATA ("write", fd, current_offset (fd), (off_t) n,
              REAL (write) (fd, buf, n));
}

ssize_t
writev (int fd, const struct iovec *iov, int iovcnt)
{
  if (!is_followed (fd))
    return REAL (writev) (fd, iov, iovcnt);
  WRITE_DATA ("writev", fd, current_offset (fd),
              (off_t) iov_length (iov, iovcnt),
              REAL (writev) (fd, iov, iovcnt));
}

int
ftruncate (int fd, off_t length)
{
  if (!is_followed (fd))
    return REAL (ftruncate) (fd, length);
  WRITE_LIKE ("ftruncate", fd, length, (off_t) -1,
              REAL (ftruncate) (fd, length));
}

int
ftruncate64 (int fd, off64_t length)
{
  if (!is_followed (fd))
    return REAL (ftruncate64) (fd, length);
  WRITE_LIKE ("ftruncate64", fd, length, (off_t) -1,
              REAL (ftruncate64) (fd, length));
}

/* Modes that shift the tail of the file change everything after
 * OFFSET.
 */
#ifndef FALLOC_FL_COLLAPSE_RANGE
#define FALLOC_FL_COLLAPSE_RANGE 0x08
#endif
#ifndef FALLOC_FL_INSERT_RANGE
#define FALLOC_FL_INSERT_RANGE 0x20
#endif
#define FALLOC_SHIFTS (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)

int
fallocate (int fd, int mode, off_t offset, off_t len)
{
  if (!is_followed (fd))
    return REAL (fallocate) (fd, mode, offset, len);
  WRITE_LIKE2 ("fallocate", fd, offset,
               (mode & FALLOC_SHIFTS) ? (off_t) -1 : len, len,
               REAL (fallocate) (fd, mode, offset, len));
}

int
fallocate64 (int fd, int mode, off64_t offset, off64_t len)
{
  if (!is_followed (fd))
    return REAL (fallocate64) (fd, mode, offset, len);
  WRITE_LIKE2 ("fallocate64", fd, offset,
               (mode & FALLOC_SHIFTS) ? (off_t) -1 : (off_t) len, len,
               REAL (fallocate64) (fd, mode, offset, len));
}

int
posix_fallocate (int fd, off_t offset, off_t len)
{
  if (!is_followed (fd))
    return REAL (posix_fallocate) (fd, offset, len);
  WRITE_LIKE ("posix_fallocate", fd, offset, len,
              REAL (posix_fallocate) (fd, offset, len));
}

int
posix_fallocate64 (int fd, off64_t offset, off64_t len)
{
  if (!is_followed (fd))
    return REAL (posix_fallocate64) (fd, offset, len);
  WRITE_LIKE ("posix_fallocate64", fd, offset, (off_t) len,
              REAL (posix_fallocate64) (fd, offset, len));
}

/* A sync that succeeds makes every change of the file durable. */
#define SYNC_LIKE(what, fd, call)                       \
  do {                                                  \
    int r_, e_;                                         \
    pthread_mutex_lock (&lock);                         \
    if (!is_followed (fd)) {                            \
      pthread_mutex_unlock (&lock);                     \
      return call;                                      \
    }                                                   \
    count_call (what, fd, -1, -1);                      \
    if (eio_flag && access (eio_flag, F_OK) == 0) {     \
      record_call (what, fd, -1, -1, -1, false);        \
      pthread_mutex_unlock (&lock);                     \
      errno = EIO;                                      \
      return -1;                                        \
    }                                                   \
    r_ = call;                                          \
    e_ = errno;                                         \
    if (r_ == 0)                                        \
      drop_log (file_of (fd));                          \
    record_call (what, fd, -1, -1, r_, false);          \
    pthread_mutex_unlock (&lock);                       \
    errno = e_;                                         \
    return r_;                                          \
  } while (0)

int
fsync (int fd)
{
  if (!is_followed (fd))
    return REAL (fsync) (fd);
  SYNC_LIKE ("fsync", fd, REAL (fsync) (fd));
}

int
fdatasync (int fd)
{
  if (!is_followed (fd))
    return REAL (fdatasync) (fd);
  SYNC_LIKE ("fdatasync", fd, REAL (fdatasync) (fd));
}

/* Counted and recorded, but no barrier: what it writes back may still
 * sit in the disk's cache, and the file's size is not written.
 */
int
sync_file_range (int fd, off64_t offset, off64_t nbytes, unsigned int flags)
{
  int r, e;

  if (!is_followed (fd))
    return REAL (sync_file_range) (fd, offset, nbytes, flags);
  pthread_mutex_lock (&lock);
  if (!is_followed (fd)) {
    pthread_mutex_unlock (&lock);
    return REAL (sync_file_range) (fd, offset, nbytes, flags);
  }
  count_call ("sync_file_range", fd, offset, nbytes);
  r = REAL (sync_file_range) (fd, offset, nbytes, flags);
  e = errno;
  record_call ("sync_file_range", fd, offset, nbytes, r, false);
  pthread_mutex_unlock (&lock);
  errno = e;
  return r;
}

/* Opening.  O_TRUNC on a target becomes a counted ftruncate. */

static bool
names_target (int dirfd, const char *path)
{
  struct stat want[MAX_TARGETS], have;
  size_t n = stat_targets (want);

  return n > 0 && fstatat (dirfd, path, &have, 0) == 0 &&
    is_one_of (&have, want, n);
}

static int
after_open (int fd, bool truncate)
{
  int e = errno;

  if (fd >= 0) {
    pthread_mutex_lock (&lock);
    follow_if_target (fd);
    pthread_mutex_unlock (&lock);
    if (truncate && ftruncate (fd, 0) == -1) {
      e = errno;
      close (fd);
      errno = e;
      return -1;
    }
  }
  errno = e;
  return fd;
}

static mode_t
mode_arg (int flags, va_list ap)
{
#ifdef O_TMPFILE
  if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE)
#else
  if (flags & O_CREAT)
#endif
    return va_arg (ap, int);
  return 0;
}

#define OPEN_BODY(realfn, dirfd, ...)                                   \
  do {                                                                  \
    bool trunc_ = (flags & O_TRUNC) && names_target (dirfd, path);      \
    if (trunc_)                                                         \
      flags &= ~O_TRUNC;                                                \
    return after_open (realfn (__VA_ARGS__), trunc_);                   \
  } while (0)

int
open (const char *path, int flags, ...)
{
  va_list ap;
  mode_t mode;

  va_start (ap, flags);
  mode = mode_arg (flags, ap);
  va_end (ap);
  OPEN_BODY (REAL (open), AT_FDCWD, path, flags, mode);
}

int
open64 (const char *path, int flags, ...)
{
  va_list ap;
  mode_t mode;

  va_start (ap, flags);
  mode = mode_arg (flags, ap);
  va_end (ap);
  OPEN_BODY (REAL (open64), AT_FDCWD, path, flags, mode);
}

int
openat (int dirfd, const char *path, int flags, ...)
{
  va_list ap;
  mode_t mode;

  va_start (ap, flags);
  mode = mode_arg (flags, ap);
  va_end (ap);
  OPEN_BODY (REAL (openat), dirfd, dirfd, path, flags, mode);
}

int
openat64 (int dirfd, const char *path, int flags, ...)
{
  va_list ap;
  mode_t mode;

  va_start (ap, flags);
  mode = mode_arg (flags, ap);
  va_end (ap);
  OPEN_BODY (REAL (openat64), dirfd, dirfd, path, flags, mode);
}

int
__open_2 (const char *path, int flags)
{
  OPEN_BODY (REAL (__open_2), AT_FDCWD, path, flags);
}

int
__open64_2 (const char *path, int flags)
{
  OPEN_BODY (REAL (__open64_2), AT_FDCWD, path, flags);
}

int
__openat_2 (int dirfd, const char *path, int flags)
{
  OPEN_BODY (REAL (__openat_2), dirfd, dirfd, path, flags);
}

int
__openat64_2 (int dirfd, const char *path, int flags)
{
  OPEN_BODY (REAL (__openat64_2), dirfd, dirfd, path, flags);
}

int
creat (const char *path, mode_t mode)
{
  int flags = O_CREAT | O_WRONLY | O_TRUNC;
  OPEN_BODY (REAL (open), AT_FDCWD, path, flags, mode);
}

int
creat64 (const char *path, mode_t mode)
{
  int flags = O_CREAT | O_WRONLY | O_TRUNC;
  OPEN_BODY (REAL (open64), AT_FDCWD, path, flags, mode);
}

int
close (int fd)
{
  int r, e;

  if (!is_followed (fd))
    return REAL (close) (fd);
  pthread_mutex_lock (&lock);
  __atomic_store_n (&followed[fd], 0, __ATOMIC_RELEASE);
  r = REAL (close) (fd);
  e = errno;
  pthread_mutex_unlock (&lock);
  errno = e;
  return r;
}

/* A new name may make an open file a target. */
#define NAMING(call)                                    \
  do {                                                  \
    int r_ = call, e_ = errno;                          \
    if (r_ == 0 && nr_targets > 0) {                    \
      pthread_mutex_lock (&lock);                       \
      rescan_descriptors ();                            \
      pthread_mutex_unlock (&lock);                     \
    }                                                   \
    errno = e_;                                         \
    return r_;                                          \
  } while (0)

int
link (const char *oldpath, const char *newpath)
{
  NAMING (REAL (link) (oldpath, newpath));
}

int
linkat (int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
        int flags)
{
  NAMING (REAL (linkat) (olddirfd, oldpath, newdirfd, newpath, flags));
}

int
rename (const char *oldpath, const char *newpath)
{
  NAMING (REAL (rename) (oldpath, newpath));
}

int
renameat (int olddirfd, const char *oldpath, int newdirfd,
          const char *newpath)
{
  NAMING (REAL (renameat) (olddirfd, oldpath, newdirfd, newpath));
}

int
renameat2 (int olddirfd, const char *oldpath, int newdirfd,
           const char *newpath, unsigned int flags)
{
  NAMING (REAL (renameat2) (olddirfd, oldpath, newdirfd, newpath, flags));
}
