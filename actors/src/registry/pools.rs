//! Pools. A managed pool (`PUT /api/v1/pools/{pool}`) keeps between `min_bots` and
//! `max_bots` bots of one template, named `{pool}-{n}`, and scales on load: the Registry
//! checks it every `pools.check_interval_ms`. A pool that only exists because bots name
//! it routes but never scales. Every step of the autoscaler is an event with subject
//! `autoscaler`.

use std::time::{Duration, Instant};

use actix::prelude::*;
use slog::{info, warn};

use super::{row_from_spec, Entry, Registry, Subject};
use crate::model::{
    now_ms, BotState, BotTemplate, DesiredState, EngineError, PoolInfo, PoolMember, PoolSpec,
};
use crate::names::{BotName, PoolName};
use crate::queue::Admission;
use crate::store::queries::{self, NewEvent, PoolRow};

pub(super) const AUTOSCALER: &str = "autoscaler";

/// A managed pool as the Registry keeps it.
pub(super) struct PoolEntry {
    pub(super) spec: PoolSpec,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    /// The last scale-up, for the cooldown.
    last_scale_up: Option<Instant>,
    /// A message found no running bot: a pool at zero bots starts one.
    pub(super) wanted: bool,
}

impl PoolEntry {
    pub(super) fn from_row(row: &PoolRow) -> Result<Self, String> {
        let template: BotTemplate =
            serde_json::from_str(&row.template).map_err(|e| format!("bad template: {e}"))?;
        let int = |v: i64, what: &str| u32::try_from(v).map_err(|_| format!("bad {what}"));
        Ok(Self {
            spec: PoolSpec {
                name: PoolName::parse(&row.name).map_err(|e| e.to_string())?,
                template,
                min_bots: int(row.min_bots.into(), "min_bots")?,
                max_bots: int(row.max_bots.into(), "max_bots")?,
                scale_up_queue_depth: int(row.scale_up_queue_depth.into(), "scale_up_queue_depth")?,
                scale_down_idle_secs: u64::try_from(row.scale_down_idle_secs)
                    .map_err(|_| "bad scale_down_idle_secs".to_owned())?,
            },
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_scale_up: None,
            wanted: false,
        })
    }
}

fn pool_row(spec: &PoolSpec, created_at: i64, updated_at: i64) -> PoolRow {
    PoolRow {
        name: spec.name.as_str().to_owned(),
        template: serde_json::to_string(&spec.template).unwrap_or_else(|_| "{}".to_owned()),
        min_bots: spec.min_bots as i32,
        max_bots: spec.max_bots as i32,
        scale_up_queue_depth: spec.scale_up_queue_depth as i32,
        scale_down_idle_secs: spec.scale_down_idle_secs as i64,
        created_at,
        updated_at,
    }
}

