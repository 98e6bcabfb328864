//! The newest committed events in memory, and the watches that wake long-polls: shared by
//! every metadata store, so that a thousand pollers woken by one commit read memory instead
//! of each querying the database.

use std::collections::VecDeque;

use artifactstore_core::storage::EventWatches;
use artifactstore_core::{Event, Scope};
use tokio::sync::watch;

/// Events kept in memory after commit by default.
pub(crate) const TAIL_EVENTS: usize = 4096;

pub(crate) struct EventTail {
    /// The newest committed events, contiguous, in sequence order.
    events: std::sync::Mutex<VecDeque<Event>>,
    capacity: usize,
    watches: EventWatches,
}

impl EventTail {
    /// Starts empty at `last`, the highest sequence committed so far.
    pub(crate) fn new(last: u64, capacity: usize) -> Self {
        Self {
            events: std::sync::Mutex::new(VecDeque::with_capacity(capacity.min(TAIL_EVENTS))),
            capacity: capacity.max(1),
            watches: EventWatches::new(last),
        }
    }

    /// Makes committed events visible to tailers and wakes them. Call with every event after
    /// the last one published, in sequence order: the tail stays contiguous.
    pub(crate) fn publish(&self, events: impl IntoIterator<Item = Event>) {
        let mut last = None;
        let mut tenants: Vec<String> = Vec::new();
        {
            let mut tail = self.events.lock().unwrap_or_else(|p| p.into_inner());
            for event in events {
                if tail.len() >= self.capacity {
                    tail.pop_front();
                }
                last = Some(event.sequence);
                if !tenants.contains(&event.tenant) {
                    tenants.push(event.tenant.clone());
                }
                tail.push_back(event);
            }
        }
        if let Some(sequence) = last {
            self.watches
                .publish(sequence, tenants.iter().map(String::as_str));
        }
    }

    pub(crate) fn watch(&self, scope: &Scope) -> watch::Receiver<u64> {
        self.watches.subscribe(scope)
    }

    /// The events in `scope` after `since` from memory, if memory holds all of them up to
    /// the last one published.
    pub(crate) fn since(&self, scope: &Scope, since: u64, limit: u32) -> Option<Vec<Event>> {
        let tail = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let first = tail.front()?.sequence;
        if first > since.saturating_add(1) {
            return None;
        }
        // The tail is contiguous: the first event after `since` is found by position, not by
        // scanning 4,096 events for each of a thousand woken pollers.
        let skip = usize::try_from(since.saturating_add(1) - first).unwrap_or(usize::MAX);
        let events = tail
            .range(skip.min(tail.len())..)
            .filter(|e| scope.admits(&e.tenant))
            .take(limit as usize)
            .cloned()
            .collect();
        Some(events)
    }
}
