/* nn_team.h -- the kernels' threads: work in parts that whoever is awake claims.
 *
 * A kernel cuts its work into `parts` (fixed by the thread count and the shape, never by
 * who is running: so the bits are too) and calls
 *
 *     nn_team_run(fn, ctx, parts, threads);     // fn(ctx, p) for every p, each once
 *
 * The caller is participant 0 and `threads - 1` worker threads are participants 1, 2, ...
 * Each participant has a home block of parts (part p of `threads` parts is participant p's:
 * the same core takes the same rows step after step); it runs its own block from the front,
 * then takes parts from the back of the others' blocks. A part is claimed with one
 * compare-and-swap on its block's word, which also carries the job's number: a worker that
 * wakes up late finds the job over and claims nothing. So:
 *
 *   - nobody waits for a thread that has not started: a worker the OS has parked, or that
 *     is asleep, simply finds its parts done by the others (the caller included);
 *   - the caller waits only for parts that another thread claimed and is running, spinning
 *     briefly (giving the core away now and then: the thread it waits for may be parked
 *     on it), then sleeping until the last part is done;
 *   - there is no barrier: a worker that runs late never holds anyone.
 *
 * Idle workers spin for NN_TEAM_SPIN_NS after their last part (a training step calls a
 * kernel every few microseconds), yielding the core every few microseconds, then sleep on a
 * condition variable until the next job. One caller at a time owns the team (a kernel
 * called from another Python thread meanwhile, or from inside a part, runs its parts
 * itself, in order: the same bits). After fork() the child has no workers: the first job it
 * runs starts new ones.
 *
 * Split phase (nn_team_own, nn_team_post with `offer`, nn_team_finish): the caller offers
 * parts to the workers only, does other work, then finishes -- running any part no worker
 * has claimed yet itself. The
 * one-sample products use it to give the second half of a product to a worker while the
 * caller sums the first.
 *
 * State is `static`: include this header in one extension module only (_parallel); the
 * others reach it through that module's cdef functions. */
#ifndef NN_TEAM_H
#define NN_TEAM_H


#include <stddef.h>   /* ptrdiff_t: sizes and indices (64-bit wherever pointers are) */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#if defined(__GNUC__) && !defined(NN_PLAIN_C) && (defined(__x86_64__) || defined(__i386__))
#define NN_TEAM_PAUSE() __builtin_ia32_pause()
#elif defined(__GNUC__) && !defined(NN_PLAIN_C) && defined(__aarch64__)
#define NN_TEAM_PAUSE() __asm__ __volatile__("yield")
#else
#define NN_TEAM_PAUSE() atomic_signal_fence(memory_order_seq_cst)
#endif

/* threads' CPU affinity (sched_getcpu, pthread_setaffinity_np): glibc and musl on Linux */
#if defined(__linux__) && defined(CPU_ISSET) && !defined(__ANDROID__)
#define NN_TEAM_AFFINITY 1
#else
#define NN_TEAM_AFFINITY 0
#endif

#define NN_TEAM_MAX 64            /* participants: the caller and up to 63 workers */
#define NN_TEAM_MAX_PARTS 65535   /* parts of one job (16 bits of a block word) */
/* how long an idle worker waits for the next job awake; a gap ten times as long as a
 * training step's between two kernels sends it to sleep */
#define NN_TEAM_SPIN_NS 50000L
/* a worker that finds itself on the CPU of the caller that posted its job moves off it (at
 * most once per NN_TEAM_MOVE_NS): see nn_team_move_off */
#define NN_TEAM_MOVE_NS 1000000L
/* a caller wakes a worker asleep at least NN_TEAM_STEER_NS away from its own CPU
 * (nn_team_steer) */
#define NN_TEAM_STEER_NS 0L
/* ... and neither happens within NN_TEAM_CALM_NS of a late job: on a busy machine, where
 * workers run late, the kernel's own placement did better (see nn_team_steer) */
