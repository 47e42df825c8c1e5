//! Paged reads of the state for the HTTP API: a page of repository paths at a time, by
//! path, so a listing over a million repositories never loads them all.

use rusqlite::params;

use super::{CleanupStatus, Store};

impl Store {
    /// Up to `limit` repository paths after `after` (by path), in `status` when given,
    /// containing `search` when given.
    pub fn repository_paths(
        &self,
        status: Option<CleanupStatus>,
        search: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<String>> {
        let conn = self.lock();
        // instr, not LIKE: `_` and `%` are ordinary characters in what an operator searches.
        let mut stmt = conn.prepare_cached(
            "SELECT path FROM repositories
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR instr(path, ?2) > 0) AND (?3 IS NULL OR path > ?3)
             ORDER BY path LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![status.map(CleanupStatus::as_str), search, after, limit as i64], |r| r.get(0))?;
        rows.collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("reading repositories in {}: {e}", self.describe()))
    }

    /// Whether the database answers (`/readyz`).
    pub fn ping(&self) -> anyhow::Result<()> {
        self.lock()
            .query_row("SELECT count(*) FROM policies", [], |r| r.get::<_, i64>(0))
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("the state database {} does not answer: {e}", self.describe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timestamp;
    use crate::store::StateStore;

    #[test]
    fn pages_follow_the_path_order_and_filters_narrow_them() {
        let store = Store::in_memory().unwrap();
        store.upsert_policy("p", true, std::time::Duration::from_secs(86_400), Timestamp::now()).unwrap();
        let paths: Vec<String> = ["a/x_1", "a/y", "b/x_1", "b/z", "c/x%"].iter().map(|s| s.to_string()).collect();
        store.add_repositories("p", &paths).unwrap();
        assert_eq!(store.repository_paths(None, None, None, 2).unwrap(), ["a/x_1", "a/y"]);
        assert_eq!(store.repository_paths(None, None, Some("a/y"), 2).unwrap(), ["b/x_1", "b/z"]);
        assert_eq!(store.repository_paths(None, None, Some("b/z"), 2).unwrap(), ["c/x%"]);
        assert_eq!(store.repository_paths(None, Some("x_"), None, 10).unwrap(), ["a/x_1", "b/x_1"], "`_` is literal");
        assert_eq!(store.repository_paths(None, Some("%"), None, 10).unwrap(), ["c/x%"], "`%` is literal");
        assert!(store.repository_paths(Some(CleanupStatus::Failed), None, None, 10).unwrap().is_empty());
        assert_eq!(store.repository_paths(Some(CleanupStatus::Unscheduled), Some("b/"), None, 10).unwrap(), ["b/x_1", "b/z"]);
        store.ping().unwrap();
    }
}
