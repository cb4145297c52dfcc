/* Row-split training steps (fastbp/_workers.pxi): the threads of one epoch call, the
   barrier between the phases of a step, and the two element-wise pieces the split adds
   (dropout masks drawn ahead for the whole batch, applied by each worker to its rows).
   The threads are started once per epoch call and wait on the barrier between phases:
   no thread starts and nothing is allocated per step. */
#ifndef FASTBP_WORKERS_H
#define FASTBP_WORKERS_H

#include <limits.h>
#include <pthread.h>
#include <sched.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>

#include "fastbp.h"

/* A barrier for n threads: spins (a step's phases last microseconds; for up to the
   caller's spin_seconds where the threads have cores of their own), then sleeps on a
   futex, so a machine with fewer free cores than workers still makes progress and a
   waiting worker does not keep the core of the one it waits for. */
typedef struct {
    int n;
    int waiting;        /* threads arrived in this round */
    int generation;     /* rounds completed (the futex word) */
    int sleepers;       /* threads asleep on the futex, or about to be */
} fbp_barrier;

static inline void fbp_barrier_init(fbp_barrier *barrier, int n)
{
    barrier->n = n;
    barrier->waiting = 0;
    barrier->generation = 0;
    barrier->sleepers = 0;
}

static inline void fbp_futex(int *word, int operation, int value)
{
#ifdef __linux__
    syscall(SYS_futex, word, operation, value, NULL, NULL, 0);
#else
    (void)word; (void)operation; (void)value;
    sched_yield();
#endif
}

#define FBP_BARRIER_SPINS 500

static inline double fbp_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* The CPUs this thread may run on (its affinity mask), or 0 where that cannot be read
   here (not Linux, or more CPUs than a cpu_set_t holds): the caller then asks Python's
   os.sched_getaffinity. A system call and a bit count, where Python's builds a set. */
static inline int fbp_affinity_count(void)
{
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        return CPU_COUNT(&set);
#endif
    return 0;
}

/* Waits at the barrier: spins FBP_BARRIER_SPINS times, and then, for up to spin_seconds
   more, checks the clock every 256 spins, before it sleeps.  Returns 1 if it slept, 0 if
   the barrier opened while it spun (or with its own arrival). */
static inline int fbp_barrier_wait_spinning(fbp_barrier *barrier, double spin_seconds)
{
    int generation = __atomic_load_n(&barrier->generation, __ATOMIC_SEQ_CST);
    if (__atomic_add_fetch(&barrier->waiting, 1, __ATOMIC_SEQ_CST)
            == __atomic_load_n(&barrier->n, __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&barrier->waiting, 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&barrier->generation, generation + 1, __ATOMIC_SEQ_CST);
        /* seq_cst on both sides: either a sleeper's count is seen here, or the sleeper
           sees the new generation (and the futex wait returns at once). */
        if (__atomic_load_n(&barrier->sleepers, __ATOMIC_SEQ_CST) > 0)
            fbp_futex(&barrier->generation, FUTEX_WAKE_PRIVATE, INT_MAX);
        return 0;
    }
    double until = 0;
    for (long spins = 0;; spins++) {
        if (__atomic_load_n(&barrier->generation, __ATOMIC_ACQUIRE) != generation)
            return 0;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (spins + 1 == FBP_BARRIER_SPINS) {
            if (spin_seconds <= 0)
                break;
            until = fbp_seconds() + spin_seconds;
        } else if (spins >= FBP_BARRIER_SPINS && spins % 256 == 0 && fbp_seconds() > until) {
            break;
        }
    }
    __atomic_add_fetch(&barrier->sleepers, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&barrier->generation, __ATOMIC_SEQ_CST) == generation)
        fbp_futex(&barrier->generation, FUTEX_WAIT_PRIVATE, generation);
    __atomic_sub_fetch(&barrier->sleepers, 1, __ATOMIC_SEQ_CST);
    return 1;
}

static inline void fbp_barrier_wait(fbp_barrier *barrier)
{
    fbp_barrier_wait_spinning(barrier, 0);
}

