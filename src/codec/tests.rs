use super::*;

/// The `Vec<u8>` fast path writes exactly what bincode's serde path writes, at every
/// varint boundary, and each decodes the other's bytes.
#[test]
fn bytes_fast_path_matches_bincode_byte_for_byte() -> Result<(), CodecError> {
    for len in [0usize, 1, 100, 250, 251, 252, 65_535, 65_536, 70_000] {
        let v: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut fast = Vec::new();
        Codec::<Vec<u8>>::encode(&BincodeCodec, &v, &mut fast)?;
        let slow = bincode::serde::encode_to_vec(&v, bincode::config::standard())
            .map_err(CodecError::new)?;
        assert_eq!(fast, slow, "len {len}");
        let back: Vec<u8> = BincodeCodec.decode(&slow)?;
        assert_eq!(back, v);
        let (serde_back, _): (Vec<u8>, usize) =
            bincode::serde::decode_from_slice(&fast, bincode::config::standard())
                .map_err(CodecError::new)?;
        assert_eq!(serde_back, v);
    }
    let mut bad = Vec::new();
    Codec::<Vec<u8>>::encode(&BincodeCodec, &vec![1, 2, 3], &mut bad)?;
    bad.push(0);
    assert!(Codec::<Vec<u8>>::decode(&BincodeCodec, &bad).is_err());
    assert!(Codec::<Vec<u8>>::decode(&BincodeCodec, &[255]).is_err());
    Ok(())
}

#[test]
fn bincode_round_trips_and_rejects_trailing_bytes() -> Result<(), CodecError> {
    let c = BincodeCodec;
    let mut out = Vec::new();
    Codec::<(u32, String)>::encode(&c, &(7, "x".to_string()), &mut out)?;
    let back: (u32, String) = c.decode(&out)?;
    assert_eq!(back, (7, "x".to_string()));
    out.push(0);
    assert!(Codec::<(u32, String)>::decode(&c, &out).is_err());
    assert!(Codec::<String>::decode(&c, &[0xFF, 0xFF, 0xFF]).is_err());
    Ok(())
}

/// A length that the record's bytes could never hold is an error, never an allocation
/// of that length (which aborts the process, again at every replay).
#[test]
fn a_hostile_length_is_a_decode_error_not_an_abort() {
    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    struct Event {
        id: u64,
        tags: Vec<String>,
        body: Vec<u8>,
    }
    // varint marker 253: a u64 follows; then u64::MAX / 2.
    let huge = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    assert!(Codec::<String>::decode(&BincodeCodec, &huge).is_err());
    assert!(Codec::<Vec<u64>>::decode(&BincodeCodec, &huge).is_err());
    assert!(Codec::<Vec<String>>::decode(&BincodeCodec, &huge).is_err());
    let mut as_event = vec![7u8];
    as_event.extend_from_slice(&huge);
    assert!(Codec::<Event>::decode(&BincodeCodec, &as_event).is_err());
    // 2^31 claimed by a 6-byte record: refused without allocating it.
    let mid = [0xfc, 0x00, 0x00, 0x00, 0x80, 0x61];
    assert!(Codec::<String>::decode(&BincodeCodec, &mid).is_err());
}

/// Real records whose decode claims many times their size still decode: 100 000
/// empty strings (24 bytes claimed per encoded byte) and a 1 MiB byte field.
#[test]
fn records_that_claim_more_than_their_size_still_decode() -> Result<(), CodecError> {
    let strings = vec![String::new(); 100_000];
    let mut out = Vec::new();
    Codec::<Vec<String>>::encode(&BincodeCodec, &strings, &mut out)?;
    assert_eq!(Codec::<Vec<String>>::decode(&BincodeCodec, &out)?, strings);
    let pair = (7u64, vec![0xabu8; 1 << 20]);
    let mut out = Vec::new();
    Codec::<(u64, Vec<u8>)>::encode(&BincodeCodec, &pair, &mut out)?;
    assert_eq!(Codec::<(u64, Vec<u8>)>::decode(&BincodeCodec, &out)?, pair);
    Ok(())
}
