//! The audit log's queue and its writer: `AuditLog::record` never waits (a full
//! queue drops the event, counting it); one background task takes queued events in
//! batches and inserts them, logging what it cannot store.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Event, Origin};
use crate::db::DbPool;
use crate::db::audit::{self as store, NewAuditEvent};

/// Events waiting to be written. At a few hundred bytes each this bounds the
/// memory a database outage can take; beyond it events are dropped.
pub const QUEUE_CAPACITY: usize = 4096;
/// The most events one INSERT writes.
const BATCH_SIZE: usize = 256;
/// Attempts at writing one batch, and the pause before each retry.
const RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];
/// How long shutdown waits for queued events to be written.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of events that never reached the table.
#[derive(Debug, Default)]
struct Losses {
    /// Dropped because the queue was full.
    dropped: AtomicU64,
    /// Taken off the queue but not written (database errors).
    failed: AtomicU64,
}

/// The handle handlers record through; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<NewAuditEvent>,
    losses: Arc<Losses>,
    /// The last `created_at` given out, in microseconds: each event gets a later
    /// one, so events of this process list in the order they were recorded even
    /// when the clock reads the same microsecond twice.
    last_stamp: Arc<AtomicI64>,
}

/// The background writer; `finish` flushes what is queued at shutdown.
pub struct AuditWriter {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl AuditWriter {
    /// Writes what is still queued (bounded by `FLUSH_TIMEOUT`) and stops.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(FLUSH_TIMEOUT, self.task)
            .await
            .is_err()
        {
            tracing::warn!("audit events still queued at shutdown were not all written");
        }
    }
}

impl AuditLog {
    /// Starts the writer on the current (actix) runtime.
    pub fn start(pool: DbPool) -> (Self, AuditWriter) {
        let (log, rx) = Self::channel(QUEUE_CAPACITY);
        let (stop, stopped) = oneshot::channel();
        let losses = log.losses.clone();
        let task = actix_web::rt::spawn(drain(rx, stopped, pool, losses));
        (log, AuditWriter { stop, task })
    }

    fn channel(capacity: usize) -> (Self, mpsc::Receiver<NewAuditEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        let losses = Arc::new(Losses::default());
        let log = Self {
            tx,
            losses,
            last_stamp: Arc::default(),
        };
        (log, rx)
    }

    /// Now, or just after the previous event's time if the clock has not moved on.
    fn stamp(&self) -> DateTime<Utc> {
        let now = Utc::now();
        let micros = now.timestamp_micros();
        let previous = self
            .last_stamp
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(micros.max(last + 1))
            })
            .unwrap_or(micros);
        DateTime::from_timestamp_micros(micros.max(previous + 1)).unwrap_or(now)
    }

    /// Queues `event`; never waits. A full (or closed) queue drops it.
    pub fn record(&self, origin: &Origin, event: Event) {
        let row = NewAuditEvent {
            id: Uuid::new_v4(),
            user_id: event.user_id,
            action: event.action.as_str(),
            resource_type: event.resource_type.as_str(),
            resource_id: event.resource_id,
            details: event.details,
            ip: origin.ip.clone(),
            user_agent: origin.user_agent.clone(),
            outcome: event.outcome.as_str(),
            created_at: self.stamp(),
        };
        if let Err(err) = self.tx.try_send(row) {
            let dropped = self.losses.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // 1, 2, 4, 8…: a flood of drops stays a handful of log lines.
            if dropped.is_power_of_two() {
                let reason = match err {
                    mpsc::error::TrySendError::Full(_) => "the audit queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the audit writer has stopped",
                };
                tracing::warn!(
                    action = event.action.as_str(),
                    dropped_total = dropped,
                    "audit event dropped: {reason}"
                );
            }
        }
    }

    /// Events dropped because the queue was full, since start-up.
    pub fn dropped(&self) -> u64 {
        self.losses.dropped.load(Ordering::Relaxed)
    }

    /// Events the writer could not store, since start-up.
    pub fn failed(&self) -> u64 {
        self.losses.failed.load(Ordering::Relaxed)
    }
}

