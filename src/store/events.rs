//! The inbound event log's table: the writer (`crate::event_log`) stores each batch as one
//! page (a row holding its records as a JSON array, with the page's time span and distinct
//! providers, outcomes and reasons); `GET /v1/events` and `portcullis events` read pages
//! newest first and pick the records; pages past the retention are deleted.
//!
//! Why pages and not a row per request: at 50k requests/s a row (and an index entry) per
//! request made the log cost a quarter of the gateway's throughput on a 2-core node; one
//! insert per batch costs a few percent. A page's JSON is zstd-compressed (a fraction of its
//! size: the records repeat their keys and values), so the log's disk writes do not compete
//! with the spool's and the ledger's fsyncs. Reads decode more than they return, which an
//! operator's query can afford. Writes go through the lease connections (no wait for the
//! disk): a power loss may cost the last page of a log, never an event.

use futures::TryStreamExt;
use sqlx::Row;

use super::{Store, StoreError};

/// One answered inbound request, as the log keeps it (never a secret, signature or payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundEvent {
    /// Unix milliseconds when the request arrived.
    pub at: i64,
    pub request_id: String,
    /// The filter's name, or `unknown` for a path no filter routes.
    pub provider: String,
    /// The stored url-key key that opened it (`keys: store`).
    pub key_id: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub shadow_verdict: Option<String>,
    pub status: u16,
    pub event_id: Option<String>,
    pub client_ip: Option<String>,
    /// Body bytes read.
    pub bytes: u64,
    pub latency_us: u64,
}

/// A record as the gateway hands it over: what the request holds already, moved or shared
/// rather than copied (the log's cost on the request path is a few pointer moves).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub at: i64,
    pub request_id: String,
    pub provider: std::sync::Arc<str>,
    pub key_id: Option<String>,
    pub outcome: &'static str,
    pub reason: Option<&'static str>,
    pub shadow_verdict: Option<&'static str>,
    pub status: u16,
    pub event_id: Option<String>,
    pub client_ip: Option<std::net::IpAddr>,
    pub bytes: u64,
    pub latency_us: u64,
}

/// Which events a reader asks for; newest first, at most `limit`.
#[derive(Debug, Default, Clone)]
pub struct EventQuery {
    pub provider: Option<String>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    /// Only those at or after this unix ms.
    pub since: Option<i64>,
    pub limit: u32,
}

impl EventQuery {
    fn matches(&self, e: &InboundEvent) -> bool {
        self.provider.as_ref().is_none_or(|p| *p == e.provider)
            && self.outcome.as_ref().is_none_or(|o| *o == e.outcome)
            && self.reason.as_ref().is_none_or(|r| {
                e.reason.as_ref() == Some(r) || e.shadow_verdict.as_ref() == Some(r)
            })
            && self.since.is_none_or(|s| e.at >= s)
    }
}

/// `|a|b|`: the distinct values, between bars, as a page lists them.
fn listed<'e>(values: impl Iterator<Item = &'e str>) -> String {
    let mut distinct: Vec<&str> = Vec::new();
    for v in values {
        if !distinct.contains(&v) {
            distinct.push(v);
        }
    }
    format!("|{}|", distinct.join("|"))
}

/// zstd's fastest level: the page is written on a loaded gateway's cores.
const LEVEL: i32 = 1;

/// A record as a page stores it: a JSON array in the struct's field order (no keys to write,
/// escape and compress for every record).
type Packed<'a> = (
    i64,
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    u16,
    Option<&'a str>,
    Option<std::net::IpAddr>,
    u64,
    u64,
);
type OwnedRow = (
    i64,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    u16,
    Option<String>,
    Option<String>,
    u64,
    u64,
);

fn row(e: &NewEvent) -> Packed<'_> {
    (
        e.at,
        &e.request_id,
        &e.provider,
        e.key_id.as_deref(),
        e.outcome,
        e.reason,
        e.shadow_verdict,
        e.status,
        e.event_id.as_deref(),
        e.client_ip,
        e.bytes,
        e.latency_us,
    )
}

