# xenci-scenario: grant-map
# xenci-ci: yes
# xenci-ci-vcpus: 2
# xenci-peer: no
# xenci-budget: 120
# xenci-about: two guests of ours: granter grants 64 pages (pattern salted with a dom0 nonce only it can read), mapper maps them (batches of 64), verifies the pattern, checksum back (verified=ok, nonce read from the frames), Xen's `g` dump shows 64 read-only pins by the mapper, unmaps (Xen: none); Foreign pages only while mapped, none Reserved; census == Xen on both
scenario_grant_map() {
    [ "$SUBJECT" = guest ] || skip "the grant scenarios run two guests of ours"
    grant_pair_create xenci-gmap 64
    # Before the mapper knows its peer: it maps as soon as it is introduced, so a check
    # after the introductions races with the map (seen in CI: census read before, count after).
    check_device_range M 0
    introduce G M
    introduce M G
    wait_pair M 30 mapped
    expect_gt M grant-test/mapped 64 "mapper pages mapped"
    expect_gt M grant-test/pattern-errors 0 "mapper pattern errors"
    check_pattern_nonce
    # Xen's own view: d$M_ID holds 64 read-only host mappings of d$G_ID's grants.
    expect_xen_maps mapped 64 0x00000100
    expect_gt G grant/outstanding 64 "granter grants outstanding"
    check_device_range M 64
    use_domain M
    check_census 10 mapped
    use_domain G
    check_census 10 granter
    map_us=$(gt_read M grant-test/map-us)

    say "xenstore-write data/grant-test/command unmap (mapper d$M_ID)"
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" unmap || fail "cannot command the unmap"
    wait_pair M 30 unmapped
    wait_pair G 30 ended
    expect_xen_maps unmapped 0
    unmap_us=$(gt_read M grant-test/unmap-us)
    info "pages=64 map_us=$map_us unmap_us=$unmap_us map_us_per_page=$((map_us / 64)) unmap_us_per_page=$((unmap_us / 64))"
    check_device_range M 0
    expect_gt G grant/outstanding 0 "granter grants outstanding"
    expect_gt G grant/deferred 0 "granter grants deferred"
    use_domain M
    check_census 10 unmapped
    check_alive
    use_domain G
    check_alive
}
