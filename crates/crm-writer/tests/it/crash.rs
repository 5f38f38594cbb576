//! The real binary killed with SIGKILL mid-batch and started again: every event reaches the CRM,
//! none is created twice.

use std::process::{Child, Command, Stdio};

use std::time::Duration;

use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{Contact, LeadCreated, Meeting, MeetingBooked};
use handoff_sandbox::faults::FaultConfig;
use handoff_sandbox::testing::TEST_TOKEN;

use crate::helpers::{World, envelope};

const BIN: &str = env!("CARGO_BIN_EXE_handoff-crm-writer");

/// A child process killed when dropped, so a failing test leaves no writer running.
struct Running(Child);

impl Running {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The binary against the world's broker namespace, Redis and sandbox; a clean environment
/// apart from what it needs.
fn spawn(world: &World) -> Running {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("HANDOFF_") {
            cmd.env_remove(key);
        }
    }
    let cfg = world.config();
    let tiers: Vec<String> = cfg
        .bus
        .retry_delays
        .iter()
        .map(|d| format!("\"{}ms\"", d.as_millis()))
        .collect();
    cmd.env("HANDOFF_NAMESPACE", &world.namespace)
        .env("HANDOFF_ADMIN__LISTEN", "127.0.0.1:0")
        .env("HANDOFF_BUS__URL", &cfg.bus.url)
        .env(
            "HANDOFF_BUS__RETRY_DELAYS",
            format!("[{}]", tiers.join(",")),
        )
        .env("HANDOFF_REDIS__URL", &cfg.redis.url)
        .env("HANDOFF_HUBSPOT__BASE_URL", &world.sandbox.base_url)
        // A killed writer's claims block its events until their lease runs out.
        .env("HANDOFF_DEDUPE__LEASE", "2s")
        // Few in flight at once, so the batch takes seconds and the kill lands in the middle.
        .env("HANDOFF_BUS__PREFETCH", "20")
        .env("HANDOFF_HUBSPOT__PACING__LIMIT", "10000")
        .env("HANDOFF_HUBSPOT__PACING__PER", "1s")
        .env("HUBSPOT_ACCESS_TOKEN", TEST_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Running(cmd.spawn().expect("start the crm-writer binary"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_batch_then_restart_delivers_everything_once() {
    // This test is about crashes, not quotas: a portal with room to spare.
    let mut sandbox = handoff_sandbox::testing::config();
    sandbox.hubspot.rate_limit.requests = 100_000;
    let mut world = World::start_full(sandbox, |_| {}).await;
    // The in-process writer is not part of this test: only the binary consumes.
    world.stop_writer().await;
    // Slow answers keep many events in flight when the kill comes.
    world.sandbox.set_faults(FaultConfig::slow(
        Duration::from_millis(60),
        Duration::from_millis(60),
    ));
    let n = 400;
    for i in 0..n {
        // Leads create a contact; meetings also create a deal: two creates that must each
        // happen once.
        let event = if i % 2 == 0 {
            Event::LeadCreated(LeadCreated {
                contact: Some(Contact {
                    email: Some(format!("crash{i}@example.com")),
                    first_name: Some("Crash".into()),
                    ..Contact::default()
                }),
                ..LeadCreated::default()
            })
        } else {
            Event::MeetingBooked(MeetingBooked {
                contact: Some(Contact {
                    email: Some(format!("crash{i}@example.com")),
                    ..Contact::default()
                }),
                meeting: Some(Meeting {
                    meeting_id: Some(format!("m-{i}")),
                    ..Meeting::default()
                }),
                attribution: None,
            })
        };
        world
            .publish(&envelope(
                &format!("crash-{i}"),
                1_774_300_000,
                "app",
                event,
            ))
            .await;
    }

    let mut first = spawn(&world);
    world
        .wait_for(Duration::from_secs(30), "a third of the contacts", |s| {
            s.creates.get("contacts").map_or(0, |k| k.len()) >= n / 3
        })
        .await;
    first.kill();
    let at_kill = world.sandbox.stats();
    let contacts_at_kill = at_kill.creates.get("contacts").map_or(0, |k| k.len());
    assert!(
        contacts_at_kill < n,
        "the kill came mid-batch ({contacts_at_kill} of {n} done)"
    );

    let mut second = spawn(&world);
    world
        .wait_for(Duration::from_secs(60), "every contact and deal", |s| {
            s.creates.get("contacts").map_or(0, |k| k.len()) >= n
                && s.creates.get("deals").map_or(0, |k| k.len()) >= n / 2
        })
        .await;
    // Events the killed writer had claimed wait out its lease, then go through again.
    for i in 0..n {
        world
            .wait_ledger(&format!("crash-{i}"), "delivered", Duration::from_secs(30))
            .await;
    }
    second.kill();
    let stats = world.sandbox.stats();

    for (object_type, keys) in &stats.creates {
        for (key, count) in keys {
            assert_eq!(*count, 1, "{object_type} {key} created {count} times");
        }
    }
    assert_eq!(stats.creates["contacts"].len(), n);
    assert_eq!(stats.creates["deals"].len(), n / 2);
    world.finish().await;
}