fn event(r: OwnedRow) -> InboundEvent {
    InboundEvent {
        at: r.0,
        request_id: r.1,
        provider: r.2,
        key_id: r.3,
        outcome: r.4,
        reason: r.5,
        shadow_verdict: r.6,
        status: r.7,
        event_id: r.8,
        client_ip: r.9,
        bytes: r.10,
        latency_us: r.11,
    }
}

/// A page's records as stored: [`Packed`] rows as JSON, zstd-compressed, base64 (TEXT in both
/// databases). The buffers and the compressor's context are kept per thread: a fresh
/// context and fresh buffers per page cost more in page faults than the compression.
fn pack(events: &[NewEvent]) -> Result<String, StoreError> {
    use base64::Engine;
    struct Packer {
        json: Vec<u8>,
        packed: Vec<u8>,
        compressor: zstd::bulk::Compressor<'static>,
    }
    thread_local! {
        static PACKER: std::cell::RefCell<Option<Packer>> = const { std::cell::RefCell::new(None) };
    }
    let failed = |e: String| StoreError::Unavailable(format!("event page: {e}"));
    PACKER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let p = match &mut *cell {
            Some(p) => p,
            None => cell.insert(Packer {
                json: Vec::new(),
                packed: Vec::new(),
                compressor: zstd::bulk::Compressor::new(LEVEL)
                    .map_err(|e| failed(e.to_string()))?,
            }),
        };
        p.json.clear();
        let rows: Vec<Packed<'_>> = events.iter().map(row).collect();
        serde_json::to_writer(&mut p.json, &rows).map_err(|e| failed(e.to_string()))?;
        p.packed.clear();
        p.packed
            .reserve(zstd::zstd_safe::compress_bound(p.json.len()));
        p.compressor
            .compress_to_buffer(&p.json, &mut p.packed)
            .map_err(|e| failed(e.to_string()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(&p.packed))
    })
}

/// The largest page [`unpack`] inflates (a page holds at most a writer's batch).
const MAX_PAGE: usize = 64 << 20;

fn unpack(stored: &str) -> Result<Vec<InboundEvent>, StoreError> {
    use base64::Engine;
    let broken = |e: String| StoreError::Unavailable(format!("an event page does not decode: {e}"));
    let packed = base64::engine::general_purpose::STANDARD
        .decode(stored)
        .map_err(|e| broken(e.to_string()))?;
    let json = zstd::bulk::decompress(&packed, MAX_PAGE).map_err(|e| broken(e.to_string()))?;
    let rows: Vec<OwnedRow> = serde_json::from_slice(&json).map_err(|e| broken(e.to_string()))?;
    Ok(rows.into_iter().map(event).collect())
}

impl Store {
    /// Writes `events` as one page.
    pub async fn insert_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (
            events.iter().map(|e| e.at).min(),
            events.iter().map(|e| e.at).max(),
        ) else {
            return Ok(());
        };
        let records = pack(events)?;
        let providers = listed(events.iter().map(|e| &*e.provider));
        let outcomes = listed(events.iter().map(|e| e.outcome));
        let reasons = listed(
            events
                .iter()
                .flat_map(|e| [e.reason, e.shadow_verdict])
                .flatten(),
        );
        let (_writing, mut tx) = self.lease().await?.tx().await?;
        sqlx::query(
            "INSERT INTO inbound_event_pages \
             (first_at, last_at, count, providers, outcomes, reasons, records) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(first)
        .bind(last)
        .bind(events.len() as i32)
        .bind(providers)
        .bind(outcomes)
        .bind(reasons)
        .bind(records)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The events `query` selects, newest first. Pages are read newest first (by their last
    /// record) until no unread page can hold a record newer than the `limit`-th found; pages
    /// of several nodes may overlap in time, so a page is never assumed to be older whole.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<InboundEvent>, StoreError> {
        let pool = self.pool().await?;
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        // A coarse pre-filter (`_` matches any character in LIKE); records are matched exactly.
        for (column, value) in [
            ("providers", &query.provider),
            ("outcomes", &query.outcome),
            ("reasons", &query.reason),
        ] {
            if let Some(v) = value {
                binds.push(format!("%|{v}|%"));
                conditions.push(format!("{column} LIKE ${}", binds.len()));
            }
        }
        if query.since.is_some() {
            conditions.push(format!("last_at >= ${}", binds.len() + 1));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT last_at, records FROM inbound_event_pages {filter} ORDER BY last_at DESC"
        );
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b);
        }
        if let Some(since) = query.since {
            q = q.bind(since);
        }
        let limit = query.limit as usize;
        if limit == 0 {
            return Ok(Vec::new());
        }
        // (at, page read order reversed, position in page): newest first, ties as logged.
        let mut found: Vec<((i64, i64, usize), InboundEvent)> = Vec::new();
        let mut rows = q.fetch(pool);
        let mut page = 0i64;
        while let Some(row) = rows.try_next().await? {
            let last_at: i64 = row.try_get(0)?;
            if found.len() >= limit {
                found.sort_by_key(|f| std::cmp::Reverse(f.0));
                found.truncate(limit);
                if found[limit - 1].0 .0 > last_at {
                    break;
                }
            }
            let events = unpack(&row.try_get::<String, _>(1)?)?;
            page -= 1;
            found.extend(
                events
                    .into_iter()
                    .enumerate()
                    .filter(|(_, e)| query.matches(e))
                    .map(|(i, e)| ((e.at, page, i), e)),
            );
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        found.truncate(limit);
        Ok(found.into_iter().map(|(_, e)| e).collect())
    }