/* Starts threads 1..n-1 of an epoch on entry(&contexts[k]); 0 if all started, else the
   number started (the caller then runs on fewer workers: see fbp_start_workers' use). */
static inline int fbp_start_workers(pthread_t *threads, int n, void *(*entry)(void *),
                                    char *contexts, size_t context_size)
{
    for (int k = 1; k < n; k++)
        if (pthread_create(&threads[k], NULL, entry, contexts + k * context_size) != 0)
            return k;
    return 0;
}

static inline void fbp_join_workers(pthread_t *threads, int n)
{
    for (int k = 1; k < n; k++)
        pthread_join(threads[k], NULL);
}

/* After fbp_start_workers started only threads 1..started-1: they wait at the first
   barrier of an epoch that will not run.  The caller has told them to stop (its `proceed`
   flag); the barrier now counts only the threads that exist, the caller arrives, and they
   are joined. */
static inline void fbp_abandon_workers(fbp_barrier *barrier, pthread_t *threads, int started)
{
    __atomic_store_n(&barrier->n, started, __ATOMIC_RELEASE);
    fbp_barrier_wait(barrier);
    fbp_join_workers(threads, started);
}

/* The next unclaimed chunk of a pass shared by workers (each claims chunks until none
   is left: a worker slowed by other work on its core takes fewer). */
static inline ptrdiff_t fbp_claim_chunk(ptrdiff_t *next)
{
    return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
}

/* A pool of helper threads kept between passes (predict's: _workers.pxi share_predict),
   so that a pass of a few hundred microseconds does not pay for starting threads.  A
   job is a function run by the caller as worker 0 and by those of helpers 1..wanted
   that come before the caller has finished its own run (fbp_pool_run), each with its
   index.  Helpers wait for the next job spinning for FBP_POOL_SPIN_SECONDS after
   their last one (calls often come in runs), then sleep on a futex.  One job at a time:
   a caller that finds the pool busy (another thread's pass) is told so and runs its pass
   alone.  Helpers are started when a job first wants them and never stopped (they sleep);
   a child process after fork has none of its parent's, and starts its own. */
#define FBP_POOL_SPIN_SECONDS 0.001
#define FBP_POOL_MAX_HELPERS 255

/* The gate of a job: its generation in the high 32 bits, the helpers that entered it in
   the low 31, and FBP_POOL_CLOSED once the caller has done its share and counted them. */
#define FBP_POOL_CLOSED ((uint64_t)1 << 31)
#define FBP_POOL_ENTERED ((uint64_t)FBP_POOL_CLOSED - 1)

typedef struct {
    int generation;     /* jobs posted (the futex word helpers sleep on) */
    int sleepers;       /* helpers asleep on it, or about to be */
    int busy;           /* a job is being posted or run */
    int started;        /* helpers running: indexes 1..started */
    int wanted;         /* helpers taking part in the current job: indexes 1..wanted */
    int finished;       /* of the helpers that entered it, done with it */
    uint64_t gate;      /* the current job's gate (FBP_POOL_CLOSED) */
    void (*run)(void *job, int index);
    void *job;
    pid_t pid;          /* the process these helpers belong to */
} fbp_pool;

typedef struct {
    fbp_pool *pool;
    int index;
    int seen;           /* the generation when it was started: its first job is the next */
} fbp_pool_helper;

