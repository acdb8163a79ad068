# xenci-scenario: save-checkpoint
# xenci-ci: yes
# xenci-ci-vcpus: 2
# xenci-peer: no
# xenci-budget: 300
# xenci-about: xl save -c: the guest carries on in the same domain (cancelled suspend), mem-set still followed; the image restored alongside under another name: both run, census == Xen on both
scenario_save_checkpoint() {
    create_domain "xenci-sc-$SUBJECT" 'memory=256' 'maxmem=256'
    wait_ready 90
    require_balloon
    wait_reach 256 10
    balloon_settled_at boot 256
    local img=$WORK/checkpoint.img t0 first=$DOMID copy=xenci-sc-copy cfg

    t0=$(now_cs)
    tool xl save -c "$DOMNAME" "$img" || fail "xl save -c failed: $(tail -n 2 "$WORK/tools.log" | tr '\n' ' ')"
    info "checkpoint_secs=$(fmt_cs $(($(now_cs) - t0))) image_bytes=$(file_bytes "$img")"
    [ "$(xl domid "$DOMNAME" 2>/dev/null)" = "$first" ] \
        || fail "after xl save -c, $DOMNAME is not domid $first any more"
    check_alive
    # Xen's view first: running in the same domain; then the guest's word on which path.
    expect_data suspend/cancelled 1
    expect_data suspend/resumes 0
    balloon_step after_checkpoint 192 60
    remember_domain ORIG

    cfg=$(renamed_cfg "$copy")
    echo "$copy" >>"$WORK/domains"
    t0=$(now_cs)
    (cd "$REPO" && tool xl restore "$cfg" "$img") \
        || fail "xl restore of the checkpoint as $copy failed: $(tail -n 2 "$WORK/tools.log" | tr '\n' ' ')"
    info "restore_secs=$(fmt_cs $(($(now_cs) - t0)))"
    # dom0's root is RAM: the image must not outlive its use.
    rm -f "$img"
    DOMNAME=$copy
    CONSOLE_LOG=$CONSOLE_DIR/guest-$copy.log
    DOMID=$(xl domid "$copy" 2>/dev/null) || fail "no domain $copy after the restore"
    echo "$DOMID" >"$WORK/domid"
    wait_resumed restore
    # The checkpoint was taken at 256 MiB: the copy resumes there.
    wait_reach 256 30
    balloon_settled_at copy 256
    expect_data suspend/resumes 1
    balloon_step copy_down 128 60

    use_domain ORIG
    check_alive
    check_census 10 original_after
    tool xl destroy "$copy" || fail "xl destroy $copy failed"
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
