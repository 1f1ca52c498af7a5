//! Projects, the compose apps they group, and the apps' runs (each start and stop
//! with its output): the rows and the queries on them. Every query but the
//! auto-stop's is by owner: another user's project or app is never found.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{app_runs, apps, projects, users};
use super::servers::Refused;
use crate::plans::Plan;

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = projects, check_for_backend(diesel::pg::Pg))]
pub struct Project {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Insertable)]
#[diesel(table_name = apps, check_for_backend(diesel::pg::Pg))]
pub struct App {
    pub id: Uuid,
    pub user_id: Uuid,
    pub project_id: Uuid,
    pub server_id: Uuid,
    pub name: String,
    pub path: String,
    pub compose_file: Option<String>,
    pub url: Option<String>,
    pub auto_stop_minutes: i32,
    pub status: String,
    pub status_message: Option<String>,
    pub stops_at: Option<DateTime<Utc>>,
    pub services_running: Option<i32>,
    pub last_checked: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = app_runs, check_for_backend(diesel::pg::Pg))]
pub struct AppRun {
    pub id: Uuid,
    pub app_id: Uuid,
    pub action: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_status: Option<i32>,
    pub output: String,
    pub error: Option<String>,
}

/// A unique name already used (`projects_user_name`, `apps_project_name`).
pub fn is_name_taken(err: &diesel::result::Error) -> bool {
    matches!(
        err,
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            info,
        ) if matches!(info.constraint_name(), Some("projects_user_name" | "apps_project_name"))
    )
}

// Projects.

pub async fn insert_project(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    name: &str,
    description: &str,
) -> QueryResult<Project> {
    diesel::insert_into(projects::table)
        .values((
            projects::id.eq(Uuid::new_v4()),
            projects::user_id.eq(user_id),
            projects::name.eq(name),
            projects::description.eq(description),
        ))
        .returning(Project::as_returning())
        .get_result(conn)
        .await
}

