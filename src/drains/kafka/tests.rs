use super::*;

#[test]
fn error_classes_follow_librdkafkas_documentation() {
    use RDKafkaErrorCode as C;
    for code in [
        C::RequestTimedOut,
        C::MessageTimedOut,
        C::BrokerTransportFailure,
        C::AllBrokersDown,
        C::QueueFull,
        C::NotLeaderForPartition,
        C::LeaderNotAvailable,
        C::NotEnoughReplicas,
        C::NotEnoughReplicasAfterAppend,
        C::NetworkException,
        C::OperationTimedOut,
        C::ThrottlingQuotaExceeded,
        C::Unknown,
        // The broker's response could not be parsed: the record may be stored.
        C::BadMessage,
        // Another record of the request was refused (see `fold_innocent`).
        C::InvalidDifferentRecord,
    ] {
        assert_eq!(ErrorClass::of(code), ErrorClass::Retryable, "{code:?}");
    }
    for code in [
        C::MessageSizeTooLarge,
        C::InvalidMessageSize,
        C::InvalidMessage,
        C::InvalidRecord,
    ] {
        assert_eq!(ErrorClass::of(code), ErrorClass::Permanent, "{code:?}");
    }
    for code in [
        C::UnknownTopicOrPartition,
        C::UnknownTopic,
        C::TopicAuthorizationFailed,
        C::ClusterAuthorizationFailed,
        C::InvalidRequiredAcks,
        C::SaslAuthenticationFailed,
        // Clock skew: the drain sets no timestamp of its own.
        C::InvalidTimestamp,
    ] {
        assert_eq!(ErrorClass::of(code), ErrorClass::Config, "{code:?}");
    }
    for code in [
        C::Fatal,
        C::OutOfOrderSequenceNumber,
        C::InvalidProducerEpoch,
        C::ProducerFenced,
    ] {
        assert_eq!(ErrorClass::of(code), ErrorClass::Fatal, "{code:?}");
    }
}

#[test]
fn build_refuses_to_turn_idempotence_or_acks_down() {
    let d = KafkaDrain::<u64>::json("127.0.0.1:1", "t")
        .set("enable.idempotence", "false")
        .build();
    assert!(d.is_err());
    let d = KafkaDrain::<u64>::json("127.0.0.1:1", "t")
        .set("acks", "1")
        .build();
    assert!(d.is_err());
    let d = KafkaDrain::<u64>::json("127.0.0.1:1", "t").build();
    assert!(d.is_ok());
}

#[test]
fn the_drain_starts_from_its_documented_settings_and_passes_others_through() {
    let b = KafkaDrain::<u64>::json("127.0.0.1:1", "t");
    assert_eq!(b.config.get("bootstrap.servers"), Some("127.0.0.1:1"));
    assert_eq!(b.config.get("enable.idempotence"), Some("true"));
    assert_eq!(b.config.get("acks"), Some("all"));
    assert_eq!(b.config.get("linger.ms"), Some("1"));
    let b = b.set("linger.ms", "20").set("client.id", "svc");
    assert_eq!(b.config.get("linger.ms"), Some("20"));
    assert_eq!(b.config.get("client.id"), Some("svc"));
    let d = b.build().expect("build");
    assert_eq!(d.config.get("linger.ms"), Some("20"));
}

#[test]
fn records_refused_for_anothers_sake_are_never_dead_lettered_nor_retried_forever() {
    let p = |w: &str| (ErrorClass::Permanent, w.to_owned());
    let innocent = || vec!["seq 2: different record".to_owned()];
    // The refused record is in the batch: the batch stays permanent, so the sink
    // bisects; the innocent one is only counted.
    let mut f = vec![p("seq 1: invalid record")];
    assert_eq!(fold_innocent(&mut f, innocent()), 1);
    assert_eq!(f, vec![p("seq 1: invalid record")]);
    // It is not: the innocent record is retryable, never permanent.
    let mut f = Vec::new();
    assert_eq!(fold_innocent(&mut f, innocent()), 0);
    assert_eq!(
        f,
        vec![(ErrorClass::Retryable, "seq 2: different record".to_owned())]
    );
    // Beside other failures: retryable too.
    let mut f = vec![
        p("seq 1: invalid record"),
        (ErrorClass::Retryable, "seq 3: timed out".to_owned()),
    ];
    assert_eq!(fold_innocent(&mut f, innocent()), 0);
    assert_eq!(f.len(), 3);
    assert_eq!(f[2].0, ErrorClass::Retryable);
    // Nothing refused at all: nothing changes.
    let mut f = Vec::new();
    assert_eq!(fold_innocent(&mut f, Vec::new()), 0);
    assert!(f.is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn close_reports_messages_it_could_not_flush_within_its_timeout() {
    // No broker listens on port 1: a queued message can never be acknowledged.
    let mut d = KafkaDrain::<u64>::json("127.0.0.1:1", "t")
        .close_timeout(Duration::from_millis(200))
        .build()
        .expect("build");
    let m = d.prepare(1, &7).expect("message");
    let delivery = d.produce(m).await.expect("queued locally");
    let err = d
        .close()
        .await
        .expect_err("a message is still unacknowledged");
    assert!(err.to_string().contains("flush"), "{err}");
    // On a current-thread runtime: dropping the drain hands the producer's destruction
    // to the blocking pool; this task goes on (and the delivery is not reported Ok).
    drop(d);
    assert!(!matches!(delivery.await, Ok(Ok(_))));
}

#[tokio::test(flavor = "current_thread")]
async fn a_record_larger_than_the_whole_local_queue_is_permanent_at_once() {
    let d = KafkaDrain::<Vec<u8>>::builder("127.0.0.1:1", "t", |r: &Vec<u8>| r.clone())
        .set("queue.buffering.max.kbytes", "1")
        .build()
        .expect("build");
    let m = d
        .prepare(1, &vec![7u8; 4096])
        .expect("under message.max.bytes");
    match d.produce(m).await {
        Err((class, why)) => {
            assert_eq!(class, ErrorClass::Permanent, "{why}");
            assert!(why.contains("queue.buffering.max.kbytes"), "{why}");
        }
        Ok(_) => panic!("a 4 KiB record fit a 1 KiB queue"),
    }
}
