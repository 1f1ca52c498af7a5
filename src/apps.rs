//! Compose apps on users' own servers (the README's "Servers and apps"): what an
//! app may say, what the app reads of it, its runs — `up -d` to start, `down` to
//! stop, in its directory on its server, through the server's actor, bounded in
//! time and output — and its auto-stop, whose time is durable (`apps.stops_at`)
//! and which every process looks for, each due app claimed by one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use devpocket_actors::app::{self as app_actor, AppRuns, AppWork, Schedule};
use devpocket_actors::server::{RunOnServer, ServerError};
use devpocket_actors::ssh::{Live, shell_quote};
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{Action, Event, Origin, Outcome, ResourceType};
use crate::db::apps::{self as db, App, AppRun, RunEnd};
use crate::db::servers::{self as servers_db, Server};
use crate::error::{ApiError, ValidationErrors};
use crate::startup::AppState;

/// The most of a run's output kept (its end).
pub const OUTPUT_KEPT: usize = 64 * 1024;
/// How long a start or a stop may run on the server.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The longest `auto_stop_minutes` or extend (a year, and a week).
const MAX_AUTO_STOP: i64 = 525_600;
const MAX_EXTEND: i64 = 7 * 24 * 60;

/// What happens in an app's runs, as it happens, for its WebSocket clients
/// (`WS /api/v1/ws/apps/{id}/logs`) on this process.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    RunStarted {
        run_id: Uuid,
        action: &'static str,
    },
    RunOutput {
        run_id: Uuid,
        data: String,
    },
    RunFinished {
        run_id: Uuid,
        status: &'static str,
        exit_status: Option<i32>,
    },
}

/// The channel of each app with a run or a client now (see [`RunEvent`]).
#[derive(Default)]
pub struct LiveRuns {
    apps:
        std::sync::Mutex<std::collections::HashMap<Uuid, tokio::sync::broadcast::Sender<RunEvent>>>,
}

/// Events a client may fall behind by before it is told it missed some.
const LIVE_BACKLOG: usize = 256;

impl LiveRuns {
    /// The app's channel, made if it has none.
    pub fn sender(&self, app: Uuid) -> tokio::sync::broadcast::Sender<RunEvent> {
        let mut apps = self
            .apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        apps.entry(app)
            .or_insert_with(|| tokio::sync::broadcast::channel(LIVE_BACKLOG).0)
            .clone()
    }

    pub fn subscribe(&self, app: Uuid) -> tokio::sync::broadcast::Receiver<RunEvent> {
        self.sender(app).subscribe()
    }

    /// Forgets the app's channel once nobody listens (a run that ends, a client
    /// that leaves).
    pub fn tidy(&self, app: Uuid) {
        let mut apps = self
            .apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if apps.get(&app).is_some_and(|tx| tx.receiver_count() == 0) {
            apps.remove(&app);
        }
    }
}

