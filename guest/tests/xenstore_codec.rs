//! Property tests of the xenstore wire codec: round trips, arbitrary chunking, and
//! garbage that must never panic.

use guest::xen::xenstore::codec::{self, DecodeError, Decoder, Message};
use guest::xen::xenstore::XsError;
use proptest::prelude::*;
use xen_bindings::abi::xs_wire::{
    XsPerm, XsPermKind, XsdSockmsg, XsdSockmsgType, XENSTORE_PAYLOAD_MAX, XSD_ERRORS, XS_TYPE_COUNT,
};

fn any_type() -> impl Strategy<Value = XsdSockmsgType> {
    (0..XS_TYPE_COUNT).prop_filter_map("gap", XsdSockmsgType::from_u32)
}

fn any_message() -> impl Strategy<Value = Message> {
    (
        any_type(),
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(type_, req_id, tx_id, payload)| Message {
            type_,
            req_id,
            tx_id,
            payload,
        })
}

/// Splits `bytes` at the given cut points (taken modulo the length).
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

proptest! {
    #[test]
    fn messages_survive_any_chunking(
        msgs in prop::collection::vec(any_message(), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(codec::encode(m.type_, m.req_id, m.tx_id, &m.payload).unwrap());
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for c in chunks(&stream, &cuts) {
            d.push(&c);
            while let Some(m) = d.next_message() {
                got.push(m.unwrap());
            }
        }
        prop_assert_eq!(got, msgs);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn a_message_is_not_complete_before_its_last_byte(m in any_message()) {
        let bytes = codec::encode(m.type_, m.req_id, m.tx_id, &m.payload).unwrap();
        let mut d = Decoder::new();
        d.push(&bytes[..bytes.len() - 1]);
        prop_assert!(d.next_message().is_none());
        d.push(&bytes[bytes.len() - 1..]);
        prop_assert_eq!(d.next_message(), Some(Ok(m)));
    }

    #[test]
    fn garbage_never_panics_and_errors_are_typed(
        garbage in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut d = Decoder::new();
        for c in chunks(&garbage, &cuts) {
            d.push(&c);
            // Bounded: each Ok/skip consumes >= 16 bytes; a poison error repeats, so stop.
            for _ in 0..300 {
                match d.next_message() {
                    None => break,
                    Some(Ok(m)) => prop_assert!(m.payload.len() <= XENSTORE_PAYLOAD_MAX),
                    Some(Err(DecodeError::UnknownType { type_, .. })) => {
                        prop_assert!(XsdSockmsgType::from_u32(type_).is_none())
                    }
                    Some(Err(DecodeError::Oversized { len, .. })) => {
                        prop_assert!(len as usize > XENSTORE_PAYLOAD_MAX);
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn reply_parsers_never_panic(payload in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = codec::parse_error(&payload);
        let _ = codec::parse_ok(&payload);
        let _ = codec::parse_directory(&payload);
        let _ = codec::parse_perms(&payload);
        let _ = codec::parse_u32(&payload);
        let _ = codec::parse_string(&payload);
        let _ = codec::parse_watch_event(&payload);
    }

    #[test]
    fn oversized_headers_are_refused(len in (XENSTORE_PAYLOAD_MAX as u32 + 1).., req_id: u32) {
        let h = XsdSockmsg { type_: 2, req_id, tx_id: 0, len };
        let mut d = Decoder::new();
        d.push(&h.to_bytes());
        prop_assert_eq!(d.next_message(), Some(Err(DecodeError::Oversized { len, req_id })));
        prop_assert_eq!(XsError::from(DecodeError::Oversized { len, req_id }), XsError::Oversized { len });
    }

    #[test]
    fn unknown_types_are_skipped_whole(type_ in XS_TYPE_COUNT.., len in 0u32..100, req_id: u32) {
        let h = XsdSockmsg { type_, req_id, tx_id: 0, len };
        let mut d = Decoder::new();
        d.push(&h.to_bytes());
        d.push(&vec![0xaa; len as usize]);
        d.push(&codec::encode(XsdSockmsgType::Read, 1, 0, b"v").unwrap());
        prop_assert_eq!(d.next_message(), Some(Err(DecodeError::UnknownType { type_, req_id })));
        prop_assert_eq!(d.next_message().unwrap().unwrap().payload, b"v".to_vec());
    }

    #[test]
    fn directory_lists_round_trip(names in prop::collection::vec("[a-zA-Z0-9_-]{1,12}", 0..20)) {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let payload = codec::strings_payload(&refs);
        prop_assert_eq!(codec::parse_directory(&payload).unwrap(), names);
    }

    #[test]
    fn perms_round_trip(entries in prop::collection::vec((0usize..4, any::<u16>()), 1..8)) {
        let kinds = [XsPermKind::None, XsPermKind::Read, XsPermKind::Write, XsPermKind::Both];
        let perms: Vec<XsPerm> = entries.iter().map(|&(k, d)| XsPerm::new(kinds[k], d)).collect();
        let payload = codec::set_perms_payload("p", &perms).unwrap();
        // set_perms sends "path\0perms..."; get_perms replies with just the perms.
        prop_assert_eq!(codec::parse_perms(&payload[2..]).unwrap(), perms);
    }

    #[test]
    fn tx_ids_round_trip(id: u32) {
        prop_assert_eq!(codec::parse_u32(format!("{id}\0").as_bytes()), Ok(id));
    }
}

#[test]
fn every_xenstored_error_string_maps_to_its_errno() {
    for (errno, s) in XSD_ERRORS {
        let mut p = s.as_bytes().to_vec();
        p.push(0);
        assert_eq!(codec::parse_error(&p), XsError::Xs(errno));
    }
}
