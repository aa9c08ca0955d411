//! Requests that finish even when their caller stops waiting, for drivers' cancel paths: an
//! acquire dropped while its write is in flight must clean up only *after* that write landed
//! (a cleanup sent alongside could land first and leave the write behind as an orphan).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

/// A request polled in place by its caller (no task of its own, so no hop between threads) and
/// handed to the Tokio runtime to finish if dropped unfinished. Made by [`unabandoned`].
pub struct Unabandoned<T: Send + 'static> {
    request: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
}

/// Resolves once the request of an [`Unabandoned`] has finished, whether its caller waited for
/// it or it finished in the background, and tells whether it was answered.
#[derive(Debug)]
pub struct Finished(oneshot::Receiver<bool>);

/// Wraps `request` so that it completes even if the returned future is dropped mid-way; the
/// [`Finished`] tells when it has.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (request, finished) = lockkit_core::driver::unabandoned(async { 7 });
/// drop(request); // the caller stops waiting: the request still runs, in the background
/// assert!(finished.wait().await);
///
/// let (request, _finished) = lockkit_core::driver::unabandoned(async { 7 });
/// assert_eq!(request.await, 7);
/// # }
/// ```
pub fn unabandoned<F>(request: F) -> (Unabandoned<F::Output>, Finished)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    finishing(request, |_| true)
}

/// [`unabandoned`] for a request to the backend: its [`Finished`] also tells whether the
/// request was *answered* (`Ok`, or an error that is not [temporary](crate::Error::is_temporary)),
/// or ended with its outcome unknown (no answer in time, a cut connection): then the server
/// may still apply it later.
pub fn unabandoned_request<F, T>(request: F) -> (Unabandoned<crate::Result<T>>, Finished)
where
    F: Future<Output = crate::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    unabandoned_request_by(request, |output| !matches!(output, Err(e) if e.is_temporary()))
}

/// [`unabandoned_request`] with the driver's own rule for what counts as answered: for a
/// backend that says "refused, nothing applied" with an error that is still
/// [temporary](crate::Error::is_temporary) (Consul's rate limiter).
/// The error may be the driver's own type.
pub fn unabandoned_request_by<F, T, E>(
    request: F,
    answered: fn(&std::result::Result<T, E>) -> bool,
) -> (Unabandoned<std::result::Result<T, E>>, Finished)
where
    F: Future<Output = std::result::Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    finishing(request, answered)
}

fn finishing<F>(request: F, answered: fn(&F::Output) -> bool) -> (Unabandoned<F::Output>, Finished)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (done, finished) = oneshot::channel::<bool>();
    let request = async move {
        let output = request.await;
        let _ = done.send(answered(&output));
        output
    };
    (Unabandoned { request: Some(Box::pin(request)) }, Finished(finished))
}

impl Finished {
    /// Waits until the request has finished (at once if it has): `true` when it was answered,
    /// `false` when its outcome is unknown (or it was dropped unfinished, without a runtime to
    /// finish it).
    pub async fn wait(self) -> bool {
        self.0.await.unwrap_or(false)
    }
}

impl<T: Send + 'static> Future for Unabandoned<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(request) = self.request.as_mut() else {
            panic!("an Unabandoned request was polled after it finished")
        };
        let output = std::task::ready!(request.as_mut().poll(cx));
        self.request = None;
        Poll::Ready(output)
    }
}

impl<T: Send + 'static> Drop for Unabandoned<T> {
    fn drop(&mut self) {
        let Some(request) = self.request.take() else { return };
        // Without a runtime nothing can run it: it is dropped, as the runtime would drop it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                request.await;
            });
        }
    }
}

impl<T: Send + 'static> fmt::Debug for Unabandoned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unabandoned").field("finished", &self.request.is_none()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_dropped_request_still_finishes_and_says_so() {
        let (gate, opened) = oneshot::channel::<()>();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let (request, finished) = unabandoned(async move {
            let _ = opened.await;
            flag.store(true, Ordering::SeqCst);
        });
        // Start it, so it is in flight, then stop waiting.
        let mut request = Box::pin(request);
        assert!(futures_poll_once(request.as_mut()).await.is_pending());
        drop(request);
        assert!(!ran.load(Ordering::SeqCst));
        gate.send(()).unwrap();
        finished.wait().await;
        assert!(ran.load(Ordering::SeqCst), "finished before the request ran");
    }

    #[tokio::test]
    async fn an_awaited_request_gives_its_output_and_finishes() {
        let (request, finished) = unabandoned(async { "answer" });
        assert_eq!(request.await, "answer");
        tokio::time::timeout(std::time::Duration::from_secs(5), finished.wait()).await.unwrap();
    }

    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx))).await
    }
}
