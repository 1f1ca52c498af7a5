//! `DbStore`: the actors' persistence (`devpocket_actors::store::Store`) on
//! diesel-async, over the environment queries of `db::environments` and the plan
//! checks of `db::quota`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use devpocket_actors::model::{
    Activity, Changes, EnvironmentRecord, IdleSeen, MachineAccess, MachineKeys, NewEnvironment,
    Phase, Status, Times, Transition,
};
use devpocket_actors::remote::{Answer, Instruction, OrderState, Refusal, StoredInstruction};
use devpocket_actors::store::{BoxError, QuotaScope, Resumable, Store, StoreError};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use super::environments::{self as queries, Environment, Stamped};
use super::json::StoredJson;
use super::quota::room;
use super::schema::{environment_logs, environment_orders, environments, templates};
use super::{DbPool, activity};
use crate::crypto::SecretBox;
use crate::environments::list_cache::ListCache;

/// The actors' store on PostgreSQL. Private keys are sealed with AES-256-GCM.
pub struct DbStore {
    pub pool: DbPool,
    pub secrets: SecretBox,
    /// Forgotten for the owner of every row a write changes that the list shows.
    pub lists: Arc<ListCache>,
}

fn store_err(e: impl Into<BoxError>) -> StoreError {
    StoreError::database(e)
}

impl DbStore {
    async fn conn(&self) -> Result<super::DbConn, StoreError> {
        self.pool.get().await.map_err(store_err)
    }

    /// A user's environments changed: dropped from this process's list cache now,
    /// and from the others' as the change's notification reaches them (a trigger
    /// on `environments` sends it at commit).
    fn forget_list(&self, user_id: Uuid) {
        self.lists.forget(user_id);
    }

    /// The environments of `query` that are not deleted and have work to resume
    /// or a machine that should be running.
    async fn resumables_of(
        &self,
        query: environments::BoxedQuery<'static, diesel::pg::Pg>,
    ) -> Result<Vec<Resumable>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<(Uuid, Uuid)> = query
            .filter(environments::deleted_at.is_null())
            .filter(environments::phase.ne_all(["stopped", "failed", "deleted"]))
            .select((environments::user_id, environments::id))
            .load(&mut conn)
            .await
            .map_err(store_err)?;
        Ok(rows
            .into_iter()
            .map(|(user_id, environment_id)| Resumable {
                user_id,
                environment_id,
            })
            .collect())
    }

    /// After a write that returned the owner of the row it changed (none when the
    /// row is gone).
    fn changed(&self, owner: QueryResult<Uuid>) -> Result<(), StoreError> {
        if let Some(user_id) = owner.optional().map_err(store_err)? {
            self.forget_list(user_id);
        }
        Ok(())
    }

    /// After a write that returned the row's owner and times.
    fn stamped(&self, stamped: Stamped) -> Times {
        self.forget_list(stamped.user_id);
        stamped.times()
    }

    /// A sealed key, or `None` when it cannot be opened (after a `SECRET_KEY`
    /// change): the machine gets fresh keys at its next start, and it can always be
    /// deleted.
    fn open(&self, id: Uuid, sealed: &Option<Vec<u8>>) -> Result<Option<String>, StoreError> {
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        match self.secrets.open(sealed).map(String::from_utf8) {
            Ok(Ok(key)) => Ok(Some(key)),
            _ => {
                tracing::warn!(environment_id = %id, "a stored machine key could not be decrypted (was SECRET_KEY changed?); new keys will be made");
                Ok(None)
            }
        }
    }
}

