//! The `devpocket` command line: `serve`, `migrate`, `admin …` and `db …`.
//! Every command reads the same settings and so uses the same database, embedded
//! or not, whether or not a server is running at that moment.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::auth::password::PasswordHasher;
use crate::auth::{self, Registration};
use crate::config::{DatabaseLocation, Secret, Settings, Source};
use crate::data_dir;
use crate::db::embedded::{self, Durability, EmbeddedPostgres};
use crate::db::{self};
use crate::error::ApiError;
use crate::plans::Plan;
use crate::startup::Application;
use crate::telemetry;

#[derive(Parser)]
#[command(
    name = "devpocket",
    version,
    about = "DevPocket server: cloud development environments for your phone",
    long_about = "DevPocket server: cloud development environments for your phone.\n\n\
                  Settings come from environment variables (and an optional .env file); \
                  see README.md for the full table."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP and WebSocket server (starts the embedded PostgreSQL unless DATABASE_URL is set).
    Serve,
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Administrative tasks.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Inspect or stop the embedded PostgreSQL cluster.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a user. The password is read from a prompt, or from standard input when
    /// it is not a terminal (never from the command line).
    CreateUser(CreateUserArgs),
}

#[derive(Args)]
struct CreateUserArgs {
    /// 3 to 30 letters, digits, '_' or '-'.
    #[arg(long)]
    username: String,
    #[arg(long)]
    email: String,
    /// free, starter, pro or admin.
    #[arg(long, default_value = "free", value_parser = parse_plan)]
    plan: Plan,
    #[arg(long)]
    full_name: Option<String>,
}

fn parse_plan(s: &str) -> Result<Plan, String> {
    s.parse()
}

#[derive(Subcommand)]
enum DbCommand {
    /// Say whether the embedded cluster is running.
    Status,
    /// Stop the embedded cluster if no DevPocket process is using it.
    Stop,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match settings() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format);
    let result = match cli.command {
        Command::Serve => serve(settings),
        Command::Migrate => migrate(settings),
        Command::Admin {
            command: AdminCommand::CreateUser(args),
        } => create_user(settings, args),
        Command::Db { command } => db_command(settings, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The settings every command runs with: the environment's, and in development
/// without `SECRET_KEY` the key kept in the data directory (made on first use).
fn settings() -> anyhow::Result<Settings> {
    let mut settings = Settings::load(&Source::from_env())?;
    if settings.auth.secret_key.is_none() {
        settings.auth.secret_key = Some(data_dir::development_secret_key(&settings.data_dir)?);
    }
    Ok(settings)
}

/// How a command leaves the embedded cluster it started.
#[derive(Clone, Copy)]
enum StopMode {
    /// Stop it, disconnecting everybody (the server shutting down).
    Fast,
    /// Stop it unless another process is connected (a short admin command).
    IfIdle,
}

/// The database a command uses: an external server, or the embedded cluster
/// (started here if nobody runs it yet).
struct Database {
    url: Secret<String>,
    embedded: Option<EmbeddedPostgres>,
}

impl Database {
    fn open(settings: &Settings) -> anyhow::Result<Self> {
        match &settings.database.location {
            DatabaseLocation::External(url) => Ok(Self {
                url: url.clone(),
                embedded: None,
            }),
            DatabaseLocation::Embedded => {
                let mut pg = EmbeddedPostgres::prepare(
                    &settings.data_dir,
                    settings.database.pg_bin_dir.as_deref(),
                    Durability::Durable,
                )?;
                pg.ensure_running()?;
                Ok(Self {
                    url: pg.url(embedded::DATABASE),
                    embedded: Some(pg),
                })
            }
        }
    }

    /// Stops the embedded cluster if this process started it. A short-lived
    /// command leaves it running when another process is connected to it.
    fn close(mut self, mode: StopMode) {
        let Some(pg) = self.embedded.as_mut() else {
            return;
        };
        if matches!(mode, StopMode::IfIdle) && runtime(others_connected(&self.url)) {
            tracing::info!("embedded PostgreSQL left running: another process uses it");
            return;
        }
        if let Err(err) = pg.stop() {
            tracing::error!(error = %err, "could not stop the embedded PostgreSQL");
        }
    }
}

/// Whether a client other than this one is connected (in doubt: yes).
async fn others_connected(url: &Secret<String>) -> bool {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let Ok(mut conn) = AsyncPgConnection::establish(url.expose()).await else {
        return true;
    };
    diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM pg_stat_activity \
          WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())",
    ))
    .get_result::<i64>(&mut conn)
    .await
    .map_or(true, |n| n > 0)
}

