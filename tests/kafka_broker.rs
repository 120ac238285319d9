//! `KafkaDrain` end to end against a real Kafka-protocol broker process (tansu, which
//! `.ci/run` installs and starts on 127.0.0.1): every record arrives with its seq
//! header; a broker killed mid-stream and started again gets everything pushed during
//! the outage; a producing process killed with SIGKILL mid-batch and started again
//! leaves no confirmed record missing, and its duplicates carry the same seq.
//!
//! `WALSINK_KAFKA_BROKERS=HOST:PORT` names the broker; `WALSINK_TANSU_BIN` the tansu
//! binary the outage test starts its own broker with. Without them a local run says
//! that it skipped; under CI (`CI` set) it fails.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{
    Event, Got, create_topic, event, ids_and_seqs, kafka_sink_config, read_topic_until,
    real_brokers,
};
use common::{child_command, child_runtime};
use tokio_util::sync::CancellationToken;
use walsink::DurableSink;
use walsink::drains::KafkaDrain;

const READ_WITHIN: Duration = Duration::from_secs(60);

fn config(dir: &Path) -> walsink::SinkConfig {
    kafka_sink_config(dir, 256)
}

fn drain(brokers: &str, topic: &str) -> KafkaDrain<Event> {
    KafkaDrain::<Event>::json(brokers, topic)
        .key(|e: &Event| Some(e.id.to_string().into_bytes()))
        .set("message.timeout.ms", "3000")
        .set("retry.backoff.ms", "20")
        .build()
        .expect("drain")
}

fn unique_topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("walsink-{name}-{}-{nanos}", std::process::id())
}