static void *fbp_pool_helper_main(void *argument)
{
    fbp_pool_helper *self = (fbp_pool_helper *)argument;
    fbp_pool *pool = self->pool;
    const int index = self->index;
    int seen = self->seen;
    free(self);
    for (;;) {
        double until = fbp_seconds() + FBP_POOL_SPIN_SECONDS;
        for (long spins = 0; __atomic_load_n(&pool->generation, __ATOMIC_ACQUIRE) == seen;
             spins++) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            if (spins % 256 == 255 && fbp_seconds() > until) {
                __atomic_add_fetch(&pool->sleepers, 1, __ATOMIC_SEQ_CST);
                while (__atomic_load_n(&pool->generation, __ATOMIC_SEQ_CST) == seen)
                    fbp_futex(&pool->generation, FUTEX_WAIT_PRIVATE, seen);
                __atomic_sub_fetch(&pool->sleepers, 1, __ATOMIC_SEQ_CST);
            }
        }
        /* Enter the job of the generation seen, through its gate: only while the gate is
           that job's and still open.  A job's run, job, wanted and gate are written
           before its generation moves, and it cannot end (nor the next be posted) before
           every helper that entered it is done; a helper that comes too late (the caller
           has closed the gate: every piece was taken) or for an older job enters nothing
           and touches nothing of the job's. */
        const int generation = __atomic_load_n(&pool->generation, __ATOMIC_ACQUIRE);
        seen = generation;
        uint64_t gate = __atomic_load_n(&pool->gate, __ATOMIC_ACQUIRE);
        int entered = 0;
        while ((uint32_t)(gate >> 32) == (uint32_t)generation && !(gate & FBP_POOL_CLOSED))
            if (__atomic_compare_exchange_n(&pool->gate, &gate, gate + 1, 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                entered = 1;
                break;
            }
        if (!entered)
            continue;
        if (index <= __atomic_load_n(&pool->wanted, __ATOMIC_ACQUIRE))
            pool->run(pool->job, index);
        __atomic_add_fetch(&pool->finished, 1, __ATOMIC_ACQ_REL);
    }
    return NULL;
}

/* Readies the pool for this process: on first use, and in a child after fork (which has
   none of its parent's helpers, and may have copied a busy flag), it starts empty.  The
   caller holds the GIL, so no other thread of this process is here or has a job running
   from a pool that is about to be reset. */
static inline void fbp_pool_for_this_process(fbp_pool *pool)
{
    const pid_t pid = getpid();
    if (__atomic_load_n(&pool->pid, __ATOMIC_ACQUIRE) != pid) {
        memset(pool, 0, sizeof *pool);
        __atomic_store_n(&pool->pid, pid, __ATOMIC_RELEASE);
    }
}

/* Runs run(job, 0) here and run(job, k) on helpers k = 1..workers - 1 that come in time:
   once run(job, 0) has returned, the job's gate closes, and it returns when the helpers
   that entered are done; a helper that was asleep or had no core and comes later runs
   nothing (a job's work must be claimed dynamically, as predict's chunks are, so that
   worker 0 does whatever no helper took).  Returns the number of workers that could take
   part (1 + the helpers started), or 0, having run nothing, when the pool is busy with
   another caller's job.  fbp_pool_for_this_process must have been called in this
   process. */
static inline int fbp_pool_run(fbp_pool *pool, void (*run)(void *, int), void *job, int workers)
{
    int idle = 0;
    if (!__atomic_compare_exchange_n(&pool->busy, &idle, 1, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return 0;
    int helpers = workers - 1;
    if (helpers > FBP_POOL_MAX_HELPERS)
        helpers = FBP_POOL_MAX_HELPERS;
    while (pool->started < helpers) {
        fbp_pool_helper *argument = (fbp_pool_helper *)malloc(sizeof *argument);
        pthread_t thread;
        pthread_attr_t attributes;
        if (!argument)
            break;
        argument->pool = pool;
        argument->index = pool->started + 1;
        argument->seen = __atomic_load_n(&pool->generation, __ATOMIC_ACQUIRE);
        pthread_attr_init(&attributes);
        pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&thread, &attributes, fbp_pool_helper_main, argument);
        pthread_attr_destroy(&attributes);
        if (failed) {
            free(argument);
            break;
        }
        __atomic_add_fetch(&pool->started, 1, __ATOMIC_ACQ_REL);
    }
    if (helpers > pool->started)
        helpers = pool->started;
    pool->run = run;
    pool->job = job;
    __atomic_store_n(&pool->finished, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&pool->wanted, helpers, __ATOMIC_RELEASE);
    const uint32_t generation = (uint32_t)__atomic_load_n(&pool->generation, __ATOMIC_RELAXED) + 1;
    __atomic_store_n(&pool->gate, (uint64_t)generation << 32, __ATOMIC_RELEASE);
    __atomic_store_n(&pool->generation, (int)generation, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&pool->sleepers, __ATOMIC_SEQ_CST) > 0)
        fbp_futex(&pool->generation, FUTEX_WAKE_PRIVATE, INT_MAX);
    run(job, 0);
    const int entered = (int)(__atomic_fetch_or(&pool->gate, FBP_POOL_CLOSED, __ATOMIC_ACQ_REL)
                              & FBP_POOL_ENTERED);
    for (long spins = 0; __atomic_load_n(&pool->finished, __ATOMIC_ACQUIRE) < entered; spins++) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (spins % 1024 == 1023)
            sched_yield();   /* a helper not yet on a core: let it have this one */
    }
    __atomic_store_n(&pool->busy, 0, __ATOMIC_RELEASE);
    return 1 + helpers;
}

