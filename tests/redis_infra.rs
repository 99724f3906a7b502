//! The test harness's real Redis Cluster and TLS Redis work as the tests of the cluster and
//! `rediss://` support expect.
mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::cluster::{key_slot, RedisCluster, SLOTS};
use support::tls_redis::{TlsRedis, TLS_USER};

/// Bounds an await that could otherwise hang the test.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 20s"))
}

#[tokio::test]
async fn the_local_cluster_spreads_keys_over_three_masters_and_survives_losing_one() {
    let started = Instant::now();
    let mut cluster = RedisCluster::start().await;
    eprintln!("cluster started in {:?}", started.elapsed());

    let masters = cluster.masters().await;
    let replicas = cluster.replicas().await;
    assert_eq!(masters.len(), 3, "masters: {masters:?}");
    assert_eq!(replicas.len(), 3, "replicas: {replicas:?}");
    assert_eq!(cluster.seed_urls().len(), 6);
    let url = cluster.cluster_url();
    assert!(
        url.starts_with("redis+cluster://127.0.0.1:") && url.ends_with('/'),
        "{url}"
    );
    assert_eq!(url.matches("127.0.0.1:").count(), 6, "{url}");
    for n in cluster.nodes() {
        assert_ne!(n.bus_port, n.port + 10000, "the bus port is chosen, not derived");
    }

    // The harness hashes keys to slots as Redis does.
    let mut direct = cluster.node_conn(masters[0]).await.unwrap();
    for key in [
        "",
        "a",
        "123456789",
        "user:{42}:profile",
        "{42}",
        "{}x",
        "x{",
        "a{b}c{d}",
        "é",
    ] {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut direct)
            .await
            .unwrap();
        assert_eq!(key_slot(key), slot, "slot of {key:?}");
    }
    assert_eq!(key_slot("123456789"), 0x31C3 % SLOTS);

    // A cluster client writes keys that land on each of the three masters.
    let client = cluster.client();
    let mut conn = within("cluster connect", client.get_async_connection()).await.unwrap();
    let mut keys = Vec::new();
    for &m in &masters {
        let key = cluster.key_on_master("infra:", m).await;
        assert_eq!(cluster.master_for_slot(key_slot(&key)).await, m);
        let _: () = within("SET", conn.set(&key, format!("on {m}"))).await.unwrap();
        keys.push((key, m));
    }
    for (key, m) in &keys {
        let via_cluster: String = within("GET", conn.get(key)).await.unwrap();
        assert_eq!(via_cluster, format!("on {m}"));
        let mut node = cluster.node_conn(*m).await.unwrap();
        let on_node: String = node.get(key).await.unwrap();
        assert_eq!(on_node, format!("on {m}"), "{key} is stored on 127.0.0.1:{m}");
    }

    // Wait until the first key reached its master's replica, so the failover keeps it.
    let (key, old_master) = keys[0].clone();
    let slot = key_slot(&key);
    let replica = cluster
        .slot_map()
        .await
        .into_iter()
        .find(|r| r.contains(slot))
        .and_then(|r| r.replicas.into_iter().next())
        .expect("the master has a replica");
    let mut on_replica = cluster.node_conn(replica).await.unwrap();
    let _: () = redis::cmd("READONLY").query_async(&mut on_replica).await.unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Option<String> = on_replica.get(&key).await.unwrap();
        if v.as_deref() == Some(format!("on {old_master}").as_str()) {
            break;
        }
        assert!(Instant::now() < end, "{key} never reached replica 127.0.0.1:{replica}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let failover = cluster.kill_master_of_slot(slot).await;
    eprintln!("failover: {failover:?}");
    assert_eq!(failover.killed, old_master);
    assert_eq!(failover.promoted, replica);
    assert_eq!(cluster.master_for_slot(slot).await, replica);
    assert!(!cluster.node(old_master).is_running());
    assert_eq!(cluster.masters().await.len(), 3);
    assert_eq!(cluster.seed_urls().len(), 5, "seeds are the running nodes");

    // The promoted replica kept the value, and the slot is writable again, both through the
    // connection made before the failover and through a new client.
    let kept: String = within("GET after failover", conn.get(&key)).await.unwrap();
    assert_eq!(kept, format!("on {old_master}"));
    let _: () = within("SET after failover", conn.set(&key, "after failover"))
        .await
        .unwrap();
    let mut fresh = within("new cluster connect", cluster.client().get_async_connection())
        .await
        .unwrap();
    let v: String = within("GET on a new client", fresh.get(&key)).await.unwrap();
    assert_eq!(v, "after failover");
    let mut node = cluster.node_conn(replica).await.unwrap();
    let v: String = node.get(&key).await.unwrap();
    assert_eq!(v, "after failover", "the promoted replica holds the write");
}

#[tokio::test]
async fn the_tls_redis_answers_its_acl_user_over_rediss_and_only_to_clients_trusting_its_ca() {
    let server = TlsRedis::start().await;
    let url = server.url();
    assert!(url.starts_with(&format!("rediss://{TLS_USER}:")), "{url}");
    let pem = std::fs::read_to_string(server.ca_file()).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

    let mut c = within("TLS connect", server.conn()).await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG");
    let who: String = redis::cmd("ACL").arg("WHOAMI").query_async(&mut c).await.unwrap();
    assert_eq!(who, TLS_USER);

    // A client with only the public roots does not trust the test CA: the handshake fails.
    let untrusting = redis::Client::open(url.clone()).unwrap();
    let err = within("untrusting connect", untrusting.get_multiplexed_async_connection())
        .await
        .expect_err("a client that does not trust the CA is refused");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");

    // Trusting the CA is not enough: the default user is off.
    let certs = || redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(server.ca_pem()),
    };
    let anonymous = redis::Client::build_with_tls(format!("rediss://127.0.0.1:{}/0", server.port), certs()).unwrap();
    let refused = match within("anonymous connect", anonymous.get_multiplexed_async_connection()).await {
        Ok(mut c) => redis::cmd("PING").query_async::<String>(&mut c).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without credentials is refused");
    let wrong = redis::Client::build_with_tls(
        format!("rediss://{TLS_USER}:wrong@127.0.0.1:{}/0", server.port),
        certs(),
    )
    .unwrap();
    assert!(
        within("wrong password connect", wrong.get_multiplexed_async_connection())
            .await
            .is_err()
    );
}
