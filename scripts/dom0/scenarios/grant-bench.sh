# xenci-scenario: grant-bench
# xenci-ci: yes
# xenci-peer: no
# xenci-uses-peer: yes
# xenci-budget: 180
# xenci-about: benchmark (numbers; fails only on errors): grant map/unmap latency under real Xen, 64 pages, per call of 64 and of 1, median of 20 rounds each; ours (PVH guest mapper) beside Linux 6.1 as a PVH domU (the Linux peer through /dev/xen/gntdev) and as dom0 (gntdev)
scenario_grant_bench() {
    [ "$SUBJECT" = guest ] || skip "the grant scenarios run two guests of ours"
    grant_pair xenci-gbench 64
    wait_pair M 30 mapped
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" bench || fail "cannot command bench"
    wait_for 60 "bench" bench_done || fail "no bench result from the mapper"
    err=$(gt_read M grant-test/bench/error) && fail "bench: $err"
    expect_gt M grant-test/pattern-errors 0 "pattern errors after the bench"
    expect_gt M grant-test/mapped 64 "pages mapped after the bench"
    check_device_range M 64
    b64m=$(gt_read M grant-test/bench/batch-64/map-us)
    b64u=$(gt_read M grant-test/bench/batch-64/unmap-us)
    b1m=$(gt_read M grant-test/bench/batch-1/map-us)
    b1u=$(gt_read M grant-test/bench/batch-1/unmap-us)
    info "batch64_map_us=$b64m batch64_unmap_us=$b64u batch64_map_us_per_page=$((b64m / 64)) batch64_unmap_us_per_page=$((b64u / 64)) batch1_map_us=$b1m batch1_unmap_us=$b1u"
    # The part of each call spent inside GNTTABOP_{map,unmap}_grant_ref (Xen's work, the
    # floor for any guest); the rest is ours.
    k=
    for b in 64 1; do
        for w in map unmap; do
            k="$k batch${b}_${w}_xen_us=$(gt_read M "grant-test/bench/batch-$b/$w-xen-us")"
        done
    done
    info "${k# }"
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" unmap || fail "cannot command the unmap"
    wait_pair M 30 unmapped
    wait_pair G 30 ended

    # The baseline: Linux 6.1 (this dom0, through /dev/xen/gntdev) maps the same kind of
    # grants from a granter of ours introduced to dom0, same rounds, same batch sizes.
    linux_baseline

    # The fair baseline: Linux 6.1 as a PVH domU like ours (the Linux peer, through its
    # own /dev/xen/gntdev), mapping a granter of ours' 64 pages.
    linux_domu_baseline
}

# A granter of 64 pages for dom0; dom0 plays the mapper with gntdev-bench (Linux's grant
# mapping) and hands the checksum back like our mapper does.
linux_baseline() {
    local bench=$REPO/target/release/gntdev-bench d0=/local/domain/0/data/grant-test out refs k
    [ -x "$bench" ] || fail "no $bench in the dom0 image"
    create_domain xenci-gbench-g0 'memory=128' 'maxmem=128' 'extra="loglevel=info grant=give:64"'
    remember_domain G
    wait_ready 90
    # Dom0's side of the handshake, readable by the granter.
    tool xenstore-write "$d0/state" wait-grants || fail "cannot write dom0's state"
    for k in "" /state; do tool xenstore-chmod "$d0$k" n0 "r$G_ID" || fail "cannot share $d0$k"; done
    tool xenstore-write "/local/domain/$G_ID/data/grant-test/peer" 0 || fail "cannot introduce dom0"
    wait_pair G 30 granted
    refs=$(gt_read G grant-test/refs)
    out=$("$bench" "$G_ID" "$refs" 20 2>&1) || fail "gntdev-bench: $out"
    say "linux (dom0 gntdev): $out"
    info "linux_$(echo "$out" | sed 's/ checksum=.*//; s/ / linux_/g')"
    tool xenstore-write "$d0/checksum" "${out##*checksum=}" || fail "cannot write dom0's checksum"
    tool xenstore-chmod "$d0/checksum" n0 "r$G_ID"
    tool xenstore-write "$d0/state" mapped
    wait_for 10 "granter checks dom0's checksum" gt_read G grant-test/verified || fail "granter never read dom0's checksum"
    expect_gt G grant-test/verified ok "granter's check of what Linux read"
    tool xenstore-write "$d0/state" unmapped
    wait_pair G 30 ended
    tool xenstore-rm "$d0"
}

# A granter of 64 pages and the Linux peer as its mapper (scripts/peer/init: introduced
# through its data/grant-test/peer, it runs gntdev-bench and publishes the line and the
# checksum); the granter verifies the checksum against its own pattern, which holds a
# nonce only the granter can read.
linux_domu_baseline() {
    local out k
    create_domain xenci-gbench-g1 'memory=128' 'maxmem=128' 'extra="loglevel=info grant=give:64"'
    remember_domain G
    wait_ready 90
    give_grant_nonce
    SUBJECT=linux
    create_domain xenci-gbench-linux
    remember_domain P
    wait_ready 90
    SUBJECT=guest
    introduce G P
    introduce P G
    wait_pair G 30 granted
    wait_pair P 120 mapped
    out=$(gt_read P grant-test/gntdev-bench) || fail "the Linux peer published no gntdev-bench line"
    say "linux (PVH domU gntdev): $out"
    for k in batch64_map_us batch64_unmap_us batch1_map_us batch1_unmap_us; do
        case " $out " in
            *" $k="[0-9]*) ;;
            *) fail "no $k in the Linux peer's gntdev-bench line: $out" ;;
        esac
    done
    wait_for 10 "granter checks the Linux peer's checksum" gt_read G grant-test/verified \
        || fail "granter d$G_ID never read the Linux peer's checksum"
    expect_gt G grant-test/verified ok "granter's check of what the Linux peer read"
    out=$(echo "$out" | sed 's/ checksum=.*//; s/^pages=[0-9]* rounds=[0-9]* //')
    info "linux_domu_$(echo "$out" | sed 's/ / linux_domu_/g') $(per_page linux_domu_ "$out")"
    tool xenstore-write "/local/domain/$P_ID/data/grant-test/command" unmap || fail "cannot command the Linux peer's unmap"
    wait_pair P 30 unmapped
    wait_pair G 30 ended
}

# per_page PREFIX "batch64_map_us=N batch64_unmap_us=N ...": the batch-64 calls per page.
per_page() {
    local m u
    m=$(echo "$2" | sed -n 's/.*batch64_map_us=\([0-9]*\).*/\1/p')
    u=$(echo "$2" | sed -n 's/.*batch64_unmap_us=\([0-9]*\).*/\1/p')
    echo "${1}batch64_map_us_per_page=$((m / 64)) ${1}batch64_unmap_us_per_page=$((u / 64))"
}

bench_done() {
    [ "$(gt_read M grant-test/bench-runs)" = 1 ]
}
