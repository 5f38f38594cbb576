//! 1,000 bad requests of every kind: each gets a 4xx with an error body, the
//! service stays up and ready, and nothing is published.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::helpers::*;

const TYPES: [&str; 6] = [
    "lead.created",
    "meeting.booked",
    "customer.converted",
    "deal.stage_changed",
    "payment.failed",
    "contact.updated",
];

fn random_scalar(rng: &mut StdRng) -> Value {
    match rng.random_range(0..7) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e12),
        4 => json!("x".repeat(rng.random_range(0..3000))),
        5 => json!([1, "two", null]),
        _ => json!({"nested": {"deeper": rng.random::<u32>()}}),
    }
}

/// A body that is wrong in one of many ways.
fn bad_body(rng: &mut StdRng, i: usize) -> String {
    let valid: Value = serde_json::from_str(SEED).expect("seed");
    match rng.random_range(0..8) {
        // Truncated JSON.
        0 => {
            let s = SEED.to_owned();
            let cut = rng.random_range(1..s.len() - 1);
            s[..cut].to_owned()
        }
        // Random bytes as text.
        1 => (0..rng.random_range(1..200))
            .map(|_| rng.random_range(0x20u8..0x7f) as char)
            .collect(),
        // A JSON scalar or array instead of an object.
        2 => random_scalar(rng).to_string(),
        // A required top-level field replaced by a wrong type.
        3 => {
            let mut v = valid;
            let field = ["event_id", "occurred_at", "customer"][rng.random_range(0..3)];
            v[field] = random_scalar(rng);
            if v[field].is_string() && field != "customer" {
                v[field] = json!(12345);
            }
            v.to_string()
        }
        // A nested field replaced by a wrong type.
        4 => {
            let mut v = valid;
            v["customer"]["email"] = json!({"not": "a string"});
            v["event_id"] = json!(format!("fz_{i}"));
            v.to_string()
        }
        // Huge strings.
        5 => {
            let mut v = valid;
            v["customer"]["first_name"] = json!("A".repeat(rng.random_range(300..10_000)));
            v["event_id"] = json!("E".repeat(rng.random_range(129..400)));
            v.to_string()
        }
        // Required pieces missing.
        6 => {
            let mut v = valid;
            if let Some(o) = v.as_object_mut() {
                o.remove(["event_id", "occurred_at", "customer"][rng.random_range(0..3)]);
            }
            v.to_string()
        }
        // Invalid UTF-8 and control characters inside strings.
        _ => {
            let mut s = SEED.replace("Alex", "\u{1}\u{2}");
            s.insert_str(1, "\"\\ud800\":1,");
            s
        }
    }
}

#[tokio::test]
async fn a_thousand_bad_requests_get_4xx_and_publish_nothing() {
    let app = spawn_ingest().await;
    let mut rng = StdRng::seed_from_u64(0x48_4f_46_46);
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let requests: Vec<(String, String)> = (0..1000)
        .map(|i| (TYPES[i % TYPES.len()].to_owned(), bad_body(&mut rng, i)))
        .collect();
    for chunk in requests.chunks(50) {
        let results =
            futures::future::join_all(chunk.iter().map(|(t, b)| app.post(t, KEY, b.clone()))).await;
        for (status, body, _) in results {
            assert!((400..500).contains(&status), "got {status}: {body}");
            assert!(body["error"]["code"].is_string(), "error body: {body}");
            *by_status.entry(status).or_default() += 1;
        }
    }
    assert_eq!(by_status.values().sum::<usize>(), 1000);
    assert!(
        by_status.contains_key(&400) && by_status.contains_key(&422),
        "{by_status:?}"
    );
    assert!(app.is_ready().await, "still ready after the storm");
    let (status, _, _) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 202, "still accepting good events");
    assert_eq!(
        app.raw_count().await,
        1,
        "only the good event was published"
    );
    app.stop().await;
}