#define NN_TEAM_CALM_NS 1000000000L
/* how long a caller spins for the parts others are running before it sleeps */
#define NN_TEAM_WAIT_NS 50000L
/* spins between two sched_yield calls (about 2-4 us of PAUSE) */
#define NN_TEAM_YIELD_EVERY 256
/* a job is "late" when the caller, done with every part it could claim, waits longer than
 * this and longer than its own share took, for parts a worker claimed and has not
 * finished: the worker was descheduled mid-part (the machine is busy). The caller then
 * runs its jobs alone for a while -- the same parts, the same bits -- NN_TEAM_SOLO_MIN_NS
 * at first, twice as long when a job posted within NN_TEAM_AGAIN_NS (plus the last time
 * alone) of the end of the last time alone is late too, up to NN_TEAM_SOLO_MAX_NS: on a machine
 * that stays busy, a worker is tried again about five times a second; on an idle one, a
 * late job now and then costs 2 ms alone. */
#define NN_TEAM_LATE_NS 1000000L
#define NN_TEAM_SOLO_MIN_NS 2000000L
#define NN_TEAM_SOLO_MAX_NS 200000000L
#define NN_TEAM_AGAIN_NS 10000000L

typedef void (*nn_team_fn)(void *ctx, ptrdiff_t part);

typedef struct {
    _Alignas(64) atomic_uint_least64_t word;   /* job << 32 | front << 16 | back */
} nn_team_block;

static struct {
    _Alignas(64) atomic_uint_least64_t job;    /* the current job's number */
    _Atomic(nn_team_fn) fn;                    /* the job (written before `job`) */
    _Atomic(void *) ctx;
    atomic_ptrdiff_t parts;
    atomic_int size;                           /* participants 0 .. size-1 take part */
    atomic_int offer;                          /* the caller's block is empty */
    _Alignas(64) atomic_ptrdiff_t done;             /* parts finished */
    atomic_int caller_sleeping;
    _Alignas(64) atomic_int busy;              /* a caller owns the team */
    atomic_int sleepers;                       /* workers in (or going into) cond_wait */
    atomic_int hold;                           /* tests: workers claim nothing */
    atomic_ptrdiff_t solo_until;                    /* no worker is offered a job before then */
    atomic_ptrdiff_t lates;                         /* late jobs (tests, benchmarks) */
    atomic_ptrdiff_t late_at;                       /* when the last late job ended */
    atomic_int caller_cpu;                          /* the CPU the last job was posted on */
    atomic_ptrdiff_t moves;                         /* workers that moved off it (tests) */
    atomic_ptrdiff_t slow_ns;                       /* tests: a worker naps this long per part */
    ptrdiff_t posted_ns, solo_ns;                   /* (owner only) */
    ptrdiff_t late_ns, solo_min_ns, solo_max_ns;    /* NN_TEAM_LATE_NS ... (benchmarks may tune) */
    /* NN_TEAM_SPIN_NS, NN_TEAM_MOVE_NS (0: never), NN_TEAM_STEER_NS (< 0: never),
     * NN_TEAM_CALM_NS (benchmarks may tune) */
    atomic_ptrdiff_t spin_ns, move_ns, steer_ns, calm_ns;
    /* tests: parts run by the workers, and parts of the workers' blocks run by the caller,
     * of jobs run (index 0) and of jobs offered (index 1) */
    atomic_ptrdiff_t by_workers[2], taken_back[2];
    nn_team_block block[NN_TEAM_MAX];
    /* per worker (index: participant): when it went to sleep in cond_wait, 0 while awake
     * (both written under the mutex); its affinity narrowed by a caller to wake it away
     * from the caller's CPU (nn_team_steer); its thread */
    atomic_ptrdiff_t slept_at[NN_TEAM_MAX];
    atomic_int steered[NN_TEAM_MAX];
    pthread_t thread[NN_TEAM_MAX];
    atomic_ptrdiff_t steers;                   /* sleeping workers steered (tests) */
    uint64_t number;                           /* the last job number (owner only) */
    int workers;                               /* started (owner only) */
    int failed;                                /* a worker could not be started */
    int atfork;                                /* the fork handler is registered */
    pthread_mutex_t mutex;
    pthread_cond_t work;                       /* workers wait here for a job */
    pthread_cond_t finished;                   /* the caller waits here for the last part */
} nn_team = {.mutex = PTHREAD_MUTEX_INITIALIZER, .work = PTHREAD_COND_INITIALIZER,
             .finished = PTHREAD_COND_INITIALIZER, .late_ns = NN_TEAM_LATE_NS,
             .solo_min_ns = NN_TEAM_SOLO_MIN_NS, .solo_max_ns = NN_TEAM_SOLO_MAX_NS,
             .spin_ns = NN_TEAM_SPIN_NS, .move_ns = NN_TEAM_MOVE_NS,
             .steer_ns = NN_TEAM_STEER_NS, .calm_ns = NN_TEAM_CALM_NS, .caller_cpu = -1};

