//! The Redis cluster backend against a real Redis: a private `redis-server`
//! on a free port, so the test may flush and restart it.

use std::time::Duration;

use sojourn_cluster::{Cluster, Lease, NodeInfo};
use sojourn_runtime::ExecutionId;
use sojourn_testkit::{PrivateRedis, free_port};

fn ids(n: usize) -> Vec<ExecutionId> {
    (0..n)
        .map(|i| ExecutionId::new(format!("exe_{i}")))
        .collect()
}

fn info(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        address: format!("http://{id}"),
        actors: 0,
        last_seen_ms: 0,
        started_ms: 0,
        draining: false,
    }
}

fn mine(leases: &[Lease]) -> Vec<String> {
    leases
        .iter()
        .map(|l| match l {
            Lease::Mine(t) => t.clone(),
            Lease::HeldBy(n) => panic!("held by {n}"),
        })
        .collect()
}

#[tokio::test]
async fn leases_are_exclusive_renewed_released_and_lost_to_a_flush() {
    let redis = PrivateRedis::start();
    let ttl = Duration::from_millis(400);
    let a = Cluster::redis(&redis.url(), "a", ttl).expect("a");
    let b = Cluster::redis(&redis.url(), "b", ttl).expect("b");
    let all = ids(2_500); // more than one script chunk
    let tokens = mine(&a.acquire(&all).await.expect("acquire"));
    let held: Vec<(ExecutionId, String)> = all.iter().cloned().zip(tokens).collect();
    // Taken: b is told who holds them.
    let got = b.acquire(&all[..3]).await.expect("acquire");
    assert_eq!(got, vec![Lease::HeldBy("a".into()); 3]);
    assert_eq!(b.holder(&all[0]).await.expect("holder"), Some("a".into()));
    let free = ExecutionId::new("exe_free".to_owned());
    assert_eq!(
        b.holders(&[all[0].clone(), free, all[1].clone()])
            .await
            .expect("holders"),
        vec![Some("a".into()), None, Some("a".into())]
    );
    // b renewing with a's tokens learns nothing it may keep: wrong tokens.
    let fake: Vec<(ExecutionId, String)> = all[..2]
        .iter()
        .map(|i| (i.clone(), "b#x:0".to_owned()))
        .collect();
    assert_eq!(b.renew(&fake).await.expect("renew"), all[..2].to_vec());
    // Renewed by a, they outlive their first TTL.
    for _ in 0..4 {
        tokio::time::sleep(ttl / 3).await;
        assert!(a.renew(&held).await.expect("renew").is_empty());
    }
    assert_eq!(
        b.acquire(&all[..1]).await.expect("acquire"),
        vec![Lease::HeldBy("a".into())]
    );
    // a takes one again (a new token): a release under the old token is a
    // no-op, so a late release cannot drop the new lease.
    let again = mine(&a.acquire(&all[..1]).await.expect("again"));
    assert_ne!(again[0], held[0].1);
    a.release(&held[..1]).await.expect("stale release");
    assert_eq!(b.holder(&all[0]).await.expect("holder"), Some("a".into()));
    a.release(&[(all[0].clone(), again[0].clone())])
        .await
        .expect("release");
    assert!(matches!(
        b.acquire(&all[..1]).await.expect("acquire")[0],
        Lease::Mine(_)
    ));
    // A restarted a (same id, new process) does not inherit its leases.
    let a2 = Cluster::redis(&redis.url(), "a", ttl).expect("a2");
    assert_eq!(
        a2.acquire(&all[1..2]).await.expect("acquire"),
        vec![Lease::HeldBy("a".into())]
    );
    // Not renewed, a's leases expire and b takes them.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(
        mine(&b.acquire(&all[1..3]).await.expect("acquire")).len(),
        2
    );
    // After a FLUSHALL every lease is lost: renewal says so.
    let b_held: Vec<(ExecutionId, String)> = all[5..7]
        .iter()
        .cloned()
        .zip(mine(&b.acquire(&all[5..7]).await.expect("acquire")))
        .collect();
    redis.cli(&["FLUSHALL"]);
    assert_eq!(b.renew(&b_held).await.expect("renew"), all[5..7].to_vec());
}

