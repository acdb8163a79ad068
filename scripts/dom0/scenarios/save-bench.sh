# xenci-scenario: save-bench
# xenci-ci: no
# xenci-peer: yes
# xenci-budget: 300
# xenci-about: benchmark: an idle memory=maxmem=256 guest saved and restored (ours with suspend-handback on, then off): save secs, image bytes, restore secs, secs until mem-set 160 is followed; census == Xen after each; the toolstack's floor: the do-nothing PVH kernel (no PV drivers: libxl suspends it by hypercall at once) saved and restored at 16 and 256 MiB
scenario_save_bench() {
    local variants=on
    [ "$SUBJECT" = guest ] && save_floor
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
        save_and_restore "hb_${hb}"
        wait_reach 256 30
        balloon_settled_at "hb_${hb}_restored" 256
        balloon_step "hb_${hb}_followed" 160 60
        tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
    done
}

# The floor of `xl save` / `xl restore` on this host: the do-nothing kernel answers no
# suspend request (it sets no HVM_PARAM_CALLBACK_IRQ, so libxl suspends it with a
# hypercall, no wait) and holds no state: what remains is the toolstack and the copy of
# its memory. 16 MiB is about our image with hand-back on, 256 MiB what Linux saves.
save_floor() {
    local mib img t0
    for mib in 16 256; do
        create_domain "xenci-sb-nothing-$mib" 'kernel="target/release/nothing"' "memory=$mib" "maxmem=$mib" 'vcpus=1'
        wait_every 0.5 30 "the do-nothing kernel's line" e9_stamp 'nothing: up' \
            || fail "no 'nothing: up' from the do-nothing kernel (d$DOMID) within 30s"
        img=$WORK/nothing-$mib.img
        t0=$(now_cs)
        tool xl -vvv save "$DOMNAME" "$img" \
            || fail "floor: xl save of the do-nothing kernel failed: $(grep -E 'libxl|xc:' "$WORK/tools.log" | tail -n 8 | tr '\n' ' ')"
        info "floor_${mib}_save_secs=$(fmt_cs $(($(now_cs) - t0))) floor_${mib}_image_bytes=$(file_bytes "$img")"
        domain_gone "$DOMNAME" || fail "floor: xl save returned but $DOMNAME still exists"
        t0=$(now_cs)
        tool xl restore "$img" || fail "floor: xl restore failed: $(tail -n 2 "$WORK/tools.log" | tr '\n' ' ')"
        info "floor_${mib}_restore_secs=$(fmt_cs $(($(now_cs) - t0)))"
        rm -f "$img"
        tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
    done
}
