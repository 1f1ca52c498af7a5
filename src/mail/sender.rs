//! The mail sender: one actor per process that delivers what the outbox holds.
//! New mail wakes it at once, and a retry when it is due; it also reads the outbox
//! every `poll_every`, for mail another process queued. Rows are claimed (see
//! `db::outbox::claim_due`), so several processes never send one mail twice
//! unless one dies mid-send.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use metrics::{counter, gauge};

use crate::config::MailSettings;
use crate::db::DbPool;
use crate::db::outbox::{self, QueuedMail};
use crate::metrics::Metrics;

/// Mails claimed at once.
const BATCH: i64 = 20;
/// How long a claimed mail is out of other senders' reach: longer than a send can
/// take (lettre gives up on an SMTP command after a minute).
const CLAIM_HOLD: Duration = Duration::from_secs(5 * 60);

/// Where mail goes.
pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// Written as `.eml` files to this directory (no SMTP server configured).
    Files(PathBuf),
}

impl Transport {
    pub fn from_settings(
        settings: &MailSettings,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        Ok(match &settings.smtp_url {
            Some(url) => Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())?.build(),
            ),
            // Absolute, for the logs to say where to look.
            None => Transport::Files(std::path::absolute(data_dir.join("outbox"))?),
        })
    }

    /// Where mail goes, for the start-up log (never the SMTP password).
    pub fn describe(&self, settings: &MailSettings) -> String {
        match (self, &settings.smtp_url) {
            (Transport::Files(dir), _) => {
                format!(
                    "written to {} as .eml files (SMTP_URL is not set)",
                    dir.display()
                )
            }
            (Transport::Smtp(_), Some(url)) => match url::Url::parse(url.expose()) {
                Ok(u) => format!(
                    "sent through {}://{}:{} (SMTP_URL)",
                    u.scheme(),
                    u.host_str().unwrap_or("?"),
                    u.port()
                        .map_or_else(|| "default".to_owned(), |p| p.to_string())
                ),
                Err(_) => "sent over SMTP".to_owned(),
            },
            (Transport::Smtp(_), None) => "sent over SMTP".to_owned(),
        }
    }
}

/// Why a send failed, and whether trying again could help.
struct Failure {
    permanent: bool,
    message: String,
}

impl Failure {
    fn permanent(message: String) -> Self {
        Self {
            permanent: true,
            message,
        }
    }
    fn transient(message: String) -> Self {
        Self {
            permanent: false,
            message,
        }
    }
}

struct Delivery {
    pool: DbPool,
    transport: Transport,
    from: Mailbox,
    settings: MailSettings,
    metrics: Arc<Metrics>,
}

impl Delivery {
    /// Sends what is due until nothing is; answers how long until the next mail
    /// waiting is due, if one is.
    async fn drain(&self) -> Option<Duration> {
        loop {
            let claimed = match self.pool.get().await {
                Ok(mut conn) => outbox::claim_due(&mut conn, BATCH, CLAIM_HOLD).await,
                Err(e) => {
                    tracing::warn!(error = %e, "mail outbox: no database connection");
                    return None;
                }
            };
            let mails = match claimed {
                Ok(mails) if mails.is_empty() => break,
                Ok(mails) => mails,
                Err(e) => {
                    tracing::warn!(error = %e, "mail outbox: reading what is due failed");
                    return None;
                }
            };
            for mail in mails {
                let result = self.deliver(&mail).await;
                if let Err(e) = self.record(&mail, result).await {
                    tracing::warn!(error = %e, mail = %mail.id, "mail outbox: recording a send failed");
                }
            }
        }
        let mut conn = self.pool.get().await.ok()?;
        if let Ok(n) = outbox::queued(&mut conn).await {
            self.metrics
                .record(|| gauge!("devpocket_mail_queued").set(n as f64));
        }
        let due = outbox::next_due(&mut conn).await.ok()??;
        Some((due - Utc::now()).to_std().unwrap_or_default())
    }

    async fn deliver(&self, mail: &QueuedMail) -> Result<String, Failure> {
        let to: Mailbox = mail.recipient.parse().map_err(|e| {
            Failure::permanent(format!("`{}` cannot be mailed: {e}", mail.recipient))
        })?;
        let message = Message::builder()
            .message_id(Some(format!("<{}@{}>", mail.id, self.from.email.domain())))
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .date_now()
            .multipart(MultiPart::alternative_plain_html(
                mail.text_body.clone(),
                mail.html_body.clone(),
            ))
            .map_err(|e| Failure::permanent(format!("the message cannot be built: {e}")))?;
        match &self.transport {
            Transport::Smtp(smtp) => match smtp.send(message).await {
                Ok(response) => Ok(format!("accepted: {}", response.code())),
                Err(e) if e.is_permanent() => Err(Failure::permanent(e.to_string())),
                Err(e) => Err(Failure::transient(e.to_string())),
            },
            Transport::Files(dir) => write_file(dir, mail, &message.formatted())
                .await
                .map(|path| format!("written to {}", path.display()))
                .map_err(|e| Failure::transient(format!("writing to {}: {e}", dir.display()))),
        }
    }