#[tokio::test]
async fn members_expire_once_and_redis_restarts_are_survived() {
    let port = free_port();
    let redis = PrivateRedis::start_on(port);
    let a = Cluster::redis(&redis.url(), "a", Duration::from_secs(5)).expect("a");
    let b = Cluster::redis(&redis.url(), "b", Duration::from_secs(5)).expect("b");
    a.heartbeat(&info("a"), Duration::from_secs(10))
        .await
        .expect("beat");
    b.heartbeat(&info("b"), Duration::from_millis(200))
        .await
        .expect("beat");
    let (live, dead) = a.members().await.expect("members");
    assert_eq!(
        live.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    assert!(dead.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (first, second) = tokio::join!(a.members(), b.members());
    let (live, dead_a) = first.expect("members");
    let (_, dead_b) = second.expect("members");
    assert_eq!(
        live.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        vec!["a"]
    );
    // Exactly one caller is told that b died.
    assert_eq!(dead_a.len() + dead_b.len(), 1);
    // Drain requests reach their node.
    assert!(!b.drain_requested().await.expect("drain"));
    a.request_drain("b").await.expect("drain");
    assert!(b.drain_requested().await.expect("drain"));
    b.clear_drain().await.expect("clear");
    assert!(!b.drain_requested().await.expect("drain"));
    assert_eq!(a.secret().await.expect("s"), b.secret().await.expect("s"));
    // Redis goes away: operations fail fast; it comes back empty: they work.
    drop(redis);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    assert!(a.ping().await.is_err());
    assert!(a.acquire(&ids(1)).await.is_err());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let _redis = PrivateRedis::start_on(port);
    let mut ok = false;
    for _ in 0..50 {
        if a.acquire(&ids(1)).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the cluster reconnects after a Redis restart");
}

#[tokio::test]
async fn finished_executions_are_announced_to_every_subscriber_across_a_restart() {
    let port = free_port();
    let mut redis = PrivateRedis::start_on(port);
    let a = Cluster::redis(&redis.url(), "a", Duration::from_secs(5)).expect("a");
    let b = Cluster::redis(&redis.url(), "b", Duration::from_secs(5)).expect("b");
    let mut feed_a = a.subscribe_finished().await.expect("a").expect("a feed");
    let mut feed_b = b.subscribe_finished().await.expect("b").expect("b feed");
    // One message for many ids, heard by every node (the sender too).
    b.publish_finished(&ids(3)).await.expect("publish");
    b.publish_finished(&[]).await.expect("nothing to publish");
    for feed in [&mut feed_a, &mut feed_b] {
        let heard = tokio::time::timeout(Duration::from_secs(5), feed.next())
            .await
            .expect("in time")
            .expect("announced");
        assert_eq!(heard.ids(), ids(3));
    }
    // Redis restarts: the feed says it is gone; a new one hears again.
    redis.kill();
    let gone = tokio::time::timeout(Duration::from_secs(15), feed_a.next())
        .await
        .expect("the feed notices within its keepalive");
    assert!(gone.is_err(), "{gone:?}");
    redis.restart();
    let mut again = None;
    for _ in 0..50 {
        if let Ok(Some(f)) = a.subscribe_finished().await {
            again = Some(f);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut feed = again.expect("subscribed again after the restart");
    let mut published = false;
    for _ in 0..50 {
        if b.publish_finished(&ids(1)).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published, "publishing works again after the restart");
    let heard = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("in time")
        .expect("announced");
    assert_eq!(heard.ids(), ids(1));
    // In process: nothing to subscribe to, nothing to publish.
    let local = Cluster::local("l", Duration::from_secs(5));
    assert!(local.subscribe_finished().await.expect("local").is_none());
    local.publish_finished(&ids(2)).await.expect("local");
}
