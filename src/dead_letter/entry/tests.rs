use super::*;

fn meta() -> EntryMeta {
    EntryMeta {
        reason: DeadLetterReason::Rejected,
        attempts: 3,
        seq: 1 << 40,
        first_failed_at: from_millis(1_764_660_137_123),
        dead_lettered_at: from_millis(1_764_660_140_456),
        error: "bad record: schema mismatch: field `id`".into(),
    }
}

#[test]
fn an_entry_round_trips_with_its_payload_unchanged() {
    for payload in [&b""[..], b"x", &[0xffu8; 5000][..]] {
        let mut out = Vec::new();
        encode_entry(&mut out, &meta(), payload);
        let (got, at) = decode_entry(&out).expect("decodes");
        assert_eq!(got, meta());
        assert_eq!(&out[at..], payload);
    }
}

#[test]
fn a_long_error_is_cut_at_a_character_boundary() {
    let mut m = meta();
    m.error = "é".repeat(MAX_ERROR_BYTES);
    let mut out = Vec::new();
    encode_entry(&mut out, &m, b"p");
    let (got, at) = decode_entry(&out).expect("decodes");
    assert!(got.error.len() <= MAX_ERROR_BYTES);
    assert!(got.error.chars().all(|c| c == 'é'));
    assert_eq!(&out[at..], b"p");
}

#[test]
fn damaged_entries_are_errors_not_panics() {
    let mut good = Vec::new();
    encode_entry(&mut good, &meta(), b"payload");
    // Every truncation and every single-byte change decodes or errors; none panics.
    for cut in 0..good.len() {
        let _ = decode_entry(&good[..cut]);
    }
    for i in 0..good.len() {
        for v in [0u8, 1, 2, 0x7f, 0xff] {
            let mut b = good.clone();
            b[i] = v;
            let _ = decode_entry(&b);
        }
    }
    assert_eq!(
        decode_entry(&good[..10]),
        Err(EntryError::Short { len: 10 })
    );
    let mut b = good.clone();
    b[0] = 9;
    assert_eq!(decode_entry(&b), Err(EntryError::Version(9)));
    let mut b = good.clone();
    b[1] = 7;
    assert_eq!(decode_entry(&b), Err(EntryError::Reason(7)));
    let mut b = good;
    b[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(decode_entry(&b), Err(EntryError::ErrorLen { .. })));
}

#[test]
fn timestamps_print_as_rfc3339_utc() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    assert_eq!(
        rfc3339(from_millis(951_782_400_000)),
        "2000-02-29T00:00:00.000Z"
    );
    assert_eq!(
        rfc3339(from_millis(1_764_660_137_123)),
        "2025-12-02T07:22:17.123Z"
    );
    assert_eq!(rfc3339(from_millis(-1)), "1969-12-31T23:59:59.999Z");
}
