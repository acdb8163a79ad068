# xenci-scenario: demo
# xenci-ci: no
# xenci-peer: yes
# xenci-budget: 120
# xenci-about: scripts/demo: boot, show xl list / xenstore, a balloon cycle (256 -> 64 -> 256 MiB, then beyond boot memory to 384 MiB), the log, shut down
scenario_demo() {
    create_domain "xenci-demo-$SUBJECT"
    wait_ready 60
    say "---- xl list"
    xl list "$DOMNAME" 2>&1 | sed "s/^/xenci[$SCENARIO] /" >&3
    info "xl_list=$(xl list "$DOMNAME" | awk 'NR == 2 { print "mem " $3 " MiB, vcpus " $4 ", state " $5 }')"
    if [ "$SUBJECT" = guest ]; then
        say "---- xenstore-ls /local/domain/$DOMID/data"
        xenstore-ls "/local/domain/$DOMID/data" 2>&1 | sed "s/^/xenci[$SCENARIO] /" >&3
    fi
    info "target_kib=$(xenstore-read "/local/domain/$DOMID/memory/target" 2>/dev/null)"
    # A visible balloon cycle: down to a quarter, back up, then beyond boot memory (the
    # guest hot-adds a section once `xl mem-max` opens the door).
    balloon_step balloon_down 64 60
    balloon_step balloon_up 256 60
    tool xl mem-max "$DOMNAME" 512m || fail "xl mem-max 512m failed"
    balloon_step hotplug 384 90
    if [ "$SUBJECT" = guest ]; then
        say "---- xenstore-ls /local/domain/$DOMID/data/balloon"
        xenstore-ls "/local/domain/$DOMID/data/balloon" 2>&1 | sed "s/^/xenci[$SCENARIO] /" >&3
    fi
    say "---- console log ($CONSOLE_LOG)"
    sed "s/^/xenci[$SCENARIO] | /" "$CONSOLE_LOG" >&3
    say "---- xl shutdown"
    t0=$(now_cs)
    tool xl shutdown "$DOMNAME" || fail "xl shutdown failed"
    wait_for 30 "$DOMNAME to power off" domain_gone "$DOMNAME" || fail "still running 30s after xl shutdown"
    wait_for 10 "xl to log the shutdown reason" reason_logged || true
    info "shutdown=$(reason_name "$(shutdown_reason)") after $(fmt_cs $(($(now_cs) - t0)))s"
    say "---- console log after shutdown (last 3 lines)"
    tail -n 3 "$CONSOLE_LOG" | sed "s/^/xenci[$SCENARIO] | /" >&3
}