static ptrdiff_t nn_team_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (ptrdiff_t)t.tv_sec * 1000000000L + t.tv_nsec;
}

static inline uint64_t nn_team_word(uint64_t job, ptrdiff_t front, ptrdiff_t back) {
    return (job << 32) | ((uint64_t)front << 16) | (uint64_t)back;
}

/* Claim a part of participant q's block for job `job`: from the front (q's own) or the
 * back (another's); -1 when the block is empty or the job is over. */
static ptrdiff_t nn_team_claim(int q, uint64_t job, int from_front) {
    atomic_uint_least64_t *w = &nn_team.block[q].word;
    uint64_t old = atomic_load_explicit(w, memory_order_acquire);
    for (;;) {
        ptrdiff_t front = (ptrdiff_t)((old >> 16) & 0xffff), back = (ptrdiff_t)(old & 0xffff);
        if ((old >> 32) != (job & 0xffffffffu) || front >= back)
            return -1;
        uint64_t new_ = from_front ? nn_team_word(job & 0xffffffffu, front + 1, back)
                                   : nn_team_word(job & 0xffffffffu, front, back - 1);
        if (atomic_compare_exchange_weak_explicit(w, &old, new_, memory_order_acq_rel,
                                                  memory_order_acquire))
            return from_front ? front : back - 1;
    }
}

static void nn_team_part_done(ptrdiff_t parts) {
    if (atomic_fetch_add(&nn_team.done, 1) + 1 == parts && atomic_load(&nn_team.caller_sleeping)) {
        pthread_mutex_lock(&nn_team.mutex);
        pthread_cond_signal(&nn_team.finished);
        pthread_mutex_unlock(&nn_team.mutex);
    }
}

/* tests: a worker that has claimed a part naps first, as if the OS had parked it there */
static void nn_team_nap(void) {
    ptrdiff_t ns = atomic_load_explicit(&nn_team.slow_ns, memory_order_relaxed);
    if (ns > 0) {
        struct timespec t = {ns / 1000000000L, ns % 1000000000L};
        nanosleep(&t, NULL);
    }
}

/* participant `me`'s work on job `job`: its own block, then the others' from the back.
 * Each part is counted (tests) before it is reported done: in *ran (any part) and in
 * *others (a part of another's block), where not NULL. */
static void nn_team_work(int me, uint64_t job, nn_team_fn fn, void *ctx, ptrdiff_t parts, int size,
                         atomic_ptrdiff_t *ran, atomic_ptrdiff_t *others) {
    ptrdiff_t p;
    while ((p = nn_team_claim(me, job, 1)) >= 0) {
        if (me != 0)
            nn_team_nap();
        fn(ctx, p);
        if (ran)
            atomic_fetch_add_explicit(ran, 1, memory_order_relaxed);
        nn_team_part_done(parts);
    }
    for (int i = 1; i < size; ++i) {
        int q = (me + i) % size;
        while ((p = nn_team_claim(q, job, 0)) >= 0) {
            if (me != 0)
                nn_team_nap();
            fn(ctx, p);
            if (ran)
                atomic_fetch_add_explicit(ran, 1, memory_order_relaxed);
            if (others)
                atomic_fetch_add_explicit(others, 1, memory_order_relaxed);
            nn_team_part_done(parts);
        }
    }
}

