# xenci-scenario: demo
# xenci-ci: no
# xenci-peer: yes
# xenci-budget: 180
# xenci-about: scripts/demo: boot, show xl list / xenstore, a balloon cycle (256 -> 64 -> 256 MiB, then beyond boot memory to 384 MiB), the log, shut down; then two guests exchange 64 pages through grant tables
scenario_demo() {
    create_domain "xenci-demo-$SUBJECT"
    wait_ready 60
    say "---- xl list"
    xl list "$DOMNAME" 2>&1 | sed "s/^/xenci[$SCENARIO] /" >&3
    info "xl_list=$(xl list "$DOMNAME" | awk 'NR == 2 { print "mem " $3 " MiB, vcpus " $4 ", state " $5 }')"
    if [ "$SUBJECT" = guest ]; then
        say "---- xenstore-ls /local/domain/$DOMID/data"
        xenstore-ls "/local/domain/$DOMID/data" 2>&1 | sed "s/^/xenci[$SCENARIO] /" >&3
    fi
    info "target_kib=$(xenstore-read "/local/domain/$DOMID/memory/target" 2>/dev/null)"
    say "---- xenguest-stat $DOMNAME (after boot)"
    show_stat "$DOMNAME" || fail "xenguest-stat $DOMNAME failed: $(tail -n 1 "$WORK/stat.out")"
    # A visible balloon cycle: down to a quarter, back up, then beyond boot memory (the
    # guest hot-adds a section once `xl mem-max` opens the door).
    balloon_step balloon_down 64 60
    balloon_step balloon_up 256 60
    tool xl mem-max "$DOMNAME" 512m || fail "xl mem-max 512m failed"
    balloon_step hotplug 384 90
    if [ "$SUBJECT" = guest ]; then
        say "---- xenstore-ls /local/domain/$DOMID/data/balloon"
        xenstore-ls "/local/domain/$DOMID/data/balloon" 2>&1 | sed "s/^/xenci[$SCENARIO] /" >&3
    fi
    say "---- xenguest-stat $DOMNAME (after the hot-add to 384 MiB)"
    show_stat "$DOMNAME" || fail "xenguest-stat $DOMNAME failed: $(tail -n 1 "$WORK/stat.out")"
    say "---- console log ($CONSOLE_LOG)"
    sed "s/^/xenci[$SCENARIO] | /" "$CONSOLE_LOG" >&3
    say "---- xl shutdown"
    t0=$(now_cs)
    tool xl shutdown "$DOMNAME" || fail "xl shutdown failed"
    wait_for 30 "$DOMNAME to power off" domain_gone "$DOMNAME" || fail "still running 30s after xl shutdown"
    wait_for 10 "xl to log the shutdown reason" reason_logged \
        || fail "xl -F logged no shutdown reason within 10s of the domain ending"
    info "shutdown=$(reason_name "$(shutdown_reason)") after $(fmt_cs $(($(now_cs) - t0)))s"
    # The tool on a domain that is gone: a clear error and exit status 1.
    say "---- xenguest-stat $DOMNAME (gone)"
    rc=0
    show_stat "$DOMNAME" || rc=$?
    [ "$rc" = 1 ] || fail "xenguest-stat on a destroyed domain: exit status $rc, want 1"
    say "---- console log after shutdown (last 3 lines)"
    tail -n 3 "$CONSOLE_LOG" | sed "s/^/xenci[$SCENARIO] | /" >&3
    [ "$SUBJECT" = guest ] && demo_grants
}

# Two more guests of ours: a granter shares 64 pages, a mapper maps them into its device
# range, checks them, and lets go.
demo_grants() {
    say "---- grant tables: xenci-demo-gnt-g grants 64 pages, xenci-demo-gnt-m maps them"
    grant_pair xenci-demo-gnt 64
    wait_pair M 30 mapped
    wait_for 10 "granter verified" gt_read G grant-test/verified || fail "granter never saw the checksum"
    say "---- xenstore-ls /local/domain/$M_ID/data/grant (the mapper)"
    xenstore-ls "/local/domain/$M_ID/data/grant" 2>&1 | sed "s/^/xenci[$SCENARIO] /" >&3
    # The census is republished a moment after the state: wait until it shows the
    # mapping, so the count reported is the one during the map.
    wait_for 10 "mapper census with 64 foreign pages" device_census_is M 64 \
        || fail "mapper census never showed the 64 mapped pages: pages/device/foreign=$(gt_read M mm/pages/device/foreign)"
    say "---- xenguest-stat $M_NAME (the mapper, pages mapped)"
    show_stat "$M_NAME" || fail "xenguest-stat $M_NAME failed: $(tail -n 1 "$WORK/stat.out")"
    info "grant_map=64 pages in $(gt_read M grant-test/map-us) us, checksum verified by the granter: $(gt_read G grant-test/verified), mapper pages/device/foreign during the map=$(gt_read M mm/pages/device/foreign) ($(gt_read M grant/table-frames) table frames + 64)"
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" unmap || fail "cannot command the unmap"
    wait_pair M 30 unmapped
    wait_pair G 30 ended
    wait_for 10 "mapper census without foreign pages" device_census_is M 0 || true
    say "---- the two logs (grant lines)"
    grep -h 'grant' "$G_LOG" | sed "s/^/xenci[$SCENARIO] granter | /" >&3
    grep -h 'grant' "$M_LOG" | sed "s/^/xenci[$SCENARIO] mapper  | /" >&3
    info "grant_end=unmapped in $(gt_read M grant-test/unmap-us) us; granter $(gt_read G grant-test/state), $(gt_read G grant/outstanding) grants outstanding; mapper pages/device/foreign after the unmap=$(gt_read M mm/pages/device/foreign)"
}
