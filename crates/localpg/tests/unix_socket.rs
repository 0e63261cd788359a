//! A cluster with a password and a `socket_dir` takes password logins
//! over its Unix socket, as `shardline-bench wire --unix` makes them (as
//! root, logging in as `postgres`), and refuses a wrong password there.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use shardline_localpg::{
    free_port, init_cluster, start_cluster, ClusterConfig, PgBinaries, StopMode,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

#[tokio::test]
async fn password_login_over_the_unix_socket() {
    let bins = PgBinaries::detect().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The server runs as `postgres` when we are root: let it in.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket_dir = dir.path().join("sock");
    let mut cfg = ClusterConfig::new(dir.path().join("data"), free_port().unwrap());
    cfg.password = Some("s0cket-pw".into());
    cfg.settings = vec![("fsync".into(), "off".into())];
    cfg.socket_dir = Some(socket_dir.clone());
    assert!(init_cluster(&bins, &cfg).await.unwrap());
    let mut pg = start_cluster(&bins, &cfg).await.unwrap();
    assert!(socket_dir.join(format!(".s.PGSQL.{}", cfg.port)).exists());

    let dsn = cfg.socket_dsn().unwrap();
    assert_eq!(
        dsn,
        format!(
            "host={} port={} user=postgres dbname=postgres password=s0cket-pw",
            socket_dir.display(),
            cfg.port
        )
    );
    let (c, conn) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
    tokio::spawn(conn);
    // No server address: the session came over the Unix socket.
    let row = c
        .query_one("SELECT inet_server_addr() IS NULL, current_user::text", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "postgres");

    // The control: the password is checked over the socket.
    let wrong = dsn.replace("password=s0cket-pw", "password=wrong");
    let err = tokio_postgres::connect(&wrong, NoTls)
        .await
        .err()
        .expect("a wrong password over the socket is refused");
    assert_eq!(
        err.as_db_error().map(|e| e.code()),
        Some(&SqlState::INVALID_PASSWORD),
        "{err}"
    );
    // And over TCP, as before.
    let (tcp, conn) = tokio_postgres::connect(&cfg.dsn(), NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = tcp
        .query_one("SELECT inet_server_addr() IS NOT NULL", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));

    drop((c, tcp));
    pg.stop(StopMode::Fast, Duration::from_secs(30))
        .await
        .unwrap();
}
