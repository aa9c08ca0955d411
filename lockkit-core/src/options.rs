//! What callers choose per lock, what a backend handle defaults to, and what a backend promises.

use std::time::Duration;

use crate::name::{LockName, Namespace};
use crate::{FencingToken, LockUrl, Result};

/// How long an acquire waits for a lock held elsewhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wait {
    /// Until granted (or the acquire future is dropped).
    #[default]
    Forever,
    /// Not at all: try once.
    NoWait,
    /// At most this long, then fail with [`Error::Timeout`](crate::Error::Timeout).
    Timeout(Duration),
}

/// Per-acquire choices; anything left `None` comes from the backend handle's [`Settings`].
///
/// ```
/// use std::time::Duration;
/// use lockkit_core::{LockOptions, Wait};
/// let options = LockOptions::new()
///     .ttl(Duration::from_secs(10))
///     .wait(Wait::Timeout(Duration::from_secs(3)))
///     .holder("report-builder on host-7");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOptions {
    /// How long the grant outlives its holder's last refresh (default: the handle's TTL).
    pub ttl: Option<Duration>,
    /// How long to wait for the lock (default: [`Wait::Forever`]).
    pub wait: Wait,
    /// How often the lease is refreshed (default: TTL / 3).
    pub refresh_interval: Option<Duration>,
    /// Who holds the lock, stored with the grant where the backend can (default:
    /// `<hostname> pid <pid>`), shown by [`status`](crate::DistributedLock::status).
    pub holder: Option<String>,
    /// What the acquire asks for: set by [`campaign_with`](crate::DistributedLock::campaign_with),
    /// [`Semaphore`](crate::Semaphore) and [`RwLock`](crate::RwLock) ([`GrantRequest::kind`]).
    pub(crate) kind: GrantKind,
}

/// What a grant holds: an exclusive lock, an election's leadership, one of a semaphore's
/// permits, or a read-write lock's shared or exclusive hold.
///
/// A name is used as one kind (a lock and an election of one name are one; a semaphore has one
/// number of permits): a backend that stores what a name is refuses another kind with
/// [`Error::InvalidOptions`](crate::Error::InvalidOptions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrantKind {
    /// An exclusive lock ([`acquire`](crate::DistributedLock::acquire)).
    #[default]
    Lock,
    /// A candidate of the election of this name ([`campaign`](crate::DistributedLock::campaign)):
    /// a lock whose holder leads. A driver grants it as a lock; one whose backend's usual
    /// election recipe names its contenders apart from its lock recipe may name it as that
    /// recipe does (ZooKeeper's `recipe=curator-latch`), ordering both kinds in one line.
    Candidate,
    /// One of `permits` permits of a counting semaphore ([`Semaphore`](crate::Semaphore)).
    Permit {
        /// How many may hold at once.
        permits: u32,
    },
    /// A shared hold of a read-write lock ([`RwLock::read`](crate::RwLock::read)).
    Read,
    /// The exclusive hold of a read-write lock ([`RwLock::write`](crate::RwLock::write)).
    Write,
}

impl GrantKind {
    /// Whether a holder of `self` may hold beside a holder of `other`, both of one name.
    pub fn shares_with(self, other: GrantKind) -> bool {
        matches!(
            (self, other),
            (GrantKind::Permit { .. }, GrantKind::Permit { .. }) | (GrantKind::Read, GrantKind::Read)
        )
    }

    /// Whether `self` and `other` are holds of the same kind of primitive with the same shape
    /// (a lock or an election; a semaphore of the same number of permits; a read-write lock).
    pub fn same_primitive(self, other: GrantKind) -> bool {
        use GrantKind::*;
        match (self, other) {
            (Permit { permits: a }, Permit { permits: b }) => a == b,
            (Lock | Candidate, Lock | Candidate) | (Read | Write, Read | Write) => true,
            _ => false,
        }
    }

    /// What a name used this way is, for messages: `a lock`, `a semaphore of 4 permits`, …
    pub fn primitive(self) -> String {
        match self {
            GrantKind::Lock | GrantKind::Candidate => "a lock (or election)".into(),
            GrantKind::Permit { permits } => format!("a semaphore of {permits} permits"),
            GrantKind::Read | GrantKind::Write => "a read-write lock".into(),
        }
    }
}