/* The CPU this thread runs on, or -1 where that is not known */
static int nn_team_cpu(void) {
#if NN_TEAM_AFFINITY
    return sched_getcpu();
#else
    return -1;
#endif
}

#if NN_TEAM_AFFINITY
/* away = home without `cpu`; 0 when that leaves no CPU or `cpu` is not in home (then
 * there is nowhere else to go, or nothing to leave) */
static int nn_team_narrow(const cpu_set_t *home, int cpu, cpu_set_t *away) {
    if (!CPU_ISSET(cpu, home) || CPU_COUNT(home) < 2)
        return 0;
    *away = *home;
    CPU_CLR(cpu, away);
    return 1;
}

/* whether threads may be moved at time `now`: not within calm_ns of a late job */
static int nn_team_calm(ptrdiff_t now) {
    return now - atomic_load_explicit(&nn_team.late_at, memory_order_relaxed) >=
           atomic_load_explicit(&nn_team.calm_ns, memory_order_relaxed);
}
#endif

/* A worker woken by a caller is often queued on the caller's own CPU (the scheduler puts a
 * wakee near its waker), even with another CPU idle: it then waits there for the caller to
 * give the core away -- the caller runs the worker's parts itself, at one thread's speed --
 * until the load balancer moves it, tens of milliseconds later (measured: after a 0.3 s
 * pause, eight to twelve GEMMs in a row at one thread's speed, the worker queued behind
 * the caller). So a worker that sees a job posted from the CPU it is on moves off it: its
 * affinity without that CPU (the kernel moves it at once), then its affinity as it was (a
 * running thread stays where it is). Not more often than every `move_ns`, only where this
 * process may run on another CPU, and never on a CPU it was not allowed: the parts and the
 * bits are the same wherever it runs. */
static void nn_team_move_off(int cpu, ptrdiff_t *last_ns) {
#if NN_TEAM_AFFINITY
    ptrdiff_t every = atomic_load_explicit(&nn_team.move_ns, memory_order_relaxed), now;
    if (cpu < 0 || cpu >= CPU_SETSIZE || every <= 0)
        return;
    now = nn_team_now_ns();
    if (now - *last_ns < every || !nn_team_calm(now) || nn_team_cpu() != cpu)
        return;
    *last_ns = now;
    cpu_set_t mine, away;
    if (sched_getaffinity(0, sizeof mine, &mine) != 0 || !nn_team_narrow(&mine, cpu, &away))
        return;
    if (sched_setaffinity(0, sizeof away, &away) == 0) {
        sched_setaffinity(0, sizeof mine, &mine);
        atomic_fetch_add_explicit(&nn_team.moves, 1, memory_order_relaxed);
    }
#else
    (void)cpu;
    (void)last_ns;
#endif
}

/* Where a sleeping worker wakes. Woken by a caller, a worker is put near it -- often on the
 * caller's own CPU though another is idle (Linux's wake-affine placement), where it waits for
 * the caller to give the core away: the caller runs its parts meanwhile, at one thread's
 * speed, call after call, until the load balancer moves one of them (measured: after a 0.3
 * s pause, a GEMM's next seven calls at 150-170 GFLOP/s where pinned threads ran 300; the
 * worker ran a quarter of its parts). So before it wakes them, a caller narrows each sleeping
 * worker's affinity to the CPUs it may run on but the caller's, and the worker, awake, sets
 * its affinity back as it was (nn_team_unsteer). Only where that leaves a CPU, and only for a
 * worker asleep (a sleeping thread's affinity is a word in the kernel: nothing moves). And
 * not within `calm_ns` of a late job: beside a NumPy matmul on both CPUs, steering every
 * wake-up made an MLP epoch 0.16-0.21 s where the kernel's own placement gave 0.09-0.10 s
 * (and late jobs), so a busy machine -- workers running late -- is left to the kernel. */
