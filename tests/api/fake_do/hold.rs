//! Controls that stop the fake at a given step until a test lets it go, so that a
//! test can act at that exact step without guessing at timings: a request of an
//! operation held where it stands (arrived and not applied yet, or applied with its
//! answer not sent yet), an action held in progress, a fault aimed at the next
//! request of an operation; and a wait until the fake has finished everything it
//! was doing. DigitalOcean itself may take any time at each of these steps.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::server::Fault;
use super::{FakeDo, Inner};

/// Where a request is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Received and not applied yet: in flight at DigitalOcean.
    Arrival,
    /// Applied, its answer not sent yet.
    Answer,
}

/// The step a hold stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// A request of an operation (by operationId).
    Request(Point, String),
    /// An action of a type (`create`, `shutdown`, ...), once its time is up: it
    /// stays `in-progress`, and its droplet as it is, until released.
    Action(String),
}

type Filter = Box<dyn Fn(&[(String, String)]) -> bool + Send + Sync>;

pub(super) struct Rule {
    step: Step,
    /// Which requests of the operation, by their query.
    filter: Filter,
    state: watch::Sender<Held>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    arrivals: usize,
    released: bool,
}

#[derive(Default)]
pub(super) struct Holds {
    rules: Mutex<Vec<Arc<Rule>>>,
    faults: Mutex<Vec<(String, Fault)>>,
    /// Requests being answered, actions and destroys under way.
    busy: Arc<watch::Sender<usize>>,
}

/// Counts as work under way while it lives.
pub(super) struct Busy(Arc<watch::Sender<usize>>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Holds {
    pub(super) fn busy(&self) -> Busy {
        self.busy.send_modify(|n| *n += 1);
        Busy(self.busy.clone())
    }

    /// The fault aimed at this request of `operation`, if any (used up by it).
    pub(super) fn take_fault(&self, operation: &str) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let i = faults.iter().position(|(o, _)| o == operation)?;
        Some(faults.remove(i).1)
    }

    fn matching(&self, step: &Step, query: &[(String, String)]) -> Vec<Arc<Rule>> {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|r| r.step == *step && (r.filter)(query))
            .cloned()
            .collect()
    }

    /// Whether a hold on `step` (matching `query`) is in place.
    pub(super) fn holding(&self, step: &Step, query: &[(String, String)]) -> bool {
        !self.matching(step, query).is_empty()
    }

    /// Waits here while a hold on `step` (matching `query`) is in place.
    pub(super) async fn pass(&self, step: Step, query: &[(String, String)]) {
        for rule in self.matching(&step, query) {
            let mut released = rule.state.subscribe();
            rule.state.send_modify(|h| h.arrivals += 1);
            let _ = released.wait_for(|h| h.released).await;
        }
    }
}

/// A hold in place; released when dropped.
pub struct Hold {
    rule: Arc<Rule>,
    inner: Arc<Inner>,
}

impl Hold {
    /// Waits until something is held (bounded: 60 s).
    pub async fn arrived(&self) {
        let mut state = self.rule.state.subscribe();
        let waited =
            tokio::time::timeout(Duration::from_secs(60), state.wait_for(|h| h.arrivals > 0)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "nothing reached the hold on {:?}",
            self.rule.step
        );
    }

    /// How many were held so far.
    pub fn arrivals(&self) -> usize {
        self.rule.state.borrow().arrivals
    }

    /// Lets everything held go on, and holds nothing more.
    pub fn release(&self) {
        self.inner
            .holds
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r| !Arc::ptr_eq(r, &self.rule));
        self.rule.state.send_modify(|h| h.released = true);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release();
    }
}

impl FakeDo {
    fn hold_step(&self, step: Step, filter: Filter) -> Hold {
        let rule = Arc::new(Rule {
            step,
            filter,
            state: watch::Sender::new(Held::default()),
        });
        self.inner
            .holds
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rule.clone());
        Hold {
            rule,
            inner: self.inner.clone(),
        }
    }

    /// Holds every request of `operation` (an operationId) at `point` from now on,
    /// until released.
    pub fn hold(&self, point: Point, operation: &str) -> Hold {
        self.hold_step(
            Step::Request(point, operation.to_owned()),
            Box::new(|_| true),
        )
    }

    /// Holds the requests of `operation` at `point` whose query satisfies `filter`.
    pub fn hold_where(
        &self,
        point: Point,
        operation: &str,
        filter: impl Fn(&[(String, String)]) -> bool + Send + Sync + 'static,
    ) -> Hold {
        self.hold_step(Step::Request(point, operation.to_owned()), Box::new(filter))
    }

    /// Holds every action of `kind` in progress once its time is up, until released.
    pub fn hold_actions(&self, kind: &str) -> Hold {
        self.hold_step(Step::Action(kind.to_owned()), Box::new(|_| true))
    }

    /// The next request of `operation` meets `fault`, whatever the configured rates.
    pub fn fault_next(&self, operation: &str, fault: Fault) {
        self.inner
            .holds
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((operation.to_owned(), fault));
    }

    /// Waits until no request is being answered and no action or destroy is under
    /// way (bounded: 60 s). Anything still held counts as under way.
    pub async fn settled(&self) {
        let mut busy = self.inner.holds.busy.subscribe();
        let waited =
            tokio::time::timeout(Duration::from_secs(60), busy.wait_for(|n| *n == 0)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "the fake was still busy after 60 s"
        );
    }
}
