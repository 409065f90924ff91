/* A small thread pool for qkv's kernels (kernels.h): T - 1 workers and the calling thread split a task's
 * output rows, with barriers between the steps of a fused decode layer.
 *
 * Why not OpenMP: PyTorch links its own OpenMP runtime; a second one in the same process gives two sets of
 * threads spinning for the same cores. This pool's workers spin only briefly after a task (a decode step
 * runs its tasks microseconds apart), then sleep on a condition variable, so between tokens, while PyTorch
 * samples, they leave the cores alone; and the caller passes PyTorch's own thread count, so the two never
 * ask for more threads than the user chose.
 *
 * One run at a time: a second caller (another Python thread: ctypes releases the GIL) finding the pool
 * busy runs its task on its own thread, which gives the same bits (a row's result never depends on T). */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#include "kernels.h"

#define MAX_THREADS 64
#define SPINS 20000             /* polls before a worker sleeps: ~100-200 us, longer than a step's gaps */

static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;      /* held for a whole run */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;      /* guards the sleep / wake of workers */
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int started;                                            /* workers running (under busy) */
static atomic_uint generation;                                 /* one more per run */
static atomic_int finished;                                    /* workers done with this run */
static atomic_int arrived;
static atomic_uint barrier_phase;
static qkv_task task;
static void *task_arg;
static int task_threads;
static unsigned created_at[MAX_THREADS];         /* the generation a worker started at */

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Wait while *v == old: spin, then yield the core (another process may need it to let us go on). */
static inline unsigned wait_change(atomic_uint *v, unsigned old, int sleep) {
    unsigned now;
    for (int i = 0; (now = atomic_load_explicit(v, memory_order_acquire)) == old; i++) {
        if (i < SPINS) { relax(); continue; }
        if (!sleep) { sched_yield(); continue; }
        pthread_mutex_lock(&lock);
        while ((now = atomic_load_explicit(v, memory_order_acquire)) == old) pthread_cond_wait(&wake, &lock);
        pthread_mutex_unlock(&lock);
        break;
    }
    return now;
}

/* Every worker checks in after every run, taking part or not, so that the next run's task is written only
 * when no worker can still be reading the last one's. */
static void *worker(void *arg) {
    const int t = (int)(intptr_t)arg;
    unsigned seen = created_at[t];
    for (;;) {
        seen = wait_change(&generation, seen, 1);
        if (t < task_threads) task(task_arg, t, task_threads);
        atomic_fetch_add_explicit(&finished, 1, memory_order_release);
    }
    return NULL;
}

void qkv_barrier(int T) {
    if (T <= 1) return;
    unsigned phase = atomic_load_explicit(&barrier_phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&arrived, 1, memory_order_acq_rel) == T - 1) {
        atomic_store_explicit(&arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&barrier_phase, 1, memory_order_release);
    } else {
        wait_change(&barrier_phase, phase, 0);
    }
}

void qkv_parallel(qkv_task fn, void *arg, int T) {
    if (T > MAX_THREADS) T = MAX_THREADS;
    if (T <= 1 || pthread_mutex_trylock(&busy) != 0) {
        fn(arg, 0, 1);
        return;
    }
    while (started < T - 1) {                  /* workers are made on first need and kept */
        pthread_t id;
        created_at[started + 1] = atomic_load(&generation);
        if (pthread_create(&id, NULL, worker, (void *)(intptr_t)(started + 1)) != 0) break;
        pthread_detach(id);
        started++;
    }
    if (started < T - 1) T = started + 1;
    task = fn, task_arg = arg, task_threads = T;
    atomic_store_explicit(&finished, 0, memory_order_relaxed);
    atomic_store_explicit(&arrived, 0, memory_order_relaxed);
    pthread_mutex_lock(&lock);
    atomic_fetch_add_explicit(&generation, 1, memory_order_release);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&lock);
    fn(arg, 0, T);
    for (int i = 0; atomic_load_explicit(&finished, memory_order_acquire) < started; i++)
        if (i < SPINS) relax(); else sched_yield();
    pthread_mutex_unlock(&busy);
}
