//! The delay scheduler: requests hit by a latency fault are parked here instead of sleeping in a
//! FUSE thread. One timer thread keeps a deadline heap; when a deadline passes (or delays are
//! cancelled) the request's work runs on a small worker pool.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fuse::{Errno, Reply};

/// Work parked in the scheduler: run when due, or cut short when its caller is interrupted.
pub(crate) trait Parked: Send {
    /// Serve the request (its deadline passed, or delays were cancelled).
    fn run(self: Box<Self>);
    /// Answer the request with EINTR without serving it (its caller is dying).
    fn interrupt(self: Box<Self>);
}

/// A request's work and the reply it answers through.
pub(crate) struct Job<R, F> {
    reply: R,
    work: F,
}

impl<R, F> Job<R, F> {
    pub(crate) fn new(reply: R, work: F) -> Self {
        Job { reply, work }
    }
}

impl<R: Reply + Send, F: FnOnce(R) + Send> Parked for Job<R, F> {
    fn run(self: Box<Self>) {
        (self.work)(self.reply);
    }
    fn interrupt(self: Box<Self>) {
        self.reply.error(Errno::from_i32(libc::EINTR));
    }
}

pub(crate) type Task = Box<dyn Parked>;

/// Which request a parked task answers: its unique id and its caller's thread id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub unique: u64,
    pub pid: u32,
}

struct Entry {
    key: Option<Key>,
    task: Task,
}

/// Interrupts of requests not parked (yet) remembered, newest last: an INTERRUPT can be read by
/// one serving thread before another has parked the request it names. Bounded: an interrupt of
/// a request answered without parking is never looked up again.
const EARLY_INTERRUPTS: usize = 256;

#[derive(Default)]
struct State {
    /// Parked tasks by (deadline, sequence number).
    heap: BTreeMap<(Instant, u64), Entry>,
    /// Where the task answering a request is in `heap`.
    by_unique: HashMap<u64, (Instant, u64)>,
    early: VecDeque<u64>,
    ready: VecDeque<Task>,
    seq: u64,
    shutdown: bool,
    /// Tasks handed to workers and not yet finished.
    running: usize,
}

impl State {
    fn pop_first(&mut self) -> Option<Task> {
        let (_, e) = self.heap.pop_first()?;
        if let Some(k) = e.key {
            self.by_unique.remove(&k.unique);
        }
        Some(e.task)
    }

    /// Move every parked task to the ready queue.
    fn release_all(&mut self) {
        while let Some(t) = self.pop_first() {
            self.ready.push_back(t);
        }
    }
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

