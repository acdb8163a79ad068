# xenci-scenario: save-pod
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 240
# xenci-about: memory=64, maxmem=1024 (populate-on-demand): settled, saved and restored; running, census == Xen, mem-set 96 followed
scenario_save_pod() {
    create_domain "xenci-sp-$SUBJECT" 'memory=64' 'maxmem=1024'
    wait_ready 90
    require_balloon
    wait_reach 64 30
    balloon_settled_at boot 64
    local img=$WORK/pod.img t0
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
    wait_reach 64 30
    balloon_settled_at restored 64
    balloon_step up 96 60
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
