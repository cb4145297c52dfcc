# Prediction on few rows at a time (included by _core.pyx): what serving a model costs.
#
# MLP.predict on one row used to spend most of its time around the arithmetic: Python
# checks of X, a new plan and workspace, setting BLAS's thread count, and OpenBLAS packing
# all of W for a one-row product. A Predictor, kept with the model, does the checks in C,
# reuses its plan and workspaces, and runs the products in the few-row kernels of
# csrc/few_rows.h, which call no BLAS (so no thread count needs setting or arbitrating).
# Anything it does not take (another dtype or layout, more rows, NaN, outputs that
# overflow) it hands back to MLP.predict's general path, which converts or refuses it with
# the usual messages.
cimport cython
cimport numpy as cnp
from cpython.pythread cimport PyThread_get_thread_ident
from libc.math cimport INFINITY
from libc.stdlib cimport getenv
import sys

cnp.import_array()

# Rows a Predictor call takes at most, and so the capacity of its plan: up to 64 rows the
# few-row kernels beat OpenBLAS on every layer of 784-128-10 and 20-64-64-1 (measured:
# docs/serving.md); past that, BLAS's blocking for cache starts to pay.
PREDICTOR_ROWS = 64
# Training steps (and gradients passes) of at most this many rows take their products,
# forward and backward, in the few-row kernels where fbp_few_rows_faster says they win:
# online SGD, batch 1-8, where BLAS spent more on packing W and its call than on the
# arithmetic (docs/serving.md, "Online training"). Larger batches stay BLAS's.
TRAINING_FEW_ROWS = 8
# Free workspaces a Predictor keeps between calls: one per thread predicting at once, up to
# this many; more concurrent calls allocate their own and drop it afterwards.
PREDICTOR_POOL = 16
# A Predictor's workspace holds fewer rows where 64 would pass this many bytes (layers of
# millions of units: a one-row call must not allocate 64 rows), and its pool keeps fewer
# workspaces where 16 would pass PREDICTOR_POOL_BYTES.
PREDICTOR_WORKSPACE_BYTES = 8 << 20
PREDICTOR_POOL_BYTES = 32 << 20
# A call of at least twice this many rows may share its rows among threads, in pieces of
# at least this many (a block of the few-row kernels' four rows): a row's sums do not
# depend on the rows computed with it, so every count gives the bits of one thread.
# Whether sharing pays (handing pieces to helper threads has a cost of its own) is
# measured on the calls themselves, per row count; where the first one-thread pass on as
# many rows took under share_min_seconds, those calls stay on one thread without asking
# (a pass that short is not worth even measuring: handing pieces to helpers and waiting
# for them costs microseconds on any machine).
FEW_PIECE_ROWS = 4
cdef double share_min_seconds = 5e-6


def predictor_share_min_seconds(double seconds=-1):
    """The one-thread pass time under which a few-row call is never shared among threads
    (seconds >= 0 sets it, for the choices of threads made after; for tests). Returns the
    value before."""
    global share_min_seconds
    cdef double before = share_min_seconds
    if seconds >= 0:
        share_min_seconds = seconds
    return before


# Whether a short pass keeps the GIL while it computes. Releasing it lets other Python
# threads run meanwhile, but when they are waiting for it each release and re-acquisition
# is a hand-off between threads (a futex wake and a sleep), whose cost depends on the
# machine, the interpreter and the load: on this project's 2-core KVM guests eight threads
# calling predict on one row each of 20-64-64-1 ran at 0.37x of one thread's calls a
# second with the GIL released and 1.11x with it kept, while on 64 rows of W1's network
# releasing gave 1.86x and keeping it 0.94x; where the two cross moved from about 5 us of
# pass on one host to 10-20 us on another. So no line is fixed: each kind of call (a row
# count of the fast path; dense or sparse and a power of two of rows on the general path)
# chooses on its own calls (GilChoice), and FASTBP_GIL=hold or release pins the rule.
GIL_VARIABLE = "FASTBP_GIL"
GIL_RULES = ("measure", "hold", "release")


def gil_rule() -> str:
    """The rule of the GIL around short passes for models made from now on: FASTBP_GIL's
    (one of GIL_RULES), "measure" (chosen on the calls) where unset."""
    return environment_choice(GIL_VARIABLE, GIL_RULES) or "measure"


# Past REMEASURE_CALLS calls, a kept choice reads the clock (for REMEASURE_SECONDS) on
# every this-many-th call only.
cdef enum: CLOCK_EVERY = 64


