# xenci-scenario: grant-bad-input
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 150
# xenci-about: garbage in the handshake under real Xen: reserved refs, refs never granted (Xen refuses the map), mapper -> state failed with Xen's reason, nothing mapped; bad peer domids refused and counted, nothing granted; guests stay up
scenario_grant_bad_input() {
    [ "$SUBJECT" = guest ] || skip "the grant scenarios run two guests of ours"
    # F: one of ours without a role; dom0 forges a granter's values in its data/.
    create_domain xenci-gbad-f 'memory=128' 'maxmem=128'
    remember_domain F
    wait_ready 90

    # 1. Reserved refs: refused by the mapper's parser, no hypercall.
    bad_mapper xenci-gbad-m1 "1 2 3"
    case $(gt_read M grant-test/error) in *BadRef*) ;; *) fail "mapper error does not name the bad ref: $(gt_read M grant-test/error)" ;; esac
    # 2. Well-formed refs F never granted: Xen refuses every map (GNTST_general_error).
    bad_mapper xenci-gbad-m2 "8 9 10"
    case $(gt_read M grant-test/error) in *General*) ;; *) fail "mapper error is not Xen's refusal: $(gt_read M grant-test/error)" ;; esac
    expect_gt M grant/map-failures 3 "mapper map failures"

    # 3. A granter told garbage as its peer.
    create_domain xenci-gbad-g 'memory=128' 'maxmem=128' 'extra="loglevel=info grant=give:8"'
    remember_domain G
    wait_ready 90
    n=0
    for bad in abc 00 "$G_ID" 07 32752 ''; do
        n=$((n + 1))
        tool xenstore-write -- "/local/domain/$G_ID/data/grant-test/peer" "$bad"
        wait_for 10 "peer '$bad' rejected" rejected_peers_is "$n" \
            || fail "granter did not reject peer '$bad' (rejected-peers=$(gt_read G grant-test/rejected-peers))"
    done
    info "granter last peer-error='$(gt_read G grant-test/peer-error)'"
    # Refused and kept waiting: nothing allocated or granted.
    pair_state_is G granted && fail "granter granted to a garbage peer"
    expect_gt G grant/outstanding 0 "granter grants outstanding"
    use_domain G
    check_census 10 granter
    check_alive
}

rejected_peers_is() {
    [ "$(gt_read G grant-test/rejected-peers)" = "$1" ]
}

# bad_mapper NAME REFS: a mapper introduced to F, which "publishes" REFS; the mapper must
# end in state failed, hold nothing, and stay up.
bad_mapper() {
    create_domain "$1" 'memory=128' 'maxmem=128' 'extra="loglevel=info grant=map"'
    remember_domain M
    wait_ready 90
    forge_grants "$2"
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/peer" "$F_ID" || fail "cannot write the peer"
    wait_for 20 "mapper fails" pair_state_is M failed \
        || fail "mapper d$M_ID did not fail on refs '$2': state=$(gt_read M grant-test/state) error=$(gt_read M grant-test/error)"
    info "$1 error='$(gt_read M grant-test/error)'"
    check_device_range M 0
    check_alive
}

# F's data/grant-test as a granter would publish it, readable by the mapper M.
forge_grants() {
    local d=/local/domain/$F_ID/data/grant-test k
    tool xenstore-rm "$d"
    tool xenstore-write "$d/refs" "$1" "$d/evtchn" 0 "$d/state" granted || fail "cannot forge F's grants"
    for k in "" /refs /evtchn /state; do
        tool xenstore-chmod "$d$k" "n$F_ID" "r$M_ID" || fail "cannot share $d$k"
    done
}
