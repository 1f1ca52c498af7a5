//! Builds the application: migrations, pool, shared state, middleware and routes,
//! bound to its own listener. `main` and the tests go through the same path.

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Instant;

use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServerHandle, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::ErrorHandlers;
use actix_web::{App, HttpServer, http::header, web};
use anyhow::Context;

use devpocket_actors::inspect::Inspector;
use devpocket_actors::provider::Provider;
use devpocket_actors::provider::digitalocean::{DigitalOceanConfig, DigitalOceanProvider};
use devpocket_actors::provider::local::LocalProvider;
use devpocket_actors::terminal::TerminalSettings;
use devpocket_actors::{ActorSettings, ActorSystem, Deps, Gauges};

use crate::audit::{AuditLog, AuditWriter};
use crate::auth::google::GoogleSignIn;
use crate::auth::password::PasswordHasher;
use crate::auth::session_cache::SessionCache;
use crate::auth::tokens::TokenKeys;
use crate::config::{DatabaseLocation, Secret, Settings};
use crate::crypto::SecretBox;
use crate::db::store::DbStore;
use crate::db::{self, DbPool, embedded};
use crate::environments::list_cache::ListCache;
use crate::http::{self, json::JsonLimit};
use crate::metrics::Metrics;
use crate::ratelimit::{self, RateLimits};
use crate::routes;

/// Unsent bytes the kernel may hold for one connection; see [`tune_socket`].
const SOCKET_UNSENT_BYTES: u32 = 128 * 1024;

/// Terminal echo is a small frame behind a stream of output: without TCP_NODELAY,
/// Nagle holds it until the client's delayed ACK (~40 ms). TCP_NOTSENT_LOWAT keeps
/// a stalled client's backlog in our bounded queue, where it is counted and can be
/// skipped, instead of letting the kernel's send buffer grow to megabytes for it
/// (data in flight is not limited, so a fast client on a long path is not slowed).
fn tune_socket(tcp: &actix_web::rt::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
    let _ = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(SOCKET_UNSENT_BYTES);
}

/// Everything a handler may need, shared by all workers.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: DbPool,
    pub tokens: TokenKeys,
    pub hasher: PasswordHasher,
    pub started_at: Instant,
    pub actors: ActorSystem,
    /// The provider new environments use.
    pub default_provider: String,
    /// Every provider this server drives.
    pub providers: Vec<String>,
    /// The DigitalOcean provider, when configured (regions and sizes).
    pub digitalocean: Option<Arc<DigitalOceanProvider>>,
    /// What reconciliation with DigitalOcean last found.
    pub reconcile: Option<Arc<crate::reconcile::ReconcileStatus>>,
    pub terminal_connections: Arc<crate::routes::ws_terminal::TerminalConnections>,
    pub ratelimits: Arc<RateLimits>,
    /// Where handlers record audit events (never blocks; see `audit`).
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    /// Live sessions seen recently (see `auth::session_cache`).
    pub sessions: SessionCache,
    /// Users' lists of environments seen recently (see `environments::list_cache`).
    pub lists: Arc<ListCache>,
    /// Seals and opens secrets at rest (registered servers' keys).
    pub secrets: SecretBox,
    /// Apps' runs as they happen, for their WebSocket clients.
    pub live_runs: Arc<crate::apps::LiveRuns>,
    /// Wakes this process's mail sender after mail was queued.
    pub outbox: crate::mail::sender::Outbox,
    /// Tells other processes what to drop from their caches (`listener`).
    pub invalidations: crate::listener::Outgoing,
    /// Google sign-in, when `GOOGLE_CLIENT_IDS` is set.
    pub google: Option<GoogleSignIn>,
}

/// How often recorded samples are folded into the histograms (the exporter's own
/// default period).
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The system group of local environments' users (when running as root).
const ENVIRONMENT_GROUP: &str = "devpocket-env";

