use super::*;

#[test]
fn every_counter_reaches_its_stats_field() {
    let counters = Counters::new(None);
    let all = [
        &counters.dropped,
        &counters.writes,
        &counters.write_errors,
        &counters.retries,
        &counters.rejected,
        &counters.replayed,
        &counters.corrupt_records,
        &counters.quarantined_segments,
        &counters.dead_lettered,
        &counters.dead_letters_refused,
        &counters.redriven,
    ];
    assert_eq!(all.len(), COUNTER_METRICS.len());
    for (i, c) in all.iter().enumerate() {
        c.add(i as u64 + 1);
    }
    let mut stats = SinkStats::default();
    counters.fill(&mut stats);
    let got = [
        stats.dropped,
        stats.writes,
        stats.write_errors,
        stats.retries,
        stats.rejected,
        stats.replayed,
        stats.corrupt_records,
        stats.quarantined_segments,
        stats.dead_lettered,
        stats.dead_letters_refused,
        stats.redriven,
    ];
    assert_eq!(got, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
}

#[test]
fn every_counter_metric_is_in_the_operations_table() {
    let table = include_str!("../../docs/OPERATIONS.md");
    for (name, _) in COUNTER_METRICS {
        assert!(
            table.contains(&format!("<p>_{name}`")),
            "{name} is missing from docs/OPERATIONS.md"
        );
    }
}
