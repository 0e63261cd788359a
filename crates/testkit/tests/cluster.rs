#[tokio::test]
async fn starts_and_answers() {
    let pg = shardline_testkit::PgCluster::start().await.unwrap();
    let c = pg.connect().await.unwrap();
    let row = c
        .query_one("select current_user::text, version()", &[])
        .await
        .unwrap();
    let u: String = row.get(0);
    assert_eq!(u, "postgres");
}
