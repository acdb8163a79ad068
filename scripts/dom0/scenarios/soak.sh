# xenci-scenario: soak
# xenci-ci: no
# xenci-peer: no
# xenci-budget: 36000
# xenci-about: soak (scripts/soak): a seeded random walk of XENCI_SOAK_STEPS (default 1000) steps, `xl mem-set` anywhere between the balloon's floor and mem-max 1024 (boot 256: across the hotplug boundary, down to the floor) with garbage targets mixed in (1 in 8); census == Xen after every step; counts mismatches and crashes (a crashed guest is replaced and the walk goes on), worst step time
scenario_soak() {
    local seed=${XENCI_SEED:-20261204} steps=${XENCI_SOAK_STEPS:-1000} secs=${XENCI_SOAK_SECS:-0}
    local i=0 t r kind valid=0 bad=0 mism=0 crashes=0 worst=0 worst_at=- deadline=0 floor_mib max_mib=1024
    [ "$secs" -gt 0 ] && deadline=$(($(now_cs) + secs * 100))
    soak_domain
    floor_mib=$(($(data_read balloon/floor-kib) / 1024))
    [ "$floor_mib" -gt 0 ] || fail "no data/balloon/floor-kib"
    info "seed=$seed steps=$steps floor_mib=$floor_mib max_mib=$max_mib"
    while [ $i -lt "$steps" ]; do
        if [ "$deadline" -gt 0 ] && [ "$(now_cs)" -ge "$deadline" ]; then
            say "time is up after $i steps (XENCI_SOAK_SECS=$secs)"
            break
        fi
        i=$((i + 1))
        # A fixed-seed LCG (the same walk for the same seed); r in 0..32767.
        seed=$(((seed * 1103515245 + 12345) % 2147483648))
        r=$((seed / 65536))
        case $((r % 16)) in
            0 | 1) kind=bad ;;
            2) kind=valid t=$floor_mib ;;
            3) kind=valid t=$max_mib ;;
            *) kind=valid t=$((floor_mib + r % (max_mib - floor_mib + 1))) ;;
        esac
        if [ "$kind" = bad ]; then
            bad=$((bad + 1))
            soak_bad_step "$i" "$r" || mism=$((mism + 1))
        else
            valid=$((valid + 1))
            soak_valid_step "$i" "$t"
            case $? in
                0)
                    if [ "$STEP_CS" -gt "$worst" ]; then worst=$STEP_CS worst_at="$i:${t}MiB"; fi
                    ;;
                2)
                    crashes=$((crashes + 1))
                    say "step $i: the guest is gone ($SOAK_WHY); a new one continues the walk"
                    info "crash step=$i target_mib=$t why=$SOAK_WHY"
                    tool xl destroy "$DOMNAME"
                    soak_domain
                    ;;
                *) mism=$((mism + 1)) ;;
            esac
        fi
        if [ $((i % 25)) -eq 0 ]; then
            info "progress step=$i valid=$valid bad=$bad mismatches=$mism crashes=$crashes worst_step_secs=$(fmt_cs "$worst") at=$worst_at sections=$(data_read mm/sections/hotplug-ram/present)"
        fi
    done
    info "soak steps=$i valid=$valid bad=$bad mismatches=$mism crashes=$crashes worst_step_secs=$(fmt_cs "$worst") worst_step=$worst_at hotplug_adds=$(data_read hotplug/adds) sections_removed=$(data_read hotplug/sections-removed)"
    [ "$mism" -eq 0 ] && [ "$crashes" -eq 0 ] \
        || fail "$mism mismatch(es) and $crashes crash(es) in $i steps (see the INFO lines)"
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}

