# xenci-scenario: migrate-local
# xenci-ci: yes
# xenci-peer: yes
# xenci-budget: 420
# xenci-about: memory=maxmem=128: xl migrate -s '' DOM 'xl migrate-receive' ten times; after each: running, new domid, census == Xen, one mem-set followed
scenario_migrate_local() {
    create_domain "xenci-ml-$SUBJECT" 'memory=128' 'maxmem=128'
    wait_ready 90
    [ "$SUBJECT" = guest ] && require_balloon
    wait_reach 128 10
    balloon_settled_at boot 128
    local round=1 total=0 mib
    while [ "$round" -le "${MIGRATE_ROUNDS:-10}" ]; do
        migrate_here "round${round}"
        total=$((total + MIGRATE_CS))
        # Alternate the target so each round moves memory.
        mib=$((round % 2 == 1 ? 96 : 128))
        balloon_step "round${round}" "$mib" 60
        round=$((round + 1))
    done
    info "migrate_mean_secs=$(fmt_cs $((total / ${MIGRATE_ROUNDS:-10})))"
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
