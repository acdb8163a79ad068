# xenci-scenario: balloon-bench
# xenci-ci: no
# xenci-peer: yes
# xenci-budget: 400
# xenci-about: benchmark (numbers; fails only on errors): boot-to-ready, seconds per 1024->256->1024 MiB swing, the floor (xl mem-set to the current target), ours: its own in/outside-hypercall split per step, and one step down of a guest whose 768 MiB held its data (zeroed before release); run with balloon-bench@linux
scenario_balloon_bench() {
    # Same measure for both subjects: from starting `xl mem-set` to Xen's tot_pages within
    # 1 MiB of the target (Xen's count polled every 10 ms by xen-dominfo). Run beside the
    # Linux peer:
    #   scripts/xen-ci balloon-bench balloon-bench@linux
    swings=${XENCI_BENCH_SWINGS:-3}
    create_domain "xenci-bench-$SUBJECT" 'memory=1024' 'maxmem=1024'
    # Boot to ready: wait_ready reports ready_secs (xl create -> the ready marker).
    wait_ready 90
    [ "$SUBJECT" = guest ] && require_balloon
    wait_reach 1024 30
    if [ "$SUBJECT" = guest ]; then
        h0=$(data_read balloon/hypercalls) || fail "no data/balloon/hypercalls"
        # The floor of a step (scripts/bench): `xl mem-set` to the target the domain
        # already has (xl's own cost: xenstore writes, Xen's max_pages), three times.
        # Subject-independent: measured once. The wait adds at most one poll interval
        # (XENCI_POLL_MS, 10 ms) to a step: it is running before `xl mem-set` starts.
        for k in 1 2 3; do
            t0=$(now_cs)
            tool xl mem-set "$DOMNAME" 1024m || fail "xl mem-set $DOMNAME 1024m (the floor) failed"
            t1=$(now_cs)
            info "memset_floor_secs=$(fmt_cs $((t1 - t0)))"
            wait_reach 1024 5
        done
    fi

    down_total=0 up_total=0 i=1
    while [ "$i" -le "$swings" ]; do
        balloon_step "swing${i}_down" 256 120
        down_total=$((down_total + REACH_CS))
        [ "$SUBJECT" = guest ] && guest_step_split down 256
        balloon_step "swing${i}_up" 1024 120
        up_total=$((up_total + REACH_CS))
        [ "$SUBJECT" = guest ] && guest_step_split up 1024
        i=$((i + 1))
    done
    info "mean_down_secs=$(fmt_cs $((down_total / swings))) mean_up_secs=$(fmt_cs $((up_total / swings))) mean_swing_secs=$(fmt_cs $(((down_total + up_total) / swings))) swings=$swings"
    if [ "$SUBJECT" = guest ]; then
        # Each swing moves 1.5 GiB (768 MiB out, 768 MiB in).
        h1=$(data_read balloon/hypercalls) || fail "no data/balloon/hypercalls"
        info "hypercalls_per_gib=$(awk -v c=$((h1 - h0)) -v s="$swings" 'BEGIN { printf "%.2f", c / (1.5 * s) }') hypercalls=$((h1 - h0)) extents=$(balloon_tree extents)"
    fi
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
    if [ "$SUBJECT" = guest ]; then
        dirty_swing
    fi
}

# Ours when the memory it gives back held its data (Linux zeroes every ballooned page
# anyway): a guest that wrote into 768 MiB and freed it at boot (`fill=`) swings once; the
# step down zeroes what it releases (dirty_down_guest_scrub_ms).
dirty_swing() {
    create_domain "xenci-bench-dirty" 'memory=1024' 'maxmem=1024' \
        "extra=\"fill=$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n'):768\""
    wait_ready 90
    require_balloon
    wait_for 30 "data/fill/pages" data_read fill/pages || fail "no data/fill/pages from the guest"
    wait_reach 1024 30
    balloon_step dirty_down 256 120
    guest_step_split dirty_down 256
    info "dirty_scrubbed_kib=$(data_read balloon/scrubbed-kib)"
    balloon_step dirty_up 1024 120
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
