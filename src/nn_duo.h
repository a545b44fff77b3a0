/* nn_duo.h -- one helper thread for the products that are too small for an OpenMP team.
 *
 * A one-sample forward through a 784-256 layer reads 800 KB of weights: about 4.5 us on one
 * core, 2.3 us on each of two. OpenMP's fork, barrier and join cost 1-2 us on a virtual
 * machine whose cores are 0.2 us apart (measured: a pthread ping-pong round trip 0.47 us,
 * GOMP's parallel region with a barrier 1.45 us), eating most of the gain. The duo is the
 * least a second thread needs: the caller posts one job (a function and its argument) with
 * one atomic store, does its own share, then takes the job's result -- one cross-core hop
 * each way.
 *
 *     long ticket = nn_duo_offer(fn, arg);   // 0: no helper now; else fn(arg) is offered
 *     ... the caller's own share ...
 *     nn_duo_finish(ticket, fn, arg);        // fn(arg) has run, here or on the helper
 *
 * The job is run exactly once, by whichever thread claims it first: the helper, or the
 * caller in nn_duo_finish when the helper has not started it (asleep, descheduled, or held
 * by nn_duo_hold). So the answer is the same computation whichever thread runs it, and a
 * second core that is busy before the job is claimed costs at most the time of doing
 * everything on one (a helper preempted after claiming it makes the caller wait).
 *
 * One caller at a time owns the duo (an atomic flag); another thread calling meanwhile
 * gets ticket 0 and runs everything itself. The helper spins for NN_DUO_SPIN_NS after its
 * last job (giving the core away now and then with sched_yield), then sleeps on a
 * condition variable until the next offer wakes it. After fork() the child starts a new
 * helper when it first needs one.
 *
 * The state is `static`: each extension module that includes this header has its own duo
 * (only _gemm does). */
#ifndef NN_DUO_H
#define NN_DUO_H

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define NN_DUO_PAUSE() __builtin_ia32_pause()
#else
#define NN_DUO_PAUSE() atomic_signal_fence(memory_order_seq_cst)
#endif

/* how long the helper waits for the next job awake: a one-sample inference loop calls
 * every few microseconds; a gap ten times as long sends it to sleep */
#define NN_DUO_SPIN_NS 50000L

typedef void (*nn_duo_fn)(void *arg);

/* job = ticket * 4 + state: the one word both threads claim the job through */
enum { NN_DUO_POSTED = 1, NN_DUO_TAKEN = 2, NN_DUO_DONE = 3 };

static struct {
    _Alignas(64) atomic_long job;
    _Alignas(64) atomic_int busy;       /* a caller owns the duo */
    atomic_int sleeping;                /* the helper is (about to be) in cond_wait */
    atomic_int hold;                    /* tests: the helper claims nothing */
    atomic_long taken, stolen;          /* jobs run by the helper; by the caller */
    nn_duo_fn fn;
    void *arg;
    long ticket;                        /* the last ticket posted (owner only) */
    pthread_t owner;                    /* the thread that owns the duo (while busy) */
    int started;                        /* 1 helper running, -1 it could not be started */
    int atfork;                         /* the fork handler is registered */
    pthread_mutex_t mutex;
    pthread_cond_t cond;
} nn_duo = {.mutex = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static long nn_duo_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)t.tv_sec * 1000000000L + t.tv_nsec;
}

static void *nn_duo_main(void *unused) {
    (void)unused;
    long seen = atomic_load(&nn_duo.job) >> 2;      /* the last ticket looked at */
    long since = nn_duo_now_ns();
    for (unsigned spins = 1;; ++spins) {
        long job = atomic_load_explicit(&nn_duo.job, memory_order_acquire);
        if ((job >> 2) != seen) {
            seen = job >> 2;
            if ((job & 3) == NN_DUO_POSTED && !atomic_load(&nn_duo.hold) &&
                atomic_compare_exchange_strong(&nn_duo.job, &job, (seen << 2) | NN_DUO_TAKEN)) {
                nn_duo.fn(nn_duo.arg);
                atomic_fetch_add_explicit(&nn_duo.taken, 1, memory_order_relaxed);
                atomic_store_explicit(&nn_duo.job, (seen << 2) | NN_DUO_DONE,
                                      memory_order_release);
            }
            since = nn_duo_now_ns();
            continue;
        }
        NN_DUO_PAUSE();
        if (spins % 32 != 0)
            continue;
        if (spins % 1024 == 0)
            sched_yield();              /* (a thread waiting for this core gets it) */
        if (nn_duo_now_ns() - since < NN_DUO_SPIN_NS)
            continue;
        /* asleep until a new ticket: the caller stores the job, then reads `sleeping`; we
         * store `sleeping`, then read the job (both sequentially consistent), so at least
         * one of us sees the other's store -- no offer is missed */
        pthread_mutex_lock(&nn_duo.mutex);
        atomic_store(&nn_duo.sleeping, 1);
        while ((atomic_load(&nn_duo.job) >> 2) == seen)
            pthread_cond_wait(&nn_duo.cond, &nn_duo.mutex);
        atomic_store(&nn_duo.sleeping, 0);
        pthread_mutex_unlock(&nn_duo.mutex);
    }
    return NULL;
}

