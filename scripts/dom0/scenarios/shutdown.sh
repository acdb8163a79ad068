# xenci-scenario: shutdown
# xenci-ci: yes
# xenci-peer: yes
# xenci-budget: 90
# xenci-about: xl shutdown powers the domain off cleanly (gone, reason poweroff, no crash)
scenario_shutdown() {
    create_domain "xenci-shutdown-$SUBJECT"
    wait_ready 60

    t0=$(now_cs)
    tool xl shutdown "$DOMNAME" || fail "xl shutdown $DOMNAME failed: $(tail -n 1 "$WORK/tools.log")"
    if ! wait_for 30 "$DOMNAME to disappear" domain_gone "$DOMNAME"; then
        check_not_crashed
        fail "domain still exists 30s after xl shutdown (state '$(domain_state "$DOMNAME")')"
    fi
    info "shutdown_secs=$(fmt_cs $(($(now_cs) - t0)))"

    # The xl monitor logs the reason just before it destroys the domain; give it a moment.
    wait_for 10 "xl to log the shutdown reason" reason_logged \
        || fail "xl -F logged no shutdown reason within 10s of the domain ending"
    reason=$(shutdown_reason)
    [ "$reason" = 0 ] || fail "shutdown reason is $(reason_name "$reason"), want poweroff"
    console_has 'shutdown: poweroff' || fail "the log lacks 'shutdown: poweroff'"
    if panic_line >/dev/null; then fail "a panic during shutdown: $(panic_line)"; fi
}
