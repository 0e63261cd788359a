//! What keeps writers out of the moving keys on the sources: refuse
//! triggers (SQLSTATE `SLM01` for keys a shard no longer owns) and the
//! catalog-version fence of each tenant database.

use shardline_core::fence::claim_key;
use shardline_core::KeyRange;

use super::job::{db, Ctx, JobError, Plan};
use super::sql;

/// Cutover step a: every source refuses writes to the keys it no
/// longer owns by the new map.
pub(super) async fn refuse_moving(cx: &Ctx, plan: &Plan) -> Result<(), JobError> {
    let key_type = plan.keyspace.key_type;
    for source in plan.sources() {
        let owned: Vec<KeyRange> = plan.job.to_map.ranges_of(&source).collect();
        for tenant in &plan.tenants {
            let src = cx.must_db(plan, &source, tenant).await?;
            for meta in cx.metas(plan, &src, &source, tenant, false).await? {
                sql::install_refuse(&src, &meta, key_type, &owned)
                    .await
                    .map_err(db(&source))?;
            }
        }
    }
    Ok(())
}

/// Raises the fence of every source tenant database to `version`
/// (see [`sql::set_fence`]).
pub(super) async fn fence_sources(cx: &Ctx, plan: &Plan, version: u64) -> Result<(), JobError> {
    for source in plan.sources() {
        for tenant in &plan.tenants {
            let src = cx.must_db(plan, &source, tenant).await?;
            sql::set_fence(&src, version, &claim_key(&tenant.role_password))
                .await
                .map_err(db(&source))?;
        }
    }
    Ok(())
}

/// Sources' refuse triggers (where present) back to the ranges they
/// own by the map before the job.
pub(super) async fn restore_refuse(cx: &Ctx, plan: &Plan) -> Result<(), JobError> {
    for source in plan.sources() {
        let owned: Vec<KeyRange> = plan.job.from_map.ranges_of(&source).collect();
        for tenant in &plan.tenants {
            let Some(src) = cx.tenant_db(plan, &source, tenant).await? else {
                continue;
            };
            for meta in cx.metas(plan, &src, &source, tenant, true).await? {
                if sql::has_refuse(&src, &meta).await.map_err(db(&source))? {
                    sql::install_refuse(&src, &meta, plan.keyspace.key_type, &owned)
                        .await
                        .map_err(db(&source))?;
                }
            }
        }
    }
    Ok(())
}
