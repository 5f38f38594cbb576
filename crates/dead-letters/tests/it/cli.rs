//! The `handoff-dlq` binary against the real service in-process: what it refuses before
//! sending anything, how it reports the API's refusals and an API that is not there, and
//! `--json`. Each test has a namespace and a handler of its own (`helpers::World`).

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use handoff_bus::CRM_WRITER;

use crate::helpers::{TOKEN, World, envelope, run_scripted, send_to_stage};

/// Runs `handoff-dlq args… --url url [--token token]`. The global options go after the
/// command on purpose (they are `global`), and the developer's own `HANDOFF_DLQ_*`
/// variables are kept out.
async fn dlq(url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_handoff-dlq"));
    command
        .args(args)
        .arg("--url")
        .arg(url)
        .env_remove("HANDOFF_DLQ_URL")
        .env_remove("HANDOFF_DLQ_TOKEN")
        .kill_on_drop(true);
    if let Some(token) = token {
        command.arg("--token").arg(token);
    }
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap_or_else(|_| panic!("handoff-dlq {args:?} did not finish within 30 s"))
        .expect("handoff-dlq runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(output)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_purge_without_yes_or_reason_is_refused_before_the_api() {
    let world = World::start().await;
    let api = world.dlq.api.clone();

    let no_yes = dlq(
        &api,
        Some(TOKEN),
        &["purge", "--group", "fp-x", "--reason", "r"],
    )
    .await;
    assert_eq!(no_yes.status.code(), Some(2), "{}", stderr(&no_yes));
    assert!(
        stderr(&no_yes).contains("purge deletes dead letters for good; add --yes (and --reason)"),
        "{}",
        stderr(&no_yes)
    );

    let no_reason = dlq(&api, Some(TOKEN), &["purge", "--group", "fp-x", "--yes"]).await;
    assert_eq!(no_reason.status.code(), Some(2), "{}", stderr(&no_reason));
    assert!(
        stderr(&no_reason).contains("--reason"),
        "{}",
        stderr(&no_reason)
    );

    let audit = dlq(&api, Some(TOKEN), &["audit", "--json"]).await;
    assert!(audit.status.success(), "{}", stderr(&audit));
    assert_eq!(
        json(&audit),
        Value::Array(Vec::new()),
        "nothing reached the API"
    );

    // The same purge with both does reach it, and is audited: the empty log above
    // means something.
    let purge = dlq(
        &api,
        Some(TOKEN),
        &["purge", "--group", "fp-x", "--yes", "--reason", "cli test"],
    )
    .await;
    assert!(purge.status.success(), "{}", stderr(&purge));
    assert_eq!(
        stdout(&purge).trim(),
        "purged 0 (0 left alone: not parked or replayed)"
    );
    let audit = dlq(&api, Some(TOKEN), &["audit", "--json"]).await;
    let entries = json(&audit);
    assert_eq!(entries.as_array().map(Vec::len), Some(1), "{entries}");
    assert_eq!(entries[0]["action"], "purge");
    assert_eq!(entries[0]["reason"], "cli test");
    assert_eq!(entries[0]["filter"]["fingerprint"], "fp-x");

    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_reports_the_apis_401_and_exits_1() {
    let world = World::start().await;
    let api = world.dlq.api.clone();

    let wrong = dlq(&api, Some("not-the-token"), &["list"]).await;
    assert_eq!(wrong.status.code(), Some(1), "{}", stderr(&wrong));
    assert_eq!(
        stderr(&wrong).trim(),
        "error: the operator token is not valid (HTTP 401)"
    );
    assert!(stdout(&wrong).is_empty(), "{}", stdout(&wrong));

    let none = dlq(&api, None, &["list"]).await;
    assert_eq!(none.status.code(), Some(1), "{}", stderr(&none));
    assert_eq!(
        stderr(&none).trim(),
        "error: an operator token is needed: send `Authorization: Bearer <token>` (HTTP 401)"
    );

    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_lists_an_empty_namespace() {
    let world = World::start().await;
    let api = world.dlq.api.clone();

    let listed = dlq(&api, Some(TOKEN), &["list", "--json"]).await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let page = json(&listed);
    assert_eq!(page["total"], 0, "{page}");
    assert_eq!(page["rows"], Value::Array(Vec::new()), "{page}");

    let table = dlq(
        &api,
        Some(TOKEN),
        &["list", "--since", "2h", "--status", "parked"],
    )
    .await;
    assert!(table.status.success(), "{}", stderr(&table));
    assert_eq!(stdout(&table), "no dead letters match\n");

    let stats = dlq(&api, Some(TOKEN), &["stats"]).await;
    assert!(stats.status.success(), "{}", stderr(&stats));
    assert!(stdout(&stats).contains("total: 0"), "{}", stdout(&stats));

    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_says_when_the_api_cannot_be_reached() {
    // A port nobody listens on: bound, then let go.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let url = format!("http://{addr}");

    let output = dlq(&url, Some(TOKEN), &["groups"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.starts_with(&format!(
            "error: cannot reach the dead-letter API at {url}: "
        )),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with("(is a port-forward running?)"),
        "{err}"
    );
}

/// The human output of real answers: groups, show, a dry run, then a replay watched to
/// its end with stdout not a terminal (progress lines, and always the summary).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_groups_shows_and_replays_parked_dead_letters() {
    let world = World::start().await;
    let api = world.dlq.api.clone();
    let bus = world.bus().await;
    let (_stage, stop, task) = run_scripted(&bus, CRM_WRITER);
    for id in ["evt-cli-1", "evt-cli-2", "evt-cli-3"] {
        send_to_stage(
            &bus,
            CRM_WRITER,
            id,
            envelope(id, &format!("{id}@example.com"), "permanent"),
        )
        .await;
    }
    let page = world
        .dlq
        .wait_list("", Duration::from_secs(60), |p| p.total == 3)
        .await;
    // Replayed copies must wait in the queue, not fail again.
    stop.cancel();
    let _ = task.await;
    let fingerprint = page.rows[0].summary.fingerprint.clone();
    let id = page.rows[0].summary.id.clone();

    let groups = dlq(&api, Some(TOKEN), &["groups"]).await;
    assert!(groups.status.success(), "{}", stderr(&groups));
    let text = stdout(&groups);
    assert!(
        text.contains(&fingerprint) && text.contains("permanent"),
        "{text}"
    );
    assert!(text.contains("1 group of 3 dead letters"), "{text}");

    let show = dlq(&api, Some(TOKEN), &["show", &id]).await;
    assert!(show.status.success(), "{}", stderr(&show));
    let text = stdout(&show);
    for expected in [
        "status         parked",
        "destination    hubspot",
        "code           400",
        "original event:",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }

    let plan = dlq(
        &api,
        Some(TOKEN),
        &["replay", "--group", &fingerprint, "--dry-run"],
    )
    .await;
    assert!(plan.status.success(), "{}", stderr(&plan));
    let text = stdout(&plan);
    assert!(
        text.contains("would replay 3 dead letters (mode as_is)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("3 to {}.crm-writer", world.namespace)),
        "{text}"
    );
    assert!(text.contains("estimated time:"), "{text}");

    let replay = dlq(
        &api,
        Some(TOKEN),
        &[
            "replay",
            "--group",
            &fingerprint,
            "--rate",
            "20",
            "--reason",
            "cli test",
        ],
    )
    .await;
    assert!(replay.status.success(), "{}", stderr(&replay));
    let text = stdout(&replay);
    assert!(text.starts_with("started replay job-"), "{text}");
    let summary = text.lines().last().unwrap_or_default();
    assert!(
        summary.contains(" done") && summary.ends_with("sent 3 of 3"),
        "{text}"
    );

    let jobs = dlq(&api, Some(TOKEN), &["jobs"]).await;
    assert!(stdout(&jobs).contains("3/3"), "{}", stdout(&jobs));
    let audit = dlq(&api, Some(TOKEN), &["audit"]).await;
    assert!(
        stdout(&audit).contains("replay") && stdout(&audit).contains("cli test"),
        "{}",
        stdout(&audit)
    );

    bus.close().await;
    world.finish().await;
}

/// Ctrl-C while watching stops the watch (exit 130, how to pause or cancel), not the
/// job; pause, resume and cancel then say the job's new state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_watch_stops_on_ctrl_c_and_the_job_keeps_running() {
    let world = World::start().await;
    let api = world.dlq.api.clone();
    let bus = world.bus().await;
    let (_stage, stop, task) = run_scripted(&bus, CRM_WRITER);
    for id in ["evt-watch-1", "evt-watch-2", "evt-watch-3"] {
        send_to_stage(
            &bus,
            CRM_WRITER,
            id,
            envelope(id, &format!("{id}@example.com"), "permanent"),
        )
        .await;
    }
    let page = world
        .dlq
        .wait_list("", Duration::from_secs(60), |p| p.total == 3)
        .await;
    stop.cancel();
    let _ = task.await;
    let fingerprint = page.rows[0].summary.fingerprint.clone();

    // Slow enough to still be running when Ctrl-C comes. (The runner notices the cancel
    // below only at its next send slot, 1/rate = 10 s later: most of this test's time.)
    let started = dlq(
        &api,
        Some(TOKEN),
        &[
            "replay",
            "--group",
            &fingerprint,
            "--rate",
            "0.1",
            "--detach",
            "--json",
        ],
    )
    .await;
    assert!(started.status.success(), "{}", stderr(&started));
    let job = json(&started)["id"].as_str().expect("a job id").to_owned();

    let watcher = tokio::process::Command::new(env!("CARGO_BIN_EXE_handoff-dlq"))
        .args(["watch", &job, "--url", &api, "--token", TOKEN])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("watch starts");
    let pid = watcher.id().expect("a pid").to_string();
    // The first progress line is printed at once: wait for the watch to be under way.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let signalled = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    let watched = tokio::time::timeout(Duration::from_secs(10), watcher.wait_with_output())
        .await
        .expect("watch stops on Ctrl-C")
        .expect("watch output");
    assert_eq!(watched.status.code(), Some(130), "{}", stderr(&watched));
    let text = stdout(&watched);
    assert!(
        text.contains(&format!("replay {job} running: ")),
        "a progress line: {text}"
    );
    assert!(text.contains(&format!("handoff-dlq pause {job}")), "{text}");

    let (_, still) = world.dlq.get(&format!("/v1/replays/{job}")).await;
    assert_eq!(
        still["state"], "running",
        "the job outlives the watch: {still}"
    );

    let paused = dlq(&api, Some(TOKEN), &["pause", &job]).await;
    assert!(paused.status.success(), "{}", stderr(&paused));
    assert!(
        stdout(&paused).starts_with(&format!("replay {job} is paused")),
        "{}",
        stdout(&paused)
    );
    let resumed = dlq(&api, Some(TOKEN), &["resume", &job]).await;
    assert!(
        stdout(&resumed).starts_with(&format!("replay {job} is running")),
        "{}",
        stdout(&resumed)
    );
    let cancelled = dlq(&api, Some(TOKEN), &["cancel", &job]).await;
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));
    assert!(
        stdout(&cancelled)
            .trim_end()
            .ends_with("what it has not sent goes back to parked"),
        "{}",
        stdout(&cancelled)
    );
    let finished = world.dlq.wait_job(&job, Duration::from_secs(20)).await;
    assert_eq!(finished["state"], "cancelled", "{finished}");

    bus.close().await;
    world.finish().await;
}
