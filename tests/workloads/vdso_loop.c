/*
 * vdso_loop: spends its time in the vDSO. A loop calls clock_gettime(CLOCK_MONOTONIC), which
 * the C library sends to the kernel's vDSO (`__vdso_clock_gettime`) without a system call.
 *
 * Usage: vdso_loop <seconds>. Build: cc -O1 -fno-omit-frame-pointer -o vdso_loop vdso_loop.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

__attribute__((noinline)) uint64_t read_clock_loop(double seconds) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double end = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 + seconds;
    uint64_t calls = 0;
    do {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        calls++;
    } while ((double)ts.tv_sec + (double)ts.tv_nsec / 1e9 < end);
    return calls;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    printf("vdso_loop: calls=%llu\n", (unsigned long long)read_clock_loop(seconds));
    return 0;
}
