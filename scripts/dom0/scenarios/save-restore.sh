# xenci-scenario: save-restore
# xenci-ci: yes
# xenci-peer: yes
# xenci-budget: 300
# xenci-about: memory=maxmem=256: xl save (domain gone), xl restore (new domid, running, census == Xen), mem-set 160 and 256 followed, then hot-add beyond boot size
scenario_save_restore() {
    create_domain "xenci-sr-$SUBJECT" 'memory=256' 'maxmem=256'
    wait_ready 90
    [ "$SUBJECT" = guest ] && require_balloon
    wait_reach 256 10
    balloon_settled_at boot 256
    local before img=$WORK/save.img t0
    before=$(xen_tot_pages) || exit 1
    info "before_tot_pages=$before"

    t0=$(now_cs)
    tool xl save "$DOMNAME" "$img" || fail "xl save failed: $(tail -n 2 "$WORK/tools.log" | tr '\n' ' ')"
    info "save_secs=$(fmt_cs $(($(now_cs) - t0))) image_bytes=$(file_bytes "$img")"
    domain_gone "$DOMNAME" || fail "xl save returned but $DOMNAME still exists"

    t0=$(now_cs)
    tool xl restore "$img" || fail "xl restore failed: $(tail -n 2 "$WORK/tools.log" | tr '\n' ' ')"
    info "restore_secs=$(fmt_cs $(($(now_cs) - t0)))"
    # dom0's root is RAM: the image must not outlive its use.
    rm -f "$img"
    adopt_new_domid restore
    wait_resumed restore
    wait_reach 256 30
    balloon_settled_at restored 256
    [ "$SUBJECT" = guest ] && expect_data suspend/resumes 1

    balloon_step down 160 60
    balloon_step up 256 60
    say "xl mem-max $DOMNAME 512m; hot-add after the restore"
    tool xl mem-max "$DOMNAME" 512m || fail "xl mem-max 512m failed"
    balloon_step beyond 384 120
    [ "$SUBJECT" = guest ] && check_hotplugged 1
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
