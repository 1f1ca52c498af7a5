//! The terminal's link to the machine: one SSH connection with a PTY running tmux
//! (or a login shell), its reader (always drained, output decoded and coalesced
//! into frames) and writer tasks, the repaint asked of tmux, and what the
//! environment's state means for it ([`gate`]): attach when it runs, wait before
//! that, close when it is stopped or deleted, and reconnect with backoff when the
//! connection is lost while it still runs.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::FutureExt;
use russh::ChannelMsg;
use tokio::sync::mpsc;

use super::utf8::Utf8Carry;
use super::{Disconnected, Output, SessionMode, TermState, TerminalActor, WriterCmd};
use crate::environment::EnvState;
use crate::model::Phase;
use crate::server::open_session;
use crate::ssh::{SshSession, shell_quote};

const REDRAW_COALESCE: Duration = Duration::from_millis(20);
/// A repaint prints nothing; past this the command is stopped (on its own channel,
/// so the terminal's connection carries on).
const REDRAW_MAX_BYTES: usize = 64 * 1024;
const REDRAW_TIMEOUT: Duration = Duration::from_secs(5);
/// Output already received is joined into frames of up to this size.
const COALESCE_BYTES: usize = 64 * 1024;

/// Terminals speak UTF-8 (frames are JSON text): unless the user's locale already
/// does, the PTY's programs are told so, whatever the machine's sshd passes (a
/// local machine's passes no locale at all). Without it tmux draws every
/// non-ASCII character as `_` and readline mangles typed ones; `tmux -u` says the
/// same to tmux itself.
const UTF8_LOCALE: &str = "case \"${LC_ALL:-${LC_CTYPE:-${LANG:-}}}\" in \
     *[Uu][Tt][Ff]-8*|*[Uu][Tt][Ff]8*) ;; \
     *) export LC_CTYPE=C.UTF-8; [ -z \"${LC_ALL:-}\" ] || export LC_ALL=C.UTF-8 ;; esac";

/// Why a connection attempt failed.
enum Failure {
    /// The environment is gone: the terminal closes, saying why.
    Closed(String),
    /// Anything else: the terminal reconnects.
    Lost(String),
}

/// What the terminal does in the environment's state.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Gate {
    /// Running and ready: attach.
    Connect,
    /// Not running yet, or briefly busy: wait for the next transition, saying why.
    Wait(String),
    /// Stopped or deleted: the terminal closes, saying why.
    Close(String),
}

/// Before the terminal has first attached, it waits for the environment whatever
/// its state (the app opens the socket as soon as the environment exists), unless
/// it is being deleted. Once attached, leaving `running`/`ready` closes it — a stop,
/// a restart (which stops the machine's processes, tmux included), a delete, a
/// failure — except for a snapshot or a resize, after which the machine is back as
/// it was.
pub(super) fn gate(state: &EnvState, attached_before: bool) -> Gate {
    let (status, phase) = (state.status, state.phase);
    if state.is_deleted() {
        return Gate::Close("the environment was deleted".to_owned());
    }
    if state.is_ready() {
        return Gate::Connect;
    }
    if !attached_before {
        return Gate::Wait(format!(
            "the environment is {status} ({phase}); the terminal attaches when it is running"
        ));
    }
    match phase {
        Phase::Snapshotting | Phase::Resizing => Gate::Wait(format!(
            "the environment is {status} ({phase}); the terminal attaches again when it is running"
        )),
        Phase::Stopping | Phase::Stopped => Gate::Close(
            state
                .stopped_because
                .clone()
                .unwrap_or_else(|| "the environment was stopped".to_owned()),
        ),
        Phase::Restarting => Gate::Close("the environment is restarting".to_owned()),
        _ => Gate::Close(format!("the environment is {status} ({phase})")),
    }
}

