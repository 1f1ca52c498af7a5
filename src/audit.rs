//! The audit log: who did what to which resource, from where, and how it ended.
//!
//! Recording never blocks or fails the request being recorded: `AuditLog::record`
//! puts the event on a bounded queue (`try_send`) and returns; one background task
//! drains the queue and writes events to `audit_events` in batches. When the queue
//! is full the event is dropped, counted and logged; a write that fails is logged.

use std::future::{Ready, ready};

use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::IpNet;
use crate::error::ApiError;
use crate::startup::AppState;

mod writer;

pub use writer::{AuditLog, AuditWriter, QUEUE_CAPACITY};

/// User agents are kept to this many characters.
pub const USER_AGENT_MAX_CHARS: usize = 256;

/// What was done. The names (`as_str`) are stable: they are stored and filtered on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Register,
    Login,
    LoginFailed,
    Lockout,
    Logout,
    RefreshReuse,
    GoogleSignIn,
    GoogleLink,
    GoogleUnlink,
    EnvironmentCreate,
    EnvironmentStart,
    EnvironmentStop,
    EnvironmentRestart,
    EnvironmentDelete,
    EnvironmentSnapshot,
    EnvironmentResize,
    EnvironmentKeepAwake,
    EnvironmentAutoStop,
    TerminalAttach,
    TerminalDetach,
    TemplateCreate,
    TemplateUpdate,
    TemplateDeprecate,
    UserUpdate,
    AdminDenied,
    ServerCreate,
    ServerUpdate,
    ServerDelete,
    ServerTrust,
    ProjectCreate,
    ProjectUpdate,
    ProjectDelete,
    AppCreate,
    AppUpdate,
    AppDelete,
    AppStart,
    AppStop,
    AppExtend,
    AppAutoStop,
    VerificationSent,
    EmailVerified,
    VerificationFailed,
    PasswordResetRequested,
    PasswordReset,
    PasswordChanged,
    ProfileUpdate,
    AccountDelete,
}

