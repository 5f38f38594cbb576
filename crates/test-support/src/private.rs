//! Private Redis and RabbitMQ servers on free ports, for tests that crash and restart them.
//!
//! The shared servers (6379, 5672) must never be stopped by a test; a test that needs a real
//! crash starts a [`PrivateRedis`] or [`PrivateRabbit`] of its own in a temporary directory,
//! then [`kill`](PrivateRabbit::kill)s (SIGKILL), [`stop`](PrivateRabbit::stop)s (graceful) and
//! [`start_again`](PrivateRabbit::start_again)s it on the same port with the same data.
//!
//! Each server runs in a process group of its own, so a signal to the test's group (Ctrl-C,
//! nextest's timeout) does not reach it. A small `sh` watchdog per instance holds a pipe from
//! the test process: when the test process dies without running `Drop` (nextest SIGKILLs a
//! test that timed out), the pipe closes and the watchdog kills the server and removes its
//! directory, so nothing outlives the test.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a private Redis may take to answer PING.
const REDIS_READY: Duration = Duration::from_secs(10);
/// How long a private RabbitMQ node may take to accept AMQP connections (about 5 s on an idle
/// machine; much more beside a full parallel test run on two cores).
const RABBIT_READY: Duration = Duration::from_secs(90);
/// How long a graceful stop may take before the test fails.
const STOP_WITHIN: Duration = Duration::from_secs(60);

