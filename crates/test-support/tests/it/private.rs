//! A private Redis keeps acknowledged writes across a SIGKILL (AOF, `appendfsync always`); a
//! private RabbitMQ node keeps a confirmed persistent message in a durable quorum queue across
//! a SIGKILL and a graceful stop.

use std::time::{Duration, Instant};

use handoff_test_support::private::{PrivateRabbit, PrivateRedis};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connecting to the private redis")
}

#[tokio::test]
async fn private_redis_keeps_acknowledged_writes_across_a_crash_and_a_stop() {
    let started = Instant::now();
    let redis = PrivateRedis::start_aof().await;
    eprintln!("redis start: {:?}", started.elapsed());
    let mut conn = redis_conn(&redis.url()).await;
    let () = redis::cmd("SET")
        .arg("k")
        .arg("before the crash")
        .query_async(&mut conn)
        .await
        .expect("SET");

    redis.kill();
    let started = Instant::now();
    redis.start_again().await;
    eprintln!("redis start_again after kill: {:?}", started.elapsed());
    let mut conn = redis_conn(&redis.url()).await;
    let got: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(got.as_deref(), Some("before the crash"));

    let () = redis::cmd("SET")
        .arg("k2")
        .arg("before the stop")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let started = Instant::now();
    redis.stop().await;
    eprintln!("redis stop: {:?}", started.elapsed());
    redis.start_again().await;
    let mut conn = redis_conn(&redis.url()).await;
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg("k")
        .arg("k2")
        .query_async(&mut conn)
        .await
        .expect("MGET");
    assert_eq!(
        got,
        vec![
            Some("before the crash".to_owned()),
            Some("before the stop".to_owned())
        ]
    );
}

const QUEUE: &str = "private-test";

async fn amqp(url: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connecting to the private RabbitMQ");
    let channel = conn.create_channel().await.expect("a channel");
    (conn, channel)
}

/// The durable quorum queue the dead-letter handler's queues are made of.
async fn declare(channel: &lapin::Channel) {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(QUEUE.into(), QueueDeclareOptions::durable(), args)
        .await
        .expect("declaring the quorum queue");
}

async fn get_one(url: &str) -> Option<Vec<u8>> {
    let (conn, channel) = amqp(url).await;
    declare(&channel).await;
    let got = channel
        .basic_get(QUEUE.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get");
    let body = match got {
        Some(message) => {
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            Some(message.delivery.data)
        }
        None => None,
    };
    let _ = conn.close(200, "done".into()).await;
    body
}

#[tokio::test]
async fn private_rabbit_keeps_a_confirmed_message_across_a_crash_and_a_stop_and_leaves_nothing_behind()
 {
    let started = Instant::now();
    let rabbit = PrivateRabbit::start().await;
    eprintln!("rabbit start: {:?}", started.elapsed());

    let (conn, channel) = amqp(&rabbit.amqp_url()).await;
    declare(&channel).await;
    // See `PrivateRabbit::kill`: the queue's registration reaches the disk within 500 ms.
    tokio::time::sleep(Duration::from_secs(1)).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for body in [&b"first"[..], b"second"] {
        let confirm = channel
            .basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                body,
                // 2 = persistent.
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("basic.publish")
            .await
            .expect("a confirm");
        assert!(confirm.is_ack(), "the broker nacked the publish");
    }

    // At once: a confirmed message must already be on disk.
    rabbit.kill();
    drop(channel);
    drop(conn);
    let started = Instant::now();
    rabbit.start_again().await;
    eprintln!("rabbit start_again after kill: {:?}", started.elapsed());
    assert_eq!(
        get_one(&rabbit.amqp_url()).await.as_deref(),
        Some(&b"first"[..])
    );

    let started = Instant::now();
    rabbit.stop().await;
    eprintln!("rabbit stop: {:?}", started.elapsed());
    let started = Instant::now();
    rabbit.start_again().await;
    eprintln!("rabbit start_again after stop: {:?}", started.elapsed());
    assert_eq!(
        get_one(&rabbit.amqp_url()).await.as_deref(),
        Some(&b"second"[..])
    );
    assert_eq!(get_one(&rabbit.amqp_url()).await, None);

    // Dropped, it leaves nothing behind (checked here rather than in a test of its own:
    // every private RabbitMQ costs the whole suite seconds of CPU to boot).
    let redis = PrivateRedis::start_aof().await;
    let (redis_dir, rabbit_dir) = (redis.dir().to_owned(), rabbit.dir().to_owned());
    let (redis_port, rabbit_port) = (redis.port(), rabbit.port());
    drop(redis);
    drop(rabbit);
    assert!(!redis_dir.exists() && !rabbit_dir.exists());
    // Drop reaps the servers, so their ports are closed at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for port in [redis_port, rabbit_port] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still accepts connections"
        );
    }
}

/// Where [`killed_holder`] reports what it started; set only by
/// [`a_test_killed_without_drop_leaves_nothing_behind`].
const KILLED_HOLDER_REPORT: &str = "HANDOFF_TEST_KILLED_HOLDER_REPORT";

/// Does nothing unless run by [`a_test_killed_without_drop_leaves_nothing_behind`] in a child
/// process: then starts both servers and SIGKILLs its own process, as nextest does to a test
/// that timed out, so no `Drop` runs.
#[tokio::test]
async fn killed_holder() {
    let Ok(report) = std::env::var(KILLED_HOLDER_REPORT) else {
        return;
    };
    let redis = PrivateRedis::start_aof().await;
    let rabbit = PrivateRabbit::start().await;
    let lines = [
        redis.dir().display().to_string(),
        rabbit.dir().display().to_string(),
        redis.port().to_string(),
        rabbit.port().to_string(),
        rabbit.node().to_owned(),
    ];
    std::fs::write(report, lines.join("\n")).expect("writing the report");
    let _ = std::process::Command::new("kill")
        .args(["-s", "KILL", &std::process::id().to_string()])
        .status();
    std::thread::sleep(Duration::from_secs(60));
    unreachable!("still alive after SIGKILL");
}

#[tokio::test]
async fn a_test_killed_without_drop_leaves_nothing_behind() {
    let report = std::env::temp_dir().join(format!(
        "handoff-killed-holder-{}",
        handoff_test_support::namespace()
    ));
    let status = tokio::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "private::killed_holder", "--nocapture"])
        .env(KILLED_HOLDER_REPORT, &report)
        .status()
        .await
        .expect("running the holder");
    assert!(!status.success(), "the holder was meant to be killed");
    let text = std::fs::read_to_string(&report).expect("the holder's report");
    let _ = std::fs::remove_file(&report);
    let lines: Vec<&str> = text.lines().collect();
    let [redis_dir, rabbit_dir, redis_port, rabbit_port, node] = lines[..] else {
        panic!("unexpected report: {text}");
    };

    // The watchdogs notice the closed pipe at once; killing and removing takes a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dirs_left = [redis_dir, rabbit_dir]
            .into_iter()
            .filter(|d| std::path::Path::new(d).exists())
            .count();
        let ports_open = [redis_port, rabbit_port]
            .into_iter()
            .filter(|p| std::net::TcpStream::connect(format!("127.0.0.1:{p}")).is_ok())
            .count();
        let vm_left = processes_mentioning(node);
        if dirs_left == 0 && ports_open == 0 && vm_left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {dirs_left} directories, {ports_open} open ports, processes {vm_left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Live (not zombie) processes whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}