/* Where a row-split step's time goes, per worker and phase (a diagnostic build only:
   CFLAGS=-DFBP_WORKER_TIMING; otherwise these are empty). fbp_timing_mark(k, p) adds the
   time since worker k's previous mark to phase p; fbp_timing_report prints the totals
   per step to stderr when the epoch call ends. */
#define FBP_TIMING_PHASES 11
#ifdef FBP_WORKER_TIMING
#include <stdio.h>
#include <time.h>
static double fbp_timing_total[64][FBP_TIMING_PHASES];
static double fbp_timing_last[64];
static inline double fbp_timing_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}
static inline void fbp_timing_mark(int k, int phase)
{
    double now = fbp_timing_now();
    if (k < 64 && phase >= 0) fbp_timing_total[k][phase] += now - fbp_timing_last[k];
    if (k < 64) fbp_timing_last[k] = now;
}
static inline void fbp_timing_report(int n, long steps)
{
    static const char *names[FBP_TIMING_PHASES] = {
        "loop", "B gather", "B deltas", "wait B", "C update", "A next batch (worker 0)",
        "wait C", "B0 inputs' product", "wait B0", "H2 own units",
        "H3 output, deltas, update"};
    for (int k = 0; k < n && k < 64; k++) {
        fprintf(stderr, "worker %d us/step:", k);
        for (int p = 0; p < FBP_TIMING_PHASES; p++) {
            if (fbp_timing_total[k][p] > 0)
                fprintf(stderr, " %s %.2f;", names[p], fbp_timing_total[k][p] / 1e3 / steps);
            fbp_timing_total[k][p] = 0;
        }
        fprintf(stderr, "\n");
    }
}
#else
static inline void fbp_timing_mark(int k, int phase) { (void)k; (void)phase; }
static inline void fbp_timing_report(int n, long steps) { (void)n; (void)steps; }
#endif

#endif

/* The element-wise pieces, once per element type (the same pattern as kernels_impl.h). */
#define FBP_WORKERS_KERNELS(T, SUFFIX)                                                     \
/* The masks fbp_dropout would draw for n elements, in its order: drawing a whole batch's  \
   masks ahead makes them independent of how the rows are split among workers. */          \
static inline void fbp_dropout_masks_##SUFFIX(T *mask, ptrdiff_t n, double rate,           \
                                              uint64_t *random_state)                     \
{                                                                                          \
    const uint64_t threshold = (uint64_t)(rate * 18446744073709551616.0);                  \
    const T keep = (T)(1.0 / (1.0 - rate));                                                \
    for (ptrdiff_t i = 0; i < n; i++)                                                      \
        mask[i] = fbp_random_next(random_state) >= threshold ? keep : 0;                   \
}                                                                                          \
                                                                                           \
/* out = a * mask (fbp_dropout's product, with masks drawn ahead). */                      \
static inline void fbp_apply_mask_##SUFFIX(T *out, const T *a, const T *mask, ptrdiff_t n) \
{                                                                                          \
    for (ptrdiff_t i = 0; i < n; i++)                                                      \
        out[i] = a[i] * mask[i];                                                           \
}

#ifndef FASTBP_WORKERS_KERNELS_DONE
#define FASTBP_WORKERS_KERNELS_DONE
FBP_WORKERS_KERNELS(float, f32)
FBP_WORKERS_KERNELS(double, f64)
#endif
