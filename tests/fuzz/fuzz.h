/*
 * fuzz.h - what every harness in tests/fuzz defines, and the checks they
 * share.
 *
 * A harness is one file fuzz_<name>.c with LLVMFuzzerTestOneInput (and
 * LLVMFuzzerInitialize when it needs one-time setup). Linked with libFuzzer
 * (HELIOS_FUZZ=ON, clang) it fuzzes; linked with replay.c (every build,
 * gcc too) it replays its corpus under ctest. Rules: free everything an
 * input allocated (LeakSanitizer is on), never call exit(), report a
 * finding with FZ_CHECK (abort: libFuzzer saves the input).
 */
#ifndef HX_FUZZ_H
#define HX_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A property that must hold whatever the input: a finding when it does not. */
#define FZ_CHECK(cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: fuzz check failed: %s: ", __FILE__, __LINE__, #cond);          \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
