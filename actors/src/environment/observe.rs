//! What the environment shows while it works: its provisioning log to subscribers,
//! and resource use measured on the machine.

use std::time::Instant;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::{Conflict, EnvError, EnvironmentActor, InstallState, METRICS_TTL};
use crate::logs::{LogEvent, Standing};
use crate::metrics::{self, Metrics, MetricsError};
use crate::model::{Phase, Status};

/// Subscribes to provisioning-log events. The reply says which line was announced
/// last: every later line reaches `tx`, every earlier one is already stored, so a
/// subscriber reads history up to that line and then follows `tx` with no gap and
/// no duplicate. It also says where provisioning stands; every later change of
/// that reaches `tx`.
#[derive(Message)]
#[rtype(result = "LogSubscription")]
pub struct SubscribeLogs {
    pub tx: mpsc::Sender<LogEvent>,
}

#[derive(Debug, Clone)]
pub struct LogSubscription {
    pub last_seq: i64,
    pub state: InstallState,
    pub standing: Standing,
}

impl Handler<SubscribeLogs> for EnvironmentActor {
    type Result = MessageResult<SubscribeLogs>;

    fn handle(&mut self, msg: SubscribeLogs, _: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        self.subscribers.push(msg.tx);
        self.registration.stats.set_clients(self.subscribers.len());
        tracing::debug!(environment_id = %self.record.id, subscribers = self.subscribers.len(), "log subscriber added");
        MessageResult(LogSubscription {
            last_seq: self.record.log_seq,
            state: self.install.clone(),
            standing: self.standing(),
        })
    }
}

/// Resource use measured on the machine (cached for a few seconds).
#[derive(Message)]
#[rtype(result = "Result<Metrics, EnvError>")]
pub struct GetMetrics;

/// Who waits for the sample in flight.
pub(super) type MetricsWaiters = Vec<oneshot::Sender<Result<Metrics, MetricsError>>>;

impl Handler<GetMetrics> for EnvironmentActor {
    type Result = ResponseFuture<Result<Metrics, EnvError>>;

    fn handle(&mut self, _: GetMetrics, ctx: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        let ready = self.record.status == Status::Running && self.record.phase == Phase::Ready;
        if let Some((at, m)) = &self.metrics
            && at.elapsed() < METRICS_TTL
            && ready
        {
            return Box::pin(std::future::ready(Ok(m.clone())));
        }
        let (machine, keys) = (self.record.machine.clone(), self.record.keys.clone());
        let (Some(machine), Some(keys), true) = (machine, keys, ready) else {
            return Box::pin(std::future::ready(Err(Conflict::NotRunning {
                action: "metrics are measured".into(),
                status: self.record.status,
                phase: self.record.phase,
            }
            .into())));
        };
        // Single flight: requests that come while a sample is being taken wait for
        // that one instead of each opening a connection to the machine.
        let (tx, rx) = oneshot::channel();
        if let Some(waiters) = &mut self.metrics_waiters {
            waiters.push(tx);
        } else {
            self.metrics_waiters = Some(vec![tx]);
            let deps = self.deps.clone();
            ctx.spawn(
                metrics::sample(deps, machine, keys)
                    .into_actor(self)
                    .map(|res, act, _| {
                        match &res {
                            Ok(m) => act.metrics = Some((Instant::now(), m.clone())),
                            Err(err) => {
                                tracing::info!(environment_id = %act.record.id, error = %err, cause = ?std::error::Error::source(err).map(ToString::to_string), "no metrics sample");
                            }
                        }
                        for waiter in act.metrics_waiters.take().unwrap_or_default() {
                            let _ = waiter.send(res.clone());
                        }
                    }),
            );
        }
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(MetricsError::Stopped))
                .map_err(EnvError::from)
        })
    }
}
