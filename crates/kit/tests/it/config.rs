//! Configuration layering: defaults -> file -> `HANDOFF_*` environment, and one-line errors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use handoff_kit::admin::AdminConfig;
use handoff_kit::config::{ConfigError, Validate, load_with_env};
use handoff_kit::telemetry::{LogFormat, TelemetryConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Bus {
    url: String,
    prefetch: u16,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            url: "amqp://127.0.0.1:5672/%2f".into(),
            prefetch: 200,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TestConfig {
    bus: Bus,
    admin: AdminConfig,
    telemetry: TelemetryConfig,
    types: Vec<String>,
    limits: BTreeMap<String, u32>,
    #[serde(with = "humantime_serde")]
    grace: Duration,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            bus: Bus::default(),
            admin: AdminConfig::default(),
            telemetry: TelemetryConfig::default(),
            types: vec!["lead.created".into()],
            limits: BTreeMap::new(),
            grace: Duration::from_secs(20),
        }
    }
}

impl Validate for TestConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.bus.prefetch == 0 {
            return Err(ConfigError::invalid("bus.prefetch", "must be at least 1"));
        }
        Ok(())
    }
}

/// A TOML file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("handoff-kit-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn assert_one_line(err: &ConfigError) -> String {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "error is not one line: {msg:?}");
    msg
}

