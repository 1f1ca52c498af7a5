//! The idle auto-stop (the README's "Idle auto-stop"): the activity rule, each
//! environment's idle timeout within its plan, when a stop is due, and the check
//! every process runs each `DEVPOCKET_AUTO_STOP_CHECK`. The times it weighs are
//! durable (activity is recorded by whichever process sees it), so a restart loses
//! no stop; the environment's owner makes the stop only if no activity was recorded
//! since the check read them, so no environment is stopped twice or in spite of a
//! keystroke seen elsewhere.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use devpocket_actors::environment::{AutoStop, IdleWarning};
use devpocket_actors::model::IdleSeen;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::audit::{Action, Event, Origin, Outcome, ResourceType};
use crate::config::AutoStopSettings;
use crate::db::activity::{self, Weighed};
use crate::error::ValidationErrors;
use crate::plans::Plan;
use crate::startup::AppState;

/// The rule, in the words the README and `GET /api/v1/info` use.
pub const RULE: &str = "An environment that is running counts as active while someone uses it: \
input on any of its terminals (keystrokes and pastes; not resizes, pings or reconnects), \
an SSH session into its machine from outside DevPocket (on DigitalOcean: a connection to the \
droplet's SSH port from any address but the server's, seen open before the warning or the stop), \
a keep-awake call, and its start. Output alone (a build printing, a tail -f) is not activity. \
After its idle timeout without activity it is stopped, as if its owner had stopped it; \
its open terminals are warned first (a status frame idle_warning with the stop time), \
and any input cancels the stop. A keep-awake holds it up for the minutes asked for.";

/// The longest `auto_stop_minutes` anyone may choose (a year).
const MAX_MINUTES: i64 = 525_600;

/// The idle timeout an environment has: its own (`auto_stop_minutes`) within its
/// plan's, or its plan's; `None`: never stopped for being idle. A 0 that a plan no
/// longer allows (after a downgrade) is the plan's.
pub fn timeout(settings: &AutoStopSettings, plan: Plan, minutes: Option<i32>) -> Option<Duration> {
    let cap = settings.plan_timeout(plan);
    let own = minutes
        .and_then(|m| u64::try_from(m).ok())
        .filter(|m| *m > 0)
        .map(|m| Duration::from_secs(m * 60));
    match (minutes, own, cap) {
        (_, Some(own), Some(cap)) => Some(own.min(cap)),
        (_, Some(own), None) => Some(own),
        (Some(0), None, None) => None,
        (_, None, cap) => cap,
    }
}

/// When an idle stop is due: `timeout` after the last activity, and not before a
/// keep-awake ends. `None` when it has no timeout.
pub fn stop_at(
    timeout: Option<Duration>,
    last_activity: DateTime<Utc>,
    awake_until: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let timeout = chrono::Duration::from_std(timeout?).ok()?;
    let idle = last_activity.checked_add_signed(timeout)?;
    Some(awake_until.map_or(idle, |until| idle.max(until)))
}

/// `auto_stop_minutes` as sent in a create or a `PUT`: `None` when absent or null
/// (the plan's), else a whole number of minutes the plan allows.
pub fn validate_minutes(
    value: Option<&Value>,
    settings: &AutoStopSettings,
    plan: Plan,
    errors: &mut ValidationErrors,
) -> Option<i32> {
    const FIELD: &str = "auto_stop_minutes";
    let value = value.filter(|v| !v.is_null())?;
    let cap = settings.plan_timeout(plan);
    let most = cap.map_or(MAX_MINUTES, |c| {
        i64::try_from(c.as_secs() / 60).unwrap_or(0)
    });
    let range = match cap {
        None => format!("from 0 (never) to {MAX_MINUTES}"),
        Some(_) if most < 1 => {
            errors.add(
                FIELD,
                format!(
                    "cannot be chosen on the {} plan, whose idle timeout is under a minute; leave it out",
                    plan.as_str()
                ),
            );
            return None;
        }
        Some(_) => format!(
            "from 1 to {most} (the {} plan stops idle environments after at most {most} minutes)",
            plan.as_str()
        ),
    };
    match value.as_i64() {
        Some(m) if m == 0 && cap.is_none() => Some(0),
        Some(m) if (1..=most).contains(&m) => i32::try_from(m).ok(),
        _ => {
            errors.add(FIELD, format!("must be a whole number of minutes {range}"));
            None
        }
    }
}

/// When a running environment stops if nothing happens, and why it would not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub timeout: Option<Duration>,
    pub stop_at: Option<DateTime<Utc>>,
    pub warning_at: Option<DateTime<Utc>>,
}

pub fn schedule(settings: &AutoStopSettings, env: &Weighed) -> Schedule {
    let timeout = timeout(settings, env.plan, env.auto_stop_minutes);
    let last = env.last_activity.or(env.started_at);
    let stop_at = match (env.is_running(), last) {
        (true, Some(last)) => stop_at(timeout, last, env.awake_until),
        _ => None,
    };
    let warning = chrono::Duration::from_std(settings.warning).unwrap_or_default();
    Schedule {
        timeout,
        stop_at,
        warning_at: stop_at.map(|at| at - warning),
    }
}