pub async fn list_projects(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> QueryResult<Vec<Project>> {
    projects::table
        .filter(projects::user_id.eq(user_id))
        .order((projects::created_at.asc(), projects::id.asc()))
        .select(Project::as_select())
        .load(conn)
        .await
}

pub async fn find_project(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<Project>> {
    projects::table
        .filter(projects::id.eq(id).and(projects::user_id.eq(user_id)))
        .select(Project::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn update_project(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
    name: Option<&str>,
    description: Option<&str>,
) -> QueryResult<Option<Project>> {
    let target = projects::table.filter(projects::id.eq(id).and(projects::user_id.eq(user_id)));
    diesel::update(target)
        .set((
            name.map(|n| projects::name.eq(n.to_owned())),
            description.map(|d| projects::description.eq(d.to_owned())),
            projects::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Project::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Deletes the project if it has no apps: `Ok(false)` when it had some.
pub async fn delete_project(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
) -> QueryResult<bool> {
    let n = diesel::delete(
        projects::table.filter(projects::id.eq(id).and(projects::user_id.eq(user_id)).and(
            diesel::dsl::not(diesel::dsl::exists(
                apps::table.filter(apps::project_id.eq(projects::id)),
            )),
        )),
    )
    .execute(conn)
    .await?;
    Ok(n > 0)
}

// Apps.

/// The owner's apps, oldest first; of one project, or on one server, when given.
pub async fn list_apps(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    project_id: Option<Uuid>,
    server_id: Option<Uuid>,
) -> QueryResult<Vec<App>> {
    let mut query = apps::table
        .filter(apps::user_id.eq(user_id))
        .select(App::as_select())
        .order((apps::created_at.asc(), apps::id.asc()))
        .into_boxed();
    if let Some(project) = project_id {
        query = query.filter(apps::project_id.eq(project));
    }
    if let Some(server) = server_id {
        query = query.filter(apps::server_id.eq(server));
    }
    query.load(conn).await
}

pub async fn find_app(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<App>> {
    apps::table
        .filter(apps::id.eq(id).and(apps::user_id.eq(user_id)))
        .select(App::as_select())
        .first(conn)
        .await
        .optional()
}

/// Stores `app` if its owner's plan has room (checked under a lock on the owner's
/// row) and its name is free in its project.
pub async fn insert_app(
    conn: &mut AsyncPgConnection,
    app: &App,
) -> QueryResult<Result<App, Refused>> {
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        let plan: Plan = users::table
            .find(app.user_id)
            .select(users::subscription_plan)
            .for_update()
            .get_result(conn)
            .await?;
        if let Some(max) = plan.limits().apps {
            let have: i64 = apps::table
                .filter(apps::user_id.eq(app.user_id))
                .count()
                .get_result(conn)
                .await?;
            if have >= i64::from(max) {
                return Ok(Err(Refused::Quota { plan, max }));
            }
        }
        match diesel::insert_into(apps::table)
            .values(app)
            .returning(App::as_returning())
            .get_result(conn)
            .await
        {
            Ok(app) => Ok(Ok(app)),
            Err(e) if is_name_taken(&e) => Ok(Err(Refused::NameTaken)),
            Err(e) => Err(e),
        }
    })
    .await
}

/// What a `PUT` changes (`None`: unchanged; `Some(None)`: cleared).
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = apps)]
pub struct AppChanges {
    pub name: Option<String>,
    pub project_id: Option<Uuid>,
    pub path: Option<String>,
    pub compose_file: Option<Option<String>>,
    pub url: Option<Option<String>>,
    pub auto_stop_minutes: Option<i32>,
}

pub async fn update_app(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
    changes: &AppChanges,
) -> QueryResult<Option<App>> {
    diesel::update(apps::table.filter(apps::id.eq(id).and(apps::user_id.eq(user_id))))
        .set((changes, apps::updated_at.eq(diesel::dsl::now)))
        .returning(App::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Deletes the app if it is stopped (or failed): `Ok(false)` otherwise.
pub async fn delete_app(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
) -> QueryResult<bool> {
    let n = diesel::delete(
        apps::table.filter(
            apps::id
                .eq(id)
                .and(apps::user_id.eq(user_id))
                .and(apps::status.eq_any(["stopped", "error"])),
        ),
    )
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// The names of the owner's apps in a project or on a server.
pub async fn app_names(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    project_id: Option<Uuid>,
    server_id: Option<Uuid>,
) -> QueryResult<Vec<String>> {
    Ok(list_apps(conn, user_id, project_id, server_id)
        .await?
        .into_iter()
        .map(|a| a.name)
        .collect())
}

/// Moves the app into `to` if its status is one of `from`, and opens a run of
/// `action` for it: the run's id, or `None` when the status did not allow it
/// (another run is under way).
pub async fn begin_run(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    from: &[&str],
    to: &str,
    action: &str,
) -> QueryResult<Option<(App, Uuid)>> {
    let (from, to, action) = (from.to_vec(), to.to_owned(), action.to_owned());
    conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
        let app: Option<App> =
            diesel::update(apps::table.filter(apps::id.eq(id).and(apps::status.eq_any(&from))))
                .set((
                    apps::status.eq(&to),
                    apps::status_message.eq(None::<String>),
                    apps::updated_at.eq(diesel::dsl::now),
                ))
                .returning(App::as_returning())
                .get_result(conn)
                .await
                .optional()?;
        let Some(app) = app else { return Ok(None) };
        let run = Uuid::new_v4();
        diesel::insert_into(app_runs::table)
            .values((
                app_runs::id.eq(run),
                app_runs::app_id.eq(id),
                app_runs::action.eq(&action),
            ))
            .execute(conn)
            .await?;
        Ok(Some((app, run)))
    })
    .await
}

/// How a run ended, and the app's state after it.
pub struct RunEnd {
    pub exit_status: Option<i32>,
    pub output: String,
    pub error: Option<String>,
    pub status: &'static str,
    pub status_message: Option<String>,
    pub stops_at: Option<DateTime<Utc>>,
}

pub async fn end_run(
    conn: &mut AsyncPgConnection,
    app_id: Uuid,
    run: Uuid,
    end: &RunEnd,
) -> QueryResult<()> {
    conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
        diesel::update(app_runs::table.find(run))
            .set((
                app_runs::finished_at.eq(diesel::dsl::now),
                app_runs::exit_status.eq(end.exit_status),
                app_runs::output.eq(&end.output),
                app_runs::error.eq(&end.error),
            ))
            .execute(conn)
            .await?;
        diesel::update(apps::table.find(app_id))
            .set((
                apps::status.eq(end.status),
                apps::status_message.eq(&end.status_message),
                apps::stops_at.eq(end.stops_at),
                apps::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        Ok(())
    })
    .await
}

/// The app's latest runs, newest first.
pub async fn runs(
    conn: &mut AsyncPgConnection,
    app_id: Uuid,
    limit: i64,
) -> QueryResult<Vec<AppRun>> {
    app_runs::table
        .filter(app_runs::app_id.eq(app_id))
        .order(app_runs::started_at.desc())
        .limit(limit)
        .select(AppRun::as_select())
        .load(conn)
        .await
}

/// Moves a running app's stop time (an extend), if it runs.
pub async fn set_stops_at(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
    stops_at: DateTime<Utc>,
) -> QueryResult<Option<App>> {
    diesel::update(
        apps::table.filter(
            apps::id
                .eq(id)
                .and(apps::user_id.eq(user_id))
                .and(apps::status.eq("running")),
        ),
    )
    .set((
        apps::stops_at.eq(stops_at),
        apps::updated_at.eq(diesel::dsl::now),
    ))
    .returning(App::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Running apps whose stop time has come, claimed for the stop by this process:
/// moved to `stopping` with a run opened, so that no other process stops them.
pub async fn claim_due(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<(App, Uuid)>> {
    conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
        let due: Vec<Uuid> = apps::table
            .filter(apps::status.eq("running"))
            .filter(apps::stops_at.le(Utc::now()))
            .order(apps::stops_at.asc())
            .limit(limit)
            .select(apps::id)
            .for_update()
            .skip_locked()
            .load(conn)
            .await?;
        let mut claimed = Vec::with_capacity(due.len());
        for id in due {
            if let Some(run) = begin_run(conn, id, &["running"], "stopping", "auto_stop").await? {
                claimed.push(run);
            }
        }
        Ok(claimed)
    })
    .await
}

/// The running app `id` if its stop time has come, claimed for the stop (as
/// [`claim_due`] does for all): `None` when it is not due (any more).
pub async fn claim_one_due(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<(App, Uuid)>> {
    conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
        let due: Option<Uuid> = apps::table
            .filter(apps::id.eq(id))
            .filter(apps::status.eq("running"))
            .filter(apps::stops_at.le(Utc::now()))
            .select(apps::id)
            .for_update()
            .skip_locked()
            .first(conn)
            .await
            .optional()?;
        match due {
            Some(id) => begin_run(conn, id, &["running"], "stopping", "auto_stop").await,
            None => Ok(None),
        }
    })
    .await
}

/// Records what compose says runs of a running app (at a server check); an app
/// with nothing running was stopped by hand on the server.
pub async fn record_ps(conn: &mut AsyncPgConnection, id: Uuid, running: i32) -> QueryResult<()> {
    let stopped = running == 0;
    diesel::update(apps::table.filter(apps::id.eq(id).and(apps::status.eq("running"))))
        .set((
            apps::services_running.eq(running),
            apps::last_checked.eq(diesel::dsl::now),
            stopped.then(|| apps::status.eq("stopped")),
            stopped.then(|| {
                apps::status_message.eq(Some(
                    "nothing runs: the stack was stopped on the server, outside DevPocket",
                ))
            }),
            stopped.then(|| apps::stops_at.eq(None::<DateTime<Utc>>)),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Apps left `starting` or `stopping` since before `before` by a run no process
/// finishes (the one that ran it ended): failed, saying so, their runs closed.
pub async fn fail_abandoned(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
) -> QueryResult<usize> {
    const WHY: &str =
        "the server process running this start or stop ended before it did; start or stop it again";
    conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
        let ids: Vec<Uuid> = diesel::update(
            apps::table.filter(
                apps::status
                    .eq_any(["starting", "stopping"])
                    .and(apps::updated_at.lt(before)),
            ),
        )
        .set((
            apps::status.eq("error"),
            apps::status_message.eq(WHY),
            apps::stops_at.eq(None::<DateTime<Utc>>),
            apps::updated_at.eq(diesel::dsl::now),
        ))
        .returning(apps::id)
        .get_results(conn)
        .await?;
        diesel::update(
            app_runs::table.filter(
                app_runs::app_id
                    .eq_any(&ids)
                    .and(app_runs::finished_at.is_null()),
            ),
        )
        .set((
            app_runs::finished_at.eq(diesel::dsl::now),
            app_runs::error.eq(WHY),
        ))
        .execute(conn)
        .await?;
        Ok(ids.len())
    })
    .await
}
