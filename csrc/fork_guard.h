/* A fork waits for fastbp's multi-threaded BLAS calls (fastbp/_blas.pxd's gemm).

   OpenBLAS stops its thread pool in a pthread_atfork handler, before the fork, even while
   another thread's product is using the pool: that product then waits for ever in the
   parent, and the child's first multi-threaded call hangs. So a product that may run on
   several BLAS threads counts itself here, and a fork waits until none runs, holding new
   ones back until it is made: it waits for at most the product each other thread is in.
   A product on one BLAS thread (the pass's count is 1: row workers, one-thread fits and
   passes) does not use the pool and skips this; products in no pass of fastbp's (count
   0: unknown) count themselves too.

   The waiting is a pthread_atfork handler (fbp_install_fork_guard, as _core is imported,
   after the BLAS libraries it loads registered theirs: prepare handlers run in the reverse
   order, so this one runs before OpenBLAS's), so every fork() is held, also those made
   without Python's fork hooks (subprocess with user= or group=). A product waits on
   nothing but a fork in preparation, and the thread that forks is never in one: os.fork
   holds the GIL while it waits, so no product that keeps the GIL (a predict run with it)
   is running or can begin, and the others end without it. */
#ifndef FASTBP_FORK_GUARD_H
#define FASTBP_FORK_GUARD_H

#include <pthread.h>

static pthread_mutex_t fbp_fork_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fbp_fork_changed = PTHREAD_COND_INITIALIZER;
static long fbp_products_running = 0;   /* counted products under way */
static int fbp_forks_pending = 0;       /* forks waiting for them, or being made */
/* The BLAS thread count of fastbp's passes in force (fastbp._threads sets it as the first
   pass begins and 0 as the last ends): only where it is 1 do products skip the count. */
static int fbp_pass_blas_threads = 0;

static inline void fbp_set_pass_blas_threads(int n_threads)
{
    __atomic_store_n(&fbp_pass_blas_threads, n_threads, __ATOMIC_RELAXED);
}

/* Before a product: 1 if it counted itself (fbp_product_end must follow), 0 if not. */
static inline int fbp_product_begin(void)
{
    if (__atomic_load_n(&fbp_pass_blas_threads, __ATOMIC_RELAXED) == 1)
        return 0;
    pthread_mutex_lock(&fbp_fork_mutex);
    while (fbp_forks_pending > 0)
        pthread_cond_wait(&fbp_fork_changed, &fbp_fork_mutex);
    fbp_products_running++;
    pthread_mutex_unlock(&fbp_fork_mutex);
    return 1;
}

static inline void fbp_product_end(void)
{
    pthread_mutex_lock(&fbp_fork_mutex);
    if (--fbp_products_running == 0 && fbp_forks_pending > 0)
        pthread_cond_broadcast(&fbp_fork_changed);
    pthread_mutex_unlock(&fbp_fork_mutex);
}

/* Before a fork: waits for the counted products to end; new ones wait until
   fbp_fork_made. */
static void fbp_fork_prepare(void)
{
    pthread_mutex_lock(&fbp_fork_mutex);
    fbp_forks_pending++;
    while (fbp_products_running > 0)
        pthread_cond_wait(&fbp_fork_changed, &fbp_fork_mutex);
    pthread_mutex_unlock(&fbp_fork_mutex);
}

/* After the fork, in the parent (glibc runs it also where the fork failed). */
static void fbp_fork_made(void)
{
    pthread_mutex_lock(&fbp_fork_mutex);
    fbp_forks_pending--;
    pthread_cond_broadcast(&fbp_fork_changed);
    pthread_mutex_unlock(&fbp_fork_mutex);
}

/* In the child: its only thread is the forking one, so nothing runs or waits; the mutex
   (which another thread may have held at the fork) is made anew. (fastbp._threads' own
   fork handler then sets the count of the forking thread's passes, if any.) */
static void fbp_fork_child(void)
{
    pthread_mutex_init(&fbp_fork_mutex, NULL);
    pthread_cond_init(&fbp_fork_changed, NULL);
    fbp_products_running = 0;
    fbp_forks_pending = 0;
    fbp_pass_blas_threads = 0;
}

/* 0, or pthread_atfork's error (ENOMEM): then forks are not held (as before the guard). */
static inline int fbp_install_fork_guard(void)
{
    return pthread_atfork(fbp_fork_prepare, fbp_fork_made, fbp_fork_child);
}

#endif