/// What `GET /api/v1/environments/{id}/activity` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityResponse {
    /// When the last activity was (also the environment's `last_accessed`).
    pub last_activity_at: Option<DateTime<Utc>>,
    /// What it was; null when none is recorded.
    pub last_activity: Option<LastActivity>,
    /// The idle timeout that applies, in seconds (the environment's
    /// `auto_stop_minutes` within its plan's); null: never stopped for being idle.
    pub idle_timeout_seconds: Option<u64>,
    /// When it stops if nothing happens; null when it is not running or has no
    /// idle timeout.
    pub stop_at: Option<DateTime<Utc>>,
    /// When its terminals are warned of that stop.
    pub warning_at: Option<DateTime<Utc>>,
    /// The end of the keep-awake in force, if any (while it runs).
    pub kept_awake_until: Option<DateTime<Utc>>,
    /// What holds it up right now, whatever the activity: `keep_awake` while a
    /// keep-awake lasts, `no_idle_timeout` when it has none. Empty: only activity
    /// (or it is not running).
    #[schema(example = json!(["keep_awake"]))]
    pub held_awake_by: Vec<&'static str>,
    /// The activity rule.
    pub rule: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LastActivity {
    /// `started`, `terminal_input`, `ssh_session` or `keep_awake`.
    #[schema(example = "terminal_input")]
    pub kind: String,
    /// The terminal session, for `terminal_input`.
    pub session: Option<String>,
    /// The client's address, for `terminal_input` and `keep_awake`; for
    /// `ssh_session`, the address the session comes from.
    pub client_address: Option<String>,
}

impl ActivityResponse {
    pub fn new(settings: &AutoStopSettings, env: Weighed, now: DateTime<Utc>) -> Self {
        let plan = schedule(settings, &env);
        let running = env.is_running();
        let kept_awake_until = env.awake_until.filter(|until| running && *until > now);
        let mut held_awake_by = Vec::new();
        if kept_awake_until.is_some() {
            held_awake_by.push("keep_awake");
        }
        if running && plan.timeout.is_none() {
            held_awake_by.push("no_idle_timeout");
        }
        Self {
            last_activity_at: env.last_activity,
            last_activity: env.kind.clone().map(|kind| LastActivity {
                kind,
                session: env.session.clone(),
                client_address: env.client_address.clone(),
            }),
            idle_timeout_seconds: plan.timeout.map(|t| t.as_secs()),
            stop_at: plan.stop_at,
            warning_at: plan.warning_at,
            kept_awake_until,
            held_awake_by,
            rule: RULE,
        }
    }
}

