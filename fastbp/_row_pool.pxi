# A sparse fit on T threads (train_epoch with a sparse X and n_workers = T > 1).
#
# Under a lazy rule (LazyRows) most of a sparse step's time is spent row by row on the
# rows of W1 the batch names: bringing each up to date before the forward pass
# (lazy_list_rows) and, after the backward pass, making its gradient and stepping it
# (sparse_row_steps) or stepping it from the scattered product (the folded rules). Under
# a rule that moves every row at every step (Adam without its lazy rows, Adagrad or
# RMSprop with coupled decay) it is the step's pass over all of W1 and its state
# (every_row_steps). Those rows are independent of one another: each row of W1 and of its
# state is read and written by the thread that claimed it, and what the rule shares
# (Adam's sums, the step counts) is only read, but for each row's own entry in `applied`.
# So T threads share them: the calling thread and T - 1 pthreads started once per epoch
# call, which wait on the barrier between these phases (the forward and backward passes,
# the listing, the log and the scatter stay on the calling thread), each claiming chunks
# of rows until none is left. A row's arithmetic does not depend on which thread does it,
# so the results are bit-identical for every thread count. Nothing is allocated per step.

cdef enum:
    ROWS_STOP = 0
    ROWS_CATCH_UP = 1           # catch_up_rows (lazy_list_rows)
    ROWS_ROW_STEPS = 2          # row_steps (sparse_row_steps)
    ROWS_FOLDED_STEPS = 3       # folded_steps (sparse_weight_update)
    ROWS_EVERY_ROW = 4          # every_row_steps (sparse_weight_update): all rows of W1
    EVERY_ROW_CHUNK = 64        # rows of W1 claimed at a time by ROWS_EVERY_ROW
    ROW_POOL_CHUNK = 16         # named rows claimed at a time (each chunk prefetches its
                                # first rows at once, the others LAZY_PREFETCH_AHEAD ahead)


# A helper between two phases of a step spins before it sleeps (for up to
# wait_spin_seconds): by the time a sleeping one woke, the calling thread would have
# claimed most of a phase's rows itself. A phase follows the previous one within a step's
# forward or backward pass, well within the spin on the networks a sparse fit trains; a
# pool left waiting longer (the epoch's end, Python between epochs) sleeps. Not the
# row-split workers' back-off: a helper waits through the calling thread's serial work,
# so a long spin that ends asleep says that work was long, not that the cores are taken
# (docs/performance.md measures it).

# Tests: the phases the pools ran (run_pool_task calls), and a limit on the threads a pool
# starts, past which it behaves as when the process is out of threads (below 0: as when its
# memory cannot be had).
cdef long row_pool_phases = 0
cdef int row_pool_start_limit = 0


def row_pool_settings(start_limit=None):
    """(phases run so far, start limit) before this call, setting the start limit if given
    (0: none; below 0: the pool's memory refused); for tests."""
    global row_pool_start_limit
    previous = (row_pool_phases, row_pool_start_limit)
    if start_limit is not None:
        row_pool_start_limit = int(start_limit)
    return previous


cdef struct RowPool:
    fbp_barrier barrier
    int n_threads
    double spin_seconds         # a helper's at the barrier, before sleeping
    bint flush_subnormals       # each helper's float mode (fbp_float_mode_enter)
    int task                    # what the threads do between the next two barriers
    Py_ssize_t n_items          # the task's rows: lazy.touched[0:n_items], or W1's rows
    Py_ssize_t chunk            # rows claimed at a time
    Py_ssize_t next_chunk       # the next unclaimed chunk
    LazyRows* lazy              # the lazy rule's rows, or NULL (ROWS_EVERY_ROW only)
    unsigned char* named        # ROWS_EVERY_ROW: the batch's named rows (a flag a row) or NULL
    const PlanData* plan
    const HyperparameterData* hyper
    void* params                # the fit's parameters, update target and state (as run_batch's)
    void* target
    void* first
    void* second
    int update
    const void* delta           # ROWS_ROW_STEPS: the first layer's delta of the batch
    void* row_gradients         # ROWS_ROW_STEPS: a row of n_out values per thread
    Py_ssize_t n_cols           # the sparse X's width (rows of W1)


