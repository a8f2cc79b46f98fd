//! How one client operation tries again: every attempt goes where the view places the
//! key (`Client::candidates`); between attempts the client backs off (20 ms doubling
//! to 500 ms) and refreshes its view of the ring, and once the operation's time
//! (`op_timeout`) is spent it fails with `Unavailable`, naming the last thing that went
//! wrong. Every retry loop of the client is written with this one helper.

use super::{Client, ClientError, Result};
use crate::net::RpcError;
use crate::proto::{Peer, Response};
use std::time::Duration;
// Tokio's clock, so op timeouts follow paused (simulated) time in tests.
use tokio::time::Instant;

/// The attempts of one operation on `what` (a chunk, a record, a directory).
pub(crate) struct Retry<'c> {
    client: &'c Client,
    what: String,
    started: Instant,
    /// Attempts paused after so far.
    pub attempt: u32,
    /// What went wrong last, for the error.
    pub last: String,
}

impl<'c> Retry<'c> {
    pub fn new(client: &'c Client, what: String, first_failure: &str) -> Retry<'c> {
        Retry {
            client,
            what,
            started: Instant::now(),
            attempt: 0,
            last: first_failure.to_string(),
        }
    }

    /// `peer` did not answer, or answered with an error: an unreachable peer leaves the
    /// view until the next refresh.
    pub fn failed(&mut self, peer: &Peer, e: &RpcError) {
        if e.is_unreachable() {
            self.client.view.forget(&peer.id);
        }
        self.last = e.to_string();
    }

    /// `peer` answered something the operation cannot use.
    pub fn unexpected(&mut self, peer: &Peer, answer: &Response) {
        self.last = format!("{} answered {answer:?}", peer.addr);
    }

    pub fn timed_out(&self) -> bool {
        self.started.elapsed() >= self.client.cfg.op_timeout
    }

    /// The operation's failure: nothing answered in time.
    pub fn unavailable(&self) -> ClientError {
        ClientError::Unavailable {
            what: self.what.clone(),
            last: self.last.clone(),
        }
    }

    /// The next attempt goes at once (the last one learnt something that makes it
    /// worth repeating now): it counts, but nothing is waited for.
    pub fn again(&mut self) {
        self.attempt += 1;
    }

    /// Before the next attempt: fails once the operation's time is spent, else backs
    /// off and refreshes the view (membership may have changed).
    pub async fn pause(&mut self) -> Result<()> {
        if self.timed_out() {
            return Err(self.unavailable());
        }
        let ms = (20u64 << self.attempt.min(6)).min(500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let _ = self.client.refresh_view().await;
        self.attempt += 1;
        Ok(())
    }
}
