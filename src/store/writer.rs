//! Where the group-committed batches (enqueues, attempt records) and the claims run their
//! statements.
//!
//! Why a thread of our own on SQLite: sqlx runs each SQLite connection on a worker thread
//! and hands every statement, and every row it returns, across threads. Under load the node
//! spent more of its time in the kernel switching between those threads than in SQLite
//! (bench/RESULTS.md, issue 16). A batch, or a claim, now runs as one transaction on one
//! thread that owns a rusqlite connection: one hand-off per batch, not per statement.
//! PostgreSQL keeps sqlx (each statement is a network round trip anyway).
//!
//! Both go through [`Db`], so a batch's SQL and logic are written once. The batch functions
//! are async for sqlx; on the writer thread they are driven by `block_on`, and rusqlite's
//! side of [`Db`] never waits, so they run straight through.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use sqlx::{Any, Row, Transaction, TypeInfo, ValueRef};
use tokio::sync::oneshot;

use super::{is_sqlite, StoreError};

/// A statement parameter.
#[derive(Debug, Clone, Copy)]
pub(super) enum Param<'a> {
    Int(i64),
    Text(&'a str),
    Null,
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(v)
    }
}

impl<'a, T: Into<Param<'a>>> From<Option<T>> for Param<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Param::Null, Into::into)
    }
}

/// A column of a returned row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cell {
    Int(i64),
    Text(String),
    Null,
}

impl Cell {
    pub(super) fn int(&self) -> Result<i64, StoreError> {
        match self {
            Cell::Int(v) => Ok(*v),
            other => Err(unexpected("an integer", other)),
        }
    }

    pub(super) fn text(self) -> Result<String, StoreError> {
        match self {
            Cell::Text(v) => Ok(v),
            other => Err(unexpected("text", &other)),
        }
    }
}

/// A row of `N` columns.
pub(super) fn columns<const N: usize>(row: Vec<Cell>) -> Result<[Cell; N], StoreError> {
    row.try_into().map_err(|r: Vec<Cell>| {
        StoreError::Unavailable(format!("store returned {} columns, not {N}", r.len()))
    })
}

fn unexpected(wanted: &str, got: &Cell) -> StoreError {
    let got = match got {
        Cell::Int(_) => "an integer",
        Cell::Text(_) => "text",
        Cell::Null => "NULL",
    };
    StoreError::Unavailable(format!("store returned {got} where {wanted} was expected"))
}

/// The statements a batch needs, inside its transaction.
pub(super) trait Db {
    /// Whether it is SQLite (for the placeholders' spelling).
    fn sqlite(&self) -> bool;
    /// Rows changed.
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError>;
    async fn fetch(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Vec<Cell>>, StoreError>;
}

/// A sqlx transaction (PostgreSQL's batches).
pub(super) struct SqlxDb<'t, 'c>(pub(super) &'t mut Transaction<'c, Any>);

fn bind<'q>(
    mut q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    params: &[Param<'q>],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    for p in params {
        q = match *p {
            Param::Int(v) => q.bind(v),
            Param::Text(v) => q.bind(v),
            Param::Null => q.bind(None::<&str>),
        };
    }
    q
}

impl Db for SqlxDb<'_, '_> {
    fn sqlite(&self) -> bool {
        is_sqlite(self.0)
    }

    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let q = bind(sqlx::query(sql), params);
        Ok(q.execute(&mut **self.0).await?.rows_affected())
    }

    async fn fetch(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Vec<Cell>>, StoreError> {
        let q = bind(sqlx::query(sql), params);
        let rows = q.fetch_all(&mut **self.0).await?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| {
                        let raw = r.try_get_raw(i)?;
                        if raw.is_null() {
                            Ok(Cell::Null)
                        } else if raw.type_info().kind().is_integer() {
                            Ok(Cell::Int(r.try_get(i)?))
                        } else if raw.type_info().name() == "TEXT" {
                            Ok(Cell::Text(r.try_get(i)?))
                        } else {
                            Err(StoreError::Unavailable(format!(
                                "store returned a {} column",
                                raw.type_info().name()
                            )))
                        }
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .collect()
    }
}

/// A transaction on the writer thread.
pub(super) struct RusqliteDb<'a>(&'a rusqlite::Transaction<'a>);

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match *self {
            Param::Int(v) => ToSqlOutput::Owned(Value::Integer(v)),
            Param::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Param::Null => ToSqlOutput::Owned(Value::Null),
        })
    }
}

/// Binds `params` as the SQL text numbers them: `$N` (the spelling PostgreSQL shares) or
/// `?N` takes the N-th, a bare `?` the next in order. By index, not name: SQLite numbers
/// `$N` parameters in order of appearance, which need not be N.
fn bind_all(
    st: &mut rusqlite::CachedStatement<'_>,
    params: &[Param<'_>],
) -> Result<(), StoreError> {
    for i in 1..=st.parameter_count() {
        let n = match st.parameter_name(i) {
            None => i,
            Some(name) => name[1..].parse::<usize>().map_err(|_| {
                StoreError::Unavailable(format!("statement parameter {name} is not numbered"))
            })?,
        };
        let value = n
            .checked_sub(1)
            .and_then(|n| params.get(n))
            .ok_or_else(|| {
                StoreError::Unavailable(format!("statement parameter {n} has no value"))
            })?;
        st.raw_bind_parameter(i, value).map_err(sqlite_error)?;
    }
    Ok(())
}

fn sqlite_error(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Db for RusqliteDb<'_> {
    fn sqlite(&self) -> bool {
        true
    }

    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let mut st = self.0.prepare_cached(sql).map_err(sqlite_error)?;
        bind_all(&mut st, params)?;
        let n = st.raw_execute().map_err(sqlite_error)?;
        Ok(n as u64)
    }

    async fn fetch(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Vec<Cell>>, StoreError> {
        use rusqlite::types::ValueRef;
        let mut st = self.0.prepare_cached(sql).map_err(sqlite_error)?;
        let columns = st.column_count();
        bind_all(&mut st, params)?;
        let mut rows = st.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite_error)? {
            let mut cells = Vec::with_capacity(columns);
            for i in 0..columns {
                cells.push(match row.get_ref(i).map_err(sqlite_error)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::Int(v),
                    ValueRef::Text(t) => Cell::Text(
                        std::str::from_utf8(t)
                            .map_err(|e| StoreError::Unavailable(e.to_string()))?
                            .to_owned(),
                    ),
                    other => {
                        return Err(StoreError::Unavailable(format!(
                            "store returned a {} column",
                            other.data_type()
                        )))
                    }
                });
            }
            out.push(cells);
        }
        Ok(out)
    }
}