cdef struct RowPoolArgument:
    RowPool* pool
    int index


cdef void pool_task(RowPool* pool, int index, floating* kind) noexcept nogil:
    """This thread's share of the pool's task: chunks of its rows until none is left."""
    cdef LazyRows* lazy = pool.lazy
    cdef Py_ssize_t begin, end, n_out = pool.plan.sizes[1]
    cdef floating* params = <floating*>pool.params
    while True:
        begin = fbp_claim_chunk(&pool.next_chunk) * pool.chunk
        if begin >= pool.n_items:
            return
        end = min(begin + pool.chunk, pool.n_items)
        if pool.task == ROWS_EVERY_ROW:
            every_row_steps(pool.plan, pool.hyper, params, <floating*>pool.target,
                            <floating*>pool.first, <floating*>pool.second, pool.update,
                            pool.named, begin, end)
        elif pool.task == ROWS_CATCH_UP:
            catch_up_rows(lazy, params + pool.plan.weight_offsets[0], n_out, pool.n_cols,
                          begin, end)
        elif pool.task == ROWS_ROW_STEPS:
            row_steps(pool.plan, pool.hyper, params, <floating*>pool.first,
                      <floating*>pool.second, pool.update, <const floating*>pool.delta, lazy,
                      begin, end, <floating*>pool.row_gradients + index * n_out)
        else:
            folded_steps(pool.plan, pool.hyper, params, <floating*>pool.target,
                         <floating*>pool.first, <floating*>pool.second, pool.update, lazy,
                         begin, end)


cdef void pool_loop(RowPoolArgument* argument, floating* kind) noexcept nogil:
    """A helper thread: each task between two barriers, until ROWS_STOP."""
    cdef RowPool* pool = argument.pool
    while True:
        fbp_barrier_wait_spinning(&pool.barrier, pool.spin_seconds)
        if pool.task == ROWS_STOP:
            return
        pool_task(pool, argument.index, kind)
        fbp_barrier_wait(&pool.barrier)


cdef void* pool_entry_float(void* argument) noexcept nogil:
    fbp_float_mode_enter((<RowPoolArgument*>argument).pool.flush_subnormals)
    pool_loop(<RowPoolArgument*>argument, <float*>NULL)
    return NULL


cdef void* pool_entry_double(void* argument) noexcept nogil:
    fbp_float_mode_enter((<RowPoolArgument*>argument).pool.flush_subnormals)
    pool_loop(<RowPoolArgument*>argument, <double*>NULL)
    return NULL


cdef bint share_rows(RowPool* pool, LazyRows* lazy, int task, const void* delta,
                     floating* kind) noexcept nogil:
    """Runs `task` on the named rows with the pool's threads; False (nothing done) without a
    pool, or when the batch names too few rows to give every thread a chunk."""
    if pool == NULL or lazy.n_touched < pool.n_threads * ROW_POOL_CHUNK:
        return False
    pool.delta = delta
    run_pool_task(pool, task, lazy.n_touched, ROW_POOL_CHUNK, kind)
    return True


cdef bint share_every_row(RowPool* pool, Py_ssize_t n_rows, floating* kind) noexcept nogil:
    """ROWS_EVERY_ROW on the n_rows rows of W1 with the pool's threads; False (nothing done)
    without a pool or with too few rows to give every thread a chunk."""
    if pool == NULL or n_rows < pool.n_threads * EVERY_ROW_CHUNK:
        return False
    run_pool_task(pool, ROWS_EVERY_ROW, n_rows, EVERY_ROW_CHUNK, kind)
    return True


