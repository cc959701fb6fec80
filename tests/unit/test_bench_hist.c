/*
 * test_bench_hist.c - the bench module's latency histogram
 * (modules/bench/bench_hist.c, compiled into this test): every percentile
 * of a recorded sample is within the stated relative error (1/256) of the
 * exact nearest-rank percentile of that sample, histograms merged across
 * "threads" equal one histogram of all the samples, and the bucket
 * arithmetic holds the bound everywhere in its range.
 */
#include "bench_hist.h"

#include "hx_test.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NSAMPLES 1000000

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng(void) /* xorshift64*: the same sample on every run */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1du;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Latency-like values: log-uniform from 1 ns to ~100 s, plus clusters (a
 * fast mode around 50 us and a slow tail around 1 s) as a real run has. */
static uint64_t sample_value(void)
{
    uint64_t r = rng();
    switch (r % 4) {
    case 0: return 50000 + (r >> 8) % 5000;
    case 1: return 1000000000u + (r >> 8) % 100000000u;
    default: return (uint64_t)exp((double)((r >> 11) % 1000000) / 1000000.0 * log(1e11));
    }
}

/* The exact nearest-rank percentile P (given as NUM/DEN percent, so the
 * rank is exact integer arithmetic) of sorted V. */
static uint64_t exact_pct(const uint64_t *v, uint64_t n, uint64_t num, uint64_t den)
{
    uint64_t rank = (num * n + den * 100 - 1) / (den * 100);
    if (rank < 1)
        rank = 1;
    return v[rank - 1];
}

static int within_bound(uint64_t got, uint64_t exact)
{
    double diff = fabs((double)got - (double)exact);
    return diff <= (double)exact * BENCH_HIST_REL_ERR;
}

HX_TEST(percentiles_are_within_the_stated_relative_error_of_the_exact_ones)
{
    static uint64_t v[NSAMPLES];
    static bench_hist h;
    bench_hist_init(&h);
    for (size_t i = 0; i < NSAMPLES; i++) {
        v[i] = sample_value();
        bench_hist_record(&h, v[i]);
    }
    qsort(v, NSAMPLES, sizeof(v[0]), cmp_u64);
    /* the reported ones (p50 .. p99.99) and every whole and tenth percent */
    static const uint64_t fixed[][2] = {{50, 1}, {90, 1}, {99, 1}, {999, 10}, {9999, 100}};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        uint64_t e = exact_pct(v, NSAMPLES, fixed[i][0], fixed[i][1]);
        uint64_t g = bench_hist_percentile(&h, (double)fixed[i][0] / (double)fixed[i][1]);
        if (!within_bound(g, e))
            HX_FAILED_("p%g: histogram %llu, exact %llu", (double)fixed[i][0] / (double)fixed[i][1],
                       (unsigned long long)g, (unsigned long long)e);
    }
    int bad = 0;
    for (uint64_t k = 1; k <= 1000; k++) {
        uint64_t e = exact_pct(v, NSAMPLES, k, 10);
        uint64_t g = bench_hist_percentile(&h, (double)k / 10.0);
        if (!within_bound(g, e) && bad++ < 5)
            HX_FAILED_("p%.1f: histogram %llu, exact %llu", (double)k / 10.0, (unsigned long long)g,
                       (unsigned long long)e);
    }
    HX_CHECK_UINT_EQ(h.count, NSAMPLES);
    HX_CHECK_UINT_EQ(h.min, v[0]);
    HX_CHECK_UINT_EQ(h.max, v[NSAMPLES - 1]);
    HX_CHECK_UINT_EQ(bench_hist_percentile(&h, 100), v[NSAMPLES - 1]);
    double sum = 0;
    for (size_t i = 0; i < NSAMPLES; i++)
        sum += (double)v[i];
    HX_CHECK(fabs(bench_hist_mean(&h) - sum / NSAMPLES) <= 1e-9 * sum / NSAMPLES);
}

HX_TEST(small_samples_use_the_nearest_rank)
{
    /* 200 samples, 2 of them slow: p99 is the 198th value (fast), p99.5
     * the 199th (slow) - the case the open-loop stall test relies on */
    static bench_hist h;
    bench_hist_init(&h);
    for (int i = 0; i < 198; i++)
        bench_hist_record(&h, 100000 + (uint64_t)i);
    bench_hist_record(&h, 1000000000);
    bench_hist_record(&h, 1000000001);
    uint64_t p99 = bench_hist_percentile(&h, 99);
    HX_CHECK(within_bound(p99, 100197));
    HX_CHECK(within_bound(bench_hist_percentile(&h, 99.5), 1000000000));
    HX_CHECK(within_bound(bench_hist_percentile(&h, 50), 100099));
    HX_CHECK_UINT_EQ(bench_hist_percentile(&h, 100), 1000000001);
    /* below 128 ns values are exact */
    bench_hist_init(&h);
    for (uint64_t i = 0; i < 128; i++)
        bench_hist_record(&h, i);
    for (uint64_t k = 1; k <= 128; k++)
        HX_CHECK_UINT_EQ(bench_hist_percentile(&h, (double)k * 100.0 / 128.0), k - 1);
}

