//! Bounded drains under paused time.

use std::time::Duration;

use handoff_kit::shutdown::drain;

#[tokio::test(start_paused = true)]
async fn drain_gives_up_after_the_grace_period() {
    let start = tokio::time::Instant::now();
    let finished = drain(
        "consumer",
        Duration::from_secs(25),
        std::future::pending::<()>(),
    )
    .await;
    assert!(!finished);
    assert_eq!(start.elapsed(), Duration::from_secs(25));
}

#[tokio::test(start_paused = true)]
async fn drain_reports_a_timely_finish() {
    let start = tokio::time::Instant::now();
    let finished = drain(
        "publisher",
        Duration::from_secs(25),
        tokio::time::sleep(Duration::from_secs(2)),
    )
    .await;
    assert!(finished);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test]
async fn a_cancelled_token_ends_the_signal_task() {
    let token = tokio_util::sync::CancellationToken::new();
    handoff_kit::shutdown::cancel_on_signal(token.clone());
    token.cancel();
    tokio::task::yield_now().await;
    assert!(token.is_cancelled());
}
