# xenci-scenario: hotplug-from-small
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 300
# xenci-qemu-mb: 4096
# xenci-about: memory=maxmem=64 (default HAP pool); xl mem-max 2048 + mem-set 2048 -> 64 MiB grows 32x by steps, memmap paid from its own RAM; census == Xen
scenario_hotplug_from_small() {
    create_domain "xenci-hps-$SUBJECT" 'memory=64' 'maxmem=64'
    wait_ready 90
    require_balloon
    wait_reach 64 10
    balloon_settled_at boot 64
    boot_memmap=$(data_read mm/memmap-bytes)

    say "xl mem-max $DOMNAME 2048m"
    tool xl mem-max "$DOMNAME" 2048m || fail "xl mem-max 2048m failed"
    balloon_step grow 2048 240
    check_hotplugged 16
    info "memmap_bytes boot=$boot_memmap grown=$(data_read mm/memmap-bytes) partial_adds=$(data_read hotplug/partial-adds) adds=$(data_read hotplug/adds) storage_frames=$(data_read hotplug/storage/frames) failures=$(data_read hotplug/failures)"
    [ "$(data_read hotplug/failures)" = 0 ] || fail "hot-add failed on the way: $(data_read hotplug/last-error)"
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