#if NN_TEAM_AFFINITY
/* a steered worker's own affinity, and the narrowed one it was given */
static cpu_set_t nn_team_home[NN_TEAM_MAX], nn_team_away[NN_TEAM_MAX];
#endif

static void nn_team_steer(int cpu, int workers) {
#if NN_TEAM_AFFINITY
    ptrdiff_t after = atomic_load_explicit(&nn_team.steer_ns, memory_order_relaxed), now;
    if (cpu < 0 || cpu >= CPU_SETSIZE || after < 0)
        return;
    now = nn_team_now_ns();
    if (!nn_team_calm(now))
        return;
    for (int q = 1; q <= workers && q < NN_TEAM_MAX; ++q) {
        ptrdiff_t slept = atomic_load(&nn_team.slept_at[q]);
        if (slept == 0 || atomic_load(&nn_team.steered[q]) || now - slept < after)
            continue;
        cpu_set_t *home = &nn_team_home[q], *away = &nn_team_away[q];
        if (pthread_getaffinity_np(nn_team.thread[q], sizeof *home, home) != 0 ||
            !nn_team_narrow(home, cpu, away))
            continue;
        if (pthread_setaffinity_np(nn_team.thread[q], sizeof *away, away) == 0) {
            atomic_store(&nn_team.steered[q], 1);
            atomic_fetch_add_explicit(&nn_team.steers, 1, memory_order_relaxed);
        }
    }
#else
    (void)cpu;
    (void)workers;
#endif
}

/* (worker me, awake) its affinity back as it was before a caller steered it -- unless
 * someone (the user, taskset -a, a cpuset) has set another since: that one stays */
static void nn_team_unsteer(int me) {
#if NN_TEAM_AFFINITY
    if (atomic_load(&nn_team.steered[me])) {
        cpu_set_t now;
        if (sched_getaffinity(0, sizeof now, &now) == 0 && CPU_EQUAL(&now, &nn_team_away[me]))
            sched_setaffinity(0, sizeof nn_team_home[me], &nn_team_home[me]);
        atomic_store(&nn_team.steered[me], 0);
    }
#else
    (void)me;
#endif
}

static void *nn_team_main(void *arg) {
    int me = (int)(intptr_t)arg;
    uint64_t seen = atomic_load(&nn_team.job);
    ptrdiff_t since = nn_team_now_ns(), moved = since - NN_TEAM_MOVE_NS;
    for (unsigned spins = 1;; ++spins) {
        uint64_t job = atomic_load_explicit(&nn_team.job, memory_order_acquire);
        if (job != seen) {
            seen = job;
            nn_team_fn fn = atomic_load_explicit(&nn_team.fn, memory_order_relaxed);
            void *ctx = atomic_load_explicit(&nn_team.ctx, memory_order_relaxed);
            ptrdiff_t parts = atomic_load_explicit(&nn_team.parts, memory_order_relaxed);
            int size = atomic_load_explicit(&nn_team.size, memory_order_relaxed);
            int offer = atomic_load_explicit(&nn_team.offer, memory_order_relaxed);
            if (me < size && !atomic_load_explicit(&nn_team.hold, memory_order_relaxed)) {
                nn_team_move_off(atomic_load_explicit(&nn_team.caller_cpu, memory_order_relaxed),
                                 &moved);
                nn_team_work(me, job, fn, ctx, parts, size, &nn_team.by_workers[offer != 0],
                             NULL);
            }
            since = nn_team_now_ns();
            continue;
        }
        NN_TEAM_PAUSE();
        if (spins % 32 != 0)
            continue;
        if (spins % NN_TEAM_YIELD_EVERY == 0)
            sched_yield();              /* (a thread waiting for this core gets it) */
        if (nn_team_now_ns() - since < atomic_load_explicit(&nn_team.spin_ns,
                                                           memory_order_relaxed))
            continue;
        /* asleep until the next job: the caller stores `job`, then reads `sleepers`; we
         * count ourselves in `sleepers`, then read `job` (both sequentially consistent):
         * one of us sees the other's store, so no job is missed */
        pthread_mutex_lock(&nn_team.mutex);
        atomic_fetch_add(&nn_team.sleepers, 1);
        atomic_store(&nn_team.slept_at[me], nn_team_now_ns());
        while (atomic_load(&nn_team.job) == seen)
            pthread_cond_wait(&nn_team.work, &nn_team.mutex);
        atomic_store(&nn_team.slept_at[me], 0);
        atomic_fetch_sub(&nn_team.sleepers, 1);
        pthread_mutex_unlock(&nn_team.mutex);
        nn_team_unsteer(me);
        since = nn_team_now_ns();
    }
    return NULL;
}

