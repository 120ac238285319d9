//! A sink publishing its metrics to Prometheus: `metric_prefix` plus the
//! `metrics-exporter-prometheus` HTTP listener on 127.0.0.1.
//!
//! ```text
//! cargo run --release --example prometheus [PORT]
//! curl -s 127.0.0.1:9898/metrics | grep walsink_
//! ```
//!
//! Pushes a record every millisecond into a drain that fails now and then, so the
//! counters move. `examples/prometheus-alerts.yml` has alerting rules for them
//! (docs/OPERATIONS.md explains each).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;
use walsink::{Batch, DrainError, DurableSink, SinkConfig, SinkDrain};

/// Fails one call in ten (retryable), rejects value 13 for good.
struct Flaky(u64);

impl SinkDrain<u64> for Flaky {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        self.0 += 1;
        if self.0.is_multiple_of(10) {
            return Err(DrainError::retryable("downstream busy"));
        }
        if batch.iter().any(|(_, &v)| v == 13) {
            return Err(DrainError::permanent("13 is not accepted"));
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(9898);
    // Installed before the sink opens: handles bind to the recorder present at open.
    PrometheusBuilder::new()
        .with_http_listener(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .install()?;
    let dir = std::env::temp_dir().join(format!("walsink-prometheus-{}", std::process::id()));
    let cfg = SinkConfig {
        metric_prefix: Some("walsink".into()),
        ..SinkConfig::new(&dir)
    };
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg, Flaky(0), shutdown.clone()).await?;
    println!(
        "metrics on http://127.0.0.1:{port}/metrics (WAL in {}); Ctrl-C to stop",
        dir.display()
    );
    let mut v = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(Duration::from_millis(1)) => {
                sink.try_push(v).ok();
                v += 1;
            }
        }
    }
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}