impl TerminalActor {
    /// Asks tmux to repaint the whole screen, so a client that joined (or fell out
    /// of the replay buffer) sees the current screen instead of a garbled tail.
    /// Requests within `REDRAW_COALESCE` make one repaint: a hundred clients
    /// joining at once cost the others one repaint, not a hundred.
    pub(super) fn redraw(&mut self, ctx: &mut Context<Self>) {
        if self.mode != SessionMode::Tmux || self.redraw_pending {
            return;
        }
        self.redraw_pending = true;
        ctx.run_later(REDRAW_COALESCE, |act, _| {
            act.redraw_pending = false;
            let Some(session) = act.session.clone() else {
                return;
            };
            // Every client of this session (ours among them); a bare
            // `refresh-client` would repaint whichever client was used last.
            let command = format!(
                "tmux list-clients -t ={} -F '#{{client_name}}' | \
                 while read -r c; do tmux refresh-client -t \"$c\"; done",
                shell_quote(&act.name)
            );
            actix::spawn(async move {
                let _ = session
                    .run(&command, REDRAW_TIMEOUT, REDRAW_MAX_BYTES)
                    .await;
            });
        });
    }

    /// Attaches if the environment runs; otherwise waits for its next transition
    /// ([`Self::env_moved`]) or closes, as [`gate`] says.
    pub(super) fn connect(&mut self, ctx: &mut Context<Self>) {
        let verdict = gate(&self.env.borrow(), self.attached_before);
        match verdict {
            Gate::Connect => self.waiting = None,
            Gate::Wait(why) => {
                if self.waiting.as_ref() != Some(&why) {
                    self.waiting = Some(why.clone());
                    self.status(TermState::Reconnecting, why);
                }
                return;
            }
            Gate::Close(why) => return self.close(why, ctx),
        }
        self.generation += 1;
        let generation = self.generation;
        let (store, id) = (self.deps.store.clone(), self.environment_id);
        let (name, mode, (cols, rows)) = (self.name.clone(), self.mode, self.size);
        let opened_at = self.size;
        let me = self.own_handle(ctx);
        let deps = self.deps.clone();
        let server = self.server.clone();
        let fut = async move {
            let session = match server {
                Some(access) => open_session(&deps, &access, "terminal")
                    .await
                    .map_err(|e| Failure::Lost(e.to_string()))?,
                None => {
                    // Where the machine is and its keys; its state came from the watch.
                    let record = store
                        .load(id)
                        .await
                        .map_err(|e| Failure::Lost(e.to_string()))?
                        .ok_or_else(|| Failure::Closed("the environment was deleted".to_owned()))?;
                    let (Some(machine), Some(keys)) = (record.machine, record.keys) else {
                        return Err(Failure::Lost("the environment has no machine".to_owned()));
                    };
                    let session = SshSession::connect(&machine, &keys.user_private).await;
                    deps.ssh_connect("terminal", session.is_ok());
                    session.map_err(|e| Failure::Lost(e.to_string()))?
                }
            };
            let command = match mode {
                SessionMode::Tmux => format!(
                    "cd; {UTF8_LOCALE}; exec tmux -u new-session -A -s {}",
                    shell_quote(&name)
                ),
                SessionMode::Shell => format!("cd; {UTF8_LOCALE}; exec \"${{SHELL:-/bin/sh}}\" -l"),
            };
            let channel = session
                .pty(&command, cols, rows)
                .await
                .map_err(|e| Failure::Lost(e.to_string()))?;
            Ok((Arc::new(session), channel))
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if generation != act.generation {
                return;
            }
            match res {
                Ok((session, channel)) => {
                    let (mut reader, writer_half) = channel.split();
                    let (wtx, mut wrx) = mpsc::channel::<WriterCmd>(256);
                    // Writes happen in order, off the actor.
                    actix::spawn(async move {
                        while let Some(cmd) = wrx.recv().await {
                            let ok = match cmd {
                                WriterCmd::Input(bytes) => {
                                    writer_half.data(&bytes[..]).await.is_ok()
                                }
                                WriterCmd::Resize(c, r) => {
                                    writer_half.window_change(c, r, 0, 0).await.is_ok()
                                }
                            };
                            if !ok {
                                break;
                            }
                        }
                    });
                    // Always drain the channel.
                    let me2 = me.clone();
                    actix::spawn(async move {
                        let mut carry = Utf8Carry::default();
                        let mut open = true;
                        while open {
                            let Some(msg) = reader.wait().await else {
                                break;
                            };
                            let ChannelMsg::Data { data } = msg else {
                                continue;
                            };
                            let mut text = carry.push(&data);
                            // Output already waiting joins this frame: a flood makes
                            // fewer, larger frames; a keystroke's echo is not delayed.
                            while text.len() < COALESCE_BYTES {
                                match reader.wait().now_or_never() {
                                    Some(Some(ChannelMsg::Data { data })) => {
                                        text.push_str(&carry.push(&data));
                                    }
                                    Some(Some(_)) => {}
                                    Some(None) => {
                                        open = false;
                                        break;
                                    }
                                    None => break,
                                }
                            }
                            me2.do_send(Output { generation, text });
                        }
                        me2.do_send(Disconnected { generation });
                    });
                    act.session = Some(session);
                    // A client that attached while this connected has a size the
                    // PTY was not opened with.
                    if act.size != opened_at {
                        let (c, r) = act.size;
                        let _ = wtx.try_send(WriterCmd::Resize(c, r));
                    }
                    act.writer.send_replace(Some(wtx));
                    act.attempts = 0;
                    act.attached_before = true;
                    act.status(TermState::Connected, "terminal attached");
                    act.redraw(ctx);
                }
                Err(Failure::Closed(why)) => act.close(why, ctx),
                Err(Failure::Lost(message)) => act.reconnect(message, ctx),
            }
        }));
    }

    /// The SSH connection dropped. If the environment is no longer running — a
    /// stop or delete is published before the machine goes — that is why: the
    /// terminal closes, without a `reconnecting` first. Otherwise it reconnects.
    pub(super) fn lost(&mut self, message: String, ctx: &mut Context<Self>) {
        self.session = None;
        self.writer.send_replace(None);
        let verdict = gate(&self.env.borrow(), self.attached_before);
        match verdict {
            Gate::Close(why) => self.close(why, ctx),
            Gate::Connect | Gate::Wait(_) => self.reconnect(message, ctx),
        }
    }

    /// The environment's state changed: close if it says so, attach if the
    /// terminal was waiting for it, and tell waiting clients where it stands.
    pub(super) fn env_moved(&mut self, ctx: &mut Context<Self>) {
        let verdict = gate(&self.env.borrow(), self.attached_before);
        match verdict {
            Gate::Close(why) => self.close(why, ctx),
            Gate::Connect | Gate::Wait(_) if self.waiting.is_some() => self.connect(ctx),
            // Connected (or reconnecting): a snapshot or resize does not end it.
            Gate::Connect | Gate::Wait(_) => {}
        }
    }

    /// The environment's actor stopped: it was deleted, or it is gone (it is
    /// restarted from durable state) and this terminal can no longer follow it.
    pub(super) fn env_gone(&mut self, ctx: &mut Context<Self>) {
        let why = if self.env.borrow().is_deleted() {
            "the environment was deleted"
        } else {
            "the environment's controller restarted; reconnect"
        };
        self.close(why.to_owned(), ctx);
    }

    /// Tells every client the terminal is closed, and why, and stops.
    pub(super) fn close(&mut self, why: String, ctx: &mut Context<Self>) {
        self.session = None;
        self.writer.send_replace(None);
        self.status(TermState::Closed, why);
        self.fanout.clear();
        ctx.stop();
    }

    /// Reconnects with backoff, telling the clients.
    fn reconnect(&mut self, message: String, ctx: &mut Context<Self>) {
        self.session = None;
        self.writer.send_replace(None);
        self.attempts += 1;
        self.deps.metric(|| {
            ::metrics::counter!("devpocket_ssh_reconnects_total", "purpose" => "terminal")
                .increment(1);
        });
        let delay = crate::backoff::Backoff::doubling(Duration::from_millis(200))
            .delay(self.attempts.min(5));
        self.status(
            TermState::Reconnecting,
            format!("connection lost ({message}); reconnecting"),
        );
        ctx.run_later(delay.min(Duration::from_secs(5)), |act, ctx| {
            if act.session.is_none() {
                act.connect(ctx);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{Gate, UTF8_LOCALE, gate};
    use crate::environment::EnvState;
    use crate::model::{Phase, Status};

    fn at(status: Status, phase: Phase) -> EnvState {
        EnvState {
            status,
            phase,
            message: None,
            idle_stop_at: None,
            stopped_because: None,
        }
    }

    fn closes(g: Gate, why: &str) -> bool {
        matches!(g, Gate::Close(m) if m.contains(why))
    }

    #[test]
    fn before_attaching_a_terminal_waits_for_any_environment_not_being_deleted() {
        for (status, phase) in [
            (Status::Creating, Phase::Installing),
            (Status::Stopped, Phase::Stopped),
            (Status::Stopped, Phase::Starting),
            (Status::Running, Phase::Restarting),
            (Status::Error, Phase::Failed),
        ] {
            let g = gate(&at(status, phase), false);
            assert!(
                matches!(&g, Gate::Wait(m) if m.contains(phase.as_str())),
                "{status}/{phase}: {g:?}"
            );
        }
        assert_eq!(
            gate(&at(Status::Running, Phase::Ready), false),
            Gate::Connect
        );
        let deleting = at(Status::Terminated, Phase::Deleting);
        assert!(closes(gate(&deleting, false), "deleted"));
    }

    #[test]
    fn once_attached_leaving_running_ready_closes_it_except_for_maintenance() {
        assert_eq!(
            gate(&at(Status::Running, Phase::Ready), true),
            Gate::Connect
        );
        for (status, phase, why) in [
            (Status::Running, Phase::Stopping, "stopped"),
            (Status::Stopped, Phase::Stopped, "stopped"),
            (Status::Running, Phase::Restarting, "restarting"),
            (Status::Terminated, Phase::Deleting, "deleted"),
            (Status::Terminated, Phase::Deleted, "deleted"),
            (Status::Error, Phase::Failed, "error (failed)"),
        ] {
            let g = gate(&at(status, phase), true);
            assert!(closes(g, why), "{status}/{phase}");
        }
        for phase in [Phase::Snapshotting, Phase::Resizing] {
            let g = gate(&at(Status::Running, phase), true);
            assert!(matches!(g, Gate::Wait(_)), "{phase}: {g:?}");
        }
    }

    #[test]
    fn an_idle_stop_closes_it_with_the_reason() {
        let because = "stopped after 30 minutes without activity";
        for phase in [Phase::Stopping, Phase::Stopped] {
            let mut state = at(Status::Running, phase);
            state.stopped_because = Some(because.into());
            assert_eq!(gate(&state, true), Gate::Close(because.into()));
        }
    }

    /// The character type `sh` ends up with, after `UTF8_LOCALE`, from `env`.
    fn ctype_after(env: &[(&str, &str)]) -> String {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "{UTF8_LOCALE}; echo \"${{LC_ALL:-${{LC_CTYPE:-${{LANG:-}}}}}}|${{LANG:-}}\""
            ))
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    #[test]
    fn a_terminal_is_utf8_whatever_the_locale_it_is_given() {
        // Nothing, or a locale of another character set: UTF-8, the language kept.
        assert_eq!(ctype_after(&[]), "C.UTF-8|");
        assert_eq!(ctype_after(&[("LANG", "C")]), "C.UTF-8|C");
        assert_eq!(ctype_after(&[("LC_ALL", "POSIX")]), "C.UTF-8|");
        // A UTF-8 locale the user chose is left alone.
        assert_eq!(
            ctype_after(&[("LANG", "en_US.UTF-8")]),
            "en_US.UTF-8|en_US.UTF-8"
        );
        assert_eq!(ctype_after(&[("LC_CTYPE", "C.utf8")]), "C.utf8|");
    }
}
