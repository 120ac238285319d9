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