#[test]
fn defaults_without_file_or_env() {
    let cfg: TestConfig = load_with_env(None, &[]).unwrap();
    assert_eq!(cfg, TestConfig::default());
    assert_eq!(cfg.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(cfg.telemetry.log_format, LogFormat::Json);
    assert_eq!(cfg.telemetry.log_filter, "info");
}

#[test]
fn file_overrides_defaults_and_keeps_the_rest() {
    let file = TempFile::new(
        r#"
        grace = "5s"
        [bus]
        prefetch = 10
        [telemetry]
        log_format = "text"
        "#,
    );
    let cfg: TestConfig = load_with_env(Some(&file.0), &[]).unwrap();
    assert_eq!(cfg.bus.prefetch, 10);
    assert_eq!(
        cfg.bus.url,
        Bus::default().url,
        "unset keys keep their default"
    );
    assert_eq!(cfg.grace, Duration::from_secs(5));
    assert_eq!(cfg.telemetry.log_format, LogFormat::Text);
}

#[test]
fn env_overrides_file_with_nested_keys_lists_and_tables() {
    let file = TempFile::new("[bus]\nprefetch = 10\nurl = \"amqp://file:5672/%2f\"\n");
    let env = [
        ("HANDOFF_BUS__URL", "amqp://env:5672/%2f"),
        ("HANDOFF_TYPES", "[lead.created, \"meeting.booked\"]"),
        ("HANDOFF_LIMITS", "{ crm = 100, email = 10 }"),
        ("HANDOFF_ADMIN__LISTEN", "0.0.0.0:9191"),
        ("HANDOFF_GRACE", "30s"),
        ("HANDOFF_TELEMETRY__LOG_FILTER", "debug,lapin=warn"),
        ("UNRELATED", "ignored"),
        ("HANDOFF_TEST_REDIS_URL", "redis://elsewhere/"),
    ];
    let cfg: TestConfig = load_with_env(Some(&file.0), &env).unwrap();
    assert_eq!(cfg.bus.url, "amqp://env:5672/%2f");
    assert_eq!(
        cfg.bus.prefetch, 10,
        "file value survives when env does not set it"
    );
    assert_eq!(cfg.types, vec!["lead.created", "meeting.booked"]);
    assert_eq!(cfg.limits.get("crm"), Some(&100));
    assert_eq!(cfg.limits.get("email"), Some(&10));
    assert_eq!(cfg.admin.listen.to_string(), "0.0.0.0:9191");
    assert_eq!(cfg.grace, Duration::from_secs(30));
    assert_eq!(cfg.telemetry.log_filter, "debug,lapin=warn");
}

#[test]
fn handoff_config_names_the_file_and_an_explicit_path_wins() {
    let from_env = TempFile::new("[bus]\nprefetch = 7\n");
    let explicit = TempFile::new("[bus]\nprefetch = 9\n");
    let env_path = from_env.0.to_str().unwrap();

    let cfg: TestConfig = load_with_env(None, &[("HANDOFF_CONFIG", env_path)]).unwrap();
    assert_eq!(cfg.bus.prefetch, 7);

    let cfg: TestConfig =
        load_with_env(Some(&explicit.0), &[("HANDOFF_CONFIG", env_path)]).unwrap();
    assert_eq!(cfg.bus.prefetch, 9);
}

#[test]
fn a_missing_named_file_is_an_error() {
    let missing = std::env::temp_dir().join("handoff-kit-does-not-exist.toml");
    let err = load_with_env::<TestConfig>(Some(&missing), &[]).unwrap_err();
    assert!(matches!(err, ConfigError::FileNotFound { .. }));
    let msg = assert_one_line(&err);
    assert!(msg.contains("handoff-kit-does-not-exist.toml"), "{msg}");

    let err = load_with_env::<TestConfig>(None, &[("HANDOFF_CONFIG", missing.to_str().unwrap())])
        .unwrap_err();
    assert!(matches!(err, ConfigError::FileNotFound { .. }));
}

#[test]
fn a_wrong_type_in_env_names_the_key_and_the_variable() {
    let err = load_with_env::<TestConfig>(None, &[("HANDOFF_BUS__PREFETCH", "lots")]).unwrap_err();
    let msg = assert_one_line(&err);
    assert!(msg.contains("bus.prefetch"), "{msg}");
    assert!(msg.contains("HANDOFF_BUS__PREFETCH"), "{msg}");
}

#[test]
fn an_unknown_key_in_the_file_is_named() {
    let file = TempFile::new("[bus]\nprefech = 10\n");
    let err = load_with_env::<TestConfig>(Some(&file.0), &[]).unwrap_err();
    let msg = assert_one_line(&err);
    assert!(msg.contains("prefech"), "{msg}");
    assert!(msg.contains(file.0.to_str().unwrap()), "{msg}");
}

#[test]
fn an_unknown_env_key_is_named() {
    let err = load_with_env::<TestConfig>(None, &[("HANDOFF_BUSS__URL", "x")]).unwrap_err();
    let msg = assert_one_line(&err);
    assert!(msg.contains("buss"), "{msg}");
}

#[test]
fn malformed_toml_is_one_line() {
    let file = TempFile::new("[bus\nprefetch = = 10\n");
    let err = load_with_env::<TestConfig>(Some(&file.0), &[]).unwrap_err();
    let msg = assert_one_line(&err);
    assert!(msg.contains(file.0.to_str().unwrap()), "{msg}");
}

#[test]
fn validation_errors_name_the_key() {
    let err = load_with_env::<TestConfig>(None, &[("HANDOFF_BUS__PREFETCH", "0")]).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid(_)));
    assert_eq!(assert_one_line(&err), "bus.prefetch: must be at least 1");
}

/// `load_or_exit` prints one line and exits with 2. Runs itself as a child process (the child is
/// the test below, switched on by an environment variable) so the exit does not end this binary.
#[test]
fn load_or_exit_prints_one_line_and_exits_2() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "config::load_or_exit_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KIT_TEST_LOAD_OR_EXIT_CHILD", "1")
        .env("HANDOFF_CONFIG", "/nonexistent/handoff.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("kit-test: "))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"));
    assert_eq!(
        line,
        "kit-test: invalid configuration: configuration file /nonexistent/handoff.toml does not exist"
    );
}

#[test]
fn load_or_exit_child() {
    if std::env::var_os("KIT_TEST_LOAD_OR_EXIT_CHILD").is_none() {
        return;
    }
    let _cfg: TestConfig = handoff_kit::config::load_or_exit("kit-test");
    unreachable!("load_or_exit should have exited");
}
