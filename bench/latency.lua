-- wrk script: after the run, prints the tail percentiles wrk --latency does
-- not (its table stops at 99%), in microseconds, for bench/wrk_table.py:
--     Tail: p99=1234 p99.9=2345 p99.99=3456 max=5678
done = function(summary, latency, requests)
    io.write(string.format("Tail: p99=%d p99.9=%d p99.99=%d max=%d\n",
        latency:percentile(99), latency:percentile(99.9), latency:percentile(99.99), latency.max))
end
