//! `CacheEntry`: one cached value with its optional expiry and tags, as stored in a snapshot.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One cache entry: a value, an optional absolute expiry, and optional tags.
///
/// In the snapshot file an entry is `{ "key", "value", "expiresAt"?, "tags"? }`; the key
/// lives outside the entry because callers keep entries in their own maps.
///
/// ```
/// use keel_snapshot::CacheEntry;
///
/// let entry = CacheEntry::new("hello").expiring_at(1_900_000_000_000).tagged(["greeting"]);
/// assert_eq!(entry.expires_at, Some(1_900_000_000_000));
/// assert!(entry.is_expired_at(1_900_000_000_000));
/// assert!(!entry.is_expired_at(1_899_999_999_999));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheEntry<V> {
    /// The cached value; any type serde can serialize (and deserialize, to restore it).
    pub value: V,
    /// Absolute expiry in milliseconds since the Unix epoch; `None` never expires.
    pub expires_at: Option<u64>,
    /// Tags the cache uses for group invalidation; `None` is written as no `tags` field.
    pub tags: Option<Vec<String>>,
}

impl<V> CacheEntry<V> {
    /// An entry that never expires and has no tags.
    ///
    /// ```
    /// let entry = keel_snapshot::CacheEntry::new(42);
    /// assert_eq!((entry.value, entry.expires_at, entry.tags), (42, None, None));
    /// ```
    pub fn new(value: V) -> Self {
        Self {
            value,
            expires_at: None,
            tags: None,
        }
    }

    /// Sets the absolute expiry, in milliseconds since the Unix epoch.
    ///
    /// ```
    /// let entry = keel_snapshot::CacheEntry::new(()).expiring_at(5);
    /// assert_eq!(entry.expires_at, Some(5));
    /// ```
    #[must_use]
    pub fn expiring_at(mut self, epoch_millis: u64) -> Self {
        self.expires_at = Some(epoch_millis);
        self
    }

    /// Sets the tags.
    ///
    /// ```
    /// let entry = keel_snapshot::CacheEntry::new(()).tagged(["a", "b"]);
    /// assert_eq!(entry.tags, Some(vec!["a".to_string(), "b".to_string()]));
    /// ```
    #[must_use]
    pub fn tagged<T: Into<String>>(mut self, tags: impl IntoIterator<Item = T>) -> Self {
        self.tags = Some(tags.into_iter().map(Into::into).collect());
        self
    }

    /// Whether the entry has expired at `now_millis` (epoch milliseconds).
    ///
    /// An entry expires at its `expires_at` instant: `expires_at <= now` is expired.
    ///
    /// ```
    /// let entry = keel_snapshot::CacheEntry::new(()).expiring_at(10);
    /// assert!(!entry.is_expired_at(9));
    /// assert!(entry.is_expired_at(10));
    /// ```
    pub fn is_expired_at(&self, now_millis: u64) -> bool {
        self.expires_at.is_some_and(|expiry| expiry <= now_millis)
    }
}

/// Milliseconds since the Unix epoch; times before the epoch count as 0 and times past
/// `u64::MAX` milliseconds saturate, since neither can occur on a sane clock.
pub(crate) fn epoch_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// The inverse of [`epoch_millis`].
pub(crate) fn from_epoch_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}
