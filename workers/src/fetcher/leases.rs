//! Which chunk to send next: a lease per chunk, so a chunk is sent again only after its ack
//! timeout has passed without an acknowledgement, and never while its lease still runs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Pending,
    Leased,
    Done,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Ack {
    /// The first acknowledgement of this chunk.
    New,
    /// The chunk was already done: another copy was saved (harmless, counted).
    Duplicate,
    /// No chunk has this index.
    Unknown,
}

pub struct Leases {
    state: Vec<State>,
    attempts: Vec<u32>,
    /// Chunks to send, oldest first: expired leases go to the front.
    pending: VecDeque<u64>,
    /// Lease deadlines in send order; with one ack timeout they are already sorted.
    deadlines: VecDeque<(Instant, u64, u32)>,
    ack_timeout: Duration,
    done: u64,
    in_flight: u64,
}

impl Leases {
    /// `done(i)` tells which chunks an earlier run already finished.
    pub fn new(total: u64, ack_timeout: Duration, done: impl Fn(u64) -> bool) -> Self {
        let mut l = Leases {
            state: Vec::with_capacity(total as usize),
            attempts: vec![0; total as usize],
            pending: VecDeque::new(),
            deadlines: VecDeque::new(),
            ack_timeout,
            done: 0,
            in_flight: 0,
        };
        for i in 0..total {
            if done(i) {
                l.state.push(State::Done);
                l.done += 1;
            } else {
                l.state.push(State::Pending);
                l.pending.push_back(i);
            }
        }
        l
    }

    /// Adds a chunk at the end (a streaming source); `done` when an earlier run saved it.
    pub fn push(&mut self, done: bool) -> u64 {
        let i = self.state.len() as u64;
        self.attempts.push(0);
        if done {
            self.state.push(State::Done);
            self.done += 1;
        } else {
            self.state.push(State::Pending);
            self.pending.push_back(i);
        }
        i
    }

    /// Leases the next chunk to send and returns its index and attempt number (1 = first send).
    pub fn next_to_send(&mut self, now: Instant) -> Option<(u64, u32)> {
        while let Some(i) = self.pending.pop_front() {
            if self.state[i as usize] != State::Pending {
                continue;
            }
            self.state[i as usize] = State::Leased;
            self.in_flight += 1;
            let attempt = &mut self.attempts[i as usize];
            *attempt += 1;
            self.deadlines
                .push_back((now + self.ack_timeout, i, *attempt));
            return Some((i, *attempt));
        }
        None
    }

    /// The chunk `next_to_send` would lease, without leasing it.
    pub fn peek_next(&self) -> Option<u64> {
        self.pending
            .iter()
            .copied()
            .find(|&i| self.state[i as usize] == State::Pending)
    }