/// The writer: takes up to `BATCH_SIZE` queued events at a time and stores them,
/// until told to stop (then it writes what is left) or every handle is gone.
async fn drain(
    mut rx: mpsc::Receiver<NewAuditEvent>,
    mut stop: oneshot::Receiver<()>,
    pool: DbPool,
    losses: Arc<Losses>,
) {
    let mut batch = Vec::with_capacity(BATCH_SIZE);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH_SIZE) => {
                if n == 0 {
                    return;
                }
            }
            _ = &mut stop => {
                rx.close();
                while rx.recv_many(&mut batch, BATCH_SIZE).await > 0 {
                    write(&pool, &mut batch, &losses).await;
                }
                return;
            }
        }
        write(&pool, &mut batch, &losses).await;
    }
}

/// Stores a batch (retrying a failed connection), then empties it. When the batch
/// insert is refused, rows are written one by one so a bad row loses only itself.
async fn write(pool: &DbPool, batch: &mut Vec<NewAuditEvent>, losses: &Losses) {
    let mut attempt = 0;
    let outcome = loop {
        let result = async {
            let mut conn = pool.get().await.map_err(WriteError::Pool)?;
            store::insert(&mut conn, batch)
                .await
                .map_err(WriteError::Query)
        }
        .await;
        match result {
            Ok(_) => break Ok(()),
            Err(WriteError::Query(err)) if !is_connection_error(&err) => break Err(err),
            Err(err) => match RETRY_DELAYS.get(attempt) {
                Some(delay) => {
                    tracing::warn!(error = %err, "audit write failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(*delay).await;
                }
                None => {
                    let lost = batch.len() as u64;
                    losses.failed.fetch_add(lost, Ordering::Relaxed);
                    tracing::error!(error = %err, lost, "audit events could not be written");
                    break Ok(());
                }
            },
        }
    };
    if let Err(err) = outcome {
        tracing::warn!(error = %err, "audit batch refused; writing its events one by one");
        one_by_one(pool, batch, losses).await;
    }
    batch.clear();
}

async fn one_by_one(pool: &DbPool, batch: &mut [NewAuditEvent], losses: &Losses) {
    use diesel::result::{DatabaseErrorKind, Error};
    let Ok(mut conn) = pool.get().await else {
        losses
            .failed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        tracing::error!(lost = batch.len(), "audit events could not be written");
        return;
    };
    for row in batch.iter_mut() {
        let mut result = store::insert(&mut conn, std::slice::from_ref(row)).await;
        // The acting user was deleted in the meantime: keep the event, unlinked.
        if let (Err(Error::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)), Some(id)) =
            (&result, row.user_id.take())
        {
            if let Value::Object(details) = &mut row.details {
                details.insert("deleted_user_id".into(), json!(id));
            }
            result = store::insert(&mut conn, std::slice::from_ref(row)).await;
        }
        if let Err(err) = result {
            losses.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %err, action = row.action, "audit event could not be written");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("database pool: {0}")]
    Pool(deadpool::managed::PoolError<diesel_async::pooled_connection::PoolError>),
    #[error("{0}")]
    Query(diesel::result::Error),
}

fn is_connection_error(err: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    matches!(
        err,
        Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
            | Error::BrokenTransactionManager
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Outcome};

    fn origin() -> Origin {
        Origin {
            ip: Some("203.0.113.9".into()),
            user_agent: Some("test".into()),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (log, mut rx) = AuditLog::channel(2);
        for _ in 0..5 {
            log.record(&origin(), Event::new(Action::Login, Outcome::Success));
        }
        assert_eq!(log.dropped(), 3);
        // The queued ones are intact and in order of recording.
        let first = rx.try_recv().expect("queued");
        assert_eq!(
            (first.action, first.outcome, first.ip.as_deref()),
            ("auth.login", "success", Some("203.0.113.9"))
        );
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn events_recorded_together_keep_their_order() {
        let (log, mut rx) = AuditLog::channel(100);
        for _ in 0..100 {
            log.record(&origin(), Event::new(Action::Login, Outcome::Success));
        }
        let mut previous = None;
        while let Ok(event) = rx.try_recv() {
            assert!(previous < Some(event.created_at));
            previous = Some(event.created_at);
        }
    }

    #[test]
    fn a_stopped_writer_drops_and_counts() {
        let (log, rx) = AuditLog::channel(8);
        drop(rx);
        log.record(&origin(), Event::new(Action::Logout, Outcome::Success));
        assert_eq!(log.dropped(), 1);
    }
}
