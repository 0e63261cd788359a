//! Resharding test support: a manager with real PostgreSQL shards and a
//! tenant holding rows, a writer following the map like a router, and
//! crash-and-resume runs of a manager process stopped at a failpoint.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stack::{catalog_path, Stack};
use super::{sqlstate, ADMIN_TOKEN, ROUTER_TOKEN};
use shardline_api::manager::{JobInfo, KeyspaceInfo, ReshardRequest};
use shardline_catalog::{CatalogStore, Op, Precondition};
use shardline_core::catalog::{keys, ReshardJob, ReshardKind, ReshardPhase, Tenant};
use shardline_core::hash::{routing_hash, sql_in_range};
use shardline_core::shardmap::ShardRange;
use shardline_core::{Catalog, KeyRange, KeyType, ShardKey, ShardMap};
use shardline_manager::reshard::{plan_job, FAILPOINT_ENV};
use shardline_manager::ManagerConfig;
use shardline_testkit::PgCluster;
use tokio_util::sync::CancellationToken;

pub const LIMIT: Duration = Duration::from_secs(120);
pub const TENANT: &str = "acme";

/// A manager, shards `s0..`, keyspace `ks` over the first ones, tenant
/// `acme` with `items (id text primary key, v bigint)` holding `k1..kN`.
pub struct Env {
    pub st: Stack,
    pub pgs: HashMap<String, PgCluster>,
    /// Streaming replicas of a shard's primary (not in `pgs`).
    pub replicas: HashMap<String, PgCluster>,
    pub password: String,
    /// The tenant's role, database and schema name (`Tenant::pg_name`).
    pub pg_name: String,
}

impl Env {
    pub async fn setup(
        in_keyspace: usize,
        total: usize,
        rows: usize,
        cfg: impl Fn(&mut ManagerConfig),
    ) -> Env {
        Env::setup_with_replica(in_keyspace, total, rows, false, cfg).await
    }