@cython.final
cdef class Phases:
    """Two ways of making the same calls (option 0, the default, and option 1) compared on
    the calls themselves, where what they change shows only in the calls: the calls run in
    phases of at least _threads.TURN_SECONDS each, alternately on each option (0 first),
    MEASURE_ROUNDS phases each, so that the phases are spread over a fifth of a second or
    more, past bursts of other work. An option's cost is either the time of all its
    phases over the calls begun in them (by_rate: what every thread calling together
    made; not its best phase: where threads hand the GIL to each other, calls come in
    bursts of a few milliseconds, and the best of five 20 ms phases releasing it, eight
    threads on one row of W1's network, once read 307,000 calls a second where a second
    of releasing it throughout made 84,000) or its best phase's mean of the values
    recorded for its calls (their seconds a row, say; the best, past a phase that other
    work hit). The cheaper option is kept (option 1 only where cheaper by MEASURE_MARGIN:
    a difference must show above the noise of timing), for REMEASURE_CALLS calls and
    REMEASURE_SECONDS both; then the phases start again (other work on the machine comes
    and goes). The clock is the caller's (`now`, in seconds); the settings are _threads'
    when it is made. Used under the GIL (a race between threads only loses a call's
    time, which delays the choice): KeptPassThreads (the default thread count of a kept
    predict plan) and GilChoice."""
    cdef int kept_option            # the option kept (-1: none, measuring)
    cdef readonly int phase         # the option of the phase under way
    cdef bint by_rate
    cdef double turn_seconds, margin, remeasure_seconds
    cdef long rounds, remeasure_calls
    cdef double began               # when the phase under way began (< 0: none yet)
    cdef long calls                 # calls begun in it
    cdef double summed              # values recorded in it, summed and counted
    cdef long recorded
    cdef long begun[2]              # phases begun on each option
    cdef long timed[2]              # values recorded on each option
    cdef double best[2]             # each option's cost so far (by mean: cheapest phase)
    cdef double spent[2]            # by_rate: each option's phases' seconds and calls
    cdef long made[2]
    cdef long since                 # calls since the choice
    cdef double chosen_at

    def __init__(self, bint by_rate):
        from fastbp import _threads
        self.by_rate = by_rate
        self.turn_seconds = _threads.TURN_SECONDS
        self.margin = _threads.MEASURE_MARGIN
        self.rounds = _threads.MEASURE_ROUNDS
        self.remeasure_calls = _threads.REMEASURE_CALLS
        self.remeasure_seconds = _threads.REMEASURE_SECONDS
        self.restart()

    cpdef void restart(self):
        """Measuring again from the next call on."""
        self.kept_option = -1
        self.phase, self.began, self.calls, self.summed, self.recorded = 0, -1.0, 0, 0.0, 0
        self.begun[0] = self.begun[1] = self.timed[0] = self.timed[1] = 0
        self.best[0] = self.best[1] = INFINITY
        self.spent[0] = self.spent[1] = 0.0
        self.made[0] = self.made[1] = 0

    cpdef void keep(self, int option, double now):
        """Keep `option` from now on as if measured (the caller knows it: a limit)."""
        self.kept_option, self.since, self.chosen_at = option, 1, now

    cdef int kept(self) noexcept:
        """The choice in force if it stands for this call as far as can be told without the
        clock (the call then counted), else -1: before REMEASURE_CALLS calls, and between
        every CLOCK_EVERY-th call after (a clock read is a few percent of a 1.3 us call)."""
        if self.kept_option >= 0 and (self.since < self.remeasure_calls
                                      or self.since % CLOCK_EVERY):
            self.since += 1
            return self.kept_option
        return -1

    cpdef bint due(self, double now):
        """Whether the choice in force is to be measured again at this call."""
        return self.kept_option >= 0 and self.since >= self.remeasure_calls \
            and now - self.chosen_at >= self.remeasure_seconds

    cpdef bint turn_over(self, double now):
        """Whether the phase under way has lasted its time."""
        return self.began >= 0 and now - self.began >= self.turn_seconds

    cpdef int next(self, double now) except -1:
        """The option of this call (counted in the phase under way while measuring; the
        choice when one is in force, `chosen` then not None)."""
        cdef double cost
        if self.kept_option >= 0:
            if not self.due(now):
                self.since += 1
                return self.kept_option
            self.restart()
        if self.began < 0:                      # the first phase
            self.began, self.begun[0] = now, 1
        elif now - self.began >= self.turn_seconds:
            if self.by_rate:
                self.spent[self.phase] += now - self.began
                self.made[self.phase] += self.calls
                self.best[self.phase] = self.spent[self.phase] / self.made[self.phase]
            elif self.recorded:
                cost = self.summed / self.recorded
                self.best[self.phase] = min(self.best[self.phase], cost)
            if min(self.begun[0], self.begun[1]) >= self.rounds \
                    and max(self.best[0], self.best[1]) < INFINITY:
                self.keep(1 if self.best[1] * self.margin < self.best[0] else 0, now)
                return self.kept_option
            self.phase = 1 if self.begun[1] < self.begun[0] else 0
            self.began, self.calls, self.summed, self.recorded = now, 0, 0.0, 0
            self.begun[self.phase] += 1
        self.calls += 1
        return self.phase

    cpdef void record(self, int option, double value):
        """A value (the cost) of a call on `option` (as next() returned it)."""
        self.timed[option] += 1
        if option == self.phase and self.kept_option < 0:  # (else a call of a phase ended)
            self.summed += value
            self.recorded += 1

    @property
    def chosen(self):
        """None while measuring, else the option kept."""
        return None if self.kept_option < 0 else self.kept_option

    @property
    def phases_begun(self):
        """(option 0, option 1): the phases begun on each since measuring began."""
        return self.begun[0], self.begun[1]

    @property
    def calls_timed(self):
        """(option 0, option 1): the values recorded on each since measuring began."""
        return self.timed[0], self.timed[1]

    @property
    def costs(self):
        """(option 0, option 1): each option's cost so far (inf: none measured)."""
        return self.best[0], self.best[1]


