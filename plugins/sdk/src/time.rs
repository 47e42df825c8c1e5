use core::fmt;
use core::time::Duration;

/// A point in time: microseconds since 1970-01-01T00:00:00Z, UTC.
///
/// Plugins have no clock; every timestamp they see comes from the host, and "now" is
/// the `now` of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The wire value that means "unknown" in columnar timestamp lists.
    pub(crate) const UNKNOWN_WIRE: i64 = i64::MIN;

    /// The timestamp `micros` microseconds after the Unix epoch.
    pub const fn from_unix_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// The timestamp `secs` seconds after the Unix epoch.
    pub const fn from_unix_secs(secs: i64) -> Self {
        Timestamp(secs.saturating_mul(1_000_000))
    }

    /// Microseconds since the Unix epoch.
    pub const fn unix_micros(self) -> i64 {
        self.0
    }

    /// Decodes a wire value, where `i64::MIN` means unknown.
    #[allow(dead_code)] // unused when no world feature is enabled
    #[inline]
    pub(crate) fn from_wire(micros: i64) -> Option<Self> {
        (micros != Self::UNKNOWN_WIRE).then_some(Timestamp(micros))
    }

    /// `self - duration`, saturating at the earliest representable time.
    pub fn saturating_sub(self, duration: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_micros(duration)))
    }

    /// `self + duration`, saturating at the latest representable time.
    pub fn saturating_add(self, duration: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_micros(duration)))
    }

    /// How long after `earlier` this is; zero when it is not after.
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
}

fn duration_micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}us", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_overflowing() {
        let t = Timestamp::from_unix_secs(10);
        assert_eq!(t.saturating_sub(Duration::from_secs(4)), Timestamp::from_unix_secs(6));
        assert_eq!(Timestamp::from_unix_micros(i64::MIN + 1).saturating_sub(Duration::from_secs(1)).unix_micros(), i64::MIN);
        assert_eq!(Timestamp::from_unix_secs(1).duration_since(Timestamp::from_unix_secs(5)), Duration::ZERO);
        assert_eq!(Timestamp::from_wire(i64::MIN), None);
    }
}