/// Reads `topic` until every id in `ids` arrived (and a quiet second after).
fn read_ids(brokers: &str, topic: &str, partitions: i32, ids: std::ops::Range<u64>) -> Vec<Got> {
    let mut missing: std::collections::BTreeSet<u64> = ids.collect();
    read_topic_until(brokers, topic, partitions, READ_WITHIN, move |g| {
        if let Some(&(id, _)) = ids_and_seqs(std::slice::from_ref(g)).first() {
            missing.remove(&id);
        }
        missing.is_empty()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_a_real_broker_with_its_seq_header() {
    let Some(brokers) = real_brokers("every_record_reaches_a_real_broker_with_its_seq_header")
    else {
        return;
    };
    let topic = unique_topic("all");
    create_topic(&brokers, &topic, 3).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let (sink, handle) = DurableSink::open(
        config(tmp.path()),
        drain(&brokers, &topic),
        CancellationToken::new(),
    )
    .await
    .expect("open");
    for id in 0..2000 {
        sink.push(event(id)).await.expect("push");
    }
    sink.flush().await.expect("flush");
    drop(sink);
    handle.join().await.expect("join");
    let got = ids_and_seqs(&read_ids(&brokers, &topic, 3, 0..2000));
    assert_eq!(got.len(), 2000, "once each");
    let mut ids: Vec<u64> = got.iter().map(|&(id, _)| id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..2000).collect::<Vec<_>>());
    for (id, seq) in got {
        assert_eq!(seq, id + 1, "record {id} under the wrong walsink-seq");
    }
}

/// A tansu broker of this test's own, with memory storage, on `port`.
struct Broker(Child);

impl Broker {
    fn start(bin: &str, port: u16) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        // Ready when it accepts connections (bounded).
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }

    fn kill(mut self) {
        self.0.kill().expect("kill tansu");
        self.0.wait().expect("reap tansu");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_stream_gets_everything_pushed_during_the_outage() {
    let test = "a_broker_killed_mid_stream_gets_everything_pushed_during_the_outage";
    if real_brokers(test).is_none() {
        return;
    }
    let bin = match std::env::var("WALSINK_TANSU_BIN") {
        Ok(b) => b,
        Err(_) if std::env::var_os("CI").is_some() => panic!("{test}: set WALSINK_TANSU_BIN"),
        Err(_) => {
            eprintln!("SKIPPED {test}: WALSINK_TANSU_BIN is not set");
            return;
        }
    };
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let broker = Broker::start(&bin, port);
    create_topic(&addr, "outage", 1).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let drain = drain(&addr, "outage");
    let errors = drain.errors();
    let (sink, handle) = DurableSink::open(config(tmp.path()), drain, CancellationToken::new())
        .await
        .expect("open");
    for id in 0..300 {
        sink.push(event(id)).await.expect("push");
    }
    sink.flush().await.expect("flush before the outage");

    broker.kill();
    for id in 300..600 {
        sink.push(event(id))
            .await
            .expect("the sink keeps accepting");
    }
    sink.sync().await.expect("durable during the outage");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = errors.get();
        if e.retryable + e.config + e.fatal > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outage never reached the drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sink.stats().pending >= 300, "{:?}", sink.stats());

    // The broker comes back empty (memory storage): the topic is created again, and
    // the idempotent producer's state is gone with it.
    let _broker = Broker::start(&bin, port);
    create_topic(&addr, "outage", 1).await;
    if tokio::time::timeout(Duration::from_secs(120), sink.flush())
        .await
        .is_err()
    {
        panic!(
            "not delivered within 120 s of the broker's return: {:?}, drain errors {:?}",
            sink.stats(),
            errors.get()
        );
    }
    let stats = sink.stats();
    drop(sink);
    handle.join().await.expect("join");
    assert_eq!(stats.rejected, 0, "an outage is never poison");
    let got = ids_and_seqs(&read_ids(&addr, "outage", 1, 300..600));
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    for (id, seq) in got {
        assert_eq!(seq, id + 1);
        seen.insert(id, seq);
    }
    let missing: Vec<u64> = (300..600).filter(|id| !seen.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "pushed during the outage and lost: {missing:?}"
    );
}

/// The KafkaDrain, announcing on stdout each batch it is handed (`batch <first seq>`)
/// before producing it, so the parent can kill the process while one is in flight.
struct Announce(KafkaDrain<Event>);

impl walsink::SinkDrain<Event> for Announce {
    async fn write_batch(
        &mut self,
        batch: walsink::Batch<Event>,
    ) -> Result<(), walsink::DrainError> {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "batch {}", batch.first_seq().unwrap_or(0));
        let _ = out.flush();
        self.0.write_batch(batch).await
    }

    async fn close(&mut self) -> Result<(), walsink::DrainError> {
        self.0.close().await
    }
}

/// Child process: pushes `WALSINK_CHILD_RECORDS` records (ids from 0) into the sink
/// on `WALSINK_CHILD_DIR`, syncing every 100 and printing `durable <id>`; then waits
/// for the broker's acknowledgements and exits.
#[test]
#[ignore = "child process entry point for kill_9_of_the_producer_mid_batch_*"]
fn kafka_producer_child_entry() -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let dir = std::env::var("WALSINK_CHILD_DIR")?;
    let brokers = std::env::var("WALSINK_CHILD_BROKERS")?;
    let topic = std::env::var("WALSINK_CHILD_TOPIC")?;
    let records: u64 = std::env::var("WALSINK_CHILD_RECORDS")?.parse()?;
    child_runtime()?.block_on(async move {
        let (sink, handle) = DurableSink::open(
            config(Path::new(&dir)),
            Announce(drain(&brokers, &topic)),
            CancellationToken::new(),
        )
        .await?;
        let mut out = std::io::stdout();
        for id in 0..records {
            sink.push(event(id)).await?;
            if (id + 1) % 100 == 0 {
                sink.sync().await?;
                writeln!(out, "durable {id}")?;
                out.flush()?;
            }
        }
        sink.flush().await?;
        drop(sink);
        handle.join().await?;
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_producer_mid_batch_loses_no_confirmed_record() {
    let Some(brokers) = real_brokers("kill_9_of_the_producer_mid_batch_loses_no_confirmed_record")
    else {
        return;
    };
    let topic = unique_topic("kill9");
    create_topic(&brokers, &topic, 3).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let run = |records: u64| {
        let mut cmd = child_command("kafka_producer_child_entry").expect("child");
        cmd.env("WALSINK_CHILD_DIR", tmp.path())
            .env("WALSINK_CHILD_BROKERS", &brokers)
            .env("WALSINK_CHILD_TOPIC", &topic)
            .env("WALSINK_CHILD_RECORDS", records.to_string())
            .stdout(Stdio::piped());
        cmd.spawn().expect("spawn child")
    };
    let mut child = run(20_000);
    let stdout = child.stdout.take().expect("stdout");
    // Kill right after the drain was handed a batch, once 4 000 records were
    // confirmed durable: the batch is being produced, its acknowledgement not yet
    // known to the sink.
    let mut confirmed = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if let Some(id) = line
            .strip_prefix("durable ")
            .and_then(|s| s.parse::<u64>().ok())
        {
            confirmed = Some(id);
        }
        if line.starts_with("batch ") && confirmed.is_some_and(|c| c >= 3_999) {
            break;
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let confirmed = confirmed.expect("the child confirmed records before the kill");

    let status = run(0).wait().expect("restart");
    assert!(status.success(), "the restarted producer failed: {status}");
    let got = ids_and_seqs(&read_ids(&brokers, &topic, 3, 0..confirmed + 1));
    let mut seqs: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (id, seq) in got {
        seqs.entry(id).or_default().push(seq);
    }
    let missing: Vec<u64> = (0..=confirmed)
        .filter(|id| !seqs.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "confirmed durable through id {confirmed} before the kill, missing: {missing:?}"
    );
    for (id, s) in &seqs {
        assert!(
            s.iter().all(|&x| x == id + 1),
            "record {id} arrived under seqs {s:?}: duplicates must carry the same seq"
        );
    }
}
