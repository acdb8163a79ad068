# xenci-scenario: save-bench
# xenci-ci: no
# xenci-peer: yes
# xenci-budget: 300
# xenci-about: benchmark: an idle memory=maxmem=256 guest saved and restored (ours with suspend-handback on, then off): save secs, image bytes, restore secs, secs until mem-set 160 is followed; census == Xen after each
scenario_save_bench() {
    local variants=on
    [ "$SUBJECT" = guest ] && variants="on off"
    for hb in $variants; do
        if [ "$SUBJECT" = guest ]; then
            create_domain "xenci-sb-$hb" 'memory=256' 'maxmem=256' "extra=\"loglevel=info suspend-handback=$hb\""
        else
            create_domain "xenci-sb-linux" 'memory=256' 'maxmem=256'
        fi
        wait_ready 90
        [ "$SUBJECT" = guest ] && require_balloon
        wait_reach 256 10
        balloon_settled_at "hb_${hb}_boot" 256
        save_restore_once "hb_${hb}"
        balloon_step "hb_${hb}_followed" 160 60
        tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
    done
}

# save_restore_once LABEL: xl save + xl restore of the domain under test, timed; the
# image size; ready (ours) and census == Xen (ours) afterwards.
save_restore_once() {
    local label=$1 img=$WORK/bench.img t0
    t0=$(now_cs)
    tool xl save "$DOMNAME" "$img" || fail "$label: xl save failed: $(tail -n 2 "$WORK/tools.log" | tr '\n' ' ')"
    info "${label}_save_secs=$(fmt_cs $(($(now_cs) - t0))) ${label}_image_bytes=$(file_bytes "$img")"
    t0=$(now_cs)
    tool xl restore "$img" || fail "$label: xl restore failed: $(tail -n 2 "$WORK/tools.log" | tr '\n' ' ')"
    info "${label}_restore_secs=$(fmt_cs $(($(now_cs) - t0)))"
    rm -f "$img"
    adopt_new_domid "$label"
    wait_resumed "$label"
    wait_reach 256 30
    balloon_settled_at "${label}_restored" 256
}