    /// Returns chunks whose lease ran out to the front of the queue; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut expired = Vec::new();
        while let Some(&(deadline, i, attempt)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self.state[i as usize] == State::Leased && self.attempts[i as usize] == attempt {
                self.state[i as usize] = State::Pending;
                self.in_flight -= 1;
                expired.push(i);
            }
        }
        for &i in expired.iter().rev() {
            self.pending.push_front(i);
        }
        expired.len()
    }

    /// Ends the lease of a send that reached no mapper, so the chunk goes with the next
    /// readiness signal instead of after the ack timeout. False when that send is stale.
    pub fn release(&mut self, index: u64, attempt: u32) -> bool {
        let i = index as usize;
        if self.state.get(i) != Some(&State::Leased) || self.attempts[i] != attempt {
            return false;
        }
        self.state[i] = State::Pending;
        self.in_flight -= 1;
        self.pending.push_front(index);
        true
    }

    pub fn ack(&mut self, index: u64) -> Ack {
        match self.state.get(index as usize).copied() {
            None => Ack::Unknown,
            Some(State::Done) => Ack::Duplicate,
            Some(s) => {
                if s == State::Leased {
                    self.in_flight -= 1;
                }
                self.state[index as usize] = State::Done;
                self.done += 1;
                Ack::New
            }
        }
    }

    pub fn has_pending(&self) -> bool {
        self.pending
            .iter()
            .any(|&i| self.state[i as usize] == State::Pending)
    }

    pub fn total(&self) -> u64 {
        self.state.len() as u64
    }

    pub fn done(&self) -> u64 {
        self.done
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    pub fn is_complete(&self) -> bool {
        self.done == self.total()
    }

    pub fn is_done(&self, index: u64) -> bool {
        self.state.get(index as usize) == Some(&State::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases(total: u64) -> (Leases, Instant) {
        (
            Leases::new(total, Duration::from_secs(30), |_| false),
            Instant::now(),
        )
    }

    #[test]
    fn a_send_that_reached_nobody_is_sent_next_and_its_old_deadline_ignored() {
        let (mut l, t) = leases(3);
        assert_eq!(l.next_to_send(t), Some((0, 1)));
        assert_eq!(l.next_to_send(t), Some((1, 1)));
        assert!(l.release(0, 1));
        assert!(!l.release(0, 1), "released once");
        assert_eq!(l.in_flight(), 1);
        let later = t + Duration::from_secs(10);
        assert_eq!(l.next_to_send(later), Some((0, 2)));
        assert!(!l.release(0, 1), "a stale attempt changes nothing");
        // The first lease's deadline passes, chunk #1's too; the second lease of #0 still runs.
        assert_eq!(l.expire(t + Duration::from_secs(31)), 1);
        assert_eq!(l.next_to_send(t + Duration::from_secs(31)), Some((1, 2)));
        assert_eq!(l.ack(0), Ack::New);
        assert!(!l.release(0, 3), "done chunks stay done");
    }

    #[test]
    fn hands_out_every_chunk_once_in_order() {
        let (mut l, t) = leases(3);
        assert_eq!(l.next_to_send(t), Some((0, 1)));
        assert_eq!(l.next_to_send(t), Some((1, 1)));
        assert_eq!(l.next_to_send(t), Some((2, 1)));
        assert_eq!(l.next_to_send(t), None);
        assert_eq!(l.in_flight(), 3);
    }

    #[test]
    fn never_resends_within_the_lease() {
        let (mut l, t) = leases(1);
        l.next_to_send(t);
        assert_eq!(l.expire(t + Duration::from_secs(29)), 0);
        assert_eq!(l.next_to_send(t + Duration::from_secs(29)), None);
    }

    #[test]
    fn resends_after_the_lease_first_in_line() {
        let (mut l, t) = leases(3);
        l.next_to_send(t);
        let later = t + Duration::from_secs(30);
        assert_eq!(l.expire(later), 1);
        assert_eq!(l.next_to_send(later), Some((0, 2)));
        assert_eq!(l.next_to_send(later), Some((1, 1)));
    }

    #[test]
    fn acked_chunks_are_not_resent() {
        let (mut l, t) = leases(2);
        l.next_to_send(t);
        assert_eq!(l.ack(0), Ack::New);
        assert_eq!(l.expire(t + Duration::from_secs(60)), 0);
        assert_eq!(l.next_to_send(t), Some((1, 1)));
        assert_eq!(l.ack(0), Ack::Duplicate);
        assert_eq!(l.ack(9), Ack::Unknown);
    }

    #[test]
    fn late_ack_of_an_expired_chunk_counts_once() {
        let (mut l, t) = leases(1);
        l.next_to_send(t);
        l.expire(t + Duration::from_secs(30));
        assert_eq!(l.ack(0), Ack::New);
        assert!(l.is_complete());
        assert!(!l.has_pending());
        assert_eq!(l.next_to_send(t), None);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn stale_deadline_of_a_resent_chunk_is_ignored() {
        let (mut l, t) = leases(1);
        l.next_to_send(t);
        l.expire(t + Duration::from_secs(30));
        l.next_to_send(t + Duration::from_secs(30));
        // the first deadline is gone; the second (t+60) has not passed
        assert_eq!(l.expire(t + Duration::from_secs(45)), 0);
        assert_eq!(l.in_flight(), 1);
    }

    #[test]
    fn chunks_can_be_added_while_streaming() {
        let (mut l, t) = leases(0);
        assert!(l.is_complete());
        assert_eq!(l.push(false), 0);
        assert_eq!(l.push(true), 1);
        assert_eq!((l.total(), l.done()), (2, 1));
        assert_eq!(l.next_to_send(t), Some((0, 1)));
        assert_eq!(l.next_to_send(t), None);
    }

    #[test]
    fn resumes_with_done_chunks_skipped() {
        let mut l = Leases::new(4, Duration::from_secs(1), |i| i % 2 == 0);
        assert_eq!(l.done(), 2);
        let t = Instant::now();
        assert_eq!(l.next_to_send(t), Some((1, 1)));
        assert_eq!(l.next_to_send(t), Some((3, 1)));
        assert_eq!(l.next_to_send(t), None);
    }
}
