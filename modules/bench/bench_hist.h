/*
 * bench_hist.h - the latency histogram of `heliosd bench`: log-linear
 * buckets in the style of HdrHistogram, fixed size, mergeable.
 *
 * Values are nanoseconds. Below 128 ns every value has its own bucket
 * (exact); above, each power of two [2^e, 2^(e+1)) is cut into 128 equal
 * buckets, so a bucket is at most 1/128 of its lower bound wide. A
 * percentile is reported as the middle of the bucket that holds the
 * nearest-rank sample, clamped to the exact min and max: it is within
 * BENCH_HIST_REL_ERR (1/256, 0.39 %) of the exact nearest-rank value of the
 * recorded samples. Values of 2^40 ns (about 18 minutes) and more share the
 * last bucket; min, max, mean and stdev are exact whatever the value.
 *
 * Recording is two additions and a bit scan, no allocation: one histogram
 * per thread, merged once at the end (tests/unit/test_bench_hist.c checks
 * the bound and the merge against exact percentiles of a recorded sample).
 */
#ifndef HELIOS_BENCH_HIST_H
#define HELIOS_BENCH_HIST_H

#include <stdint.h>

#define BENCH_HIST_SUB_BITS 7  /* 128 buckets per power of two */
#define BENCH_HIST_MAX_BITS 40 /* 2^40 ns and above: last bucket */
#define BENCH_HIST_BUCKETS ((BENCH_HIST_MAX_BITS - BENCH_HIST_SUB_BITS + 1) << BENCH_HIST_SUB_BITS)
#define BENCH_HIST_REL_ERR (1.0 / 256)

typedef struct bench_hist {
    uint64_t count;
    uint64_t min, max; /* exact; min is UINT64_MAX while empty */
    double sum, sumsq; /* exact enough for mean and stdev */
    uint64_t bucket[BENCH_HIST_BUCKETS];
} bench_hist;

void bench_hist_init(bench_hist *h);
void bench_hist_record(bench_hist *h, uint64_t ns);
/* Adds every sample of FROM to INTO. */
void bench_hist_merge(bench_hist *into, const bench_hist *from);
/* The nearest-rank P-th percentile (0 < P <= 100) in ns, within
 * BENCH_HIST_REL_ERR of the exact one; 0 when empty. */
uint64_t bench_hist_percentile(const bench_hist *h, double p);
double bench_hist_mean(const bench_hist *h);
double bench_hist_stdev(const bench_hist *h);

/* Bucket arithmetic, exposed for the unit test. */
unsigned bench_hist_index(uint64_t ns);
uint64_t bench_hist_lower(unsigned index);
uint64_t bench_hist_width(unsigned index);

#endif