/// Starts the actor system with the configured providers, on the durable store,
/// after removing the local machines (and users) that belong to no live
/// environment: what a crash, or a delete that never finished, left behind.
async fn start_actors(
    settings: &Settings,
    secret_key: &Secret<Vec<u8>>,
    pool: &DbPool,
    metrics: &Metrics,
    digitalocean: Option<Arc<DigitalOceanProvider>>,
    lists: Arc<ListCache>,
) -> anyhow::Result<ActorSystem> {
    let environments = settings.data_dir.join("environments");
    let group = if nix::unistd::Uid::effective().is_root() {
        // Each environment runs as its own user in this group; the group may pass
        // through (not list) the directories above the environments.
        embedded::ensure_system_group(ENVIRONMENT_GROUP)?;
        crate::data_dir::ensure_data_dir(&settings.data_dir)?;
        std::fs::set_permissions(&settings.data_dir, std::fs::Permissions::from_mode(0o711))
            .context("opening the data directory to environment users")?;
        let dir = settings.data_dir.canonicalize()?;
        embedded::ensure_traversable(&dir, &format!("g:{ENVIRONMENT_GROUP}"))?;
        Some(ENVIRONMENT_GROUP.to_owned())
    } else {
        None
    };
    let local = LocalProvider::new(environments, group).context("preparing the local provider")?;
    let live = {
        let mut conn = pool.get().await?;
        crate::db::environments::live_on_provider(&mut conn, local.name()).await?
    };
    let removed = local
        .sweep(live.into_iter().map(|(id, ..)| id).collect())
        .await
        .context("removing orphan local machines")?;
    if !removed.is_empty() {
        tracing::warn!(environments = ?removed, "removed local machines that belonged to no live environment");
    }
    let mut providers: HashMap<String, Arc<dyn Provider>> = HashMap::new();
    providers.insert(local.name().to_owned(), Arc::new(local));
    if let Some(digitalocean) = digitalocean {
        providers.insert(digitalocean.name().to_owned(), digitalocean);
    }
    let store = DbStore {
        pool: pool.clone(),
        secrets: SecretBox::new(secret_key.expose()),
        lists,
    };
    let deps = Deps {
        store: Arc::new(store),
        providers,
        owner: uuid::Uuid::new_v4(),
        settings: ActorSettings {
            lease_ttl: settings.environments.lease_ttl,
            provision_timeout: settings.environments.provision_timeout,
            activity_every: settings.auto_stop.check_every,
            ..ActorSettings::default()
        },
        terminal: TerminalSettings {
            buffer_bytes: settings.terminal.buffer_bytes,
            client_queue_bytes: settings.terminal.client_queue_bytes,
            linger: settings.terminal.linger,
            ..TerminalSettings::default()
        },
        servers: settings.servers.actors.clone(),
        gauges: Gauges::default(),
        inspector: Inspector::new(&*metrics.recorder()),
        recorder: metrics.recorder(),
        answers: Default::default(),
    };
    Ok(ActorSystem::start(Arc::new(deps)))
}

/// The DigitalOcean provider, when a token is configured; its API calls are
/// counted in `metrics`.
fn digitalocean_provider(
    settings: &Settings,
    metrics: &Metrics,
) -> anyhow::Result<Option<DigitalOceanProvider>> {
    let Some(d) = &settings.digitalocean else {
        return Ok(None);
    };
    let config = DigitalOceanConfig {
        api_url: d.api_url.clone(),
        region: d.region.clone(),
        size: d.size.clone(),
        image: d.image.clone(),
        volume_gigabytes: d.volume_gigabytes,
        request_timeout: d.request_timeout,
        requests_per_minute: d.requests_per_minute,
        poll_interval: d.poll_interval,
        shutdown_timeout: d.shutdown_timeout,
        ..DigitalOceanConfig::new(d.token.expose().clone())
    };
    let provider = DigitalOceanProvider::new(config)
        .context("preparing the DigitalOcean provider")?
        .with_recorder(metrics.recorder());
    Ok(Some(provider))
}

pub struct Application {
    port: u16,
    server: Server,
    metrics_server: Option<Server>,
    audit: AuditWriter,
    actors: ActorSystem,
}

