/*
 * cleanstack: a frame-pointer walk that leaves frame-pointer code and reads garbage.
 *
 * main -> middle -> leaf_burn. `middle` is hand-written assembly that, like code built without
 * frame pointers, uses %rbp for something else: it points it at `junk`, a fake frame chain whose
 * "return addresses" (0xf800000000000000, 0x048d48378b48fb89) lie in no mapping. `leaf_burn`
 * (built with frame pointers) pushes that %rbp, so a frame-pointer walk of a sample in it reads
 *   leaf_burn, middle, 0xf800000000000000, 0x048d48378b48fb89
 * and stops (the chain ends with a null frame pointer). A clean profile shows `middle;leaf_burn`
 * and marks the stack truncated; it never shows the two garbage addresses.
 *
 * Usage: cleanstack <seconds>. Build: cc -O1 -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -o cleanstack cleanstack.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Fake frames: {next frame pointer, return address}. */
uint64_t junk2[2] = {0, 0x048d48378b48fb89ULL};
uint64_t junk[2] = {(uint64_t)junk2, 0xf800000000000000ULL};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

volatile uint64_t sink;

/* The volatile local gives it a stack frame, so GCC keeps its frame pointer. */
__attribute__((noinline)) void leaf_burn(void) {
    volatile uint64_t acc = sink;
    for (uint64_t i = 0; i < 5000000ULL; i++)
        acc = acc * 6364136223846793005ULL + i;
    sink = acc;
}

void middle(void);
/* No CFI and no frame pointer: %rbp holds &junk while leaf_burn runs. The stack stays 16-byte
 * aligned at the call (entry 8 mod 16, two pushes, 8 more bytes). */
__asm__(".text\n"
        ".globl middle\n"
        ".type middle, @function\n"
        "middle:\n"
        "    push %rbx\n"
        "    push %rbp\n"
        "    lea junk(%rip), %rbp\n"
        "    sub $8, %rsp\n"
        "    call leaf_burn\n"
        "    add $8, %rsp\n"
        "    pop %rbp\n"
        "    pop %rbx\n"
        "    ret\n"
        ".size middle, .-middle\n");

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    double end = now() + seconds;
    uint64_t calls = 0;
    while (now() < end) {
        middle();
        calls++;
    }
    printf("cleanstack: calls=%llu\n", (unsigned long long)calls);
    return 0;
}
