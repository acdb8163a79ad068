# xenci-scenario: reboot
# xenci-ci: yes
# xenci-peer: yes
# xenci-budget: 120
# xenci-about: xl reboot restarts the domain (new domid) and it reaches ready again
scenario_reboot() {
    create_domain "xenci-reboot-$SUBJECT"
    wait_ready 60
    first=$DOMID

    t0=$(now_cs)
    tool xl reboot "$DOMNAME" || fail "xl reboot $DOMNAME failed: $(tail -n 1 "$WORK/tools.log")"
    # on_reboot="restart": the xl monitor (xl create -F) recreates it under a new domid.
    new_domid() {
        d=$(xl domid "$DOMNAME" 2>/dev/null) && [ "$d" != "$first" ]
    }
    if ! wait_for 30 "$DOMNAME to come back with a new domid" new_domid; then
        check_not_crashed
        fail "no new domain $DOMNAME within 30s of xl reboot (reason logged: $(reason_name "$(shutdown_reason)"))"
    fi
    DOMID=$(xl domid "$DOMNAME")
    say "rebooted: domid $first -> $DOMID"
    reason=$(shutdown_reason)
    [ "$reason" = 1 ] || fail "shutdown reason is $(reason_name "$reason"), want reboot"
    console_has 'shutdown: reboot' || fail "the log lacks 'shutdown: reboot'"

    CREATE_CS=$t0
    wait_ready 60 2
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
