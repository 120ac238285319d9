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
