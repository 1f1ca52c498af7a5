//! The work of each operation, detached from the actor: provisioning (the
//! machine, then its bootstrap's log until the exit marker), start, stop and
//! delete. Every transition is durable before the actor hears of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use russh::ChannelMsg;
use uuid::Uuid;

use super::commands::StopFinished;
use super::failure::WorkError;
use super::{Announce, EnvironmentActor, LOG_BATCH, Op, REACH_DEADLINE};
use crate::deps::Deps;
use crate::logs::{self, LineSplitter, LogLine, Progress};
use crate::model::{
    EnvironmentRecord, MachineAccess, MachineKeys, Phase, Stamp, Status, Transition,
};
use crate::provider::{Cancel, MachineSpec, Provider};
use crate::ssh::{self, SshError, SshSession};

/// Everything the async work needs, detached from the actor.
pub(super) struct Work {
    pub(super) deps: Arc<Deps>,
    pub(super) provider: Arc<dyn Provider>,
    pub(super) record: EnvironmentRecord,
    pub(super) me: Addr<EnvironmentActor>,
    /// Set when a later operation (a delete) supersedes this one.
    pub(super) cancel: Cancel,
}

/// Records that provisioning failed, for the owner and for log subscribers.
pub(super) async fn fail(deps: Arc<Deps>, id: Uuid, err: WorkError, me: Addr<EnvironmentActor>) {
    let message = err.to_string();
    tracing::warn!(environment_id = %id, error = %message, cause = %err.causes(), "provisioning failed");
    let t = Transition::failed(message.clone());
    match deps.store.transition(id, &t).await {
        Ok(times) => {
            me.do_send(Announce::Transition(t, times));
            me.do_send(Announce::Installed(Err(message)));
        }
        Err(store) => {
            tracing::error!(environment_id = %id, error = %store, failure = %message, "a failed provisioning could not be recorded");
        }
    }
}

impl Work {
    pub(super) async fn perform(self, op: Op) {
        match op {
            Op::Provision => self.provision().await,
            Op::Start => self.start(false).await,
            Op::EnsureUp => self.start(true).await,
            Op::Stop(reason) => self.stop(reason).await,
            Op::Delete => self.delete().await,
            Op::Snapshot(name) => self.snapshot(name).await,
            Op::Resize(size) => self.resize(size).await,
            Op::Settle => self.settle().await,
            Op::Reboot => self.reboot().await,
        }
    }

    /// Durable first, then announced. A superseded operation writes nothing more.
    pub(super) async fn transition(&self, t: Transition) -> Result<(), WorkError> {
        if self.cancel.is_cancelled() {
            return Err(WorkError::Cancelled);
        }
        let times = self.deps.store.transition(self.record.id, &t).await?;
        self.me.do_send(Announce::Transition(t, times));
        Ok(())
    }

    /// Records that `operation` failed: the owner reads why in the status message,
    /// the log gets the cause. A superseded operation records nothing; a failure
    /// to record is logged.
    pub(super) async fn failed(&self, operation: &'static str, err: WorkError) {
        if matches!(err, WorkError::Cancelled) {
            return;
        }
        let message = err.to_string();
        tracing::warn!(environment_id = %self.record.id, operation, error = %message, cause = %err.causes(), "operation failed");
        if let Err(store) = self.transition(Transition::failed(message.clone())).await {
            tracing::error!(environment_id = %self.record.id, operation, error = %store, failure = %message, "a failure could not be recorded");
        }
    }

    /// Moves the environment back to rest after work that cannot fail it (a
    /// snapshot, a resize); a failure to record that is logged.
    pub(super) async fn rest(&self, t: Transition) {
        if let Err(err) = self.transition(t).await
            && !matches!(err, WorkError::Cancelled)
        {
            tracing::error!(environment_id = %self.record.id, error = %err, cause = %err.causes(), "the end of an operation could not be recorded");
        }
    }

    pub(super) async fn keys(&self) -> Result<MachineKeys, WorkError> {
        if let Some(keys) = &self.record.keys {
            return Ok(keys.clone());
        }
        let keys = ssh::generate_machine_keys(&self.record.slug).map_err(WorkError::Keys)?;
        self.deps.store.save_keys(self.record.id, &keys).await?;
        self.me.do_send(Announce::Keys(keys.clone()));
        Ok(keys)
    }

    pub(super) async fn save_machine(
        &self,
        machine: &crate::provider::Machine,
    ) -> Result<(), WorkError> {
        self.deps
            .store
            .save_machine(self.record.id, &machine.access, &machine.provider_ref)
            .await?;
        self.me.do_send(Announce::Machine(
            machine.access.clone(),
            machine.provider_ref.clone(),
        ));
        Ok(())
    }

