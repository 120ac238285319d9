//! Unit tests of [`super`].

use super::*;

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The hex below also appears in docs/FORMAT.md; change both or neither.
#[test]
fn golden_segment_header() {
    let h = SegmentHeader {
        codec_id: 1,
        first_seq: 1,
        prev_last_seq: 0,
    };
    let b = h.encode();
    assert_eq!(
        hex(&b),
        "89 57 53 4b 0d 0a 1a 0a 01 00 00 00 01 00 00 00 01 00 00 00 00 00 00 00 \
         00 00 00 00 00 00 00 00 00 00 00 00 9f d0 9d cc"
    );
    assert_eq!(SegmentHeader::decode(&b), HeaderStatus::Valid(h));
}

/// The hex below also appears in docs/FORMAT.md; change both or neither.
#[test]
fn golden_frame() {
    let mut out = Vec::new();
    encode_frame(&mut out, 7, b"hi");
    assert_eq!(
        hex(&out),
        "02 00 00 00 40 9e 43 4b 07 00 00 00 00 00 00 00 68 69"
    );
    assert_eq!(
        decode_frame(&out, 16),
        FrameStatus::Valid {
            seq: 7,
            payload_len: 2
        }
    );
}

/// The hex below also appears in docs/FORMAT.md; change both or neither.
#[test]
fn golden_register_slot() {
    let s = RegisterSlot {
        kind: RegisterKind::Cursor,
        generation: 3,
        value: 42,
    };
    let b = s.encode();
    assert_eq!(
        hex(&b),
        "57 53 52 47 01 00 01 00 03 00 00 00 00 00 00 00 2a 00 00 00 00 00 00 00 \
         00 00 00 00 78 50 07 78"
    );
    assert_eq!(RegisterSlot::decode(&b, RegisterKind::Cursor), Ok(s));
    assert_eq!(
        RegisterSlot::decode(&b, RegisterKind::SeqLease),
        Err(SlotError::Corrupt(CorruptionKind::WrongRegister))
    );
}

#[test]
fn every_header_bit_flip_is_detected() {
    let b = SegmentHeader {
        codec_id: 9,
        first_seq: 1234,
        prev_last_seq: 1233,
    }
    .encode();
    for i in 0..b.len() * 8 {
        let mut c = b;
        c[i / 8] ^= 1 << (i % 8);
        assert!(
            !matches!(SegmentHeader::decode(&c), HeaderStatus::Valid(_)),
            "flip of bit {i} went unnoticed"
        );
    }
}

#[test]
fn unknown_version_with_valid_crc_is_reported_not_guessed() {
    let mut b = SegmentHeader {
        codec_id: 1,
        first_seq: 1,
        prev_last_seq: 0,
    }
    .encode();
    b[8] = 2;
    let crc = crc32fast::hash(&b[..SEGMENT_HEADER_CRC_OFFSET]);
    b[SEGMENT_HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        SegmentHeader::decode(&b),
        HeaderStatus::UnsupportedVersion(2)
    );
}

#[test]
fn frame_decode_statuses() {
    let mut f = Vec::new();
    encode_frame(&mut f, 1, &[5u8; 100]);
    for cut in 0..f.len() {
        assert!(
            matches!(
                decode_frame(&f[..cut], 1000),
                FrameStatus::Incomplete { .. }
            ),
            "cut at {cut}"
        );
    }
    assert!(matches!(
        decode_frame(&f, 99),
        FrameStatus::Corrupt(CorruptionKind::LengthOverLimit {
            len: 100,
            limit: 99
        })
    ));
    let mut g = f.clone();
    g[20] ^= 0x10;
    assert!(matches!(
        decode_frame(&g, 1000),
        FrameStatus::Corrupt(CorruptionKind::FrameCrc { .. })
    ));
    assert!(matches!(
        decode_frame(&[0u8; 64], 1000),
        FrameStatus::Corrupt(_)
    ));
}

#[test]
fn segment_names_round_trip_and_reject_strays() {
    for seq in [1u64, 42, MAX_SEQ] {
        let n = segment_file_name(seq);
        assert_eq!(n.len(), SEGMENT_NAME_DIGITS + SEGMENT_SUFFIX.len());
        assert_eq!(parse_segment_file_name(&n), Some(seq));
    }
    assert!(segment_file_name(9) < segment_file_name(10));
    for stray in [
        "1.seg",
        "abc",
        "0000000000000000000a.seg",
        "00000000000000000001.seg.quarantined",
    ] {
        assert_eq!(parse_segment_file_name(stray), None, "{stray}");
    }
    assert_eq!(parse_segment_file_name("99999999999999999999.seg"), None);
    assert_eq!(
        parse_segment_file_name(&segment_file_name(0)),
        None,
        "seq 0 names nothing"
    );
    assert_eq!(
        parse_segment_file_name(&segment_file_name(MAX_SEQ + 1)),
        None
    );
}

/// The frame CRC is CRC-32 (IEEE) of `len ‖ seq ‖ payload`, whichever way it is
/// computed: one contiguous update for small payloads, two updates above
/// `FRAME_CRC_INLINE_BYTES`. Every length around the switch, and a few far from it.
#[test]
fn frame_crc_is_the_crc_of_len_seq_and_payload_at_every_length() {
    let mut rng = crate::actor::SplitMix64(0x2545_F491_4F6C_DD1D);
    for n in (0..=FRAME_CRC_INLINE_BYTES + 40).chain([1000, 4096, 65_537]) {
        let payload: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        let len = n as u32;
        let seq = rng.next() | 1;
        let mut whole = Vec::with_capacity(12 + n);
        whole.extend_from_slice(&len.to_le_bytes());
        whole.extend_from_slice(&seq.to_le_bytes());
        whole.extend_from_slice(&payload);
        assert_eq!(
            frame_crc(len, seq, &payload),
            crc32fast::hash(&whole),
            "payload of {n} bytes"
        );
    }
}
