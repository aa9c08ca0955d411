//! The one cleanup-on-drop type.

use std::fmt;

/// Holds a value and runs `on_drop(value)` when dropped, unless [`disarm`](Self::disarm)ed first
/// (the shape of tokio-util's `DropGuard`). Every "undo this unless it succeeded" in lockkit is
/// one of these: a waiter's queue entry, a [`Cleanup`](crate::driver::Cleanup).
///
/// ```
/// use lockkit_core::driver::DropGuard;
/// let mut undone = Vec::new();
/// {
///     let _armed = DropGuard::new("entry", |entry| undone.push(entry));
/// }
/// assert_eq!(undone, ["entry"]);
/// let kept = DropGuard::new("entry", |_| unreachable!("disarmed")).disarm();
/// assert_eq!(kept, "entry");
/// ```
#[must_use = "dropped at once, it runs its closure at once"]
pub struct DropGuard<T, F: FnOnce(T)> {
    armed: Option<(T, F)>,
}

impl<T, F: FnOnce(T)> DropGuard<T, F> {
    /// An armed guard of `value`.
    pub fn new(value: T, on_drop: F) -> Self {
        DropGuard { armed: Some((value, on_drop)) }
    }

    /// Gives the value back without running the closure.
    pub fn disarm(mut self) -> T {
        let (value, _) = self.armed.take().expect("a guard is armed until disarmed or dropped");
        value
    }

    /// The value, to change before the guard is dropped or disarmed.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.armed.as_mut().expect("a guard is armed until disarmed or dropped").0
    }

    /// The value.
    pub fn get(&self) -> &T {
        &self.armed.as_ref().expect("a guard is armed until disarmed or dropped").0
    }
}

impl<T, F: FnOnce(T)> Drop for DropGuard<T, F> {
    fn drop(&mut self) {
        if let Some((value, on_drop)) = self.armed.take() {
            on_drop(value);
        }
    }
}

impl<T: fmt::Debug, F: FnOnce(T)> fmt::Debug for DropGuard<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DropGuard").field(self.get()).finish()
    }
}
