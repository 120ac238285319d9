//! The Prometheus exporter (HTTP listener on 127.0.0.1) serves every metric
//! docs/OPERATIONS.md lists while records flow through a sink with `metric_prefix`.
//! Its own test binary: the recorder is process-global.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;
use walsink::{Batch, DrainError, Durability, DurableSink, SinkConfig, SinkDrain};

struct RejectsSeven;

impl SinkDrain<u64> for RejectsSeven {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        if batch.iter().any(|(_, &v)| v == 7) {
            return Err(DrainError::permanent("7 is rejected"));
        }
        Ok(())
    }
}

fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Metric names in the OPERATIONS.md table (`<p>_name`).
fn documented() -> Vec<String> {
    let doc = include_str!("../docs/OPERATIONS.md");
    let mut names = Vec::new();
    for part in doc.split("`<p>_").skip(1) {
        if let Some(end) = part.find('`') {
            names.push(part[..end].to_string());
        }
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_served_over_http() -> Result<(), Box<dyn std::error::Error>> {
    // A free port on the loopback interface.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;

    let tmp = tempfile::tempdir()?;
    let mut cfg = SinkConfig::new(tmp.path());
    cfg.metric_prefix = Some("wstest".into());
    cfg.durability = Durability::Always;
    cfg.flush_interval = Duration::from_millis(5);
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg, RejectsSeven, shutdown.clone()).await?;
    for v in 0..50u64 {
        sink.push(v).await?;
    }
    sink.flush().await?;

    let names = documented();
    assert!(names.len() >= 18, "{names:?}");
    // The listener starts in the background: retry the connection for a while.
    let mut body = String::new();
    for _ in 0..200 {
        match tokio::task::spawn_blocking(move || scrape(addr)).await? {
            Ok(b) if b.contains("wstest_") => {
                body = b;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for n in &names {
        assert!(
            body.contains(&format!("wstest_{n}")),
            "wstest_{n} not served:\n{body}"
        );
    }
    assert!(body.contains("wstest_pushed_total 50"), "{body}");
    assert!(body.contains("wstest_dead_lettered_total 1"), "{body}");
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}
