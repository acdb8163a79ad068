# xenci-scenario: hotplug-fault
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 240
# xenci-about: extra="hotplug-fail=2": the first hot-adds' memmap allocation fails -> rolled back, reported, retried, target reached
scenario_hotplug_fault() {
    create_domain "xenci-hpf-$SUBJECT" 'memory=256' 'maxmem=256' 'extra="hotplug-fail=2"'
    wait_ready 90
    require_balloon
    wait_reach 256 10
    balloon_settled_at boot 256
    tool xl mem-max "$DOMNAME" 1024m || fail "xl mem-max 1024m failed"
    say "xl mem-set $DOMNAME 512m: the first two hot-adds must fail and be rolled back"
    mem_set 512
    hotplug_failed() { [ "$(data_read hotplug/failures)" -ge 1 ] 2>/dev/null; }
    wait_for 30 "a failed hot-add reported in data/hotplug/failures" hotplug_failed \
        || fail "no hot-add failure reported: $(xenstore-ls "/local/domain/$DOMID/data/hotplug" 2>&1 | tr '\n' ' ')"
    info "reported last_error=$(data_read hotplug/last-error)"
    # Rolled back: no hot-added section is present while the add is failing.
    [ "$(data_read mm/sections/hotplug-ram/present)" = 0 ] \
        || fail "a half-added section is present after the failure"
    # The retry (backoff 1 s, 2 s) succeeds once the switch is used up.
    wait_reach 512 90 "$MEMSET_CS"
    info "reached_secs=$(fmt_cs "$REACH_CS") failures=$(data_read hotplug/failures)"
    balloon_settled_at retried 512
    # 256 -> 512 MiB: two 128 MiB sections.
    check_hotplugged 2
    [ "$(data_read hotplug/failures)" = 2 ] \
        || fail "hotplug-fail=2 should have failed exactly two hot-adds, data/hotplug/failures says $(data_read hotplug/failures)"
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