    /// Starts the machine (it may be up already) and records where it answers.
    pub(super) async fn bring_up(
        &self,
        provider_ref: &str,
        doing: &'static str,
    ) -> Result<(), WorkError> {
        let keys = self.keys().await?;
        let machine = self
            .provider
            .start(&self.spec(keys), provider_ref)
            .await
            .map_err(WorkError::provider(doing))?;
        self.save_machine(&machine).await
    }

    pub(super) fn spec(&self, keys: MachineKeys) -> MachineSpec {
        MachineSpec {
            environment_id: self.record.id,
            user_id: self.record.user_id,
            slug: self.record.slug.clone(),
            region: self.record.region.clone(),
            size: self.record.size.clone(),
            bootstrap: self.record.bootstrap.clone(),
            packages: self.record.packages.clone(),
            cloud_init: self.record.cloud_init.clone(),
            environment_variables: self.record.environment_variables.clone(),
            keys,
        }
    }

    async fn provision(self) {
        let started = Instant::now();
        let limit = self.deps.settings.provision_timeout;
        let outcome = match tokio::time::timeout(limit, self.try_provision()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(WorkError::Timeout(limit.as_secs().div_ceil(60))),
        };
        let provider = self.provider.name();
        if self.cancel.is_cancelled() {
            // The delete that superseded it removes whatever was made.
            tracing::info!(environment_id = %self.record.id, "provisioning given up: the environment is being deleted");
            return;
        }
        match outcome {
            Ok(()) => {
                self.deps
                    .provisioned(provider, "success", started.elapsed());
            }
            Err(err) => {
                self.deps
                    .provisioned(provider, "failure", started.elapsed());
                fail(self.deps.clone(), self.record.id, err, self.me.clone()).await;
            }
        }
    }

    async fn try_provision(&self) -> Result<(), WorkError> {
        let keys = self.keys().await?;
        if matches!(self.record.phase, Phase::Queued) {
            self.transition(Transition::new(Status::Creating, Phase::Provisioning, 5))
                .await?;
        }
        let machine = self
            .provider
            .create(&self.spec(keys.clone()), &self.cancel)
            .await
            .map_err(WorkError::provider("creating the machine"))?;
        self.save_machine(&machine).await?;
        if matches!(self.record.phase, Phase::Queued | Phase::Provisioning) {
            self.transition(Transition::new(Status::Creating, Phase::Booting, 15))
                .await?;
        }
        // Following the log makes nothing: it may stop at any moment.
        tokio::select! {
            result = self.follow_bootstrap(&machine.access, &keys) => result,
            () = self.cancel.cancelled() => Err(WorkError::Cancelled),
        }
    }

