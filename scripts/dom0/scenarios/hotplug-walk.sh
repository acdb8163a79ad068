# xenci-scenario: hotplug-walk
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 420
# xenci-about: 100-step random walk of xl mem-set across the boot/hotplug boundary, from the balloon's floor (32 MiB) to 768 MiB (boot 256, shadow_memory=16) with the saveable-page walker after every step: no crash, census == Xen and walker == census every step
scenario_hotplug_walk() {
    local seed=${XENCI_SEED:-20261125} steps=100 i=0 t runs prev_runs=0 worst=0 secs
    # Down to the floor after hot-adds: Xen's p2m pool must cover giving memory back
    # (guest/README.md, "Memory hotplug": Xen's paging pool).
    create_domain "xenci-hpw-$SUBJECT" 'memory=256' 'maxmem=256' 'extra="walk"' 'shadow_memory=16'
    wait_ready 90
    require_balloon
    wait_reach 256 10
    tool xl mem-max "$DOMNAME" 1024m || fail "xl mem-max 1024m failed"
    info "seed=$seed steps=$steps"
    while [ $i -lt $steps ]; do
        i=$((i + 1))
        # A fixed-seed LCG: the same walk every run (XENCI_SEED picks another).
        seed=$(((seed * 1103515245 + 12345) % 2147483648))
        # 32 (the floor) to 768 MiB in 8 MiB steps.
        t=$((32 + (seed / 65536 % 93) * 8))
        mem_set "$t"
        wait_reach "$t" 60 "$MEMSET_CS"
        wait_for 30 "balloon done at $t MiB (step $i)" balloon_settled $((t * 1024)) \
            || fail "step $i ($t MiB): the guest does not report done: $(balloon_status)"
        # The walker runs after every settle; wait for this step's walk.
        walked() { runs=$(data_read mm/walk/runs) && [ "$runs" -gt "$prev_runs" ]; }
        wait_for 30 "the walker after step $i" walked || fail "step $i: no walk reported (runs=$runs)"
        prev_runs=$runs
        [ "$(data_read mm/walk/mismatches)" = 0 ] \
            || fail "step $i ($t MiB): the walker disagreed with the census: $(grep 'walk:' "$CONSOLE_LOG" | tail -n 1)"
        census_matches_xen || { sleep 1; census_matches_xen; } \
            || fail "step $i ($t MiB): census and Xen disagree: $CENSUS"
        secs=$REACH_CS
        [ "$secs" -gt "$worst" ] && worst=$secs
        [ $((i % 20)) -eq 0 ] && say "step $i: $t MiB in $(fmt_cs "$secs")s, hot-added sections $(data_read mm/sections/hotplug-ram/present), walk $(data_read mm/walk/pages) pages in $(data_read mm/walk/us) us"
    done
    check_alive
    info "steps=$steps walks=$prev_runs mismatches=0 worst_step_secs=$(fmt_cs "$worst") hotplug_adds=$(data_read hotplug/adds) sections_removed=$(data_read hotplug/sections-removed)"
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