# A fresh guest for the walk: boot 256 MiB, then mem-max 1024 (hot-add room).
soak_domain() {
    SOAK_N=$((${SOAK_N:-0} + 1))
    # Xen's p2m pool is sized from maxmem at creation; every 2 MiB given back after
    # growing splits a superpage and costs a pool page (guest/README "Limits"): without
    # more pool, a walk from 1024 MiB down to the floor stalls near 43 MiB with
    # "decrease_reservation: Xen released none" (measured, 9 of 150 steps).
    create_domain "xenci-soak-$SOAK_N" 'memory=256' 'maxmem=256' "shadow_memory=${XENCI_SOAK_POOL_MIB:-16}"
    wait_ready 90
    require_balloon
    wait_reach 256 30
    tool xl mem-max "$DOMNAME" 1024m || fail "xl mem-max 1024m failed"
}

# A mismatch: say it on the serial log, keep walking.
soak_mismatch() {
    info "mismatch step=$1 $2"
    return 1
}

# soak_valid_step I MIB: xl mem-set MIB; Xen reaches it, the guest says done, census ==
# Xen. Returns 0 (STEP_CS: mem-set to reached), 1 a mismatch, 2 the guest is gone.
soak_valid_step() {
    local i=$1 t=$2 deadline st
    MEMSET_CS=$(now_cs)
    tool xl mem-set "$DOMNAME" "${t}m" || soak_mismatch "$i" "xl mem-set ${t}m failed: $(tail -n 1 "$WORK/tools.log")" || return 1
    deadline=$((MEMSET_CS + 3000))
    while ! near_target_mib "$t"; do
        st=$(domain_state "$DOMNAME")
        case $st in
            *c* | '') SOAK_WHY="state '$st': $(panic_line || echo 'no PANIC line')"; return 2 ;;
        esac
        [ "$(now_cs)" -lt "$deadline" ] \
            || soak_mismatch "$i" "target ${t}MiB not reached in 30s: xl list shows $(domain_mib) MiB; guest: $(balloon_status | tr ' ' ','); hot-added sections $(data_read mm/sections/hotplug-ram/present)" || return 1
        sleep 0.1
    done
    STEP_CS=$(($(now_cs) - MEMSET_CS))
    wait_for 30 "balloon done at $t MiB" balloon_settled $((t * 1024)) \
        || soak_mismatch "$i" "target ${t}MiB: the guest does not report done: $(balloon_status | tr ' ' ',')" || return 1
    census_matches_xen || { sleep 1; census_matches_xen; } \
        || soak_mismatch "$i" "target ${t}MiB: census and Xen disagree: $(echo "$CENSUS" | tr ' ' ',')" || return 1
}

# soak_bad_step I R: a garbage memory/target (picked by R) is refused and counted, and
# Xen's tot_pages/max_pages do not move.
soak_bad_step() {
    local i=$1 r=$2 v rej before after
    case $((r / 16 % 6)) in
        0) v=abc ;; 1) v=-5 ;; 2) v=0x4000 ;; 3) v=1.5e5 ;; 4) v=' 1024' ;;
        5) v=$(($(dom_read memory/static-max) + 1024)) ;;
    esac
    rej=$(data_read balloon/rejected-targets) || soak_mismatch "$i" "no rejected-targets" || return 1
    before=$(domain_pages "$DOMID") || soak_mismatch "$i" "no fresh q dump" || return 1
    write_target "$v" || soak_mismatch "$i" "xenstore-write '$v' failed" || return 1
    wait_for 10 "rejected-targets $((rej + 1))" soak_rejected_is $((rej + 1)) \
        || soak_mismatch "$i" "memory/target '$v' not refused: rejected-targets=$(data_read balloon/rejected-targets),want=$((rej + 1))" || return 1
    after=$(domain_pages "$DOMID") || soak_mismatch "$i" "no fresh q dump" || return 1
    [ "$after" = "$before" ] \
        || soak_mismatch "$i" "memory/target '$v' refused but Xen moved: $before -> $after" || return 1
    # Put the effective target back as xl would have it: libxl refuses to mem-set over a
    # memory/target it cannot parse.
    write_target "$(data_read balloon/effective-target-kib)" \
        || soak_mismatch "$i" "cannot restore memory/target" || return 1
}

soak_rejected_is() {
    [ "$(data_read balloon/rejected-targets)" = "$1" ]
}
