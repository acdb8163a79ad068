# xenci-scenario: boot
# xenci-ci: yes
# xenci-peer: yes
# xenci-budget: 60
# xenci-about: xl create reaches ready; xl list shows it running; log visible in the console log
scenario_boot() {
    create_domain "xenci-boot-$SUBJECT"
    # xl create -> the first line in the PV console log (what `xl console` shows).
    wait_for 45 "a first console line" test -s "$CONSOLE_LOG" || fail "console log $CONSOLE_LOG stays empty"
    info "first_line_secs=$(fmt_cs $(($(now_cs) - CREATE_CS)))"
    wait_ready 45

    state=$(domain_state "$DOMNAME")
    case $state in
        *c* | *d* | '') fail "after ready, xl list shows state '$state' (want running/blocked)" ;;
    esac
    say "xl list state: $state"

    if [ "$SUBJECT" = guest ]; then
        # The guest also publishes readiness in xenstore (README, guest contract).
        ready=$(xenstore-read "/local/domain/$DOMID/data/ready" 2>/dev/null) \
            || fail "xenstore /local/domain/$DOMID/data/ready is missing"
        [ "$ready" = 1 ] || fail "xenstore data/ready is '$ready', want 1"
    fi

    # Xen's exact view of the domain's memory, for comparison with the guest's own count.
    pages=$(domain_pages "$DOMID") || fail "no page counts for domid $DOMID in xl debug-keys q"
    info "xen_tot_pages=${pages% *} xen_max_pages=${pages#* }"

    lines=$(wc -l <"$CONSOLE_LOG")
    [ "$lines" -ge 1 ] || fail "console log $CONSOLE_LOG is empty"
    info "console_lines=$lines"
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