impl Action {
    pub const ALL: [Action; 47] = [
        Action::Register,
        Action::Login,
        Action::LoginFailed,
        Action::Lockout,
        Action::Logout,
        Action::RefreshReuse,
        Action::GoogleSignIn,
        Action::GoogleLink,
        Action::GoogleUnlink,
        Action::EnvironmentCreate,
        Action::EnvironmentStart,
        Action::EnvironmentStop,
        Action::EnvironmentRestart,
        Action::EnvironmentDelete,
        Action::EnvironmentSnapshot,
        Action::EnvironmentResize,
        Action::EnvironmentKeepAwake,
        Action::EnvironmentAutoStop,
        Action::TerminalAttach,
        Action::TerminalDetach,
        Action::TemplateCreate,
        Action::TemplateUpdate,
        Action::TemplateDeprecate,
        Action::UserUpdate,
        Action::AdminDenied,
        Action::ServerCreate,
        Action::ServerUpdate,
        Action::ServerDelete,
        Action::ServerTrust,
        Action::ProjectCreate,
        Action::ProjectUpdate,
        Action::ProjectDelete,
        Action::AppCreate,
        Action::AppUpdate,
        Action::AppDelete,
        Action::AppStart,
        Action::AppStop,
        Action::AppExtend,
        Action::AppAutoStop,
        Action::VerificationSent,
        Action::EmailVerified,
        Action::VerificationFailed,
        Action::PasswordResetRequested,
        Action::PasswordReset,
        Action::PasswordChanged,
        Action::ProfileUpdate,
        Action::AccountDelete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Register => "auth.register",
            Action::Login => "auth.login",
            Action::LoginFailed => "auth.login_failed",
            Action::Lockout => "auth.lockout",
            Action::Logout => "auth.logout",
            Action::RefreshReuse => "auth.refresh_reuse",
            Action::GoogleSignIn => "auth.google_sign_in",
            Action::GoogleLink => "auth.google_link",
            Action::GoogleUnlink => "auth.google_unlink",
            Action::EnvironmentCreate => "environment.create",
            Action::EnvironmentStart => "environment.start",
            Action::EnvironmentStop => "environment.stop",
            Action::EnvironmentRestart => "environment.restart",
            Action::EnvironmentDelete => "environment.delete",
            Action::EnvironmentSnapshot => "environment.snapshot",
            Action::EnvironmentResize => "environment.resize",
            Action::EnvironmentKeepAwake => "environment.keep_awake",
            Action::EnvironmentAutoStop => "environment.auto_stop",
            Action::TerminalAttach => "terminal.attach",
            Action::TerminalDetach => "terminal.detach",
            Action::TemplateCreate => "admin.template_create",
            Action::TemplateUpdate => "admin.template_update",
            Action::TemplateDeprecate => "admin.template_deprecate",
            Action::UserUpdate => "admin.user_update",
            Action::AdminDenied => "admin.access_denied",
            Action::ServerCreate => "server.create",
            Action::ServerUpdate => "server.update",
            Action::ServerDelete => "server.delete",
            Action::ServerTrust => "server.trust",
            Action::ProjectCreate => "project.create",
            Action::ProjectUpdate => "project.update",
            Action::ProjectDelete => "project.delete",
            Action::AppCreate => "app.create",
            Action::AppUpdate => "app.update",
            Action::AppDelete => "app.delete",
            Action::AppStart => "app.start",
            Action::AppStop => "app.stop",
            Action::AppExtend => "app.extend",
            Action::AppAutoStop => "app.auto_stop",
            Action::VerificationSent => "auth.verification_sent",
            Action::EmailVerified => "auth.email_verified",
            Action::VerificationFailed => "auth.verification_failed",
            Action::PasswordResetRequested => "auth.password_reset_requested",
            Action::PasswordReset => "auth.password_reset",
            Action::PasswordChanged => "auth.password_changed",
            Action::ProfileUpdate => "account.profile_update",
            Action::AccountDelete => "account.delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// What kind of thing an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    User,
    Session,
    Environment,
    Template,
    /// A server a user registered.
    Server,
    Project,
    /// A compose app on a user's server.
    App,
    /// An API route, as `METHOD /path/{pattern}`.
    Endpoint,
}

impl ResourceType {
    pub const ALL: [ResourceType; 8] = [
        ResourceType::User,
        ResourceType::Session,
        ResourceType::Environment,
        ResourceType::Template,
        ResourceType::Server,
        ResourceType::Project,
        ResourceType::App,
        ResourceType::Endpoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::User => "user",
            ResourceType::Session => "session",
            ResourceType::Environment => "environment",
            ResourceType::Template => "template",
            ResourceType::Server => "server",
            ResourceType::Project => "project",
            ResourceType::App => "app",
            ResourceType::Endpoint => "endpoint",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// How it ended: it happened, it was attempted and failed, or policy refused it
/// (not allowed, locked, over a quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Success, Outcome::Failure, Outcome::Denied];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The outcome a handler's result stands for; `None` for requests that changed
    /// nothing because their input was malformed or named no resource of the
    /// caller's (400, 422, 404): those are not worth a row.
    pub fn of<T>(result: &Result<T, ApiError>) -> Option<Self> {
        match result {
            Ok(_) => Some(Outcome::Success),
            Err(
                ApiError::BadRequest { .. }
                | ApiError::Validation(_)
                | ApiError::NotFound(_)
                | ApiError::PayloadTooLarge(_)
                | ApiError::UnsupportedMediaType(_),
            ) => None,
            Err(
                ApiError::Forbidden(_)
                | ApiError::Refused { .. }
                | ApiError::Unauthorized(_)
                | ApiError::Locked { .. }
                | ApiError::RateLimited { .. },
            ) => Some(Outcome::Denied),
            Err(_) => Some(Outcome::Failure),
        }
    }
}

/// Where a request came from: the client address (behind trusted proxies, the
/// forwarded one) and its user agent, cut to `USER_AGENT_MAX_CHARS`.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Origin {
    pub fn of(req: &HttpRequest, trusted_proxies: &[IpNet]) -> Self {
        let user_agent = req.headers().get(header::USER_AGENT).map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .filter(|c| !c.is_control())
                .take(USER_AGENT_MAX_CHARS)
                .collect()
        });
        Self {
            ip: crate::http::client_ip(req, trusted_proxies).map(|ip| ip.to_string()),
            user_agent,
        }
    }
}

impl FromRequest for Origin {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match req.app_data::<web::Data<AppState>>() {
            Some(state) => Ok(Self::of(req, &state.settings.http.trusted_proxies)),
            None => Err(ApiError::internal(anyhow::anyhow!(
                "application state missing"
            ))),
        })
    }
}

/// One thing to record. Built with `Event::new(action, outcome)` and the setters.
#[derive(Debug, Clone)]
pub struct Event {
    action: Action,
    outcome: Outcome,
    user_id: Option<Uuid>,
    resource_type: ResourceType,
    resource_id: Option<String>,
    details: Value,
}

impl Event {
    /// An event about a user (by default, the acting one: see `by`).
    pub fn new(action: Action, outcome: Outcome) -> Self {
        Self {
            action,
            outcome,
            user_id: None,
            resource_type: ResourceType::User,
            resource_id: None,
            details: json!({}),
        }
    }

    /// The user who acted. For user resources without an id, it is the resource too.
    pub fn by(mut self, user: Uuid) -> Self {
        self.user_id = Some(user);
        if self.resource_type == ResourceType::User && self.resource_id.is_none() {
            self.resource_id = Some(user.to_string());
        }
        self
    }