cdef void run_pool_task(RowPool* pool, int task, Py_ssize_t n_items, Py_ssize_t chunk,
                        floating* kind) noexcept nogil:
    global row_pool_phases
    row_pool_phases += 1
    pool.task = task
    pool.n_items = n_items
    pool.chunk = chunk
    pool.next_chunk = 0
    fbp_barrier_wait(&pool.barrier)     # the helpers start ...
    pool_task(pool, 0, kind)
    fbp_barrier_wait(&pool.barrier)     # ... and have finished


cdef class RowPoolThreads:
    """The pool's memory and threads for one epoch call: start() starts the helpers (on
    failure to start one, those started stop and the epoch runs on the calling thread),
    stop() stops and joins them; both without the GIL."""
    cdef RowPool pool
    cdef pthread_t* threads
    cdef RowPoolArgument* arguments
    cdef void* row_gradients
    cdef int started                # 0: the helpers run (stop() stops them)

    def __cinit__(self):
        self.started = -1

    def __dealloc__(self):
        self.stop()
        free(self.threads)
        free(self.arguments)
        free(self.row_gradients)

    cdef RowPool* start(self, int n_threads, LazyRows* lazy, const PlanData* plan,
                        const HyperparameterData* hyper, void* params, void* target,
                        void* first, void* second, int update, unsigned char* named,
                        Py_ssize_t n_cols, size_t item_size,
                        bint flush_subnormals) except? NULL:
        cdef int k
        self.threads = <pthread_t*>calloc(n_threads, sizeof(pthread_t))
        self.arguments = <RowPoolArgument*>calloc(n_threads, sizeof(RowPoolArgument))
        self.row_gradients = calloc(n_threads * plan.sizes[1], item_size)
        if not (self.threads and self.arguments and self.row_gradients) \
                or row_pool_start_limit < 0:
            raise MemoryError(f"train_epoch: no memory for {n_threads} threads sharing W1's "
                              f"rows")
        memset(&self.pool, 0, sizeof(RowPool))
        self.pool.n_threads = n_threads
        self.pool.spin_seconds = wait_spin_seconds(n_threads)
        self.pool.flush_subnormals = flush_subnormals
        self.pool.lazy, self.pool.plan, self.pool.hyper = lazy, plan, hyper
        self.pool.params, self.pool.target = params, target
        self.pool.first, self.pool.second = first, second
        self.pool.update, self.pool.n_cols = update, n_cols
        self.pool.named = named
        self.pool.row_gradients = self.row_gradients
        for k in range(n_threads):
            self.arguments[k].pool = &self.pool
            self.arguments[k].index = k
        fbp_barrier_init(&self.pool.barrier, n_threads)
        cdef int limit = n_threads
        if 0 < row_pool_start_limit < n_threads:
            limit = row_pool_start_limit
        with nogil:
            if item_size == sizeof(double):
                self.started = fbp_start_workers(self.threads, limit, pool_entry_double,
                                                 <char*>self.arguments, sizeof(RowPoolArgument))
            else:
                self.started = fbp_start_workers(self.threads, limit, pool_entry_float,
                                                 <char*>self.arguments, sizeof(RowPoolArgument))
            if self.started == 0 and limit < n_threads:   # as if thread `limit` had failed
                self.started = limit
            if self.started != 0:   # out of threads: those started stop, this one goes alone
                self.pool.task = ROWS_STOP
                fbp_abandon_workers(&self.pool.barrier, self.threads, self.started)
        if self.started != 0:
            return NULL
        return &self.pool

    cdef void stop(self) noexcept nogil:
        """The helpers stopped and joined (if any run)."""
        if self.started == 0 and self.threads != NULL:
            self.pool.task = ROWS_STOP
            fbp_barrier_wait(&self.pool.barrier)
            fbp_join_workers(self.threads, self.pool.n_threads)
            self.started = -1
