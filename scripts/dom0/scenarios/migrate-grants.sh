# xenci-scenario: migrate-grants
# xenci-ci: yes
# xenci-ci-vcpus: 2
# xenci-peer: no
# xenci-budget: 360
# xenci-about: a mapper holding 64 foreign pages is migrated (its slots back to Unpopulated, the granter ends its grants); then a granter whose 64 pages a peer maps is migrated (its frames reclaimed, the mapper reclaims); the migrated granter pairs again; census == Xen throughout
scenario_migrate_grants() {
    [ "$SUBJECT" = guest ] || skip "the grant scenarios run two guests of ours"
    grant_pair xenci-mg 64
    wait_pair M 30 mapped
    expect_gt G grant-test/verified ok "granter's check of the mapper's checksum"

    # 1. The mapper moves: the mappings were its old domain's.
    use_domain M
    migrate_here mapper
    remember_domain M
    check_device_range M 0
    check_census 10 mapper_migrated
    # The old mapper's domain is gone, so the granter sees its peer die and ends.
    wait_pair G 60 ended
    expect_gt G grant/outstanding 0 "granter grants outstanding after the mapper moved"
    expect_gt G grant/deferred 0 "granter grants deferred after the mapper moved"
    use_domain G
    check_census 10 granter_after
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"

    # 2. A granter moves while the (migrated, role restarted) mapper maps its pages.
    create_domain xenci-mg-g2 'memory=128' 'maxmem=128' 'extra="loglevel=info grant=give:64"'
    remember_domain G
    wait_ready 90
    introduce G M
    introduce M G
    wait_pair M 30 mapped
    use_domain G
    migrate_here granter
    remember_domain G
    expect_gt G grant/outstanding 0 "migrated granter: grants of the old domain"
    check_census 10 granter_migrated
    wait_pair M 60 reclaimed
    check_device_range M 0
    use_domain M
    check_census 10 mapper_reclaimed

    # 3. The migrated granter's role started afresh: it pairs with a new mapper.
    create_domain xenci-mg-m3 'memory=128' 'maxmem=128' 'extra="loglevel=info grant=map"'
    remember_domain M
    wait_ready 90
    introduce G M
    introduce M G
    wait_pair M 30 mapped
    expect_gt G grant-test/verified ok "migrated granter's check of the new mapper's checksum"
    use_domain G
    check_census 10 redone
}