/// An app as the app reads it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = App)]
pub struct AppResponse {
    pub id: Uuid,
    #[schema(example = "blog")]
    pub name: String,
    pub project_id: Uuid,
    pub server_id: Uuid,
    /// Its directory on the server.
    #[schema(example = "/srv/blog")]
    pub path: String,
    /// The compose file, relative to `path`; null: compose's own default.
    pub compose_file: Option<String>,
    /// Where it answers, for the app to open.
    #[schema(example = "https://blog.example.com")]
    pub url: Option<String>,
    /// Stopped this long after a start or an extend; 0: never.
    pub auto_stop_minutes: i32,
    /// `stopped`, `starting`, `running`, `stopping` or `error`.
    #[schema(example = "running")]
    pub status: String,
    /// Why (a failed run's reason, or how it stopped).
    pub status_message: Option<String>,
    /// When a running app is stopped; null: never, or not running.
    pub stops_at: Option<DateTime<Utc>>,
    /// Services compose said were running at the server's last check.
    pub services_running: Option<i32>,
    pub last_checked: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<App> for AppResponse {
    fn from(a: App) -> Self {
        Self {
            id: a.id,
            name: a.name,
            project_id: a.project_id,
            server_id: a.server_id,
            path: a.path,
            compose_file: a.compose_file,
            url: a.url,
            auto_stop_minutes: a.auto_stop_minutes,
            status: a.status,
            status_message: a.status_message,
            stops_at: a.stops_at,
            services_running: a.services_running,
            last_checked: a.last_checked,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// One start or stop, with what it printed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunResponse {
    pub id: Uuid,
    /// `start`, `stop` or `auto_stop`.
    pub action: String,
    pub started_at: DateTime<Utc>,
    /// Null while it runs.
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_status: Option<i32>,
    /// The end of what compose printed (stdout and stderr), at most 64 KiB.
    pub output: String,
    /// Why it could not run, when it could not.
    pub error: Option<String>,
}

impl From<AppRun> for RunResponse {
    fn from(r: AppRun) -> Self {
        Self {
            id: r.id,
            action: r.action,
            started_at: r.started_at,
            finished_at: r.finished_at,
            exit_status: r.exit_status,
            output: r.output,
            error: r.error,
        }
    }
}

pub fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("No app with id {id}."))
}

/// The fields of an app as sent; `create` requires what a new one needs.
#[derive(Debug, Default)]
pub struct AppInput {
    pub name: Option<String>,
    pub project_id: Option<Uuid>,
    pub server_id: Option<Uuid>,
    pub path: Option<String>,
    pub compose_file: Option<Option<String>>,
    pub url: Option<Option<String>>,
    pub auto_stop_minutes: Option<i32>,
}

const FIELDS: [&str; 7] = [
    "name",
    "project_id",
    "server_id",
    "path",
    "compose_file",
    "url",
    "auto_stop_minutes",
];

impl AppInput {
    pub fn from_json(body: &Map<String, Value>, create: bool) -> Result<Self, ApiError> {
        let mut errors = ValidationErrors::default();
        for key in body.keys() {
            if !FIELDS.contains(&key.as_str()) || (!create && key == "server_id") {
                let why = if key == "server_id" {
                    "cannot change: an app stays on its server (delete it and create it on the other)".to_owned()
                } else {
                    format!("is not a field of an app; use {}", FIELDS.join(", "))
                };
                errors.add(key, why);
            }
        }
        if create {
            for field in ["name", "project_id", "server_id", "path"] {
                if body.get(field).is_none_or(Value::is_null) {
                    errors.add(field, "is required");
                }
            }
        }
        let string = |field: &str, errors: &mut ValidationErrors| match body.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.add(field, "must be a string");
                None
            }
        };
        let check =
            |field: &str, errors: &mut ValidationErrors, f: fn(&str) -> Result<String, String>| {
                string(field, errors).and_then(|v| f(&v).map_err(|e| errors.add(field, e)).ok())
            };
        let id = |field: &str, errors: &mut ValidationErrors| {
            string(field, errors).and_then(|v| {
                Uuid::parse_str(&v)
                    .map_err(|_| errors.add(field, "must be an id (a UUID)"))
                    .ok()
            })
        };
        let optional =
            |field: &str, errors: &mut ValidationErrors, f: fn(&str) -> Result<String, String>| {
                match body.get(field) {
                    None => None,
                    Some(Value::Null) => Some(None),
                    Some(_) => check(field, errors, f).map(Some),
                }
            };
        let input = Self {
            name: check("name", &mut errors, name),
            project_id: id("project_id", &mut errors),
            server_id: id("server_id", &mut errors),
            path: check("path", &mut errors, path),
            compose_file: optional("compose_file", &mut errors, compose_file),
            url: optional("url", &mut errors, url),
            auto_stop_minutes: match body.get("auto_stop_minutes") {
                None | Some(Value::Null) => create.then_some(60),
                Some(v) => match v.as_i64().filter(|m| (0..=MAX_AUTO_STOP).contains(m)) {
                    Some(m) => i32::try_from(m).ok(),
                    None => {
                        errors.add(
                            "auto_stop_minutes",
                            format!("must be a whole number of minutes from 0 (never) to {MAX_AUTO_STOP}"),
                        );
                        None
                    }
                },
            },
        };
        errors.into_result()?;
        Ok(input)
    }
}

/// A name of a server, a project or an app: kept as sent (it reads back as it
/// was written), not blank.
pub fn name(v: &str) -> Result<String, String> {
    if v.trim().is_empty() || v.chars().count() > 64 || v.chars().any(char::is_control) {
        return Err("must be 1 to 64 characters, not blank, without control characters".into());
    }
    Ok(v.to_owned())
}

