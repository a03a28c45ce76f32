/*
 * qsort_loop: sorts random arrays with the C library's qsort and a comparator of its own, so
 * the hot stacks run through libc (built without frame pointers on Debian):
 *   cmp_ints <- msort_with_tmp (libc, recursive) <- __qsort_r <- sort_loop <- main
 *   <- __libc_start_call_main <- __libc_start_main_impl <- _start
 * Built -O2 -fomit-frame-pointer, so only unwind tables (.eh_frame) walk these stacks.
 *
 * Usage: qsort_loop <seconds>. Build: cc -O2 -g -fomit-frame-pointer -o qsort_loop qsort_loop.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define N 4096

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

__attribute__((noinline)) int cmp_ints(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

__attribute__((noinline)) uint64_t sort_loop(double seconds) {
    static int v[N];
    uint64_t rng = 0x9e3779b97f4a7c15ULL, sorts = 0;
    double end = now() + seconds;
    do {
        for (int i = 0; i < N; i++) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            v[i] = (int)(rng >> 33);
        }
        qsort(v, N, sizeof v[0], cmp_ints);
        sorts++;
    } while (now() < end);
    return sorts;
}

int main(int argc, char **argv) {
    printf("qsort_loop: sorts=%llu\n",
           (unsigned long long)sort_loop(argc > 1 ? atof(argv[1]) : 1.0));
    return 0;
}
