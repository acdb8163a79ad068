# xenci-scenario: mm-boot
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 60
# xenci-about: memory==maxmem: census has 0 Offline pages, Xen's exact tot_pages == data/mm/expected-tot-pages, layout logged
scenario_mm_boot() {
    create_domain "xenci-mm-boot-$SUBJECT" 'memory=256' 'maxmem=256'
    wait_ready 45

    # memory == maxmem: no PoD, nothing ballooned out, so no page may be Offline.
    wait_for 10 "data/mm/pages/boot-ram/offline" data_read mm/pages/boot-ram/offline \
        || fail "no data/mm census in xenstore (data/mm/pages/boot-ram/offline missing)"
    offline=$(data_read mm/pages/boot-ram/offline)
    [ "$offline" = 0 ] || fail "census: $offline Offline boot-RAM pages with memory == maxmem (want 0)"
    for kind in boot-ram hotplug-ram device; do
        n=$(data_read "mm/pages/$kind/offline") || continue
        [ "$n" = 0 ] || fail "census: pages/$kind/offline is $n (want 0)"
    done

    # RAM = Reserved-RAM + Free + Allocated; it must cover the whole 256 MiB.
    ram=$(data_read mm/pages/ram) || fail "data/mm/pages/ram missing"
    [ "$ram" = 65536 ] || fail "census: pages/ram is $ram, want 65536 (memory=256 MiB)"
    sum=0
    for st in reserved free allocated; do
        n=$(data_read "mm/pages/boot-ram/$st") || fail "data/mm/pages/boot-ram/$st missing"
        sum=$((sum + n))
    done
    info "boot_ram_reserved=$(data_read mm/pages/boot-ram/reserved) free=$(data_read mm/pages/boot-ram/free) allocated=$(data_read mm/pages/boot-ram/allocated)"
    [ "$sum" = "$ram" ] || fail "census: boot-ram reserved+free+allocated = $sum, pages/ram = $ram"

    # Xen's exact tot_pages (xl debug-keys q) against the guest's own prediction.
    check_census 10 census
    exp=$(data_read mm/expected-tot-pages)
    info "pages_ram=$ram expected_tot_pages=$exp xen_minus_ram=$CENSUS_RAW_DIFF (special pages + ACPI + non-RAM memmap - shared_info)"

    info "sections_present=$(data_read mm/sections/present) sections_online=$(data_read mm/sections/online) subsections_present=$(data_read mm/subsections/present) subsections_active=$(data_read mm/subsections/active) memmap_bytes=$(data_read mm/memmap-bytes)"

    # The layout in the log: one line per section with its kind, flags and subsection maps.
    grep -q 'mm: section 0x0 \[.*boot-ram online present .* active ' "$CONSOLE_LOG" \
        || fail "the log has no 'mm: section 0x0 [...] boot-ram online present ... active ...' line"
    # The layout is logged at boot, before the grant table adds its device section.
    nsec=$(grep -c 'mm: section 0x[0-9a-f]* \[' "$CONSOLE_LOG")
    present=$(data_read mm/sections/boot-ram/present)
    [ "$nsec" = "$present" ] || fail "the log shows $nsec section lines, the census $present present boot-ram sections"
    device=$(data_read mm/sections/device/present)
    [ $((present + device)) = "$(data_read mm/sections/present)" ] \
        || fail "sections present $(data_read mm/sections/present) != boot-ram $present + device $device"
    info "sections boot_ram=$present device=$device (the grant table's frames)"
    grep 'mm: section 0x' "$CONSOLE_LOG" | sed "s/^/xenci[$SCENARIO] layout: /" >&3
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}