/// An absolute directory, as written: no `.` or `..` component, no empty one but
/// the first, no control character. It reaches the server's shell quoted.
fn path(v: &str) -> Result<String, String> {
    if !v.starts_with('/') {
        return Err("must be an absolute directory on the server, such as /srv/blog".into());
    }
    if v.len() > 1024 || v.chars().any(char::is_control) {
        return Err("must be at most 1024 bytes, without control characters".into());
    }
    let trimmed = v.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("must be a directory below /, not / itself".into());
    }
    if trimmed[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("must name the directory plainly: no `.`, `..` or `//`".into());
    }
    Ok(trimmed.to_owned())
}

/// A file relative to the app's directory, below it.
fn compose_file(v: &str) -> Result<String, String> {
    if v.is_empty() || v.len() > 255 || v.chars().any(char::is_control) || v.starts_with('/') {
        return Err("must be a file name relative to `path`, such as compose.prod.yaml".into());
    }
    if v.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("must stay within `path`: no `.`, `..` or `//`".into());
    }
    Ok(v.to_owned())
}

fn url(v: &str) -> Result<String, String> {
    // The URL parser would drop tabs and newlines; a value kept as sent has none.
    if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must be an http or https URL, without spaces or control characters".into());
    }
    match url::Url::parse(v) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https") && u.host().is_some() && v.len() <= 2048 =>
        {
            // Kept as sent, so that it reads back as it was written.
            Ok(v.to_owned())
        }
        _ => Err("must be an http or https URL of at most 2048 characters".into()),
    }
}

/// The shell command that runs compose `args` in the app's directory: compose is
/// `docker compose` where that exists, else `docker-compose`; every value the
/// owner chose is quoted. Prints the end of what compose printed and exits with
/// its status.
pub fn compose_command(app: &App, args: &str) -> String {
    format!(
        "out=$( {{ {} {args}; }} 2>&1 ); s=$?; printf '%s\\n' \"$out\" | tail -c {OUTPUT_KEPT}; exit $s",
        compose_prefix(app)
    )
}

/// `cd` into the app's directory and compose with its file, ready for arguments.
fn compose_prefix(app: &App) -> String {
    let file = app
        .compose_file
        .as_deref()
        .map(|f| format!(" -f {}", shell_quote(f)))
        .unwrap_or_default();
    format!(
        "c=$(if docker compose version >/dev/null 2>&1; then echo 'docker compose'; else echo docker-compose; fi); \
         cd -- {dir} && $c{file}",
        dir = shell_quote(&app.path),
    )
}

/// Runs compose `args` for `app` on `server` (whose host key is trusted).
async fn run_compose(
    state: &AppState,
    server: &Server,
    app: &App,
    args: &str,
) -> Result<(Option<i32>, String), String> {
    run_compose_live(state, server, app, args, Live::default()).await
}

/// [`run_compose`], telling `live` what compose prints as it prints it.
async fn run_compose_live(
    state: &AppState,
    server: &Server,
    app: &App,
    args: &str,
    live: Live,
) -> Result<(Option<i32>, String), String> {
    let Some(access) = crate::servers::access(state, server).map_err(|e| e.to_string())? else {
        return Err("the server's host key is not trusted yet".into());
    };
    let actor = state
        .actors
        .server(server.user_id, server.id)
        .await
        .map_err(|e| e.to_string())?;
    let run = RunOnServer {
        access,
        command: compose_command(app, args),
        timeout: Some(RUN_TIMEOUT),
        max_bytes: 2 * OUTPUT_KEPT,
        live,
    };
    match actor.send(run).await {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Ok((out.status.and_then(|s| i32::try_from(s).ok()), text))
        }
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(ServerError::Stopped.to_string()),
    }
}

/// Which app, which of its runs, why.
pub struct Run {
    pub app: App,
    pub server: Server,
    pub run: Uuid,
    pub action: Action,
}

