//! Probe answers: `GET /healthz` (alive) and `GET /readyz` (ready to
//! serve), on the router and the manager.

use serde::{Deserialize, Serialize};

/// The answer of a probe that passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProbeStatus {
    /// `ok` (alive) or `ready`.
    pub status: String,
    /// Router `/readyz`: the catalog version it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_version: Option<u64>,
}

impl ProbeStatus {
    /// Alive.
    pub fn ok() -> Self {
        Self {
            status: "ok".into(),
            catalog_version: None,
        }
    }

    /// Ready, serving catalog `version`.
    pub fn ready(version: u64) -> Self {
        Self {
            status: "ready".into(),
            catalog_version: Some(version),
        }
    }
}