static void nn_duo_after_fork(void) {
    /* the child has the memory but not the helper thread, nor any other caller. A job the
     * forking thread had offered (and will take back) goes back to POSTED, for it to run
     * itself; a duo another thread owned is free. */
    pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
    nn_duo.mutex = mutex;
    nn_duo.cond = cond;
    atomic_store(&nn_duo.sleeping, 0);
    nn_duo.started = 0;
    if (atomic_load(&nn_duo.busy) && pthread_equal(nn_duo.owner, pthread_self())) {
        long job = atomic_load(&nn_duo.job);
        if ((job & 3) != NN_DUO_DONE)
            atomic_store(&nn_duo.job, (job & ~3L) | NN_DUO_POSTED);
    } else {
        atomic_store(&nn_duo.busy, 0);
    }
}

static int nn_duo_start(void) {
    /* (called by the owner only) the helper, signals blocked: they go to other threads */
    pthread_t thread;
    pthread_attr_t attr;
    sigset_t all, old;
    if (!nn_duo.atfork) {
        if (pthread_atfork(NULL, NULL, nn_duo_after_fork) != 0)
            return -1;
        nn_duo.atfork = 1;
    }
    if (pthread_attr_init(&attr) != 0)
        return -1;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int made = pthread_create(&thread, &attr, nn_duo_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return made == 0 ? 1 : -1;
}

/* The duo for this caller: 1 when it is now this thread's (then nn_duo_post and
 * nn_duo_finish, or nn_duo_disown), 0 when another caller owns it -- or this thread does
 * already (a kernel called from Python code run meanwhile) -- or no helper could start. */
static int nn_duo_own(void) {
    int free_ = 0;
    if (!atomic_compare_exchange_strong(&nn_duo.busy, &free_, 1))
        return 0;
    if (nn_duo.started == 0)
        nn_duo.started = nn_duo_start();
    if (nn_duo.started < 0) {
        atomic_store(&nn_duo.busy, 0);
        return 0;
    }
    nn_duo.owner = pthread_self();
    return 1;
}

static void nn_duo_disown(void) { atomic_store(&nn_duo.busy, 0); }

/* (owner only) offer fn(arg) to the helper: the ticket for nn_duo_finish */
static long nn_duo_post(nn_duo_fn fn, void *arg) {
    nn_duo.fn = fn;
    nn_duo.arg = arg;
    long ticket = ++nn_duo.ticket;
    atomic_store(&nn_duo.job, (ticket << 2) | NN_DUO_POSTED);
    if (atomic_load(&nn_duo.sleeping)) {
        pthread_mutex_lock(&nn_duo.mutex);
        pthread_cond_signal(&nn_duo.cond);
        pthread_mutex_unlock(&nn_duo.mutex);
    }
    return ticket;
}

/* Offer fn(arg) to the helper: a ticket for nn_duo_finish, or 0 (the duo is not this
 * caller's to use, see nn_duo_own): the caller then runs fn(arg) itself. */
static long nn_duo_offer(nn_duo_fn fn, void *arg) {
    return nn_duo_own() ? nn_duo_post(fn, arg) : 0;
}

/* fn(arg) has run when this returns: on the helper, or here if the helper has not claimed
 * it. ticket 0 (nothing offered): runs it here. Gives the duo back. */
static void nn_duo_finish(long ticket, nn_duo_fn fn, void *arg) {
    if (ticket == 0) {
        fn(arg);
        return;
    }
    long posted = (ticket << 2) | NN_DUO_POSTED;
    if (atomic_compare_exchange_strong(&nn_duo.job, &posted, (ticket << 2) | NN_DUO_DONE)) {
        fn(arg);
        atomic_fetch_add_explicit(&nn_duo.stolen, 1, memory_order_relaxed);
    } else {
        for (unsigned spins = 1; atomic_load_explicit(&nn_duo.job, memory_order_acquire) !=
                                 ((ticket << 2) | NN_DUO_DONE); ++spins) {
            NN_DUO_PAUSE();
            if (spins % 1024 == 0)
                sched_yield();          /* (the helper, preempted, may need this core) */
        }
    }
    atomic_store_explicit(&nn_duo.busy, 0, memory_order_release);
}

/* tests: hold the helper (it claims no job: the caller runs them all), or let it go; and
 * how many jobs each side ran */
static void nn_duo_hold(int hold) { atomic_store(&nn_duo.hold, hold != 0); }
static long nn_duo_taken(void) { return atomic_load(&nn_duo.taken); }
static long nn_duo_stolen(void) { return atomic_load(&nn_duo.stolen); }

#endif /* NN_DUO_H */