    /// Run `task` after `delay` on a worker thread. With a `key`, an interrupt of that request
    /// (before or while it is parked) whose caller `dying` says is dying answers it at once.
    pub(crate) fn defer(
        &self,
        delay: Duration,
        key: Option<Key>,
        task: Task,
        dying: impl Fn(u32) -> bool,
    ) {
        let mut st = self.shared.lock();
        if st.shutdown {
            // Serving is ending: answer now rather than never.
            st.ready.push_back(task);
            drop(st);
            self.shared.work_cv.notify_one();
            return;
        }
        if let Some(k) = key
            && let Some(i) = st.early.iter().position(|&u| u == k.unique)
        {
            st.early.remove(i);
            if dying(k.pid) {
                drop(st);
                task.interrupt();
                return;
            }
        }
        st.seq += 1;
        let seq = st.seq;
        let deadline = Instant::now()
            .checked_add(delay)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365));
        if let Some(k) = key {
            st.by_unique.insert(k.unique, (deadline, seq));
        }
        st.heap.insert((deadline, seq), Entry { key, task });
        drop(st);
        self.shared.timer_cv.notify_one();
    }

    /// The caller of request `unique` was interrupted: if the request is parked here and
    /// `dying` says its caller is dying, answer it with EINTR now. Not parked (yet): remembered
    /// for [`Scheduler::defer`]. Returns whether a parked request was answered.
    pub(crate) fn interrupt(&self, unique: u64, dying: impl Fn(u32) -> bool) -> bool {
        let mut st = self.shared.lock();
        let Some(&pos) = st.by_unique.get(&unique) else {
            if st.early.len() >= EARLY_INTERRUPTS {
                st.early.pop_front();
            }
            st.early.push_back(unique);
            return false;
        };
        let pid = st.heap.get(&pos).and_then(|e| e.key).map_or(0, |k| k.pid);
        if !dying(pid) {
            return false;
        }
        st.by_unique.remove(&unique);
        let Some(e) = st.heap.remove(&pos) else {
            return false;
        };
        drop(st);
        e.task.interrupt();
        true
    }

    /// Whether an interrupt of `unique` arrived before it was parked (and forget it).
    pub(crate) fn take_early(&self, unique: u64) -> bool {
        let mut st = self.shared.lock();
        match st.early.iter().position(|&u| u == unique) {
            Some(i) => {
                st.early.remove(i);
                true
            }
            None => false,
        }
    }

    /// Serve every parked request now.
    pub(crate) fn cancel_all(&self) {
        self.shared.lock().release_all();
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
            st.release_all();
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
                Some(t) => t.run(),
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
        while st
            .heap
            .first_key_value()
            .is_some_and(|((d, _), _)| *d <= now)
        {
            if let Some(t) = st.pop_first() {
                st.ready.push_back(t);
                moved = true;
            }
        }
        if moved {
            s.work_cv.notify_all();
        }
        st = match st.heap.first_key_value().map(|((d, _), _)| *d) {
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
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run()));
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

    /// A task that reports what became of it: `(id, served)`.
    struct Probe(u32, mpsc::Sender<(u32, bool)>);

    impl Parked for Probe {
        fn run(self: Box<Self>) {
            self.1.send((self.0, true)).unwrap_or(());
        }
        fn interrupt(self: Box<Self>) {
            self.1.send((self.0, false)).unwrap_or(());
        }
    }

    fn probe(id: u32, tx: &mpsc::Sender<(u32, bool)>) -> Task {
        Box::new(Probe(id, tx.clone()))
    }

    fn key(unique: u64, pid: u32) -> Option<Key> {
        Some(Key { unique, pid })
    }

    #[test]
    fn runs_in_deadline_order_and_cancels() {
        let s = Scheduler::new();
        s.start(2).expect("start");
        let (tx, rx) = mpsc::channel();
        let never = |_| false;
        s.defer(Duration::from_millis(60), None, probe(2, &tx), never);
        s.defer(Duration::from_millis(10), None, probe(1, &tx), never);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).ok(),
            Some((1, true))
        );
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).ok(),
            Some((2, true))
        );
        let start = Instant::now();
        s.defer(Duration::from_secs(3600), None, probe(3, &tx), never);
        s.cancel_all();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).ok(),
            Some((3, true))
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        s.defer(Duration::from_secs(3600), None, probe(4, &tx), never);
        s.shutdown();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)).ok(),
            Some((4, true))
        );
    }

    #[test]
    fn interrupts_answer_only_dying_callers() {
        let s = Scheduler::new();
        s.start(1).expect("start");
        let (tx, rx) = mpsc::channel();
        let dying = |pid| pid == 7;
        s.defer(Duration::from_secs(3600), key(10, 7), probe(1, &tx), dying);
        s.defer(Duration::from_secs(3600), key(12, 8), probe(2, &tx), dying);
        // Caller 8 only got a signal it survives: the request stays parked.
        assert!(!s.interrupt(12, dying));
        assert!(s.interrupt(10, dying));
        assert_eq!(rx.try_recv().ok(), Some((1, false)));
        assert_eq!(s.pending(), 1);
        // An interrupt read before its request was parked is applied when it parks.
        assert!(!s.interrupt(14, dying));
        s.defer(Duration::from_secs(3600), key(14, 7), probe(3, &tx), dying);
        assert_eq!(rx.try_recv().ok(), Some((3, false)));
        assert_eq!(s.pending(), 1);
        s.cancel_all();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).ok(),
            Some((2, true))
        );
    }
}
