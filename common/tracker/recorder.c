/* SPDX-License-Identifier: BSD-3-Clause
 * Copyright (C) 2026 The nbdkit-dirtybitmap authors
 */

#include <config.h>

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>

#include <nbdkit-filter.h>

#include "qcow2-format.h"
#include "recorder.h"

/* Writer threads with a slot of their own; more share the last one. */
#define NR_SLOTS 1024

struct slot {
  uint64_t busy;                /* marks under way in this thread */
  char pad[56];                 /* one cache line per slot */
};

struct recorder_generation {
  struct dirtymap *map;
  unsigned bits;
};

struct recorder {
  uint64_t size;
  struct recorder_generation *current;   /* read by writers without a lock */
  struct slot slots[NR_SLOTS];
};

/* Slot numbers are per thread and shared by every recorder (there is
 * one per process in practice); a thread's number returns to the pool
 * when it exits, so that connections coming and going never exhaust
 * them.
 */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t slot_key;
static bool slot_used[NR_SLOTS - 1];
static __thread int my_slot = -1;

static void
release_slot (void *p)
{
  int slot = (int) (intptr_t) p - 1;

  pthread_mutex_lock (&pool_lock);
  if (slot >= 0 && slot < NR_SLOTS - 1)
    slot_used[slot] = false;
  pthread_mutex_unlock (&pool_lock);
}

static void
make_key (void)
{
  pthread_key_create (&slot_key, release_slot);
}

static int
thread_slot (void)
{
  int i;

  if (my_slot >= 0)
    return my_slot;
  pthread_once (&key_once, make_key);
  pthread_mutex_lock (&pool_lock);
  for (i = 0; i < NR_SLOTS - 1 && slot_used[i]; ++i)
    ;
  if (i < NR_SLOTS - 1)
    slot_used[i] = true;
  pthread_mutex_unlock (&pool_lock);
  my_slot = i;                  /* NR_SLOTS - 1: the shared slot */
  if (i < NR_SLOTS - 1)
    pthread_setspecific (slot_key, (void *) (intptr_t) (i + 1));
  return my_slot;
}

static struct recorder_generation *
generation_new (uint64_t size, unsigned bits)
{
  struct recorder_generation *g = malloc (sizeof *g);

  if (g == NULL) {
    nbdkit_error ("malloc: %m");
    return NULL;
  }
  g->bits = bits;
  g->map = dirtymap_new (qcow2_blocks_covering (size, bits));
  if (g->map == NULL) {
    free (g);
    return NULL;
  }
  return g;
}

struct recorder *
recorder_new (uint64_t size, unsigned bits)
{
  struct recorder *r = calloc (1, sizeof *r);

  if (r == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  r->size = size;
  r->current = generation_new (size, bits);
  if (r->current == NULL) {
    free (r);
    return NULL;
  }
  return r;
}

void
recorder_free (struct recorder *r)
{
  if (r == NULL)
    return;
  dirtymap_free (r->current->map);
  free (r->current);
  free (r);
}

const struct recorder_generation *
recorder_hold (struct recorder *r)
{
  /* Announce first, then read the map (both sequentially consistent):
   * a swap either sees us busy, or we see its new map.
   */
  __atomic_add_fetch (&r->slots[thread_slot ()].busy, 1, __ATOMIC_SEQ_CST);
  return __atomic_load_n (&r->current, __ATOMIC_SEQ_CST);
}

int
recorder_mark_held (const struct recorder_generation *g, uint64_t offset,
                    uint64_t count)
{
  uint64_t first, last;

  if (count == 0)
    return 0;
  first = offset >> g->bits;
  last = (offset + count - 1) >> g->bits;
  return dirtymap_set_range (g->map, first, last - first + 1) == -1 ? -1 : 0;
}

void
recorder_release (struct recorder *r)
{
  __atomic_sub_fetch (&r->slots[thread_slot ()].busy, 1, __ATOMIC_RELEASE);
}

int
recorder_mark (struct recorder *r, uint64_t offset, uint64_t count)
{
  int ret;

  if (count == 0)
    return 0;
  ret = recorder_mark_held (recorder_hold (r), offset, count);
  recorder_release (r);
  return ret;
}

struct dirtymap *
recorder_swap (struct recorder *r, unsigned new_bits, unsigned *old_bits)
{
  struct recorder_generation *fresh = generation_new (r->size, new_bits);
  struct recorder_generation *old;
  struct dirtymap *map;
  size_t i;

  if (fresh == NULL)
    return NULL;
  old = __atomic_exchange_n (&r->current, fresh, __ATOMIC_SEQ_CST);
  for (i = 0; i < NR_SLOTS; ++i)
    while (__atomic_load_n (&r->slots[i].busy, __ATOMIC_SEQ_CST) != 0)
      sched_yield ();
  map = old->map;
  *old_bits = old->bits;
  free (old);
  return map;
}
