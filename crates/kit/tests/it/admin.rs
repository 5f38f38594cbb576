//! The admin server started for real on port 0: `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use handoff_kit::admin::{self, Readiness};
use tokio_util::sync::CancellationToken;

struct Admin {
    base: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn spawn_admin(readiness: Readiness) -> Admin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(admin::serve(listener, readiness, shutdown.clone()));
    Admin {
        base,
        shutdown,
        task,
    }
}

#[test]
fn readiness_combines_checks_and_draining() {
    let readiness = Readiness::new();
    assert!(readiness.is_ready(), "no checks: ready");

    let bus = Arc::new(AtomicBool::new(false));
    let flag = bus.clone();
    readiness.register("bus", move || flag.load(Ordering::SeqCst));
    readiness.register("redis", || true);
    assert!(!readiness.is_ready());
    assert_eq!(readiness.report(), vec![("bus", false), ("redis", true)]);

    bus.store(true, Ordering::SeqCst);
    let shared = readiness.clone();
    assert!(shared.is_ready(), "clones share checks");

    readiness.register("redis", || false);
    assert_eq!(readiness.report().len(), 2, "same name replaces");
    assert!(!readiness.is_ready());
    readiness.register("redis", || true);

    shared.set_draining();
    assert!(!readiness.is_ready(), "draining is not ready");
    assert!(readiness.is_draining());
}

#[tokio::test]
async fn endpoints_report_health_readiness_and_metrics() {
    let readiness = Readiness::new();
    let redis_up = Arc::new(AtomicBool::new(false));
    let flag = redis_up.clone();
    readiness.register("redis", move || flag.load(Ordering::SeqCst));
    let admin = spawn_admin(readiness.clone()).await;
    let http = reqwest::Client::new();

    let res = http
        .get(format!("{}/healthz", admin.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ok");

    let res = http
        .get(format!("{}/readyz", admin.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["redis"], false);
    assert_eq!(body["failing"], serde_json::json!(["redis"]));

    redis_up.store(true, Ordering::SeqCst);
    let res = http
        .get(format!("{}/readyz", admin.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["ready"], true);
    assert_eq!(body["checks"]["redis"], true);

    metrics::counter!("handoff_kit_test_requests_total", "outcome" => "ok").increment(3);
    metrics::histogram!("handoff_kit_test_latency_seconds").record(0.003);
    let res = http
        .get(format!("{}/metrics", admin.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = res.text().await.unwrap();
    assert!(
        text.contains("handoff_kit_test_requests_total{outcome=\"ok\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("handoff_kit_test_latency_seconds_bucket{le=\"0.005\"} 1"),
        "histograms have buckets: {text}"
    );

    readiness.set_draining();
    let res = http
        .get(format!("{}/readyz", admin.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["draining"], true);

    admin.shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), admin.task)
        .await
        .expect("admin server stops when cancelled");
    stopped.unwrap().unwrap();
}

#[test]
fn metrics_install_returns_the_same_recorder() {
    let a = handoff_kit::metrics::install();
    let b = handoff_kit::metrics::install();
    metrics::counter!("handoff_kit_test_same_total").increment(1);
    assert!(a.render().contains("handoff_kit_test_same_total"));
    assert!(b.render().contains("handoff_kit_test_same_total"));
}