/// A Redis of the test's own with AOF on (`appendfsync always`), so that a crash
/// ([`PrivateRedis::kill`]) loses nothing a client saw acknowledged.
pub struct PrivateRedis {
    port: u16,
    instance: Instance,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free port in a fresh directory and waits until it answers PING.
    pub async fn start_aof() -> PrivateRedis {
        let [port] = free_ports();
        let redis = PrivateRedis {
            port,
            instance: Instance::new("redis", false),
        };
        redis.start_again().await;
        redis
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where its AOF and log live.
    pub fn dir(&self) -> &Path {
        &self.instance.dir
    }

    /// A crash: SIGKILL, no chance to flush anything.
    pub fn kill(&self) {
        self.instance.kill();
    }

    /// A graceful shutdown (SIGTERM: Redis fsyncs the AOF and exits); waits for the exit.
    pub async fn stop(&self) {
        self.instance.signal_leader("TERM");
        self.instance.wait_exit(STOP_WITHIN, "redis-server").await;
    }

    /// Starts it again on the same port and directory, so it reloads its AOF; waits for PING.
    pub async fn start_again(&self) {
        let dir = self.instance.dir.to_string_lossy().into_owned();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &dir])
            // Every write is on disk before the reply: a SIGKILL must not lose an acknowledged write.
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            // No RDB snapshots: what survives a restart is the AOF alone, the thing under test.
            .args(["--save", ""])
            .args(["--daemonize", "no"]);
        self.instance.spawn(cmd);
        let deadline = Instant::now() + REDIS_READY;
        while !self.answers_ping().await {
            self.instance.fail_if_exited("redis-server");
            if Instant::now() > deadline {
                panic!(
                    "the private redis-server on port {} did not answer PING within {REDIS_READY:?}; log tail:\n{}",
                    self.port,
                    self.instance.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn answers_ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let ping = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
    }
}

/// A RabbitMQ node of the test's own (`handoff-test-<random>@localhost`), whose durable quorum
/// queues and their messages survive [`PrivateRabbit::kill`] and [`PrivateRabbit::stop`].
///
/// It runs as the current user with everything in its directory: its own config (the system
/// `/etc/rabbitmq/rabbitmq.conf` listens on 5672), no plugins (management would take 15672),
/// its own Erlang cookie under its own `HOME`, its distribution port on loopback. It registers
/// with the shared epmd, which is fine to share.
pub struct PrivateRabbit {
    node: String,
    port: u16,
    dist_port: u16,
    instance: Instance,
}

impl PrivateRabbit {
    /// Starts a node on a free port in a fresh directory and waits until AMQP connections succeed.
    pub async fn start() -> PrivateRabbit {
        let [port, dist_port] = free_ports();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let rabbit = PrivateRabbit {
            node: format!("handoff-test-{}@localhost", &id[..12]),
            port,
            dist_port,
            // The VM first, so that the start script reaps it and exits on its own; a SIGKILL to
            // the whole group at once would leave the VM's zombie to init.
            instance: Instance::new("rabbit", true),
        };
        rabbit.write_files(&id);
        rabbit.start_again().await;
        rabbit
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (guest may log in over loopback).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The AMQP port, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Erlang node name, for `/usr/lib/rabbitmq/bin/rabbitmqctl -n` with `HOME` set to
    /// [`PrivateRabbit::home`] (Debian's `/usr/sbin/rabbitmqctl` runs as `rabbitmq`, whose
    /// cookie differs).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The `HOME` whose `.erlang.cookie` lets `rabbitmqctl` talk to this node.
    pub fn home(&self) -> PathBuf {
        self.instance.dir.join("home")
    }

    /// Where its data and log live.
    pub fn dir(&self) -> &Path {
        &self.instance.dir
    }

    /// A crash: SIGKILL of the Erlang VM, no chance to flush anything.
    ///
    /// RabbitMQ 3.10 (Ra 2.2) writes its registry of quorum queue servers (`names.dets`) to
    /// disk only every 500 ms: a quorum queue declared less than that before a crash comes
    /// back without a leader, for good (fixed upstream in rabbitmq/ra#443). Let declarations
    /// settle for a second before calling this; messages need no such wait.
    pub fn kill(&self) {
        self.instance.kill();
    }

    /// A graceful stop, as an operator's: SIGTERM (the start script passes it on to the VM,
    /// which stops RabbitMQ cleanly); waits until the node has exited.
    pub async fn stop(&self) {
        self.instance.signal_leader("TERM");
        self.instance
            .wait_exit(STOP_WITHIN, "rabbitmq-server")
            .await;
    }

    /// Starts the same node again (name, port, data directory); waits until it accepts AMQP
    /// connections, by which time its queues are recovered.
    pub async fn start_again(&self) {
        let dir = &self.instance.dir;
        // A stale pid file would name the previous VM.
        let _ = fs::remove_file(dir.join("rabbitmq.pid"));
        let mut cmd = Command::new(rabbitmq_server());
        cmd.current_dir(dir)
            // The Erlang cookie is read from $HOME; ours, so rabbitmqctl can use it too.
            .env("HOME", self.home())
            .env("RABBITMQ_NODENAME", &self.node)
            // The AMQP listener is in our rabbitmq.conf; the distribution port defaults to
            // AMQP port + 20000, which may be taken or out of range.
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
            // "-": to stdout, which goes to our log file, so one file holds everything.
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            // Our own files instead of /etc/rabbitmq, whose listener is the shared node's 5672.
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            // Erlang distribution on loopback only, as the shared node's.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
        self.instance.spawn(cmd);
        let deadline = Instant::now() + RABBIT_READY;
        while !self.accepts_amqp().await {
            self.instance.fail_if_exited("rabbitmq-server");
            if Instant::now() > deadline {
                panic!(
                    "the private RabbitMQ node {} (port {}) did not accept AMQP connections within {RABBIT_READY:?}; log tail:\n{}",
                    self.node,
                    self.port,
                    self.instance.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn write_files(&self, id: &str) {
        let dir = &self.instance.dir;
        let home = self.home();
        for sub in [home.as_path(), &dir.join("mnesia"), &dir.join("log")] {
            fs::create_dir_all(sub).unwrap_or_else(|e| panic!("creating {}: {e}", sub.display()));
        }
        // Erlang refuses a cookie file that others can read.
        let cookie = home.join(".erlang.cookie");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&cookie)
            .and_then(|mut f| f.write_all(id.to_uppercase().as_bytes()))
            .unwrap_or_else(|e| panic!("writing {}: {e}", cookie.display()));
        let config = format!("listeners.tcp.1 = 127.0.0.1:{}\n", self.port);
        write(&dir.join("rabbitmq.conf"), &config);
        write(&dir.join("rabbitmq-env.conf"), "");
        write(&dir.join("enabled_plugins"), "[].\n");
    }

    async fn accepts_amqp(&self) -> bool {
        let url = self.amqp_url();
        let connect = lapin::Connection::connect(&url, lapin::ConnectionProperties::default());
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(conn)) => {
                let _ = conn.close(200, "ready".into()).await;
                true
            }
            _ => false,
        }
    }
}

/// A server process's directory, its current process and the watchdog behind both.
struct Instance {
    dir: PathBuf,
    log: PathBuf,
    /// The server (for RabbitMQ: its start script, whose child is the VM); leader of its group.
    server: Mutex<Option<Child>>,
    /// `sh` waiting for EOF on its stdin, which only this process holds open.
    watchdog: Option<Child>,
    /// Whether [`Instance::kill`] SIGKILLs the leader's children before the group.
    children_first: bool,
}

/// Kills the process group named in `$1/pgid` and removes `$1` once stdin closes.
const WATCHDOG: &str = r#"read _; pg=$(cat "$1/pgid" 2>/dev/null); [ -n "$pg" ] && kill -KILL -"$pg" 2>/dev/null; rm -rf "$1""#;

impl Instance {
    fn new(kind: &str, children_first: bool) -> Instance {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("handoff-private-{kind}-{}", &id[..12]));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let watchdog = Command::new("sh")
            .args(["-c", WATCHDOG, "handoff-watchdog"])
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so that a signal to the test's group does not take it first.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the watchdog (sh): {e}"));
        Instance {
            log: dir.join("server.log"),
            dir,
            server: Mutex::new(None),
            watchdog: Some(watchdog),
            children_first,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.server.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self, mut cmd: Command) {
        let mut server = self.lock();
        if let Some(child) = server.as_mut() {
            assert!(
                !matches!(child.try_wait(), Ok(None)),
                "the private server in {} is still running; stop or kill it first",
                self.dir.display()
            );
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log.display()));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log.display()));
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        write(&self.dir.join("pgid"), &child.id().to_string());
        *server = Some(child);
    }

    /// Sends `sig` to the group leader (the process we started), if it is running.
    fn signal_leader(&self, sig: &str) {
        let mut server = self.lock();
        if let Some(child) = server.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            signal(child.id(), sig);
        }
    }

