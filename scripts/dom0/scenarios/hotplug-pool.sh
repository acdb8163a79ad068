# xenci-scenario: hotplug-pool
# xenci-ci: no
# xenci-peer: yes
# xenci-budget: 240
# xenci-qemu-mb: 4608
# xenci-about: measurement (fails only if the guest dies or never grows): how far the default HAP paging pool (libxl sizes it from maxmem=256) lets the subject go: mem-max 2560, mem-set 2560 (60 s), then mem-set 128 (60 s); reports the MiB reached each way
scenario_hotplug_pool() {
    create_domain "xenci-hpp-$SUBJECT" 'memory=256' 'maxmem=256'
    wait_ready 90
    [ "$SUBJECT" = guest ] && require_balloon
    wait_reach 256 10
    tool xl mem-max "$DOMNAME" 2560m || fail "xl mem-max 2560m failed"
    mem_set 2560
    pool_measure up 2560 60
    [ "$(domain_mib)" -gt 300 ] || fail "never grew with the default pool: $(domain_mib) MiB"
    mem_set 128
    pool_measure down 128 60
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}

# pool_measure LABEL MIB SECONDS: wait up to SECONDS for MIB (or until Xen's count stops
# moving for 10 s); report where it got and how long that took.
pool_measure() {
    local label=$1 mib=$2 secs=$3 last=-1 still=0 t0 now m
    t0=$MEMSET_CS
    while :; do
        check_alive
        m=$(domain_mib)
        now=$(now_cs)
        if [ "$m" = "$last" ]; then still=$((still + 1)); else still=0 last_move=$now; fi
        last=$m
        [ -n "$m" ] && [ "$m" -ge $((mib - 1)) ] && [ "$m" -le "$mib" ] && { last_move=$now; break; }
        [ "$still" -ge 20 ] && break
        [ $((now - t0)) -ge $((secs * 100)) ] && break
        sleep 0.5
    done
    info "${label}_target_mib=$mib ${label}_reached_mib=$m ${label}_secs=$(fmt_cs $((${last_move:-$now} - t0)))${SUBJECT:+ subject=$SUBJECT}"
}
