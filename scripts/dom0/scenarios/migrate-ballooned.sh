# xenci-scenario: migrate-ballooned
# xenci-ci: yes
# xenci-ci-vcpus: 2
# xenci-peer: no
# xenci-budget: 300
# xenci-about: memory=maxmem=256 ballooned to 64 and migrated (Xen's tot_pages identical once settled, holes still holes); then hot-added to 384 and migrated (tot_pages identical, the section still there)
scenario_migrate_ballooned() {
    create_domain "xenci-mb-$SUBJECT" 'memory=256' 'maxmem=256'
    wait_ready 90
    require_balloon
    wait_reach 256 10
    balloon_settled_at boot 256
    balloon_step quarter 64 60
    migrate_same quarter 64 "$(data_read mm/pages/boot-ram/offline)"

    tool xl mem-max "$DOMNAME" 512m || fail "xl mem-max 512m failed"
    balloon_step beyond 384 120
    check_hotplugged 1
    migrate_same beyond 384 "$(data_read mm/pages/boot-ram/offline)"
    check_hotplugged 1
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}

# migrate_same LABEL MIB OFFLINE: migrate once; Xen's tot_pages on the receiver must equal
# the sender's, and the guest's boot-RAM holes (Offline pages) must be the same OFFLINE.
migrate_same() {
    local label=$1 mib=$2 offline=$3 before after
    before=$(xen_tot_pages) || exit 1
    migrate_here "$label"
    # Settled again: the memory handed back before the suspend is taken again first.
    balloon_settled_at "${label}_migrated" "$mib"
    after=$(xen_tot_pages) || exit 1
    [ "$after" = "$before" ] || fail "$label: Xen's tot_pages $before before the migration, $after after"
    info "${label}_tot_pages_before=$before after=$after released_again_pages=$(data_read suspend/released-again-pages)"
    expect_data mm/pages/boot-ram/offline "$offline"
}