impl LockOptions {
    /// Options with every default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the wait policy.
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// Sets the refresh interval: at most half of how long a lease counts as held after a refresh
    /// (the TTL, or a backend's cap below it, minus the [safety margin](crate::safety_margin)),
    /// so that a failed refresh can be retried before the deadline. Checked at each acquire
    /// ([`Error::InvalidOptions`](crate::Error::InvalidOptions)).
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = Some(interval);
        self
    }

    /// Sets the holder metadata.
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }
}

/// The defaults of one backend handle, read from its URL (`?ttl=`, `?refresh=`, `?timeout=`,
/// `?namespace=` or the path).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// The handle's URL, with credentials redacted (what `Display` shows).
    pub url: String,
    /// Default TTL of a grant (`ttl`, default 15 s).
    pub ttl: Duration,
    /// Default refresh interval (`refresh`, default TTL / 3).
    pub refresh_interval: Option<Duration>,
    /// Bound on connecting and on each request to the server (`timeout`, default 5 s).
    pub timeout: Duration,
    /// Prefix of every key (`namespace`, or the URL path).
    pub namespace: Namespace,
    /// The longest a lease counts as valid after its last confirmed refresh, whatever its TTL
    /// (`None`, the default: the TTL). A driver caps it, with
    /// [`cap_validity`](Self::cap_validity), where the server may end a lease before its TTL
    /// without the holder hearing of it and keeps others out only for a known time after that
    /// (Consul's lock-delay). The default refresh interval is a third of the validity, and where
    /// the cap is below the TTL one set explicitly must be at most half of it.
    pub max_validity: Option<Duration>,
}

impl Settings {
    /// The default TTL.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
    /// The default request timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Reads the common options of a URL.
    pub fn from_url(url: &LockUrl) -> Result<Self> {
        let settings = Settings {
            url: url.to_string(),
            ttl: url.duration_option("ttl")?.unwrap_or(Self::DEFAULT_TTL),
            refresh_interval: url.duration_option("refresh")?,
            timeout: url.duration_option("timeout")?.unwrap_or(Self::DEFAULT_TIMEOUT),
            namespace: url.namespace(),
            max_validity: None,
        };
        settings.check_timing(settings.ttl, settings.refresh_interval).map_err(|reason| url.invalid(reason))?;
        if settings.timeout.is_zero() {
            return Err(url.invalid("`timeout` must be above zero"));
        }
        if settings.timeout > MAX_DURATION {
            return Err(url.invalid(format!("`timeout` can be at most {MAX_DURATION:?} (8760h, a year)")));
        }
        Ok(settings)
    }

    /// Caps [`max_validity`](Self::max_validity) at `cap` and checks the handle's TTL and
    /// refresh interval against it: the error says why they do not fit (drivers add what to set).
    pub fn cap_validity(&mut self, cap: Duration) -> std::result::Result<(), String> {
        self.max_validity = Some(cap);
        self.check_timing(self.ttl, self.refresh_interval).map(|_| ())
    }

    /// The refresh interval of a grant with this TTL and the handle's defaults: `refresh` when
    /// set, else a third of how long a lease counts as held after a refresh (the TTL, or
    /// [`max_validity`](Self::max_validity) where that is shorter).
    pub fn refresh_for(&self, ttl: Duration) -> Duration {
        self.refresh_interval.unwrap_or(self.validity(ttl) / 3)
    }

    fn validity(&self, ttl: Duration) -> Duration {
        self.max_validity.map_or(ttl, |cap| cap.min(ttl))
    }

    /// Resolves the TTL and refresh interval of one acquire, or says why they do not fit.
    pub(crate) fn check_timing(
        &self,
        ttl: Duration,
        refresh: Option<Duration>,
    ) -> std::result::Result<(Duration, Duration), String> {
        if ttl < MIN_VALIDITY {
            return Err(format!("TTL {ttl:?} is too short; use at least {MIN_VALIDITY:?}"));
        }
        if ttl > MAX_DURATION {
            return Err(format!("TTL {ttl:?} is too long; use at most {MAX_DURATION:?} (8760h, a year)"));
        }
        let validity = self.validity(ttl);
        if validity < MIN_VALIDITY {
            return Err(format!(
                "a lease would count as held for only {validity:?} after each refresh, too short to refresh in \
                 time; it must be at least {MIN_VALIDITY:?}"
            ));
        }
        let refresh = refresh.unwrap_or(validity / 3);
        if refresh.is_zero() || refresh >= ttl {
            return Err(format!(
                "refresh interval {refresh:?} must be above zero and below the TTL {ttl:?}; the default is TTL / 3"
            ));
        }
        // A lease counts as held for `local` after each refresh was sent. A refresh must leave
        // room for at least one retry before that deadline: at most half of it.
        let local = validity - crate::safety_margin(validity);
        if refresh > local / 2 {
            return Err(format!(
                "refresh interval {refresh:?} is too long: a lease counts as held for only {local:?} after each \
                 refresh ({validity:?} minus the safety margin), and a refresh must leave room for one retry before \
                 that, so use at most {:?}, or leave `refresh` unset (the default is a third of {validity:?})",
                local / 2
            ));
        }
        Ok((ttl, refresh))
    }
}

