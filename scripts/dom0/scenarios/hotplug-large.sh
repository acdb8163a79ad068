# xenci-scenario: hotplug-large
# xenci-ci: yes
# xenci-peer: yes
# xenci-budget: 420
# xenci-qemu-mb: 4608
# xenci-about: memory=maxmem=256, shadow_memory=16; xl mem-max 2560 + mem-set 2560 -> hot-add of 18 sections (memmap from its own RAM), census == Xen; down to 128 -> every hot-added section removed, memmap and storage frames back; up to 1024 again. @linux: the same growth with shadow_memory=64 (default pool: see hotplug-pool)
scenario_hotplug_large() {
    # Xen's p2m pool (README "Memory hotplug", hotplug-pool): ours grows at order 9 with
    # the default pool, but every 2 MiB given back splits a superpage (one pool page), so
    # going back down to 128 needs ~5 MiB; Linux populates at order 0 and needs more.
    pool='shadow_memory=16'
    [ "$SUBJECT" = linux ] && pool='shadow_memory=64'
    create_domain "xenci-hpl-$SUBJECT" 'memory=256' 'maxmem=256' "$pool"
    wait_ready 90
    [ "$SUBJECT" = guest ] && require_balloon
    wait_reach 256 10
    balloon_settled_at boot 256
    if [ "$SUBJECT" = guest ]; then
        boot_memmap=$(data_read mm/memmap-bytes)
        boot_frames=$(data_read hotplug/storage/frames)
    fi

    say "xl mem-max $DOMNAME 2560m"
    tool xl mem-max "$DOMNAME" 2560m || fail "xl mem-max 2560m failed"
    balloon_step large 2560 240
    if [ "$SUBJECT" = linux ]; then
        check_alive
        tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
        return 0
    fi
    check_hotplugged 18
    big_memmap=$(data_read mm/memmap-bytes)
    info "memmap_bytes boot=$boot_memmap large=$big_memmap per_hot_gib=$(((big_memmap - boot_memmap) * 8 / 18)) partial_adds=$(data_read hotplug/partial-adds) storage_frames=$(data_read hotplug/storage/frames) failures=$(data_read hotplug/failures)"
    [ "$(data_read hotplug/failures)" = 0 ] || fail "hot-add failed on the way: $(data_read hotplug/last-error)"

    balloon_step down 128 240
    check_hotplugged 0
    removed_memmap=$(data_read mm/memmap-bytes)
    [ "$removed_memmap" = "$boot_memmap" ] \
        || fail "memmap bytes after hot-remove: $removed_memmap, want the boot amount $boot_memmap"
    [ "$(data_read hotplug/storage/frames)" = "$boot_frames" ] \
        || fail "storage frames after every hot-added section went: $(data_read hotplug/storage/frames), at boot $boot_frames"
    info "down memmap_bytes=$removed_memmap frames_returned=$(data_read hotplug/storage/frames-returned) evacuated=$(data_read hotplug/evacuated-pages)"

    balloon_step again 1024 240
    check_hotplugged 6
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
