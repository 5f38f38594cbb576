//! The real binary: a bad map stops it at start-up with one clear line, and
//! `check` prints a raw body's canonical form or its rejection.

use std::io::Write as _;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_handoff-normalizer");

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}", uuid::Uuid::new_v4()));
    std::fs::write(&path, contents).expect("write");
    path
}

/// The binary with a clean environment apart from what the test passes.
fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("HANDOFF_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn a_bad_map_stops_start_up_with_one_line_naming_it() {
    let config = temp_file(
        "bad-map.toml",
        r#"
[normalize.deal_stage]
targets = ["closedwon", "closedlost"]
on_unmapped = "reject"
[normalize.deal_stage.values]
"Closed Won" = "closedwon"
"closed-won" = "closedlost"
"#,
    );
    let output = command()
        .env("HANDOFF_CONFIG", &config)
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&config);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("handoff-normalizer: invalid configuration: normalize"),
        "{stderr}"
    );
    assert!(lines[0].contains("deal_stage"), "{stderr}");
}

fn check(args: &[&str], stdin: &str) -> (Option<i32>, serde_json::Value) {
    let mut child = command()
        .arg("check")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    let json = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output.status.code(), json)
}

#[test]
fn check_prints_the_canonical_form_or_the_rejection() {
    let messy = include_str!("../../../../deploy/demo-messy.json");
    let (code, out) = check(&["lead.created"], messy);
    assert_eq!(code, Some(0), "{out}");
    let contact = &out["canonical"]["lead_created"]["contact"];
    assert_eq!(contact["email"], "jordan.lee@example.org");
    assert_eq!(contact["phone"], "+14155550134");
    assert_eq!(contact["timezone"], "America/Los_Angeles");

    let (code, out) = check(
        &["customer.converted"],
        r#"{"event_id":"e","occurred_at":"2026-03-19T10:15:22Z","customer":{"email":"x@"}}"#,
    );
    assert_eq!(code, Some(1), "{out}");
    let fields = out["rejected"]["fields"].as_array().expect("fields");
    assert!(
        fields.iter().any(|f| f["path"] == "customer.email"),
        "{out}"
    );

    // A mapping change in a config file changes the answer.
    let config = temp_file(
        "plan.toml",
        "[normalize.plan]\ntargets = [\"gold\"]\non_unmapped = \"reject\"\n[normalize.plan.values]\npro = \"gold\"\n",
    );
    let seed = r#"{"event_id":"e","occurred_at":"2026-03-19T10:15:22Z","customer":{"email":"a@example.com","plan":"Pro"}}"#;
    let config_arg = format!("--config={}", config.display());
    let (code, out) = check(&["customer.converted", &config_arg], seed);
    let _ = std::fs::remove_file(&config);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out["canonical"]["customer_converted"]["subscription"]["plan"],
        "gold"
    );
}