/// The shortest TTL, and the shortest time a lease may count as valid after a refresh.
const MIN_VALIDITY: Duration = Duration::from_millis(100);

/// The longest TTL or request timeout: deadlines are `Instant`s, and an `Instant` plus a
/// duration of billions of hours overflows (a panic) where an error was due.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// One acquire, as the core hands it to a driver: validated and with every default resolved.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GrantRequest {
    /// The lock.
    pub name: LockName,
    /// The grant's TTL.
    pub ttl: Duration,
    /// How often its lease is refreshed.
    pub refresh_interval: Duration,
    /// Holder metadata to store with the grant.
    pub holder: String,
    /// `false`: try once and answer `None` when the lock is held; `true`: wait until granted.
    /// (A bounded wait is the core dropping the driver's future at the deadline, so every
    /// driver's wait must be cancel safe.)
    pub wait: bool,
    /// What the grant holds. The core hands a driver only the kinds its
    /// [`capabilities`](crate::driver::LockBackend::capabilities) declare (`semaphores`,
    /// `rw_locks`); [`Lock`](GrantKind::Lock) and [`Candidate`](GrantKind::Candidate) always.
    pub kind: GrantKind,
}

impl GrantRequest {
    /// The request of one acquire of `name` with `options` on a handle with `settings`: the
    /// name validated, the TTL and refresh interval resolved and checked
    /// ([`Error::InvalidOptions`](crate::Error::InvalidOptions) when they do not fit), the
    /// holder defaulted. The only way to make one, so a driver never sees an unchecked request.
    pub fn new(settings: &Settings, name: &str, options: &LockOptions) -> Result<Self> {
        let name = LockName::new(name)?;
        let (ttl, refresh_interval) = settings
            .check_timing(options.ttl.unwrap_or(settings.ttl), options.refresh_interval.or(settings.refresh_interval))
            .map_err(|reason| crate::Error::InvalidOptions { reason: format!("lock `{name}`: {reason}") })?;
        let holder = options.holder.clone().unwrap_or_else(default_holder);
        let wait = options.wait != Wait::NoWait;
        if options.kind == (GrantKind::Permit { permits: 0 }) {
            return Err(crate::Error::InvalidOptions {
                reason: format!("semaphore `{name}`: 0 permits would never grant one; give at least 1"),
            });
        }
        Ok(GrantRequest { name, ttl, refresh_interval, holder, wait, kind: options.kind })
    }

    /// The guard of this request's grant: what a driver's `grant` returns once it holds the
    /// lock, with the server's `token`, the `lease` it hangs on, its loss `signal` (from
    /// [`KeptLease::grant_signal`](crate::driver::KeptLease::grant_signal)) and the `grant` that releases it.
    pub fn granted(
        &self,
        backend: &'static str,
        token: FencingToken,
        lease: std::sync::Arc<crate::driver::KeptLease>,
        signal: crate::LossSignal,
        grant: impl crate::driver::Grant,
    ) -> crate::LockGuard {
        let parts = crate::guard::GuardParts::new(backend, self.name.clone(), token, lease, signal, Box::new(grant));
        crate::LockGuard::new(parts)
    }
}

