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
    # Xen's own view through xen-dominfo (the balloon waits' poller): shutdown with
    # reason crash in getdomaininfo's flags, and a wait on the crashed domain ends with
    # "crashed" (exit 3) at once, even for the page count it has right now.
    di=$REPO/target/release/xen-dominfo
    line=$("$di" "$DOMID" 2>&1) || fail "xen-dominfo $DOMID: $line"
    flags=$(echo "$line" | sed -n 's/.*flags=\(0x[0-9a-f]*\).*/\1/p')
    [ -n "$flags" ] && [ $(((flags >> 16) & 255)) = 3 ] && [ $((flags & 4)) = 4 ] \
        || fail "getdomaininfo does not say crashed: $line"
    tot=$(echo "$line" | sed -n 's/^tot_pages=\([0-9]*\) .*/\1/p')
    out=$("$di" "$DOMID" --wait-kib $((tot * 4)) --timeout 5)
    rc=$?
    [ "$rc" = 3 ] && case $out in *crashed*) true ;; *) false ;; esac \
        || fail "a wait on the crashed domain did not end as crashed (exit $rc: $out)"
    tool xl destroy "$DOMNAME" || fail "xl destroy of the preserved crashed domain failed"
    # Gone: a wait fails as such (4.17 answers getdomaininfo with the next domain up).
    out=$("$di" "$DOMID" --wait-kib 1024 --timeout 5)
    rc=$?
    [ "$rc" = 3 ] || fail "a wait on the destroyed domain: exit $rc ($out), want 3"
    info "xen_dominfo=$line"
}
