//! Layered configuration: defaults in code, then an optional TOML file, then `HANDOFF_*` environment
//! variables, validated before any work starts.
//!
//! Every service defines its own config struct (`Serialize + Deserialize + Default`, usually with
//! `#[serde(default, deny_unknown_fields)]`) and implements [`Validate`] for the rules serde cannot
//! express. [`load`] reads the process environment; [`load_with_env`] takes the environment as a
//! slice so tests never mutate the process environment (a habit taken from linkerd2-proxy).
//! [`load_or_exit`] is what a `main.rs` calls: one clear line on stderr and exit code 2 when the
//! configuration is wrong.
//!
//! Environment variables: `HANDOFF_BUS__URL=amqp://...` sets `bus.url` (nested keys are separated by
//! a double underscore, keys are lower-cased). Values are parsed like TOML values, so
//! `HANDOFF_INGEST__TYPES=[a, b]` is a list and `HANDOFF_X={ a = 1 }` an inline table; anything that
//! does not parse is taken as a plain string. `HANDOFF_CONFIG` names the file and is not a key;
//! `HANDOFF_TEST_*` belongs to the test harness and `HANDOFF_DLQ_*` to the operator CLI; both are
//! ignored.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Prefix of every environment variable that sets a configuration key.
pub const ENV_PREFIX: &str = "HANDOFF_";

/// Environment variable naming the configuration file when no `--config` is given.
pub const CONFIG_FILE_ENV: &str = "HANDOFF_CONFIG";

/// Prefix reserved for the test harness (`HANDOFF_TEST_REDIS_URL`, ...): never a configuration key,
/// so a developer's test settings cannot make a service refuse to start.
pub const TEST_ENV_PREFIX: &str = "HANDOFF_TEST_";

/// Prefix reserved for the operator CLI (`HANDOFF_DLQ_URL`, `HANDOFF_DLQ_TOKEN`): never a
/// configuration key, so an SRE's exported token cannot make a service refuse to start.
pub const CLI_ENV_PREFIX: &str = "HANDOFF_DLQ_";

/// Separator between nested keys in an environment variable name (`HANDOFF_BUS__URL` -> `bus.url`).
pub const ENV_KEY_SEPARATOR: &str = "__";

/// Checks that serde cannot express (URL schemes, ranges, cross-field rules), run after loading.
pub trait Validate {
    /// Returns [`ConfigError::Invalid`] naming the offending key when the configuration is unusable;
    /// [`ConfigError::invalid`] builds one in the usual "key: reason" shape.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Why a configuration could not be loaded. `Display` is always one line that names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named configuration file does not exist (a file that is asked for must be there).
    #[error("configuration file {} does not exist", path.display())]
    FileNotFound {
        /// The path that was asked for.
        path: PathBuf,
    },
    /// A value has the wrong type, a key is unknown, or the file is not valid TOML.
    #[error("{0}")]
    Parse(String),
    /// A value parsed but breaks a rule checked by [`Validate`]; the message names the key.
    #[error("{0}")]
    Invalid(String),
    /// The command line could not be understood (`--config` without a path).
    #[error("{0}")]
    Args(String),
}

/// Checks a namespace (the prefix of every exchange, queue and Redis key): non-empty, and only
/// letters, digits, `-` and `_`, so it is safe in AMQP names and Redis keys alike.
pub fn check_namespace(namespace: &str) -> Result<(), ConfigError> {
    let valid = !namespace.is_empty()
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "namespace",
            format!("{namespace:?} must be non-empty and use only letters, digits, '-' and '_'"),
        ))
    }
}

impl ConfigError {
    /// Builds [`ConfigError::Invalid`] as `"<key>: <reason>"`, the shape every validation error uses.
    pub fn invalid(key: &str, reason: impl std::fmt::Display) -> Self {
        ConfigError::Invalid(format!("{key}: {reason}"))
    }

    fn from_figment(err: figment::Error) -> Self {
        // figment may carry several errors; each becomes one clause so the whole stays on one line.
        let clauses: Vec<String> = err.into_iter().map(|e| describe(&e)).collect();
        ConfigError::Parse(one_line(&clauses.join("; ")))
    }
}

/// Renders one figment error as "key `a.b`: <what> (from <source>)".
fn describe(err: &figment::Error) -> String {
    let what = one_line(&err.kind.to_string());
    let mut out = if err.path.is_empty() {
        what
    } else {
        format!("key `{}`: {what}", err.path.join("."))
    };
    if let Some(md) = &err.metadata {
        match (&md.source, &err.profile) {
            (Some(figment::Source::File(path)), _) => {
                out.push_str(&format!(" (in file {})", path.display()));
            }
            _ if md.name == ENV_METADATA_NAME && !err.path.is_empty() => {
                let keys: Vec<&str> = err.path.iter().map(String::as_str).collect();
                out.push_str(&format!(" (from {})", env_var_name(&keys)));
            }
            _ => out.push_str(&format!(" (from {})", md.name)),
        }
    }
    out
}

/// Collapses line breaks (TOML parse errors draw a little source excerpt) into single spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

const ENV_METADATA_NAME: &str = "HANDOFF_* environment variable";

/// The environment variable that sets the key path `keys`.
fn env_var_name(keys: &[&str]) -> String {
    let upper: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
    format!("{ENV_PREFIX}{}", upper.join(ENV_KEY_SEPARATOR))
}

/// A figment provider over an explicit list of environment variables (the process environment in
/// production, a literal slice in tests).
struct EnvProvider {
    vars: Vec<(String, String)>,
}

