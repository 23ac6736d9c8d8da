//! Long-poll check-ins: a device may ask the controller to hold its check-in while the answer
//! would tell it nothing new, and is answered as soon as its desired release, the emergency
//! stop, its safe-mode request or a request for its logs changes (DESIGN.md, "Agent ↔
//! controller").
//!
//! Held check-ins wait on one broadcast of wake-ups. This replica wakes them itself when it
//! changes what devices are told (the leader's pass, a stop, a safe-mode or log request); a
//! poller reads what other replicas changed (`devices.desired_updated_ms`,
//! `device_logs.requested_ms`, the stored stop) twice a second while anything is held, so a
//! check-in held on a follower is answered too. At most `long_poll.max_waiting` check-ins are
//! held at once: each keeps a connection open, and the rest are answered at once and check in
//! at the usual interval.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::db::now_ms;
use crate::state::AppState;

/// How often the poller looks for other replicas' changes while check-ins are held.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How far back each poll looks again, for replicas whose clocks differ a little.
const OVERLAP_MS: i64 = 2_000;

/// What changed.
#[derive(Debug)]
pub enum Wake {
    /// What these devices are told.
    Devices(HashSet<String>),
    /// What every device is told (the emergency stop), or the controller is shutting down.
    All,
}

impl Wake {
    /// Whether a check-in of `device` should look again.
    pub fn concerns(&self, device: &str) -> bool {
        match self {
            Wake::Devices(ids) => ids.contains(device),
            Wake::All => true,
        }
    }
}

/// The held check-ins' wake-ups and their cap.
#[derive(Debug)]
pub struct WaitHub {
    tx: broadcast::Sender<Arc<Wake>>,
    permits: Arc<Semaphore>,
    max: usize,
    closed: CancellationToken,
}

/// A held check-in's place: its permit and its wake-ups.
pub struct Waiter {
    _permit: OwnedSemaphorePermit,
    /// The wake-ups.
    pub rx: broadcast::Receiver<Arc<Wake>>,
    /// Cancelled when the controller shuts down: answer at once.
    pub closed: CancellationToken,
}

impl WaitHub {
    /// A hub holding at most `max_waiting` check-ins.
    pub fn new(max_waiting: usize) -> WaitHub {
        let (tx, _) = broadcast::channel(256);
        WaitHub {
            tx,
            permits: Arc::new(Semaphore::new(max_waiting.min(Semaphore::MAX_PERMITS))),
            max: max_waiting,
            closed: CancellationToken::new(),
        }
    }

    /// A place for one more held check-in, unless `max_waiting` are held already (or the
    /// controller is shutting down).
    pub fn wait(&self) -> Option<Waiter> {
        if self.closed.is_cancelled() {
            return None;
        }
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(Waiter {
            _permit: permit,
            rx: self.tx.subscribe(),
            closed: self.closed.clone(),
        })
    }

    /// Check-ins held now.
    pub fn waiting(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }

    /// What these devices are told changed.
    pub fn wake_devices<I: IntoIterator<Item = String>>(&self, ids: I) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let ids: HashSet<String> = ids.into_iter().collect();
        if !ids.is_empty() {
            let _ = self.tx.send(Arc::new(Wake::Devices(ids)));
        }
    }

    /// What every device is told changed.
    pub fn wake_all(&self) {
        let _ = self.tx.send(Arc::new(Wake::All));
    }

    /// Answers every held check-in now and holds no more (shutdown).
    pub fn close(&self) {
        self.closed.cancel();
        self.wake_all();
    }
}

/// Reads what other replicas changed and wakes the check-ins held here, until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mut cursor = now_ms();
    let mut stop = state.db.emergency_stop().await.ok().flatten();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(POLL_EVERY) => {}
        }
        if state.waits.waiting() == 0 {
            cursor = now_ms();
            continue;
        }
        let since = cursor - OVERLAP_MS;
        let started = now_ms();
        let changed = match state.db.desired_changed_since(since).await {
            Ok(mut ids) => match state.db.logs_requested_since(since).await {
                Ok(asked) => {
                    ids.extend(asked);
                    Ok(ids)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match changed {
            Ok(ids) => {
                state.waits.wake_devices(ids);
                cursor = started;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read what devices are told; held check-ins wait for their bound")
            }
        }
        match state.db.emergency_stop().await {
            Ok(now) if now != stop => {
                stop = now;
                state.waits.wake_all();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the emergency stop"),
        }
    }
    state.waits.close();
}