@cython.final
cdef class GilChoice:
    """Whether one kind of call releases the GIL around its pass, chosen on the calls
    themselves (Phases by rate: releasing it is option 0, keeping it option 1): what it
    changes is how many calls all threads together complete a second, which only the
    calls show (a hand-off timed alone, or a released call's overhead, mix the wait
    behind other threads' useful Python with the hand-off: docs/serving.md). A tie
    releases it: other threads, not all of them calling predict, may be waiting; unless
    the calls came from one thread and the process has no other Python thread, when
    keeping it was faster at all (an uncontended release and re-acquisition cost 0.1-0.2
    us of a 1.3 us one-row call of 20-64-64-1 here, less than the margin lets through).
    A choice made on the calls of one thread is measured again at once when another
    thread calls (what one thread found says nothing of threads calling at once). A pass
    never timed yet, or as long as the interpreter's switch interval (the time Python
    lets one thread keep the GIL while others wait), releases it and is not measured.
    Read and written under the GIL only: safe from many threads."""
    cdef readonly str rule          # "measure", "hold" or "release" (pinned)
    cdef readonly double pass_seconds    # the last pass's own time (0: none yet)
    cdef readonly Phases phases
    cdef double switch_seconds
    cdef unsigned long last_thread  # the thread of the last call (0: none yet)
    cdef bint crowded               # the calls measured came from more than one thread
    cdef readonly bint alone        # the choice in force was made on one thread's calls

    def __init__(self, str rule="measure"):
        if rule not in GIL_RULES:
            raise ValueError(f"GilChoice: rule must be one of {GIL_RULES}; got {rule!r}")
        self.rule = rule
        self.switch_seconds = sys.getswitchinterval()
        self.pass_seconds = 0.0
        self.phases = Phases(True)

    cpdef bint releases(self):
        """Whether this call releases the GIL around its pass (counted as a call of the
        phase under way, if any); pair with passed()."""
        if self.rule != "measure":
            return self.rule == "release"
        cdef unsigned long thread = PyThread_get_thread_ident()
        cdef bint other = self.last_thread != 0 and thread != self.last_thread
        self.last_thread = thread
        if self.pass_seconds == 0.0 or self.pass_seconds >= self.switch_seconds:
            return True
        cdef Phases phases = self.phases
        cdef int option = -1 if self.alone and other else phases.kept()
        if option >= 0:
            return option == 0
        cdef double now = fbp_seconds()
        if phases.kept_option >= 0 and (self.alone and other or phases.due(now)):
            phases.restart()
        cdef bint measuring = phases.kept_option < 0
        if measuring and phases.began < 0:
            self.crowded = False
        option = phases.next(now)
        if measuring:
            self.crowded |= other
            self.alone = not self.crowded
            if phases.kept_option == 0 and self.alone and phases.best[1] < phases.best[0] \
                    and threading.active_count() == 1:
                option = 1          # nobody to wait: a release saves nothing (see above)
                phases.keep(option, now)
        return option == 0

    cpdef void passed(self, double seconds):
        """The pass's own time (not the wait to take the GIL back), for the next call."""
        self.pass_seconds = seconds

    @property
    def chosen(self):
        """None while measuring, else whether the calls release the GIL."""
        return None if self.phases.kept_option < 0 else self.phases.kept_option == 0

    @property
    def rates(self):
        """(keeping, releasing): each rule's calls a second over its phases so far."""
        return tuple(1.0 / cost if cost > 0 else INFINITY
                     for cost in reversed(self.phases.costs))

    @property
    def phases_begun(self):
        """(keeping, releasing): the phases begun on each rule since measuring began."""
        release, hold = self.phases.phases_begun
        return hold, release


