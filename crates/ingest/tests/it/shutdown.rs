//! SIGTERM to the real binary while requests are in flight: every request
//! that got 202 is in the queue, and the process exits 0 within its grace.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_ingest::auth::key_sha256;
use handoff_test_support as support;
use tokio::sync::Mutex;

use crate::helpers::*;

#[tokio::test]
async fn sigterm_mid_flight_loses_no_accepted_event_and_exits_zero() {
    support::init_telemetry();
    let namespace = support::namespace();
    let http_addr = free_port();
    let admin_addr = free_port();
    let config = format!(
        r#"namespace = "{namespace}"
[http]
listen = "{http_addr}"
[admin]
listen = "{admin_addr}"
[bus]
url = "{amqp}"
[redis]
url = "{redis}"
[shutdown]
grace = "5s"
[telemetry]
log_format = "text"
log_filter = "warn"
[[publishers]]
id = "acme"
key_sha256 = "{hash}"
"#,
        amqp = support::amqp_url(),
        redis = support::redis_url(),
        hash = key_sha256(KEY),
    );
    let config_path = std::env::temp_dir().join(format!("{namespace}.toml"));
    std::fs::write(&config_path, config).expect("write config");

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_handoff-ingest"))
        .env("HANDOFF_CONFIG", &config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start handoff-ingest");
    let pid = child.id().expect("pid");

    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http
            .get(format!("http://{admin_addr}/readyz"))
            .send()
            .await
            .map(|r| r.status() == 200);
        if matches!(ready, Ok(true)) {
            break;
        }
        assert!(Instant::now() < deadline, "the binary did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let mut senders = Vec::new();
    for worker in 0..16 {
        let http = http.clone();
        let accepted = accepted.clone();
        senders.push(tokio::spawn(async move {
            for n in 0.. {
                let id = format!("evt_{worker}_{n}");
                let sent = http
                    .post(format!("http://{http_addr}/v1/events/customer.converted"))
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .body(seed_with_id(&id))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 202 => {
                        accepted.lock().await.insert(id);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sigterm_at = Instant::now();
    let killed = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {pid}"))
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within the grace period")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        sigterm_at.elapsed() < Duration::from_secs(6),
        "took {:?}",
        sigterm_at.elapsed()
    );
    for s in senders {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }

    let accepted = accepted.lock().await.clone();
    assert!(
        accepted.len() > 10,
        "the load did not run: {} accepted",
        accepted.len()
    );
    let inspector = inspector(&namespace).await;
    let in_queue: BTreeSet<String> = drain_raw(&inspector)
        .await
        .iter()
        .map(|d| envelope(d).event_id)
        .collect();
    let missing: Vec<_> = accepted.difference(&in_queue).collect();
    assert!(missing.is_empty(), "202 but not in the queue: {missing:?}");
    remove_namespace(inspector, &namespace).await;
    let _ = std::fs::remove_file(config_path);
}
