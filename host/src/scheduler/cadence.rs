//! Cadences, due policies, and GitLab's claim order, as pure functions.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::model::Timestamp;
use crate::store::{CleanupStatus, PolicyState, RepositoryState};

/// How often a policy runs: GitLab's `1d`, `7d`, `14d`, `1month` (30 days), `3month` (90
/// days), or any duration humantime reads (`12h`, `2d 6h`), at least a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence(Duration);

impl Cadence {
    pub const MINIMUM: Duration = Duration::from_secs(60);

    pub fn every(self) -> Duration {
        self.0
    }

    /// When a policy that runs at `now` runs next (GitLab: `now + cadence`).
    pub fn next_after(self, now: Timestamp) -> Timestamp {
        now.saturating_add(self.0)
    }
}

impl FromStr for Cadence {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        const DAY: u64 = 86_400;
        let d = match s.trim() {
            "1month" => Duration::from_secs(30 * DAY),
            "3month" => Duration::from_secs(90 * DAY),
            other => humantime::parse_duration(other)
                .map_err(|e| anyhow::anyhow!("`{s}` is not a cadence ({e}); use 1d, 7d, 14d, 1month, 3month or a duration such as 12h"))?,
        };
        if d < Self::MINIMUM {
            anyhow::bail!("cadence `{s}` is shorter than a minute; policies run at most once a minute");
        }
        Ok(Cadence(d))
    }
}

impl fmt::Display for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// GitLab's "requires cleanup": the policy is enabled and due, the repository is unscheduled
/// or scheduled, no backoff is pending, and it has not started since the policy became due.
pub fn requires_cleanup(policy: &PolicyState, repo: &RepositoryState, now: Timestamp) -> bool {
    policy.enabled
        && policy.next_run_at < now
        && matches!(repo.status, CleanupStatus::Unscheduled | CleanupStatus::Scheduled)
        && repo.next_attempt_at.is_none_or(|t| t <= now)
        && repo.started_at.is_none_or(|s| s < policy.next_run_at)
}

/// Whether `repo` may be claimed at all, and in which tier: `Some(0)` requires cleanup,
/// `Some(1)` is unfinished work to resume, `None` is not claimable now.
fn tier(policy: &PolicyState, repo: &RepositoryState, now: Timestamp) -> Option<u8> {
    if requires_cleanup(policy, repo, now) {
        Some(0)
    } else if policy.enabled && repo.status == CleanupStatus::Unfinished && repo.next_attempt_at.is_none_or(|t| t <= now) {
        Some(1)
    } else {
        None
    }
}

/// GitLab's claim order between two repositories (with their policies): `Less` means `a` is
/// claimed first. Not claimable sorts last. The state store's claim query must agree with
/// this (tested against each other).
pub fn claim_order(a: (&PolicyState, &RepositoryState), b: (&PolicyState, &RepositoryState), now: Timestamp) -> Ordering {
    let key = |(p, r): (&PolicyState, &RepositoryState)| {
        let tier = tier(p, r, now);
        // Unscheduled before scheduled, then the oldest start (never started first).
        (tier.is_none(), tier, r.status == CleanupStatus::Scheduled, r.started_at.is_some(), r.started_at)
    };
    key(a).cmp(&key(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_cadences_and_durations_parse() {
        let days = |s: &str| s.parse::<Cadence>().unwrap().every().as_secs() / 86_400;
        assert_eq!([days("1d"), days("7d"), days("14d"), days("1month"), days("3month")], [1, 7, 14, 30, 90]);
        assert_eq!("12h".parse::<Cadence>().unwrap().every(), Duration::from_secs(12 * 3600));
        let e = "30s".parse::<Cadence>().unwrap_err().to_string();
        assert!(e.contains("shorter than a minute"), "{e}");
        let e = "weekly".parse::<Cadence>().unwrap_err().to_string();
        assert!(e.contains("1month") && e.contains("weekly"), "{e}");
    }

    #[test]
    fn next_run_is_now_plus_cadence() {
        let now = Timestamp::parse_rfc3339("2026-11-20T12:00:00Z").unwrap();
        assert_eq!("7d".parse::<Cadence>().unwrap().next_after(now).to_rfc3339(), "2026-11-27T12:00:00Z");
    }
}
