//! A progress line for long work (a recover that moves 10,000 fds back, an inject into a large
//! target), on stderr and only when stderr is a terminal: nothing for work that ends within
//! [`DELAY`], then `iochaos: MESSAGE (2.4 s)` redrawn in place every [`TICK`] and erased when
//! the work ends, so what is left on the terminal is the command's usual output. No color.
//! `IOCHAOS_PROGRESS_DELAY_MS` sets the delay (0: from the start, which tests use).

use std::io::{IsTerminal, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Work that ends sooner shows no line.
const DELAY: Duration = Duration::from_millis(500);
/// How often the elapsed time is redrawn.
const TICK: Duration = Duration::from_millis(100);
/// Carriage return and "erase the whole line" (ECMA-48 EL 2).
const ERASE: &str = "\r\x1b[2K";

/// The line of one piece of work: shown until dropped.
pub struct Progress {
    running: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Progress {
    /// Show `message` while the returned value lives (if stderr is a terminal).
    pub fn start(message: String) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { running: None };
        }
        let delay = std::env::var("IOCHAOS_PROGRESS_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(DELAY, Duration::from_millis);
        let started = Instant::now();
        if delay.is_zero() {
            draw(&message, started);
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let mut shown = delay.is_zero();
                let mut wait = if shown { TICK } else { delay };
                // Until told to stop (or the sender is gone).
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                    draw(&message, started);
                    shown = true;
                    wait = TICK;
                }
                if shown {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "{ERASE}");
                    let _ = err.flush();
                }
            });
        // Without the thread the work goes on with no line: progress is a courtesy.
        Progress {
            running: spawned.ok().map(|handle| (stop, handle)),
        }
    }
}

fn draw(message: &str, started: Instant) {
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "{ERASE}iochaos: {message} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let _ = err.flush();
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.running.take() {
            let _ = stop.send(());
            let _ = handle.join();
        }
    }
}
