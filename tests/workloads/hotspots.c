/*
 * hotspots: a CPU-burning workload with a known profile, for the profiler's tests.
 *
 * Every outer iteration picks n and calls hot_three(3 * n) then hot_one(n). Both functions run
 * the same arithmetic loop (a volatile accumulator, so it is neither optimised away nor
 * vectorised), so their CPU time -- and thus their self samples -- are in a 3:1 ratio: 0.75 of the
 * samples in hot_three. An outer iteration takes about a millisecond; the clock is read only
 * between outer iterations.
 *
 * n is drawn uniformly from [INNER/2, 3*INNER/2) each outer iteration. A strictly periodic loop
 * aliases with a periodic sampler: with a fixed n the ~1 ms loop phase-locks to 999 Hz sampling
 * and runs of hundreds of samples land in one function (measured: 0.26..1.0 per 500 samples,
 * 0.70..0.78 over 5000). The jitter decorrelates the loop phase from the sampling clock, so the
 * sampled proportion behaves like independent Bernoulli(0.75) draws at any rate.
 *
 * Usage: hotspots <seconds> [threads]
 *   threads omitted or 0: the loop runs on the main thread (stacks reach main).
 *   threads N > 0: N threads named "hot-worker" each run the loop; main only joins them.
 * On exit it prints one line with the iteration counts and returns 0.
 *
 * Build (frame pointers all the way, leaf functions included):
 *   cc -O2 -g -pthread -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer \
 *      -Wl,--build-id -o hotspots hotspots.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Mean inner iterations of hot_one per outer iteration; hot_three does three times as many. */
#define INNER 100000UL

/* Keep the two hot functions as separate, real functions: no inlining, no cloning, and no
 * identical-code folding (GCC's -fipa-icf, on at -O2, could otherwise merge them). Their loop
 * constants also differ, so even a folding linker has nothing to merge. */
#if defined(__GNUC__) && !defined(__clang__)
#define HOT __attribute__((noinline, noipa))
#else
#define HOT __attribute__((noinline))
#endif
/* Same alignment for both, so their loops sit at the same offsets in the i-cache lines. */
#define HOT_ALIGNED HOT __attribute__((aligned(64)))

/* The shared inner loop, inlined into each hot function so the samples land in them. */
#define BURN(n, salt)                                                                   \
    do {                                                                                \
        volatile uint64_t acc = (salt);                                                 \
        for (uint64_t i = 0; i < (n); i++)                                              \
            acc = acc * 6364136223846793005ULL + (i ^ (salt));                          \
        return acc;                                                                     \
    } while (0)

HOT_ALIGNED uint64_t hot_three(uint64_t n) { BURN(n, 0x3333ULL); }

HOT_ALIGNED uint64_t hot_one(uint64_t n) { BURN(n, 0x1111ULL); }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct run {
    double seconds;
    uint64_t seed;
    uint64_t outer; /* outer iterations */
    uint64_t ones;  /* hot_one's inner iterations; hot_three ran three times as many */
    uint64_t sink;
};

/* Not static and not inlined, so worker stacks show it between the hot functions and libc. */
HOT void run_loop(struct run *r) {
    double end = now() + r->seconds;
    uint64_t rng = r->seed | 1;
    uint64_t sink = 0;
    uint64_t outer = 0;
    uint64_t ones = 0;
    do {
        /* xorshift64: cheap, and good enough to break the loop's periodicity. */
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        uint64_t n = INNER / 2 + rng % INNER;
        sink += hot_three(3 * n);
        sink += hot_one(n);
        ones += n;
        outer++;
    } while (now() < end);
    r->outer = outer;
    r->ones = ones;
    r->sink = sink;
}

static void *worker(void *arg) {
    pthread_setname_np(pthread_self(), "hot-worker");
    run_loop(arg);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s <seconds> [threads]\n", argv[0]);
        return 2;
    }
    char *endp;
    double seconds = strtod(argv[1], &endp);
    if (*endp != '\0' || !(seconds >= 0)) {
        fprintf(stderr, "hotspots: bad seconds %s\n", argv[1]);
        return 2;
    }
    long threads = 0;
    if (argc == 3) {
        threads = strtol(argv[2], &endp, 10);
        if (*endp != '\0' || threads < 0 || threads > 1024) {
            fprintf(stderr, "hotspots: bad thread count %s\n", argv[2]);
            return 2;
        }
    }

    uint64_t seed = (uint64_t)(now() * 1e9) ^ 0x9e3779b97f4a7c15ULL;
    uint64_t outer = 0;
    uint64_t ones = 0;
    uint64_t sink = 0;
    if (threads == 0) {
        struct run r = {.seconds = seconds, .seed = seed};
        run_loop(&r);
        outer = r.outer;
        ones = r.ones;
        sink = r.sink;
    } else {
        pthread_t *tids = calloc((size_t)threads, sizeof *tids);
        struct run *runs = calloc((size_t)threads, sizeof *runs);
        if (!tids || !runs) {
            perror("calloc");
            return 1;
        }
        for (long t = 0; t < threads; t++) {
            runs[t].seconds = seconds;
            runs[t].seed = seed + (uint64_t)t * 0x2545f4914f6cdd1dULL;
            if (pthread_create(&tids[t], NULL, worker, &runs[t]) != 0) {
                fprintf(stderr, "hotspots: pthread_create failed\n");
                return 1;
            }
        }
        for (long t = 0; t < threads; t++) {
            pthread_join(tids[t], NULL);
            outer += runs[t].outer;
            ones += runs[t].ones;
            sink += runs[t].sink;
        }
        free(tids);
        free(runs);
    }
    printf("hotspots: threads=%ld outer=%llu hot_three_iters=%llu hot_one_iters=%llu sink=%llx\n",
           threads, (unsigned long long)outer, (unsigned long long)(3 * ones),
           (unsigned long long)ones, (unsigned long long)(sink & 0xffff));
    return 0;
}