static void nn_team_after_fork(void) {
    /* the child has the memory but none of the workers, and no other caller */
    pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t work = PTHREAD_COND_INITIALIZER, finished = PTHREAD_COND_INITIALIZER;
    nn_team.mutex = mutex;
    nn_team.work = work;
    nn_team.finished = finished;
    nn_team.workers = 0;
    nn_team.failed = 0;
    atomic_store(&nn_team.sleepers, 0);
    for (int q = 0; q < NN_TEAM_MAX; ++q) {
        atomic_store(&nn_team.slept_at[q], 0);
        atomic_store(&nn_team.steered[q], 0);
    }
    atomic_store(&nn_team.caller_sleeping, 0);
    atomic_store(&nn_team.busy, 0);
}

/* (owner only) workers 1 .. n-1 running; the number running */
static int nn_team_start(int n) {
    if (n > NN_TEAM_MAX)
        n = NN_TEAM_MAX;
    if (!nn_team.atfork) {
        if (pthread_atfork(NULL, NULL, nn_team_after_fork) != 0)
            return nn_team.workers;
        nn_team.atfork = 1;
    }
    while (nn_team.workers + 1 < n && !nn_team.failed) {
        pthread_t thread;
        pthread_attr_t attr;
        sigset_t all, old;
        if (pthread_attr_init(&attr) != 0) {
            nn_team.failed = 1;
            break;
        }
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        sigfillset(&all);                       /* signals go to the other threads */
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int made = pthread_create(&thread, &attr, nn_team_main,
                                  (void *)(intptr_t)(nn_team.workers + 1));
        if (made == 0)
            nn_team.thread[nn_team.workers + 1] = thread;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
        if (made != 0) {
            nn_team.failed = 1;
            break;
        }
        nn_team.workers += 1;
    }
    return nn_team.workers;
}

/* The team for this caller, with room for `threads` participants: the number it has (2 or
 * more: then nn_team_post ... nn_team_finish, or nn_team_disown), or 0 when another
 * caller owns it -- or this thread does already -- or no worker could be started. */
static int nn_team_own(int threads) {
    int free_ = 0;
    if (threads < 2 || nn_team_now_ns() < atomic_load_explicit(&nn_team.solo_until,
                                                               memory_order_relaxed) ||
        !atomic_compare_exchange_strong(&nn_team.busy, &free_, 1))
        return 0;
    int size = nn_team_start(threads) + 1;
    if (size < 2) {
        atomic_store(&nn_team.busy, 0);
        return 0;
    }
    return size < threads ? size : threads;
}

static void nn_team_disown(void) { atomic_store_explicit(&nn_team.busy, 0, memory_order_release); }

/* (owner only) post a job of `parts` parts to `size` participants; `offer`: the caller's
 * block is empty (the workers' blocks share the parts), else part blocks as even as they
 * go, participant 0 first. The job's number, for nn_team_finish. */
