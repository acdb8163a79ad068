# xenci-scenario: hotplug-bench
# xenci-ci: no
# xenci-peer: yes
# xenci-budget: 300
# xenci-about: benchmark: boot 256 MiB, mem-max 1024, then 256 -> 768 (hot-add) -> 192 -> 768 MiB: seconds from xl mem-set to Xen's tot_pages within 1 MiB; ours also its own in/outside-hypercall split per step and each hot-add's CPU time by phase
scenario_hotplug_bench() {
    create_domain "xenci-hb-$SUBJECT" 'memory=256' 'maxmem=256'
    wait_ready 90
    [ "$SUBJECT" = guest ] && require_balloon
    wait_reach 256 30
    tool xl mem-max "$DOMNAME" 1024m || fail "xl mem-max $DOMNAME 1024m failed"
    HOTPLUG_ADDS=0
    for step in add:768 down:192 readd:768; do
        label=${step%:*}
        mib=${step#*:}
        balloon_step "$label" "$mib" 120
        [ "$SUBJECT" = guest ] || continue
        guest_step_split "$label" "$mib"
        hotplug_add_split "$label"
    done
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
