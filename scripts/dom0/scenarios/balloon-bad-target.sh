# xenci-scenario: balloon-bad-target
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 180
# xenci-about: garbage in memory/target (empty, abc, -5, 0x4000, 1.5e5, 25 digits, > static-max) is refused and counted, Xen's tot_pages/max_pages unchanged after each; below the floor clamps; a valid mem-set still works
scenario_balloon_bad_target() {
    # Not for the Linux peer: Linux parses a numeric prefix and has no floor; "-5" or
    # "0x4000" make it balloon itself into an OOM panic (DESIGN.md §4).
    create_domain "xenci-badtgt-$SUBJECT"
    wait_ready 45
    require_balloon
    wait_for 30 "balloon done at boot" balloon_settled 262144 \
        || fail "the balloon is not done at 262144 KiB after boot: $(balloon_status)"

    static_max=$(dom_read memory/static-max) || fail "no memory/static-max"
    rejected=$(data_read balloon/rejected-targets) || fail "no data/balloon/rejected-targets"
    # Xen's own count before the garbage: each refusal must leave it exactly as it is.
    xen0=$(domain_pages "$DOMID") || fail "no page counts for d$DOMID in a fresh xl debug-keys q dump"
    info "xen_before tot_pages=${xen0% *} max_pages=${xen0#* }"
    # Refused: the current target stays in force, the refusal is counted and explained.
    for bad in '' abc -5 0x4000 1.5e5 ' 1024' 1234567890123456789012345 $((static_max + 1024)); do
        say "writing memory/target '$bad'"
        write_target "$bad" || fail "xenstore-write memory/target '$bad' failed"
        want=$((rejected + 1))
        if ! wait_for 10 "rejected-targets = $want" rejected_is "$want"; then
            check_alive
            fail "memory/target '$bad': rejected-targets is $(data_read balloon/rejected-targets), want $want ($(balloon_status))"
        fi
        rejected=$want
        check_alive
        err=$(data_read balloon/last-error)
        [ -n "$err" ] || fail "memory/target '$bad' refused but data/balloon/last-error is empty"
        eff=$(data_read balloon/effective-target-kib)
        [ "$eff" = 262144 ] || fail "memory/target '$bad' refused but effective-target-kib changed to $eff"
        xen=$(domain_pages "$DOMID") || fail "memory/target '$bad': no fresh xl debug-keys q dump for d$DOMID"
        [ "$xen" = "$xen0" ] \
            || fail "memory/target '$bad' refused, but Xen's tot_pages max_pages moved: $xen0 -> $xen"
        info "refused '$bad': $err; xen tot_pages=${xen% *} max_pages=${xen#* } unchanged"
    done
    count=$(grep -c 'balloon: rejected memory/target' "$CONSOLE_LOG")
    [ "$count" -ge "$rejected" ] \
        || fail "the log has $count 'balloon: rejected memory/target' lines for $rejected refusals"
    # Nothing moved while the garbage came in.
    check_census 10 garbage

    # Below the floor: taken but clamped, settles at the floor, state clamped, not refused.
    floor=$(data_read balloon/floor-kib) || fail "no data/balloon/floor-kib"
    [ "$floor" -gt 0 ] && [ "$floor" -lt 262144 ] || fail "floor-kib is '$floor' (want 0 < floor < 262144)"
    low=$((floor / 2))
    say "writing memory/target $low (below the floor $floor)"
    write_target "$low" || fail "xenstore-write memory/target $low failed"
    if ! wait_for 60 "clamped at the floor" balloon_settled "$floor" clamped; then
        check_alive
        fail "target $low KiB below the floor $floor KiB: not settled in state clamped at the floor: $(balloon_status)"
    fi
    tk=$(data_read balloon/target-kib)
    [ "$tk" = "$low" ] || fail "after a clamped target: target-kib is $tk, want $low (the request)"
    [ "$(data_read balloon/rejected-targets)" = "$rejected" ] || fail "a below-floor target was counted as rejected"
    info "floor_kib=$floor clamped_from_kib=$low"
    check_census 10 clamped

    # A valid mem-set is still followed.
    balloon_step valid 192 60
    [ "$(data_read balloon/rejected-targets)" = "$rejected" ] || fail "the valid mem-set was counted as rejected"
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}

rejected_is() {
    [ "$(data_read balloon/rejected-targets)" = "$1" ]
}
