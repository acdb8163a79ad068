# xenci-scenario: grant-rw
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 150
# xenci-about: read-write grants: the mapper's stores through its mappings land in the granter's frames; a read-only grant cannot be mapped writable (Xen refuses) nor written
scenario_grant_rw() {
    [ "$SUBJECT" = guest ] || skip "the grant scenarios run two guests of ours"
    # 1. Read-write: 16 pages, the mapper stamps each, the granter finds the stamps.
    grant_pair xenci-grw1 16:rw
    wait_pair M 30 mapped
    check_pattern_nonce
    # Xen's own view: 16 writable host mappings (pin 0x1 each), not read-only ones.
    expect_xen_maps mapped_rw 16 0x00000001
    expect_gt G grant-test/access rw "granter access"
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" write || fail "cannot command write"
    wait_for 15 "granter sees the stamps" gt_read G grant-test/writes-seen \
        || fail "granter never looked for the mapper's writes (written=$(gt_read M grant-test/written))"
    expect_gt G grant-test/writes-seen 16 "stamped frames the granter sees"
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" unmap || fail "cannot command the unmap"
    wait_pair M 30 unmapped
    wait_pair G 30 ended
    expect_xen_maps unmapped_rw 0

    # 2. Read-only grants; a mapped read-only page refuses `write`.
    grant_pair xenci-grw2 4
    wait_pair M 30 mapped
    expect_xen_maps mapped_ro 4 0x00000100
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" write || fail "cannot command write"
    wait_for 15 "write refused" gt_read M grant-test/command-error || fail "the mapper did not refuse to write read-only pages"
    info "ro_write='$(gt_read M grant-test/command-error)'"
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" verify || fail "cannot command verify"
    wait_for 15 "verify" verified_once || fail "no verify result"
    expect_gt M grant-test/pattern-errors 0 "pattern errors of read-only pages after the refused write"

    # 3. A read-only grant the mapper is told is read-write (dom0 rewrites the granter's
    #    access): Xen refuses the writable map (GNTST_general_error), nothing is mapped.
    grant_pair_create xenci-grw3 4
    introduce G M
    wait_pair G 30 granted
    tool xenstore-write "/local/domain/$G_ID/data/grant-test/access" rw || fail "cannot forge access"
    introduce M G
    wait_for 20 "mapper fails" pair_state_is M failed \
        || fail "mapper mapped read-only grants writable? state=$(gt_read M grant-test/state)"
    info "forged_rw error='$(gt_read M grant-test/error)'"
    case $(gt_read M grant-test/error) in *General*) ;; *) fail "not Xen's refusal: $(gt_read M grant-test/error)" ;; esac
    check_device_range M 0
    expect_xen_maps forged_rw 0
    # The granter sees the mapper failed and ends its grants.
    wait_pair G 30 ended
    use_domain M
    check_alive
}

verified_once() {
    [ "$(gt_read M grant-test/verify-runs)" = 1 ]
}