/// The number `n` of a managed bot named `{pool}-{n}`.
fn member_number(pool: &PoolName, bot: &BotName) -> u32 {
    bot.as_str()
        .strip_prefix(pool.as_str())
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Registry {
    pub(super) fn pool_event(
        &self,
        pool: &PoolName,
        bot: Option<&BotName>,
        kind: &str,
        subject: &str,
        detail: serde_json::Value,
    ) {
        let ev = NewEvent {
            ts: now_ms(),
            bot: bot.map(|b| b.as_str().to_owned()),
            pool: Some(pool.as_str().to_owned()),
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            detail: detail.to_string(),
        };
        self.store
            .write_detached(move |c| queries::insert_event(c, &ev).map(|_| ()));
    }

    /// The bots a managed pool made, still in it (not being scaled down), by number.
    fn members(&self, pool: &PoolName) -> Vec<(u32, BotName)> {
        let mut members: Vec<(u32, BotName)> = self
            .bots
            .values()
            .filter(|e| e.managed && !e.retiring && e.spec.pool.as_ref() == Some(pool))
            .map(|e| (member_number(pool, &e.spec.name), e.spec.name.clone()))
            .collect();
        members.sort();
        members
    }

    /// The next `count` names `{pool}-{n}` no bot has, lowest `n` first.
    fn free_names(&self, pool: &PoolName, count: usize) -> Vec<BotName> {
        (1..=1_000_000u32)
            .map(|n| BotName::pool_member(pool, n))
            .filter(|name| !self.bots.contains_key(name))
            .take(count)
            .collect()
    }

    /// Creates and starts pool members: their rows commit in one transaction first.
    /// `scaled` names the autoscaler's reason, for a `scaled_up` event.
    fn add_members(
        &mut self,
        spec: PoolSpec,
        names: Vec<BotName>,
        subject: Subject,
        scaled: Option<serde_json::Value>,
    ) -> impl ActorFuture<Self, Output = Result<(), EngineError>> {
        let now = now_ms();
        let specs: Vec<_> = names
            .into_iter()
            .map(|name| spec.template.spec(name, Some(spec.name.clone())))
            .collect();
        let rows: Vec<_> = specs
            .iter()
            .map(|s| row_from_spec(s, true, DesiredState::Running, now))
            .collect();
        let store = self.store.clone();
        async move {
            store
                .write_ordered(move |c| {
                    queries::in_transaction(c, |c| {
                        rows.iter().try_for_each(|row| queries::insert_bot(c, row))
                    })
                })
                .await
        }
        .into_actor(self)
        .map(move |res, act, ctx| {
            res?;
            for bot in specs {
                let name = bot.name.clone();
                let arbiter = act.pick_arbiter();
                act.bots.insert(
                    name.clone(),
                    Entry::new(
                        bot,
                        true,
                        DesiredState::Running,
                        BotState::Stopped,
                        None,
                        now,
                        now,
                        arbiter,
                    ),
                );
                act.event(&name, "created", &subject, serde_json::json!({}));
                act.spawn_bot(&name, ctx);
                act.event(&name, "started", &subject, serde_json::json!({}));
                if let Some(detail) = &scaled {
                    act.pool_event(&spec.name, Some(&name), "scaled_up", AUTOSCALER, detail.clone());
                    info!(act.log, "A pool scaled up."; "pool" => spec.name.as_str(), "bot" => name.as_str());
                }
            }
            Ok(())
        })
    }

    /// Takes a member out of its pool: it refuses new messages, answers what it has
    /// queued (within the stop deadline), then is deleted; its history stays.
    fn retire(&mut self, name: &BotName, ctx: &mut Context<Self>) {
        let stop_timeout = Duration::from_millis(self.settings.stop_timeout_ms);
        let Some(entry) = self.bots.get_mut(name) else {
            return;
        };
        entry.retiring = true;
        let pool = entry.spec.pool.clone();
        match (&entry.addr, entry.state) {
            (Some(addr), BotState::Running | BotState::Starting) => {
                entry.state = BotState::Stopping;
                entry.queue.set_admission(Admission::ShuttingDown);
                entry.stop_subject = Some(AUTOSCALER.to_owned());
                addr.do_send(crate::bot::Drain {
                    deadline: Instant::now() + stop_timeout,
                });
            }
            _ => {
                entry.generation += 1;
                entry.state = BotState::Stopped;
                entry.queue.set_admission(Admission::NotRunning);
                self.delete_retired(name.clone(), ctx);
            }
        }
        if let Some(pool) = pool {
            self.pool_event(
                &pool,
                Some(name),
                "scaled_down",
                AUTOSCALER,
                serde_json::json!({}),
            );
            info!(self.log, "A pool scaled down."; "pool" => pool.as_str(), "bot" => name.as_str());
        }
    }

    /// Deletes a retired member once it has stopped.
    pub(super) fn delete_retired(&mut self, name: BotName, ctx: &mut Context<Self>) {
        let n = name.as_str().to_owned();
        let store = self.store.clone();
        ctx.wait(
            async move { store.write_ordered(move |c| queries::delete_bot(c, &n, false)).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    if let Err(e) = res {
                        // The row stays; the next start of the daemon brings the bot back
                        // and the autoscaler takes it out again.
                        warn!(act.log, "A scaled-down bot could not be deleted."; "bot" => name.as_str(), "error" => e.to_string());
                    }
                    act.drain_queue(&name, "was scaled down");
                    act.event(&name, "deleted", AUTOSCALER, serde_json::json!({}));
                    if let Some(mut entry) = act.bots.remove(&name) {
                        for w in entry.stop_waiters.drain(..).chain(entry.start_waiters.drain(..)) {
                            let _ = w.send(Err(EngineError::BotNotFound(name.to_string())));
                        }
                    }
                }),
        );
    }

    /// One check of every managed pool.
    pub(super) fn autoscale(&mut self, ctx: &mut Context<Self>) {
        if self.shutting_down || self.pools.is_empty() {
            return;
        }
        let now = Instant::now();
        for entry in self.bots.values_mut().filter(|e| e.managed) {
            let handled = entry.queue.handled();
            if entry.state != BotState::Running
                || !entry.queue.is_idle()
                || handled != entry.last_handled
            {
                entry.idle_since = now;
            }
            entry.last_handled = handled;
        }
        let pools: Vec<PoolName> = self.pools.keys().cloned().collect();
        for pool in pools {
            self.scale(&pool, now, ctx);
        }
    }

    fn scale(&mut self, pool: &PoolName, now: Instant, ctx: &mut Context<Self>) {
        let Some(p) = self.pools.get(pool) else {
            return;
        };
        let spec = p.spec.clone();
        let last_up = p.last_scale_up;
        let wanted = self
            .pools
            .get_mut(pool)
            .is_some_and(|p| std::mem::take(&mut p.wanted));
        let members = self.members(pool);
        let count = members.len() as u32;
        // Below `min_bots`, or at zero bots (`min_bots` 0) while messages arrive.
        let missing = if count == 0 && wanted && spec.max_bots > 0 {
            spec.min_bots.max(1)
        } else {
            spec.min_bots.saturating_sub(count)
        };
        if missing > 0 {
            let names = self.free_names(pool, missing as usize);
            let reason = if count >= spec.min_bots {
                "demand"
            } else {
                "min_bots"
            };
            let detail = serde_json::json!({ "reason": reason });
            let fut = self.add_members(spec, names, AUTOSCALER.to_owned(), Some(detail));
            ctx.wait(fut.map(|res, act, _| {
                if let Err(e) = res {
                    warn!(act.log, "A pool could not scale up."; "error" => e.to_string());
                }
            }));
            return;
        }
        let running: Vec<&Entry> = members
            .iter()
            .filter_map(|(_, n)| self.bots.get(n))
            .filter(|e| e.state == BotState::Running)
            .collect();
        let waiting: usize = running.iter().map(|e| e.queue.load().waiting).sum();
        let cooled = last_up.is_none_or(|t| {
            now.duration_since(t) >= Duration::from_secs(self.pool_settings.scale_cooldown_secs)
        });
        if !running.is_empty()
            && count < spec.max_bots
            && waiting >= spec.scale_up_queue_depth as usize * running.len()
            && cooled
        {
            let average = waiting as f64 / running.len() as f64;
            if let Some(p) = self.pools.get_mut(pool) {
                p.last_scale_up = Some(now);
            }
            let names = self.free_names(pool, 1);
            let detail =
                serde_json::json!({ "reason": "queue_depth", "average_queue_depth": average });
            let fut = self.add_members(spec, names, AUTOSCALER.to_owned(), Some(detail));
            ctx.wait(fut.map(|res, act, _| {
                if let Err(e) = res {
                    warn!(act.log, "A pool could not scale up."; "error" => e.to_string());
                }
            }));
            return;
        }
        let retiring = self
            .bots
            .values()
            .any(|e| e.retiring && e.spec.pool.as_ref() == Some(pool));
        if count > spec.min_bots && !retiring {
            // When one member has been idle long enough, the highest-numbered idle member
            // goes: the names stay `{pool}-1` to `{pool}-n` as far as they can.
            let idle = Duration::from_secs(spec.scale_down_idle_secs);
            let idle_now = |n: &BotName| {
                self.bots
                    .get(n)
                    .is_some_and(|e| e.state == BotState::Running && e.queue.is_idle())
            };
            let long_idle = members.iter().any(|(_, n)| {
                idle_now(n)
                    && self
                        .bots
                        .get(n)
                        .is_some_and(|e| now.duration_since(e.idle_since) >= idle)
            });
            let victim = members.iter().rev().find(|(_, n)| long_idle && idle_now(n));
            if let Some((_, name)) = victim.cloned() {
                self.retire(&name, ctx);
            }
        }
    }

    /// The pool as the API shows it; `None` when it neither was created nor is named by
    /// any bot.
    pub(super) fn pool_info(&self, pool: &PoolName) -> Option<PoolInfo> {
        let entry = self.pools.get(pool);
        let bots: Vec<PoolMember> = self
            .bots
            .values()
            .filter(|e| e.spec.pool.as_ref() == Some(pool))
            .map(|e| PoolMember {
                name: e.spec.name.clone(),
                state: e.state,
                managed: e.managed,
            })
            .collect();
        if entry.is_none() && bots.is_empty() {
            return None;
        }
        Some(PoolInfo {
            name: pool.clone(),
            spec: entry.map(|p| p.spec.clone()),
            bots,
            created_at: entry.map(|p| p.created_at),
            updated_at: entry.map(|p| p.updated_at),
        })
    }

    /// The bot that takes a pool's message: the one with a turn of the conversation
    /// still queued or running (so that turns stay in order), else the least loaded
    /// running member (fewest queued plus in flight).
    pub(super) fn pick_member(
        &mut self,
        pool: &PoolName,
        conversation: &str,
    ) -> Result<BotName, EngineError> {
        let members: Vec<&Entry> = self
            .bots
            .values()
            .filter(|e| e.spec.pool.as_ref() == Some(pool))
            .collect();
        if members.is_empty() && !self.pools.contains_key(pool) {
            return Err(EngineError::PoolNotFound(pool.to_string()));
        }
        let running: Vec<&Entry> = members
            .into_iter()
            .filter(|e| e.state == BotState::Running)
            .collect();
        let picked = running
            .iter()
            .find(|e| e.queue.has_conversation(conversation))
            .or_else(|| running.iter().min_by_key(|e| e.queue.load().total()))
            .map(|e| e.spec.name.clone());
        picked.ok_or_else(|| {
            if let Some(p) = self.pools.get_mut(pool) {
                p.wanted = true;
            }
            EngineError::NoBotAvailable(pool.to_string())
        })
    }
}