impl EnvProvider {
    fn new<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let vars = vars
            .into_iter()
            .filter(|(k, _)| {
                *k != CONFIG_FILE_ENV
                    && !k.starts_with(TEST_ENV_PREFIX)
                    && !k.starts_with(CLI_ENV_PREFIX)
            })
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(ENV_PREFIX)?;
                Some((rest.to_ascii_lowercase(), v.to_owned()))
            })
            .collect();
        EnvProvider { vars }
    }
}

impl Provider for EnvProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_METADATA_NAME)
            .interpolater(|_: &Profile, keys: &[&str]| env_var_name(keys))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, raw) in &self.vars {
            let path: Vec<&str> = key.split(ENV_KEY_SEPARATOR).collect();
            if path.iter().any(|segment| segment.is_empty()) {
                return Err(figment::Error::from(format!(
                    "environment variable {ENV_PREFIX}{} has an empty key segment",
                    key.to_ascii_uppercase()
                )));
            }
            // Parsing cannot fail: anything that is not a TOML-like value becomes a string.
            let Ok(value) = raw.parse::<Value>();
            insert_path(&mut dict, &path, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Inserts `value` at `path` in `dict`, creating (or replacing non-table values with) nested tables.
fn insert_path(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::Dict(Tag::Default, Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// Loads `T` from defaults, then the file (`path`, else `HANDOFF_CONFIG`), then the process's
/// `HANDOFF_*` environment variables, and validates it.
pub fn load<T>(path: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    // Variables that are not valid Unicode cannot be ours; they are skipped rather than failing.
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    load_with_env(path, &env)
}

/// Same as [`load`], but with an explicit environment instead of the process environment.
pub fn load_with_env<T>(path: Option<&Path>, env: &[(&str, &str)]) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let file: Option<PathBuf> = match path {
        Some(p) => Some(p.to_path_buf()),
        None => env
            .iter()
            .find(|(k, v)| *k == CONFIG_FILE_ENV && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v)),
    };

    // Defaults come from serde (`#[serde(default)]` on every config struct), not from a
    // serialized copy merged underneath: figment unions maps, so a map in a file (an enum
    // table under `[normalize]`) could never drop a default key. This way a table the
    // file gives is the table; everything it leaves out keeps its default.
    let mut figment = Figment::new();
    if let Some(file) = file {
        // `Toml::file` would silently skip a missing file (and search parent directories); a file
        // someone named must exist, so check first and then read exactly that path.
        if !file.is_file() {
            return Err(ConfigError::FileNotFound { path: file });
        }
        figment = figment.merge(Toml::file_exact(&file));
    }
    figment = figment.merge(EnvProvider::new(env.iter().copied()));

    let cfg: T = figment.extract().map_err(ConfigError::from_figment)?;
    cfg.validate()?;
    Ok(cfg)
}

/// Finds `--config PATH`, `--config=PATH` or `-c PATH` in `args` (program name excluded); every other
/// argument is ignored.
pub fn config_path_from_args<I>(args: I) -> Result<Option<PathBuf>, ConfigError>
where
    I: IntoIterator<Item = String>,
{
    let mut args = args.into_iter();
    let mut found = None;
    while let Some(arg) = args.next() {
        if arg == "--config" || arg == "-c" {
            match args.next() {
                Some(p) if !p.is_empty() => found = Some(PathBuf::from(p)),
                _ => return Err(ConfigError::Args(format!("{arg} needs a file path"))),
            }
        } else if let Some(p) = arg.strip_prefix("--config=") {
            if p.is_empty() {
                return Err(ConfigError::Args("--config needs a file path".into()));
            }
            found = Some(PathBuf::from(p));
        }
    }
    Ok(found)
}

/// Loads the configuration for `service` from `--config PATH` / `-c PATH` (or `HANDOFF_CONFIG`) and
/// the environment; on any error prints `"<service>: invalid configuration: <error>"` to stderr and
/// exits with code 2, before any work starts.
pub fn load_or_exit<T>(service: &str) -> T
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let loaded =
        config_path_from_args(std::env::args().skip(1)).and_then(|path| load::<T>(path.as_deref()));
    match loaded {
        Ok(cfg) => cfg,
        Err(err) => {
            eprintln!("{service}: invalid configuration: {err}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_found_and_others_ignored() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(config_path_from_args(args(&[])).unwrap(), None);
        assert_eq!(
            config_path_from_args(args(&["--verbose", "-c", "a.toml"])).unwrap(),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            config_path_from_args(args(&["--config=b.toml"])).unwrap(),
            Some(PathBuf::from("b.toml"))
        );
        assert!(config_path_from_args(args(&["--config"])).is_err());
    }

    #[test]
    fn the_harness_and_the_cli_variables_are_not_configuration() {
        #[derive(Debug, Default, Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        struct Small {
            namespace: String,
        }
        impl Validate for Small {
            fn validate(&self) -> Result<(), ConfigError> {
                Ok(())
            }
        }
        let env = [
            ("HANDOFF_NAMESPACE", "ns1"),
            ("HANDOFF_TEST_REDIS_URL", "redis://x"),
            ("HANDOFF_DLQ_TOKEN", "secret"),
            ("HANDOFF_DLQ_URL", "http://127.0.0.1:8095"),
        ];
        let cfg: Small = load_with_env(None, &env).expect("loads");
        assert_eq!(cfg.namespace, "ns1");
        let err = load_with_env::<Small>(None, &[("HANDOFF_COLOUR", "red")]).expect_err("unknown");
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn env_names_round_trip() {
        assert_eq!(env_var_name(&["bus", "url"]), "HANDOFF_BUS__URL");
    }
}
