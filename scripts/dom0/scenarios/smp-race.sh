# xenci-scenario: smp-race
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 420
# xenci-about: the seed's race under Xen: vcpus=4, memmap walkers on vCPUs 1-3 without pause while vCPU 0 follows a seeded mem-set walk that hot-adds and hot-removes sections and, all the while, unmaps and maps a grant peer's 64 pages (their device subsections removed and added each round); overlaps >= RACE_MIN_OVERLAPS (1000), detections = 0, census = Xen every step
scenario_smp_race() {
    RACE_GRANTS=yes race_walk "xenci-race" race expect-clean
}

# A clean run must have seen the race this often (the CI floor; scripts/soak-race runs
# longer walks: XENCI_RACE_STEPS, XENCI_RACE_MIN_OVERLAPS).
RACE_MIN_OVERLAPS=${XENCI_RACE_MIN_OVERLAPS:-1000}
RACE_DWELL_SECS=1

# race_walk NAME EXTRA EXPECT: the race scenario and its negative controls. EXPECT is
# expect-clean (overlaps, no detection) or expect-detected (the injected bug must be
# seen: a detection counted, or the guest stopped by a corrupted descriptor).
race_walk() {
    local name=$1 extra=$2 expect=$3 seed=${XENCI_SEED:-20261204} steps=${XENCI_RACE_STEPS:-12} i=0 t
    # cpu_weight: three vCPUs walk without pause; a low weight keeps dom0 (weight 256),
    # which runs xl and the checks, from being starved on the one host CPU.
    local grants=${RACE_GRANTS:-no} runs
    CHURN_ROUNDS=0
    if [ "$grants" = yes ]; then
        # A granter of ours (64 pages) for the race guest, which maps them (grant=map)
        # and then unmaps, shrinks and maps them again without pause (command=churn):
        # device subsections come and go under the pfn_to_device_page scan.
        create_domain "$name-g" 'memory=128' 'maxmem=128' 'extra="loglevel=info grant=give:64"'
        remember_domain G
        wait_ready 90
        GRANT_NONCE=$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')
        tool xenstore-write "/local/domain/$G_ID/data/grant-nonce" "$GRANT_NONCE" \
            || fail "cannot write d$G_ID's data/grant-nonce"
        extra="$extra grant=map"
    fi
    create_domain "$name" 'vcpus=4' 'maxvcpus=4' 'memory=256' 'maxmem=256' \
        "extra=\"$extra\"" 'shadow_memory=16' 'cpu_weight=32'
    remember_domain M
    wait_ready 90
    require_balloon
    wait_vcpus 30 "0 1 2 3"
    if [ "$grants" = yes ]; then
        introduce G M
        introduce M G
        wait_pair M 60 mapped
        use_domain M
    fi
    wait_for 20 "race walkers running" race_has_passes \
        || fail "no data/race/passes from the walkers 20 s after ready"
    tool xl mem-max "$DOMNAME" 1024m || fail "xl mem-max 1024m failed"
    RACE_T0=$(now_cs)
    RACE_P0=$(walker_pages)
    info "seed=$seed steps=$steps extra=\"$extra\""
    if [ "$grants" = yes ]; then
        tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" churn \
            || fail "cannot command the grant churn"
        # An injected bug may stop the guest at the churn's first removal.
        wait_for 10 "the mapper churning" churning_or_detected "$expect" \
            || fail "the mapper is not churning: churning='$(gt_read M grant-test/churning)'"
    fi
    while [ $i -lt $steps ]; do
        if [ "$expect" = expect-detected ] && race_detected; then
            info "detected_at_step=$i detect_secs=$(fmt_cs $(($(now_cs) - RACE_T0)))"
            break
        fi
        i=$((i + 1))
        seed=$(((seed * 1103515245 + 12345) % 2147483648))
        # Alternate above and below the 256 MiB boot size so that every other step
        # hot-adds or hot-removes: 64-224 MiB, then 384-1024 MiB.
        if [ $((i % 2)) = 1 ]; then
            t=$((384 + (seed / 65536 % 81) * 8))
        else
            t=$((64 + (seed / 65536 % 21) * 8))
        fi
        mem_set "$t"
        if [ "$expect" = expect-detected ] && race_detected; then
            info "detected_at_step=$i detect_secs=$(fmt_cs $(($(now_cs) - RACE_T0)))"
            break
        fi
        if ! wait_reach_quiet "$t" 90; then
            [ "$expect" = expect-detected ] && race_detected && { info "detected_at_step=$i detect_secs=$(fmt_cs $(($(now_cs) - RACE_T0)))"; break; }
            fail "step $i: $t MiB not reached in 90 s (Xen shows $(domain_mib) MiB)"
        fi
        if [ "$expect" = expect-clean ]; then
            wait_for 30 "balloon done at $t MiB (step $i)" balloon_settled $((t * 1024)) \
                || fail "step $i ($t MiB): the guest does not report done: $(balloon_status)"
            census_matches_xen || { sleep 1; census_matches_xen; } \
                || fail "step $i ($t MiB): census and Xen disagree: $CENSUS"
            [ "$(data_read race/detections)" = 0 ] \
                || fail "step $i: the walkers detected a broken ordering: $(grep 'race: DETECTED' "$CONSOLE_LOG" | head -n 1)"
            if [ "$grants" = yes ]; then
                churn_progress "$i"
                # A dwell with dom0 quiet: the churn and the walkers have the host CPU
                # to themselves (xl and the checks above take most of it otherwise).
                sleep "$RACE_DWELL_SECS"
            fi
        elif race_detected; then
            info "detected_at_step=$i detect_secs=$(fmt_cs $(($(now_cs) - RACE_T0)))"
            break
        fi
    done
    # The guest refreshes data/race every 2 s.
    sleep 3
    race_report
    case $expect in
        expect-clean)
            check_alive
            if [ "$grants" = yes ]; then
                tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" still \
                    || fail "cannot stop the grant churn"
                expect_gt M grant-test/churning 0 "the churn stopped"
                expect_gt M grant-test/pattern-errors 0 "pattern errors after the churn"
                expect_gt M grant-test/mapped 64 "pages mapped after the churn"
                runs="$(gt_read M grant-test/churn-rounds) churn_us_per_round=$(gt_read M grant-test/churn-us-per-round)"
                # The last change in the device window: unmap, and the wholly free device
                # subsections go (inactive, grace period, memmap freed) under the scan.
                tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" unmap \
                    || fail "cannot command the unmap"
                wait_pair M 30 unmapped
                wait_pair G 30 ended
                sleep 2
                use_domain G
                census_matches_xen || fail "granter: census and Xen disagree: $CENSUS"
                use_domain M
                census_matches_xen || fail "after the unmap: census and Xen disagree: $CENSUS"
                info "grant_churn_rounds=$runs"
            fi
            [ "$(data_read race/detections)" = 0 ] || fail "detections: $(data_read race/detections)"
            [ "$(data_read race/overlaps)" -ge "$RACE_MIN_OVERLAPS" ] \
                || fail "$(data_read race/overlaps) overlaps, want >= $RACE_MIN_OVERLAPS: the race did not happen often enough for a clean run to prove much"
            [ "$(data_read race/grace-waits)" -gt 0 ] || fail "no grace period was waited for"
            ;;
        expect-detected)
            race_detected || fail "the injected bug ($extra) went undetected through $i steps: the race scenario cannot see it"
            ;;
    esac
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}

