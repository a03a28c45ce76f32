/*
 * recurse: a chain of <depth> nested calls of `recurse`, whose innermost call burns CPU, for
 * whole-stack checks of deep stacks. Built -O2 -fomit-frame-pointer: each level keeps a frame
 * (work after the call: no tail call) but no frame pointer.
 *
 * Usage: recurse <seconds> <depth>. Leaf stacks: burn <- recurse x depth <- main <- libc <- _start.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

volatile uint64_t sink;

__attribute__((noinline)) uint64_t burn(void) {
    uint64_t acc = sink;
    for (uint64_t i = 0; i < 1000000ULL; i++)
        acc = acc * 6364136223846793005ULL + i;
    return acc;
}

__attribute__((noinline)) uint64_t recurse(int depth) {
    uint64_t r = depth <= 1 ? burn() : recurse(depth - 1);
    sink = r + (uint64_t)depth; /* work after the call: no tail call */
    return r ^ (uint64_t)depth;
}

int main(int argc, char **argv) {
    double end = now() + (argc > 1 ? atof(argv[1]) : 1.0);
    int depth = argc > 2 ? atoi(argv[2]) : 100;
    uint64_t calls = 0;
    while (now() < end) {
        recurse(depth);
        calls++;
    }
    printf("recurse: depth=%d calls=%llu\n", depth, (unsigned long long)calls);
    return 0;
}
