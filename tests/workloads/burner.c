/*
 * burner: one named hot function, for identity tests (pid reuse, exec). Built twice with
 * -DWHO=alpha and -DWHO=beta, it burns CPU in `alpha_work` or `beta_work` for <seconds>.
 *
 * Usage: burner <seconds>. Build: cc -O1 -fno-omit-frame-pointer -DWHO=alpha -o alpha burner.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifndef WHO
#define WHO alpha
#endif
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define STR2(a) #a
#define STR(a) STR2(a)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

volatile uint64_t sink;

__attribute__((noinline)) void CAT(WHO, _work)(void) {
    volatile uint64_t acc = sink; /* a stack frame: GCC keeps the frame pointer */
    for (uint64_t i = 0; i < 2000000ULL; i++)
        acc = acc * 6364136223846793005ULL + i;
    sink = acc;
}

int main(int argc, char **argv) {
    double end = now() + (argc > 1 ? atof(argv[1]) : 1.0);
    uint64_t calls = 0;
    while (now() < end) {
        CAT(WHO, _work)();
        calls++;
    }
    printf("%s: calls=%llu\n", STR(WHO), (unsigned long long)calls);
    return 0;
}
