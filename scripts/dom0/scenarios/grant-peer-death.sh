# xenci-scenario: grant-peer-death
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 180
# xenci-about: xl destroy the granter while 64 of its pages are mapped (mapper paused): Xen shows it as a zombie (dying=2) still pinned 64 times by the mapper; unpaused, the mapper reclaims its slots and stays up, the zombie goes (Xen: absent); then destroy a mapper: the granter's grants are released, frames freed; a peer that dies before sharing: the toolstack withdraws the introduction and the granter ends
scenario_grant_peer_death() {
    [ "$SUBJECT" = guest ] || skip "the grant scenarios run two guests of ours"
    # 1. The granter dies.
    grant_pair xenci-gpd1 64
    wait_pair M 30 mapped
    check_device_range M 64
    check_pattern_nonce
    expect_xen_maps mapped 64 0x00000100
    # The mapper is paused first, so it cannot reclaim before Xen has been asked: the
    # destroyed granter must then be a zombie (dying=2) whose table d$M_ID still pins.
    tool xl pause "$M_NAME" || fail "xl pause $M_NAME failed"
    say "xl destroy $G_NAME (granter d$G_ID) with 64 pages mapped by d$M_ID (paused)"
    tool xl destroy "$G_NAME" || fail "xl destroy $G_NAME failed"
    dying=$(xen_domain_dying "$G_ID") || fail "no fresh xl debug-keys q dump after destroying d$G_ID"
    info "after_destroy xen_dying_d$G_ID=$dying"
    [ "$dying" = 2 ] \
        || fail "after xl destroy, with 64 of its pages mapped by paused d$M_ID, Xen shows d$G_ID as '$dying', want a zombie (dying=2)"
    expect_xen_maps zombie 64 0x00000100
    t0=$(now_cs)
    tool xl unpause "$M_NAME" || fail "xl unpause $M_NAME failed"
    wait_pair M 30 reclaimed
    info "reclaim_secs=$(fmt_cs $(($(now_cs) - t0))) reclaimed=$(gt_read M grant-test/reclaimed) reclaim_failed=$(gt_read M grant-test/reclaim-failed)"
    expect_gt M grant-test/reclaimed 64 "mapper reclaimed pages"
    check_device_range M 0
    # Xen keeps the dead granter as a zombie while its pages are mapped; the last unmap
    # lets it go.
    wait_every 1 20 "zombie d$G_ID gone" zombie_gone "$G_ID" \
        || fail "granter d$G_ID still known to Xen 20s after the mapper reclaimed its pages (dying=$(xen_domain_dying "$G_ID" || echo 'no dump'))"
    expect_xen_maps zombie_gone absent
    use_domain M
    check_alive
    check_census 10 after_reclaim

    # 2. The mapper dies.
    grant_pair xenci-gpd2 64
    wait_pair M 30 mapped
    check_pattern_nonce
    expect_gt G grant/outstanding 64 "granter grants outstanding"
    expect_xen_maps mapped 64 0x00000100
    say "xl destroy $M_NAME (mapper d$M_ID) holding 64 of d$G_ID's pages"
    t0=$(now_cs)
    tool xl destroy "$M_NAME" || fail "xl destroy $M_NAME failed"
    wait_pair G 30 ended
    info "release_secs=$(fmt_cs $(($(now_cs) - t0)))"
    expect_xen_maps after_mapper_death 0
    expect_gt G grant/outstanding 0 "granter grants outstanding"
    expect_gt G grant/deferred 0 "granter grants deferred"
    use_domain G
    check_alive
    check_census 10 after_release

    # 3. A peer that dies before it ever shared anything: only the toolstack knows, and
    #    withdraws the introduction (removes the granter's data/grant-test/peer).
    create_domain xenci-gpd3-g 'memory=128' 'maxmem=128' 'extra="loglevel=info grant=give:16"'
    remember_domain G
    wait_ready 90
    create_domain xenci-gpd3-x 'memory=128' 'maxmem=128'
    remember_domain X
    wait_ready 90
    introduce G X
    wait_pair G 30 granted
    expect_gt G grant/outstanding 16 "granter grants outstanding"
    tool xl destroy "$X_NAME" || fail "xl destroy $X_NAME failed"
    tool xenstore-rm "/local/domain/$G_ID/data/grant-test/peer" || fail "cannot withdraw the introduction"
    wait_pair G 30 ended
    expect_gt G grant/outstanding 0 "granter grants outstanding after the withdrawal"
    use_domain G
    check_alive
}

# Xen no longer lists domain $1 in a fresh `q` dump (a zombie would still be there). A
# failed dump is not "gone".
zombie_gone() {
    [ "$(xen_domain_dying "$1")" = absent ]
}
