# xenci-scenario: balloon-scrub
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 300
# xenci-about: memory=maxmem=256, extra="fill=MARKER:64": the guest writes a dom0 marker into 64 MiB, frees it; mem-set 64; a second domain takes nearly all of Xen's free memory and dom0 foreign-maps all its RAM: no frame holds the marker. Negative control, same with balloon-scrub=off: the marker reaches the second domain
scenario_balloon_scrub() {
    local marker scrub
    # Xen 4.17 does not scrub what a live domain frees (free_domheap_pages); frames given
    # back unzeroed go to the next domain that populates, this one included.
    marker=$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')
    for scrub in on off; do
        scrub_round "$marker" "$scrub"
    done
}

# scrub_round MARKER on|off: one guest, filled and ballooned down; then a second domain
# takes (nearly) all of Xen's free memory, the released frames among it, and dom0 reads
# what that domain's frames hold; then the guest goes back up.
scrub_round() {
    local marker=$1 scrub=$2 before bottom released free mem leaked
    create_domain "xenci-scrub-$scrub" 'memory=256' 'maxmem=256' \
        "extra=\"fill=$marker:64 balloon-scrub=$scrub\""
    wait_ready 90
    require_balloon
    wait_for 30 "data/fill/pages" data_read fill/pages || fail "$scrub: no data/fill/pages from the guest"
    [ "$(data_read fill/pages)" = 16384 ] || fail "$scrub: the guest filled $(data_read fill/pages) pages, want 16384"
    wait_reach 256 10
    balloon_settled_at "${scrub}_boot" 256
    # Through Xen's eyes: the guest's RAM holds the marker in the 64 MiB it filled.
    xen_gfns 0 0x10000 --marker "$marker" || fail "$scrub: gfn-probe failed: $(tail -n 1 "$WORK/tools.log")"
    before=$(marked_of "$XEN_GFNS")
    info "${scrub}_filled $XEN_GFNS"
    [ "$before" -ge 16384 ] || fail "$scrub: Xen maps $before frames with the marker, want >= 16384"

    balloon_step "${scrub}_down" 64 60
    xen_gfns 0 0x10000 --marker "$marker" || fail "$scrub: gfn-probe failed: $(tail -n 1 "$WORK/tools.log")"
    bottom=$(marked_of "$XEN_GFNS")
    released=$((before - bottom))
    info "${scrub}_bottom $XEN_GFNS marked_released=$released scrubbed_kib=$(data_read balloon/scrubbed-kib)"
    # The check below means something only if marked frames did go to Xen.
    [ "$released" -ge 8192 ] || fail "$scrub: only $released marked frames were released, want >= 8192"
    remember_domain S

    # The next domain: everything Xen has free but a margin for its own overheads, so
    # the released frames are among what it gets whatever Xen's free lists look like.
    free=$(xl info 2>/dev/null | sed -n 's/^free_memory *: *//p')
    [ -n "$free" ] || fail "$scrub: no free_memory in xl info"
    # At most 3.5 GiB: all of it below the MMIO hole, where the scan below looks.
    mem=$((free - 96))
    [ "$mem" -le 3584 ] || mem=3584
    [ "$mem" -ge 256 ] || fail "$scrub: only $free MiB free in Xen, too little for the next domain"
    create_domain "xenci-scrub-next-$scrub" "memory=$mem" "maxmem=$mem"
    wait_ready 120
    xen_gfns 0 $((mem * 256)) --marker "$marker" \
        || fail "$scrub: gfn-probe failed: $(tail -n 1 "$WORK/tools.log")"
    leaked=$(marked_of "$XEN_GFNS")
    info "${scrub}_next_domain memory_mib=$mem free_mib=$free $XEN_GFNS"
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
    use_domain S
    case $scrub in
        on)
            [ "$leaked" = 0 ] \
                || fail "scrub on: $leaked frames of the next domain hold the marker: the guest gave Xen its data unzeroed"
            [ "$(data_read balloon/scrubbed-kib)" -ge $((released * 4)) ] \
                || fail "scrub on: the guest reports $(data_read balloon/scrubbed-kib) KiB zeroed, fewer than the $((released * 4)) KiB of marked frames released"
            ;;
        off)
            # Negative control: unzeroed, the marker reaches the next domain.
            [ "$leaked" -gt 0 ] \
                || fail "scrub off: no frame of the next domain holds the marker ($XEN_GFNS): this run cannot show that scrubbing matters"
            [ "$(data_read balloon/scrubbed-kib)" = 0 ] || fail "scrub off: the guest zeroed pages anyway"
            ;;
    esac
    balloon_step "${scrub}_up" 256 60
    check_alive
    tool xl destroy "$DOMNAME" || fail "xl destroy $DOMNAME failed"
}

# The marked=N field of a gfn-probe line.
marked_of() {
    echo "$1" | sed -n 's/.* marked=\([0-9]*\).*/\1/p'
}