# Pages visited so far by each walker: "census saveable pfn-scan".
walker_pages() {
    local w
    for w in census saveable pfn-scan; do
        printf '%s ' "$(data_read "race/$w/pages" 2>/dev/null || echo 0)"
    done
}

churning_or_detected() {
    gt_is M grant-test/churning 1 && return 0
    [ "$1" = expect-detected ] && race_detected
}

race_has_passes() {
    [ "$(data_read race/passes 2>/dev/null || echo 0)" -gt 0 ]
}

# The injected bug was seen: the walkers counted a detection, or the guest stopped on a
# corrupted descriptor (a panic naming it) before it could publish one.
race_detected() {
    local d
    d=$(data_read race/detections 2>/dev/null) && [ "$d" -gt 0 ] && return 0
    console_has 'race: DETECTED' && return 0
    console_has 'memmap corrupted' && return 0
    return 1
}

wait_reach_quiet() {
    local mib=$1 secs=$2
    wait_every 1 "$secs" "$mib MiB" near_target_mib "$mib"
}

race_report() {
    local k line=""
    for k in passes overlaps detections grace-waits grace-median-us grace-max-us publish-ms \
        census/passes census/overlaps saveable/passes saveable/overlaps pfn-scan/passes pfn-scan/overlaps pfn-scan/pages; do
        line="$line $(echo "$k" | tr '/-' '__')=$(data_read "race/$k" 2>/dev/null || echo '?')"
    done
    # Pages per second per walker (one walker per vCPU: census on 1, saveable on 2,
    # the pfn scan on 3), over the walk, from data/race (refreshed every second).
    local secs p1
    secs=$(fmt_cs $(($(now_cs) - RACE_T0)))
    p1=$(walker_pages)
    info "walk_secs=$secs $(echo "$RACE_P0 $p1" | awk -v s="$secs" '{ printf "census_pages_per_sec=%d saveable_pages_per_sec=%d pfn_scan_pages_per_sec=%d", ($4 - $1) / s, ($5 - $2) / s, ($6 - $3) / s }')"
    info "race$line hotplug_adds=$(data_read hotplug/adds 2>/dev/null) sections_removed=$(data_read hotplug/sections-removed 2>/dev/null)"
    if console_has 'race: DETECTED'; then info "first_detection=\"$(grep -m1 'race: DETECTED' "$CONSOLE_LOG" | sed 's/.*race: //')\""; fi
}

# churn_progress STEP: the mapper's churn-rounds (published every second) has grown since
# the last step, so the churn runs throughout, with no error; sets CHURN_ROUNDS.
churn_progress() {
    local err
    err=$(gt_read M grant-test/churn/error) && fail "step $1: grant churn: $err"
    wait_for 10 "grant churn past $CHURN_ROUNDS rounds" churn_rounds_above "$CHURN_ROUNDS" \
        || fail "step $1: the grant churn stalled at $(gt_read M grant-test/churn-rounds) rounds"
    CHURN_ROUNDS=$(gt_read M grant-test/churn-rounds)
}

churn_rounds_above() {
    local n
    n=$(gt_read M grant-test/churn-rounds) && [ "$n" -gt "$1" ]
}
