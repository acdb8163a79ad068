# xenci-scenario: crash
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 60
# xenci-about: extra="panic" makes the guest panic; Xen sees a crash shutdown (kept by on_crash=preserve)
scenario_crash() {
    create_domain "xenci-crash-$SUBJECT" 'extra="panic"'
    crashed_or_gone() {
        case $(domain_state "$DOMNAME") in *c* | '') return 0 ;; esac
        return 1
    }
    wait_for 45 "$DOMNAME to crash" crashed_or_gone \
        || fail "no crash within 45s of xl create with extra=\"panic\" (state '$(domain_state "$DOMNAME")')"
    if domain_gone "$DOMNAME"; then
        fail "domain ended without crashing (shutdown reason: $(reason_name "$(shutdown_reason)"))"
    fi
    # Ready came first (the contract: panic right after ready).
    ready_seen || fail "the guest crashed before its ready marker"
    wait_for 10 "xl to log the shutdown reason" reason_logged \
        || fail "xl -F logged no shutdown reason within 10s of the domain ending"
    reason=$(shutdown_reason)
    [ "$reason" = 3 ] || fail "shutdown reason is $(reason_name "$reason"), want crash"
    msg=$(panic_line) || fail "crashed, but no PANIC line in the console log"
    say "panic message: $msg"
    info "panic=$msg"
    tool xl destroy "$DOMNAME" || fail "xl destroy of the preserved crashed domain failed"
}
