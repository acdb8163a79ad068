# xenci-scenario: grant-bench
# xenci-ci: yes
# xenci-peer: no
# xenci-budget: 120
# xenci-about: benchmark (numbers; fails only on errors): grant map/unmap latency under real Xen, 64 pages, per call of 64 and of 1, 20 rounds each; ours (PVH guest mapper) beside Linux 6.1 (dom0 through /dev/xen/gntdev)
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
    tool xenstore-write "/local/domain/$M_ID/data/grant-test/command" unmap || fail "cannot command the unmap"
    wait_pair M 30 unmapped
    wait_pair G 30 ended

    # The baseline: Linux 6.1 (this dom0, through /dev/xen/gntdev) maps the same kind of
    # grants from a granter of ours introduced to dom0, same rounds, same batch sizes.
    linux_baseline
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

bench_done() {
    [ "$(gt_read M grant-test/bench-runs)" = 1 ]
}
