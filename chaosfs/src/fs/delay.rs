//! The delay scheduler: requests hit by a latency fault are parked here instead of sleeping in a
//! FUSE thread. One timer thread keeps a deadline heap; when a deadline passes (or delays are
//! cancelled) the request's work runs on a small worker pool.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) type Task = Box<dyn FnOnce() + Send + 'static>;

struct Entry {
    deadline: Instant,
    seq: u64,
    task: Task,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.deadline == o.deadline && self.seq == o.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap, the earliest deadline must come out first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.deadline.cmp(&self.deadline).then(o.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Entry>,
    ready: VecDeque<Task>,
    seq: u64,
    shutdown: bool,
    /// Tasks handed to workers and not yet finished.
    running: usize,
}

struct Shared {
    state: Mutex<State>,
    timer_cv: Condvar,
    work_cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a task panicked while it held it, which cannot happen (tasks
        // run unlocked); recover the state rather than panic in a serving path.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct Scheduler {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Scheduler {
    pub(crate) fn new() -> Self {
        Scheduler {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                timer_cv: Condvar::new(),
                work_cv: Condvar::new(),
            }),
            threads: Mutex::new(Vec::new()),
        }
    }

    /// Start the timer thread and `workers` worker threads.
    pub(crate) fn start(&self, workers: usize) -> std::io::Result<()> {
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        let s = self.shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("chaosfs-timer".into())
                .spawn(move || timer(&s))?,
        );
        for i in 0..workers.max(1) {
            let s = self.shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("chaosfs-delay-{i}"))
                    .spawn(move || worker(&s))?,
            );
        }
        Ok(())
    }

    /// Run `task` after `delay` on a worker thread.
    pub(crate) fn defer(&self, delay: Duration, task: Task) {
        let mut st = self.shared.lock();
        if st.shutdown {
            // Serving is ending: answer now rather than never.
            st.ready.push_back(task);
            drop(st);
            self.shared.work_cv.notify_one();
            return;
        }
        st.seq += 1;
        let seq = st.seq;
        let deadline = Instant::now()
            .checked_add(delay)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365));
        st.heap.push(Entry {
            deadline,
            seq,
            task,
        });
        drop(st);
        self.shared.timer_cv.notify_one();
    }

    /// Serve every parked request now.
    pub(crate) fn cancel_all(&self) {
        let mut st = self.shared.lock();
        while let Some(e) = st.heap.pop() {
            st.ready.push_back(e.task);
        }
        drop(st);
        self.shared.work_cv.notify_all();
    }

    /// Requests parked or running.
    pub(crate) fn pending(&self) -> usize {
        let st = self.shared.lock();
        st.heap.len() + st.ready.len() + st.running
    }

    /// Serve everything parked now and stop the threads.
    pub(crate) fn shutdown(&self) {
        {
            let mut st = self.shared.lock();
            st.shutdown = true;
            while let Some(e) = st.heap.pop() {
                st.ready.push_back(e.task);
            }
        }
        self.shared.timer_cv.notify_all();
        self.shared.work_cv.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let me = std::thread::current().id();
        for t in threads {
            // Never join ourselves (the last user may drop the scheduler from a worker).
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        // Tasks deferred after the workers ended: run them here.
        loop {
            let task = self.shared.lock().ready.pop_front();
            match task {
                Some(t) => t(),
                None => break,
            }
        }
    }
}

fn timer(s: &Shared) {
    let mut st = s.lock();
    loop {
        if st.shutdown {
            return;
        }
        let now = Instant::now();
        let mut moved = false;
        while st.heap.peek().is_some_and(|e| e.deadline <= now) {
            if let Some(e) = st.heap.pop() {
                st.ready.push_back(e.task);
                moved = true;
            }
        }
        if moved {
            s.work_cv.notify_all();
        }
        st = match st.heap.peek().map(|e| e.deadline) {
            Some(d) => {
                let wait = d.saturating_duration_since(now);
                s.timer_cv
                    .wait_timeout(st, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0)
            }
            None => s.timer_cv.wait(st).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

fn worker(s: &Shared) {
    let mut st = s.lock();
    loop {
        if let Some(task) = st.ready.pop_front() {
            st.running += 1;
            drop(st);
            // A panicking task must not take the worker down with it (its reply, dropped while
            // unwinding, answers EIO).
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
            st = s.lock();
            st.running -= 1;
            continue;
        }
        if st.shutdown {
            return;
        }
        st = s.work_cv.wait(st).unwrap_or_else(|p| p.into_inner());
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_in_deadline_order_and_cancels() {
        let s = Scheduler::new();
        s.start(2).expect("start");
        let (tx, rx) = mpsc::channel();
        let t1 = tx.clone();
        s.defer(
            Duration::from_millis(60),
            Box::new(move || t1.send(2).unwrap_or(())),
        );
        let t2 = tx.clone();
        s.defer(
            Duration::from_millis(10),
            Box::new(move || t2.send(1).unwrap_or(())),
        );
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).ok(), Some(1));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).ok(), Some(2));
        let t3 = tx.clone();
        let start = Instant::now();
        s.defer(
            Duration::from_secs(3600),
            Box::new(move || t3.send(3).unwrap_or(())),
        );
        s.cancel_all();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).ok(), Some(3));
        assert!(start.elapsed() < Duration::from_secs(5));
        let t4 = tx;
        s.defer(
            Duration::from_secs(3600),
            Box::new(move || t4.send(4).unwrap_or(())),
        );
        s.shutdown();
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)).ok(), Some(4));
    }
}
