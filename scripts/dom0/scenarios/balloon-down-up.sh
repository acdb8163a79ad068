# xenci-scenario: balloon-down-up
# xenci-ci: yes
# xenci-ci-vcpus: 2
# xenci-peer: yes
# xenci-budget: 240
# xenci-about: memory=maxmem=1024: xl mem-set 256 then 1024; each step within 1 MiB of target in 60 s; census == Xen
scenario_balloon_down_up() {
    # 1 GiB fits: QEMU has 3 GiB, dom0 1 GiB, Xen itself a little.
    create_domain "xenci-bdu-$SUBJECT" 'memory=1024' 'maxmem=1024'
    wait_ready 90
    [ "$SUBJECT" = guest ] && require_balloon
    # No PoD with memory == maxmem: at target from the start.
    wait_reach 1024 10
    balloon_settled_at boot 1024

    balloon_step down 256 60
    balloon_step up 1024 60
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