    /// The same; with `replica`, `s0` gets a streaming replica (`s0-1`).
    pub async fn setup_with_replica(
        in_keyspace: usize,
        total: usize,
        rows: usize,
        replica: bool,
        cfg: impl Fn(&mut ManagerConfig),
    ) -> Env {
        let mut st = Stack::new().await;
        let mut c = st.config();
        cfg(&mut c);
        st.start_with(c).await;
        let started = futures_util::future::join_all((0..total).map(|_| PgCluster::start())).await;
        let mut pgs = HashMap::new();
        let mut replicas = HashMap::new();
        for (i, pg) in started.into_iter().enumerate() {
            let pg = pg.unwrap();
            let id = format!("s{i}");
            if replica && i == 0 {
                let r = PgCluster::start_replica_of(&pg).await.unwrap();
                st.register(&id, &pg, &[&r]).await;
                st.wait_healthy(&id, 2).await;
                replicas.insert(id.clone(), r);
            } else {
                st.register(&id, &pg, &[]).await;
            }
            pgs.insert(id, pg);
        }
        let shards: Vec<String> = (0..in_keyspace).map(|i| format!("s{i}")).collect();
        let body = serde_json::json!({"name": "ks", "key_type": "text", "shards": shards});
        let a = st
            .admin("POST", "/v1/keyspaces", Some(&body.to_string()))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let a = st
            .admin(
                "POST",
                "/v1/tenants",
                Some(r#"{"id": "acme", "keyspace": "ks"}"#),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let m = r#"{"name": "001", "sql": "CREATE TABLE items (id text PRIMARY KEY, v bigint)"}"#;
        let a = st
            .admin("POST", "/v1/keyspaces/ks/migrations", Some(m))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let a = st
            .admin(
                "PUT",
                "/v1/keyspaces/ks/tables/items",
                Some(r#"{"shard_key": "id"}"#),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let e = st.store.get(&keys::tenant(TENANT)).await.unwrap().unwrap();
        let tenant: Tenant = serde_json::from_slice(&e.value).unwrap();
        let env = Env {
            st,
            pgs,
            replicas,
            pg_name: tenant.pg_name(),
            password: tenant.role_password,
        };
        let map = env.map().await;
        for r in map.ranges() {
            let pred = sql_in_range(KeyType::Text, "'k' || i", &r.range);
            env.db(&r.shard)
                .await
                .batch_execute(&format!(
                    "INSERT INTO {}.items SELECT 'k' || i, i FROM generate_series(1, {rows}) i \
                     WHERE {pred}",
                    env.pg_name
                ))
                .await
                .unwrap();
        }
        env
    }

    /// A superuser session in the tenant's database, in its schema.
    pub async fn db(&self, shard: &str) -> tokio_postgres::Client {
        let c = super::connect_db(&self.pgs[shard], &self.pg_name).await;
        c.batch_execute(&format!("SET search_path = {}", self.pg_name))
            .await
            .unwrap();
        c
    }

    /// A session as the tenant's role, as a router's would be: stating
    /// (see `shardline_core::fence`) a routing version past any fence, so
    /// only the refuse triggers stop its writes.
    pub async fn as_tenant(&self, shard: &str) -> tokio_postgres::Client {
        let c = super::connect_as(
            &self.pgs[shard],
            &self.pg_name,
            &self.password,
            &self.pg_name,
        )
        .await
        .unwrap();
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let key = shardline_core::fence::claim_key(&self.password);
        let claim = shardline_core::fence::claim(&key, pid, 999_999_999_999_999_999);
        c.batch_execute(&format!("SET shardline.map_version = '{claim}'"))
            .await
            .unwrap();
        c
    }

    pub async fn keyspace(&self) -> KeyspaceInfo {
        let a = self.st.admin("GET", "/v1/keyspaces/ks", None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        serde_json::from_str(&a.body).unwrap()
    }

    pub async fn map(&self) -> ShardMap {
        to_map(&self.keyspace().await)
    }

    pub async fn start(&self, kind: &str, source: &str, targets: &[&str]) -> JobInfo {
        let body = serde_json::json!({"keyspace": "ks", "kind": kind, "source": source,
            "targets": targets});
        self.start_body(&body.to_string()).await
    }

    /// Starts the job `body` asks for (`POST /v1/reshard`, 202).
    pub async fn start_body(&self, body: &str) -> JobInfo {
        let a = self.st.admin("POST", "/v1/reshard", Some(body)).await;
        assert_eq!(a.status, 202, "{}", a.body);
        serde_json::from_str(&a.body).unwrap()
    }

    pub async fn job(&self, id: &str) -> JobInfo {
        let a = self
            .st
            .admin("GET", &format!("/v1/reshard/{id}"), None)
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        serde_json::from_str(&a.body).unwrap()
    }

    pub async fn wait_job(&self, id: &str, done: impl Fn(&JobInfo) -> bool) -> JobInfo {
        let deadline = Instant::now() + LIMIT;
        loop {
            let j = self.job(id).await;
            if done(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} stuck: {j:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every row of every shard holding some (`shard -> id -> v`).
    pub async fn rows(&self) -> BTreeMap<String, BTreeMap<String, i64>> {
        let mut out = BTreeMap::new();
        for (id, pg) in &self.pgs {
            if !super::database_exists(pg, &self.pg_name).await {
                continue;
            }
            let c = self.db(id).await;
            let rows = c.query("SELECT id, v FROM items", &[]).await.unwrap();
            if !rows.is_empty() {
                out.insert(
                    id.clone(),
                    rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
                );
            }
        }
        out
    }

    /// Asserts each row lives once, on the shard owning its key by `map`
    /// (PostgreSQL's own hash decides), and equals `expected`.
    pub async fn assert_placed(&self, map: &ShardMap, expected: &BTreeMap<String, i64>) {
        let mut seen: BTreeMap<String, i64> = BTreeMap::new();
        for (shard, rows) in self.rows().await {
            let owned: Vec<KeyRange> = map.ranges_of(&shard).collect();
            let c = self.db(&shard).await;
            let preds: Vec<String> = owned
                .iter()
                .map(|r| sql_in_range(KeyType::Text, "id", r))
                .collect();
            let inside = if preds.is_empty() {
                "false".into()
            } else {
                preds.join(" OR ")
            };
            let stray: i64 = c
                .query_one(
                    &format!("SELECT count(*) FROM items WHERE NOT ({inside})"),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(stray, 0, "rows on {shard} outside its ranges");
            for (id, v) in rows {
                assert!(seen.insert(id.clone(), v).is_none(), "{id} twice");
            }
        }
        let extra: Vec<_> = seen
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .take(12)
            .collect();
        assert_eq!(seen.len(), expected.len(), "row count; extra: {extra:?}");
        let diff: Vec<_> = expected
            .iter()
            .filter(|(k, v)| seen.get(*k) != Some(v))
            .take(5)
            .collect();
        assert!(diff.is_empty(), "rows differ (expected, first 5): {diff:?}");
    }

    pub async fn changes_objects(&self, shard: &str) -> i64 {
        let c = self.db(shard).await;
        c.query_one(
            "SELECT (SELECT count(*) FROM pg_trigger \
               WHERE tgname IN ('shardline_reshard_capture', 'shardline_reshard_no_truncate')) \
             + (SELECT count(*) FROM pg_class WHERE relname = 'reshard_changes')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    }
}

pub fn to_map(ks: &KeyspaceInfo) -> ShardMap {
    ShardMap::new(
        ks.map
            .iter()
            .map(|r| ShardRange {
                range: KeyRange::parse(&r.range).unwrap(),
                shard: r.shard.clone(),
            })
            .collect(),
    )
    .unwrap()
}

pub fn hash(key: &str) -> u64 {
    routing_hash(ShardKey::Text(key))
}

/// A key whose routing hash is in `range`.
pub fn key_in(range: &KeyRange, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| range.contains(hash(k)))
        .unwrap()
}

/// Writes like a client through a router: reads the map before each
/// write, waits while the key's range is frozen, retries on SLM01.
pub struct Writer {
    pub stop: CancellationToken,
    pub ops: Arc<AtomicU64>,
    pub moved_errors: Arc<AtomicU64>,
    pub task: tokio::task::JoinHandle<BTreeMap<String, i64>>,
}

pub async fn start_writer(env: Arc<Env>, rows: usize) -> Writer {
    let stop = CancellationToken::new();
    let ops = Arc::new(AtomicU64::new(0));
    let moved_errors = Arc::new(AtomicU64::new(0));
    let mut model: BTreeMap<String, i64> =
        (1..=rows).map(|i| (format!("k{i}"), i as i64)).collect();
    let (s, o, m) = (stop.clone(), ops.clone(), moved_errors.clone());
    let task = tokio::spawn(async move {
        let mut conns: HashMap<(String, bool), tokio_postgres::Client> = HashMap::new();
        let mut n: u64 = 0;
        while !s.is_cancelled() {
            n += 1;
            let (sql, key, delta): (&str, String, Option<i64>) = match n % 3 {
                0 => ("INSERT INTO items VALUES ($1, $2)", format!("n{n}"), None),
                1 => (
                    "UPDATE items SET v = v + 1 WHERE id = $1",
                    format!("k{}", n * 7919 % rows as u64 + 1),
                    Some(1),
                ),
                _ => (
                    "DELETE FROM items WHERE id = $1",
                    format!("k{}", n * 104_729 % rows as u64 + 1),
                    None,
                ),
            };
            let as_role = n.is_multiple_of(2);
            let mut tries = 0;
            let affected = loop {
                tries += 1;
                assert!(tries < 500, "write to {key} kept failing");
                let ks = env.keyspace().await;
                let h = hash(&key);
                if ks
                    .frozen
                    .iter()
                    .any(|r| KeyRange::parse(r).unwrap().contains(h))
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let owner = to_map(&ks).lookup(h).shard.clone();
                let ck = (owner.clone(), as_role);
                if !conns.contains_key(&ck) {
                    let c = if as_role {
                        env.as_tenant(&owner).await
                    } else {
                        env.db(&owner).await
                    };
                    conns.insert(ck.clone(), c);
                }
                let c = &conns[&ck];
                let res = if sql.starts_with("INSERT") {
                    c.execute(sql, &[&key, &(n as i64)]).await
                } else {
                    c.execute(sql, &[&key]).await
                };
                match res {
                    Ok(a) => break a,
                    Err(e) if sqlstate(&e) == Some("SLM01") => {
                        m.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => panic!("{sql} {key} on {owner}: {e:?}"),
                }
            };
            let present = model.contains_key(&key);
            if sql.starts_with("INSERT") {
                assert_eq!(affected, 1);
                model.insert(key, n as i64);
            } else {
                assert_eq!(
                    affected,
                    u64::from(present),
                    "{sql} {key}: the row's presence"
                );
                if delta.is_some() {
                    if let Some(v) = model.get_mut(&key) {
                        *v += 1;
                    }
                } else {
                    model.remove(&key);
                }
            }
            o.fetch_add(1, Ordering::Relaxed);
        }
        model
    });
    Writer {
        stop,
        ops,
        moved_errors,
        task,
    }
}

pub fn small_batches(c: &mut ManagerConfig) {
    c.reshard_batch_rows = 200;
    c.reshard_batch_pause = Duration::from_millis(20);
}

/// Tells [`reshard_failpoint_child`] which catalog to run a manager on.
pub const CHILD_CATALOG: &str = "SHARDLINE_TEST_RESHARD_CATALOG";
pub const SIGABRT: i32 = 6;

/// Pause between copy batches of the child manager, in milliseconds.
pub const CHILD_PAUSE_MS: &str = "SHARDLINE_TEST_RESHARD_PAUSE_MS";

/// The body of the `reshard_failpoint_child` test each test file that
/// uses [`crash_and_resume`] declares: not a test by itself, the manager
/// process of the failpoint tests.
pub fn failpoint_child() {
    let Ok(path) = std::env::var(CHILD_CATALOG) else {
        return;
    };
    let pause = std::env::var(CHILD_PAUSE_MS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cfg = ManagerConfig::new(path.into(), ADMIN_TOKEN, ROUTER_TOKEN);
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.reshard_batch_rows = 100;
        cfg.reshard_batch_pause = Duration::from_millis(pause);
        let run = shardline_manager::run(cfg, CancellationToken::new());
        let _ = tokio::time::timeout(CHILD_LIMIT, run).await;
    });
}

/// Longest life of a child manager (it aborts at its failpoint first).
const CHILD_LIMIT: Duration = Duration::from_secs(50);

/// Sets up a split of `s0` onto `s1`, records the job with the manager
/// stopped, runs a manager process that aborts at `failpoint`, then
/// starts a manager again and lets it finish.
pub async fn crash_and_resume(failpoint: &str, expect: ReshardPhase) {
    crash_and_resume_with(failpoint, expect, false).await;
}

/// [`crash_and_resume`]; with `writes`, a writer inserts, updates and
/// deletes rows on the source (which owns every key until the cutover)
/// while the child manager runs, and every acknowledged write must be
/// found afterwards.
pub async fn crash_and_resume_with(failpoint: &str, expect: ReshardPhase, writes: bool) {
    crash_and_resume_job(failpoint, expect, writes, ReshardKind::Split).await;
}

/// [`crash_and_resume_with`] for a job of `kind` from `s0` to `s1`
/// (a split moves the upper half; a move moves everything, and `s0`,
/// left without ranges, must be released from the keyspace).
pub async fn crash_and_resume_job(
    failpoint: &str,
    expect: ReshardPhase,
    writes: bool,
    kind: ReshardKind,
) {
    let rows = 3_000;
    let mut env = Env::setup(1, 2, rows, |_| {}).await;
    let before = env.rows().await;
    env.st.stop().await;
    let snap = env.st.store.snapshot("").await.unwrap();
    let cat = Catalog::from_entries(
        snap.revision,
        snap.entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_slice())),
    )
    .unwrap();
    let req = ReshardRequest {
        keyspace: "ks".into(),
        kind,
        source: "s0".into(),
        targets: vec!["s1".into()],
        at: vec![],
        tenant: None,
        to_keyspace: None,
    };
    let job = plan_job(&cat, &req, "rs-crash").unwrap();
    let key = keys::job(&job.id);
    env.st
        .store
        .txn(
            &[Precondition::Absent(key.clone())],
            &[Op::Put {
                key: key.clone(),
                value: serde_json::to_vec(&job).unwrap(),
            }],
        )
        .await
        .unwrap();
    let Env {
        st,
        pgs,
        replicas,
        password,
        pg_name,
    } = env;
    let dir = st.close().await;
    let stop_writes = CancellationToken::new();
    let writer = writes.then(|| {
        tokio::spawn(direct_writes(
            format!("{} dbname={pg_name}", pgs["s0"].dsn()),
            pg_name.clone(),
            before
                .values()
                .flatten()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            stop_writes.clone(),
        ))
    });
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "reshard_failpoint_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_CATALOG, catalog_path(dir.path()))
        .env(FAILPOINT_ENV, failpoint)
        .env(CHILD_PAUSE_MS, if writes { "10" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(SIGABRT),
        "aborted at {failpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop_writes.cancel();
    let written = match writer {
        Some(w) => Some(w.await.unwrap()),
        None => None,
    };
    if writes {
        // Some of the writes fell after capture began, so the resumed job
        // must carry captured changes over the crash (not only copy rows
        // written before it).
        let captured: i64 = super::connect_db(&pgs["s0"], &pg_name)
            .await
            .query_one("SELECT count(*) FROM shardline.reshard_changes", &[])
            .await
            .unwrap()
            .get(0);
        println!("{captured} changes captured on the source before the crash");
        assert!(captured > 0, "no write fell inside the capture window");
    }
    let mut st = Stack::open(dir).await;
    let e = st.store.get(&key).await.unwrap().unwrap();
    let left: ReshardJob = serde_json::from_slice(&e.value).unwrap();
    assert_eq!(left.phase, expect);
    let env = Env {
        st: {
            st.start().await;
            st
        },
        pgs,
        replicas,
        password,
        pg_name,
    };
    let moving = job.moves[0].range;
    if expect == ReshardPhase::Cutover {
        // The crash left the range frozen. (That a frozen range's source
        // refuses its keys is tested on its own: reshard.rs in the
        // router's tests, "a fenced source refuses older ones".)
        assert_eq!(env.keyspace().await.frozen, [moving.to_string()]);
    }
    let done = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    let map = env.map().await;
    assert_eq!(map.lookup(u64::MAX).shard, "s1");
    if kind == ReshardKind::Move {
        assert_eq!(map.shards(), ["s1"]);
        assert_eq!(env.st.shard("s0").await.keyspace, None, "s0 released");
    }
    let expected: BTreeMap<String, i64> = match written {
        Some((model, ops)) => {
            println!("{ops} writes on the source while the child manager ran");
            assert!(ops > 0, "writes happened during the job");
            model
        }
        None => before
            .values()
            .flatten()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    };
    if !writes {
        assert_eq!(expected.len(), rows);
    }
    env.assert_placed(&map, &expected).await;
    let k = key_in(&moving, "late-");
    let e = env
        .as_tenant("s0")
        .await
        .execute("INSERT INTO items VALUES ($1, 1)", &[&k])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("SLM01"));
}

/// Writes to the tenant database behind `dsn` (the owner of every key)
/// until `stop`: inserts, updates and deletes in turn. The rows as they
/// are after the acknowledged writes, and how many there were.
async fn direct_writes(
    dsn: String,
    schema: String,
    mut model: BTreeMap<String, i64>,
    stop: CancellationToken,
) -> (BTreeMap<String, i64>, u64) {
    let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(&format!("SET search_path = {schema}"))
        .await
        .unwrap();
    let keys: Vec<String> = model.keys().cloned().collect();
    let mut n: u64 = 0;
    while !stop.is_cancelled() && n < 200_000 {
        n += 1;
        let key = &keys[(n * 7919 % keys.len() as u64) as usize];
        match n % 3 {
            // Each write changes the row if the model has it, else none.
            0 => {
                let k = format!("w{n}");
                let affected = c
                    .execute("INSERT INTO items VALUES ($1, $2)", &[&k, &(n as i64)])
                    .await
                    .unwrap();
                assert_eq!(affected, 1, "insert of {k}");
                model.insert(k, n as i64);
            }
            1 => {
                let affected = c
                    .execute("UPDATE items SET v = v + 1 WHERE id = $1", &[key])
                    .await
                    .unwrap();
                assert_eq!(
                    affected,
                    u64::from(model.contains_key(key)),
                    "update of {key}"
                );
                if let Some(v) = model.get_mut(key) {
                    *v += 1;
                }
            }
            _ => {
                let gone = &keys[(n * 104_729 % keys.len() as u64) as usize];
                let affected = c
                    .execute("DELETE FROM items WHERE id = $1", &[gone])
                    .await
                    .unwrap();
                assert_eq!(
                    affected,
                    u64::from(model.contains_key(gone)),
                    "delete of {gone}"
                );
                model.remove(gone);
            }
        }
    }
    (model, n)
}

/// A router whose catalog feed is stuck: it heartbeats as `id` every
/// 100 ms (for at most 2 minutes) with the catalog version the manager at
/// `addr` served when it started, and never a later one, until `stop`.
/// Returns how many heartbeats were answered without renewing its lease.
pub fn stuck_router(
    addr: std::net::SocketAddr,
    id: &str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    let id = id.to_string();
    tokio::spawn(async move {
        let applied = served_version(addr).await;
        let beat = format!(r#"{{"id": "{id}", "address": "x", "applied_version": {applied}}}"#);
        let mut not_renewed = 0;
        for _ in 0..1_200 {
            if stop.is_cancelled() {
                break;
            }
            let a = super::http(
                addr,
                "POST",
                "/v1/routers/heartbeat",
                Some(ROUTER_TOKEN),
                Some(&beat),
            )
            .await;
            assert_eq!(a.status, 200, "{}", a.body);
            if a.body.contains(r#""renewed":false"#) {
                not_renewed += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        not_renewed
    })
}

/// The catalog version the manager at `addr` serves now, as a router
/// fetching it would have it.
pub async fn served_version(addr: std::net::SocketAddr) -> u64 {
    let a = super::http(
        addr,
        "GET",
        "/v1/catalog?after_version=0&wait_ms=0",
        Some(ROUTER_TOKEN),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    serde_json::from_str::<serde_json::Value>(&a.body).unwrap()["version"]
        .as_u64()
        .unwrap()
}
