//! Running on Citus (distributed PostgreSQL): how olps finds out, and the distribution of its
//! schema (`citus.sql`), which `olps migrate` applies after the migrations. Everything else is
//! the same SQL on both: every hot-path statement names one `model_id`, the distribution column,
//! so Citus routes it to the one node holding that model's rows. The few statements that differ
//! ask [`Topology`].

use sqlx::PgExecutor;

/// Distributes the schema when the database has the Citus extension; a no-op otherwise.
pub const DISTRIBUTE_SQL: &str = include_str!("citus.sql");

/// Where olps's tables live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One PostgreSQL server (or a primary with replicas).
    Single,
    /// A Citus coordinator: traffic tables distributed by `model_id` over worker nodes.
    Citus,
}

impl Topology {
    /// Citus when the database has the extension (then `olps migrate` has distributed the schema).
    pub async fn detect(db: impl PgExecutor<'_>) -> Result<Topology, sqlx::Error> {
        let citus: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
        )
        .fetch_one(db)
        .await?;
        Ok(if citus {
            Topology::Citus
        } else {
            Topology::Single
        })
    }
}