/// Creates a pool or replaces its spec. A new pool's first `min_bots` members are
/// created and started before the answer; members of an existing pool take the new
/// template from their next start; members over a lowered `max_bots` are scaled down.
#[derive(Message)]
#[rtype(result = "Result<PoolInfo, EngineError>")]
pub struct PutPool {
    pub spec: PoolSpec,
    pub subject: Subject,
}

impl Handler<PutPool> for Registry {
    type Result = AtomicResponse<Self, Result<PoolInfo, EngineError>>;

    fn handle(&mut self, msg: PutPool, _: &mut Self::Context) -> Self::Result {
        let spec = msg.spec;
        let subject = msg.subject;
        let pool = spec.name.clone();
        let now = now_ms();
        let existing = self.pools.get(&pool);
        let created = existing.is_none();
        let created_at = existing.map_or(now, |p| p.created_at);
        let row = pool_row(&spec, created_at, now);
        let members = self.members(&pool);
        // Members keep running their spec; the new template applies from their next start.
        let updates: Vec<_> = members
            .iter()
            .filter_map(|(_, n)| self.bots.get(n))
            .map(|e| {
                let bot = spec.template.spec(e.spec.name.clone(), Some(pool.clone()));
                let mut row = row_from_spec(&bot, true, e.desired, now);
                row.created_at = e.created_at;
                row.failed_reason = (e.state == BotState::Failed)
                    .then(|| e.last_error.clone())
                    .flatten();
                (bot, row)
            })
            .collect();
        let missing = spec.min_bots.saturating_sub(members.len() as u32) as usize;
        let new_names = self.free_names(&pool, missing);
        let excess: Vec<BotName> = members
            .iter()
            .rev()
            .take(members.len().saturating_sub(spec.max_bots as usize))
            .map(|(_, n)| n.clone())
            .collect();
        let store = self.store.clone();
        let rows: Vec<_> = updates.iter().map(|(_, r)| r.clone()).collect();
        let put = async move {
            store
                .write_ordered(move |c| {
                    queries::in_transaction(c, |c| {
                        queries::upsert_pool(c, &row)?;
                        rows.iter().try_for_each(|r| queries::update_bot(c, r))
                    })
                })
                .await
        };
        AtomicResponse::new(Box::pin(put.into_actor(self).then(move |res, act, ctx| {
            let ok = res.map_err(EngineError::from).map(|()| {
                for (bot, _) in updates {
                    if let Some(e) = act.bots.get_mut(&bot.name) {
                        e.spec = bot;
                        e.updated_at = now;
                    }
                }
                let detail = serde_json::json!({
                    "min_bots": spec.min_bots,
                    "max_bots": spec.max_bots,
                    "scale_up_queue_depth": spec.scale_up_queue_depth,
                    "scale_down_idle_secs": spec.scale_down_idle_secs,
                });
                let kind = if created {
                    "pool_created"
                } else {
                    "pool_updated"
                };
                act.pool_event(&pool, None, kind, &subject, detail);
                info!(act.log, "A pool was saved."; "pool" => pool.as_str(), "subject" => &subject);
                let last_scale_up = act.pools.get(&pool).and_then(|p| p.last_scale_up);
                act.pools.insert(
                    pool.clone(),
                    PoolEntry {
                        spec: spec.clone(),
                        created_at,
                        updated_at: now,
                        last_scale_up,
                        wanted: false,
                    },
                );
                for name in &excess {
                    act.retire(name, ctx);
                }
            });
            let add: Box<dyn ActorFuture<Self, Output = Result<(), EngineError>> + Unpin> = match ok
            {
                Ok(()) if !new_names.is_empty() => {
                    Box::new(Box::pin(act.add_members(spec, new_names, subject, None)))
                }
                other => Box::new(fut::ready(other)),
            };
            add.map(move |res, act, _| {
                res?;
                act.pool_info(&pool)
                    .ok_or_else(|| EngineError::PoolNotFound(pool.to_string()))
            })
        })))
    }
}

