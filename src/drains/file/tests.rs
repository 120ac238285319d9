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
    drop(d);
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

fn open_as(dir: &Path, format: FileFormat) -> FileDrain<Vec<u8>> {
    match format {
        FileFormat::JsonLines => FileDrain::<Vec<u8>>::json_lines(dir),
        FileFormat::LengthPrefixed => FileDrain::<Vec<u8>>::length_prefixed(dir),
    }
    .expect("open")
}

#[tokio::test]
async fn a_torn_tail_is_kept_as_it_is_and_the_next_batch_starts_a_new_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    for format in [FileFormat::JsonLines, FileFormat::LengthPrefixed] {
        let dir = tmp.path().join(format.extension());
        let mut d = open_as(&dir, format);
        d.write_batch(batch(vec![(1, b"one".to_vec()), (2, b"two".to_vec())]))
            .await
            .expect("write");
        drop(d);
        // A crash tore the next write: part of a record at the end of the file.
        let (_, path) = files(&dir, format).expect("files").pop().expect("a file");
        let whole = std::fs::read(&path).expect("read");
        let mut torn = whole.clone();
        torn.extend_from_slice(&whole[..whole.len() / 3]);
        std::fs::write(&path, &torn).expect("tear");
        let mut d = open_as(&dir, format);
        assert_eq!(d.high_seq(), 2, "{format:?}");
        d.write_batch(batch(vec![(2, b"two".to_vec()), (3, b"three".to_vec())]))
            .await
            .expect("write");
        assert_eq!(d.replays_skipped(), 1);
        assert_eq!(
            std::fs::read(&path).expect("read"),
            torn,
            "{format:?}: never rewritten"
        );
        let all = files(&dir, format).expect("files");
        assert_eq!(all.len(), 2, "{format:?}");
        let newest = std::fs::read(&all[1].1).expect("read");
        assert_eq!(valid_prefix(&newest, format), (Some(3), newest.len()));
    }
}

#[tokio::test]
async fn a_record_after_a_hole_left_by_a_power_loss_is_not_trusted() {
    // Pages of an unacknowledged write can reach the disk out of order: the later one
    // (records 4 and 5) on disk, the earlier one (record 3) zeroed.
    let tmp = tempfile::tempdir().expect("tmp");
    for format in [FileFormat::JsonLines, FileFormat::LengthPrefixed] {
        let dir = tmp.path().join(format.extension());
        let mut d = open_as(&dir, format);
        let recs = |r: std::ops::RangeInclusive<u64>| {
            batch(r.map(|s| (s, vec![b'a' + s as u8; 10])).collect())
        };
        d.write_batch(recs(1..=2)).await.expect("write");
        let (_, path) = files(&dir, format).expect("files").pop().expect("a file");
        let acked = std::fs::read(&path).expect("read").len();
        d.write_batch(recs(3..=5)).await.expect("write");
        drop(d);
        let mut bytes = std::fs::read(&path).expect("read");
        let one = (bytes.len() - acked) / 3;
        bytes[acked..acked + one].fill(0);
        std::fs::write(&path, &bytes).expect("hole");
        let d = open_as(&dir, format);
        assert_eq!(
            d.high_seq(),
            2,
            "{format:?}: records after the hole are not held"
        );
    }
}

/// Two drains never share a directory; a record's newline is escaped, so a record is
/// one line. (A raw, unescaped newline can only come from serde_json's `RawValue`,
/// which `encode_json` refuses; this build does not enable that feature to test it.)
#[tokio::test]
async fn two_drains_never_share_a_directory_and_a_record_stays_on_one_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = FileDrain::<String>::json_lines(tmp.path()).expect("open");
    let second = FileDrain::<String>::json_lines(tmp.path());
    assert!(second.is_err(), "locked");
    drop(d);
    let mut d = FileDrain::<String>::json_lines(tmp.path()).expect("reopen after drop");
    d.write_batch(batch(vec![(1, "a\nb".to_string()), (2, "c".to_string())]))
        .await
        .expect("write");
    let (_, path) = files(tmp.path(), FileFormat::JsonLines)
        .expect("files")
        .pop()
        .expect("a file");
    let text = std::fs::read_to_string(path).expect("read");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert_eq!(read_json(tmp.path())[0].1, "a\nb");
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
        let _ = valid_prefix(&bytes, FileFormat::JsonLines);
        let _ = valid_prefix(&bytes, FileFormat::LengthPrefixed);
    }
}
