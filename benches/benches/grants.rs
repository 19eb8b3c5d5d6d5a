//! How fast a revoked grant's sessions end: a live PostgreSQL session under a
//! grant (tokio-postgres through Proctor's gateway, in this process, against
//! a throw-away cluster), the grant revoked, and the time until the client's
//! connection is closed — 20 times revoked through the same gateway, and 20
//! times through a second gateway sharing the control store (which the
//! first notices on its 200 ms sweep). Prints median, p90 and worst.
//!
//! `cargo bench -p proctor-benches --bench grants [-- ROUNDS]`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proctor_benches::{BenchSink, median};
use proctor_devcluster::{Cluster, Options};
use proctor_gateway_core::control::{
    Control, ControlSession, GrantAuthenticator, LiveGrants, Offer, Policies, PolicyConfig, SqlStore,
};
use proctor_gateway_core::identity::Identity;
use proctor_postgres::{self as postgres, PgResource, SampleLimits, Shared, Target};
use proctor_recorder::{Recorder, RecorderSettings};
use tokio::net::TcpListener;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PASSWORD: &str = "bench-password";
const SWEEP: Duration = Duration::from_millis(200);

type Plane = Control<SqlStore, BenchSink>;

fn control(store: SqlStore, live: Arc<LiveGrants>, session: ControlSession<BenchSink>, port: u16) -> Plane {
    let policy = PolicyConfig {
        name: "agents".into(),
        groups: vec!["ci".into()],
        resources: vec!["bench".into()],
        max_ttl: Duration::from_secs(3600),
        approval: None,
        rules: None,
        masking_profile: None,
        masking_profiles: Default::default(),
        sample_rows: None,
    };
    let offers = HashMap::from([(
        "bench".to_string(),
        Offer::Postgres { host: "127.0.0.1".into(), port, database: "app".into() },
    )]);
    Control::new(
        store,
        Policies::new(vec![policy]).unwrap(),
        offers,
        session,
        live,
        Duration::from_secs(3600),
        "security".into(),
    )
}

/// Percentiles of `samples` in milliseconds: (median, p90, max).
fn summary(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let p90 = samples[((samples.len() as f64 * 0.9).ceil() as usize).saturating_sub(1)];
    (median(samples.clone()), p90, *samples.last().unwrap())
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20);
    let cluster = Cluster::start(&Options::default()).expect("PostgreSQL (scripts/setup installs it)");
    cluster.psql("postgres", &format!("create role app login password '{PASSWORD}'")).unwrap();
    cluster.psql("postgres", "create database app owner app").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(&dir.path().join("data"), &RecorderSettings::default()).unwrap();
    let sink = BenchSink(recorder.sink());
    let url = format!("sqlite://{}", dir.path().join("control.db").display());

    let (near, far, port, stop) = runtime.block_on(async {
        let store = SqlStore::open(&url).await.unwrap();
        let live = Arc::new(LiveGrants::default());
        let resource = Arc::new(PgResource {
            name: "bench".into(),
            allow_plaintext: true,
            target: Target {
                address: format!("127.0.0.1:{}", cluster.port),
                user: "app".into(),
                password: PASSWORD.into(),
                tls: None,
                connect_timeout: Duration::from_secs(10),
            },
            limits: SampleLimits::default(),
            sessions: Default::default(),
            catalog: Default::default(),
            databases: vec!["app".into()],
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let auth = Arc::new(GrantAuthenticator::new(store.clone(), live.clone(), Vec::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(postgres::serve(resource, listener, sink.clone(), auth, None, Shared::default(), stopped));
        let session = ControlSession::start(sink.clone(), "bench").await.unwrap();
        // This gateway's control plane, with its sweep.
        let near = Arc::new(control(store.clone(), live, session.clone(), port));
        let sweeping = near.clone();
        tokio::spawn(async move {
            loop {
                let _ = sweeping.sweep().await;
                tokio::time::sleep(SWEEP).await;
            }
        });
        // Another gateway's, sharing the store (its own live sessions: none).
        let far =
            Arc::new(control(SqlStore::open(&url).await.unwrap(), Arc::new(LiveGrants::default()), session, port));
        (near, far, port, stop)
    });

    let agent =
        Identity { subject: "ci-bot".into(), issuer: "bench".into(), groups: vec!["ci".into()], expires_at: i64::MAX };
    let admin = Identity {
        subject: "sec".into(),
        issuer: "bench".into(),
        groups: vec!["security".into()],
        expires_at: i64::MAX,
    };
    let measure = |via: &Plane| -> Vec<f64> {
        (0..rounds)
            .map(|_| {
                runtime.block_on(async {
                    let grant = near.request(&agent, "bench", Duration::from_secs(600), "bench").await.unwrap();
                    let url = grant.credentials.unwrap().url.replace("sslmode=require", "sslmode=disable");
                    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
                    let ended = tokio::spawn(async move {
                        let _ = connection.await;
                        Instant::now()
                    });
                    client.simple_query("select 1").await.unwrap();
                    let revoked = Instant::now();
                    via.revoke(&admin, &grant.id, Some("bench".into())).await.unwrap();
                    let ended =
                        tokio::time::timeout(Duration::from_secs(10), ended).await.expect("session ended").unwrap();
                    ended.duration_since(revoked).as_secs_f64() * 1e3
                })
            })
            .collect()
    };
    let same = measure(&near);
    let other = measure(&far);
    println!("revocation to session end, {rounds} sessions each (gateway on 127.0.0.1:{port}):");
    let (m, p90, max) = summary(same);
    println!("  revoked through the same gateway:      median {m:7.2} ms  p90 {p90:7.2} ms  worst {max:7.2} ms");
    let (m, p90, max) = summary(other);
    println!(
        "  revoked through another gateway:       median {m:7.2} ms  p90 {p90:7.2} ms  worst {max:7.2} ms  (its {} ms sweep)",
        SWEEP.as_millis()
    );
    let _ = stop.send(true);
    drop(recorder);
}
