//! Which sale is active when. The rotator publishes the sales it has
//! prepared (the current one and the next); every core keeps a cached view
//! and picks the active sale by the clock, so a sale opens on its second
//! even if the rotator thread wakes late.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::SaleInfo;

/// The sales prepared in Postgres and Redis, oldest first.
#[derive(Debug, Default, Clone)]
pub struct Schedule {
    pub sales: Vec<SaleInfo>,
}

impl Schedule {
    /// The sale open at `now_ms`, if any.
    pub fn active_at(&self, now_ms: i64) -> Option<&SaleInfo> {
        self.sales.iter().rev().find(|s| s.is_open_at(now_ms))
    }

    /// A prepared sale by id.
    pub fn get(&self, sale_id: i64) -> Option<&SaleInfo> {
        self.sales.iter().find(|s| s.id == sale_id)
    }
}

/// The schedule shared by the rotator (writer) and the cores (readers).
#[derive(Default)]
pub struct SharedSchedule {
    generation: AtomicU64,
    current: Mutex<Arc<Schedule>>,
}

impl SharedSchedule {
    pub fn publish(&self, schedule: Schedule) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(schedule);
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn snapshot(&self) -> Arc<Schedule> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A per-core view that only takes the lock when the rotator published.
    pub fn view(self: &Arc<Self>) -> ScheduleView {
        ScheduleView {
            shared: self.clone(),
            generation: u64::MAX,
            cached: Arc::new(Schedule::default()),
        }
    }
}

pub struct ScheduleView {
    shared: Arc<SharedSchedule>,
    generation: u64,
    cached: Arc<Schedule>,
}

impl ScheduleView {
    /// The latest schedule; a single atomic load when nothing changed.
    pub fn current(&mut self) -> &Schedule {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.cached = self.shared.snapshot();
            self.generation = generation;
        }
        &self.cached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(id: i64, starts_at: i64) -> SaleInfo {
        SaleInfo {
            id,
            starts_at,
            ends_at: starts_at + 10,
            items: 5,
            user_limit: 2,
        }
    }

    #[test]
    fn next_sale_takes_over_on_its_second() {
        let schedule = Schedule {
            sales: vec![sale(1, 100), sale(2, 110)],
        };
        assert_eq!(schedule.active_at(109_999).map(|s| s.id), Some(1));
        assert_eq!(schedule.active_at(110_000).map(|s| s.id), Some(2));
        assert_eq!(schedule.active_at(120_000).map(|s| s.id), None);
        assert_eq!(schedule.active_at(99_000).map(|s| s.id), None);
    }

    #[test]
    fn views_see_published_schedules() {
        let shared = Arc::new(SharedSchedule::default());
        let mut view = shared.view();
        assert!(view.current().sales.is_empty());
        shared.publish(Schedule {
            sales: vec![sale(3, 0)],
        });
        assert_eq!(view.current().sales[0].id, 3);
    }
}