static uint64_t nn_team_post(nn_team_fn fn, void *ctx, ptrdiff_t parts, int size, int offer) {
    nn_team.posted_ns = nn_team_now_ns();
    int cpu = atomic_load_explicit(&nn_team.move_ns, memory_order_relaxed) > 0 ||
              atomic_load_explicit(&nn_team.steer_ns, memory_order_relaxed) >= 0
                  ? nn_team_cpu() : -1;
    atomic_store_explicit(&nn_team.caller_cpu, cpu, memory_order_relaxed);
    uint64_t job = ++nn_team.number & 0xffffffffu;
    if (job == 0)
        job = ++nn_team.number & 0xffffffffu;   /* (0 never names a job) */
    atomic_store_explicit(&nn_team.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&nn_team.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&nn_team.parts, parts, memory_order_relaxed);
    atomic_store_explicit(&nn_team.size, size, memory_order_relaxed);
    atomic_store_explicit(&nn_team.offer, offer, memory_order_relaxed);
    atomic_store_explicit(&nn_team.done, 0, memory_order_relaxed);
    int first = offer ? 1 : 0, sharers = size - first;
    for (int q = 0; q < size; ++q) {
        ptrdiff_t front = 0, back = 0;
        if (q >= first) {
            int i = q - first;
            if (parts <= sharers) {
                front = i < parts ? i : parts;
                back = i < parts ? i + 1 : parts;
            } else {
                front = parts * i / sharers;
                back = parts * (i + 1) / sharers;
            }
        }
        atomic_store_explicit(&nn_team.block[q].word, nn_team_word(job, front, back),
                              memory_order_relaxed);
    }
    atomic_store(&nn_team.job, job);              /* (seq_cst: see nn_team_main) */
    if (atomic_load(&nn_team.sleepers)) {
        pthread_mutex_lock(&nn_team.mutex);
        /* (under the mutex: a worker with a slept_at is inside cond_wait, so it sees that it
         * was steered when it wakes) */
        nn_team_steer(cpu, size - 1);
        pthread_cond_broadcast(&nn_team.work);
        pthread_mutex_unlock(&nn_team.mutex);
    }
    return job;
}

/* (owner only) the job's parts all done when this returns: those nobody claimed run here,
 * then the caller waits for the ones others are running. Gives the team back. */
static void nn_team_finish(uint64_t job, nn_team_fn fn, void *ctx, ptrdiff_t parts, int size) {
    int offer = atomic_load_explicit(&nn_team.offer, memory_order_relaxed) != 0;
    nn_team_work(0, job, fn, ctx, parts, size, NULL, &nn_team.taken_back[offer]);
    if (atomic_load_explicit(&nn_team.done, memory_order_acquire) != parts) {
        ptrdiff_t start = nn_team_now_ns(), waited;
        for (unsigned spins = 1;
             atomic_load_explicit(&nn_team.done, memory_order_acquire) != parts; ++spins) {
            NN_TEAM_PAUSE();
            if (spins % 32 != 0)
                continue;
            if (spins % NN_TEAM_YIELD_EVERY == 0)
                sched_yield();          /* (the thread running a part may be parked here) */
            if (nn_team_now_ns() - start < NN_TEAM_WAIT_NS)
                continue;
            pthread_mutex_lock(&nn_team.mutex);
            atomic_store(&nn_team.caller_sleeping, 1);
            while (atomic_load(&nn_team.done) != parts)
                pthread_cond_wait(&nn_team.finished, &nn_team.mutex);
            atomic_store(&nn_team.caller_sleeping, 0);
            pthread_mutex_unlock(&nn_team.mutex);
            break;
        }
        ptrdiff_t now = nn_team_now_ns();
        waited = now - start;
        if (waited > nn_team.late_ns && waited > start - nn_team.posted_ns) {
            /* late: alone for a while -- twice as long as last time if this job was
             * posted soon after that time alone (the machine is still busy), else the
             * shortest time (a late job now and then on an idle machine: a page fault, a
             * virtual CPU descheduled by its host) */
            ptrdiff_t since = nn_team.posted_ns -
                         atomic_load_explicit(&nn_team.solo_until, memory_order_relaxed);
            nn_team.solo_ns = since < nn_team.solo_ns + NN_TEAM_AGAIN_NS
                                  ? nn_team.solo_ns * 2 : nn_team.solo_min_ns;
            if (nn_team.solo_ns < nn_team.solo_min_ns)
                nn_team.solo_ns = nn_team.solo_min_ns;
            if (nn_team.solo_ns > nn_team.solo_max_ns)
                nn_team.solo_ns = nn_team.solo_max_ns;
            atomic_store_explicit(&nn_team.solo_until, now + nn_team.solo_ns,
                                  memory_order_relaxed);
            atomic_fetch_add_explicit(&nn_team.lates, 1, memory_order_relaxed);
            atomic_store_explicit(&nn_team.late_at, now, memory_order_relaxed);
        }
    }
    nn_team_disown();
}