impl Application {
    /// Migrates the database, then binds `settings.http.listen` (port 0 picks a free one).
    /// `settings.database` must name a server and `settings.auth` hold the secret key:
    /// the embedded cluster and the development key are resolved by the caller (see `cli`).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let DatabaseLocation::External(url) = &settings.database.location else {
            anyhow::bail!("the embedded database must be started before building the application");
        };
        let Some(secret_key) = settings.auth.secret_key.clone() else {
            anyhow::bail!("the secret key must be loaded before building the application");
        };
        let listen_url = url.expose().clone();
        let applied = db::run_migrations(url)
            .await
            .context("applying migrations")?;
        if !applied.is_empty() {
            tracing::info!(?applied, "migrations applied");
        }
        // Listening before anything else, so that nothing other processes say is
        // missed from here on (see `listener`).
        let listening = crate::listener::connect(&listen_url)
            .await
            .map_err(anyhow::Error::msg)
            .context("listening for other server processes (PostgreSQL LISTEN)")?;
        let pool = db::build_pool(url, settings.database.pool_size, settings.database.timeout)?;
        crate::templates::sync(&pool, settings.templates_dir.as_deref())
            .await
            .context("loading templates")?;
        let hasher = PasswordHasher::new(settings.auth.hash_concurrency)?;
        let tokens = TokenKeys::new(
            secret_key.expose(),
            settings.auth.access_token_ttl,
            settings.auth.refresh_token_ttl,
        );
        let google = settings
            .google
            .as_ref()
            .map(GoogleSignIn::new)
            .transpose()
            .context("preparing Google sign-in")?;
        let metrics = Arc::new(Metrics::new()?);
        Metrics::spawn_upkeep(&metrics, METRICS_UPKEEP);
        let digitalocean = digitalocean_provider(&settings, &metrics)?.map(Arc::new);
        let lists = Arc::new(ListCache::new(settings.environments.list_cache_ttl));
        let (invalidations, outgoing) = crate::listener::Outgoing::new();
        let actors = start_actors(
            &settings,
            &secret_key,
            &pool,
            &metrics,
            digitalocean.clone(),
            lists.clone(),
        )
        .await?;
        let resumed = actors.resume_all().await.context("resuming environments")?;
        if resumed > 0 {
            tracing::info!(resumed, "environments resumed");
        }
        let reconcile = match (&digitalocean, &settings.digitalocean) {
            (Some(provider), Some(d)) => Some(
                crate::reconcile::Reconciler::new(
                    provider.clone(),
                    pool.clone(),
                    actors.clone(),
                    d.clone(),
                    metrics.clone(),
                )
                .spawn(),
            ),
            _ => None,
        };
        let listener = TcpListener::bind(settings.http.listen)
            .with_context(|| format!("binding {}", settings.http.listen))?;
        let port = listener.local_addr()?.port();
        let workers = settings.http.workers;
        let ratelimits = Arc::new(RateLimits::new(&settings.rate_limits, &metrics));
        ratelimit::spawn_sweeper(&ratelimits, settings.rate_limits.sweep, pool.clone());
        let transport =
            crate::mail::sender::Transport::from_settings(&settings.mail, &settings.data_dir)
                .context("preparing outgoing mail")?;
        tracing::info!("outgoing mail is {}", transport.describe(&settings.mail));
        let outbox = crate::mail::sender::Outbox::start(
            pool.clone(),
            transport,
            settings.mail.clone(),
            metrics.clone(),
        );
        let settings = Arc::new(settings);
        let (audit, audit_writer) = AuditLog::start(pool.clone());
        let actor_system = actors.clone();
        let state = web::Data::new(AppState {
            settings: settings.clone(),
            pool,
            tokens,
            hasher,
            started_at: Instant::now(),
            actors,
            default_provider: settings.default_provider().to_owned(),
            providers: {
                let mut names = vec!["local".to_owned()];
                if settings.digitalocean.is_some() {
                    names.push("digitalocean".to_owned());
                }
                names
            },
            digitalocean,
            reconcile,
            terminal_connections: Arc::default(),
            ratelimits,
            audit,
            metrics,
            sessions: SessionCache::new(settings.auth.session_cache_ttl),
            lists,
            secrets: SecretBox::new(secret_key.expose()),
            live_runs: Arc::default(),
            outbox,
            invalidations,
            google,
        });
        let metrics_listener = match settings.metrics.listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .with_context(|| format!("binding DEVPOCKET_METRICS_LISTEN {address}"))?,
            ),
            None => None,
        };
        let metrics_state = state.clone();
        crate::environments::auto_stop::spawn(&state.clone().into_inner());
        crate::servers::spawn_checks(&state.clone().into_inner());
        crate::apps::spawn_auto_stop(&state.clone().into_inner());
        crate::listener::spawn(&state.clone().into_inner(), listen_url, listening, outgoing);

        let server = HttpServer::new(move || app(&settings).app_data(state.clone()))
            .workers(workers)
            .on_connect(|conn, _| {
                if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                    tune_socket(tcp);
                }
            })
            .disable_signals()
            .listen(listener)?
            .run();
        // A separate listener for Prometheus, when configured: `/metrics` only.
        let metrics_server = match metrics_listener {
            Some(listener) => Some(
                HttpServer::new(move || {
                    App::new()
                        .app_data(metrics_state.clone())
                        .wrap(ErrorHandlers::new().default_handler(http::envelope_fallback))
                        .configure(routes::metrics::configure)
                        .default_service(web::to(routes::not_found))
                })
                .workers(1)
                .disable_signals()
                .listen(listener)?
                .run(),
            ),
            None => None,
        };
        Ok(Self {
            port,
            server,
            metrics_server,
            audit: audit_writer,
            actors: actor_system,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// The actor system, to stop it with the server when that is not awaited.
    pub fn actors(&self) -> ActorSystem {
        self.actors.clone()
    }

    /// Serves until stopped, then writes the audit events still queued.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let metrics = self.metrics_server.map(|server| {
            let handle = server.handle();
            actix_web::rt::spawn(server);
            handle
        });
        let result = self.server.await;
        if let Some(metrics) = metrics {
            metrics.stop(true).await;
        }
        self.actors.stop();
        self.audit.finish().await;
        result
    }
}

/// The application without its shared state: middleware, every route, and the
/// envelope for unknown paths. `Application::build` adds the state; tests list
/// the routes it registers (`tests/api/openapi.rs`).
pub fn app(
    settings: &Settings,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody + use<>>,
        Error = actix_web::Error,
        InitError = (),
    > + use<>,
> {
    let metrics_on_main = settings.metrics.listen.is_none();
    App::new()
        .app_data(JsonLimit(settings.http.max_json_bytes))
        .wrap(cors(&settings.http.allowed_origins))
        .wrap(ErrorHandlers::new().default_handler(http::envelope_fallback))
        .wrap(http::Edge)
        .configure(routes::configure)
        .configure(crate::console::configure)
        .configure(|cfg| {
            // `/metrics` is here unless it has a listener of its own.
            if metrics_on_main {
                routes::metrics::configure(cfg);
            }
        })
        .default_service(web::to(routes::not_found))
}

fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
        .expose_headers([
            "x-request-id",
            "retry-after",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
        ])
        .max_age(3600);
    for origin in origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}
