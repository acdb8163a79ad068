# xenci-scenario: grant-peer-death
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 180
# xenci-about: xl destroy the granter while 64 of its pages are mapped: mapper reclaims its slots and stays up, the zombie granter goes; then destroy a mapper: the granter's grants are released, frames freed
scenario_grant_peer_death() {
    [ "$SUBJECT" = guest ] || skip "the grant scenarios run two guests of ours"
    # 1. The granter dies.
    grant_pair xenci-gpd1 64
    wait_pair M 30 mapped
    check_device_range M 64
    say "xl destroy $G_NAME (granter d$G_ID) with 64 pages mapped by d$M_ID"
    t0=$(now_cs)
    tool xl destroy "$G_NAME" || fail "xl destroy $G_NAME failed"
    wait_pair M 30 reclaimed
    info "reclaim_secs=$(fmt_cs $(($(now_cs) - t0))) reclaimed=$(gt_read M grant-test/reclaimed) reclaim_failed=$(gt_read M grant-test/reclaim-failed)"
    expect_eq "mapper reclaimed pages" "$(gt_read M grant-test/reclaimed)" 64
    check_device_range M 0
    # Xen keeps the dead granter as a zombie while its pages are mapped; the last unmap
    # lets it go.
    wait_every 1 20 "zombie d$G_ID gone" zombie_gone "$G_ID" \
        || fail "granter d$G_ID still known to Xen 20s after the mapper reclaimed its pages"
    use_domain M
    check_alive
    check_census 10 after_reclaim

    # 2. The mapper dies.
    grant_pair xenci-gpd2 64
    wait_pair M 30 mapped
    wait_for 10 "granter verified" gt_read G grant-test/verified || fail "granter never saw the checksum"
    expect_eq "granter grants outstanding" "$(gt_read G grant/outstanding)" 64
    say "xl destroy $M_NAME (mapper d$M_ID) holding 64 of d$G_ID's pages"
    t0=$(now_cs)
    tool xl destroy "$M_NAME" || fail "xl destroy $M_NAME failed"
    wait_pair G 30 ended
    info "release_secs=$(fmt_cs $(($(now_cs) - t0)))"
    expect_eq "granter grants outstanding" "$(gt_read G grant/outstanding)" 0
    expect_eq "granter grants deferred" "$(gt_read G grant/deferred)" 0
    use_domain G
    check_alive
    check_census 10 after_release
}

# Xen no longer lists domain $1 in its `q` dump (a zombie would still be there).
zombie_gone() {
    ! domain_mem "$1" >/dev/null
}