/* fn(ctx, p) for p in [0, parts), on up to `threads` threads, the caller one of them */
static void nn_team_run(nn_team_fn fn, void *ctx, ptrdiff_t parts, int threads) {
    int size = parts >= 2 && parts <= NN_TEAM_MAX_PARTS ? nn_team_own(threads) : 0;
    if (size == 0) {
        for (ptrdiff_t p = 0; p < parts; ++p)
            fn(ctx, p);
        return;
    }
    nn_team_finish(nn_team_post(fn, ctx, parts, size, 0), fn, ctx, parts, size);
}

/* The thread count the kernels use (set_num_threads; read by kernels in any thread) */
static atomic_int nn_team_count = 1;
static int nn_team_threads(void) { return atomic_load_explicit(&nn_team_count, memory_order_relaxed); }
static void nn_team_set_threads(int n) { atomic_store_explicit(&nn_team_count, n, memory_order_relaxed); }

/* tests: hold the workers (they claim nothing: the callers run every part), or let them
 * go; how many parts each side ran; how many jobs were late */
static void nn_team_hold(int hold) {
    atomic_store(&nn_team.hold, hold != 0);
    if (hold)       /* (and jobs are posted again at once: a held worker is never late) */
        atomic_store(&nn_team.solo_until, 0);
}
static ptrdiff_t nn_team_by_workers(int offered) { return atomic_load(&nn_team.by_workers[offered != 0]); }
static ptrdiff_t nn_team_taken_back(int offered) { return atomic_load(&nn_team.taken_back[offered != 0]); }
static int nn_team_workers(void) { return nn_team.workers; }
static ptrdiff_t nn_team_lates(void) { return atomic_load(&nn_team.lates); }
static void nn_team_slow(ptrdiff_t ns) { atomic_store(&nn_team.slow_ns, ns); }
/* benchmarks: how late is late, and the shortest and longest time alone after it (only
 * while no kernel runs) */
static void nn_team_tune(ptrdiff_t late_ns, ptrdiff_t solo_min_ns, ptrdiff_t solo_max_ns,
                         ptrdiff_t spin_ns, ptrdiff_t move_ns, ptrdiff_t steer_ns,
                         ptrdiff_t calm_ns) {
    nn_team.late_ns = late_ns;
    nn_team.solo_min_ns = solo_min_ns;
    nn_team.solo_max_ns = solo_max_ns;
    atomic_store(&nn_team.spin_ns, spin_ns);
    atomic_store(&nn_team.move_ns, move_ns);
    atomic_store(&nn_team.steer_ns, steer_ns);
    atomic_store(&nn_team.calm_ns, calm_ns);
}
static ptrdiff_t nn_team_moves(void) { return atomic_load(&nn_team.moves); }
static ptrdiff_t nn_team_steers(void) { return atomic_load(&nn_team.steers); }

#endif /* NN_TEAM_H */
