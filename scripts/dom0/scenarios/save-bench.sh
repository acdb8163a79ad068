# xenci-scenario: save-bench
# xenci-ci: no
# xenci-peer: yes
# xenci-budget: 300
# xenci-about: benchmark: an idle memory=maxmem=256 guest saved and restored (ours with suspend-handback on, then off; then ours at memory=maxmem=32, the floor): save secs, image bytes, restore secs, secs until mem-set 160 is followed; census == Xen after each
scenario_save_bench() {
    local variants=on
    # No floor from the do-nothing kernel: libxl 4.17 suspends a PVH domain only through
    # control/shutdown (it uses xc_domain_shutdown for type HVM alone), which a kernel
    # with no xenstore client never answers — `xl save` times out (measured). The floor
    # is the smallest domain that can be saved: ours with memory=maxmem=32 ("small"),
    # which hands all but a few MiB back — what is left is the toolstack's own cost.
    [ "$SUBJECT" = guest ] && variants="on off small"
    for hb in $variants; do
        if [ "$hb" = small ]; then
            create_domain "xenci-sb-small" 'memory=32' 'maxmem=32' 'extra="loglevel=info"'
            wait_ready 90
            require_balloon
            wait_reach 32 10
            balloon_settled_at "small_boot" 32
            save_and_restore small
            wait_reach 32 30
            balloon_settled_at "small_restored" 32
            tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
            continue
        fi
        if [ "$SUBJECT" = guest ]; then
            create_domain "xenci-sb-$hb" 'memory=256' 'maxmem=256' "extra=\"loglevel=info suspend-handback=$hb\""
        else
            create_domain "xenci-sb-linux" 'memory=256' 'maxmem=256'
        fi
        wait_ready 90
        [ "$SUBJECT" = guest ] && require_balloon
        wait_reach 256 10
        balloon_settled_at "hb_${hb}_boot" 256
        save_and_restore "hb_${hb}"
        wait_reach 256 30
        balloon_settled_at "hb_${hb}_restored" 256
        balloon_step "hb_${hb}_followed" 160 60
        tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
    done
}