/// "30 minutes", "2 hours", "45 seconds".
pub fn describe(timeout: Duration) -> String {
    let secs = timeout.as_secs();
    let (n, unit) = match secs {
        s if s >= 3600 && s % 3600 == 0 => (s / 3600, "hour"),
        s if s >= 60 && s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// Starts this process's idle check; it ends with the application.
pub fn spawn(state: &Arc<AppState>) {
    let every = state.settings.auto_stop.check_every;
    crate::periodic::every(state, every, |state| async move { check(&state).await });
}

/// One pass: warns the terminals of every environment whose idle stop is near and
/// asks the owner of every idle one to stop it.
async fn check(state: &AppState) {
    let running = match state.pool.get().await {
        Ok(mut conn) => activity::running(&mut conn)
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(anyhow::Error::from(e)),
    };
    let running = match running {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!(error = %err, "the idle check could not read the running environments; it tries again at its next pass");
            return;
        }
    };
    let settings = &state.settings.auto_stop;
    let now = Utc::now();
    let soon = chrono::Duration::from_std(settings.check_every).unwrap_or_default();
    // The stops of a pass are asked for together: one may wait for its machine
    // (to look for SSH sessions from outside), and must not hold up the others.
    let mut stops = Vec::new();
    for env in running {
        let plan = schedule(settings, &env);
        let (Some(stop_at), Some(warning_at)) = (plan.stop_at, plan.warning_at) else {
            continue;
        };
        // The owner of an environment whose stop is near is started (it takes the
        // lease) before the stop is due.
        if now + soon < warning_at.min(stop_at) {
            continue;
        }
        let actor = match state.actors.environment(env.user_id, env.id).await {
            Ok(Some(actor)) => actor,
            Ok(None) => continue,
            Err(err) => {
                tracing::warn!(environment_id = %env.id, error = %err, "the idle check could not reach an environment's controller");
                continue;
            }
        };
        let seen = IdleSeen {
            last_activity: env.last_activity,
        };
        if now < stop_at {
            if now >= warning_at {
                actor.do_send(IdleWarning { stop_at, seen });
            }
            continue;
        }
        let idle_for = plan.timeout.map(describe).unwrap_or_default();
        let because = format!("stopped after {idle_for} without activity");
        let stop = AutoStop {
            seen,
            because: because.clone(),
        };
        stops.push(async move {
            match actor.send(stop).await {
                Ok(Ok(true)) => stopped(state, &env, plan, because),
                Ok(Ok(false)) => {}
                Ok(Err(err)) => {
                    tracing::warn!(environment_id = %env.id, error = %devpocket_actors::error_chain(&err), "an idle stop failed; the next check tries again");
                }
                Err(err) => {
                    tracing::warn!(environment_id = %env.id, error = %err, "an environment's controller did not answer the idle check");
                }
            }
        });
    }
    futures_util::future::join_all(stops).await;
}

/// An idle stop was made: audited with the rule that fired, and counted.
fn stopped(state: &AppState, env: &Weighed, plan: Schedule, because: String) {
    tracing::info!(environment_id = %env.id, user_id = %env.user_id, %because, "idle environment stopped");
    state.metrics.record(|| {
        ::metrics::counter!("devpocket_auto_stops_total", "plan" => env.plan.as_str()).increment(1);
    });
    state.audit.record(
        &Origin::default(),
        Event::new(Action::EnvironmentAutoStop, Outcome::Success)
            .on(ResourceType::Environment, Some(env.id))
            .by(env.user_id)
            .details(json!({
                "rule": "idle",
                "detail": because,
                "idle_timeout_seconds": plan.timeout.map(|t| t.as_secs()),
                "last_activity_at": env.last_activity,
                "last_activity": env.kind,
                "session": env.session,
                "kept_awake_until": env.awake_until,
            })),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    fn settings(pairs: &[(&str, &str)]) -> AutoStopSettings {
        let mut all = vec![("SECRET_KEY", "0123456789abcdef0123456789abcdef")];
        all.extend_from_slice(pairs);
        crate::config::Settings::load(&Source::from_map(all))
            .expect("settings")
            .auto_stop
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn each_plan_has_its_documented_timeout_and_an_environment_chooses_within_it() {
        let s = settings(&[]);
        assert_eq!(timeout(&s, Plan::Free, None), Some(30 * MIN));
        assert_eq!(timeout(&s, Plan::Starter, None), Some(120 * MIN));
        assert_eq!(timeout(&s, Plan::Pro, None), Some(480 * MIN));
        assert_eq!(timeout(&s, Plan::Admin, None), None);
        assert_eq!(timeout(&s, Plan::Free, Some(10)), Some(10 * MIN));
        // Capped by the plan after a downgrade; a 0 it no longer allows is its own.
        assert_eq!(timeout(&s, Plan::Free, Some(600)), Some(30 * MIN));
        assert_eq!(timeout(&s, Plan::Free, Some(0)), Some(30 * MIN));
        assert_eq!(timeout(&s, Plan::Admin, Some(0)), None);
        assert_eq!(timeout(&s, Plan::Admin, Some(5)), Some(5 * MIN));
        let never = settings(&[("DEVPOCKET_AUTO_STOP_FREE", "0")]);
        assert_eq!(timeout(&never, Plan::Free, None), None);
    }

    #[test]
    fn the_stop_is_the_timeout_after_the_last_activity_and_not_before_a_keep_awake_ends() {
        let last = Utc::now();
        let t = Some(30 * MIN);
        let idle = last + chrono::Duration::minutes(30);
        assert_eq!(stop_at(t, last, None), Some(idle));
        let early = last + chrono::Duration::minutes(5);
        assert_eq!(stop_at(t, last, Some(early)), Some(idle));
        let late = last + chrono::Duration::hours(2);
        assert_eq!(stop_at(t, last, Some(late)), Some(late));
        assert_eq!(stop_at(None, last, Some(late)), None);
    }

    #[test]
    fn chosen_minutes_are_refused_outside_the_plan_with_the_range() {
        let s = settings(&[]);
        let check = |v: Value, plan| {
            let mut errors = ValidationErrors::default();
            let got = validate_minutes(Some(&v), &s, plan, &mut errors);
            (got, errors.into_result().err().map(|e| format!("{e:?}")))
        };
        assert_eq!(check(json!(30), Plan::Free), (Some(30), None));
        assert_eq!(check(json!(0), Plan::Admin), (Some(0), None));
        assert_eq!(check(json!(525_600), Plan::Admin), (Some(525_600), None));
        for bad in [
            json!(0),
            json!(31),
            json!(-1),
            json!(1.5),
            json!("10"),
            json!(true),
        ] {
            let (got, err) = check(bad.clone(), Plan::Free);
            assert_eq!(got, None, "{bad}");
            let err = err.expect("refused");
            assert!(err.contains("from 1 to 30"), "{bad}: {err}");
        }
        assert!(check(json!(525_601), Plan::Admin).1.is_some());
        let mut errors = ValidationErrors::default();
        assert_eq!(validate_minutes(None, &s, Plan::Free, &mut errors), None);
        assert_eq!(
            validate_minutes(Some(&Value::Null), &s, Plan::Free, &mut errors),
            None
        );
        assert!(errors.into_result().is_ok());
    }

    #[test]
    fn timeouts_read_as_people_say_them() {
        assert_eq!(describe(30 * MIN), "30 minutes");
        assert_eq!(describe(120 * MIN), "2 hours");
        assert_eq!(describe(MIN), "1 minute");
        assert_eq!(describe(Duration::from_secs(90)), "90 seconds");
    }
}