/// Runs a start (`up -d`) or a stop (`down`) already begun (`db::begin_run`) to
/// its end, and records how it ended: the app's new status, and for a start its
/// stop time. In the background of the request that began it (see [`run_now`]).
pub async fn spawn_run(state: Arc<AppState>, run: Run) {
    let runs: Arc<dyn AppRuns> = Arc::new(Runner(state.clone()));
    match state.actors.app(run.app.user_id, run.app.id, runs).await {
        Ok(actor) => {
            let me = actor.clone();
            actor.do_send(app_actor::Run(Box::pin(async move {
                let stops_at = run_now(&state, run).await;
                me.do_send(Schedule(stops_at));
            })));
        }
        // No actor to make it (the actor system is going down): made here, so
        // that it is recorded either way.
        Err(_) => {
            actix_web::rt::spawn(async move { run_now(&state, run).await });
        }
    }
}

/// Tells the app's actor (if it runs) when the app stops by itself now.
pub async fn reschedule(state: &Arc<AppState>, app: &App) {
    let runs: Arc<dyn AppRuns> = Arc::new(Runner(state.clone()));
    if let Ok(actor) = state.actors.app(app.user_id, app.id, runs).await {
        actor.do_send(Schedule(app.stops_at));
    }
}

/// What an app's actor asks of this server: the stop due when its timer fires.
struct Runner(Arc<AppState>);

impl AppRuns for Runner {
    fn stop_due(&self, app: Uuid) -> AppWork {
        let state = self.0.clone();
        Box::pin(async move {
            let claimed = match state.pool.get().await {
                Ok(mut conn) => db::claim_one_due(&mut conn, app).await.ok().flatten(),
                Err(_) => None,
            };
            // Extended, stopped, or stopped elsewhere meanwhile: nothing is due.
            let Some((app, run)) = claimed else { return };
            let server = match state.pool.get().await {
                Ok(mut conn) => servers_db::find_owned(&mut conn, app.user_id, app.server_id)
                    .await
                    .ok()
                    .flatten(),
                Err(_) => None,
            };
            if let Some(server) = server {
                tracing::info!(app_id = %app.id, "stopping an app whose time is up");
                let action = Action::AppAutoStop;
                run_now(
                    &state,
                    Run {
                        app,
                        server,
                        run,
                        action,
                    },
                )
                .await;
            }
        })
    }
}