    /// Deletes the pages whose every record is older than `cutoff` (unix ms); returns how
    /// many pages went. (A page's older records outlive the cutoff by at most its span.)
    pub async fn purge_events(&self, cutoff: i64) -> Result<u64, StoreError> {
        let (_writing, mut tx) = self.lease().await?.tx().await?;
        let gone = sqlx::query("DELETE FROM inbound_event_pages WHERE last_at < $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_read_back_as_written_and_much_smaller() {
        let provider: std::sync::Arc<str> = "github".into();
        let events: Vec<NewEvent> = (0..1000)
            .map(|i| NewEvent {
                at: 1_796_256_000_000 + i,
                request_id: format!("{:016x}", i * 7919),
                provider: provider.clone(),
                key_id: (i % 2 == 0).then(|| "key_1".into()),
                outcome: "accepted",
                reason: None,
                shadow_verdict: (i % 3 == 0).then_some("invalid_signature"),
                status: 202,
                event_id: Some(format!("d3b07384-{i:08}")),
                client_ip: Some(std::net::IpAddr::from([192, 30, 252, 41])),
                bytes: 1187,
                latency_us: 950 + i as u64 % 300,
            })
            .collect();
        let stored = pack(&events).unwrap();
        let read = unpack(&stored).unwrap();
        assert_eq!(read.len(), events.len());
        for (r, e) in read.iter().zip(&events) {
            assert_eq!(
                (
                    r.at,
                    &*r.request_id,
                    &*r.provider,
                    r.key_id.as_deref(),
                    &*r.outcome
                ),
                (
                    e.at,
                    &*e.request_id,
                    &*e.provider,
                    e.key_id.as_deref(),
                    e.outcome
                )
            );
            assert_eq!(
                (r.reason.as_deref(), r.shadow_verdict.as_deref()),
                (e.reason, e.shadow_verdict)
            );
            assert_eq!(
                (r.status, r.event_id.as_ref(), r.bytes, r.latency_us),
                (e.status, e.event_id.as_ref(), e.bytes, e.latency_us)
            );
            assert_eq!(r.client_ip.as_deref(), Some("192.30.252.41"));
        }
        let json: usize = read
            .iter()
            .map(|e| crate::event_log::json(e).to_string().len())
            .sum();
        assert!(stored.len() * 4 < json, "{} of {json}", stored.len());
        assert!(unpack("not base64!").is_err() && unpack("AAAA").is_err());
    }

    #[test]
    fn a_page_lists_each_value_once_between_bars() {
        assert_eq!(listed(["a", "b", "a"].into_iter()), "|a|b|");
        assert_eq!(listed(std::iter::empty()), "||");
    }
}
