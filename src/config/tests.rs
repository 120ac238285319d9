use super::*;

#[test]
fn defaults_match_the_contract() {
    let c = SinkConfig::new("/tmp/x");
    assert_eq!(c.queue_capacity, 10_000);
    assert_eq!(c.batch_size, 256);
    assert_eq!(c.flush_interval, Duration::from_millis(100));
    assert_eq!(c.overflow, Overflow::Drop);
    assert_eq!(
        c.durability,
        Durability::Interval(Duration::from_millis(100))
    );
    assert_eq!(c.segment_bytes, 64 << 20);
    assert_eq!(c.max_disk_bytes, 1 << 30);
    assert_eq!(c.max_record_bytes, 16 << 20);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    assert!(c.metric_prefix.is_none());
    assert!(c.validate().is_ok());
}

#[test]
fn contradictions_are_refused_naming_the_field() {
    let base = SinkConfig::new("/tmp/x");
    let cases: Vec<(SinkConfig, &str)> = vec![
        (
            SinkConfig {
                batch_size: 0,
                ..base.clone()
            },
            "batch_size",
        ),
        (
            SinkConfig {
                queue_capacity: 0,
                ..base.clone()
            },
            "queue_capacity",
        ),
        (
            SinkConfig {
                max_disk_bytes: base.segment_bytes,
                ..base.clone()
            },
            "max_disk_bytes",
        ),
        (
            SinkConfig {
                segment_bytes: 10,
                ..base.clone()
            },
            "segment_bytes",
        ),
        (
            SinkConfig {
                max_record_bytes: 0,
                ..base.clone()
            },
            "max_record_bytes",
        ),
        (
            SinkConfig {
                durability: Durability::Interval(Duration::ZERO),
                ..base.clone()
            },
            "durability",
        ),
        (
            SinkConfig {
                retry: RetryPolicy {
                    multiplier: 0.5,
                    ..RetryPolicy::default()
                },
                ..base.clone()
            },
            "retry",
        ),
    ];
    for (cfg, field) in cases {
        match cfg.validate() {
            Err(OpenError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected InvalidConfig, got {other:?}"),
        }
    }
}

#[test]
fn backoff_caps_grow_then_saturate() {
    let r = RetryPolicy::default();
    assert_eq!(r.delay_cap(1), Duration::from_millis(100));
    assert_eq!(r.delay_cap(2), Duration::from_millis(200));
    assert_eq!(r.delay_cap(4), Duration::from_millis(800));
    assert_eq!(r.delay_cap(20), Duration::from_secs(30));
    assert_eq!(r.delay_cap(u32::MAX), Duration::from_secs(30));
}