/// Runs a start or a stop already begun to its end, and records how it ended:
/// when the app now stops by itself (`None`: it does not, or is not running).
pub async fn run_now(state: &AppState, run: Run) -> Option<DateTime<Utc>> {
    let start = matches!(run.action, Action::AppStart);
    let args = if start { "up -d" } else { "down" };
    let began = Instant::now();
    let events = state.live_runs.sender(run.app.id);
    let run_id = run.run;
    let _ = events.send(RunEvent::RunStarted {
        run_id,
        action: match run.action {
            Action::AppStart => "start",
            Action::AppAutoStop => "auto_stop",
            _ => "stop",
        },
    });
    let live = {
        let events = events.clone();
        let mut carry = devpocket_actors::terminal::utf8::Utf8Carry::default();
        Live {
            on_data: Some(Box::new(move |bytes: &[u8]| {
                let data = carry.push(bytes);
                if !data.is_empty() {
                    let _ = events.send(RunEvent::RunOutput { run_id, data });
                }
            })),
            ..Live::default()
        }
    };
    let result = run_compose_live(state, &run.server, &run.app, args, live).await;
    let (exit_status, output, error) = match result {
        Ok((status, output)) => (status, output, None),
        Err(error) => (None, String::new(), Some(error)),
    };
    let ok = exit_status == Some(0);
    let (status, message, stops_at) = match (start, ok) {
        (true, true) => {
            let minutes = u32::try_from(run.app.auto_stop_minutes).unwrap_or(0);
            let stops_at = (minutes > 0).then(|| after_minutes(state, minutes));
            ("running", None, stops_at)
        }
        (false, true) => {
            let why = (run.action == Action::AppAutoStop)
                .then(|| format!("stopped after {} minutes", run.app.auto_stop_minutes));
            ("stopped", why, None)
        }
        (_, false) => {
            let why = error.clone().unwrap_or_else(|| {
                format!(
                    "compose {args} failed (exit status {}): see GET /apps/{}/logs",
                    exit_status.map_or("unknown".into(), |s| s.to_string()),
                    run.app.id
                )
            });
            ("error", Some(why), None)
        }
    };
    let outcome = if ok { "ok" } else { "failed" };
    let action = args.split(' ').next().unwrap_or(args);
    state.metrics.record(|| {
        ::metrics::counter!("devpocket_app_runs_total", "action" => action, "result" => outcome)
            .increment(1);
        ::metrics::histogram!("devpocket_app_run_duration_seconds", "action" => action)
            .record(began.elapsed().as_secs_f64());
    });
    let _ = events.send(RunEvent::RunFinished {
        run_id,
        status,
        exit_status,
    });
    drop(events);
    state.live_runs.tidy(run.app.id);
    let end = RunEnd {
        exit_status,
        output,
        error,
        status,
        status_message: message,
        stops_at,
    };
    let recorded = match state.pool.get().await {
        Ok(mut conn) => db::end_run(&mut conn, run.app.id, run.run, &end)
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(anyhow::Error::from(e)),
    };
    if let Err(err) = recorded {
        tracing::error!(app_id = %run.app.id, error = %err, "how an app's run ended could not be recorded");
    }
    if run.action == Action::AppAutoStop {
        let outcome = if ok {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        state.audit.record(
            &Origin::default(),
            Event::new(Action::AppAutoStop, outcome)
                .on(ResourceType::App, Some(run.app.id))
                .by(run.app.user_id)
                .details(json!({
                    "auto_stop_minutes": run.app.auto_stop_minutes,
                    "stops_at": run.app.stops_at,
                    "exit_status": exit_status,
                })),
        );
        if ok {
            state.metrics.record(|| {
                ::metrics::counter!("devpocket_app_auto_stops_total").increment(1);
            });
        }
    }
    stops_at
}

/// How long `compose logs -f` may follow, and how much, for one client.
pub const FOLLOW_TIMEOUT: Duration = Duration::from_secs(60 * 60);
pub const FOLLOW_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Follows `compose logs -f` of `app` (the last `tail` lines first) until `stop`,
/// the time or byte bound, or the command's end; each piece of output goes to
/// `on_data`. The reason it ended.
pub async fn follow_logs(
    state: &AppState,
    server: &Server,
    app: &App,
    tail: u32,
    on_data: devpocket_actors::ssh::OnData,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> String {
    let Ok(Some(access)) = crate::servers::access(state, server) else {
        return "the server's host key is not trusted yet".to_owned();
    };
    let Ok(actor) = state.actors.server(server.user_id, server.id).await else {
        return ServerError::Stopped.to_string();
    };
    let run = RunOnServer {
        access,
        command: format!("{} logs -f --no-color --tail {tail}", compose_prefix(app)),
        timeout: Some(FOLLOW_TIMEOUT),
        max_bytes: FOLLOW_MAX_BYTES,
        live: Live {
            on_data: Some(on_data),
            stop: Some(stop),
            keep: false,
        },
    };
    match actor.send(run).await {
        Ok(Ok(out)) => format!(
            "compose logs ended (exit status {})",
            out.status.map_or("unknown".into(), |s| s.to_string())
        ),
        Ok(Err(err)) => err.to_string(),
        Err(_) => ServerError::Stopped.to_string(),
    }
}

/// Starts this process's auto-stop of apps; it ends with the application. Each
/// pass claims the running apps whose stop time has come (one process each) and
/// stops them.
pub fn spawn_auto_stop(state: &Arc<AppState>) {
    let every = state.settings.auto_stop.check_every;
    crate::periodic::every(state, every, |state| async move {
        let abandoned = Utc::now()
            - chrono::Duration::from_std(RUN_TIMEOUT + Duration::from_secs(60)).unwrap_or_default();
        if let Ok(mut conn) = state.pool.get().await
            && let Ok(n @ 1..) = db::fail_abandoned(&mut conn, abandoned).await
        {
            tracing::warn!(
                apps = n,
                "apps left starting or stopping by an ended server process are now in error"
            );
        }
        let claimed = match state.pool.get().await {
            Ok(mut conn) => db::claim_due(&mut conn, 100)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(error = %err, "the apps' auto-stop could not read which are due; it tries again at its next pass");
                return;
            }
        };
        for (app, run) in claimed {
            let server = match state.pool.get().await {
                Ok(mut conn) => servers_db::find_owned(&mut conn, app.user_id, app.server_id)
                    .await
                    .ok()
                    .flatten(),
                Err(_) => None,
            };
            let Some(server) = server else {
                tracing::warn!(app_id = %app.id, "an app due to stop has no server it can be reached on");
                continue;
            };
            tracing::info!(app_id = %app.id, "stopping an app whose time is up");
            spawn_run(
                state.clone(),
                Run {
                    app,
                    server,
                    run,
                    action: Action::AppAutoStop,
                },
            )
            .await;
        }
    });
}

/// The services compose says run for each running app on `server` (after an
/// online check); an app with none was stopped by hand.
pub async fn check_apps_on(state: &AppState, server: &Server) {
    let apps = match state.pool.get().await {
        Ok(mut conn) => db::list_apps(&mut conn, server.user_id, None, Some(server.id))
            .await
            .unwrap_or_default(),
        Err(_) => return,
    };
    for app in apps.into_iter().filter(|a| a.status == "running") {
        let counted =
            run_compose(state, server, &app, "ps --services --filter status=running").await;
        let Ok((Some(0), out)) = counted else {
            continue;
        };
        let running = out.lines().filter(|l| !l.trim().is_empty()).count();
        if let Ok(mut conn) = state.pool.get().await
            && let Err(err) = db::record_ps(
                &mut conn,
                app.id,
                i32::try_from(running).unwrap_or(i32::MAX),
            )
            .await
        {
            tracing::warn!(app_id = %app.id, error = %err, "what runs of an app could not be recorded");
        }
    }
}

/// `minutes` from now, in apps' minutes (`DEVPOCKET_APPS_MINUTE`).
pub fn after_minutes(state: &AppState, minutes: u32) -> DateTime<Utc> {
    let span = state.settings.servers.app_minute.saturating_mul(minutes);
    Utc::now() + chrono::Duration::from_std(span).unwrap_or(chrono::Duration::MAX)
}

/// `minutes` of an extend, checked.
pub fn extend_minutes(body: &Value) -> Result<u32, ApiError> {
    body.get("minutes")
        .and_then(Value::as_i64)
        .filter(|m| (1..=MAX_EXTEND).contains(m))
        .and_then(|m| u32::try_from(m).ok())
        .ok_or_else(|| {
            ApiError::validation(
                "minutes",
                format!("must be a whole number of minutes from 1 to {MAX_EXTEND}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_plain_absolute_directories_and_reach_the_shell_quoted() {
        assert_eq!(path("/srv/blog/").unwrap(), "/srv/blog");
        for bad in [
            "srv",
            "/",
            "/srv/../etc",
            "/srv//x",
            "/srv/./x",
            "/a\nb",
            "",
        ] {
            assert!(path(bad).is_err(), "{bad:?}");
        }
        let hostile = "/srv/it's a \"$(touch /tmp/pwned)\" `id` dir";
        assert_eq!(path(hostile).unwrap(), hostile);
        let app = App {
            id: Uuid::nil(),
            user_id: Uuid::nil(),
            project_id: Uuid::nil(),
            server_id: Uuid::nil(),
            name: "x".into(),
            path: hostile.into(),
            compose_file: Some("a b'.yml".into()),
            url: None,
            auto_stop_minutes: 60,
            status: "stopped".into(),
            status_message: None,
            stops_at: None,
            services_running: None,
            last_checked: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let command = compose_command(&app, "up -d");
        assert!(command.contains(&shell_quote(hostile)), "{command}");
        assert!(command.contains(&shell_quote("a b'.yml")), "{command}");
    }

    #[test]
    fn compose_files_stay_in_the_directory_and_urls_are_web_addresses() {
        assert!(compose_file("deploy/compose.yml").is_ok());
        for bad in ["/etc/passwd", "../x.yml", "a/../../x", ""] {
            assert!(compose_file(bad).is_err(), "{bad}");
        }
        assert_eq!(
            url("https://Blog.example.com").unwrap(),
            "https://Blog.example.com"
        );
        for bad in [
            "javascript:alert(1)",
            "ftp://x",
            "not a url",
            "http://",
            "http://x/\n",
            "http://x/ y",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
    }
}