    async fn record(
        &self,
        mail: &QueuedMail,
        result: Result<String, Failure>,
    ) -> Result<(), anyhow::Error> {
        let mut conn = self.pool.get().await?;
        let kind = mail.kind.clone();
        match result {
            Ok(how) => {
                tracing::info!(mail = %mail.id, kind = %mail.kind, "mail {how}");
                outbox::sent(&mut conn, mail.id).await?;
                self.metrics
                    .record(|| counter!("devpocket_mail_sent_total", "kind" => kind).increment(1));
            }
            Err(failure) => {
                let age = (Utc::now() - mail.created_at).to_std().unwrap_or_default();
                if failure.permanent || age >= self.settings.give_up_after {
                    tracing::error!(mail = %mail.id, kind = %mail.kind, attempts = mail.attempts,
                        error = %failure.message, "mail given up");
                    outbox::failed(&mut conn, mail.id, &failure.message).await?;
                    self.metrics.record(|| {
                        counter!("devpocket_mail_failed_total", "kind" => kind).increment(1);
                    });
                } else {
                    let retry_in = backoff(&self.settings, mail.attempts);
                    tracing::warn!(mail = %mail.id, kind = %mail.kind, attempts = mail.attempts,
                        error = %failure.message, retry_in = ?retry_in, "mail not sent; will retry");
                    outbox::retry(&mut conn, mail.id, retry_in, &failure.message).await?;
                    self.metrics.record(|| {
                        counter!("devpocket_mail_retries_total", "kind" => kind).increment(1);
                    });
                }
            }
        }
        Ok(())
    }
}

/// `retry_min` after the first failed attempt, twice as long after each further
/// one, at most `retry_max`.
fn backoff(settings: &MailSettings, attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    settings
        .retry_min
        .saturating_mul(1 << doublings)
        .min(settings.retry_max)
}

/// Writes the message as `<time>-<id>.eml`, whole or not at all.
async fn write_file(
    dir: &std::path::Path,
    mail: &QueuedMail,
    bytes: &[u8],
) -> std::io::Result<PathBuf> {
    tokio::fs::create_dir_all(dir).await?;
    let name = format!(
        "{}-{}.eml",
        mail.created_at.format("%Y%m%dT%H%M%S%.3fZ"),
        mail.id
    );
    let path = dir.join(&name);
    let partial = dir.join(format!(".{name}.partial"));
    tokio::fs::write(&partial, bytes).await?;
    tokio::fs::rename(&partial, &path).await?;
    Ok(path)
}

/// The sender actor.
pub struct MailSender {
    delivery: Arc<Delivery>,
    poll_every: Duration,
    busy: bool,
    again: bool,
    /// The pass planned for when the next retry is due, sooner than the poll.
    retry: Option<SpawnHandle>,
}

/// Something was queued: look now.
#[derive(Message)]
#[rtype(result = "()")]
struct Wake;

impl MailSender {
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            self.again = true;
            return;
        }
        self.busy = true;
        let delivery = self.delivery.clone();
        ctx.spawn(
            async move { delivery.drain().await }
                .into_actor(self)
                .map(|next, act, ctx| {
                    act.busy = false;
                    if std::mem::take(&mut act.again) {
                        act.drain(ctx);
                        return;
                    }
                    if let Some(previous) = act.retry.take() {
                        ctx.cancel_future(previous);
                    }
                    // A little late rather than early: the row is due by then.
                    if let Some(wait) = next.filter(|w| *w < act.poll_every) {
                        let wait = wait + Duration::from_millis(10);
                        act.retry = Some(ctx.run_later(wait, |act, ctx| act.drain(ctx)));
                    }
                }),
        );
    }
}

impl Actor for MailSender {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.drain(ctx);
        ctx.run_interval(self.poll_every, |act, ctx| act.drain(ctx));
    }
}

impl Handler<Wake> for MailSender {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        self.drain(ctx);
    }
}

/// What requests hold: wakes the sender after they queued mail.
#[derive(Clone)]
pub struct Outbox {
    sender: Addr<MailSender>,
}

impl Outbox {
    /// Starts this process's sender.
    pub fn start(
        pool: DbPool,
        transport: Transport,
        settings: MailSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let poll_every = settings.poll_every;
        let delivery = Arc::new(Delivery {
            pool,
            transport,
            from: settings.from.clone(),
            settings,
            metrics,
        });
        let sender = MailSender {
            delivery,
            poll_every,
            busy: false,
            again: false,
            retry: None,
        }
        .start();
        Self { sender }
    }

    /// Mail was queued (and committed): send it now rather than at the next poll.
    pub fn wake(&self) {
        self.sender.do_send(Wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_the_minimum_up_to_the_maximum() {
        let settings = MailSettings {
            retry_min: Duration::from_secs(10),
            retry_max: Duration::from_secs(60),
            ..crate::config::Settings::load(&crate::config::Source::from_map(std::iter::empty::<(
                &str,
                &str,
            )>()))
            .map(|s| s.mail)
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let waits: Vec<u64> = [1, 2, 3, 4, 50, i32::MAX]
            .into_iter()
            .map(|a| backoff(&settings, a).as_secs())
            .collect();
        assert_eq!(waits, [10, 20, 40, 60, 60, 60]);
    }
}
