# xenci-scenario: hotplug-remove
# xenci-ci: yes
# xenci-ci-vcpus: 2
# xenci-peer: no
# xenci-budget: 300
# xenci-about: hot-add to 768, down to 128 -> hot-added sections removed and their memmap freed, up to 512 -> re-added; after each, Xen's p2m (dom0 foreign-maps the gfns of the hot-add window, above 4 GiB) holds exactly 512 / 0 / 256 MiB of RAM there
scenario_hotplug_remove() {
    create_domain "xenci-hpr-$SUBJECT" 'memory=256' 'maxmem=256'
    wait_ready 90
    require_balloon
    wait_reach 256 10
    balloon_settled_at boot 256
    boot_memmap=$(data_read mm/memmap-bytes)

    tool xl mem-max "$DOMNAME" 1024m || fail "xl mem-max 1024m failed"
    balloon_step beyond 768 120
    check_hotplugged 4
    # Through Xen's eyes: 512 MiB of RAM really populated above 4 GiB, at the start of
    # the hot-add window (dom0 maps the guest's gfns; Xen maps only RAM its p2m holds).
    check_xen_hot_ram added 131072
    added_memmap=$(data_read mm/memmap-bytes)
    [ "$added_memmap" -gt "$boot_memmap" ] \
        || fail "memmap bytes did not grow with the hot-add: $boot_memmap -> $added_memmap"

    # Hot-added memory is given back first; once a section is all Offline it is removed.
    balloon_step down 128 120
    check_hotplugged 0
    check_xen_hot_ram removed 0
    removed_memmap=$(data_read mm/memmap-bytes)
    [ "$removed_memmap" = "$boot_memmap" ] \
        || fail "memmap bytes after hot-remove: $removed_memmap, want the boot amount $boot_memmap"
    info "memmap_bytes boot=$boot_memmap added=$added_memmap removed=$removed_memmap"
    console_has "hotplug: removed" || fail "the guest did not log a hot-remove"

    balloon_step again 512 120
    check_hotplugged 2
    check_xen_hot_ram readded 65536
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
