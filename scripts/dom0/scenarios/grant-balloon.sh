# xenci-scenario: grant-balloon
# xenci-ci: yes
# xenci-ci-vcpus: 2
# xenci-peer: no
# xenci-budget: 180
# xenci-about: the mapper holds 64 foreign pages while xl mem-set takes it 128 -> 48 -> 128 MiB: foreign pages never ballooned nor counted as RAM, contents intact, census == Xen at each step
scenario_grant_balloon() {
    [ "$SUBJECT" = guest ] || skip "the grant scenarios run two guests of ours"
    # `walk`: the saveable-page walker runs after every settle; it must skip the foreign
    # pages (and our table frames) by state and still agree with the census.
    MAPPER_EXTRA=walk grant_pair xenci-gbal 64
    wait_pair M 30 mapped
    check_pattern_nonce
    expect_xen_maps mapped 64 0x00000100
    use_domain M
    require_balloon
    wait_reach 128 10
    balloon_settled_at boot 128
    check_device_range M 64
    ram_before=$(data_read mm/pages/ram)

    balloon_step down 48 60
    check_device_range M 64
    check_walk 68
    reverify 1
    balloon_step up 128 60
    check_device_range M 64
    check_walk 68
    reverify 2
    # The mappings lived through the balloon going down and up, in Xen's eyes too.
    expect_xen_maps after_balloon 64 0x00000100
    expect_eq "mapper pages/ram back at 128 MiB" "$(data_read mm/pages/ram)" "$ram_before"

    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" unmap || fail "cannot command the unmap"
    wait_pair M 30 unmapped
    wait_pair G 30 ended
    expect_xen_maps unmapped 0
    check_device_range M 0
    check_census 10 unmapped
    check_alive
}

# The walker's last run (after the settle just checked) agreed with the census and
# skipped exactly N foreign pages without reading them.
check_walk() {
    wait_for 10 "walker skipped $1 foreign pages" walk_skipped "$1" \
        || fail "walker: skipped-foreign=$(data_read mm/walk/skipped-foreign), want $1"
    expect_eq "walker mismatches" "$(data_read mm/walk/mismatches)" 0
    info "walk_runs=$(data_read mm/walk/runs) walk_pages=$(data_read mm/walk/pages) walk_skipped_foreign=$1"
}

walk_skipped() {
    [ "$(data_read mm/walk/skipped-foreign)" = "$1" ]
}

# Ask the mapper to read its foreign pages again; they must still hold the pattern.
reverify() {
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" verify || fail "cannot command verify"
    wait_for 15 "re-verification $1" verify_runs_is "$1" \
        || fail "the mapper did not re-verify (verify-runs=$(gt_read M grant-test/verify-runs))"
    expect_gt M grant-test/pattern-errors 0 "pattern errors after ballooning ($1)"
}

verify_runs_is() {
    [ "$(gt_read M grant-test/verify-runs)" = "$1" ]
}
