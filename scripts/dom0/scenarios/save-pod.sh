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
    save_and_restore pod
    wait_reach 64 30
    balloon_settled_at restored 64
    balloon_step up 96 60
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
