# xenci-scenario: hotplug-add
# xenci-ci: yes
# xenci-ci-vcpus: 2
# xenci-peer: yes
# xenci-budget: 240
# xenci-about: memory=maxmem=256; xl mem-max 1024; xl mem-set 768 -> hot-add, target reached, new sections active+online, census == Xen
scenario_hotplug_add() {
    # The Linux peer's config carries memhp_default_state=online (without it, or a udev
    # rule, Linux leaves hot-added memory offline); ours needs no policy knob.
    create_domain "xenci-hpa-$SUBJECT" 'memory=256' 'maxmem=256'
    wait_ready 90
    [ "$SUBJECT" = guest ] && require_balloon
    wait_reach 256 10
    balloon_settled_at boot 256

    say "xl mem-max $DOMNAME 1024m (raises static-max: the door beyond boot memory)"
    tool xl mem-max "$DOMNAME" 1024m || fail "xl mem-max 1024m failed"
    balloon_step beyond 768 120
    if [ "$SUBJECT" = guest ]; then
        check_hotplugged 4
    fi
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