/// What a backend guarantees, queryable at run time through
/// [`DistributedLock::capabilities`](crate::DistributedLock::capabilities).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Waiters are granted in the order they arrived.
    pub fair: bool,
    /// Fencing tokens are minted by the server, not by a client.
    pub server_fencing: bool,
    /// The backend expires a grant whose holder stopped refreshing it (TTL on the server).
    pub server_expiry: bool,
    /// A holder's process dying releases its grants (at once or at TTL).
    pub crash_release: bool,
    /// Holders in different processes (and hosts, for network backends) exclude each other.
    pub cross_process: bool,
    /// Many locks of one handle share one lease, refreshed once for all.
    pub shared_lease: bool,
    /// Waiters are woken by the backend when the lock is released, instead of polling.
    pub push_wakeups: bool,
    /// Holder metadata is stored with the grant and visible to [`status`](crate::DistributedLock::status).
    pub holder_metadata: bool,
    /// Elections can be followed: [`observe`](crate::DistributedLock::observe) is told of every
    /// change of leader by the backend, and a leader can
    /// [`proclaim`](crate::Leadership::proclaim) a new value. (Campaigning, `leader` and
    /// resigning work on every backend.)
    pub observe: bool,
    /// Counting semaphores (`locks.semaphore(name, permits)`, a [`Semaphore`](crate::Semaphore)).
    pub semaphores: bool,
    /// Read-write locks (`locks.rw_lock(name)`, an [`RwLock`](crate::RwLock)).
    pub rw_locks: bool,
}

impl Capabilities {
    /// Every guarantee; a backend says what it lacks: `Capabilities { fair: false, ..Capabilities::ALL }`.
    pub const ALL: Capabilities = Capabilities {
        fair: true,
        server_fencing: true,
        server_expiry: true,
        crash_release: true,
        cross_process: true,
        shared_lease: true,
        push_wakeups: true,
        holder_metadata: true,
        observe: true,
        semaphores: true,
        rw_locks: true,
    };
}

/// What [`status`](crate::DistributedLock::status) found about a lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockStatus {
    /// Whether anyone holds it.
    pub held: bool,
    /// The holder metadata, where the backend stores it.
    pub holder: Option<String>,
    /// The current holder's fencing token, where the backend can tell.
    pub token: Option<FencingToken>,
    /// Time left before the grant expires unless refreshed, where the backend can tell.
    pub ttl_left: Option<Duration>,
    /// How many contenders wait in line for it, where the backend keeps a line (etcd,
    /// ZooKeeper, Redis, memory; not Consul or file).
    pub waiting: Option<usize>,
    /// Every holder, where the backend lists them: a semaphore's permits, a read-write lock's
    /// readers or writer (`holder` and `token` are the first of them), a lock's one holder.
    pub holders: Vec<Holding>,
    /// A semaphore's number of permits, where the backend stores it.
    pub permits: Option<u32>,
}

/// One holder of a name, as [`LockStatus::holders`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holding {
    /// What it holds.
    pub kind: GrantKind,
    /// Its holder metadata, where the backend stores it.
    pub holder: Option<String>,
    /// Its fencing token, where the backend can tell.
    pub token: Option<FencingToken>,
}

impl Holding {
    /// A holder of `kind`.
    pub fn new(kind: GrantKind, holder: Option<String>, token: Option<FencingToken>) -> Self {
        Holding { kind, holder, token }
    }
}

impl LockStatus {
    /// Nobody holds the lock.
    pub fn free() -> Self {
        Self::default()
    }

    /// Someone holds it.
    pub fn held(holder: Option<String>, token: Option<FencingToken>, ttl_left: Option<Duration>) -> Self {
        LockStatus { held: true, holder, token, ttl_left, ..Self::default() }
    }

    /// The status of a name with these holders (none: free), first holder first; `holder`,
    /// `token` and `held` follow from them.
    pub fn holders(holders: Vec<Holding>, ttl_left: Option<Duration>) -> Self {
        let first = holders.first();
        LockStatus {
            held: first.is_some(),
            holder: first.and_then(|h| h.holder.clone()),
            token: first.and_then(|h| h.token),
            ttl_left: first.and(ttl_left),
            holders,
            ..Self::default()
        }
    }

    /// The same, with a semaphore's number of permits.
    pub fn permits(self, permits: Option<u32>) -> Self {
        LockStatus { permits, ..self }
    }

    /// The same, with how many wait in line.
    pub fn waiting(self, waiting: usize) -> Self {
        LockStatus { waiting: Some(waiting), ..self }
    }
}

