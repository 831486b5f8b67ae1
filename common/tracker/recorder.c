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

/* The gate's states. */
enum { GATE_OPEN, GATE_OPEN_VIEWS, GATE_CLOSED };

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
  int gate;                     /* GATE_*, read by writers without a lock */
  pthread_mutex_t gate_lock;    /* for writers waiting at the gate */
  pthread_cond_t gate_opened;
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
  pthread_mutex_init (&r->gate_lock, NULL);
  pthread_cond_init (&r->gate_opened, NULL);
  return r;
}

void
recorder_free (struct recorder *r)
{
  if (r == NULL)
    return;
  dirtymap_free (r->current->map);
  free (r->current);
  pthread_mutex_destroy (&r->gate_lock);
  pthread_cond_destroy (&r->gate_opened);
  free (r);
}

const struct recorder_generation *
recorder_hold (struct recorder *r, bool *views)
{
  struct slot *slot = &r->slots[thread_slot ()];
  int gate;

  /* Announce first, then look at the gate and read the map (all
   * sequentially consistent): a closing gate or a swap either sees us
   * busy and waits for our release, or we see it closed (and step
   * back) or see its new map.
   */
  for (;;) {
    __atomic_add_fetch (&slot->busy, 1, __ATOMIC_SEQ_CST);
    gate = __atomic_load_n (&r->gate, __ATOMIC_SEQ_CST);
    if (gate != GATE_CLOSED)
      break;
    __atomic_sub_fetch (&slot->busy, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock (&r->gate_lock);
    while (__atomic_load_n (&r->gate, __ATOMIC_SEQ_CST) == GATE_CLOSED)
      pthread_cond_wait (&r->gate_opened, &r->gate_lock);
    pthread_mutex_unlock (&r->gate_lock);
  }
  if (views)
    *views = gate == GATE_OPEN_VIEWS;
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
  int ret = recorder_mark_held (recorder_hold (r, NULL), offset, count);

  recorder_release (r);
  return ret;
}

/* Wait until every slot has been seen idle once. */
static void
wait_idle (struct recorder *r)
{
  size_t i;

  for (i = 0; i < NR_SLOTS; ++i)
    while (__atomic_load_n (&r->slots[i].busy, __ATOMIC_SEQ_CST) != 0)
      sched_yield ();
}

struct dirtymap *
recorder_swap (struct recorder *r, unsigned new_bits, unsigned *old_bits)
{
  struct recorder_generation *fresh = generation_new (r->size, new_bits);
  struct recorder_generation *old;
  struct dirtymap *map;

  if (fresh == NULL)
    return NULL;
  old = __atomic_exchange_n (&r->current, fresh, __ATOMIC_SEQ_CST);
  wait_idle (r);
  map = old->map;
  *old_bits = old->bits;
  free (old);
  return map;
}

void
recorder_close_gate (struct recorder *r)
{
  __atomic_store_n (&r->gate, GATE_CLOSED, __ATOMIC_SEQ_CST);
  wait_idle (r);
}

void
recorder_open_gate (struct recorder *r, bool views)
{
  pthread_mutex_lock (&r->gate_lock);
  __atomic_store_n (&r->gate, views ? GATE_OPEN_VIEWS : GATE_OPEN,
                    __ATOMIC_SEQ_CST);
  pthread_cond_broadcast (&r->gate_opened);
  pthread_mutex_unlock (&r->gate_lock);
}
