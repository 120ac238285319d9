//! One shape of the peers bench for one subject, for `perf` and `strace`:
//! `cargo run --release --example shape_profile -- <push_all|batch64|e2e> <walsink|walsink-batch|okaywal|yaque|raw|pipeline|zeroed|handoff|handoff-consumer|none> [records]`.

#[path = "../benches/peer_shapes.rs"]
#[allow(dead_code)]
mod peer_shapes;
#[path = "../benches/support.rs"]
mod support;

use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let shape = args.next().unwrap_or_else(|| "batch64".into());
    let who = args.next().unwrap_or_else(|| "walsink".into());
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(match shape.as_str() {
            "batch64" => 100_000,
            _ => 1_000_000,
        });
    let rt = support::rt();
    let recs = peer_shapes::records(n);
    let every = Duration::from_millis(100);
    let t = match (shape.as_str(), who.as_str()) {
        ("batch64", w) => {
            let b = match w {
                "walsink" => peer_shapes::walsink_batches(&rt, recs, false),
                "walsink-batch" => peer_shapes::walsink_batches(&rt, recs, true),
                "okaywal" => peer_shapes::okaywal_batches(recs),
                "zeroed" => peer_shapes::raw_batches_zeroed(recs),
                "handoff" => peer_shapes::raw_batches_zeroed_handoff(&rt, recs, false),
                "handoff-consumer" => peer_shapes::raw_batches_zeroed_handoff(&rt, recs, true),
                _ => peer_shapes::raw_batches(recs),
            };
            println!("p50 {:.3} ms/batch", b.p50().as_secs_f64() * 1e3);
            b.total
        }
        (s, w @ ("walsink" | "walsink-batch")) => peer_shapes::walsink_push_all(
            &rt,
            recs,
            if s == "e2e" {
                walsink::Durability::Interval(every)
            } else {
                walsink::Durability::Never
            },
            (w == "walsink-batch").then_some(1024),
        ),
        (_, "yaque") => peer_shapes::yaque_push_all(&rt, recs),
        (s, "pipeline") => peer_shapes::raw_pipeline(recs, (s == "e2e").then_some(every)),
        // Only builds and drops the records: what every subject's run includes
        // besides the subject (for `valgrind --tool=callgrind` counts).
        (_, "none") => {
            let t = std::time::Instant::now();
            drop(recs);
            t.elapsed()
        }
        (s, _) => peer_shapes::raw_loop(recs, (s == "e2e").then_some(every)),
    };
    println!(
        "{shape} {who}: {n} records in {:.1} ms ({:.0} rec/s)",
        t.as_secs_f64() * 1e3,
        n as f64 / t.as_secs_f64()
    );
}
