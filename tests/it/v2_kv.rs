//! The KV consumer end to end: rows put into a `v1-objects` bucket reach the
//! v2 stand-in through the daemon's input frame (`sync::consumer::Input`,
//! issue 5) with [`KvHandler`], redelivery and dead letters included.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use lfx_sync::sync::consumer::{Input, InputSettings};
use lfx_sync::sync::dlq::DeadLetters;
use lfx_sync::sync::v2::handlers::{KvHandler, KvParser, Operation};
use tokio::sync::watch;

use crate::common;
use crate::v2_standin::setup;
use crate::v2_sync::{M1, bucket, root_responder, v2_sync};

/// Polls `done` until it holds or `limit` passes.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

#[tokio::test]
async fn bucket_changes_reach_v2_through_the_consumer() {
    let t = setup(Duration::from_secs(5)).await;
    let (client, js) = common::js().await;
    let (objects_name, objects) = common::new_bucket(&js, 1 << 20).await;
    let (_, mappings) = common::new_bucket(&js, 1 << 20).await;
    let _responder = root_responder(&client).await;
    // Children first: they wait (redelivery) for their parents.
    for change in bucket() {
        let Operation::Put(row) = change.operation else {
            unreachable!("the fixture bucket has puts only")
        };
        objects
            .put(change.key, serde_json::to_vec(&row).unwrap().into())
            .await
            .unwrap();
    }
    objects
        .put("platform-meeting.1", b"{}".to_vec().into())
        .await
        .unwrap();

    let sync = v2_sync(&t, client.clone(), mappings, Duration::from_secs(5), false);
    let handler = KvHandler::new(
        Arc::new(sync),
        KvParser::new(
            &objects_name,
            "",
            HashSet::from(["platform-meeting".into()]),
        ),
        objects.clone(),
    );
    let dlq = common::unique("dlq");
    let dead_letters = Arc::new(DeadLetters::ensure(js.clone(), &dlq).await.unwrap());
    let input = Input::new(
        handler,
        js.clone(),
        InputSettings {
            input: "kv",
            stream: format!("KV_{objects_name}"),
            subject: format!("$KV.{objects_name}.>"),
            consumer: "lfx-sync-kv".into(),
            deliver_policy: DeliverPolicy::LastPerSubject,
            workers: 4,
            max_in_flight: 64,
            max_deliver: 10,
            ack_wait: Duration::from_secs(30),
        },
        dead_letters,
    );
    let consumer = input.bind().await.unwrap();
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(input.run(consumer, stopped));

    assert!(
        eventually(Duration::from_secs(40), || t.standin.members().len() == 2).await,
        "not synced: {:?}",
        t.standin.seen()
    );
    assert_eq!(t.standin.projects().len(), 3);

    // A KV DEL of a member deletes it in v2.
    objects
        .delete(format!("platform-community__c.{M1}"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || t.standin.members().len() == 1).await,
        "member not deleted"
    );

    let _ = stop.send(true);
    running.await.unwrap();
    let mut dlq_stream = js.get_stream(&dlq).await.unwrap();
    let info = dlq_stream.info().await.unwrap();
    assert_eq!(info.state.messages, 0, "nothing is dead-lettered");
}