cdef inline bint plain_matrix(object array, int type_num, Py_ssize_t n_cols,
                              bint writable) noexcept:
    """array is a 2-D ndarray of type_num (native byte order), C-contiguous, aligned, with
    n_cols columns (and writable if asked)."""
    if not cnp.PyArray_Check(array):
        return False
    cdef cnp.ndarray matrix = <cnp.ndarray>array
    return (cnp.PyArray_NDIM(matrix) == 2 and cnp.PyArray_TYPE(matrix) == type_num
            and cnp.PyArray_ISNOTSWAPPED(matrix) and cnp.PyArray_ISCARRAY_RO(matrix)
            and cnp.PyArray_DIM(matrix, 1) == n_cols
            and (not writable or cnp.PyArray_ISWRITEABLE(matrix)))


cdef inline bint overlaps(cnp.ndarray a, cnp.ndarray b) noexcept:
    """True if the (contiguous) bytes of a and b overlap."""
    cdef char* a_start = <char*>cnp.PyArray_DATA(a)
    cdef char* b_start = <char*>cnp.PyArray_DATA(b)
    return a_start < b_start + cnp.PyArray_NBYTES(b) and b_start < a_start + cnp.PyArray_NBYTES(a)


cdef class Predictor:
    """A model's forward pass for up to PREDICTOR_ROWS rows (fewer for very wide layers:
    PREDICTOR_WORKSPACE_BYTES), ready between calls.

    params: the model's live parameter array (read at each call: no copy to invalidate);
    layer_sizes, activations: the model's shape (a new shape or dtype means a new
    Predictor: MLP._setup makes one); always: the few-row kernels for every product
    (FASTBP_FEW_ROWS=1), not only where they beat BLAS. It takes only calls whose every
    product runs in those kernels: it never calls BLAS. Calls from many threads at once are
    safe: each takes a workspace of its own from a small pool (taken and returned under the
    GIL, which the computation releases or not as each row count's GilChoice says)."""
    cdef readonly Plan plan
    cdef cnp.ndarray params
    cdef list pool
    cdef Py_ssize_t pool_size       # workspaces the pool keeps at most
    cdef int type_num
    cdef Py_ssize_t n_in, n_out
    # per row count, its GilChoice (made on first use): whether its one-thread calls
    # release the GIL, under the rule `gil` ("measure", "hold" or "release")
    cdef list gil
    cdef str gil_rule
    # per row count, the default thread count of its calls (KeptPassThreads, made on
    # first use) and whether that is one thread for good (its first pass was short); the
    # workspaces of the last shared call, kept for the next one
    cdef dict choices
    cdef char[::1] unshared
    cdef object shared_work

    def __init__(self, layer_sizes, activations, cnp.ndarray params not None,
                 bint always=False, str gil="measure"):
        cdef Py_ssize_t row_bytes = Plan(layer_sizes, activations, 1).work_size \
            * params.itemsize
        cdef Py_ssize_t rows = max(1, min(PREDICTOR_ROWS, PREDICTOR_WORKSPACE_BYTES // row_bytes))
        self.plan = Plan(layer_sizes, activations, rows, few_rows=rows, few_rows_always=always)
        self.pool_size = max(1, min(PREDICTOR_POOL,
                                    PREDICTOR_POOL_BYTES // (rows * row_bytes)))
        if params.ndim != 1 or params.dtype not in (np.float32, np.float64) \
                or not cnp.PyArray_ISCARRAY(params) or not cnp.PyArray_ISNOTSWAPPED(params) \
                or params.shape[0] != self.plan.n_params:
            raise ValueError("Predictor: params must be the model's flat parameter array")
        self.params = params
        self.type_num = cnp.PyArray_TYPE(params)
        self.n_in = layer_sizes[0]
        self.n_out = layer_sizes[len(layer_sizes) - 1]
        self.pool = []
        if gil not in GIL_RULES:
            raise ValueError(f"Predictor: gil must be one of {GIL_RULES}; got {gil!r}")
        self.gil = [None] * (rows + 1)
        self.gil_rule = gil
        self.choices = {}
        self.unshared = np.zeros(rows + 1, dtype=np.int8)
        self.shared_work = None

    def __call__(self, X, out=None, n_threads=None):
        """The outputs for X's rows (written into out, if given, and returned), or None when
        this call is not for the fast path: X or out not a C-contiguous aligned matrix of
        the model's dtype and widths, more than PREDICTOR_ROWS rows or a product BLAS takes
        faster, X not finite, out overlapping X or the parameters, or outputs that are not
        finite. n_threads (checked by the caller): threads to share the rows among, as
        far as pieces of FEW_PIECE_ROWS rows go; None: chosen on the calls (see there)."""
        if not plain_matrix(X, self.type_num, self.n_in, False):
            return None
        cdef cnp.ndarray inputs = <cnp.ndarray>X
        cdef Py_ssize_t m = cnp.PyArray_DIM(inputs, 0)
        if not 1 <= m <= self.plan.data.capacity or not without_blas(&self.plan.data, m,
                                                            self.type_num == cnp.NPY_FLOAT64):
            return None
        cdef cnp.ndarray outputs = self.outputs_for(inputs, out)
        if outputs is None:
            return None
        cdef int workers = 1
        cdef object turn = None
        cdef double started = 0
        if m >= 2 * FEW_PIECE_ROWS and n_threads != 1 and (
                n_threads is not None or not self.unshared[m]):
            started = fbp_seconds()    # a shared call's time counts the choice's too
            workers, turn = self.workers_for(m, n_threads)
        if workers > 1:
            return self.shared_call(inputs, outputs, workers, turn, started)
        cdef cnp.ndarray work
        try:
            work = self.pool.pop()
        except IndexError:      # every pooled workspace is in use (or none made yet)
            work = cnp.PyArray_EMPTY(1, [self.plan.work_size], self.type_num, 0)
        cdef GilChoice gil = self.gil[m]
        if gil is None:
            gil = self.gil[m] = GilChoice(self.gil_rule)
        cdef bint done, release = gil.releases()
        cdef double seconds = 0
        if self.type_num == cnp.NPY_FLOAT32:
            done = forward_few(&self.plan.data, <float*>cnp.PyArray_DATA(self.params),
                               <float*>cnp.PyArray_DATA(work),
                               <const float*>cnp.PyArray_DATA(inputs), m,
                               <float*>cnp.PyArray_DATA(outputs), release, &seconds)
        else:
            done = forward_few(&self.plan.data, <double*>cnp.PyArray_DATA(self.params),
                               <double*>cnp.PyArray_DATA(work),
                               <const double*>cnp.PyArray_DATA(inputs), m,
                               <double*>cnp.PyArray_DATA(outputs), release, &seconds)
        gil.passed(seconds)
        if turn is not None:
            self.choices[m].record(turn, seconds, m)
        if len(self.pool) < self.pool_size:
            self.pool.append(work)
        return outputs if done else None

    cdef tuple workers_for(self, Py_ssize_t m, object n_threads):
        """(threads sharing a call of m rows, the turn to record its time under or None)."""
        cdef object turn = None
        if n_threads is None:
            choice = self.choices.get(m)
            if choice is None:
                choice = self.choices[m] = KeptPassThreads(min_seconds=share_min_seconds)
            n_threads, turn = choice.threads()
            self.unshared[m] = choice.short
        return min(n_threads, m // FEW_PIECE_ROWS), turn

    cdef object shared_call(self, cnp.ndarray inputs, cnp.ndarray outputs, int workers,
                            object turn, double started):
        """__call__'s pass shared among `workers` threads in equal pieces, in workspaces
        kept between calls (one set: a call finding them in use allocates its own); its
        time from `started` recorded under `turn` if not None."""
        cdef Py_ssize_t m = cnp.PyArray_DIM(inputs, 0)
        cdef cnp.ndarray work = self.shared_work
        self.shared_work = None
        if work is None or cnp.PyArray_DIM(work, 0) < workers * self.plan.work_size:
            work = cnp.PyArray_EMPTY(1, [workers * self.plan.work_size], self.type_num, 0)
        cdef bint done = self.shared_pass(self.plan, inputs, outputs, work, workers,
                                          -(-m // workers))
        if turn is not None:
            self.choices[m].record(turn, fbp_seconds() - started, m)
        self.shared_work = work
        return outputs if done else None

    def thread_choice(self, Py_ssize_t n_rows):
        """The KeptPassThreads choosing the default count of calls on n_rows rows, or None
        while none has been needed."""
        return self.choices.get(n_rows)

    def gil_choice(self, Py_ssize_t n_rows):
        """The GilChoice of one-thread calls on n_rows rows, or None while none was made."""
        if not 1 <= n_rows <= self.plan.data.capacity:
            raise ValueError(f"gil_choice: n_rows is {n_rows}; this Predictor takes 1.."
                             f"{self.plan.data.capacity} rows")
        return self.gil[n_rows]

    cdef cnp.ndarray outputs_for(self, cnp.ndarray inputs, object out):
        """A new output array for inputs' rows, or out if it can take them (None if not:
        not a plain matrix of the model's dtype and output width, another row count, or
        overlapping X or the parameters)."""
        cdef Py_ssize_t m = cnp.PyArray_DIM(inputs, 0)
        if out is None:
            return cnp.PyArray_EMPTY(2, [m, self.n_out], self.type_num, 0)
        if not plain_matrix(out, self.type_num, self.n_out, True):
            return None
        cdef cnp.ndarray outputs = <cnp.ndarray>out
        if cnp.PyArray_DIM(outputs, 0) != m or overlaps(outputs, inputs) \
                or overlaps(outputs, self.params):
            return None
        return outputs

    def run(self, Plan plan, X, out=None, int n_workers=1, Py_ssize_t chunk_rows=0):
        """The outputs for X's rows by `plan`, one of the model's plans for one BLAS thread
        kept by MLP.predict, in chunks of plan.capacity rows exactly as _core.predict runs
        them (the same bits), or None when the call is not for it: X or out refused as
        __call__ refuses them (any row count), X or the outputs not finite. The caller
        holds BLAS at one thread if the plan calls it. A workspace of the plan's size is
        made per call (its pages are touched only as far as the call's rows go).
        n_workers > 1: the rows in chunks of chunk_rows (0: plan.capacity) shared among
        that many threads (this one and helpers kept between calls: share_predict), each
        in a workspace of its own; the caller picks chunks that give the bits of one
        worker (model.kept_chunks)."""
        if not 1 <= n_workers <= 1024:
            raise ValueError(f"Predictor.run: n_workers is {n_workers}; it must be in 1..1024")
        if chunk_rows == 0:
            chunk_rows = plan.capacity
        if not 1 <= chunk_rows <= plan.capacity:
            raise ValueError(f"Predictor.run: chunk_rows is {chunk_rows}; the plan takes "
                             f"1..{plan.capacity} rows a chunk")
        if not plain_matrix(X, self.type_num, self.n_in, False):
            return None
        cdef cnp.ndarray inputs = <cnp.ndarray>X
        cdef Py_ssize_t m = cnp.PyArray_DIM(inputs, 0)
        if m < 1 or not same_network(&plan.data, &self.plan.data):
            return None
        cdef cnp.ndarray outputs = self.outputs_for(inputs, out)
        if outputs is None:
            return None
        cdef cnp.ndarray work = cnp.PyArray_EMPTY(1, [plan.work_size * n_workers],
                                                 self.type_num, 0)
        return outputs if self.shared_pass(plan, inputs, outputs, work, n_workers,
                                           chunk_rows) else None

    cdef bint shared_pass(self, Plan plan, cnp.ndarray inputs, cnp.ndarray outputs,
                          cnp.ndarray work, int n_workers, Py_ssize_t chunk_rows) except -1:
        """forward_kept's pass of `plan` over inputs' rows into outputs (checked by the
        caller), on this thread alone or, n_workers > 1, shared in claims of chunk_rows rows
        (share_predict), work holding n_workers workspaces of plan.work_size; False when
        X or the outputs are not finite."""
        cdef Py_ssize_t m = cnp.PyArray_DIM(inputs, 0)
        cdef bint done
        if n_workers > 1 and self.type_num == cnp.NPY_FLOAT32:
            done = share_predict(&plan.data, <float*>cnp.PyArray_DATA(self.params),
                                 <float*>cnp.PyArray_DATA(work), plan.work_size,
                                 <const float*>cnp.PyArray_DATA(inputs),
                                 <float*>cnp.PyArray_DATA(outputs), m, chunk_rows, True,
                                 n_workers)
        elif n_workers > 1:
            done = share_predict(&plan.data, <double*>cnp.PyArray_DATA(self.params),
                                 <double*>cnp.PyArray_DATA(work), plan.work_size,
                                 <const double*>cnp.PyArray_DATA(inputs),
                                 <double*>cnp.PyArray_DATA(outputs), m, chunk_rows, True,
                                 n_workers)
        elif self.type_num == cnp.NPY_FLOAT32:
            with nogil:
                done = forward_kept(&plan.data, <float*>cnp.PyArray_DATA(self.params),
                                    <float*>cnp.PyArray_DATA(work),
                                    <const float*>cnp.PyArray_DATA(inputs), m,
                                    <float*>cnp.PyArray_DATA(outputs))
        else:
            with nogil:
                done = forward_kept(&plan.data, <double*>cnp.PyArray_DATA(self.params),
                                    <double*>cnp.PyArray_DATA(work),
                                    <const double*>cnp.PyArray_DATA(inputs), m,
                                    <double*>cnp.PyArray_DATA(outputs))
        return done


cdef bint same_network(const PlanData* a, const PlanData* b) noexcept:
    """Whether two plans are of one network (widths, activations): a plan of another
    network of as many parameters and inputs (a model built again by __init__ while a
    predict ran) would write its outputs' width into outputs made for this one's."""
    if a.n_layers != b.n_layers or a.n_params != b.n_params:
        return False
    cdef int layer
    for layer in range(a.n_layers + 1):
        if a.sizes[layer] != b.sizes[layer]:
            return False
    for layer in range(a.n_layers):
        if a.activations[layer] != b.activations[layer]:
            return False
    return True


cdef bint without_blas(const PlanData* plan, Py_ssize_t m, bint in_double) noexcept:
    """True if every forward product of m rows runs in the few-row kernels (forward_product's
    rule, which needs only the element type: a NULL of that type stands for W)."""
    if m > plan.few_rows:
        return False
    if plan.few_rows_always:
        return True
    for l in range(plan.n_layers):
        if in_double:
            if not fbp_few_rows_faster(<double*>NULL, m, plan.sizes[l], plan.sizes[l + 1]):
                return False
        elif not fbp_few_rows_faster(<float*>NULL, m, plan.sizes[l], plan.sizes[l + 1]):
            return False
    return True


cdef bint forward_few(const PlanData* plan, const floating* params, floating* work,
                      const floating* x, Py_ssize_t m, floating* out,
                      bint release, double* seconds) noexcept:
    """few_rows_pass, with the GIL released while it runs if `release`; *seconds := the
    pass's own time. Not the wait to take the GIL back: with other threads waiting, that
    wait is a hand-off of milliseconds, and counted in it kept every later call releasing
    (eight threads on one row of W1's network: 0.78x of one thread's calls a second)."""
    cdef bint finite
    cdef double started
    if release:
        with nogil:
            started = fbp_seconds()
            finite = few_rows_pass(plan, params, work, x, m, out)
            seconds[0] = fbp_seconds() - started
    else:
        started = fbp_seconds()
        finite = few_rows_pass(plan, params, work, x, m, out)
        seconds[0] = fbp_seconds() - started
    return finite


cdef bint few_rows_pass(const PlanData* plan, const floating* params, floating* work,
                        const floating* x, Py_ssize_t m, floating* out) noexcept nogil:
    """out := the network's output for m rows of x (m <= plan.capacity), checking that x
    and out are finite; False (out unspecified) when either is not."""
    cdef int L = plan.n_layers
    cdef bint finite = fbp_all_finite(x, m * plan.sizes[0])
    if finite:
        forward_hidden(plan, params, work, x, <int>m, NULL)
        output_logits(plan, params, work, x, <int>m, out)
        fbp_bias_activation(out, params + plan.bias_offsets[L - 1],
                            workspace(work, plan.preactivation_offsets[L]), m,
                            plan.sizes[L], plan.activations[L - 1])
        finite = fbp_all_finite(out, m * plan.sizes[L])
    return finite


cdef bint forward_kept(const PlanData* plan, const floating* params, floating* work,
                       const floating* X, Py_ssize_t n_samples, floating* out) noexcept nogil:
    """out := the network's output for n_samples rows of X: _core.predict's pass (chunks of
    plan.capacity rows, the same calls), checking that X and out are finite; False (out
    unspecified) when either is not. X's check comes with its use: where the first layer's
    product runs in fastbp's own or few-row kernels and is narrower than X, on that
    product (every non-finite x[r, i] makes each of row r's sums non-finite: those
    kernels multiply every element, and Inf or NaN never becomes finite by + or *; BLAS
    may skip a zero weight, so its products are not trusted with it), else on each
    chunk of X just before its product reads it."""
    cdef int L = plan.n_layers, l
    cdef Py_ssize_t start = 0, m, n_in = plan.sizes[0]
    cdef const floating* x
    cdef const floating* first_weights = params + plan.weight_offsets[0]
    cdef floating* layer_out
    cdef bint finite = True
    while finite and start < n_samples:
        m = min(plan.capacity, n_samples - start)
        x = X + start * n_in
        if not checked_in_first_product(plan, first_weights, m):
            finite = fbp_all_finite(x, m * n_in)
        for l in range(1, L + 1):
            if not finite:
                break
            layer_out = out + start * plan.sizes[L] if l == L \
                else work + plan.output_offsets[l]
            forward_product(plan, params, work, x, <int>m, l, layer_out)
            if l == 1 and checked_in_first_product(plan, first_weights, m):
                finite = fbp_all_finite(layer_out, m * plan.sizes[1])
            if l < L:   # as forward_hidden (a predict plan has no dropout)
                fbp_bias_activation(layer_out, params + plan.bias_offsets[l - 1],
                                    workspace(work, plan.preactivation_offsets[l]), m,
                                    plan.sizes[l], plan.activations[l - 1])
        if finite:
            fbp_bias_activation(out + start * plan.sizes[L],
                                params + plan.bias_offsets[L - 1],
                                workspace(work, plan.preactivation_offsets[L]), m,
                                plan.sizes[L], plan.activations[L - 1])
            finite = fbp_all_finite(out + start * plan.sizes[L], m * plan.sizes[L])
        start += m
    return finite


cdef inline bint checked_in_first_product(const PlanData* plan, const floating* W,
                                          Py_ssize_t m) noexcept nogil:
    """True if forward_kept checks a chunk of m rows of X on its first layer's product
    (own or few-row kernels, narrower than X), not on X itself."""
    return plan.sizes[1] < plan.sizes[0] and (
        few_rows_here(plan, W, m, plan.sizes[0], plan.sizes[1])
        or product_isa(plan, 1, FORWARD_PRODUCT, W) != 0)


def environment_values(tuple names):
    """The value of each variable in names (bytes) as C's getenv sees it, bytes or None:
    os.environ's changes reach it (putenv, unsetenv). A few hundred nanoseconds where
    os.environ.get takes about 0.6 us a name: predict reads them on every call."""
    cdef const char* value
    values = []
    for name in names:
        value = getenv(<bytes>name)
        values.append(None if value == NULL else <bytes>value)
    return tuple(values)


def affinity_count():
    """The CPUs this thread may run on, as len(os.sched_getaffinity(0)) counts them, or 0
    where that cannot be read in C (fbp_affinity_count): 0.3 us against Python's 0.5 on
    this project's KVM guest (most of it the system call), and allowed_threads asks on
    every default call that may share its rows."""
    return fbp_affinity_count()


def few_rows_product(const floating[:, ::1] X, const floating[:, ::1] W,
                     floating[:, ::1] out, bint narrow=False):
    """out := X W by the few-row kernels (csrc/few_rows.h), for tests and benchmarks;
    narrow: by the instance with 32-byte vectors (the one CPUs without AVX-512 run)."""
    if X.shape[1] != W.shape[0] or out.shape[0] != X.shape[0] or out.shape[1] != W.shape[1]:
        raise ValueError(f"few_rows_product: X is {X.shape[0]} x {X.shape[1]}, W "
                         f"{W.shape[0]} x {W.shape[1]}, out {out.shape[0]} x {out.shape[1]}")
    if X.shape[0] == 0 or W.shape[0] == 0 or W.shape[1] == 0:
        raise ValueError("few_rows_product needs at least one row, input and output")
    with nogil:
        if narrow:
            fbp_few_rows_product_32(&out[0, 0], &X[0, 0], &W[0, 0], X.shape[0], X.shape[1],
                                    W.shape[1])
        else:
            fbp_few_rows_product(&out[0, 0], &X[0, 0], &W[0, 0], X.shape[0], X.shape[1],
                                 W.shape[1])


def few_rows_delta(const floating[:, ::1] delta, const floating[:, ::1] W,
                   floating[:, ::1] out):
    """out := delta W^T by the few-row kernels, for tests and benchmarks (the instance
    kernel_level() selects)."""
    if delta.shape[1] != W.shape[1] or out.shape[0] != delta.shape[0] \
            or out.shape[1] != W.shape[0]:
        raise ValueError(f"few_rows_delta: delta is {delta.shape[0]} x {delta.shape[1]}, W "
                         f"{W.shape[0]} x {W.shape[1]}, out {out.shape[0]} x {out.shape[1]}")
    if delta.shape[0] == 0 or W.shape[0] == 0 or W.shape[1] == 0:
        raise ValueError("few_rows_delta needs at least one row, input and output")
    with nogil:
        fbp_few_rows_delta(&out[0, 0], &delta[0, 0], &W[0, 0], delta.shape[0], W.shape[0],
                           W.shape[1])


def few_rows_gradient(floating[:, ::1] C, const floating[:, ::1] A, const floating[:, ::1] D,
                      double alpha, double beta, Py_ssize_t first_column=0):
    """C := beta C + alpha A[:, first_column:first_column + C.shape[0]]^T D by the few-row
    kernels (a block of a weight gradient, as run_batch takes it), for tests and
    benchmarks."""
    cdef Py_ssize_t m = A.shape[0]
    if D.shape[0] != m or C.shape[1] != D.shape[1] or first_column < 0 \
            or first_column + C.shape[0] > A.shape[1]:
        raise ValueError(f"few_rows_gradient: C is {C.shape[0]} x {C.shape[1]}, A "
                         f"{A.shape[0]} x {A.shape[1]} from column {first_column}, D "
                         f"{D.shape[0]} x {D.shape[1]}")
    if m == 0 or C.shape[0] == 0 or C.shape[1] == 0:
        raise ValueError("few_rows_gradient needs at least one row, input and output")
    with nogil:
        fbp_few_rows_gradient(&C[0, 0], &A[0, first_column], A.shape[1], &D[0, 0], m,
                              C.shape[0], C.shape[1], <floating>alpha, <floating>beta)


from fastbp._threads import KeptPassThreads
