# xenci-scenario: balloon-refused
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 180
# xenci-about: Xen's limit under the target refuses populate: guest backs off (CPU < 20 % of wall), reaches target after xl mem-max
scenario_balloon_refused() {
    create_domain "xenci-refused-$SUBJECT" 'memory=256' 'maxmem=256'
    wait_ready 45
    require_balloon

    # xl mem-set lowers Xen's limit (max_pages) to the new target + 1 MiB; xl mem-max refuses
    # to go below the current target. So: mem-set down, then raise memory/target behind
    # the toolstack's back: Xen's limit stays at 128 MiB + 1 MiB, under the new target.
    balloon_step down 128 60
    limit=$MAX
    say "Xen max_pages is $limit after mem-set 128"
    write_target 196608 || fail "xenstore-write memory/target 196608 failed"

    # Populate fails at the limit: the guest keeps what it got and backs off.
    if ! wait_for 30 "state backing-off" balloon_state_is backing-off; then
        check_alive
        fail "target above Xen's limit: no state backing-off within 30s: $(balloon_status)"
    fi
    err=$(data_read balloon/last-error)
    info "backing_off last_error=$err"

    # Not spinning: over ~6 s the domain uses well under 20 % of one CPU and few hypercalls.
    h0=$(data_read balloon/hypercalls) || fail "no data/balloon/hypercalls"
    c0=$(domain_cpu_secs) t0=$(now_cs)
    sleep 6
    c1=$(domain_cpu_secs) t1=$(now_cs)
    h1=$(data_read balloon/hypercalls) || fail "no data/balloon/hypercalls"
    check_alive
    pct=$(awk -v a="$c0" -v b="$c1" -v cs=$((t1 - t0)) 'BEGIN { printf "%d", (b - a) * 10000 / cs }')
    info "backoff_cpu_pct=$pct cpu_secs=$c0->$c1 wall_secs=$(fmt_cs $((t1 - t0))) hypercalls=$h0->$h1"
    [ "$pct" -lt 20 ] || fail "backing off uses $pct % CPU (xl list Time(s) $c0 -> $c1 over $(fmt_cs $((t1 - t0)))s): spinning?"
    [ $((h1 - h0)) -le 100 ] || fail "backing off made $((h1 - h0)) balloon hypercalls in 6 s: spinning?"
    state=$(data_read balloon/state)
    [ "$state" = backing-off ] || fail "state left backing-off while Xen still refuses: $(balloon_status)"

    # Whatever was gained is kept and accounted for; Xen never went over its limit.
    mem=$(domain_mem "$DOMID") || fail "no page counts from xl debug-keys q"
    set -- $mem
    [ "$1" -le "$2" ] || fail "tot_pages $1 above max_pages $2"
    cur=$(data_read balloon/current-kib)
    [ "$cur" -ge 131072 ] && [ "$cur" -lt 196608 ] \
        || fail "while refused, current-kib is $cur (want 131072 <= current < 196608)"
    info "refused_at tot_pages=$1 max_pages=$2 current_kib=$cur"
    check_census 10 refused

    # On record (DESIGN.md §4): does xl mem-max accept a value below the current target?
    if tool xl mem-max "$DOMNAME" 160m; then
        info "mem_max_below_target=accepted max_pages=$(domain_mem "$DOMID" | cut -d' ' -f2) static_max=$(dom_read memory/static-max)"
    else
        info "mem_max_below_target=refused: $(tail -n 1 "$WORK/tools.log")"
    fi

    # Raise Xen's limit without touching memory/target: the guest's own retry must find
    # out (its backoff is at most 32 s).
    t0=$(now_cs)
    tool xl mem-max "$DOMNAME" 256m || fail "xl mem-max $DOMNAME 256m failed: $(tail -n 1 "$WORK/tools.log")"
    wait_reach 192 60
    info "after_mem_max_secs=$(fmt_cs $(($(now_cs) - t0))) max_pages=$MAX"
    balloon_settled_at raised 192
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}

balloon_state_is() {
    [ "$(data_read balloon/state)" = "$1" ]
}