    pub fn on(mut self, kind: ResourceType, id: Option<impl ToString>) -> Self {
        self.resource_type = kind;
        self.resource_id = id.map(|id| id.to_string());
        self
    }

    /// Adds the members of `details` (an object) to the event's details.
    pub fn details(mut self, details: Value) -> Self {
        if let (Value::Object(into), Value::Object(from)) = (&mut self.details, details) {
            into.extend(from);
        }
        self
    }

    /// Records a failed request's error code and message in the details.
    pub fn error<T>(self, result: &Result<T, ApiError>) -> Self {
        match result {
            Ok(_) => self,
            Err(err) => {
                let detail = if actix_web::ResponseError::status_code(err).is_server_error() {
                    None
                } else {
                    Some(err.to_string())
                };
                self.details(json!({ "error": err.code(), "detail": detail }))
            }
        }
    }

    /// An event for the result of a request, or `None` when it is not recorded
    /// (see `Outcome::of`).
    pub fn for_result<T>(action: Action, result: &Result<T, ApiError>) -> Option<Self> {
        Outcome::of(result).map(|outcome| Self::new(action, outcome).error(result))
    }
}

/// What a terminal connection records when its client attaches and detaches.
pub struct TerminalAudit {
    log: AuditLog,
    origin: Origin,
    user: Uuid,
    /// The environment (or server) the terminal is on.
    on: (ResourceType, Uuid),
    session: String,
}

impl TerminalAudit {
    pub fn new(
        state: &AppState,
        origin: Origin,
        user: Uuid,
        on: (ResourceType, Uuid),
        session: &str,
    ) -> Self {
        Self {
            log: state.audit.clone(),
            origin,
            user,
            on,
            session: session.to_owned(),
        }
    }

    /// `terminal.attach` or `terminal.detach`, on the environment or server.
    pub fn record(&self, action: Action) {
        self.log.record(
            &self.origin,
            Event::new(action, Outcome::Success)
                .on(self.on.0, Some(self.on.1))
                .by(self.user)
                .details(json!({ "session": self.session })),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn names_are_stable_and_parse_back() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        assert_eq!(Action::UserUpdate.as_str(), "admin.user_update");
        assert_eq!(Action::parse("auth.nope"), None);
        for kind in ResourceType::ALL {
            assert_eq!(ResourceType::parse(kind.as_str()), Some(kind));
        }
        for outcome in Outcome::ALL {
            assert_eq!(Outcome::parse(outcome.as_str()), Some(outcome));
        }
    }

    #[test]
    fn outcomes_follow_the_result() {
        let ok: Result<(), ApiError> = Ok(());
        assert_eq!(Outcome::of(&ok), Some(Outcome::Success));
        let denied: Result<(), ApiError> = Err(ApiError::Forbidden("no".into()));
        assert_eq!(Outcome::of(&denied), Some(Outcome::Denied));
        let conflict: Result<(), ApiError> = Err(ApiError::Conflict {
            detail: "busy".into(),
            context: json!({}),
        });
        assert_eq!(Outcome::of(&conflict), Some(Outcome::Failure));
        let missing: Result<(), ApiError> = Err(ApiError::NotFound("gone".into()));
        assert_eq!(Outcome::of(&missing), None);
        let event = Event::for_result(Action::EnvironmentStop, &conflict).expect("event");
        assert_eq!(event.details["error"], "conflict");
        assert_eq!(event.details["detail"], "busy");
    }

    #[test]
    fn the_user_agent_is_cut_and_cleaned() {
        // A tab and a byte that is not UTF-8, then far too much.
        let mut long = b"agent\t\xff".to_vec();
        long.extend(std::iter::repeat_n(b'x', 1000));
        let value = header::HeaderValue::from_bytes(&long).expect("header");
        let req = TestRequest::default()
            .peer_addr("198.51.100.4:1234".parse().expect("addr"))
            .insert_header((header::USER_AGENT, value))
            .to_http_request();
        let origin = Origin::of(&req, &[]);
        assert_eq!(origin.ip.as_deref(), Some("198.51.100.4"));
        let agent = origin.user_agent.expect("agent");
        assert_eq!(agent.chars().count(), USER_AGENT_MAX_CHARS);
        assert!(agent.starts_with("agent\u{fffd}x"), "{agent}");
    }

    #[test]
    fn user_events_default_their_resource_to_the_actor() {
        let user = Uuid::new_v4();
        let event = Event::new(Action::Login, Outcome::Success).by(user);
        assert_eq!(event.resource_id, Some(user.to_string()));
        let event = Event::new(Action::Logout, Outcome::Success)
            .on(ResourceType::Session, Some("s1"))
            .by(user);
        assert_eq!(
            (event.resource_type, event.resource_id.as_deref()),
            (ResourceType::Session, Some("s1"))
        );
    }
}