/// How many hours an order stays in the store at most (its asker gave up long
/// before).
const ORDERS_KEPT_HOURS: i64 = 1;

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[async_trait]
impl Store for DbStore {
    async fn load(&self, id: Uuid) -> Result<Option<EnvironmentRecord>, StoreError> {
        let mut conn = self.conn().await?;
        type Row = (Environment, String, String, StoredJson, StoredJson);
        let row: Option<Row> = environments::table
            .inner_join(templates::table)
            .filter(environments::id.eq(id))
            .filter(environments::deleted_at.is_null())
            .select((
                Environment::as_select(),
                templates::name,
                templates::bootstrap,
                templates::packages,
                templates::cloud_init,
            ))
            .first(&mut conn)
            .await
            .optional()
            .map_err(store_err)?;
        let Some((env, template_name, bootstrap, packages, cloud_init)) = row else {
            return Ok(None);
        };
        // What cannot be read is left out (and logged), so that such an environment
        // can still be deleted (the actor refuses the rest).
        let unreadable = env.unreadable().map(|u| u.column);
        let packages = packages.or_empty("templates", env.template_id, "packages");
        let cloud_init = cloud_init.or_empty("templates", env.template_id, "cloud_init");
        let variables =
            env.environment_variables
                .or_empty("environments", env.id, "environment_variables");
        let keys = match (
            self.open(env.id, &env.host_private_key)?,
            env.host_public_key.clone(),
            self.open(env.id, &env.user_private_key)?,
            env.user_public_key.clone(),
        ) {
            (Some(host_private), Some(host_public), Some(user_private), Some(user_public)) => {
                Some(MachineKeys {
                    host_private,
                    host_public,
                    user_private,
                    user_public,
                })
            }
            _ => None,
        };
        let machine = match (
            &env.ip_address,
            env.ssh_port,
            &env.ssh_user,
            &env.host_public_key,
        ) {
            (Some(host), Some(port), Some(user), Some(key)) => Some(MachineAccess {
                host: host.clone(),
                port: u16::try_from(port).map_err(store_err)?,
                user: user.clone(),
                host_public_key: key.clone(),
            }),
            _ => None,
        };
        Ok(Some(EnvironmentRecord {
            id: env.id,
            user_id: env.user_id,
            name: env.name,
            slug: env.slug,
            template_id: env.template_id,
            resource_limits: match env.resource_limits.or_empty(
                "environments",
                env.id,
                "resource_limits",
            ) {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
            times: Times {
                created_at: env.created_at,
                updated_at: env.updated_at,
                started_at: env.started_at,
                stopped_at: env.stopped_at,
                last_accessed: env.last_accessed,
            },
            provider: env.provider,
            region: env.region,
            size: env.size,
            status: env
                .status
                .parse::<Status>()
                .map_err(|_| StoreError::Unreadable {
                    what: "status",
                    value: env.status.clone(),
                })?,
            phase: env
                .phase
                .parse::<Phase>()
                .map_err(|_| StoreError::Unreadable {
                    what: "phase",
                    value: env.phase.clone(),
                })?,
            progress: env.progress,
            status_message: env.status_message,
            template_name,
            bootstrap,
            packages: packages
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            cloud_init: match cloud_init {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
            environment_variables: string_map(&variables),
            keys,
            machine,
            provider_ref: env.provider_ref,
            log_seq: env.log_seq,
            provisioned: env.started_at.is_some(),
            unreadable,
            auto_stop_minutes: env.auto_stop_minutes,
        }))
    }

    async fn create(&self, new: &NewEnvironment) -> Result<EnvironmentRecord, StoreError> {
        let row = queries::NewEnvironment {
            id: new.id,
            user_id: new.user_id,
            name: &new.name,
            slug: &new.slug,
            template_id: new.template_id,
            provider: &new.provider,
            region: &new.region,
            size: &new.size,
            status: Status::Creating.as_str(),
            phase: Phase::Queued.as_str(),
            progress: 0,
            resource_limits: Value::Object(new.resource_limits.clone()),
            environment_variables: serde_json::json!(new.environment_variables),
            auto_stop_minutes: new.auto_stop_minutes,
        };
        let mut conn = self.conn().await?;
        let inserted = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                if let Err(quota) = room(conn, new.user_id, QuotaScope::Total).await? {
                    return Ok(Err(StoreError::Quota(quota)));
                }
                if !queries::insert(conn, &row).await? {
                    return Ok(Err(StoreError::NameTaken(new.name.clone())));
                }
                Ok(Ok(()))
            })
            .await
            .map_err(store_err)?;
        inserted?;
        drop(conn);
        self.forget_list(new.user_id);
        Store::load(self, new.id)
            .await?
            .ok_or_else(|| StoreError::database("the new environment was deleted at once"))
    }

    async fn update(&self, id: Uuid, changes: &Changes) -> Result<Times, StoreError> {
        let variables = changes
            .environment_variables
            .as_ref()
            .map(|v| serde_json::json!(v));
        let mut conn = self.conn().await?;
        match queries::update(
            &mut conn,
            id,
            changes.auto_stop_minutes,
            changes.name.as_deref(),
            variables,
        )
        .await
        .map_err(store_err)?
        {
            Some(stamped) => Ok(self.stamped(stamped)),
            None => Err(StoreError::NameTaken(
                changes.name.clone().unwrap_or_default(),
            )),
        }
    }

