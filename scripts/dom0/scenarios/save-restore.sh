# xenci-scenario: save-restore
# xenci-ci: yes
# xenci-ci-vcpus: 2
# xenci-peer: yes
# xenci-budget: 300
# xenci-about: memory=maxmem=256: xl save (domain gone), xl restore (new domid, running, census == Xen), mem-set 160 and 256 followed, then hot-add beyond boot size
scenario_save_restore() {
    create_domain "xenci-sr-$SUBJECT" 'memory=256' 'maxmem=256'
    wait_ready 90
    [ "$SUBJECT" = guest ] && require_balloon
    wait_reach 256 10
    balloon_settled_at boot 256
    local before
    before=$(xen_tot_pages) || exit 1
    info "before_tot_pages=$before"
    save_and_restore sr
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
