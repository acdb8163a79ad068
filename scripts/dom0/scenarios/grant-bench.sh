# xenci-scenario: grant-bench
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 120
# xenci-about: benchmark (numbers; fails only on errors): grant map/unmap latency under real Xen, 64 pages, per hypercall of 64 and of 1, 5 rounds each
scenario_grant_bench() {
    [ "$SUBJECT" = guest ] || skip "the grant scenarios run two guests of ours"
    grant_pair xenci-gbench 64
    wait_pair M 30 mapped
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" bench || fail "cannot command bench"
    wait_for 60 "bench" bench_done || fail "no bench result from the mapper"
    err=$(gt_read M grant-test/bench/error) && fail "bench: $err"
    expect_gt M grant-test/pattern-errors 0 "pattern errors after the bench"
    expect_gt M grant-test/mapped 64 "pages mapped after the bench"
    check_device_range M 64
    b64m=$(gt_read M grant-test/bench/batch-64/map-us)
    b64u=$(gt_read M grant-test/bench/batch-64/unmap-us)
    b1m=$(gt_read M grant-test/bench/batch-1/map-us)
    b1u=$(gt_read M grant-test/bench/batch-1/unmap-us)
    info "batch64_map_us=$b64m batch64_unmap_us=$b64u batch64_map_us_per_page=$((b64m / 64)) batch64_unmap_us_per_page=$((b64u / 64)) batch1_map_us=$b1m batch1_unmap_us=$b1u"
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" unmap || fail "cannot command the unmap"
    wait_pair M 30 unmapped
    wait_pair G 30 ended
}

bench_done() {
    [ "$(gt_read M grant-test/bench-runs)" = 1 ]
}