    /// The leader's child processes (for RabbitMQ: the Erlang VM).
    fn leader_children(&self) -> Vec<u32> {
        let mut server = self.lock();
        let Some(child) = server.as_mut() else {
            return Vec::new();
        };
        let pid = child.id();
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// SIGKILLs the whole group and reaps the leader.
    fn kill(&self) {
        if self.children_first {
            for child in self.leader_children() {
                signal(child, "KILL");
            }
            self.wait_exit_blocking(Duration::from_secs(5));
        }
        let mut server = self.lock();
        if let Some(mut child) = server.take() {
            // The leader is not reaped yet, so its pid (the group id) cannot have been reused.
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        self.clear_pgid();
    }

    /// Nothing for the watchdog to kill; never panics, as it runs in `Drop`.
    fn clear_pgid(&self) {
        let _ = fs::write(self.dir.join("pgid"), "");
    }

    /// Waits up to `within` for the leader to exit on its own, without an async runtime.
    fn wait_exit_blocking(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !matches!(self.lock().as_mut().map(Child::try_wait), Some(Ok(None))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the leader to exit after a graceful signal; fails the test after `within`.
    async fn wait_exit(&self, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        loop {
            {
                let mut server = self.lock();
                match server.as_mut().map(Child::try_wait) {
                    Some(Ok(None)) => {}
                    _ => {
                        // Reaped by try_wait; the group id may be reused from here on.
                        *server = None;
                        self.clear_pgid();
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "{what} in {} did not stop within {within:?}; log tail:\n{}",
                    self.dir.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails the test at once, with the log, if the server exited while we wait for it.
    fn fail_if_exited(&self, what: &str) {
        let status = match self.lock().as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => status,
            _ => return,
        };
        panic!(
            "{what} in {} exited while starting ({status}); log tail:\n{}",
            self.dir.display(),
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `N` distinct free loopback ports: all bound at once (so they differ), then released.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("a bound address").port())
}

/// `kill -s SIG PID`: std can only SIGKILL a child, and `unsafe` (libc) is forbidden here.
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The real start script: Debian's `/usr/sbin/rabbitmq-server` re-runs itself as the
/// `rabbitmq` user through `su`, which drops our environment.
fn rabbitmq_server() -> &'static str {
    const DEBIAN: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
    if Path::new(DEBIAN).exists() {
        DEBIAN
    } else {
        "rabbitmq-server"
    }
}

fn write(path: &Path, text: &str) {
    File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