fn runtime<F: std::future::Future>(future: F) -> F::Output {
    actix_web::rt::System::new().block_on(future)
}

fn serve(mut settings: Settings) -> anyhow::Result<()> {
    let database = Database::open(&settings)?;
    settings.database.location = DatabaseLocation::External(database.url.clone());
    let listen = settings.http.listen;
    let result = runtime(async move {
        let app = Application::build(settings).await?;
        tracing::info!(
            address = %format!("http://{}:{}", listen.ip(), app.port()),
            version = env!("CARGO_PKG_VERSION"),
            "DevPocket is listening"
        );
        let handle = app.handle();
        let server = actix_web::rt::spawn(app.run_until_stopped());
        shutdown_signal().await;
        tracing::info!("shutting down");
        handle.stop(true).await;
        server.await.context("server task")?.context("server")?;
        Ok::<_, anyhow::Error>(())
    });
    database.close(StopMode::Fast);
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn migrate(settings: Settings) -> anyhow::Result<()> {
    let database = Database::open(&settings)?;
    let result = runtime(db::run_migrations(&database.url));
    database.close(StopMode::IfIdle);
    let applied = result?;
    if applied.is_empty() {
        println!("The database is up to date.");
    } else {
        println!("Applied migrations: {}", applied.join(", "));
    }
    Ok(())
}

/// The password, from a prompt (asked twice) or one line of standard input.
fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Repeat password: ")?;
        anyhow::ensure!(first == second, "the passwords do not match");
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        anyhow::ensure!(!password.is_empty(), "no password on standard input");
        Ok(password)
    }
}

fn create_user(settings: Settings, args: CreateUserArgs) -> anyhow::Result<()> {
    let password = read_password()?;
    let input = Registration {
        username: args.username.trim().to_owned(),
        email: args.email.trim().to_owned(),
        password,
        full_name: args.full_name,
        plan: args.plan,
    };
    // Refuse bad input before touching the database.
    input.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let database = Database::open(&settings)?;
    let result = runtime(async {
        db::run_migrations(&database.url).await?;
        let pool = db::build_pool(&database.url, 2, settings.database.timeout)?;
        let hasher = PasswordHasher::new(1)?;
        auth::create_user(&pool, &hasher, input)
            .await
            .map_err(|e: ApiError| anyhow::anyhow!("{e}"))
    });
    database.close(StopMode::IfIdle);
    let user = result?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Created user {} ({}) with plan {}.",
        user.username, user.id, user.subscription_plan
    )?;
    Ok(())
}

fn db_command(settings: Settings, command: DbCommand) -> anyhow::Result<()> {
    if let DatabaseLocation::External(_) = settings.database.location {
        anyhow::bail!("DATABASE_URL is set: DevPocket is not managing an embedded cluster");
    }
    let mut pg = EmbeddedPostgres::prepare(
        &settings.data_dir,
        settings.database.pg_bin_dir.as_deref(),
        Durability::Durable,
    )?;
    match command {
        DbCommand::Status => {
            let running = pg.is_running()?;
            println!(
                "The embedded PostgreSQL in {} is {}{}.",
                settings.data_dir.join("postgres").display(),
                if running { "running" } else { "stopped" },
                if pg.is_owner() {
                    ""
                } else {
                    " and in use by another DevPocket process"
                }
            );
        }
        DbCommand::Stop => {
            anyhow::ensure!(
                pg.is_owner(),
                "a running DevPocket process is using the embedded PostgreSQL: stop it instead"
            );
            pg.stop()?;
            println!("The embedded PostgreSQL is stopped.");
        }
    }
    Ok(())
}