/// The holder metadata used when the caller gives none: `<hostname> pid <pid>`.
pub fn default_holder() -> String {
    static HOLDER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!("{} pid {}", gethostname::gethostname().to_string_lossy(), std::process::id())
    });
    HOLDER.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_url() {
        let url = LockUrl::parse("memory://x/app?ttl=2s&refresh=500ms&timeout=1s").unwrap();
        let s = Settings::from_url(&url).unwrap();
        assert_eq!(
            (s.ttl, s.refresh_interval, s.timeout),
            (Duration::from_secs(2), Some(Duration::from_millis(500)), Duration::from_secs(1))
        );
        assert_eq!(s.namespace.to_string(), "app");
        let d = Settings::from_url(&LockUrl::parse("memory://").unwrap()).unwrap();
        assert_eq!((d.ttl, d.timeout), (Settings::DEFAULT_TTL, Settings::DEFAULT_TIMEOUT));
    }

    #[test]
    fn refresh_must_be_below_ttl() {
        for (url, expected) in [
            ("memory://?ttl=1s&refresh=1s", "must be above zero and below the TTL"),
            ("memory://?ttl=10ms", "too short"),
            ("memory://?timeout=0s", "above zero"),
        ] {
            let err = Settings::from_url(&LockUrl::parse(url).unwrap()).unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
        }
    }

    /// A refresh interval that leaves no room for a retry before the local deadline (above half
    /// of it), and TTLs or timeouts so long that a deadline would overflow, are refused at
    /// connect and per acquire.
    #[test]
    fn refresh_without_room_for_a_retry_and_huge_durations_are_refused() {
        for (url, expected) in [
            ("memory://?ttl=1s&refresh=960ms", "room for one retry"),
            ("memory://?ttl=1s&refresh=940ms", "use at most 474ms"),
            ("memory://?ttl=1s&refresh=475ms", "use at most 474ms"),
            ("memory://?ttl=2s&refresh=1950ms", "room for one retry"),
            ("memory://?ttl=4000000000000000h", "too long"),
            ("memory://?timeout=4000000000000000h", "at most"),
        ] {
            let err = Settings::from_url(&LockUrl::parse(url).unwrap()).unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
        }
        assert!(Settings::from_url(&LockUrl::parse("memory://?ttl=1s&refresh=474ms").unwrap()).is_ok());
        let s = Settings::from_url(&LockUrl::parse("memory://?ttl=1s").unwrap()).unwrap();
        assert!(s.check_timing(Duration::MAX, None).unwrap_err().contains("too long"));
        assert!(s.check_timing(Duration::from_secs(1), Some(Duration::from_millis(990))).is_err());
    }

    /// The same checks on `LockOptions` are a configuration error (the CLI's exit 64), not a
    /// backend error, and nothing panics on a duration that would overflow an `Instant`.
    #[tokio::test]
    async fn lock_options_out_of_range_are_an_options_error() {
        use crate::Error;
        let locks = crate::memory::connect(&LockUrl::parse("memory://options-range").unwrap()).unwrap();
        for options in [
            LockOptions::new().ttl(Duration::MAX),
            LockOptions::new().ttl(Duration::from_millis(50)),
            LockOptions::new().ttl(Duration::from_secs(2)).refresh_interval(Duration::from_millis(1950)),
            LockOptions::new().refresh_interval(Duration::ZERO),
        ] {
            match locks.acquire_with("x", &options).await {
                Err(Error::InvalidOptions { reason }) => assert!(reason.contains("lock `x`"), "{reason}"),
                other => panic!("{options:?}: {:?}", other.map(|g| g.is_some())),
            }
        }
    }

    #[test]
    fn default_holder_names_this_process() {
        assert!(default_holder().ends_with(&format!("pid {}", std::process::id())));
    }

    /// A validity capped below the TTL sets the default refresh interval (a third of it) and
    /// refuses a refresh interval above half of it (minus the margin), or a validity below 100 ms.
    #[test]
    fn a_capped_validity_sets_and_bounds_the_refresh_interval() {
        let mut s = Settings::from_url(&LockUrl::parse("memory://?ttl=3s").unwrap()).unwrap();
        s.cap_validity(Duration::from_millis(900)).unwrap();
        assert_eq!(s.refresh_for(s.ttl), Duration::from_millis(300));
        assert_eq!(s.check_timing(s.ttl, None), Ok((s.ttl, Duration::from_millis(300))));
        let err = s.check_timing(s.ttl, Some(Duration::from_millis(500))).unwrap_err();
        assert!(err.contains("too long") && err.contains("426.5ms"), "{err}");
        assert!(s.cap_validity(Duration::from_millis(50)).unwrap_err().contains("at least 100ms"));
        let mut explicit = Settings::from_url(&LockUrl::parse("memory://?ttl=3s&refresh=1s").unwrap()).unwrap();
        assert!(explicit.cap_validity(Duration::from_millis(1500)).unwrap_err().contains("use at most 711.5ms"));
    }
}
