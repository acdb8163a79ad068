# xenci-scenario: balloon-bench
# xenci-ci: no
# xenci-peer: yes
# xenci-budget: 400
# xenci-about: benchmark (numbers; fails only on errors): boot-to-ready, seconds per 1024->256->1024 MiB swing; run with balloon-bench@linux
scenario_balloon_bench() {
    # Same measure for both subjects: from starting `xl mem-set` to Xen's tot_pages within
    # 1 MiB of the target (polled with xl list every 0.1 s). Run beside the Linux peer:
    #   scripts/xen-ci balloon-bench balloon-bench@linux
    swings=${XENCI_BENCH_SWINGS:-3}
    create_domain "xenci-bench-$SUBJECT" 'memory=1024' 'maxmem=1024'
    # Boot to ready: wait_ready reports ready_secs (xl create -> the ready marker).
    wait_ready 90
    [ "$SUBJECT" = guest ] && require_balloon
    wait_reach 1024 30
    if [ "$SUBJECT" = guest ]; then
        h0=$(data_read balloon/hypercalls) || fail "no data/balloon/hypercalls"
    fi

    down_total=0 up_total=0 i=1
    while [ "$i" -le "$swings" ]; do
        balloon_step "swing${i}_down" 256 120
        down_total=$((down_total + REACH_CS))
        balloon_step "swing${i}_up" 1024 120
        up_total=$((up_total + REACH_CS))
        i=$((i + 1))
    done
    info "mean_down_secs=$(fmt_cs $((down_total / swings))) mean_up_secs=$(fmt_cs $((up_total / swings))) mean_swing_secs=$(fmt_cs $(((down_total + up_total) / swings))) swings=$swings"
    if [ "$SUBJECT" = guest ]; then
        # Each swing moves 1.5 GiB (768 MiB out, 768 MiB in).
        h1=$(data_read balloon/hypercalls) || fail "no data/balloon/hypercalls"
        info "hypercalls_per_gib=$(((h1 - h0) * 2 / (3 * swings))) hypercalls=$((h1 - h0)) extents=$(balloon_tree extents)"
    fi
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