    /// Tails the provisioning log from its first line, storing and announcing the
    /// lines not stored yet, until the init's exit marker. Reconnects when SSH drops.
    async fn follow_bootstrap(
        &self,
        access: &MachineAccess,
        keys: &MachineKeys,
    ) -> Result<(), WorkError> {
        let mut stored = self.record.log_seq;
        let mut announced_installing =
            matches!(self.record.phase, Phase::Installing | Phase::Configuring);
        let mut deadline = Instant::now() + REACH_DEADLINE;
        let command = self.provider.bootstrap_watch().tail_command;
        let mut read: u64 = 0;
        // What says why, should the bootstrap fail: its last `error: …` line, or
        // the machine's line just before the exit marker.
        let (mut reason, mut machine_said): (Option<String>, Option<String>) = (None, None);
        loop {
            let session = match SshSession::connect(access, &keys.user_private).await {
                Ok(s) => s,
                Err(e @ SshError::HostKeyMismatch { .. }) => return Err(WorkError::HostKey(e)),
                Err(e) => {
                    if Instant::now() > deadline {
                        return Err(WorkError::Unreachable(e));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if !announced_installing {
                self.transition(Transition::new(Status::Creating, Phase::Installing, 20))
                    .await?;
                announced_installing = true;
            }
            let mut channel = session.exec(&command).await.map_err(WorkError::Tail)?;
            let mut splitter = LineSplitter::default();
            let mut seq = 0i64;
            while let Some(msg) = channel.wait().await {
                let ChannelMsg::Data { data } = msg else {
                    if matches!(msg, ChannelMsg::Close | ChannelMsg::Eof) {
                        break;
                    }
                    continue;
                };
                read += data.len() as u64;
                if read > logs::MAX_LOG_BYTES {
                    session.close().await;
                    return Err(WorkError::LogTooLong(logs::MAX_LOG_BYTES >> 20));
                }
                let mut fresh = Vec::new();
                let mut exit = None;
                for text in splitter.push(&data) {
                    seq += 1;
                    if let Some(status) = logs::parse_exit(&text) {
                        exit = Some(status);
                        // The machine's own word just before it ended says it best.
                        if let Some(said) = machine_said.take() {
                            reason = Some(said);
                        }
                    } else {
                        machine_said = logs::machine_says(&text).map(str::to_owned);
                        if let Some(error) = logs::error_line(&text) {
                            reason = Some(error.to_owned());
                        }
                    }
                    if seq > stored {
                        fresh.push(LogLine {
                            seq,
                            data: text,
                            timestamp: Utc::now(),
                        });
                    }
                }
                if !fresh.is_empty() {
                    // A chunk of newlines is as many lines: stored in batches that
                    // stay within one statement's bind parameters.
                    for batch in fresh.chunks(LOG_BATCH) {
                        let texts: Vec<String> = batch.iter().map(|l| l.data.clone()).collect();
                        self.deps
                            .store
                            .append_logs(self.record.id, batch[0].seq, &texts, logs::KEEP_LINES)
                            .await?;
                    }
                    stored = seq;
                    let stages: Vec<Progress> = fresh
                        .iter()
                        .filter_map(|l| logs::parse_stage(&l.data))
                        .collect();
                    self.me.do_send(Announce::Lines(fresh));
                    for stage in stages {
                        let t = Transition::new(
                            Status::Creating,
                            Phase::Installing,
                            logs::overall_percent(&stage),
                        )
                        .message(stage.stage.clone());
                        self.transition(t).await?;
                        self.me.do_send(Announce::Progress(stage));
                    }
                }
                if let Some(status) = exit {
                    session.close().await;
                    return self.finish_install(status, reason).await;
                }
            }
            // The stream ended before the init did: the connection dropped.
            session.close().await;
            deadline = Instant::now() + REACH_DEADLINE;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn finish_install(&self, status: i32, reason: Option<String>) -> Result<(), WorkError> {
        if status != 0 {
            return Err(WorkError::Bootstrap {
                template: self.record.template_name.clone(),
                status,
                reason,
            });
        }
        self.transition(Transition::new(Status::Creating, Phase::Configuring, 97))
            .await?;
        self.transition(
            Transition::new(Status::Running, Phase::Ready, 100)
                .message("ready")
                .stamp(Stamp::Started),
        )
        .await?;
        self.me.do_send(Announce::Installed(Ok(())));
        Ok(())
    }

    pub(super) async fn start(self, already_running: bool) {
        let result = async {
            let provider_ref = self
                .record
                .provider_ref
                .clone()
                .ok_or(WorkError::NoMachine)?;
            self.bring_up(&provider_ref, "starting the machine").await?;
            if !already_running {
                self.transition(
                    Transition::new(Status::Running, Phase::Ready, 100)
                        .message("running")
                        .stamp(Stamp::Started),
                )
                .await?;
            }
            Ok(())
        }
        .await;
        if let Err(err) = result {
            self.failed("start", err).await;
        }
    }

    pub(super) async fn stop(self, reason: Option<String>) {
        let result = async {
            if let Some(provider_ref) = &self.record.provider_ref {
                self.provider
                    .stop(provider_ref)
                    .await
                    .map_err(WorkError::provider("stopping the machine"))?;
            }
            self.transition(
                Transition::new(Status::Stopped, Phase::Stopped, 100)
                    .message(reason.unwrap_or_else(|| "stopped".to_owned()))
                    .stamp(Stamp::Stopped),
            )
            .await
        }
        .await;
        match result {
            Ok(()) => self.me.do_send(StopFinished),
            Err(err) => self.failed("stop", err).await,
        }
    }

    async fn delete(self) {
        let result = async {
            // Said again now that the operation this one superseded has ended: a
            // write of its own may have landed after the delete's first one.
            self.transition(Transition::new(
                Status::Terminated,
                Phase::Deleting,
                self.record.progress,
            ))
            .await?;
            // Whatever the machine is, recorded or not (a create cancelled halfway):
            // the provider finds it by the environment.
            self.provider
                .delete(self.record.id, self.record.provider_ref.as_deref())
                .await
                .map_err(WorkError::provider("deleting the machine"))?;
            Ok::<_, WorkError>(self.deps.store.mark_deleted(self.record.id).await?)
        }
        .await;
        match result {
            Ok(()) => self.me.do_send(Announce::Deleted),
            Err(err) => self.failed("delete", err).await,
        }
    }
}
