use super::*;

fn batch<T>(pairs: Vec<(u64, T)>) -> Batch<T> {
    let (seqs, items) = pairs.into_iter().unzip();
    Batch::new(seqs, items)
}

fn read_json(dir: &Path) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for (_, path) in files(dir, FileFormat::JsonLines).expect("list") {
        for line in std::fs::read_to_string(path).expect("read").lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            out.push((
                v["seq"].as_u64().expect("seq"),
                v["record"].as_str().expect("record").to_string(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn replays_are_skipped_and_files_rotate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("out");
    let mut d = FileDrain::<String>::json_lines(&dir)
        .expect("open")
        .with_max_file_bytes(40);
    d.write_batch(batch(vec![(1, "a".into()), (2, "b".into())]))
        .await
        .expect("write");
    d.write_batch(batch(vec![(5, "c".into())]))
        .await
        .expect("write");
    assert_eq!(
        files(&dir, FileFormat::JsonLines).expect("files").len(),
        2,
        "rotated"
    );
    // A new drain on the same directory (a restart) skips what it holds.
    let mut d = FileDrain::<String>::json_lines(&dir).expect("reopen");
    assert_eq!(d.high_seq(), 5);
    d.write_batch(batch(vec![
        (2, "b".into()),
        (5, "c".into()),
        (6, "d".into()),
    ]))
    .await
    .expect("replay");
    assert_eq!(
        read_json(&dir),
        vec![
            (1, "a".into()),
            (2, "b".into()),
            (5, "c".into()),
            (6, "d".into())
        ]
    );
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_its_records_written_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("out");
    for format in [FileFormat::JsonLines, FileFormat::LengthPrefixed] {
        let dir = dir.join(format.extension());
        let mut d = match format {
            FileFormat::JsonLines => FileDrain::<Vec<u8>>::json_lines(&dir),
            FileFormat::LengthPrefixed => FileDrain::<Vec<u8>>::length_prefixed(&dir),
        }
        .expect("open");
        d.write_batch(batch(vec![(1, b"one".to_vec()), (2, b"two".to_vec())]))
            .await
            .expect("write");
        // A crash tore the next write: half a record at the end of the file.
        let (_, path) = files(&dir, format).expect("files").pop().expect("a file");
        let whole = std::fs::read(&path).expect("read");
        let mut torn = whole.clone();
        torn.extend_from_slice(&whole[..whole.len() / 3]);
        std::fs::write(&path, &torn).expect("tear");
        let mut d = match format {
            FileFormat::JsonLines => FileDrain::<Vec<u8>>::json_lines(&dir),
            FileFormat::LengthPrefixed => FileDrain::<Vec<u8>>::length_prefixed(&dir),
        }
        .expect("reopen");
        assert_eq!(d.high_seq(), 2, "{format:?}");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            whole,
            "{format:?}: cut"
        );
        d.write_batch(batch(vec![(3, b"three".to_vec())]))
            .await
            .expect("write");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(last_complete(&bytes, format).map(|(s, _)| s), Some(3));
    }
}

#[test]
fn names_and_damaged_records_never_panic() {
    assert_eq!(
        file_seq(&file_name(42, FileFormat::JsonLines), FileFormat::JsonLines),
        Some(42)
    );
    assert_eq!(file_seq("42.jsonl", FileFormat::JsonLines), None);
    assert_eq!(
        file_seq(
            &file_name(1, FileFormat::LengthPrefixed),
            FileFormat::JsonLines
        ),
        None
    );
    let mut rng = 0x1234_5678_u64;
    for len in 0..300 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        let _ = last_complete(&bytes, FileFormat::JsonLines);
        let _ = last_complete(&bytes, FileFormat::LengthPrefixed);
    }
}
