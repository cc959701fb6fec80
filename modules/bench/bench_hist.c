/*
 * bench_hist.c - log-linear latency histogram (see bench_hist.h for the
 * layout and the error bound).
 *
 * Index of a value v >= 128: with e the position of its top bit and
 * s = e - 7, the top 8 bits of v (v >> s, in [128, 256)) pick the bucket
 * inside its power of two, and s * 128 + (v >> s) lays the powers of two
 * one after the other, continuing the exact region 0..127.
 */
#include "bench_hist.h"

#include <math.h>
#include <string.h>

#define SUB (1u << BENCH_HIST_SUB_BITS)

void bench_hist_init(bench_hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

unsigned bench_hist_index(uint64_t ns)
{
    if (ns < SUB)
        return (unsigned)ns;
    if (ns >> BENCH_HIST_MAX_BITS)
        return BENCH_HIST_BUCKETS - 1;
    unsigned shift = (unsigned)(63 - __builtin_clzll(ns)) - BENCH_HIST_SUB_BITS;
    return (shift << BENCH_HIST_SUB_BITS) + (unsigned)(ns >> shift);
}

uint64_t bench_hist_lower(unsigned index)
{
    if (index < 2 * SUB)
        return index;
    unsigned shift = (index >> BENCH_HIST_SUB_BITS) - 1;
    return (uint64_t)((index & (SUB - 1)) + SUB) << shift;
}

uint64_t bench_hist_width(unsigned index)
{
    return index < 2 * SUB ? 1 : (uint64_t)1 << ((index >> BENCH_HIST_SUB_BITS) - 1);
}

void bench_hist_record(bench_hist *h, uint64_t ns)
{
    h->bucket[bench_hist_index(ns)]++;
    h->count++;
    if (ns < h->min)
        h->min = ns;
    if (ns > h->max)
        h->max = ns;
    double d = (double)ns;
    h->sum += d;
    h->sumsq += d * d;
}

void bench_hist_merge(bench_hist *into, const bench_hist *from)
{
    for (unsigned i = 0; i < BENCH_HIST_BUCKETS; i++)
        into->bucket[i] += from->bucket[i];
    into->count += from->count;
    into->sum += from->sum;
    into->sumsq += from->sumsq;
    if (from->min < into->min)
        into->min = from->min;
    if (from->max > into->max)
        into->max = from->max;
}

uint64_t bench_hist_percentile(const bench_hist *h, double p)
{
    if (h->count == 0)
        return 0;
    if (p >= 100.0)
        return h->max;
    /* nearest rank: the smallest sample with at least p % of the samples
     * at or below it */
    /* (p * count) / 100 keeps whole results whole (99 % of 200 is 198);
     * the relative slack absorbs the rounding of p itself (99.9 is not
     * exact in binary), which could otherwise push a whole rank up by one */
    uint64_t rank = (uint64_t)ceil(p * (double)h->count / 100.0 * (1 - 1e-12));
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < BENCH_HIST_BUCKETS; i++) {
        seen += h->bucket[i];
        if (seen >= rank) {
            uint64_t v = bench_hist_lower(i) + bench_hist_width(i) / 2;
            if (v < h->min)
                v = h->min;
            if (v > h->max)
                v = h->max;
            return v;
        }
    }
    return h->max;
}

double bench_hist_mean(const bench_hist *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}

double bench_hist_stdev(const bench_hist *h)
{
    if (h->count < 2)
        return 0.0;
    double m = bench_hist_mean(h);
    double var = h->sumsq / (double)h->count - m * m;
    return var > 0 ? sqrt(var) : 0.0;
}
