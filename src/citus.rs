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

    /// SQL that sets each `(name, value)` for the rest of the caller's transaction, as `SET LOCAL`
    /// does, where the transaction's statements are planned. On Citus that is also the worker
    /// node a statement is routed to, which the coordinator's own settings never reach unless
    /// `citus.propagate_set_commands` sends them (with each connection the transaction opens).
    /// Several statements: run the text unprepared, `Executor::execute(conn, sql.as_str())`.
    pub fn set_local(self, settings: &[(&str, &str)]) -> String {
        let mut sql = String::new();
        if self == Topology::Citus {
            sql.push_str("SET LOCAL citus.propagate_set_commands = 'local'; ");
        }
        for (name, value) in settings {
            sql.push_str(&format!("SET LOCAL {name} = '{value}'; "));
        }
        sql
    }
}
