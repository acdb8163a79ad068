# xenci-scenario: selftest
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 180
# xenci-about: extra="selftest": the guest's self-tests end with "Test result: SUCCESS", then poweroff
scenario_selftest() {
    create_domain "xenci-selftest-$SUBJECT" 'extra="selftest"'
    result_seen() { console_has 'Test result: '; }
    deadline=$(($(now_cs) + 150 * 100))
    while ! result_seen; do
        check_not_crashed
        if domain_gone "$DOMNAME"; then
            result_seen && break
            fail "domain ended without a Test result line (reason $(reason_name "$(shutdown_reason)"))"
        fi
        [ "$(now_cs)" -lt "$deadline" ] || fail "no 'Test result:' line within 150s"
        sleep 0.5
    done
    result=$(grep 'Test result: ' "$CONSOLE_LOG" | tail -n 1 | sed 's/.*Test result: *//')
    say "Test result: $result"
    info "result=$result secs=$(fmt_cs $(($(now_cs) - CREATE_CS)))"
    # XTF convention: the result line is the last line, then the guest powers off.
    wait_for 30 "$DOMNAME to power off" domain_gone "$DOMNAME" || fail "no poweroff after the test result"
    wait_for 10 "xl to log the shutdown reason" reason_logged \
        || fail "xl -F logged no shutdown reason within 10s of the domain ending"
    reason=$(shutdown_reason)
    [ "$reason" = 0 ] || fail "after the test result: shutdown reason $(reason_name "$reason"), want poweroff"
    case $result in
        SUCCESS) ;;
        SKIP*) skip "the guest's self-tests reported SKIP" ;;
        *) fail "Test result: $result" ;;
    esac
}
