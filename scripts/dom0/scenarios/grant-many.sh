# xenci-scenario: grant-many
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 300
# xenci-about: a granter of ours gives 16,384 pages (64 MiB); the mapper maps them all (batches of 64, 32 device subsections), verifies, checksum back; census == Xen; unmap gives every device subsection's memmap back
scenario_grant_many() {
    [ "$SUBJECT" = guest ] || skip "the grant scenarios run two guests of ours"
    create_domain xenci-gmany-g 'memory=256' 'maxmem=256' 'extra="loglevel=info grant=give:16384"'
    remember_domain G
    wait_ready 90
    create_domain xenci-gmany-m 'memory=128' 'maxmem=128' 'extra="loglevel=info grant=map"'
    remember_domain M
    wait_ready 90
    wait_for 15 "grant table on d$G_ID" gt_read G grant/refs || fail "granter d$G_ID publishes no data/grant"
    wait_for 15 "grant table on d$M_ID" gt_read M grant/refs || fail "mapper d$M_ID publishes no data/grant"
    memmap0=$(gt_read M mm/memmap-bytes)
    introduce G M
    introduce M G
    wait_pair G 120 granted
    wait_pair M 180 mapped
    expect_gt M grant-test/mapped 16384 "mapper pages mapped"
    expect_gt M grant-test/pattern-errors 0 "mapper pattern errors"
    wait_for 30 "granter verified" gt_read G grant-test/verified \
        || fail "granter d$G_ID never read the mapper's checksum"
    expect_gt G grant-test/verified ok "granter's check of the mapper's checksum"
    check_device_range M 16384
    memmap_mapped=$(gt_read M mm/memmap-bytes)
    use_domain M
    check_census 10 mapped
    use_domain G
    check_census 10 granter
    map_us=$(gt_read M grant-test/map-us)

    say "xenstore-write data/grant-test/command unmap (mapper d$M_ID)"
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" unmap || fail "cannot command the unmap"
    wait_pair M 120 unmapped
    wait_pair G 120 ended
    unmap_us=$(gt_read M grant-test/unmap-us)
    check_device_range M 0
    use_domain M
    check_census 10 unmapped
    memmap_after=$(gt_read M mm/memmap-bytes)
    info "pages=16384 map_us=$map_us unmap_us=$unmap_us memmap_bytes before=$memmap0 mapped=$memmap_mapped after=$memmap_after"
    [ "$memmap_after" -lt "$memmap_mapped" ] || fail "device memmap not given back on unmap: $memmap_mapped -> $memmap_after"
    [ $((memmap_mapped - memmap_after)) -ge $((31 * 8192)) ] \
        || fail "want at least 31 device subsections' memmap back, got $((memmap_mapped - memmap_after)) bytes"
    check_alive
    use_domain G
    check_alive
}