/// Looks a pool up: a managed one, or one that bots name.
#[derive(Message)]
#[rtype(result = "Result<PoolInfo, EngineError>")]
pub struct GetPool {
    pub name: PoolName,
}

impl Handler<GetPool> for Registry {
    type Result = Result<PoolInfo, EngineError>;

    fn handle(&mut self, msg: GetPool, _: &mut Self::Context) -> Self::Result {
        self.pool_info(&msg.name)
            .ok_or_else(|| EngineError::PoolNotFound(msg.name.to_string()))
    }
}

/// Every pool, managed or named by bots, sorted by name.
#[derive(Message)]
#[rtype(result = "Vec<PoolInfo>")]
pub struct ListPools;

impl Handler<ListPools> for Registry {
    type Result = Vec<PoolInfo>;

    fn handle(&mut self, _: ListPools, _: &mut Self::Context) -> Self::Result {
        let mut names: Vec<PoolName> = self.pools.keys().cloned().collect();
        names.extend(self.bots.values().filter_map(|e| e.spec.pool.clone()));
        names.sort();
        names.dedup();
        names.iter().filter_map(|p| self.pool_info(p)).collect()
    }
}

/// Deletes a managed pool: its members are stopped and deleted (their history stays),
/// then its row. Bots that name the pool themselves are left alone.
#[derive(Message)]
#[rtype(result = "Result<(), EngineError>")]
pub struct DeletePool {
    pub name: PoolName,
    pub subject: Subject,
}