    async fn transition(&self, id: Uuid, t: &Transition) -> Result<Times, StoreError> {
        let mut conn = self.conn().await?;
        let stamped = queries::transition(&mut conn, id, t)
            .await
            .map_err(store_err)?;
        Ok(self.stamped(stamped))
    }

    async fn activate(&self, id: Uuid, t: &Transition) -> Result<Times, StoreError> {
        let mut conn = self.conn().await?;
        let written = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                let owner: Uuid = environments::table
                    .find(id)
                    .select(environments::user_id)
                    .get_result(conn)
                    .await?;
                if let Err(quota) = room(conn, owner, QuotaScope::Active).await? {
                    return Ok(Err(quota));
                }
                Ok(Ok(queries::transition(conn, id, t).await?))
            })
            .await
            .map_err(store_err)?;
        Ok(self.stamped(written?))
    }

    async fn save_keys(&self, id: Uuid, keys: &MachineKeys) -> Result<(), StoreError> {
        let host = self
            .secrets
            .seal(keys.host_private.as_bytes())
            .map_err(store_err)?;
        let user = self
            .secrets
            .seal(keys.user_private.as_bytes())
            .map_err(store_err)?;
        let mut conn = self.conn().await?;
        diesel::update(environments::table.find(id))
            .set((
                environments::host_private_key.eq(host),
                environments::host_public_key.eq(&keys.host_public),
                environments::user_private_key.eq(user),
                environments::user_public_key.eq(&keys.user_public),
            ))
            .execute(&mut conn)
            .await
            .map(drop)
            .map_err(store_err)
    }

    async fn save_machine(
        &self,
        id: Uuid,
        m: &MachineAccess,
        provider_ref: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let owner = diesel::update(environments::table.find(id))
            .set((
                environments::ip_address.eq(&m.host),
                environments::ssh_port.eq(i32::from(m.port)),
                environments::ssh_user.eq(&m.user),
                environments::provider_ref.eq(provider_ref),
            ))
            .returning(environments::user_id)
            .get_result(&mut conn)
            .await;
        self.changed(owner)
    }

    async fn append_logs(
        &self,
        id: Uuid,
        first_seq: i64,
        lines: &[String],
        keep: i64,
    ) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                (
                    environment_logs::environment_id.eq(id),
                    environment_logs::seq.eq(first_seq + i64::try_from(i).unwrap_or(0)),
                    // PostgreSQL text cannot hold NUL.
                    environment_logs::line.eq(line.replace('\0', "")),
                )
            })
            .collect();
        let last = first_seq + i64::try_from(lines.len()).unwrap_or(1) - 1;
        let mut conn = self.conn().await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            diesel::insert_into(environment_logs::table)
                .values(&rows)
                .on_conflict_do_nothing()
                .execute(&mut *conn)
                .await?;
            diesel::update(environments::table.find(id))
                .set(environments::log_seq.eq(last))
                .execute(&mut *conn)
                .await?;
            diesel::sql_query(
                "DELETE FROM environment_logs WHERE environment_id = $1 AND seq <= $2",
            )
            .bind::<SqlUuid, _>(id)
            .bind::<BigInt, _>(last - keep)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
        .await
        .map_err(store_err)
    }

    async fn acquire_lease(
        &self,
        id: Uuid,
        owner: Uuid,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let micros = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        let updated = diesel::sql_query(
            "UPDATE environments SET lease_owner = $2, \
               lease_expires_at = now() + make_interval(secs => $3::float8 / 1000000) \
             WHERE id = $1 AND deleted_at IS NULL \
               AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at < now())",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<SqlUuid, _>(owner)
        .bind::<BigInt, _>(micros)
        .execute(&mut conn)
        .await
        .map_err(store_err)?;
        Ok(updated == 1)
    }

    async fn release_lease(&self, id: Uuid, owner: Uuid) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        diesel::update(
            environments::table
                .find(id)
                .filter(environments::lease_owner.eq(owner)),
        )
        .set((
            environments::lease_owner.eq(None::<Uuid>),
            environments::lease_expires_at.eq(None::<DateTime<Utc>>),
        ))
        .execute(&mut conn)
        .await
        .map(drop)
        .map_err(store_err)
    }

    async fn save_size(&self, id: Uuid, size: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let owner = diesel::update(environments::table.find(id))
            .set((
                environments::size.eq(size),
                environments::updated_at.eq(diesel::dsl::now),
            ))
            .returning(environments::user_id)
            .get_result(&mut conn)
            .await;
        self.changed(owner)
    }

    async fn mark_deleted(&self, id: Uuid) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let owner = diesel::update(environments::table.find(id))
            .set((
                environments::status.eq(Status::Terminated.as_str()),
                environments::phase.eq(Phase::Deleted.as_str()),
                environments::deleted_at.eq(diesel::dsl::now),
                environments::updated_at.eq(diesel::dsl::now),
                environments::host_private_key.eq(None::<Vec<u8>>),
                environments::user_private_key.eq(None::<Vec<u8>>),
            ))
            .returning(environments::user_id)
            .get_result(&mut conn)
            .await;
        self.changed(owner)
    }

    async fn resumable(&self) -> Result<Vec<Resumable>, StoreError> {
        // Not those another live process drives.
        self.resumables_of(
            environments::table
                .filter(
                    environments::lease_expires_at
                        .is_null()
                        .or(environments::lease_expires_at.lt(diesel::dsl::now)),
                )
                .into_boxed(),
        )
        .await
    }

    async fn orphans(&self) -> Result<Vec<Resumable>, StoreError> {
        // A lease given back means its process let the environment rest (idle):
        // only one with work in progress needs an owner again.
        self.resumables_of(
            environments::table
                .filter(
                    environments::lease_expires_at.lt(diesel::dsl::now).or(
                        environments::lease_owner
                            .is_null()
                            .and(environments::phase.ne(Phase::Ready.as_str())),
                    ),
                )
                .into_boxed(),
        )
        .await
    }

    async fn submit_order(
        &self,
        order: Uuid,
        environment: Uuid,
        instruction: &Instruction,
    ) -> Result<(), StoreError> {
        let instruction = serde_json::to_value(instruction).map_err(store_err)?;
        let mut conn = self.conn().await?;
        // Orders nobody came back for (their process died) are removed on the way.
        diesel::delete(
            environment_orders::table.filter(
                environment_orders::created_at
                    .lt(Utc::now() - chrono::Duration::hours(ORDERS_KEPT_HOURS)),
            ),
        )
        .execute(&mut conn)
        .await
        .map_err(store_err)?;
        diesel::insert_into(environment_orders::table)
            .values((
                environment_orders::id.eq(order),
                environment_orders::environment_id.eq(environment),
                environment_orders::instruction.eq(instruction),
            ))
            .execute(&mut conn)
            .await
            .map(drop)
            .map_err(store_err)
    }

    async fn claim_orders(
        &self,
        environment: Uuid,
        owner: Uuid,
    ) -> Result<Vec<(Uuid, StoredInstruction)>, StoreError> {
        let mut conn = self.conn().await?;
        let mut rows: Vec<(Uuid, Value, DateTime<Utc>)> = diesel::update(
            environment_orders::table
                .filter(environment_orders::environment_id.eq(environment))
                .filter(environment_orders::claimed_by.is_null()),
        )
        .set((
            environment_orders::claimed_by.eq(owner),
            environment_orders::claimed_at.eq(diesel::dsl::now),
        ))
        .returning((
            environment_orders::id,
            environment_orders::instruction,
            environment_orders::created_at,
        ))
        .get_results(&mut conn)
        .await
        .map_err(store_err)?;
        rows.sort_by_key(|(_, _, at)| *at);
        Ok(rows
            .into_iter()
            .map(|(id, instruction, _)| {
                (
                    id,
                    serde_json::from_value(instruction).map_err(|e| e.to_string()),
                )
            })
            .collect())
    }

    async fn answer_order(&self, order: Uuid, answer: &Answer) -> Result<(), StoreError> {
        let answer = serde_json::to_value(answer).map_err(store_err)?;
        let mut conn = self.conn().await?;
        diesel::update(environment_orders::table.find(order))
            .set((
                environment_orders::answer.eq(answer),
                environment_orders::answered_at.eq(diesel::dsl::now),
            ))
            .execute(&mut conn)
            .await
            .map(drop)
            .map_err(store_err)
    }

    async fn order_state(&self, order: Uuid) -> Result<OrderState, StoreError> {
        let mut conn = self.conn().await?;
        let answered: Option<Value> = diesel::delete(
            environment_orders::table
                .find(order)
                .filter(environment_orders::answered_at.is_not_null()),
        )
        .returning(environment_orders::answer.assume_not_null())
        .get_result(&mut conn)
        .await
        .optional()
        .map_err(store_err)?;
        if let Some(answer) = answered {
            let answer = serde_json::from_value(answer).unwrap_or_else(|e| {
                Err(Refusal::Unavailable {
                    message: format!("the environment's owner answered in a form this server cannot read ({e}); try again"),
                })
            });
            return Ok(OrderState::Answered(answer));
        }
        let claimed: Option<Option<Uuid>> = environment_orders::table
            .find(order)
            .select(environment_orders::claimed_by)
            .get_result(&mut conn)
            .await
            .optional()
            .map_err(store_err)?;
        Ok(match claimed {
            None => OrderState::Gone,
            Some(by) => OrderState::Pending {
                claimed: by.is_some(),
            },
        })
    }

    async fn terminal_clients(
        &self,
        environment: Uuid,
        session: &str,
        process: Uuid,
        clients: usize,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let query = if clients == 0 {
            diesel::sql_query(
                "DELETE FROM terminal_clients \
                 WHERE environment_id = $1 AND session = $2 AND process = $3 AND $4 = 0",
            )
        } else {
            // Rows nobody renewed (their process died) go on the way.
            diesel::sql_query(
                "WITH gone AS (DELETE FROM terminal_clients \
                   WHERE updated_at < now() - interval '10 minutes') \
                 INSERT INTO terminal_clients (environment_id, session, process, clients) \
                 SELECT $1, $2, $3, $4 WHERE EXISTS \
                   (SELECT 1 FROM environments WHERE id = $1 AND deleted_at IS NULL) \
                 ON CONFLICT (environment_id, session, process) \
                 DO UPDATE SET clients = EXCLUDED.clients, updated_at = now()",
            )
        };
        query
            .bind::<SqlUuid, _>(environment)
            .bind::<Text, _>(session)
            .bind::<SqlUuid, _>(process)
            .bind::<Integer, _>(i32::try_from(clients).unwrap_or(i32::MAX))
            .execute(&mut conn)
            .await
            .map(drop)
            .map_err(store_err)
    }

    async fn other_terminal_clients(
        &self,
        environment: Uuid,
        session: &str,
        process: Uuid,
        within: Duration,
    ) -> Result<usize, StoreError> {
        #[derive(QueryableByName)]
        struct Sum {
            #[diesel(sql_type = BigInt)]
            clients: i64,
        }
        let mut conn = self.conn().await?;
        let micros = i64::try_from(within.as_micros()).unwrap_or(i64::MAX);
        let sum: Sum = diesel::sql_query(
            "SELECT coalesce(sum(clients), 0)::int8 AS clients FROM terminal_clients \
             WHERE environment_id = $1 AND session = $2 AND process <> $3 \
               AND updated_at > now() - make_interval(secs => $4::float8 / 1000000)",
        )
        .bind::<SqlUuid, _>(environment)
        .bind::<Text, _>(session)
        .bind::<SqlUuid, _>(process)
        .bind::<BigInt, _>(micros)
        .get_result(&mut conn)
        .await
        .map_err(store_err)?;
        Ok(usize::try_from(sum.clients).unwrap_or(0))
    }

    async fn withdraw_order(&self, order: Uuid) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let removed = diesel::delete(
            environment_orders::table
                .find(order)
                .filter(environment_orders::claimed_by.is_null()),
        )
        .execute(&mut conn)
        .await
        .map_err(store_err)?;
        Ok(removed == 1)
    }

    async fn record_activity(&self, id: Uuid, activity: &Activity) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        activity::record(&mut conn, id, activity, None)
            .await
            .map_err(store_err)
    }

    async fn keep_awake(
        &self,
        id: Uuid,
        until: DateTime<Utc>,
        activity: &Activity,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        activity::record(&mut conn, id, activity, Some(until))
            .await
            .map_err(store_err)
    }

    async fn idle_stop(
        &self,
        id: Uuid,
        seen: IdleSeen,
        t: &Transition,
    ) -> Result<Option<Times>, StoreError> {
        let mut conn = self.conn().await?;
        let stamped = activity::idle_stop(&mut conn, id, seen, t)
            .await
            .map_err(store_err)?;
        Ok(stamped.map(|s| self.stamped(s)))
    }
}