/// A batch for the writer thread: runs in one transaction, at a `synchronous` level.
type Work = Box<dyn FnOnce(&mut Conn) + Send>;

struct Conn {
    conn: rusqlite::Connection,
    /// The `synchronous` level the connection is at.
    synchronous: &'static str,
}

/// The node's SQLite writer thread (enqueue and record batches). Callers still take the
/// node's write lock ([`super::Writes`]) first, so claims and other writers through sqlx
/// queue in the process, not at SQLite's busy handler.
pub(super) struct SqliteWriter {
    work: mpsc::Sender<Work>,
}

impl SqliteWriter {
    /// Opens the store's file (already made and migrated by the sqlx pool).
    pub(super) fn open(path: &str) -> Result<SqliteWriter, StoreError> {
        let conn = rusqlite::Connection::open(path).map_err(sqlite_error)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite_error)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sqlite_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "sqlite journal mode is {mode}, not wal"
            )));
        }
        // A page cache to hold the indexes' hot pages (SQLite's default is 2 MiB), so a
        // batch does not read back from the file what the last one wrote.
        conn.execute_batch("PRAGMA cache_size = -65536")
            .map_err(sqlite_error)?;
        // Multi-row statements differ by their row count: room for the usual sizes.
        conn.set_prepared_statement_cache_capacity(128);
        let mut conn = Conn {
            conn,
            synchronous: "",
        };
        let (work, jobs) = mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("ledger writer".into())
            .spawn(move || {
                for job in jobs {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(SqliteWriter { work })
    }

    /// Runs `batch` in one write transaction (`BEGIN IMMEDIATE`), committed at `synchronous`
    /// (`FULL`: on disk before this returns). An error or a panic in `batch` rolls it back.
    pub(super) async fn transaction<T, F>(
        &self,
        synchronous: &'static str,
        batch: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut RusqliteDb<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let work: Work = Box::new(move |c: &mut Conn| {
            let _ = done.send(run(c, synchronous, batch));
        });
        let stopped = || StoreError::Unavailable("the ledger writer stopped".into());
        self.work.send(work).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn run<T>(
    c: &mut Conn,
    synchronous: &'static str,
    batch: impl FnOnce(&mut RusqliteDb<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    if c.synchronous != synchronous {
        c.conn
            .execute_batch(&format!("PRAGMA synchronous = {synchronous}"))
            .map_err(sqlite_error)?;
        c.synchronous = synchronous;
    }
    let tx = c
        .conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite_error)?;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| batch(&mut RusqliteDb(&tx))))
        .unwrap_or_else(|_| Err(StoreError::Unavailable("a ledger batch panicked".into())));
    let value = result?;
    tx.commit().map_err(sqlite_error)?;
    Ok(value)
}

/// Drives a batch written against [`Db`] on the writer thread (it never waits there).
pub(super) fn block_on<T>(batch: impl std::future::Future<Output = T>) -> T {
    futures::executor::block_on(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_commits_or_rolls_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let w = SqliteWriter::open(path.to_str().unwrap()).unwrap();
        w.transaction("FULL", |db| {
            block_on(db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)", &[]))
        })
        .await
        .unwrap();
        let failed = w
            .transaction("NORMAL", |db| {
                block_on(async {
                    db.execute("INSERT INTO t VALUES (?, ?)", &["a".into(), 1.into()])
                        .await?;
                    // The same key again: the batch fails, the first row goes with it.
                    db.execute("INSERT INTO t VALUES (?, ?)", &["a".into(), 2.into()])
                        .await
                })
            })
            .await;
        assert!(failed.is_err());
        let panicked: Result<(), _> = w
            .transaction("FULL", |db| {
                block_on(db.execute("INSERT INTO t VALUES ('b', 1)", &[])).unwrap();
                panic!("boom")
            })
            .await;
        assert!(panicked.is_err());
        let rows = w
            .transaction("FULL", |db| {
                block_on(async {
                    db.execute(
                        "INSERT INTO t VALUES (?, ?), (?, ?)",
                        &["c".into(), 3.into(), "d".into(), Param::Null],
                    )
                    .await?;
                    db.fetch("SELECT k, v FROM t ORDER BY k", &[]).await
                })
            })
            .await
            .unwrap();
        // `$N` binds the N-th parameter whatever the order of the text.
        let swapped = w
            .transaction("FULL", |db| {
                block_on(db.fetch("SELECT $2, $1, $2", &[1.into(), "two".into()]))
            })
            .await
            .unwrap();
        assert_eq!(
            swapped,
            vec![vec![
                Cell::Text("two".into()),
                Cell::Int(1),
                Cell::Text("two".into())
            ]]
        );
        assert_eq!(
            rows,
            vec![
                vec![Cell::Text("c".into()), Cell::Int(3)],
                vec![Cell::Text("d".into()), Cell::Null],
            ]
        );
    }
}