impl Handler<DeletePool> for Registry {
    type Result = AtomicResponse<Self, Result<(), EngineError>>;

    fn handle(&mut self, msg: DeletePool, _: &mut Self::Context) -> Self::Result {
        let ready = |r| AtomicResponse::new(Box::pin(fut::ready(r)));
        let pool = msg.name;
        if !self.pools.contains_key(&pool) {
            return ready(Err(if self.pool_info(&pool).is_some() {
                EngineError::Conflict(format!(
                    "pool '{pool}' was not created with PUT: its bots name it themselves"
                ))
            } else {
                EngineError::PoolNotFound(pool.to_string())
            }));
        }
        let members: Vec<BotName> = self
            .bots
            .values()
            .filter(|e| e.managed && e.spec.pool.as_ref() == Some(&pool))
            .map(|e| e.spec.name.clone())
            .collect();
        for name in &members {
            if let Some(entry) = self.bots.get_mut(name) {
                entry.queue.set_admission(Admission::ShuttingDown);
                entry.generation += 1;
                if let Some(addr) = entry.addr.take() {
                    addr.do_send(crate::bot::Drain {
                        deadline: Instant::now(),
                    });
                }
            }
        }
        let store = self.store.clone();
        let (p, names) = (pool.as_str().to_owned(), members.clone());
        let delete = async move {
            store
                .write_ordered(move |c| {
                    queries::in_transaction(c, |c| {
                        for n in &names {
                            queries::delete_bot(c, n.as_str(), false)?;
                        }
                        queries::delete_pool(c, &p).map(|_| ())
                    })
                })
                .await
        };
        AtomicResponse::new(Box::pin(delete.into_actor(self).map(move |res, act, _| {
            res?;
            for name in &members {
                act.drain_queue(name, "was deleted");
                act.event(name, "deleted", &msg.subject, serde_json::json!({}));
                if let Some(mut entry) = act.bots.remove(name) {
                    for w in entry.stop_waiters.drain(..).chain(entry.start_waiters.drain(..)) {
                        let _ = w.send(Err(EngineError::BotNotFound(name.to_string())));
                    }
                }
            }
            act.pools.remove(&pool);
            act.pool_event(
                &pool,
                None,
                "pool_deleted",
                &msg.subject,
                serde_json::json!({ "bots": members.len() }),
            );
            info!(act.log, "A pool was deleted."; "pool" => pool.as_str(), "subject" => &msg.subject);
            Ok(())
        })))
    }
}