HX_TEST(histograms_merged_across_threads_equal_one_of_all_samples)
{
    static bench_hist all, part[4], merged;
    bench_hist_init(&all);
    bench_hist_init(&merged);
    for (int t = 0; t < 4; t++)
        bench_hist_init(&part[t]);
    rng_state = 12345;
    for (int i = 0; i < 200000; i++) {
        uint64_t x = sample_value();
        bench_hist_record(&all, x);
        bench_hist_record(&part[i % 3 == 0 ? 0 : (i % 7 == 0 ? 1 : (i % 2 ? 2 : 3))], x);
    }
    for (int t = 0; t < 4; t++)
        bench_hist_merge(&merged, &part[t]);
    HX_CHECK(memcmp(all.bucket, merged.bucket, sizeof(all.bucket)) == 0);
    HX_CHECK_UINT_EQ(merged.count, all.count);
    HX_CHECK_UINT_EQ(merged.min, all.min);
    HX_CHECK_UINT_EQ(merged.max, all.max);
    static const double p[] = {50, 90, 99, 99.9, 99.99, 100};
    for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
        HX_CHECK_UINT_EQ(bench_hist_percentile(&merged, p[i]), bench_hist_percentile(&all, p[i]));
    HX_CHECK(fabs(bench_hist_mean(&merged) - bench_hist_mean(&all)) <=
             1e-6 * bench_hist_mean(&all));
    /* merging an empty histogram changes nothing */
    static bench_hist empty;
    bench_hist_init(&empty);
    bench_hist_merge(&merged, &empty);
    HX_CHECK_UINT_EQ(merged.min, all.min);
    HX_CHECK_UINT_EQ(bench_hist_percentile(&empty, 99), 0);
}

HX_TEST(every_bucket_holds_its_values_and_is_at_most_a_128th_of_them_wide)
{
    /* around every power of two up to the range's end, and at random */
    for (unsigned e = 0; e < BENCH_HIST_MAX_BITS; e++) {
        uint64_t base = (uint64_t)1 << e;
        for (int64_t d = -3; d <= 3; d++) {
            uint64_t x = base + (uint64_t)d;
            if (d < 0 && base < (uint64_t)-d)
                continue;
            unsigned i = bench_hist_index(x);
            uint64_t lo = bench_hist_lower(i), w = bench_hist_width(i);
            HX_CHECK(i < BENCH_HIST_BUCKETS);
            HX_CHECK(lo <= x && x < lo + w);
            HX_CHECK(x < 128 ? w == 1 : w * 128 <= lo);
        }
    }
    for (int k = 0; k < 1000000; k++) {
        uint64_t x = rng() >> (24 + rng() % 40);
        unsigned i = bench_hist_index(x);
        uint64_t lo = bench_hist_lower(i), w = bench_hist_width(i);
        if (!(lo <= x && x < lo + w && (x < 128 ? w == 1 : w * 128 <= lo))) {
            HX_FAILED_("value %llu: bucket %u [%llu, +%llu)", (unsigned long long)x, i,
                       (unsigned long long)lo, (unsigned long long)w);
            break;
        }
    }
    /* consecutive buckets tile the range */
    for (unsigned i = 0; i + 1 < BENCH_HIST_BUCKETS; i++)
        if (bench_hist_lower(i) + bench_hist_width(i) != bench_hist_lower(i + 1)) {
            HX_FAILED_("bucket %u does not end where %u starts", i, i + 1);
            break;
        }
    /* beyond the range: the last bucket; max stays exact */
    static bench_hist h;
    bench_hist_init(&h);
    bench_hist_record(&h, (uint64_t)1 << 50);
    HX_CHECK_UINT_EQ(bench_hist_index((uint64_t)1 << 50), BENCH_HIST_BUCKETS - 1);
    HX_CHECK_UINT_EQ(h.max, (uint64_t)1 << 50);
    HX_CHECK_UINT_EQ(bench_hist_percentile(&h, 50), (uint64_t)1 << 50);
}

int main(void)
{
    HX_RUN(percentiles_are_within_the_stated_relative_error_of_the_exact_ones);
    HX_RUN(small_samples_use_the_nearest_rank);
    HX_RUN(histograms_merged_across_threads_equal_one_of_all_samples);
    HX_RUN(every_bucket_holds_its_values_and_is_at_most_a_128th_of_them_wide);
    return hx_test_summary();
}
